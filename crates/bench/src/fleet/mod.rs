//! The fleet benchmark: dispatch at scale. One `gantry server` process on SQLite, a fleet
//! of simulated launchers (1,000 idle workers by default) in long-poll against it, and
//! no-op runs: dispatch latency, throughput, and the server's memory per idle worker.

mod cpu;
mod launcher;
mod limits;
mod run;
mod server_process;
mod summary;

pub use run::{FleetOptions, fleet};
pub use summary::{FleetMeasures, LatencySummary, PhaseCpu, fleet_report};
