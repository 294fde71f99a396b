//! The worker's lease from its launcher (see `gantry_proto::lease`): renewed every few
//! seconds over the local API; when it runs out, the worker stops as a stopped run does
//! (SIGINT to the tool), and after the grace period kills the tool. The server frees the
//! stack's lock only after lease + grace, so no second apply of the stack can start
//! while this one still runs, even when the launcher died with the worker left behind
//! in a container.

use std::io::Write as _;
use std::time::Duration;

use gantry_proto::lease::{LeaseTerms, WorkerLease};
use tokio::time::Instant;

use hyper::StatusCode;

use crate::WorkerError;
use crate::client::LauncherClient;
use crate::termination::Requester;

/// The shortest pause between renewals, so a short lease does not busy-loop.
const MIN_RENEWAL: Duration = Duration::from_millis(100);

/// The lease's task; aborted when dropped, once the job is over.
pub(crate) struct Lease(tokio::task::JoinHandle<()>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts holding the lease; `initial` applies until the launcher first answers.
pub(crate) fn hold(client: LauncherClient, initial: LeaseTerms, requester: Requester) -> Lease {
    Lease(tokio::spawn(keep(client, initial, requester)))
}

async fn keep(client: LauncherClient, initial: LeaseTerms, requester: Requester) {
    let lease = Duration::from_secs(initial.lease_seconds);
    let mut grace = Duration::from_secs(initial.grace_seconds);
    let mut expires_at = Instant::now() + lease;
    // A quarter of the lease: three renewals may fail before it runs out.
    let renewal = (lease / 4).max(MIN_RENEWAL);
    loop {
        let asked_at = Instant::now();
        match tokio::time::timeout(renewal, client.lease()).await {
            Ok(Ok(WorkerLease { valid_for_ms, grace_seconds })) => {
                // Counted from when it was asked: no later than the launcher's reckoning.
                expires_at = asked_at + Duration::from_millis(valid_for_ms);
                grace = Duration::from_secs(grace_seconds);
            }
            // A launcher older than leases (the worker binary may come from a newer
            // server) answers, so it lives: its answer renews the initial lease.
            Ok(Err(WorkerError::Refused { status: StatusCode::NOT_FOUND, .. })) => {
                expires_at = asked_at + lease;
            }
            _ => {}
        }
        let now = Instant::now();
        if now >= expires_at {
            break;
        }
        tokio::time::sleep_until((now + renewal).min(expires_at)).await;
    }
    // Not `eprintln!`: a process worker's stderr is a pipe to the launcher, which may
    // be dead, and a panic here would leave the tool running past the lease.
    let _ = writeln!(
        std::io::stderr(),
        "gantry-worker: the lease from the launcher ran out (it cannot be reached, or it cannot reach the server): interrupting the tool, killing it after {}s",
        grace.as_secs()
    );
    requester.interrupt();
    tokio::time::sleep(grace).await;
    requester.force();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::Termination;

    /// Termination requests counted with their time since `start`.
    async fn requests_within(
        client: LauncherClient,
        terms: LeaseTerms,
        window: Duration,
    ) -> Vec<Duration> {
        let termination = Termination::from_signals().unwrap();
        let start = Instant::now();
        let _lease = hold(client, terms, termination.requester());
        let mut requests = termination.watch();
        let mut seen = Vec::new();
        let deadline = start + window;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, requests.changed()).await {
            seen.push(start.elapsed());
        }
        seen
    }

    #[tokio::test]
    async fn an_unreachable_launcher_interrupts_after_the_lease_and_kills_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let client = LauncherClient::for_socket(&dir.path().join("gone.sock"));
        let terms = LeaseTerms { lease_seconds: 1, grace_seconds: 1 };
        let seen = requests_within(client, terms, Duration::from_secs(4)).await;
        assert_eq!(seen.len(), 2, "an interrupt, then a kill: {seen:?}");
        assert!(seen[0] >= Duration::from_secs(1) && seen[0] < Duration::from_millis(1500));
        assert!(seen[1] >= Duration::from_secs(2) && seen[1] < Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn a_worker_already_stopping_is_killed_only_after_the_grace() {
        // The kernel's SIGHUP when the launcher died came first: the lease running out
        // adds nothing, and the kill comes a grace after it, not with it.
        let dir = tempfile::tempdir().unwrap();
        let client = LauncherClient::for_socket(&dir.path().join("gone.sock"));
        let termination = Termination::from_signals().unwrap();
        termination.requester().interrupt();
        let start = Instant::now();
        let _lease = hold(
            client,
            LeaseTerms { lease_seconds: 1, grace_seconds: 1 },
            termination.requester(),
        );
        let mut requests = termination.watch();
        requests.mark_unchanged();
        tokio::time::timeout(Duration::from_secs(4), requests.changed()).await.unwrap().unwrap();
        let killed_after = start.elapsed();
        assert!(termination.is_forced());
        assert!(killed_after >= Duration::from_secs(2), "killed after {killed_after:?}");
    }

    /// Answers every request on `socket` with `lease` as the launcher's grant.
    async fn launcher(listener: tokio::net::UnixListener, lease: WorkerLease) {
        let body = serde_json::to_string(&lease).unwrap();
        answer_with(listener, "200 OK", body).await;
    }

    async fn answer_with(listener: tokio::net::UnixListener, status: &str, body: String) {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    }

    #[tokio::test]
    async fn a_launcher_that_renews_keeps_the_worker_going_and_one_that_stops_granting_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("launcher.sock");
        let granting = tokio::spawn(launcher(
            tokio::net::UnixListener::bind(&socket).unwrap(),
            WorkerLease { valid_for_ms: 1000, grace_seconds: 0 },
        ));
        let terms = LeaseTerms { lease_seconds: 1, grace_seconds: 5 };
        let seen =
            requests_within(LauncherClient::for_socket(&socket), terms, Duration::from_secs(3))
                .await;
        assert!(seen.is_empty(), "a renewed lease never runs out: {seen:?}");
        granting.abort();
        let _ = std::fs::remove_file(&socket);

        // A launcher that lost the server grants nothing: the grace it gives applies.
        let refusing = tokio::spawn(launcher(
            tokio::net::UnixListener::bind(&socket).unwrap(),
            WorkerLease { valid_for_ms: 0, grace_seconds: 0 },
        ));
        let seen =
            requests_within(LauncherClient::for_socket(&socket), terms, Duration::from_secs(2))
                .await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[1] < Duration::from_millis(500), "no lease, no grace: {seen:?}");
        refusing.abort();
    }

    #[tokio::test]
    async fn a_launcher_older_than_leases_keeps_renewing_the_initial_lease() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("old.sock");
        let old = tokio::spawn(answer_with(
            tokio::net::UnixListener::bind(&socket).unwrap(),
            "404 Not Found",
            r#"{"error":{"code":"not_found","message":"no route"}}"#.to_owned(),
        ));
        let terms = LeaseTerms { lease_seconds: 1, grace_seconds: 0 };
        let seen =
            requests_within(LauncherClient::for_socket(&socket), terms, Duration::from_secs(3))
                .await;
        assert!(seen.is_empty(), "a launcher that answers lives: {seen:?}");
        old.abort();
    }
}
