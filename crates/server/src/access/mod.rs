//! Who is calling the REST API or the web UI, and what their key lets them do: the
//! [`Actor`] every authorized request carries in its extensions, and the per-route
//! decisions ([`routes`]) that let a request reach its handler or refuse it.

pub(crate) mod keys;
#[cfg(test)]
mod matrix_tests;
pub(crate) mod routes;

use std::collections::HashSet;
use std::time::Duration;

use gantry_crypto::hash_secret;
use gantry_domain::access::{Named, Role, Scope};
use gantry_domain::{PoolId, StackId};
use gantry_store::{ApiKeyRecord, PoolRecord, StackRecord};

use crate::error::ApiError;
use crate::state::{AppState, now};

pub(crate) use keys::{create_key, revoke_key};

/// How stale a key's last-use time may get: recording every use would make every read
/// request a database write.
const LAST_USE_GRANULARITY: Duration = Duration::from_secs(60);

/// The authenticated caller of a REST or UI request: the API key it used. Authorized
/// requests carry it in their extensions, for handlers that record who acted (a run's
/// `triggered_by`, a state rollback, the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The key's id (a prefix of its hash: not a secret).
    pub key_id: String,
    /// The key's name: what records of who acted show.
    pub key_name: String,
    pub role: Role,
    /// The pools and stacks the key reaches.
    pub scope: Scope,
}

impl Actor {
    fn of(key: &ApiKeyRecord) -> Self {
        Self {
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            role: key.role,
            scope: key.scope.clone(),
        }
    }

    /// The actor holding this secret, if it names a key that is neither revoked nor
    /// expired. Read from the database every time, so a revocation holds at once on
    /// every replica.
    pub(crate) async fn from_secret(state: &AppState, secret: &str) -> Result<Self, ApiError> {
        let key =
            state.store.find_api_key(&hash_secret(secret)).await?.ok_or(ApiError::InvalidApiKey)?;
        Self::from_key(state, &key).await.ok_or(ApiError::InvalidApiKey)
    }

    /// The actor of a key just read, if the key is still good; notes its use.
    pub(crate) async fn from_key(state: &AppState, key: &ApiKeyRecord) -> Option<Self> {
        let at = now();
        if !key.is_active(at) {
            return None;
        }
        let stale = key.last_used_at.is_none_or(|last| {
            at.unix_millis() - last.unix_millis() >= LAST_USE_GRANULARITY.as_millis() as i64
        });
        if stale && let Err(error) = state.store.touch_api_key(&key.id, at).await {
            // A last-use time is a hint: failing to record it must not refuse the caller.
            tracing::warn!(key = %key.name, %error, "could not record the key's last use");
        }
        Some(Self::of(key))
    }

    pub(crate) fn reaches_pool(&self, pool: &PoolRecord) -> bool {
        self.scope.covers_pool(named_pool(pool))
    }

    pub(crate) fn reaches_stack(&self, stack: &StackRecord, pool: &PoolRecord) -> bool {
        self.reaches_stack_named(Named { name: &stack.name, labels: &stack.labels }, pool)
    }

    pub(crate) fn reaches_stack_named(&self, stack: Named<'_>, pool: &PoolRecord) -> bool {
        self.scope.covers_stack(stack, named_pool(pool))
    }

    /// What a list shows this actor: `None` when it reaches everything.
    pub(crate) async fn reach(&self, state: &AppState) -> Result<Option<Reach>, ApiError> {
        if self.scope.is_everything() {
            return Ok(None);
        }
        let pools = state.store.list_pools().await?;
        let stacks = state.store.list_stacks().await?;
        let reached_pools: Vec<&PoolRecord> =
            pools.iter().filter(|pool| self.reaches_pool(pool)).collect();
        let stacks = stacks
            .iter()
            .filter(|stack| {
                pools
                    .iter()
                    .find(|pool| pool.id == stack.pool_id)
                    .is_some_and(|pool| self.reaches_stack(stack, pool))
            })
            .map(|stack| stack.id)
            .collect();
        Ok(Some(Reach { pools: reached_pools.iter().map(|pool| pool.id).collect(), stacks }))
    }
}

fn named_pool(pool: &PoolRecord) -> Named<'_> {
    Named { name: &pool.name, labels: &pool.labels }
}

/// The pools and stacks a scoped key reaches, for filtering lists.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reach {
    pools: HashSet<PoolId>,
    stacks: HashSet<StackId>,
}

impl Reach {
    pub(crate) fn pool(&self, id: PoolId) -> bool {
        self.pools.contains(&id)
    }

    pub(crate) fn stack(&self, id: StackId) -> bool {
        self.stacks.contains(&id)
    }
}

/// Keeps the items a list shows an actor: all of them when `reach` is `None`.
pub(crate) fn visible<T>(
    items: Vec<T>,
    reach: Option<&Reach>,
    keep: impl Fn(&Reach, &T) -> bool,
) -> Vec<T> {
    match reach {
        None => items,
        Some(reach) => items.into_iter().filter(|item| keep(reach, item)).collect(),
    }
}
