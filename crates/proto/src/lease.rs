//! The worker's lease: how long a worker may go on without hearing from its launcher,
//! and how the server's stack locks stay consistent with it (fencing, issue 17).
//!
//! The server decides the terms and gives them to the launcher with its session; the
//! launcher grants the worker a lease that runs `lease` from the moment it *sent* the
//! last heartbeat the server acknowledged; a worker that holds no valid lease interrupts
//! the tool (SIGINT), waits `grace`, kills it and exits. The server therefore knows that
//! the holder of a stack's lock has stopped `lease + grace` after that heartbeat, and
//! frees the lock no sooner.

use serde::{Deserialize, Serialize};

/// The lease a worker holds until its launcher says otherwise, in seconds. Ten minutes:
/// a launcher cut off from the server (a server restart, a database outage) keeps its
/// runs going that long. A run whose launcher died fails within seconds all the same;
/// only its stack stays fenced for lease + grace (docs/scheduling.md, "Fencing").
pub const DEFAULT_LEASE_SECONDS: u64 = 600;
/// How long the tool has to stop after SIGINT before it is killed, in seconds.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

/// The terms of the lease, as the server sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseTerms {
    pub lease_seconds: u64,
    pub grace_seconds: u64,
}

impl Default for LeaseTerms {
    fn default() -> Self {
        Self { lease_seconds: DEFAULT_LEASE_SECONDS, grace_seconds: DEFAULT_GRACE_SECONDS }
    }
}

/// `GET /v1/lease` of the local API: the lease as the launcher grants it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLease {
    /// How much longer the worker may go on, in milliseconds; 0 when the launcher has
    /// itself lost the server for longer than the lease.
    pub valid_for_ms: u64,
    pub grace_seconds: u64,
}
