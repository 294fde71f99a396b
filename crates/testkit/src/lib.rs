//! Fixtures shared by Gantry's tests. Everything here is real: a server listening on a
//! loopback port with its own CA, keys and CSRs made by the `openssl` command, git
//! repositories made by `git`, Terraform configurations that need no provider download,
//! an S3-compatible server (moto), Helm charts rendered by `helm`; and the bounds of the
//! fuzz tests (`fuzz`).

pub mod fuzz;
mod git;
pub mod helm;
mod moto;
mod openssl;
mod proxy;
mod runner_image;
#[cfg(feature = "server")]
mod scripted_launcher;
#[cfg(feature = "server")]
mod server;
mod terraform;

pub use git::{GitRepository, git};
pub use moto::MotoServer;
pub use openssl::{KeyKind, OpensslKey, openssl};
pub use proxy::FlakyProxy;
pub use runner_image::{BUSYBOX_RUNNER_IMAGE, RUNNER_IMAGE, runner_image};
#[cfg(feature = "server")]
pub use scripted_launcher::ScriptedLauncher;
#[cfg(feature = "server")]
pub use server::{CreatedPool, TestServer};
pub use terraform::{MARKER_OUTPUT, NO_CHANGES_CONFIG, SIMPLE_CONFIG};

/// Installs the process-wide TLS provider once (kube, reqwest and axum-server all use
/// rustls; see STACK.md, trap 1).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
