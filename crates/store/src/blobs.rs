//! The blob store: where encrypted workspaces and state versions live, as opaque bytes.
//! `LocalBlobStore` keeps them in a directory (the default); an S3-compatible store is a
//! second implementation of the same trait. Blobs stream in both directions; a blob
//! becomes visible only once completely written.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::io::AsyncWriteExt;

use crate::StoreError;

/// A stream of blob bytes.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobWritten {
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
}

/// Opaque blob storage, keyed by `/`-separated names of `[a-z0-9._-]` segments.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `body` under `key`, replacing what was there once the new blob is complete.
    /// A body larger than `max_size` is refused and nothing is replaced.
    async fn put(
        &self,
        key: &str,
        body: BlobStream,
        max_size: u64,
    ) -> Result<BlobWritten, StoreError>;
    /// The blob's size and bytes, if it exists.
    async fn get(&self, key: &str) -> Result<Option<(u64, BlobStream)>, StoreError>;
    /// Removes the blob; a missing blob is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// Blobs as files under a directory.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    /// Uses (and creates) `root`.
    pub async fn open(root: &Path) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(root.join(".partial")).await.map_err(|e| io_error(root, e))?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let valid = !key.is_empty()
            && key.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && !segment.starts_with('.')
                    && segment.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid {
            return Err(StoreError::InvalidKey(key.to_owned()));
        }
        Ok(self.root.join(key))
    }
}

fn io_error(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Blob(format!("{}: {error}", path.display()))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(
        &self,
        key: &str,
        mut body: BlobStream,
        max_size: u64,
    ) -> Result<BlobWritten, StoreError> {
        let destination = self.path(key)?;
        let mut nonce = [0u8; 12];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StoreError::Blob("no randomness".to_owned()))?;
        let partial = self.root.join(".partial").join(hex::encode(nonce));
        let written = async {
            let mut file =
                tokio::fs::File::create(&partial).await.map_err(|e| io_error(&partial, e))?;
            let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk =
                    chunk.map_err(|e| StoreError::Blob(format!("the upload broke off: {e}")))?;
                size += chunk.len() as u64;
                if size > max_size {
                    return Err(StoreError::TooLarge { limit: max_size });
                }
                digest.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| io_error(&partial, e))?;
            }
            // The blob must survive a crash once the caller records it.
            file.sync_all().await.map_err(|e| io_error(&partial, e))?;
            Ok(BlobWritten { size, sha256: hex::encode(digest.finish()) })
        }
        .await;
        let written = match written {
            Ok(written) => written,
            Err(error) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(error);
            }
        };
        if let Some(parent) = destination.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| io_error(parent, e))?;
        }
        tokio::fs::rename(&partial, &destination).await.map_err(|e| io_error(&destination, e))?;
        Ok(written)
    }

    async fn get(&self, key: &str) -> Result<Option<(u64, BlobStream)>, StoreError> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path, error)),
        };
        let size = file.metadata().await.map_err(|e| io_error(&path, e))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024);
        Ok(Some((size, stream.boxed())))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(io_error(&path, error)),
        }
    }
}
