//! The chaos suite's pure parts: the script runs execute and what it leaves in a run's
//! log and in the host journal, the seeded fault plan, the invariant checker and the
//! figures it prints. Everything here is plain data in, plain data out; the harness that
//! starts servers, launchers and PostgreSQL and injects the faults is the `chaos` test.

pub mod faults;
pub mod figures;
pub mod invariants;
pub mod journal;
pub mod script;
