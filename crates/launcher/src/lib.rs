//! The Gantry launcher: runs on the pool owner's machine, holds the pool private key,
//! proves possession of it to open agent-plane sessions, keeps its worker slots
//! registered, long-polls for assignments, and supervises each run: workspace, worker
//! process, log relay, timeouts. The worker it starts never sees the key. In a Kubernetes
//! run Pod the same run code is hosted as two containers (`pod`: `init` and `sidecar`).

mod archive;
mod backoff;
mod client;
pub mod config;
mod confined;
mod delivery;
mod executor;
mod launcher;
mod lease;
mod logs;
mod mask;
mod metrics;
pub mod passed_env;
pub mod pod;
pub mod policy;
pub mod private_vcs;
mod recovery;
mod run;
mod stack_secrets;
mod state_check;
mod supervisor;
mod worker_binary;
mod workspace;

pub use client::{AgentClient, ClientError};
pub use config::{ConfigError, LauncherConfig};
pub use executor::{
    DockerExecutor, DockerSettings, Executor, ProcessExecutor, ProcessExecutorError, WorkerHandle,
    docker, registry_auth,
};
pub use launcher::{FatalError, Shutdown, run};
pub use worker_binary::{WORKER_BINARY_PUBLIC_KEY, WorkerSource};
