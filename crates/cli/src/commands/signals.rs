//! Stopping long-running commands (`gantry server`, `gantry up`): the first SIGINT or
//! SIGTERM asks for a clean stop, the second for an immediate one.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Tokens cancelled by the first and the second signal.
#[derive(Debug, Clone, Default)]
pub(super) struct StopSignals {
    pub(super) graceful: CancellationToken,
    pub(super) immediate: CancellationToken,
}

impl StopSignals {
    /// Starts listening for SIGINT and SIGTERM.
    pub(super) fn listen() -> anyhow::Result<Self> {
        let stop = Self::default();
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let stages = stop.clone();
        tokio::spawn(async move {
            for stage in [&stages.graceful, &stages.immediate] {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                stage.cancel();
            }
        });
        Ok(stop)
    }
}

/// Logs of the server and launcher go to stderr, filtered by `GANTRY_LOG`.
pub(super) fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
