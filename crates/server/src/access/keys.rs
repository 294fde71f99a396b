//! API keys: created by an admin (the secret is in the answer, the only time it exists
//! in clear), listed, and revoked, through the REST API and the web UI alike.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_crypto::{hash_secret, random_secret};
use gantry_domain::access::{Role, Scope};
use gantry_domain::validate_name;
use gantry_proto::keys::{ApiKey, CreateKey, KeyCreated, KeyList};
use gantry_store::ApiKeyRecord;

use super::Actor;
use crate::bootstrap::API_KEY_PREFIX;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::{AppState, now};

pub(crate) fn key_view(key: &ApiKeyRecord) -> ApiKey {
    ApiKey {
        id: key.id.clone(),
        name: key.name.clone(),
        role: key.role,
        scope: key.scope.written(),
        created_by: key.created_by.clone(),
        created_at: key.created_at,
        expires_at: key.expires_at,
        last_used_at: key.last_used_at,
        revoked_at: key.revoked_at,
    }
}

/// Checks the request and stores the key; returns it with its secret.
pub(crate) async fn create_key(
    state: &AppState,
    creator: &Actor,
    request: CreateKey,
) -> Result<KeyCreated, ApiError> {
    validate_name("API key", &request.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let scope = Scope::parse(&request.scope).map_err(|e| ApiError::invalid(e.to_string()))?;
    if request.role == Role::Admin && !scope.is_everything() {
        return Err(ApiError::invalid(
            "an admin key cannot have a scope: admins manage keys, which no scope bounds; give the key the operator role instead",
        ));
    }
    let at = now();
    if let Some(expires_at) = request.expires_at
        && expires_at <= at
    {
        return Err(ApiError::invalid(format!(
            "the expiry {} has passed: expected a time in the future",
            gantry_proto::format_timestamp(expires_at)
        )));
    }
    let keys = state.store.list_api_keys().await?;
    if keys.iter().any(|key| key.name == request.name && key.is_active(at)) {
        return Err(ApiError::Conflict(format!(
            "an API key named {:?} exists: revoke it or choose another name",
            request.name
        )));
    }
    let secret = random_secret(API_KEY_PREFIX);
    let secret_hash = hash_secret(&secret);
    let key = ApiKeyRecord {
        // A prefix of the hash names the key without revealing anything about it.
        id: secret_hash[..16].to_owned(),
        name: request.name,
        secret_hash,
        role: request.role,
        scope,
        created_by: creator.key_name.clone(),
        created_at: at,
        expires_at: request.expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    state.store.insert_api_key(&key).await?;
    tracing::info!(key = %key.name, role = %key.role, by = %creator.key_name, "API key created");
    Ok(KeyCreated { key: key_view(&key), secret })
}

/// Revokes the key with this id, or the active key with this name. The last active
/// admin key is kept: without one, nobody could create keys again.
pub(crate) async fn revoke_key(
    state: &AppState,
    revoker: &Actor,
    key: &str,
) -> Result<ApiKeyRecord, ApiError> {
    let at = now();
    let keys = state.store.list_api_keys().await?;
    let found = keys
        .iter()
        .find(|candidate| candidate.id == key)
        .or_else(|| keys.iter().find(|candidate| candidate.name == key && candidate.is_active(at)))
        .ok_or_else(|| ApiError::not_found("API key", key))?;
    let admins = keys.iter().filter(|k| k.role == Role::Admin && k.is_active(at)).count();
    if found.role == Role::Admin && found.is_active(at) && admins == 1 {
        return Err(ApiError::Conflict(format!(
            "API key {:?} is the last admin key: create another admin key before revoking it",
            found.name
        )));
    }
    let revoked = state.store.revoke_api_key(&found.id, at).await?;
    tracing::info!(key = %revoked.name, by = %revoker.key_name, "API key revoked");
    Ok(revoked)
}

pub(crate) async fn list(State(state): State<AppState>) -> ApiResult<Json<KeyList>> {
    let keys = state.store.list_api_keys().await?;
    Ok(Json(KeyList { keys: keys.iter().map(key_view).collect() }))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Json(request): Json<CreateKey>,
) -> ApiResult<(StatusCode, Json<KeyCreated>)> {
    Ok((StatusCode::CREATED, Json(create_key(&state, &actor, request).await?)))
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<ApiKey>> {
    Ok(Json(key_view(&revoke_key(&state, &actor, &key).await?)))
}
