//! `gantry-worker`: the small binary a launcher starts once per run inside the runner
//! environment. It executes the run's phases with the real tool (`terraform` or `tofu`)
//! and talks only to its launcher, over the per-run unix socket of the local API
//! (`gantry_proto::local`). It never talks to the server and never sees the pool key.
//!
//! `main.rs` reads the configuration and calls [`run`]; everything else lives here.

mod client;
mod config;
mod error;
mod job;
mod lease;
mod log;
mod outputs;
mod termination;
mod tool;
mod utf8;

pub use config::Config;
pub use error::{Outcome, WorkerError};
pub use job::run;
pub use termination::{Termination, end_with_launcher};
