//! The launcher hosted in a Kubernetes run Pod (`docs/operator.md`): `init` prepares the
//! run into the Pod's volumes and exits, `sidecar` serves the worker container's local
//! API and sees the run to its end. They drive the launcher's own run path (`init`
//! `run::prepare`; `sidecar` `run::execute` and `run::conclude`); the operator has
//! acknowledged the assignment and heartbeats.

mod config;
mod context;
mod init;
mod sidecar;

pub use config::{InitConfig, PodConfig, PodRunner, SidecarConfig};
pub use context::PodError;
pub use init::init;
pub use sidecar::sidecar;
