//! The shared pool: a pool the server runs itself, the default for stacks that name no
//! pool. Its key is the server's (sealed in the store, so every replica has it), its
//! launcher runs inside the server process and connects through the same HTTPS agent
//! plane as any launcher, and its workers are never listed to users.

use std::path::{Path, PathBuf};

use gantry_crypto::{CertificateAuthority, PoolToken, generate_pool_key};
use gantry_domain::options::Env;
use gantry_domain::{PoolId, PoolKind, Timestamp};
use gantry_launcher::LauncherConfig;
use gantry_store::{PoolRecord, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::StartError;
use crate::master_key::ServerSecrets;

/// The shared pool's name, reserved.
pub(crate) const NAME: &str = "shared";
const KEY_SECRET: &str = "shared-pool-key";

/// The key and its CSR are stored together, so that whichever replica creates them
/// first, every replica issues the certificate for the same key.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    private_key_pem: String,
    csr_pem: String,
}

/// The shared pool and its private key.
pub(crate) struct SharedPool {
    pub(crate) pool: PoolRecord,
    private_key_pem: String,
}

impl std::fmt::Debug for SharedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool").field("pool", &self.pool.id).finish_non_exhaustive()
    }
}

/// Finds the shared pool, creating it (key, certificate, record) at first start.
pub(crate) async fn ensure(
    store: &dyn Store,
    secrets: &ServerSecrets,
    ca: &CertificateAuthority,
    now: Timestamp,
) -> Result<SharedPool, StartError> {
    let candidate = generate_pool_key("gantry-shared-pool").map_err(StartError::Crypto)?;
    let candidate =
        StoredKey { private_key_pem: candidate.private_key_pem, csr_pem: candidate.csr_pem };
    let bytes = serde_json::to_vec(&candidate).map_err(|e| StartError::Internal(e.to_string()))?;
    let stored = secrets.get_or_insert(store, KEY_SECRET, &bytes, now).await?;
    let stored: StoredKey = serde_json::from_slice(&stored).map_err(|e| {
        StartError::Internal(format!("the shared pool's stored key does not parse: {e}"))
    })?;
    if let Some(pool) = store.find_pool_by_name(NAME).await? {
        if pool.kind != PoolKind::Shared {
            return Err(StartError::Internal(format!(
                "a private pool is named {NAME:?}, the name of the server's shared pool: rename it"
            )));
        }
        return Ok(SharedPool { pool, private_key_pem: stored.private_key_pem });
    }
    let id = PoolId::generate();
    let issued =
        ca.issue_pool_certificate(&stored.csr_pem, &id.to_string()).map_err(StartError::Crypto)?;
    let pool = PoolRecord {
        id,
        name: NAME.to_owned(),
        kind: PoolKind::Shared,
        description: "Run by the server itself: the pool of stacks that name none".to_owned(),
        labels: vec![],
        certificate_pem: Some(issued.certificate.pem().to_owned()),
        certificate_fingerprint: Some(issued.certificate.fingerprint().to_owned()),
        key_algorithm: Some(issued.key_algorithm.to_string()),
        cycle_requested_at: None,
        created_at: now,
        updated_at: now,
    };
    match store.insert_pool(&pool).await {
        Ok(()) => Ok(SharedPool { pool, private_key_pem: stored.private_key_pem }),
        // Another replica created it meanwhile.
        Err(StoreError::AlreadyExists { .. }) => {
            let pool = store.find_pool_by_name(NAME).await?.ok_or_else(|| {
                StartError::Internal("the shared pool vanished while it was created".to_owned())
            })?;
            Ok(SharedPool { pool, private_key_pem: stored.private_key_pem })
        }
        Err(error) => Err(error.into()),
    }
}

/// Where the in-process launcher finds the worker binary: the setting, else next to the
/// server's own executable.
pub(crate) fn worker_binary(configured: Option<&Path>) -> Option<PathBuf> {
    let path = match configured {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe().ok()?.parent()?.join("gantry-worker"),
    };
    path.is_file().then_some(path)
}

/// The configuration of the shared pool's launcher, connecting to this server at `url`.
pub(crate) fn launcher_config(
    shared: &SharedPool,
    url: &str,
    server_ca: Option<String>,
    work_dir: &Path,
    worker_binary: &Path,
    slots: u32,
) -> Result<LauncherConfig, gantry_launcher::ConfigError> {
    let certificate = shared.pool.certificate_pem.clone().unwrap_or_default();
    let token = PoolToken::new(url.to_owned(), server_ca, shared.pool.id.to_string(), certificate);
    let mut env: Env = ["PATH", "HOME", "LANG", "TMPDIR", "TZ"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.to_owned(), value)))
        .collect();
    for (name, value) in [
        ("GANTRY_TOKEN", token.encode()),
        ("GANTRY_POOL_PRIVATE_KEY", shared.private_key_pem.clone()),
        ("GANTRY_WORKER_BINARY", worker_binary.display().to_string()),
        ("GANTRY_LAUNCHER_WORK_DIR", work_dir.display().to_string()),
        ("GANTRY_LAUNCHER_WORKER_SLOTS", slots.to_string()),
        ("GANTRY_LAUNCHER_EXECUTOR", "process".to_owned()),
        ("GANTRY_LAUNCHER_SHUTDOWN_GRACE", "30s".to_owned()),
        ("GANTRY_METADATA_pool", NAME.to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    LauncherConfig::from_env(&env)
}
