//! The lease this launcher grants the workers it started (see `gantry_proto::lease`):
//! it runs from the moment the last heartbeat the server acknowledged was sent, so a
//! launcher cut off from the server stops granting it as surely as a dead one does.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_proto::lease::{LeaseTerms, WorkerLease};

#[derive(Debug, Default)]
pub(crate) struct LeaseClock {
    inner: Mutex<Clock>,
}

#[derive(Debug, Default)]
struct Clock {
    terms: LeaseTerms,
    /// When the last request the server acknowledged as a sign of life was sent.
    acknowledged_sent_at: Option<Instant>,
}

impl LeaseClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, Clock> {
        // A panic while holding this lock leaves two plain values: still consistent.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The terms the server's session gave.
    pub(crate) fn set_terms(&self, terms: LeaseTerms) {
        self.lock().terms = terms;
    }

    /// The server acknowledged a request sent at `sent_at` that tells it this launcher
    /// lives (a heartbeat, a registration): the server's clock for it started no earlier.
    pub(crate) fn acknowledged(&self, sent_at: Instant) {
        let mut clock = self.lock();
        if clock.acknowledged_sent_at.is_none_or(|previous| previous < sent_at) {
            clock.acknowledged_sent_at = Some(sent_at);
        }
    }

    /// The lease granted now. Before any acknowledged sign of life (a Pod's sidecar,
    /// which never heartbeats), the whole lease: such a worker's liveness is its Pod's.
    pub(crate) fn grant(&self) -> WorkerLease {
        self.grant_at(Instant::now())
    }

    fn grant_at(&self, now: Instant) -> WorkerLease {
        let clock = self.lock();
        let lease = Duration::from_secs(clock.terms.lease_seconds);
        let valid_for = match clock.acknowledged_sent_at {
            None => lease,
            Some(sent_at) => lease.saturating_sub(now.saturating_duration_since(sent_at)),
        };
        WorkerLease {
            valid_for_ms: u64::try_from(valid_for.as_millis()).unwrap_or(u64::MAX),
            grace_seconds: clock.terms.grace_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_last_acknowledged_heartbeat_and_runs_out() {
        let clock = LeaseClock::default();
        clock.set_terms(LeaseTerms { lease_seconds: 20, grace_seconds: 7 });
        let start = Instant::now();
        assert_eq!(clock.grant_at(start), WorkerLease { valid_for_ms: 20_000, grace_seconds: 7 });
        clock.acknowledged(start);
        let later = start + Duration::from_secs(15);
        assert_eq!(clock.grant_at(later).valid_for_ms, 5_000);
        // An older acknowledgement arriving late does not move the clock back.
        clock.acknowledged(start + Duration::from_secs(10));
        clock.acknowledged(start + Duration::from_secs(2));
        assert_eq!(clock.grant_at(later).valid_for_ms, 15_000);
        assert_eq!(clock.grant_at(start + Duration::from_secs(40)).valid_for_ms, 0);
    }
}
