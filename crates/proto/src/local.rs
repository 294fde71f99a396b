//! The local API a launcher serves to the worker it started, over a per-run unix socket.
//! Every request carries the run's capability as a bearer token; the worker never talks
//! to the server and never sees the pool key.

use gantry_domain::{RunId, RunType};
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::agent::{Directive, Job, RunReport};

/// Environment variable holding the path of the launcher's socket.
pub const SOCKET_ENV: &str = "GANTRY_WORKER_SOCKET";
/// Environment variable holding the run's capability.
pub const CAPABILITY_ENV: &str = "GANTRY_WORKER_CAPABILITY";

/// `GET /v1/job`: what the worker must do.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerJob {
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    #[serde_as(as = "DisplayFromStr")]
    pub run_type: RunType,
    pub job: Job,
    /// The executable to run: `terraform` or `tofu`, looked up on PATH unless absolute.
    pub tool_executable: String,
    /// Absolute directory of the Terraform configuration.
    pub working_directory: String,
    /// Variables for the tool, on top of the worker's own environment.
    pub environment: Vec<(String, String)>,
    /// The saved plan's file name, in `working_directory`.
    pub plan_file: String,
    /// Print every command before running it (`GANTRY_DEBUG`).
    pub debug: bool,
}

/// `POST /v1/logs`: output for the run log, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerLog {
    pub text: String,
}

/// `POST /v1/reports`: a report, relayed to the server; the answer says what to do next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerReport {
    pub report: RunReport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerDirective {
    pub directive: Directive,
}
