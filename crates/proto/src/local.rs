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
/// Environment variable: what the worker's standard input carries. `capability`
/// ([`INPUT_CAPABILITY`]) when the capability comes there instead of in
/// [`CAPABILITY_ENV`] (the process executor's way), one line then the end of input. The
/// worker then has no secret in its environment block, so it need not re-execute itself
/// to drop one: a process start saved on every run.
pub const INPUT_ENV: &str = "GANTRY_WORKER_INPUT";
/// [`INPUT_ENV`]'s value when standard input carries the capability.
pub const INPUT_CAPABILITY: &str = "capability";
/// Environment variable: how many seconds the worker waits for the launcher's socket to
/// appear (a Kubernetes run Pod's sidecar may still be binding it); 0 when unset.
pub const SOCKET_WAIT_ENV: &str = "GANTRY_WORKER_SOCKET_WAIT_SECONDS";
/// Environment variable holding the process id of a launcher that started the worker as
/// its child: the worker then ends when that launcher dies.
pub const LAUNCHER_PID_ENV: &str = "GANTRY_LAUNCHER_PID";

/// `GET /v1/job`: what the worker must do.
#[serde_as]
#[derive(Clone, Serialize, Deserialize)]
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
    /// A TASK's command, run with `sh -c` in `working_directory` after `init`.
    #[serde(default)]
    pub command: Option<String>,
    /// Send the values of sensitive outputs along with the outputs report, for the
    /// launcher to seal: the stack shares them and the launcher uploads them.
    #[serde(default)]
    pub collect_sensitive_outputs: bool,
    /// Print every command before running it (`GANTRY_DEBUG`).
    pub debug: bool,
}

// The environment holds secrets (stack secrets, opened sensitive inputs, masked launcher
// variables): debug output names its variables only.
impl std::fmt::Debug for WorkerJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.environment.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("WorkerJob")
            .field("run_id", &self.run_id)
            .field("run_type", &self.run_type)
            .field("job", &self.job)
            .field("tool_executable", &self.tool_executable)
            .field("working_directory", &self.working_directory)
            .field("environment_names", &names)
            .field("plan_file", &self.plan_file)
            .field("command", &self.command)
            .field("collect_sensitive_outputs", &self.collect_sensitive_outputs)
            .field("debug", &self.debug)
            .finish()
    }
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
    /// With an outputs report, when the job asks for them: the values of the sensitive
    /// outputs. The launcher seals them to the pool key; they never travel in clear
    /// beyond the launcher, and `report` itself never carries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensitive_outputs: Vec<SensitiveOutput>,
}

impl From<RunReport> for WorkerReport {
    fn from(report: RunReport) -> Self {
        Self { report, sensitive_outputs: Vec::new() }
    }
}

/// One sensitive output's value.
#[derive(Clone, Serialize, Deserialize)]
pub struct SensitiveOutput {
    pub name: String,
    pub value: serde_json::Value,
}

impl std::fmt::Debug for SensitiveOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SensitiveOutput").field("name", &self.name).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerDirective {
    pub directive: Directive,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_debug_output_names_its_variables_without_their_values() {
        let job = WorkerJob {
            run_id: RunId::generate(),
            run_type: RunType::Tracked,
            job: Job::Plan,
            tool_executable: "terraform".to_owned(),
            working_directory: "/w".to_owned(),
            environment: vec![("TF_VAR_password".to_owned(), "hunter22".to_owned())],
            plan_file: "plan".to_owned(),
            command: None,
            collect_sensitive_outputs: false,
            debug: false,
        };
        let shown = format!("{job:?}");
        assert!(shown.contains("TF_VAR_password") && !shown.contains("hunter22"), "{shown}");
    }
}
