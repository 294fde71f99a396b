//! Launcher sessions validated in the last second, so that an agent request does not
//! read its session from the database every time: a busy launcher makes several requests
//! per run. The database stays the truth: an entry is used for at most [`FRESH_FOR`],
//! never past its session's expiry, and a pool reset or cycle made through this server
//! forgets the pool's entries before anyone is told of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gantry_domain::PoolId;

use crate::auth::AgentSession;

/// How long a validated session is trusted without reading it again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// Entries kept before stale ones are swept out.
const SWEEP_ABOVE: usize = 4096;

#[derive(Debug, Default)]
pub struct SessionCache {
    entries: Mutex<HashMap<String, (AgentSession, Instant)>>,
    /// Counts forgettings: a validation read before one must not be kept after it.
    generation: AtomicU64,
}

impl SessionCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (AgentSession, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session of this token hash, if it was validated less than [`FRESH_FOR`] ago and
    /// has not expired since.
    pub(crate) fn get(&self, token_hash: &str) -> Option<AgentSession> {
        let entries = self.entries();
        let (session, validated_at) = entries.get(token_hash)?;
        let fresh = validated_at.elapsed() < FRESH_FOR && session.expires_at >= crate::state::now();
        fresh.then(|| session.clone())
    }

    /// Where forgetting stands: take it before reading a session, give it to `put`.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps a session read when `generation` stood where it was; one read before a reset
    /// or cycle it did not see is not kept.
    pub(crate) fn put(&self, session: &AgentSession, generation: u64) {
        let mut entries = self.entries();
        if self.generation() != generation {
            return;
        }
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, (_, validated_at)| validated_at.elapsed() < FRESH_FOR);
        }
        entries.insert(session.token_hash.clone(), (session.clone(), Instant::now()));
    }

    pub(crate) fn forget(&self, token_hash: &str) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.remove(token_hash);
    }

    /// Forgets every session of the pool: it was reset or cycled.
    pub(crate) fn forget_pool(&self, pool_id: PoolId) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.retain(|_, (session, _)| session.pool_id != pool_id);
    }
}

#[cfg(test)]
mod tests {
    use gantry_domain::{LauncherId, Timestamp};

    use super::*;

    fn session(token_hash: &str, pool_id: PoolId, expires_in_ms: i64) -> AgentSession {
        let now = crate::state::now();
        AgentSession {
            pool_id,
            launcher_id: LauncherId::generate(),
            hostname: "host".to_owned(),
            launcher_version: "0".to_owned(),
            token_hash: token_hash.to_owned(),
            opened_at: now,
            pool_cycle_requested_at: None,
            expires_at: Timestamp::from_unix_millis(now.unix_millis() + expires_in_ms),
        }
    }

    #[test]
    fn a_validated_session_is_kept_until_its_pool_is_reset() {
        let cache = SessionCache::default();
        let pool = PoolId::generate();
        let other = PoolId::generate();
        cache.put(&session("a", pool, 60_000), cache.generation());
        cache.put(&session("b", other, 60_000), cache.generation());
        assert!(cache.get("a").is_some());
        cache.forget_pool(pool);
        assert!(cache.get("a").is_none(), "a reset or cycle ends it at once");
        assert!(cache.get("b").is_some(), "other pools keep theirs");
        cache.forget("b");
        assert!(cache.get("b").is_none());
    }

    #[test]
    fn a_read_made_before_a_reset_is_not_kept_after_it() {
        let cache = SessionCache::default();
        let pool = PoolId::generate();
        let before = cache.generation();
        cache.forget_pool(pool);
        cache.put(&session("a", pool, 60_000), before);
        assert!(cache.get("a").is_none());
    }

    #[test]
    fn an_expired_session_is_never_served() {
        let cache = SessionCache::default();
        cache.put(&session("a", PoolId::generate(), -1), cache.generation());
        assert!(cache.get("a").is_none());
    }
}
