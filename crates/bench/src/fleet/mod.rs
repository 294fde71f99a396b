//! The fleet benchmark: dispatch at scale. One `gantry server` process on SQLite, or one
//! or several replicas on one PostgreSQL database, a fleet of simulated launchers (1,000
//! idle workers by default) in long-poll against them, and no-op runs: dispatch latency,
//! throughput, and the servers' CPU and memory.

mod cpu;
mod database;
mod launcher;
mod limits;
mod run;
mod server_process;
mod summary;

pub use database::{DatabaseStats, FleetDatabase, StatementStats, WalStats};
pub use run::{FleetOptions, fleet};
pub use summary::{FleetMeasures, LatencySummary, PhaseCpu, ReplicaPaths, fleet_report};
