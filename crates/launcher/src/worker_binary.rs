//! Where the worker binary comes from: a local file (`GANTRY_WORKER_BINARY`, or
//! `gantry-worker` next to the launcher), or the server, verified against the release
//! key the launcher pins (`GANTRY_WORKER_BINARY_PUBLIC_KEY`). A downloaded binary is
//! kept by digest in the work directory: it is downloaded again only when the server's
//! digest changes, and run only when the signature of that digest verifies.

use std::path::{Path, PathBuf};

use gantry_crypto::ReleasePublicKey;

use crate::client::AgentClient;

pub const WORKER_BINARY_PUBLIC_KEY: &str = "GANTRY_WORKER_BINARY_PUBLIC_KEY";

/// Where the worker binary comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSource {
    Local(PathBuf),
    /// From the server, signed by this key.
    Download(ReleasePublicKey),
}

/// The worker binary of each run.
#[derive(Debug)]
pub(crate) struct WorkerBinaries {
    source: WorkerSource,
    /// Downloaded binaries, named by their SHA-256.
    cache_dir: PathBuf,
    /// One download at a time: runs starting together share it.
    downloading: tokio::sync::Mutex<()>,
}

impl WorkerBinaries {
    pub(crate) fn new(source: WorkerSource, work_dir: &Path) -> Self {
        Self {
            source,
            cache_dir: work_dir.join("worker-binaries"),
            downloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the binary is the launcher's own (of its release) rather than the server's.
    pub(crate) fn is_local(&self) -> bool {
        matches!(self.source, WorkerSource::Local(_))
    }

    /// The binary to run now; a message saying why there is none.
    pub(crate) async fn current(&self, client: &AgentClient) -> Result<PathBuf, String> {
        let key = match &self.source {
            WorkerSource::Local(path) => return Ok(path.clone()),
            WorkerSource::Download(key) => key,
        };
        let arch = std::env::consts::ARCH;
        let described = client
            .describe_worker_binary(arch)
            .await
            .map_err(|error| format!("Cannot learn which worker binary to run: {error}"))?;
        let sha256 = &described.sha256;
        if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "The server described its worker binary with a malformed digest {sha256:?}"
            ));
        }
        key.verify(sha256, &described.signature).map_err(|error| {
            format!("The server's worker binary (sha256 {sha256}) is refused: {error}")
        })?;
        let path = self.cache_dir.join(sha256);
        let _one_at_a_time = self.downloading.lock().await;
        if path.is_file() {
            return Ok(path);
        }
        self.download(client, arch, sha256, &path).await.map_err(|error| {
            format!("Cannot download the worker binary (sha256 {sha256}): {error}")
        })?;
        tracing::info!(sha256, "downloaded the worker binary; its signature verified");
        Ok(path)
    }

    async fn download(
        &self,
        client: &AgentClient,
        arch: &str,
        sha256: &str,
        path: &Path,
    ) -> Result<(), String> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // Runs of the process executor may run as users of their own: they execute it.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.cache_dir)
            .map_err(|error| format!("{}: {error}", self.cache_dir.display()))?;
        let partial = path.with_extension("partial");
        let downloaded = client
            .download_worker_binary(arch, &partial, sha256)
            .await
            .map_err(|error| error.to_string())?;
        if downloaded.is_none() {
            return Err("the server no longer has it".to_owned());
        }
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|error| format!("{}: {error}", path.display()))
    }
}
