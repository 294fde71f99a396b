//! SIGTERM and SIGINT, counted: the first asks the running tool to stop gracefully,
//! a further one forces it, and waiting for the launcher is cancelled by any of them.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::WorkerError;

/// Termination requests the worker has received.
#[derive(Debug)]
pub struct Termination {
    requests: watch::Receiver<u32>,
}

impl Termination {
    /// Starts counting SIGTERM and SIGINT. Must be called inside a tokio runtime; from
    /// then on those signals no longer end the process by themselves.
    pub fn from_signals() -> Result<Self, WorkerError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        let (count, requests) = watch::channel(0);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = terminate.recv() => {}
                    Some(()) = interrupt.recv() => {}
                    else => break,
                }
                count.send_modify(|count| *count += 1);
            }
        });
        Ok(Self { requests })
    }

    /// Whether any termination request arrived so far.
    pub(crate) fn was_requested(&self) -> bool {
        *self.requests.borrow() > 0
    }

    /// Waits for a request this handle has not seen yet; never returns when none comes.
    pub(crate) async fn requested(&mut self) {
        if self.requests.changed().await.is_err() {
            // The signal listener is gone, so no request can come any more.
            std::future::pending::<()>().await;
        }
    }
}
