//! How long this server process has had its database without a break. Liveness judges
//! launchers by the heartbeats this process could record: after a start, or after the
//! database failed (a query of the sweeper's, or a heartbeat that could not be stored),
//! the heartbeats of live launchers may be missing for as long as it lasted. So the
//! liveness sweep waits until the database has answered for a full worker timeout again:
//! by then every live launcher has heart-beaten, and only the dead look stale. Per
//! process: another replica's database may have failed at other times.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gantry_store::StoreError;

#[derive(Debug, Default)]
pub(crate) struct DatabaseWatch {
    /// Since when the database has answered without a failure in between; `None`
    /// before the first answer and after a failure.
    answering_since: Mutex<Option<Instant>>,
}

impl DatabaseWatch {
    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.answering_since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The database answered at `at`.
    pub(crate) fn answered(&self, at: Instant) {
        self.since().get_or_insert(at);
    }

    /// The database failed: the clock starts again at its next answer.
    pub(crate) fn failed(&self) {
        if self.since().take().is_some() {
            tracing::warn!(
                "the database failed: the liveness sweep waits until it has answered for a full worker timeout again"
            );
        }
    }

    /// Records `error` as a failure of the database when it is one (not, say, a row
    /// that is missing).
    pub(crate) fn observe(&self, error: &StoreError) {
        if matches!(error, StoreError::Database(_) | StoreError::Durability(_)) {
            self.failed();
        }
    }

    /// Whether the database has answered without a break for at least `span` by `now`.
    pub(crate) fn answered_for(&self, span: Duration, now: Instant) -> bool {
        self.since().is_some_and(|since| now.saturating_duration_since(since) >= span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_may_judge_only_a_full_timeout_after_the_database_answers_again() {
        let watch = DatabaseWatch::default();
        let timeout = Duration::from_secs(40);
        let start = Instant::now();
        assert!(!watch.answered_for(timeout, start), "not before its first answer");
        watch.answered(start);
        watch.answered(start + Duration::from_secs(10));
        assert!(!watch.answered_for(timeout, start + Duration::from_secs(39)));
        assert!(watch.answered_for(timeout, start + Duration::from_secs(40)));

        let outage = start + Duration::from_secs(100);
        watch.observe(&StoreError::Database(sqlx::Error::PoolTimedOut));
        assert!(!watch.answered_for(timeout, outage));
        let back = outage + Duration::from_secs(300);
        watch.answered(back);
        assert!(!watch.answered_for(timeout, back + Duration::from_secs(39)));
        assert!(watch.answered_for(timeout, back + Duration::from_secs(40)));
    }

    #[test]
    fn only_failures_of_the_database_restart_the_clock() {
        let watch = DatabaseWatch::default();
        let start = Instant::now();
        watch.answered(start);
        watch.observe(&StoreError::NotFound { kind: "run", id: "r".to_owned() });
        assert!(watch.answered_for(Duration::from_secs(1), start + Duration::from_secs(1)));
        watch.observe(&StoreError::Durability("fsync failed".to_owned()));
        assert!(!watch.answered_for(Duration::from_secs(1), start + Duration::from_secs(1)));
    }
}
