//! What the server must acknowledge before the launcher lets go of it: a run's reports
//! (the final one above all) and its new state. Each is tried again, with backoff capped
//! at [`MAX_DELAY`], until the server acknowledges it or answers that the run is gone for
//! good (a definite 4xx: ended, given to another worker, deleted); a server restart or a
//! database outage only delays it. Only a launcher leaving for good lets go of what is
//! still pending ([`AgentClient::abandon_deliveries`]), and hands it back to its caller.

use std::future::Future;
use std::time::Duration;

use gantry_domain::RunId;
use gantry_proto::agent::{Directive, RunReport};
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, shown};
use crate::client::{AgentClient, ClientError};

/// The longest pause between two attempts: a server back from an outage hears from
/// every launcher within this (plus jitter).
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30);

/// How a delivery ended.
#[derive(Debug)]
pub(crate) enum Delivery<T> {
    /// The server took it.
    Acknowledged(T),
    /// The server answered that it never will (the run ended, went to another worker, or
    /// is gone): trying again cannot help.
    Refused(ClientError),
    /// The launcher is leaving: it stopped trying. The last error says why it had not
    /// got through.
    Abandoned(ClientError),
}

/// Whether an answer leaves hope: the server was unreachable or had a passing problem
/// (5xx: its database may be down; 429; 408), or its answer did not parse (a proxy's
/// page). A definite 4xx says the run is gone for good.
pub(crate) fn worth_retrying(error: &ClientError) -> bool {
    error.is_transient()
        || error.status() == Some(408)
        || matches!(error, ClientError::Protocol { .. })
}

/// Tries `attempt` until the server acknowledges it or refuses it for good, pausing
/// with capped backoff (through `pause`, so that tests need not wait) between tries; a
/// pause ends early, and the delivery is abandoned, once `abandoned` is cancelled.
/// `what` names the delivery in the launcher's log.
pub(crate) async fn until_acknowledged<T, Attempt, Fut, Pause, Paused>(
    run_id: RunId,
    what: &str,
    abandoned: &CancellationToken,
    mut attempt: Attempt,
    mut pause: Pause,
) -> Delivery<T>
where
    Attempt: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
    Pause: FnMut(Duration) -> Paused,
    Paused: Future<Output = ()>,
{
    let mut backoff = Backoff::new(MAX_DELAY);
    let mut failures = 0u32;
    loop {
        let error = match attempt().await {
            Ok(acknowledged) => {
                if failures > 0 {
                    tracing::info!(run = %run_id, failures, "the server took the {what} at last");
                }
                return Delivery::Acknowledged(acknowledged);
            }
            Err(error) if worth_retrying(&error) => error,
            Err(error) => return Delivery::Refused(error),
        };
        failures += 1;
        if abandoned.is_cancelled() {
            return Delivery::Abandoned(error);
        }
        let delay = backoff.delay();
        tracing::warn!(
            run = %run_id,
            %error,
            "the server has not taken the {what}; kept, trying again in {}",
            shown(delay)
        );
        tokio::select! {
            () = pause(delay) => {}
            () = abandoned.cancelled() => return Delivery::Abandoned(error),
        }
    }
}

/// A report on its way to the server: kept until the server acknowledges it. The
/// journal that carries pending reports across a launcher's restart keeps these.
#[derive(Debug, Clone)]
pub(crate) struct PendingReport {
    pub(crate) run_id: RunId,
    pub(crate) report: RunReport,
}

impl PendingReport {
    /// Delivers the report. `Refused` and `Abandoned` are logged here; the caller decides
    /// what they mean for the run.
    pub(crate) async fn deliver(self, client: &AgentClient) -> Delivery<Directive> {
        let abandoned = client.deliveries_abandoned();
        let what = format!("{} report", report_kind(&self.report));
        let delivery = until_acknowledged(
            self.run_id,
            &what,
            &abandoned,
            || client.report(self.run_id, self.report.clone()),
            tokio::time::sleep,
        )
        .await;
        match &delivery {
            Delivery::Acknowledged(_) => {}
            Delivery::Refused(error) => {
                tracing::warn!(run = %self.run_id, %error, "the server refuses the {what} for good: the run is no longer this launcher's");
            }
            Delivery::Abandoned(error) => {
                tracing::error!(run = %self.run_id, %error, "the launcher is leaving before the server took the {what}");
            }
        }
        delivery
    }
}

/// A report's kind as the wire spells it, for the launcher's log (never its content,
/// which may quote what the run printed).
fn report_kind(report: &RunReport) -> &'static str {
    match report {
        RunReport::CommitResolved { .. } => "commit_resolved",
        RunReport::PhaseStarted { .. } => "phase_started",
        RunReport::Planned { .. } => "planned",
        RunReport::WorkspaceStored { .. } => "workspace_stored",
        RunReport::Outputs { .. } => "outputs",
        RunReport::Applied => "applied",
        RunReport::Performed => "performed",
        RunReport::Stopped => "stopped",
        RunReport::Failed { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    fn unreachable() -> ClientError {
        ClientError::Unreachable { url: "https://server".to_owned(), cause: "refused".to_owned() }
    }

    fn answered(status: u16) -> ClientError {
        ClientError::Rejected { status, code: "x".to_owned(), message: "m".to_owned() }
    }

    /// Delivers with `answers` in turn as the server's, pausing on a clock that only
    /// adds up the pauses. Returns the delivery, the attempts and the pauses.
    async fn deliver(
        answers: Vec<Result<&'static str, ClientError>>,
        abandoned: &CancellationToken,
        abandon_after: Option<usize>,
    ) -> (Delivery<&'static str>, usize, Vec<Duration>) {
        let answers = RefCell::new(answers.into_iter());
        let attempts = Cell::new(0);
        let pauses = RefCell::new(Vec::new());
        let run_id = RunId::generate();
        let delivery = until_acknowledged(
            run_id,
            "applied report",
            abandoned,
            || {
                attempts.set(attempts.get() + 1);
                if abandon_after == Some(attempts.get()) {
                    abandoned.cancel();
                }
                let answer = answers.borrow_mut().next().expect("no attempt after the last answer");
                async move { answer }
            },
            |delay| {
                pauses.borrow_mut().push(delay);
                async {}
            },
        )
        .await;
        (delivery, attempts.get(), pauses.into_inner())
    }

    #[tokio::test]
    async fn a_report_is_kept_through_a_long_outage_and_delivered_when_the_server_is_back() {
        // Twenty failed attempts: far past the eight (about 90 s) launchers once gave up after.
        let mut answers: Vec<Result<&str, ClientError>> = (0..20)
            .map(|attempt| Err(if attempt % 2 == 0 { unreachable() } else { answered(503) }))
            .collect();
        answers.push(Ok("finish"));
        let (delivery, attempts, pauses) = deliver(answers, &CancellationToken::new(), None).await;
        assert!(matches!(delivery, Delivery::Acknowledged("finish")), "{delivery:?}");
        assert_eq!(attempts, 21);
        let waited: Duration = pauses.iter().sum();
        assert!(waited > Duration::from_secs(5 * 60), "waited {waited:?} in all");
        assert!(
            pauses.iter().all(|pause| *pause <= MAX_DELAY.mul_f64(1.2)),
            "each pause is capped: {pauses:?}"
        );
    }

    #[tokio::test]
    async fn a_definite_refusal_ends_the_delivery_at_once() {
        for status in [400, 404, 409, 410] {
            let answers = vec![Err(unreachable()), Err(answered(status))];
            let (delivery, attempts, _) = deliver(answers, &CancellationToken::new(), None).await;
            assert!(
                matches!(&delivery, Delivery::Refused(error) if error.status() == Some(status)),
                "{status}: {delivery:?}"
            );
            assert_eq!(attempts, 2);
        }
    }

    #[tokio::test]
    async fn passing_answers_are_tried_again() {
        for error in [
            answered(500),
            answered(502),
            answered(503),
            answered(429),
            answered(408),
            ClientError::Protocol { path: "/reports".to_owned(), cause: "html".to_owned() },
        ] {
            let answers = vec![Err(error), Ok("continue")];
            let (delivery, attempts, _) = deliver(answers, &CancellationToken::new(), None).await;
            assert!(matches!(delivery, Delivery::Acknowledged("continue")), "{delivery:?}");
            assert_eq!(attempts, 2);
        }
    }

    #[tokio::test]
    async fn a_launcher_leaving_abandons_what_is_pending_with_the_last_error() {
        let abandoned = CancellationToken::new();
        let answers = vec![Err(unreachable()), Err(answered(503)), Ok("never")];
        let (delivery, attempts, _) = deliver(answers, &abandoned, Some(2)).await;
        assert!(
            matches!(&delivery, Delivery::Abandoned(error) if error.status() == Some(503)),
            "{delivery:?}"
        );
        assert_eq!(attempts, 2, "no attempt after the launcher left");
        // Abandoned before the first attempt: that one attempt is still made.
        let abandoned = CancellationToken::new();
        abandoned.cancel();
        let (delivery, attempts, _) = deliver(vec![Ok("finish")], &abandoned, None).await;
        assert!(matches!(delivery, Delivery::Acknowledged("finish")), "{delivery:?}");
        assert_eq!(attempts, 1);
    }
}
