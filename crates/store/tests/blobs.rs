//! The blob contract on a local directory and on a real S3-compatible server (moto), plus
//! what each shows alone: a data directory of the earlier layout still reads, refused
//! uploads leave no trace, and a wrong endpoint or bucket is named without secrets.

use futures_util::{StreamExt, TryStreamExt};
use gantry_store::{
    BlobLocation, BlobStore, BlobStream, ObjectBlobStore, S3Credentials, S3Settings, StoreError,
};
use gantry_testkit::MotoServer;

async fn fresh_directory() -> (ObjectBlobStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let location = BlobLocation::Directory(dir.path().join("blobs"));
    (ObjectBlobStore::open(&location).await.unwrap(), dir)
}

mod local_blobs {
    use super::fresh_directory;
    gantry_store::blob_store_contract_tests!(fresh_directory());
}

async fn start_moto() -> Option<MotoServer> {
    tokio::task::spawn_blocking(MotoServer::start).await.unwrap()
}

fn s3_settings(endpoint: &str, bucket: &str, prefix: Option<&str>) -> S3Settings {
    // The S3 client speaks through rustls, as in the server's main.
    gantry_testkit::install_crypto_provider();
    S3Settings {
        bucket: bucket.to_owned(),
        prefix: prefix.map(str::to_owned),
        endpoint: Some(endpoint.to_owned()),
        region: MotoServer::REGION.to_owned(),
        allow_http: true,
        credentials: S3Credentials::new(
            MotoServer::ACCESS_KEY_ID,
            MotoServer::SECRET_ACCESS_KEY,
            Some("session-token-9c2e".to_owned()),
        ),
    }
}

async fn fresh_bucket(moto: &MotoServer) -> (ObjectBlobStore, ()) {
    let bucket = moto.create_bucket();
    let settings = s3_settings(&moto.endpoint(), &bucket, Some("gantry/blobs"));
    (ObjectBlobStore::open(&BlobLocation::S3(settings)).await.unwrap(), ())
}

// One moto process serves every case (each on its own bucket): starting one costs seconds.
gantry_store::blob_store_contract_tests!(
    one_test the_blob_contract_holds_on_s3,
    start_moto(),
    fresh_bucket
);

fn body(parts: Vec<&'static [u8]>) -> BlobStream {
    futures_util::stream::iter(parts.into_iter().map(|part| Ok(bytes::Bytes::from_static(part))))
        .boxed()
}

/// `len` bytes in 1 MiB chunks, then an error if `breaks`.
fn long_body(len: usize, breaks: bool) -> BlobStream {
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let chunks = (0..len.div_ceil(1 << 20)).map(move |i| {
        let end = ((i + 1) << 20).min(len);
        Ok(chunk.slice(..end - (i << 20)))
    });
    let tail = breaks.then(|| Err(std::io::Error::other("connection reset")));
    futures_util::stream::iter(chunks.chain(tail)).boxed()
}

async fn read_all(blobs: &ObjectBlobStore, key: &str) -> Option<Vec<u8>> {
    let (_, stream) = blobs.get(key).await.unwrap()?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    Some(chunks.concat())
}

fn assert_no_secret(text: &str) {
    for secret in [MotoServer::SECRET_ACCESS_KEY, "session-token-9c2e"] {
        assert!(!text.contains(secret), "a secret shows: {text}");
    }
}

#[tokio::test]
async fn a_data_directory_of_the_earlier_layout_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("blobs");
    std::fs::create_dir_all(root.join("runs/r1")).unwrap();
    std::fs::write(root.join("runs/r1/workspace"), b"stored earlier").unwrap();
    std::fs::create_dir_all(root.join(".partial")).unwrap();
    std::fs::write(root.join(".partial/0123abcd"), b"an upload that broke off").unwrap();

    let blobs = ObjectBlobStore::open(&BlobLocation::Directory(root.clone())).await.unwrap();
    assert_eq!(read_all(&blobs, "runs/r1/workspace").await.unwrap(), b"stored earlier");
    assert!(!root.join(".partial").exists(), "leftovers of broken-off uploads go");
    blobs.put("states/s1/v1", body(vec![b"new"]), 10).await.unwrap();
    assert_eq!(std::fs::read(root.join("states/s1/v1")).unwrap(), b"new", "same layout");

    // Refused uploads, single-part and multipart, leave no staging file behind.
    blobs.put("states/s1/v2", body(vec![b"0123456789"]), 5).await.unwrap_err();
    blobs.put("states/s1/v2", long_body(20 << 20, true), 1 << 30).await.unwrap_err();
    blobs.put("states/s1/v2", long_body(20 << 20, false), 12 << 20).await.unwrap_err();
    let names: Vec<String> = std::fs::read_dir(root.join("states/s1"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["v1"]);

    blobs.delete("runs/r1/workspace").await.unwrap();
    assert!(!root.join("runs/r1").exists(), "a run's directory goes with its last blob");
    assert!(root.is_dir(), "the root stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_leaves_the_old_blob_on_s3_and_no_open_upload() {
    let Some(moto) = start_moto().await else { return };
    let bucket = moto.create_bucket();
    let settings = s3_settings(&moto.endpoint(), &bucket, Some("p"));
    let blobs = ObjectBlobStore::open(&BlobLocation::S3(settings)).await.unwrap();
    blobs.put("runs/r1/workspace", body(vec![b"old ", b"blob"]), 1 << 20).await.unwrap();
    assert_eq!(moto.object(&bucket, "p/runs/r1/workspace").unwrap(), b"old blob");

    // Over the limit after two parts went up, and broken off after two parts.
    let error =
        blobs.put("runs/r1/workspace", long_body(30 << 20, false), 20 << 20).await.unwrap_err();
    assert!(matches!(error, StoreError::TooLarge { limit } if limit == 20 << 20), "{error}");
    let error =
        blobs.put("runs/r1/workspace", long_body(20 << 20, true), 1 << 30).await.unwrap_err();
    assert!(error.to_string().contains("broke off"), "{error}");
    // Over the limit within the first part: nothing was sent.
    let error = blobs.put("runs/r1/workspace", body(vec![b"too long"]), 4).await.unwrap_err();
    assert!(matches!(error, StoreError::TooLarge { .. }), "{error}");

    assert_eq!(moto.object(&bucket, "p/runs/r1/workspace").unwrap(), b"old blob");
    assert_eq!(moto.open_multipart_uploads(&bucket), Vec::<String>::new());
    assert_eq!(moto.object(&bucket, "p/.gantry-write-check"), None, "the write check is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_with_its_endpoint_and_without_secrets() {
    let Some(moto) = start_moto().await else { return };
    let settings = s3_settings(&moto.endpoint(), "no-such-bucket", None);
    let error = ObjectBlobStore::open(&BlobLocation::S3(settings)).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("bucket s3://no-such-bucket at {}", moto.endpoint())),
        "{error}"
    );
    assert!(error.contains("the bucket does not exist"), "{error}");
    assert!(!error.contains('\n'), "one line for the log: {error}");
    assert_no_secret(&error);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named_without_secrets() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let settings = s3_settings(&endpoint, "gantry", Some("blobs"));
    assert_no_secret(&format!("{settings:?}"));
    let started = std::time::Instant::now();
    let error = ObjectBlobStore::open(&BlobLocation::S3(settings)).await.unwrap_err().to_string();
    assert!(error.contains(&format!("bucket s3://gantry/blobs at {endpoint}")), "{error}");
    assert!(error.contains("Connection refused"), "{error}");
    assert_no_secret(&error);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "it fails within seconds");
}

#[tokio::test]
async fn an_unwritable_directory_is_named() {
    let location = BlobLocation::Directory("/proc/gantry-blobs".into());
    let error = ObjectBlobStore::open(&location).await.unwrap_err().to_string();
    assert!(error.contains("blob directory /proc/gantry-blobs"), "{error}");
}
