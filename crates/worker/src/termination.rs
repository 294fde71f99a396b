//! SIGTERM and SIGINT, counted: the first asks the running tool to stop gracefully,
//! a further one forces it, and waiting for the launcher is cancelled by any of them.
//! A worker whose launcher process dies gets SIGHUP from the kernel, which asks the tool
//! to stop gracefully however often it comes.

use gantry_proto::local::LAUNCHER_PID_ENV;
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::WorkerError;

/// When the launcher that started this worker as its child dies (crashes, is killed),
/// the kernel sends the worker SIGHUP, so that the run stops as a stopped run does
/// instead of applying on after the server declared its worker lost.
///
/// Not SIGTERM: the kernel sends the signal each time the worker's parent *thread*
/// exits, and a dying multi-threaded launcher passes the worker from thread to thread
/// as they exit, so it often arrives twice within a millisecond. Counted as two
/// requests, that killed terraform in the middle of writing its state.
///
/// Call after [`Termination::from_signals`], so the signal is counted, not fatal.
/// Does nothing when the worker was not started by a launcher process (a container).
pub fn end_with_launcher() -> Result<(), WorkerError> {
    let Ok(value) = std::env::var(LAUNCHER_PID_ENV) else { return Ok(()) };
    let launcher: i32 = value.parse().map_err(|_| WorkerError::InvalidLauncherPid { value })?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGHUP)
        .map_err(|errno| WorkerError::Signals(std::io::Error::from_raw_os_error(errno as i32)))?;
    // The launcher may have died before the request was made: then nothing would come.
    if getppid() != Pid::from_raw(launcher) {
        return Err(WorkerError::LauncherGone { pid: launcher });
    }
    Ok(())
}

/// Termination requests the worker has received.
#[derive(Debug)]
pub struct Termination {
    requests: watch::Receiver<u32>,
    count: std::sync::Arc<watch::Sender<u32>>,
}

/// Asks for termination as a signal would: the worker's lease uses it when it runs out.
#[derive(Debug, Clone)]
pub(crate) struct Requester(std::sync::Arc<watch::Sender<u32>>);

impl Requester {
    /// Asks the tool to stop gracefully, as a first signal does, unless it was asked
    /// to stop already: a worker whose launcher died got SIGHUP from the kernel, and
    /// its lease running out later must not turn that into a kill before the grace.
    pub(crate) fn interrupt(&self) {
        self.at_least(1);
    }

    /// Asks for the tool to be killed, as a second signal does.
    pub(crate) fn force(&self) {
        self.at_least(2);
    }

    fn count_one(&self) {
        self.0.send_modify(|count| *count += 1);
    }

    fn at_least(&self, count: u32) {
        self.0.send_if_modified(|requested| {
            let raised = *requested < count;
            *requested = (*requested).max(count);
            raised
        });
    }
}

impl Termination {
    /// Starts counting SIGTERM and SIGINT, and listening for SIGHUP. Must be called
    /// inside a tokio runtime; from then on those signals no longer end the process by
    /// themselves.
    pub fn from_signals() -> Result<Self, WorkerError> {
        let mut terminate = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
        let mut hangup = signal(SignalKind::hangup()).map_err(WorkerError::Signals)?;
        let (count, requests) = watch::channel(0);
        let count = std::sync::Arc::new(count);
        let requester = Requester(std::sync::Arc::clone(&count));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = terminate.recv() => requester.count_one(),
                    Some(()) = interrupt.recv() => requester.count_one(),
                    Some(()) = hangup.recv() => requester.interrupt(),
                    else => break,
                }
            }
        });
        Ok(Self { requests, count })
    }

    /// The count of requests, watched.
    #[cfg(test)]
    pub(crate) fn watch(&self) -> watch::Receiver<u32> {
        self.requests.clone()
    }

    /// A handle that requests termination from inside the worker.
    pub(crate) fn requester(&self) -> Requester {
        Requester(std::sync::Arc::clone(&self.count))
    }

    /// Whether any termination request arrived so far.
    pub(crate) fn was_requested(&self) -> bool {
        *self.requests.borrow() > 0
    }

    /// Whether the tool is to be killed rather than asked to stop: a second request
    /// arrived (requests close together may wake a waiter once, so the count decides).
    pub(crate) fn is_forced(&self) -> bool {
        *self.requests.borrow() > 1
    }

    /// Waits for a request this handle has not seen yet; never returns when none comes.
    pub(crate) async fn requested(&mut self) {
        if self.requests.changed().await.is_err() {
            // The signal listener is gone, so no request can come any more.
            std::future::pending::<()>().await;
        }
    }
}
