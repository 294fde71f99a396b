//! Who is calling: a person or script with an API key (REST API, see `access`), or a
//! launcher with a session token (agent plane). Both are bearer secrets looked up by
//! their hash.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use gantry_crypto::hash_secret;
use gantry_domain::{LauncherId, PoolId};

use crate::error::ApiError;
use crate::state::{AppState, now};

pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(ApiError::MissingCredentials)
}

/// A launcher's session, as proven when it was opened.
#[derive(Debug, Clone)]
pub(crate) struct AgentSession {
    pub pool_id: PoolId,
    pub launcher_id: LauncherId,
    pub hostname: String,
    pub launcher_version: String,
    pub token_hash: String,
    /// When the session opened: a pool cycle affects sessions opened before it.
    pub opened_at: gantry_domain::Timestamp,
    /// When the pool was last asked to cycle, as of this request.
    pub pool_cycle_requested_at: Option<gantry_domain::Timestamp>,
    pub expires_at: gantry_domain::Timestamp,
}

impl FromRequestParts<AppState> for AgentSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token_hash = hash_secret(bearer(parts).map_err(|_| ApiError::SessionExpired)?);
        Self::validate(state, token_hash).await
    }
}

impl AgentSession {
    /// The session of this token hash, if it is still good: not expired, and opened with
    /// the pool's current certificate. Read from the database at most once a second per
    /// session (see `session_cache`).
    async fn validate(state: &AppState, token_hash: String) -> Result<Self, ApiError> {
        if let Some(session) = state.sessions.get(&token_hash) {
            return Ok(session);
        }
        let generation = state.sessions.generation();
        let session = Self::read(state, token_hash).await?;
        state.sessions.put(&session, generation);
        Ok(session)
    }

    async fn read(state: &AppState, token_hash: String) -> Result<Self, ApiError> {
        let found = state.store.find_session(&token_hash).await?.ok_or(ApiError::SessionExpired)?;
        let session = found.session;
        if session.expires_at < now() {
            return Err(ApiError::SessionExpired);
        }
        if found.pool_certificate_fingerprint.as_deref()
            != Some(session.certificate_fingerprint.as_str())
        {
            return Err(ApiError::PoolReset(session.pool_id));
        }
        Ok(Self {
            pool_id: session.pool_id,
            launcher_id: session.launcher_id,
            hostname: session.hostname,
            launcher_version: session.launcher_version,
            token_hash,
            opened_at: session.created_at,
            pool_cycle_requested_at: found.pool_cycle_requested_at,
            expires_at: session.expires_at,
        })
    }

    /// The session as it is now; fails once it has ended (a pool reset deletes it). A
    /// long-poll refreshes its session whenever it wakes.
    pub(crate) async fn refreshed(&self, state: &AppState) -> Result<Self, ApiError> {
        Self::validate(state, self.token_hash.clone()).await
    }

    /// Whether the launcher must exit after its current runs: its pool was cycled after
    /// the session opened.
    pub(crate) fn cycling(&self) -> bool {
        self.pool_cycle_requested_at.is_some_and(|at| at >= self.opened_at)
    }
}
