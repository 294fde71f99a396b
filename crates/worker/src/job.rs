//! The job itself: the phases of a plan, an apply or a task in order, each announced to
//! the launcher with a report whose answer (a directive) says whether to go on.
//!
//! Every report first waits until all log text so far was delivered, because the
//! launcher relies on "logs complete before state changes". Waiting for the launcher is
//! cancelled by a termination request; a running tool is not, it is asked to stop and
//! its output relayed until it exits (see `tool`).

use std::time::Duration;

use gantry_domain::{Phase, RunType};
use gantry_proto::agent::{Directive, Job, RunReport};
use gantry_proto::local::{WorkerJob, WorkerReport};
use nix::sys::signal::Signal;

use crate::client::LauncherClient;
use crate::log::LogSink;
use crate::outputs::parse_outputs;
use crate::tool::{self, Ending};
use crate::{Config, Outcome, Termination, WorkerError};

/// The shell a task's command runs in.
const SHELL: &str = "sh";

/// How long a terminated worker still tries to deliver the output it relayed.
const FINAL_LOG_DELIVERY: Duration = Duration::from_secs(5);

/// Fetches the job from the launcher and carries it out.
///
/// `Ok` when the launcher was told everything it needed (or needs to hear nothing, when
/// terminated); `Err` when the launcher could not be talked to.
pub async fn run(config: Config, mut termination: Termination) -> Result<Outcome, WorkerError> {
    let client = LauncherClient::new(&config);
    let _lease = crate::lease::hold(
        client.clone(),
        // Until the launcher first answers, which may take the whole socket wait.
        gantry_proto::lease::LeaseTerms {
            lease_seconds: config
                .socket_wait
                .as_secs()
                .max(gantry_proto::lease::DEFAULT_LEASE_SECONDS),
            ..Default::default()
        },
        termination.requester(),
    );
    let job = tokio::select! {
        biased;
        () = termination.requested() => return Ok(Outcome::Terminated),
        job = client.job() => job?,
    };
    let mut run = JobRun { log: LogSink::start(client.clone()), client, job, termination };
    let done = match run.job.job {
        Job::Plan => run.plan().await,
        Job::Apply => run.apply().await,
    };
    match done {
        Ok(()) => {
            run.log.flush().await?;
            Ok(Outcome::Finished)
        }
        Err(Halt::Ended(Outcome::Terminated)) => {
            // Best effort: the launcher reports the stop whether or not this arrives.
            let _ = tokio::time::timeout(FINAL_LOG_DELIVERY, run.log.flush()).await;
            Ok(Outcome::Terminated)
        }
        Err(Halt::Ended(outcome)) => Ok(outcome),
        Err(Halt::Launcher(error)) => Err(error),
    }
}

/// Why the job stops before its last step.
enum Halt {
    /// A directive, a reported failure or a termination request ends the job here.
    Ended(Outcome),
    Launcher(WorkerError),
}

impl From<WorkerError> for Halt {
    fn from(error: WorkerError) -> Self {
        Self::Launcher(error)
    }
}

struct JobRun {
    client: LauncherClient,
    log: LogSink,
    job: WorkerJob,
    termination: Termination,
}

impl JobRun {
    async fn plan(&mut self) -> Result<(), Halt> {
        self.initialize().await?;
        if self.job.run_type == RunType::Task {
            return self.perform().await;
        }

        self.start_phase(Phase::Planning).await?;
        let plan_args = args(&[
            "plan",
            "-input=false",
            "-detailed-exitcode",
            &format!("-out={}", self.job.plan_file),
        ]);
        // `-detailed-exitcode`: 0 means no changes, 2 means changes, anything else failed.
        let has_changes = match self.run_tool(plan_args).await {
            Ending::Exited { code: 0 } => false,
            Ending::Exited { code: 2 } => true,
            ending => return Err(self.stop_after("plan", ending).await),
        };

        // A tracked run without changes never applies, so its outputs are final now.
        if self.job.run_type == RunType::Tracked && !has_changes {
            self.report_outputs().await?;
        }
        match self.report(RunReport::Planned { has_changes }).await? {
            Directive::Apply => self.apply().await,
            Directive::Continue | Directive::UploadWorkspace | Directive::Finish => Ok(()),
        }
    }

    async fn initialize(&mut self) -> Result<(), Halt> {
        self.start_phase(Phase::Initializing).await?;
        match self.run_tool(args(&["init", "-input=false"])).await {
            Ending::Exited { code: 0 } => Ok(()),
            ending => Err(self.stop_after("init", ending).await),
        }
    }

    /// A task: the user's command, through `sh -c` so that pipes and quoting work as they
    /// typed them, in the initialized project.
    async fn perform(&mut self) -> Result<(), Halt> {
        let Some(command) = self.job.command.clone() else {
            return Err(self.fail("the task has no command to run".to_owned()).await);
        };
        self.start_phase(Phase::Performing).await?;
        self.log.write(format!("$ {command}\n"));
        let shell_args = vec!["-c".to_owned(), command];
        let ending =
            tool::run_streamed(&self.job, SHELL, &shell_args, &self.log, &mut self.termination)
                .await;
        let message = match ending {
            Ending::Exited { code: 0 } => {
                self.report(RunReport::Performed).await?;
                return Ok(());
            }
            Ending::Terminated => return Err(Halt::Ended(Outcome::Terminated)),
            Ending::Exited { code } => format!("the command failed with exit code {code}"),
            Ending::KilledBySignal { signal } => {
                format!("the command was killed by signal {}", signal_name(signal))
            }
            Ending::CannotStart { error } => format!("cannot start {SHELL}: {error}"),
            Ending::Lost { error } => format!("lost track of the command: {error}"),
        };
        Err(self.fail(message).await)
    }

    async fn apply(&mut self) -> Result<(), Halt> {
        self.start_phase(Phase::Applying).await?;
        // A saved plan was approved already: it needs no `-auto-approve`.
        let apply_args = args(&["apply", "-input=false", &self.job.plan_file]);
        match self.run_tool(apply_args).await {
            Ending::Exited { code: 0 } => {}
            ending => return Err(self.stop_after("apply", ending).await),
        }
        self.report_outputs().await?;
        self.report(RunReport::Applied).await?;
        Ok(())
    }

    /// Announces the phase; any directive but `Continue` ends the job before it runs.
    async fn start_phase(&mut self, phase: Phase) -> Result<(), Halt> {
        self.report_expecting_continue(RunReport::PhaseStarted { phase }).await?;
        self.log.write(format!("\n▶ {}\n", phase_title(phase)));
        Ok(())
    }

    async fn run_tool(&mut self, args: Vec<String>) -> Ending {
        self.log_command_line(&args);
        let tool = self.job.tool_executable.clone();
        tool::run_streamed(&self.job, &tool, &args, &self.log, &mut self.termination).await
    }

    /// Collects `<tool> output -json` outside the log and reports it.
    async fn report_outputs(&mut self) -> Result<(), Halt> {
        let output_args = args(&["output", "-json"]);
        self.log_command_line(&output_args);
        let output = match tool::run_captured(&self.job, &output_args).await {
            Ok(output) => output,
            Err(error) => {
                return Err(self.stop_after("output", Ending::CannotStart { error }).await);
            }
        };
        if !output.status.success() {
            // Diagnostics only: values are printed on stdout, which stays here.
            self.log.write(String::from_utf8_lossy(&output.stderr));
            return Err(self.stop_after("output", tool::ending(output.status)).await);
        }
        let parsed = parse_outputs(&output.stdout, self.job.collect_sensitive_outputs);
        let (outputs, sensitive_outputs) = match parsed {
            Ok(parsed) => parsed,
            Err(error) => {
                let message = format!(
                    "{} output -json printed no outputs document: {error}",
                    self.job.tool_executable
                );
                return Err(self.fail(message).await);
            }
        };
        let report = WorkerReport { report: RunReport::Outputs { outputs }, sensitive_outputs };
        self.report_expecting_continue(report).await
    }

    fn log_command_line(&self, args: &[String]) {
        if self.job.debug {
            self.log.write(format!("$ {}\n", tool::command_line(&self.job.tool_executable, args)));
        }
    }

    /// The tool did not succeed: stop quietly when terminated, otherwise report why.
    async fn stop_after(&mut self, subcommand: &str, ending: Ending) -> Halt {
        let tool = &self.job.tool_executable;
        let message = match ending {
            Ending::Terminated => return Halt::Ended(Outcome::Terminated),
            Ending::Exited { code } => format!("{tool} {subcommand} failed with exit code {code}"),
            Ending::KilledBySignal { signal } => {
                format!("{tool} {subcommand} was killed by signal {}", signal_name(signal))
            }
            Ending::CannotStart { error } => format!("cannot start {tool}: {error}"),
            Ending::Lost { error } => format!("lost track of {tool} {subcommand}: {error}"),
        };
        self.fail(message).await
    }

    /// Reports the run failed; whatever the launcher answers, the job is over.
    async fn fail(&mut self, message: String) -> Halt {
        self.log.write(format!("\n✖ {message}\n"));
        match self.report(RunReport::Failed { message }).await {
            Ok(_) => Halt::Ended(Outcome::RunFailed),
            Err(halt) => halt,
        }
    }

    async fn report_expecting_continue(
        &mut self,
        report: impl Into<WorkerReport>,
    ) -> Result<(), Halt> {
        match self.report(report).await? {
            Directive::Continue => Ok(()),
            // Anything else mid-job means "stop now"; the launcher knows why.
            Directive::Apply | Directive::UploadWorkspace | Directive::Finish => {
                Err(Halt::Ended(Outcome::Finished))
            }
        }
    }

    /// Delivers the log so far, then the report, unless a termination request comes first.
    async fn report(&mut self, report: impl Into<WorkerReport>) -> Result<Directive, Halt> {
        let report = report.into();
        let Self { client, log, termination, .. } = self;
        let deliver = async {
            log.flush().await?;
            client.report(report).await
        };
        tokio::select! {
            biased;
            () = termination.requested() => Err(Halt::Ended(Outcome::Terminated)),
            directive = deliver => Ok(directive?),
        }
    }
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|word| (*word).to_owned()).collect()
}

fn phase_title(phase: Phase) -> &'static str {
    match phase {
        Phase::Initializing => "Initializing",
        Phase::Planning => "Planning",
        Phase::Applying => "Applying",
        Phase::Performing => "Performing",
    }
}

fn signal_name(signal: i32) -> String {
    Signal::try_from(signal)
        .map_or_else(|_| signal.to_string(), |signal| signal.as_str().to_owned())
}
