//! Encrypted blobs on the agent plane: a run's packed workspace between plan and apply,
//! the versions of a stack's managed state, and the sensitive outputs a stack shares
//! with its dependents. The server streams ciphertext in and out and keeps its SHA-256;
//! it cannot read any of it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use gantry_domain::{RunState, RunType};
use gantry_proto::agent::{
    BlobRef, LOCK_GENERATION_HEADER, SHA256_HEADER, STATE_RUN_HEADER, StateStored,
};
use gantry_store::{BlobRecord, RunRecord, StackRecord, StateFence};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::lookup;
use crate::state::{AppState, now};

pub(crate) const WORKSPACE: &str = "workspace";
pub(crate) const SENSITIVE_OUTPUTS: &str = "sensitive-outputs";

fn sensitive_outputs_key(run: &RunRecord) -> String {
    format!("runs/{}/sensitive-outputs", run.id.to_string().to_ascii_lowercase())
}

fn workspace_key(run: &RunRecord) -> String {
    format!("runs/{}/workspace", run.id.to_string().to_ascii_lowercase())
}

fn state_key(run: &RunRecord) -> String {
    format!(
        "stacks/{}/state/{}",
        run.stack_id.to_string().to_ascii_lowercase(),
        run.id.to_string().to_ascii_lowercase()
    )
}

/// Where a fenced-off run's state goes: apart from the states it stored while it held
/// the lock.
fn orphaned_state_key(run: &RunRecord) -> String {
    format!("{}.orphaned", state_key(run))
}

/// Sixteen random hex digits: what makes a blob's key its own.
pub(crate) fn fresh_token() -> String {
    gantry_crypto::sha256_hex(gantry_crypto::random_secret("").as_bytes())[..16].to_owned()
}

/// Removes a blob no record names any more, through the effects loop, which tries
/// again until it is gone.
pub(crate) async fn forget_blob(state: &AppState, key: String) -> Result<(), ApiError> {
    state.store.add_effects(&[gantry_store::Effect::DeleteBlob { key }], now()).await?;
    state.events.wake_effects();
    Ok(())
}

/// The run, if it executes on this launcher.
async fn executing_here(
    state: &AppState,
    session: &AgentSession,
    key: &str,
) -> Result<RunRecord, ApiError> {
    let (run, held_here) = lookup::launcher_run(state, session, key).await?;
    if !held_here {
        return Err(ApiError::NotAssigned(format!(
            "run {} is not executing on this launcher",
            run.id
        )));
    }
    Ok(run)
}

/// Which runs may upload a kind of blob, and of which stacks.
struct UploadRule {
    what: &'static str,
    /// The runs that may, for the refusal: "only ... can".
    runs: &'static str,
    run_may: fn(&RunRecord) -> bool,
    stack_may: fn(&StackRecord) -> bool,
    /// Why a stack may not, after its name.
    stack_refusal: &'static str,
}

const STATE_UPLOAD: UploadRule = UploadRule {
    what: "state",
    runs: "an applying tracked run or a task",
    run_may: |run| {
        run.run_type.takes_stack_lock()
            && matches!(run.state, RunState::Applying | RunState::Performing)
    },
    stack_may: |stack| stack.managed_state,
    stack_refusal: "does not let Gantry manage its state",
};

const OUTPUTS_UPLOAD: UploadRule = UploadRule {
    what: "outputs",
    runs: "a tracked run planning or applying",
    run_may: |run| {
        run.run_type == RunType::Tracked
            && matches!(run.state, RunState::Planning | RunState::Applying)
    },
    stack_may: |stack| stack.share_sensitive_outputs,
    stack_refusal: "does not share its sensitive outputs",
};

/// The run executing here that uploads, and its stack, when `rule` allows it.
async fn uploader(
    state: &AppState,
    session: &AgentSession,
    key: &str,
    rule: &UploadRule,
) -> Result<(RunRecord, StackRecord), ApiError> {
    let run = executing_here(state, session, key).await?;
    if !(rule.run_may)(&run) {
        return Err(ApiError::invalid(format!(
            "run {} cannot store {} now (it is {} {}): only {} can",
            run.id, rule.what, run.run_type, run.state, rule.runs
        )));
    }
    let stack = stack_allowing(state, &run, rule).await?;
    Ok((run, stack))
}

/// The run's stack, when `rule` lets it store that kind of blob.
async fn stack_allowing(
    state: &AppState,
    run: &RunRecord,
    rule: &UploadRule,
) -> Result<StackRecord, ApiError> {
    let stack = lookup::stack(state, &run.stack_id.to_string()).await?;
    if !(rule.stack_may)(&stack) {
        return Err(ApiError::invalid(format!("stack {} {}", stack.name, rule.stack_refusal)));
    }
    Ok(stack)
}

/// Streams the request body into the blob store under a key of its own (`prefix` and a
/// fresh token) and checks the digest the launcher sent. An upload never writes over a
/// blob a record names, not even a retry by the same run (a recovering launcher seals
/// the same state again, into other bytes), and a damaged one removes only itself.
async fn receive(
    state: &AppState,
    prefix: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<BlobRecord, ApiError> {
    let expected = announced_sha256(headers)?;
    let key = format!("{prefix}.{}", fresh_token());
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let written = state.blobs.put(&key, Box::pin(stream), state.max_blob_size).await?;
    if written.sha256 != expected {
        state.blobs.delete(&key).await?;
        return Err(ApiError::invalid(format!(
            "the upload arrived damaged: its SHA-256 is {}, the launcher sent {expected}",
            written.sha256
        )));
    }
    Ok(BlobRecord { key, sha256: written.sha256, size: written.size, created_at: now() })
}

/// A blob as a streamed response with its size and digest.
async fn send(
    state: &AppState,
    blob: &BlobRecord,
    extra: Option<(&'static str, String)>,
) -> Result<Response, ApiError> {
    let (size, stream) = state.blobs.get(&blob.key).await?.ok_or_else(|| {
        ApiError::not_found("blob", format!("{} (it was removed from the blob store)", blob.key))
    })?;
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&blob.sha256) {
        headers.insert(SHA256_HEADER, value);
    }
    if let Some((name, value)) = extra
        && let Ok(value) = HeaderValue::from_str(&value)
    {
        headers.insert(name, value);
    }
    Ok(response)
}

/// `PUT /runs/{run}/workspace`: the packed, encrypted workspace of a plan that waits for
/// confirmation.
pub(super) async fn put_workspace(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<BlobRef>> {
    let run = executing_here(&state, &session, &key).await?;
    let awaiting = run.run_type == RunType::Tracked
        && run.state == RunState::Planning
        && run.has_changes == Some(true);
    if !awaiting {
        return Err(ApiError::invalid(format!(
            "run {} does not wait for its workspace (it is {}): only a tracked plan with changes does",
            run.id, run.state
        )));
    }
    let replaced = state.store.run_blob(run.id, WORKSPACE).await?;
    let blob = receive(&state, &workspace_key(&run), &headers, body).await?;
    state.store.put_run_blob(run.id, WORKSPACE, &blob).await?;
    if let Some(replaced) = replaced {
        forget_blob(&state, replaced.key).await?;
    }
    tracing::info!(run = %run.id, bytes = blob.size, "encrypted workspace stored");
    Ok(Json(BlobRef { sha256: blob.sha256, size: blob.size }))
}

/// `GET /runs/{run}/workspace`: the workspace a confirmed run applies from.
pub(super) async fn get_workspace(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
) -> ApiResult<Response> {
    let run = executing_here(&state, &session, &key).await?;
    let blob = state
        .store
        .run_blob(run.id, WORKSPACE)
        .await?
        .ok_or_else(|| ApiError::not_found("workspace", format!("of run {}", run.id)))?;
    send(&state, &blob, None).await
}

/// `GET /runs/{run}/state`: the newest managed state of the run's stack; 404 when the
/// stack has none yet.
pub(super) async fn get_state(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
) -> ApiResult<Response> {
    let run = executing_here(&state, &session, &key).await?;
    let version = state
        .store
        .current_state_version(run.stack_id)
        .await?
        .ok_or_else(|| ApiError::not_found("state", format!("of stack {}", run.stack_id)))?;
    send(&state, &version.blob, Some((STATE_RUN_HEADER, version.run_id.to_string()))).await
}

/// `PUT /runs/{run}/state`: the state an apply left, a new version of the stack's
/// managed state. The stack lock makes the applying run the only writer, and the lock's
/// generation fences off a run that no longer holds it: its state is kept as an orphaned
/// version (202), which a user may adopt, never silently dropped nor made current.
pub(super) async fn put_state(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<StateStored>)> {
    let (run, stack, fence) = state_uploader(&state, &session, &key, &headers).await?;
    let blob_prefix = match fence {
        Some(_) => state_key(&run),
        None => orphaned_state_key(&run),
    };
    let blob = receive(&state, &blob_prefix, &headers, body).await?;
    let (version, added) =
        state.store.add_run_state_version(run.stack_id, run.id, fence, &blob).await?;
    if !added {
        // A retry: the version names the blob its first upload wrote.
        forget_blob(&state, blob.key).await?;
    }
    let status = if version.orphaned {
        tracing::warn!(
            run = %run.id,
            stack = %stack.name,
            version = version.seq,
            run_state = %run.state,
            "a fenced-off run's state was kept as an orphaned version: it is not current"
        );
        StatusCode::ACCEPTED
    } else if added {
        tracing::info!(run = %run.id, stack = %stack.name, version = version.seq, "managed state stored");
        crate::api::state_versions::prune(&state, run.stack_id).await;
        StatusCode::CREATED
    } else {
        // A retried upload of the same state is the same version.
        StatusCode::OK
    };
    Ok((
        status,
        Json(StateStored {
            sha256: version.blob.sha256,
            size: version.blob.size,
            version: Some(version.seq),
            orphaned: version.orphaned,
        }),
    ))
}

/// The run uploading its state, its stack, and the fence under which the state may
/// become current: `None` for a run that ended (the server failed it as its launcher
/// went on applying), whose state can only be kept as an orphaned version.
async fn state_uploader(
    state: &AppState,
    session: &AgentSession,
    key: &str,
    headers: &HeaderMap,
) -> Result<(RunRecord, StackRecord, Option<StateFence>), ApiError> {
    let sent = match headers.get(LOCK_GENERATION_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|text| text.parse::<u64>().ok()).ok_or_else(
            || {
                ApiError::invalid(format!(
                    "the {LOCK_GENERATION_HEADER} header must be the lock generation of the run's assignment, a whole number"
                ))
            },
        )?),
    };
    let (run, _) = lookup::launcher_run(state, session, key).await?;
    if !(run.run_type.takes_stack_lock() && run.state.is_terminal()) {
        let (run, stack) = uploader(state, session, key, &STATE_UPLOAD).await?;
        // Launchers before lock generations send none: the run's state and the stack's
        // generation, checked with the version's append, still fence them.
        let fence = StateFence { run_state: run.state, lock_generation: sent };
        return Ok((run, stack, Some(fence)));
    }
    // An ended run is held by no worker any more: any launcher of its pool (which holds
    // the pool key the state is sealed with) may hand in what it applied.
    let applied = state
        .store
        .run_history(run.id)
        .await?
        .iter()
        .any(|change| matches!(change.state, RunState::Applying | RunState::Performing));
    if !applied {
        return Err(ApiError::invalid(format!(
            "run {} cannot store state: it ended ({}) without applying",
            run.id, run.state
        )));
    }
    let stack = stack_allowing(state, &run, &STATE_UPLOAD).await?;
    Ok((run, stack, None))
}

/// The SHA-256 an upload announces, when it is one.
fn announced_sha256(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(SHA256_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|sha256| sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::invalid(format!("uploads need the {SHA256_HEADER} header: a SHA-256 in hex"))
        })
}

/// `PUT /runs/{run}/sensitive-outputs`: the run's sensitive outputs, sealed to the pool
/// key, for the runs of stacks that depend on its stack. Only a tracked run whose stack
/// shares them stores them; they stay after the run ends, as its outputs do.
pub(super) async fn put_sensitive_outputs(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<BlobRef>> {
    let (run, stack) = uploader(&state, &session, &key, &OUTPUTS_UPLOAD).await?;
    let replaced = state.store.run_blob(run.id, SENSITIVE_OUTPUTS).await?;
    let blob = receive(&state, &sensitive_outputs_key(&run), &headers, body).await?;
    state.store.put_run_blob(run.id, SENSITIVE_OUTPUTS, &blob).await?;
    if let Some(replaced) = replaced {
        forget_blob(&state, replaced.key).await?;
    }
    tracing::info!(run = %run.id, stack = %stack.name, "sealed sensitive outputs stored");
    Ok(Json(BlobRef { sha256: blob.sha256, size: blob.size }))
}

/// `GET /runs/{run}/inputs/{upstream_run}`: the sealed sensitive outputs of a run of a
/// stack the run's stack depends on, for a launcher of the same pool to open.
pub(super) async fn get_sealed_input(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam((key, upstream_key)): PathParam<(String, String)>,
) -> ApiResult<Response> {
    let run = executing_here(&state, &session, &key).await?;
    let upstream_run = lookup::run(&state, &upstream_key).await?;
    let depends = state
        .store
        .list_dependencies()
        .await?
        .iter()
        .any(|edge| edge.downstream == run.stack_id && edge.upstream == upstream_run.stack_id);
    if !depends || upstream_run.pool_id != session.pool_id {
        return Err(ApiError::NotAssigned(format!(
            "run {} does not take inputs from run {}",
            run.id, upstream_run.id
        )));
    }
    let blob =
        state.store.run_blob(upstream_run.id, SENSITIVE_OUTPUTS).await?.ok_or_else(|| {
            ApiError::not_found("sensitive outputs", format!("of run {}", upstream_run.id))
        })?;
    send(&state, &blob, None).await
}
