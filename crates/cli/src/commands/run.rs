//! `gantry run trigger|list|show|confirm|discard|stop|fail|logs`: runs of stacks, their logs, and
//! following a run live until it ends or waits for a confirmation.

use std::io::{self, IsTerminal, Write};

use clap::{Args, Subcommand};
use gantry_domain::{RunId, RunState, RunType};
use gantry_proto::api::{LogChunk, Run, TriggerRun};

use super::{Context, Outcome};
use crate::client::{ApiClient, LogStreamEvent};
use crate::output::{self, ColorChoice, LogWriter, print_json};

/// Chunks asked for per page when reading a stored log.
const LOG_PAGE_SIZE: u32 = 1_000;

const TRIGGER_AFTER_HELP: &str = "\
With --follow the command streams the run's log and state changes and exits when the run
ends: status 0 when it FINISHED or its plan waits for a confirmation (UNCONFIRMED), 1 when
it FAILED, was STOPPED, DISCARDED or CANCELED. With --output json, the log goes to stderr
and the final run is printed as JSON.

Examples:
  gantry run trigger network --follow
  gantry run trigger network --proposed --commit 3f2a9c1d --follow
  gantry run trigger network && gantry run list --stack network";

const LOGS_AFTER_HELP: &str = "\
The log is printed as the tool wrote it, colours included on a terminal; they are
removed when stdout is a file or a pipe unless --color always. With --follow, the command
waits for new output until the run ends (or waits for a confirmation) and exits like
gantry run trigger --follow; a dropped connection is resumed where it stopped. With
--output json, each log chunk is printed as one JSON line.

Examples:
  gantry run logs 01JDQ3W9ZK6S7R4P8X2V5T1M0N
  gantry run logs 01JDQ3W9ZK6S7R4P8X2V5T1M0N --follow
  gantry run logs 01JDQ3W9ZK6S7R4P8X2V5T1M0N --color never > run.log";

const FAIL_AFTER_HELP: &str = "\
For a run that will not end by itself: its launcher's host is gone, or it keeps
heart-beating but never reports. Unlike stop, nothing waits for the launcher: the run is
FAILED at once, its worker is released, its downstream runs are skipped and the next
queued run may start. A launcher that is in fact still running it is told to stop; as
its worker may go on until then, the stack's lock stays fenced for the worker's lease
(gantry stack show says until when; gantry stack unfence lifts it once you know the
worker stopped). A run that has ended is refused.

Examples:
  gantry run fail 01JDQ3W9ZK6S7R4P8X2V5T1M0N --reason \"launcher host decommissioned\"";

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a stack: tracked (plan, then apply once confirmed) or proposed
    #[command(after_help = TRIGGER_AFTER_HELP)]
    Trigger(TriggerArgs),
    /// List runs, newest first
    #[command(
        after_help = "Examples:\n  gantry run list\n  gantry run list --stack network --limit 5"
    )]
    List {
        /// Only the runs of this stack (name or id)
        #[arg(long)]
        stack: Option<String>,
        /// How many runs to list
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a run: its states and how long each took, outputs, failure or waiting reason
    Show {
        /// Run id
        run: RunId,
    },
    /// Confirm an UNCONFIRMED run: its plan is applied
    Confirm {
        /// Run id
        run: RunId,
    },
    /// Discard a run that waits (QUEUED, READY or UNCONFIRMED): it will not apply
    Discard {
        /// Run id
        run: RunId,
    },
    /// Run a command in a stack's workspace (after terraform init) on its pool
    #[command(after_help = TASK_AFTER_HELP)]
    Task(TaskArgs),
    /// Stop a run: canceled if it has not started; otherwise the worker gets a signal, a
    /// grace period, then a kill (STOPPED)
    Stop {
        /// Run id
        run: RunId,
    },
    /// End a stuck run as FAILED at once, freeing its worker and its stack (admin only)
    #[command(after_help = FAIL_AFTER_HELP)]
    Fail {
        /// Run id
        run: RunId,
        /// Why: kept in the run's failure message with the name of your API key
        #[arg(long)]
        reason: String,
    },
    /// Move a waiting run to the front of its pool's queue
    Prioritize {
        /// Run id
        run: RunId,
    },
    /// Print a run's log, or follow it live
    #[command(after_help = LOGS_AFTER_HELP)]
    Logs(LogsArgs),
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// Stack name or id
    pub stack: String,
    /// Plan only: a proposed run never applies and takes no lock on the stack
    #[arg(long)]
    pub proposed: bool,
    /// Commit SHA to run [default: the head of the stack's branch]
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    /// Stream the log until the run ends; the exit status tells how it ended
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub color: ColorArgs,
}

const TASK_AFTER_HELP: &str = "\
A task takes the stack's lock like a tracked run: it waits for the stack's other tracked
runs and tasks, and they wait for it. The words after -- are joined with spaces, as ssh
does, and the line runs with sh -c in the stack's project root, after terraform init,
with the stack's environment. Quote pipes and redirections so that your own shell
leaves them to the worker's.

Examples:
  gantry run task network -- terraform state list
  gantry run task network -- 'terraform state list | grep aws_subnet'
  gantry run task network --follow -- terraform import aws_vpc.main vpc-0123";

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Stack name or id
    pub stack: String,
    /// Stream the log until the task ends; the exit status tells how it ended
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub color: ColorArgs,
    /// The command, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Run id
    pub run: RunId,
    /// Keep printing until the run ends; the exit status tells how it ended
    #[arg(long, short)]
    pub follow: bool,
    #[command(flatten)]
    pub color: ColorArgs,
}

#[derive(Debug, Args)]
pub struct ColorArgs {
    /// Keep the log's ANSI colours: auto keeps them on a terminal only
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

pub async fn run(context: &Context, command: &RunCommand) -> anyhow::Result<Outcome> {
    match command {
        RunCommand::Trigger(args) => trigger(context, args).await,
        RunCommand::List { stack, limit } => list(context, stack.as_deref(), *limit).await,
        RunCommand::Show { run } => show(context, *run).await,
        RunCommand::Confirm { run } => decide(context, *run, Decision::Confirm).await,
        RunCommand::Discard { run } => decide(context, *run, Decision::Discard).await,
        RunCommand::Stop { run } => decide(context, *run, Decision::Stop).await,
        RunCommand::Prioritize { run } => decide(context, *run, Decision::Prioritize).await,
        RunCommand::Fail { run, reason } => fail(context, *run, reason).await,
        RunCommand::Task(args) => {
            // Joined as ssh joins a remote command: the worker's shell reads the line.
            let command = args.command.join(" ");
            if command.trim().is_empty() {
                anyhow::bail!(
                    "the task's command is empty: give it after --, e.g. -- terraform state list"
                );
            }
            let request =
                TriggerRun { run_type: RunType::Task, commit: None, command: Some(command) };
            start(context, &args.stack, &request, args.follow, args.color.color).await
        }
        RunCommand::Logs(args) => logs(context, args).await,
    }
}

async fn trigger(context: &Context, args: &TriggerArgs) -> anyhow::Result<Outcome> {
    let run_type = if args.proposed { RunType::Proposed } else { RunType::Tracked };
    let request = TriggerRun { run_type, commit: args.commit.clone(), command: None };
    start(context, &args.stack, &request, args.follow, args.color.color).await
}

/// Triggers a run and, with `follow`, streams it until it ends.
async fn start(
    context: &Context,
    stack: &str,
    request: &TriggerRun,
    follow_it: bool,
    color: ColorChoice,
) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let run = client.trigger_run(stack, request).await?;

    if !follow_it {
        if context.is_json() {
            print_json(&run)?;
        } else {
            println!("{}", triggered_line(&run));
            println!("Follow it with: gantry run logs {} --follow", run.id);
        }
        return Ok(Outcome::Success);
    }

    // In JSON mode stdout is kept for the final run's JSON; the log goes to stderr.
    let mut sink = if context.is_json() {
        eprintln!("{}", triggered_line(&run));
        LogSink::text(Box::new(io::stderr()), color.strips(io::stderr().is_terminal(), no_color()))
    } else {
        println!("{}", triggered_line(&run));
        LogSink::stdout_text(color)
    };
    let state = follow(&client, &run, 0, &mut sink).await?;
    finish_following(context, &client, run.id, state).await
}

fn triggered_line(run: &Run) -> String {
    format!("Triggered {} run {} of stack {}: {}", run.run_type, run.id, run.stack_name, run.state)
}

async fn list(context: &Context, stack: Option<&str>, limit: u32) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let runs = client.list_runs(stack, Some(limit)).await?;
    if context.is_json() {
        print_json(&runs)?;
    } else {
        print!("{}", output::runs_table(&runs.runs, output::now()));
    }
    Ok(Outcome::Success)
}

async fn show(context: &Context, run: RunId) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let run = client.get_run(run).await?;
    if context.is_json() {
        print_json(&run)?;
    } else {
        print!("{}", output::run_details(&run, output::now()));
    }
    Ok(Outcome::Success)
}

#[derive(Debug, Clone, Copy)]
enum Decision {
    Confirm,
    Discard,
    Stop,
    Prioritize,
}

async fn decide(context: &Context, run: RunId, decision: Decision) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let run = match decision {
        Decision::Confirm => client.confirm_run(run).await?,
        Decision::Discard => client.discard_run(run).await?,
        Decision::Stop => client.stop_run(run).await?,
        Decision::Prioritize => client.prioritize_run(run).await?,
    };
    if context.is_json() {
        print_json(&run)?;
    } else {
        let verb = match decision {
            Decision::Confirm => "Confirmed",
            Decision::Discard => "Discarded",
            Decision::Stop if run.stop_requested => "Stopping",
            Decision::Stop => "Stopped",
            Decision::Prioritize => "Prioritized",
        };
        println!("{verb} run {} of stack {}: {}", run.id, run.stack_name, run.state);
        if run.stop_requested {
            println!("Its launcher is stopping it: gantry run logs {} --follow", run.id);
        }
        if matches!(decision, Decision::Confirm) {
            println!("Follow the apply with: gantry run logs {} --follow", run.id);
        }
    }
    Ok(Outcome::Success)
}

async fn fail(context: &Context, run: RunId, reason: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let run = client.fail_run(run, reason).await?;
    if context.is_json() {
        print_json(&run)?;
    } else {
        println!("Failed run {} of stack {}: {}", run.id, run.stack_name, run.state);
    }
    Ok(Outcome::Success)
}

async fn logs(context: &Context, args: &LogsArgs) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let mut sink = if context.is_json() {
        LogSink::JsonLines(Box::new(io::stdout()))
    } else {
        LogSink::stdout_text(args.color.color)
    };
    if !args.follow {
        page_logs(&client, args.run, 0, &mut sink).await?;
        return Ok(Outcome::Success);
    }
    let run = client.get_run(args.run).await?;
    let state = follow(&client, &run, 0, &mut sink).await?;
    report_end(run.id, state);
    Ok(Outcome::of_run(state))
}

/// After `trigger --follow`: says how the run ended, and prints the final run as JSON
/// in JSON mode.
async fn finish_following(
    context: &Context,
    client: &ApiClient,
    run: RunId,
    state: RunState,
) -> anyhow::Result<Outcome> {
    report_end(run, state);
    if context.is_json() {
        print_json(&client.get_run(run).await?)?;
    }
    Ok(Outcome::of_run(state))
}

fn report_end(run: RunId, state: RunState) {
    if state == RunState::Unconfirmed {
        eprintln!(
            "gantry: the plan waits for confirmation: gantry run confirm {run}  (or: gantry run discard {run})"
        );
    } else {
        eprintln!("gantry: run {run} ended {state}");
    }
}

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty())
}

/// Where log chunks go.
enum LogSink {
    Text(LogWriter<Box<dyn Write + Send>>),
    /// One `LogChunk` JSON object per line.
    JsonLines(Box<dyn Write + Send>),
}

impl LogSink {
    fn text(out: Box<dyn Write + Send>, strip: bool) -> Self {
        Self::Text(LogWriter::new(out, strip))
    }

    fn stdout_text(color: ColorChoice) -> Self {
        Self::text(Box::new(io::stdout()), color.strips(io::stdout().is_terminal(), no_color()))
    }

    fn emit(&mut self, chunk: &LogChunk) -> io::Result<()> {
        match self {
            Self::Text(writer) => writer.write_chunk(&chunk.text),
            Self::JsonLines(out) => {
                let line = serde_json::to_string(chunk).map_err(io::Error::other)?;
                writeln!(out, "{line}")?;
                out.flush()
            }
        }
    }
}

/// Prints the stored log from `from` on, page by page until `next_seq` stops
/// advancing; returns the next sequence number.
async fn page_logs(
    client: &ApiClient,
    run: RunId,
    mut from: u64,
    sink: &mut LogSink,
) -> anyhow::Result<u64> {
    loop {
        let page = client.run_logs(run, from, Some(LOG_PAGE_SIZE)).await?;
        for chunk in page.chunks.iter().filter(|chunk| chunk.seq >= from) {
            sink.emit(chunk)?;
        }
        if page.next_seq <= from {
            return Ok(from);
        }
        from = page.next_seq;
    }
}

/// Streams a run's log to stdout (coloured on a terminal) until the run ends or waits
/// for a confirmation; returns that state.
pub(crate) async fn follow_on_stdout(client: &ApiClient, run: &Run) -> anyhow::Result<RunState> {
    let mut sink = LogSink::stdout_text(ColorChoice::Auto);
    follow(client, run, 0, &mut sink).await
}

/// Follows the run from log sequence `from` until it ends or waits for a confirmation;
/// returns that state. State changes are announced on stderr.
async fn follow(
    client: &ApiClient,
    run: &Run,
    from: u64,
    sink: &mut LogSink,
) -> anyhow::Result<RunState> {
    // An ended run has nothing more to stream, and the stream of a run that waits for a
    // confirmation stays open until someone decides: both are read from the stored log.
    if run.state.is_terminal() || run.state == RunState::Unconfirmed {
        page_logs(client, run.id, from, sink).await?;
        return Ok(run.state);
    }
    let mut follower = client.follow_run(run.id, from);
    let mut last_announced = run.state;
    while let Some(event) = follower.next().await {
        match event? {
            LogStreamEvent::Log(chunk) => sink.emit(&chunk)?,
            LogStreamEvent::State(changed) => {
                if changed.state != last_announced {
                    eprintln!("{}", output::state_line(&changed));
                    last_announced = changed.state;
                }
                if changed.state == RunState::Unconfirmed {
                    // The stream stays open while the plan waits; what was logged
                    // before the wait is read from the stored log.
                    page_logs(client, run.id, follower.next_seq(), sink).await?;
                    return Ok(RunState::Unconfirmed);
                }
            }
            LogStreamEvent::End(end) => return Ok(end.state),
        }
    }
    // The follower ends only after an end event or an error, both returned above.
    anyhow::bail!("the log stream of run {} ended before the run did", run.id)
}
