//! Opening a session: the launcher asks for a challenge, signs it with the pool private
//! key, and gets a session token if the signature verifies against the pool certificate
//! this server issued. Closing one deregisters the launcher's workers.

use axum::extract::State;
use base64::Engine;
use gantry_crypto::{Certificate, hash_secret, random_secret, verify_session_signature};
use gantry_proto::agent::{ChallengeRequest, ChallengeResponse, OpenSession, SessionOpened};
use gantry_store::{PoolRecord, SessionRecord};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json};
use crate::events::ClusterSignal;
use crate::http_limits::{Failure, Source, authentication_failed};
use crate::lifecycle;
use crate::state::{AppState, now};

const CHALLENGE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The pool a launcher asks to join. The shared pool is joined like any other: only the
/// server holds its key, and the key is what a session proves.
async fn launcher_pool(
    state: &AppState,
    pool_id: gantry_domain::PoolId,
) -> Result<PoolRecord, ApiError> {
    let pool = state.store.get_pool(pool_id).await?.ok_or_else(|| {
        ApiError::not_found(
            "pool",
            format!("{pool_id} (the token belongs to another server, or the pool was deleted)"),
        )
    })?;
    Ok(pool)
}

pub(super) async fn challenge(
    State(state): State<AppState>,
    source: Source,
    Json(request): Json<ChallengeRequest>,
) -> ApiResult<Json<ChallengeResponse>> {
    let pool = pool_to_prove(&state, source, request.pool_id).await?;
    let expires = now().plus(CHALLENGE_LIFETIME);
    Ok(Json(ChallengeResponse {
        challenge: state.challenges.issue(&pool.id.to_string(), expires.unix_millis()),
        certificate_fingerprint: pool.certificate_fingerprint,
    }))
}

pub(super) async fn open(
    State(state): State<AppState>,
    source: Source,
    Json(request): Json<OpenSession>,
) -> ApiResult<Json<SessionOpened>> {
    let pool = pool_to_prove(&state, source, request.pool_id).await?;
    let certificate = match verify_proof(&pool, &state, &request) {
        Err(error @ (ApiError::InvalidProof(_) | ApiError::InvalidRequest(_))) => {
            authentication_failed(&state, source, Failure::SessionProof(pool.id)).await;
            return Err(error);
        }
        verified => verified?,
    };
    let token = random_secret("gst_");
    let at = now();
    let session = SessionRecord {
        token_hash: hash_secret(&token),
        pool_id: pool.id,
        launcher_id: request.launcher.id,
        certificate_fingerprint: certificate.fingerprint().to_owned(),
        hostname: truncate(&request.launcher.hostname, 253),
        launcher_version: truncate(&request.launcher.version, 64),
        created_at: at,
        expires_at: at.plus(state.timings.session_ttl),
    };
    state.store.insert_session(&session).await?;
    tracing::info!(pool = %pool.name, launcher = %session.launcher_id, host = %session.hostname, "launcher session opened");
    let target = format!("pool={}", pool.name);
    crate::audit::launcher_event(
        &state,
        session.launcher_id,
        "launcher session opened",
        target,
        source,
    )
    .await;
    Ok(Json(SessionOpened {
        session_token: token,
        launcher_id: session.launcher_id,
        expires_in_seconds: state.timings.session_ttl.as_secs(),
        heartbeat_interval_seconds: state.timings.heartbeat_interval.as_secs(),
        poll_timeout_seconds: state.timings.poll_timeout.as_secs(),
        worker_lease: Some(gantry_proto::lease::LeaseTerms {
            lease_seconds: state.timings.worker_lease.as_secs(),
            grace_seconds: state.timings.worker_lease_grace.as_secs(),
        }),
    }))
}

/// A launcher going away cleanly: its workers leave the pool at once; a run it was handed
/// but had not started goes back to the queue, a run it was executing fails.
pub(super) async fn close(
    State(state): State<AppState>,
    session: AgentSession,
) -> ApiResult<Json<serde_json::Value>> {
    let own = super::poll::own_workers(&state, &session).await?;
    for worker in &own {
        let Some(run_id) = worker.current_run_id else { continue };
        let Some(run) = state.store.get_run(run_id).await? else { continue };
        if run.worker_id != Some(worker.id) || run.state.is_terminal() {
            continue;
        }
        let outcome = if run.state.wants_worker() {
            lifecycle::unassign(&state, &run).await
        } else {
            lifecycle::fail(&state, &run, "the launcher shut down while the run was executing")
                .await
        };
        if let Err(error) = outcome
            && !lifecycle::lost_race(&error)
        {
            return Err(error);
        }
    }
    let ids: Vec<_> = own.iter().map(|worker| worker.id).collect();
    state.store.delete_workers(&ids).await?;
    state.store.delete_session(&session.token_hash).await?;
    state.sessions.forget(&session.token_hash);
    state.events.tell_cluster(ClusterSignal::Session(session.token_hash.clone()));
    state.events.request_scheduling();
    tracing::info!(launcher = %session.launcher_id, host = %session.hostname, workers = ids.len(), "launcher left");
    Ok(Json(serde_json::json!({})))
}

/// The pool a launcher asks to prove its key for, unless its address or the pool failed
/// too often. Asking for a pool that does not exist is no failure: pool ids are not
/// secret, and a launcher of a deleted pool keeps asking.
async fn pool_to_prove(
    state: &AppState,
    source: Source,
    pool_id: gantry_domain::PoolId,
) -> ApiResult<PoolRecord> {
    state.http_guards.admit(source, crate::http_limits::Failure::SessionProof(pool_id))?;
    launcher_pool(state, pool_id).await
}

fn pool_certificate(pool: &PoolRecord) -> ApiResult<Certificate> {
    let certificate_pem = pool
        .certificate_pem
        .as_deref()
        .ok_or_else(|| ApiError::Internal(format!("pool {} has no certificate", pool.name)))?;
    Certificate::from_pem(certificate_pem).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Whether the launcher answered a challenge of this server, for this pool, with a
/// signature by the pool's key; the pool's certificate when it did.
fn verify_proof(
    pool: &PoolRecord,
    state: &AppState,
    request: &OpenSession,
) -> ApiResult<Certificate> {
    state
        .challenges
        .verify(&request.challenge, &pool.id.to_string(), now().unix_millis())
        .map_err(|_| {
            ApiError::InvalidProof(
                "the session challenge is invalid or expired: ask for a new one".to_owned(),
            )
        })?;
    let certificate = pool_certificate(pool)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(request.signature.trim())
        .map_err(|_| ApiError::invalid("signature is not base64"))?;
    verify_session_signature(&certificate, &request.challenge, &signature).map_err(|_| {
        ApiError::InvalidProof(format!(
            "the proof does not verify against the certificate of pool {}: GANTRY_POOL_PRIVATE_KEY is not this pool's key",
            pool.name
        ))
    })?;
    Ok(certificate)
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}
