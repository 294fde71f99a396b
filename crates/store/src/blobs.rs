//! The blob store: where encrypted workspaces and state versions live, as opaque bytes.
//! Blobs stream in both directions; a blob becomes visible only once completely written.
//! The one implementation, `ObjectBlobStore` (`object_blobs.rs`), keeps them in a local
//! directory (the default) or an S3-compatible bucket.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

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

/// Whether `key` is a blob key: `/`-separated segments of `[a-z0-9._-]`, none empty and
/// none starting with `.`. Such a key cannot leave its directory or bucket prefix, reads
/// the same on every file system and object store, and never collides with the store's
/// own dot-named files (staging files, the write check).
pub fn is_valid_blob_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.starts_with('.')
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        })
}

pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    if is_valid_blob_key(key) { Ok(()) } else { Err(StoreError::InvalidKey(key.to_owned())) }
}
