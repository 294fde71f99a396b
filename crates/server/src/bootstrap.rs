//! The first admin API key: created at first start, shown once, stored as a hash.

use gantry_crypto::{hash_secret, random_secret};
use gantry_domain::access::{Role, Scope};
use gantry_store::{ApiKeyRecord, Store, StoreError};

use crate::StartError;
use crate::master_key::ServerSecrets;
use crate::state::now;

const BOOTSTRAP_MARKER: &str = "initial-admin-key";
/// API keys start with this prefix, so a leaked key is recognisable.
pub const API_KEY_PREFIX: &str = "gak_";

/// Creates the first admin key if the server has none, and returns it: the only time it
/// exists in clear. When several replicas start together, one of them creates it.
pub(crate) async fn initial_admin_key(
    store: &dyn Store,
    secrets: &ServerSecrets,
) -> Result<Option<String>, StartError> {
    if store.count_api_keys().await? > 0 {
        return Ok(None);
    }
    let key = random_secret(API_KEY_PREFIX);
    let hash = hash_secret(&key);
    let winner = secrets.get_or_insert(store, BOOTSTRAP_MARKER, hash.as_bytes(), now()).await?;
    if winner.as_slice() != hash.as_bytes() && store.count_api_keys().await? > 0 {
        // Another replica created the key meanwhile.
        return Ok(None);
    }
    // Either this start won, or an earlier start stopped before storing its key: that
    // key was never usable, so a new one is issued.
    store_key(store, "admin", hash, "gantry server").await?;
    Ok(Some(key))
}

/// A new admin key named `name`, returned in clear this once.
pub(crate) async fn issue_admin_key(store: &dyn Store, name: &str) -> Result<String, StoreError> {
    let key = random_secret(API_KEY_PREFIX);
    store_key(store, name, hash_secret(&key), name).await?;
    Ok(key)
}

/// Stores an admin key with no scope and no expiry, made by `created_by`.
async fn store_key(
    store: &dyn Store,
    name: &str,
    hash: String,
    created_by: &str,
) -> Result<(), StoreError> {
    store
        .insert_api_key(&ApiKeyRecord {
            // A prefix of the hash names the key without revealing anything about it.
            id: hash[..16].to_owned(),
            name: name.to_owned(),
            secret_hash: hash,
            role: Role::Admin,
            scope: Scope::everything(),
            created_by: created_by.to_owned(),
            created_at: now(),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        })
        .await
}
