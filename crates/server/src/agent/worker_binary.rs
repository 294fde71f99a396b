//! The worker binary launchers may download: the server's `gantry-worker` (the shared
//! pool's), served with the detached Ed25519 signature found next to it
//! (`gantry-worker.sig`, made by `gantry worker-binary sign`). Launchers verify it against
//! the key they pin and cache it by digest; the server only carries it.

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gantry_proto::agent::{SHA256_HEADER, WorkerBinary};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json, QueryParams};
use crate::state::AppState;

/// The signed worker binary this server distributes.
#[derive(Debug, Clone)]
pub(crate) struct WorkerRelease {
    path: PathBuf,
    description: WorkerBinary,
}

impl WorkerRelease {
    /// The binary at `path` and its signature at `<path>.sig`, if both are there.
    pub(crate) fn load(path: &Path) -> std::io::Result<Option<Self>> {
        let mut signature_path = path.as_os_str().to_owned();
        signature_path.push(".sig");
        let signature = match std::fs::read_to_string(&signature_path) {
            Ok(signature) => signature.trim().to_owned(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        let binary = std::fs::read(path)?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            description: WorkerBinary {
                arch: std::env::consts::ARCH.to_owned(),
                sha256: gantry_crypto::binary_digest(&binary),
                size: binary.len() as u64,
                signature,
            },
        }))
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ArchQuery {
    arch: String,
}

fn release<'a>(state: &'a AppState, arch: &str) -> Result<&'a WorkerRelease, ApiError> {
    let release = state.worker_release.as_ref().ok_or_else(|| {
        ApiError::Missing(
            "this server distributes no signed worker binary: put gantry-worker.sig (from gantry worker-binary sign) next to its gantry-worker".to_owned(),
        )
    })?;
    if release.description.arch != arch {
        return Err(ApiError::Missing(format!(
            "this server has no worker binary for {arch}, only for {}",
            release.description.arch
        )));
    }
    Ok(release)
}

/// `GET /worker-binary?arch=…`: digest, size and signature of the binary.
pub(super) async fn describe(
    State(state): State<AppState>,
    _session: AgentSession,
    QueryParams(query): QueryParams<ArchQuery>,
) -> ApiResult<Json<WorkerBinary>> {
    Ok(Json(release(&state, &query.arch)?.description.clone()))
}

/// `GET /worker-binary/content?arch=…`: the binary itself.
pub(super) async fn content(
    State(state): State<AppState>,
    _session: AgentSession,
    QueryParams(query): QueryParams<ArchQuery>,
) -> ApiResult<Response> {
    let release = release(&state, &query.arch)?;
    let file = tokio::fs::File::open(&release.path).await.map_err(|error| {
        ApiError::Internal(format!(
            "cannot read the worker binary {}: {error}",
            release.path.display()
        ))
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = [
        (header::CONTENT_TYPE.as_str(), "application/octet-stream".to_owned()),
        (SHA256_HEADER, release.description.sha256.clone()),
    ];
    Ok((headers, body).into_response())
}
