//! The reconciler of what launchers execute: a run the server believes executes on a
//! launcher's worker, which that launcher's heartbeats no longer name, has stopped there
//! (the launcher restarted, or lost it): it is failed rather than left holding its
//! worker and its stack's lock for ever.
//!
//! Two heartbeats without it are needed: one built just before the launcher took the run
//! on may reach the server after the run was acknowledged (the launcher names a run from
//! before its acknowledgement, and sends one heartbeat at a time).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use gantry_domain::{LauncherId, RunId, WorkerId};

/// How many heartbeats in a row must leave a run out before it is failed.
pub(crate) const MISSES_TO_FAIL: u32 = 2;

/// The runs each launcher's heartbeats left out, and how many times in a row; kept in
/// the server process that received them (a heartbeat reaching another replica is not
/// counted, which can only make a run take longer to fail).
#[derive(Debug, Default)]
pub(crate) struct UnlistedRuns(Mutex<HashMap<LauncherId, HashMap<RunId, u32>>>);

impl UnlistedRuns {
    /// Records one heartbeat of `launcher_id`: `executing` are the runs the store says
    /// execute on its workers (acknowledged, not just handed over), each with its worker,
    /// `worker_ids` the workers it heart-beat for, `listed` the runs it says it executes.
    /// Returns the runs left out `MISSES_TO_FAIL` times in a row.
    pub(crate) fn heartbeat(
        &self,
        launcher_id: LauncherId,
        executing: &[(RunId, WorkerId)],
        worker_ids: &[WorkerId],
        listed: &[RunId],
    ) -> Vec<RunId> {
        // A heartbeat for no worker (a Pod's sidecar asking about its own run) says
        // nothing about the other runs.
        if worker_ids.is_empty() {
            return Vec::new();
        }
        let mut launchers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let before = launchers.remove(&launcher_id).unwrap_or_default();
        let mut now_missing = HashMap::new();
        for (run_id, worker_id) in executing {
            if worker_ids.contains(worker_id) && !listed.contains(run_id) {
                let misses = before.get(run_id).copied().unwrap_or(0) + 1;
                now_missing.insert(*run_id, misses);
            }
        }
        let lost = now_missing
            .iter()
            .filter(|(_, misses)| **misses >= MISSES_TO_FAIL)
            .map(|(run_id, _)| *run_id)
            .collect();
        if !now_missing.is_empty() {
            launchers.insert(launcher_id, now_missing);
        }
        lost
    }

    /// Forgets the launchers that are gone.
    pub(crate) fn retain_launchers(&self, alive: impl Fn(LauncherId) -> bool) {
        let mut launchers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        launchers.retain(|launcher_id, _| alive(*launcher_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: u128) -> RunId {
        RunId::from_u128(id)
    }

    fn worker(id: u128) -> WorkerId {
        WorkerId::from_u128(id)
    }

    #[test]
    fn a_run_left_out_of_two_heartbeats_in_a_row_is_lost_and_one_listed_is_not() {
        let launcher = LauncherId::from_u128(7);
        let workers = [worker(1), worker(2)];
        let executing = [(run(10), worker(1)), (run(11), worker(2))];
        let unlisted = UnlistedRuns::default();
        let listed = [run(11)];
        assert_eq!(unlisted.heartbeat(launcher, &executing, &workers, &listed), []);
        assert_eq!(unlisted.heartbeat(launcher, &executing, &workers, &listed), [run(10)]);

        // Listed in between: the count starts again.
        let fresh = UnlistedRuns::default();
        let both = [run(10), run(11)];
        assert_eq!(fresh.heartbeat(launcher, &executing, &workers, &listed), []);
        assert_eq!(fresh.heartbeat(launcher, &executing, &workers, &both), []);
        assert_eq!(fresh.heartbeat(launcher, &executing, &workers, &listed), []);
    }

    #[test]
    fn runs_on_workers_not_heart_beaten_for_are_left_alone() {
        let launcher = LauncherId::from_u128(7);
        let executing = [(run(11), worker(2))];
        let unlisted = UnlistedRuns::default();
        // A Pod's sidecar heartbeats for its own run and no worker; another heartbeat
        // of the launcher is for worker 1 only.
        for _ in 0..3 {
            assert_eq!(unlisted.heartbeat(launcher, &executing, &[], &[]), []);
            assert_eq!(unlisted.heartbeat(launcher, &executing, &[worker(1)], &[]), []);
        }
        unlisted.heartbeat(launcher, &executing, &[worker(2)], &[]);
        unlisted.retain_launchers(|_| false);
        assert!(unlisted.0.lock().unwrap().is_empty());
    }
}
