//! `ObjectBlobStore`: the `BlobStore` over the `object_store` crate, for a local directory
//! (the default) or an S3-compatible bucket.
//!
//! Both keep the trait's promises the same way. A body up to one part long is written
//! with one put; a longer one goes up as a multipart upload of fixed-size parts, a few
//! in flight, so memory stays bounded whatever the blob's size. Either way the object
//! appears only when complete: a directory stages the file next to its destination and
//! renames it (after an fsync), and S3 shows neither a single put nor a multipart upload
//! before it completes. A body that breaks off or grows past `max_size` aborts the
//! upload, so the blob it would have replaced stays as it was.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{
    GetResultPayload, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use crate::StoreError;
use crate::blobs::{BlobStore, BlobStream, BlobWritten, validate_key};

/// Bytes per part of a multipart upload. S3 wants at least 5 MiB for every part but the
/// last, at most 10,000 parts (so 80 GB here), and some compatible stores want all parts
/// but the last of one size.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploading at once, per blob: a slow part does not stall the body, and an upload
/// holds at most this many parts plus the one being filled.
const PARTS_IN_FLIGHT: usize = 2;
/// The name's start of the object written and removed by `open` to prove the store takes
/// writes; a random suffix follows, since replicas sharing a store open it at once and
/// one's removal must not take the object another is about to remove. Blob keys cannot
/// start with a dot, so no blob is ever touched.
const WRITE_CHECK: &str = ".gantry-write-check";
/// The previous directory store staged uploads here; only broken-off uploads remain.
const OLD_STAGING_DIR: &str = ".partial";

/// Where blobs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// Files under this directory, at `<dir>/<key>`.
    Directory(PathBuf),
    /// Objects in an S3-compatible bucket.
    S3(S3Settings),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Blob keys go under `<prefix>/`; a valid blob key itself.
    pub prefix: Option<String>,
    /// `http(s)://host[:port]` of an S3-compatible service (MinIO, Ceph, moto, …), reached
    /// with path-style requests; AWS S3 in `region` when unset.
    pub endpoint: Option<String>,
    pub region: String,
    /// Whether a plain `http://` endpoint is accepted.
    pub allow_http: bool,
    pub credentials: S3Credentials,
}

impl S3Settings {
    /// What the errors name: the bucket, the prefix and where it was looked for.
    fn describe(&self) -> String {
        let prefix = self.prefix.as_ref().map(|p| format!("/{p}")).unwrap_or_default();
        match &self.endpoint {
            Some(endpoint) => format!("bucket s3://{}{prefix} at {endpoint}", self.bucket),
            None => format!("bucket s3://{}{prefix} in AWS region {}", self.bucket, self.region),
        }
    }
}

/// Static S3 credentials. `Debug` shows the access key id (an identifier, not a secret)
/// and never the secret key or the session token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

impl S3Credentials {
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

    pub fn new(
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
        session_token: Option<String>,
    ) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token,
        }
    }

    /// From the standard `AWS_*` variables, looked up with `var` (empty counts as unset).
    /// Only these three are read: no profile file, instance metadata or web identity, so
    /// what the server uses is exactly what its environment says. The error names the
    /// missing variables.
    pub fn from_variables(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        match (read(Self::ACCESS_KEY_ID), read(Self::SECRET_ACCESS_KEY)) {
            (Some(id), Some(secret)) => Ok(Self::new(id, secret, read(Self::SESSION_TOKEN))),
            (id, secret) => {
                let missing: Vec<&str> = [
                    id.is_none().then_some(Self::ACCESS_KEY_ID),
                    secret.is_none().then_some(Self::SECRET_ACCESS_KEY),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(format!(
                    "{} not set: S3 credentials come from {} and {} (and {} for temporary credentials)",
                    missing.join(" and "),
                    Self::ACCESS_KEY_ID,
                    Self::SECRET_ACCESS_KEY,
                    Self::SESSION_TOKEN
                ))
            }
        }
    }
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<hidden>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// Blobs in any `object_store` store, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct ObjectBlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Option<String>,
    /// Names the store in every error: which directory or bucket failed.
    description: Arc<str>,
}

impl ObjectBlobStore {
    /// Blobs in `store` under `prefix/`; `description` names the store in errors.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: Option<&str>,
        description: impl Into<String>,
    ) -> Result<Self, StoreError> {
        let prefix = prefix.map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
        if let Some(prefix) = prefix {
            validate_key(prefix)?;
        }
        Ok(Self {
            store,
            prefix: prefix.map(str::to_owned),
            description: description.into().into(),
        })
    }

    /// Opens the store at `location` and checks that it takes writes, so a wrong
    /// directory, endpoint, bucket or credential stops the server at start.
    pub async fn open(location: &BlobLocation) -> Result<Self, StoreError> {
        let blobs = match location {
            BlobLocation::Directory(root) => Self::local(root).await?,
            BlobLocation::S3(settings) => Self::s3(settings)?,
        };
        blobs.check_writable().await?;
        Ok(blobs)
    }

    /// Blobs as files under `root` (created if missing), at `<root>/<key>`.
    pub async fn local(root: &Path) -> Result<Self, StoreError> {
        let description = format!("blob directory {}", root.display());
        let io_error = |e: std::io::Error| StoreError::Blob(format!("{description}: {e}"));
        tokio::fs::create_dir_all(root).await.map_err(io_error)?;
        match tokio::fs::remove_dir_all(root.join(OLD_STAGING_DIR)).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(e)),
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(root)
            .map_err(|e| StoreError::Blob(format!("{description}: {e}")))?
            // Acknowledged blobs must survive a crash: the database records them next.
            .with_fsync(true)
            // Per-run directories go with their last blob.
            .with_automatic_cleanup(true);
        Self::new(Arc::new(store), None, description)
    }

    /// Blobs in an S3-compatible bucket. Nothing is contacted until the first request.
    pub fn s3(settings: &S3Settings) -> Result<Self, StoreError> {
        let description = settings.describe();
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // A whole-request timeout would cut off large blobs; a stalled connection is
            // what must fail.
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(60));
        let retry = RetryConfig {
            // Enough for a throttled or briefly unreachable service, short enough that a
            // wrong endpoint fails the start within seconds.
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let credentials = &settings.credentials;
        let mut builder = object_store::aws::AmazonS3Builder::new()
            // Before `with_allow_http`, which changes the client options this replaces.
            .with_client_options(client)
            .with_allow_http(settings.allow_http)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_retry(retry);
        if let Some(token) = &credentials.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder
            .build()
            .map_err(|e| StoreError::Blob(format!("{description}: {}", with_causes(&e))))?;
        Self::new(Arc::new(store), settings.prefix.as_deref(), description)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let mut suffix = [0u8; 8];
        aws_lc_rs::rand::fill(&mut suffix)
            .map_err(|_| StoreError::Blob("no random bytes for the write check".to_owned()))?;
        let location = self.object_path(&format!("{WRITE_CHECK}-{}", hex::encode(suffix)));
        let payload = PutPayload::from_static(b"gantry checks that it may write here\n");
        self.store.put(&location, payload).await.map_err(|e| self.unusable(e))?;
        self.store.delete(&location).await.map_err(|e| self.unusable(e))?;
        Ok(())
    }

    fn unusable(&self, error: object_store::Error) -> StoreError {
        let causes = with_causes(&error);
        // S3 names the problem only in the XML body it returns.
        let what = if causes.contains("NoSuchBucket") {
            "the bucket does not exist"
        } else if causes.contains("InvalidAccessKeyId") || causes.contains("SignatureDoesNotMatch")
        {
            "the credentials were refused (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
        } else if causes.contains("AccessDenied") {
            "writing was refused: the credentials need s3:PutObject and s3:DeleteObject"
        } else {
            "it cannot be written"
        };
        StoreError::Blob(format!("the {} cannot be used, {what}: {causes}", self.description))
    }

    fn failed(&self, error: object_store::Error) -> StoreError {
        StoreError::Blob(format!("{}: {}", self.description, with_causes(&error)))
    }

    fn location(&self, key: &str) -> Result<ObjectPath, StoreError> {
        validate_key(key)?;
        Ok(self.object_path(key))
    }

    fn object_path(&self, key: &str) -> ObjectPath {
        match &self.prefix {
            Some(prefix) => ObjectPath::from(format!("{prefix}/{key}")),
            None => ObjectPath::from(key),
        }
    }

    /// Uploads `first_part` and the rest of `body` as parts of `upload`, then completes
    /// it. Parts upload in spawned tasks, so the body keeps arriving meanwhile.
    async fn finish_multipart(
        &self,
        upload: &mut PendingUpload,
        body: &mut Body,
        first_part: PutPayload,
    ) -> Result<(), StoreError> {
        // Dropping the set (an error, or the put being dropped) cancels unfinished parts.
        let mut in_flight = tokio::task::JoinSet::new();
        let mut part = Some(first_part);
        while let Some(payload) = part {
            if in_flight.len() >= PARTS_IN_FLIGHT
                && let Some(done) = in_flight.join_next().await
            {
                self.part_done(done)?;
            }
            in_flight.spawn(upload.upload().put_part(payload));
            part = body.next_part().await?;
        }
        while let Some(done) = in_flight.join_next().await {
            self.part_done(done)?;
        }
        upload.upload().complete().await.map_err(|e| self.failed(e))?;
        Ok(())
    }

    fn part_done(
        &self,
        done: Result<object_store::Result<()>, tokio::task::JoinError>,
    ) -> Result<(), StoreError> {
        match done {
            Ok(result) => result.map_err(|e| self.failed(e)),
            Err(error) => Err(StoreError::Blob(format!(
                "{}: a part upload failed: {error}",
                self.description
            ))),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    async fn put(
        &self,
        key: &str,
        body: BlobStream,
        max_size: u64,
    ) -> Result<BlobWritten, StoreError> {
        let location = self.location(key)?;
        let mut body = Body::new(body, max_size);
        let first_part = body.next_part().await?.unwrap_or_default();
        if body.is_drained() {
            self.store.put(&location, first_part).await.map_err(|e| self.failed(e))?;
            return Ok(body.written());
        }
        let upload = self.store.put_multipart(&location).await.map_err(|e| self.failed(e))?;
        let mut pending = PendingUpload(Some(upload));
        match self.finish_multipart(&mut pending, &mut body, first_part).await {
            Ok(()) => {
                pending.completed();
                Ok(body.written())
            }
            Err(error) => {
                pending.abort().await;
                Err(error)
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Option<(u64, BlobStream)>, StoreError> {
        let location = self.location(key)?;
        let result = match self.store.get(&location).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(self.failed(error)),
        };
        let size = result.meta.size;
        let stream = match result.payload {
            // object_store reads files 8 KiB per blocking task; a buffered reader of the
            // same open file (so a replacement meanwhile is not seen) is far cheaper.
            GetResultPayload::File(file, _) => {
                let file = tokio::fs::File::from_std(file);
                tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).boxed()
            }
            GetResultPayload::Stream(stream) => {
                let description = Arc::clone(&self.description);
                stream
                    .map_err(move |e| std::io::Error::other(format!("{description}: {e}")))
                    .boxed()
            }
        };
        Ok(Some((size, stream)))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let location = self.location(key)?;
        match self.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.failed(error)),
        }
    }
}

/// The error and the causes its message leaves out: object_store stops at the HTTP
/// client's "error sending request", which hides "Connection refused" or a TLS failure.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string().replace('\n', " ");
    let mut cause = error.source();
    while let Some(error) = cause {
        let message = error.to_string().replace('\n', " ");
        if !text.contains(&message) {
            text = format!("{text}: {message}");
        }
        cause = error.source();
    }
    text
}

/// The body being stored: cut into parts of exactly `PART_SIZE` bytes (the last one
/// shorter), counted against the limit and hashed on the way.
struct Body {
    stream: BlobStream,
    max_size: u64,
    size: u64,
    digest: aws_lc_rs::digest::Context,
    buffered: Vec<Bytes>,
    buffered_len: usize,
    ended: bool,
}

impl Body {
    fn new(stream: BlobStream, max_size: u64) -> Self {
        Self {
            stream,
            max_size,
            size: 0,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            buffered: Vec::new(),
            buffered_len: 0,
            ended: false,
        }
    }

    /// The next part: `PART_SIZE` bytes, or what is left at the end of the body; `None`
    /// when nothing is left.
    async fn next_part(&mut self) -> Result<Option<PutPayload>, StoreError> {
        while !self.ended && self.buffered_len < PART_SIZE {
            match self.stream.next().await {
                Some(chunk) => {
                    let chunk = chunk
                        .map_err(|e| StoreError::Blob(format!("the upload broke off: {e}")))?;
                    self.size += chunk.len() as u64;
                    if self.size > self.max_size {
                        return Err(StoreError::TooLarge { limit: self.max_size });
                    }
                    self.digest.update(&chunk);
                    self.buffered_len += chunk.len();
                    self.buffered.push(chunk);
                }
                None => self.ended = true,
            }
        }
        match self.buffered_len.min(PART_SIZE) {
            0 => Ok(None),
            len => Ok(Some(self.take(len))),
        }
    }

    /// Whether the whole body was read and returned.
    fn is_drained(&self) -> bool {
        self.ended && self.buffered_len == 0
    }

    /// Takes exactly `len` buffered bytes, splitting a chunk (without copying) if needed.
    fn take(&mut self, len: usize) -> PutPayload {
        let mut parts = Vec::new();
        let mut missing = len;
        let mut rest = std::mem::take(&mut self.buffered).into_iter();
        for mut chunk in rest.by_ref() {
            if chunk.len() <= missing {
                missing -= chunk.len();
                parts.push(chunk);
            } else {
                parts.push(chunk.split_to(missing));
                missing = 0;
                self.buffered.push(chunk);
            }
            if missing == 0 {
                break;
            }
        }
        self.buffered.extend(rest);
        self.buffered_len -= len;
        parts.into_iter().collect()
    }

    fn written(self) -> BlobWritten {
        BlobWritten { size: self.size, sha256: hex::encode(self.digest.finish()) }
    }
}

/// A multipart upload that is aborted unless it completed: explicitly on an error, and
/// from a spawned task when the put itself is dropped (its caller went away), so neither
/// a staging file nor an incomplete S3 upload is left behind.
struct PendingUpload(Option<Box<dyn MultipartUpload>>);

impl PendingUpload {
    fn upload(&mut self) -> &mut Box<dyn MultipartUpload> {
        self.0.as_mut().expect("an upload is pending until completed or aborted")
    }

    fn completed(mut self) {
        self.0 = None;
    }

    async fn abort(mut self) {
        if let Some(mut upload) = self.0.take() {
            // A failed abort leaves an incomplete upload the store never shows (a
            // bucket's lifecycle rule removes it); the blob it would replace is intact.
            let _ = upload.abort().await;
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        if let Some(mut upload) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::is_valid_blob_key;

    #[test]
    fn credentials_never_show_their_secrets() {
        let credentials =
            S3Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI", Some("FwoGZXIvYXdz".into()));
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdz"), "{shown}");
    }

    #[test]
    fn missing_credentials_name_the_variables() {
        let error = S3Credentials::from_variables(|name| {
            (name == S3Credentials::ACCESS_KEY_ID).then(|| "AKID".to_owned())
        })
        .unwrap_err();
        assert!(error.starts_with("AWS_SECRET_ACCESS_KEY not set"), "{error}");
        let error = S3Credentials::from_variables(|_| Some(" ".to_owned())).unwrap_err();
        assert!(error.starts_with("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY not set"));
    }

    #[test]
    fn a_prefix_is_a_blob_key() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert!(ObjectBlobStore::new(Arc::clone(&store), Some("gantry/prod/"), "x").is_ok());
        assert!(is_valid_blob_key("gantry/prod"));
        let error = ObjectBlobStore::new(store, Some("../up"), "x").unwrap_err();
        assert!(matches!(error, StoreError::InvalidKey(_)), "{error}");
    }

    /// Replicas sharing one blob directory start together: each one's write check must
    /// leave the others' alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_open_one_directory_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let location = BlobLocation::Directory(dir.path().to_path_buf());
        let opens = (0..16).map(|_| {
            let location = location.clone();
            tokio::spawn(async move { ObjectBlobStore::open(&location).await.map(|_| ()) })
        });
        for opened in futures_util::future::join_all(opens).await {
            opened.unwrap().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().starts_with(WRITE_CHECK))
            .collect();
        assert!(left.is_empty(), "write checks left behind: {left:?}");
    }
}
