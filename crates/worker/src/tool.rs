//! Running the tool (`terraform` or `tofu`), or a task's shell command: its environment,
//! its output streamed to the run log through one pipe, and SIGTERM/SIGINT forwarded to it.
//!
//! stdout and stderr share ONE pipe, as `2>&1` does, so the log interleaves them
//! exactly as the tool printed them; two pipes read separately cannot keep that order.
//!
//! The tool runs in a process group of its own, and a termination request is sent to
//! that whole group, as a terminal's Ctrl-C is: Terraform expects its provider plugins
//! to see the same SIGINT, and a shell script's foreground command stops too. It also
//! means a Ctrl-C at a terminal running the worker reaches the tool once (forwarded),
//! not twice, which Terraform would take as "stop immediately".

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use gantry_proto::local::{CAPABILITY_ENV, LAUNCHER_PID_ENV, SOCKET_ENV, WorkerJob};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::time::Instant;

use crate::Termination;
use crate::log::LogSink;
use crate::utf8::Utf8Decoder;

/// Keeps Terraform non-interactive and quiet about upgrades, whatever the stack sets.
const AUTOMATION_ENVIRONMENT: [(&str, &str); 3] =
    [("TF_IN_AUTOMATION", "1"), ("TF_INPUT", "0"), ("CHECKPOINT_DISABLE", "1")];

/// How long output is still relayed after the tool exited: a background process it
/// left behind may hold the pipe open forever, and must not keep the run alive.
const OUTPUT_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// How a tool process ended.
#[derive(Debug)]
pub(crate) enum Ending {
    Exited {
        code: i32,
    },
    KilledBySignal {
        signal: i32,
    },
    /// The worker was asked to terminate; the tool has stopped since (or never started).
    Terminated,
    CannotStart {
        error: io::Error,
    },
    /// The worker lost track of the process (waiting for it failed).
    Lost {
        error: io::Error,
    },
}

/// The command line as a user would type it, for the log of a debug run.
pub(crate) fn command_line(executable: &str, args: &[String]) -> String {
    std::iter::once(executable)
        .chain(args.iter().map(String::as_str))
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,+@%".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// `program` with `args`, in the job's directory and environment, minus the worker's
/// own secrets: code in the run must never get the capability or the socket.
fn command(job: &WorkerJob, program: &str, args: &[String]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(&job.working_directory)
        .envs(job.environment.iter().map(|(name, value)| (name, value)))
        .envs(AUTOMATION_ENVIRONMENT)
        .env_remove(SOCKET_ENV)
        .env_remove(CAPABILITY_ENV)
        .env_remove(LAUNCHER_PID_ENV)
        // Names a descriptor closed long ago; a gantry program the tool starts must not
        // take it for its own hand-over.
        .env_remove(gantry_secret_env::HANDOVER_FD_ENV)
        .stdin(Stdio::null())
        .process_group(0)
        // When the worker gives up on a run early, the tool must not outlive it.
        .kill_on_drop(true);
    command
}

fn check_working_directory(job: &WorkerJob) -> Result<(), io::Error> {
    if Path::new(&job.working_directory).is_dir() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("working directory {} is not a directory", job.working_directory),
        ))
    }
}

/// Runs `program` (the tool, or the shell for a task), relaying everything it prints to
/// `log` as it arrives.
pub(crate) async fn run_streamed(
    job: &WorkerJob,
    program: &str,
    args: &[String],
    log: &LogSink,
    termination: &mut Termination,
) -> Ending {
    if termination.was_requested() {
        return Ending::Terminated;
    }
    if let Err(error) = check_working_directory(job) {
        return Ending::CannotStart { error };
    }
    let (reader, writer) = match io::pipe() {
        Ok(pipe) => pipe,
        Err(error) => return Ending::CannotStart { error },
    };
    let writer_for_stderr = match writer.try_clone() {
        Ok(writer) => writer,
        Err(error) => return Ending::CannotStart { error },
    };
    // `command` holds the parent's copies of the write end; dropping it at the end of
    // this block lets the read end see end-of-file once the tool and its children exit.
    let child = {
        let mut command = command(job, program, args);
        command.stdout(writer).stderr(writer_for_stderr);
        command.spawn()
    };
    let mut child = match child {
        Ok(child) => child,
        Err(error) => return Ending::CannotStart { error },
    };
    let process_group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let mut output = match pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(output) => output,
        // Cannot happen for a fresh pipe; stop the tool rather than run it unheard.
        Err(error) => return Ending::CannotStart { error },
    };

    let mut decoder = Utf8Decoder::default();
    let mut buffer = vec![0; READ_BUFFER_BYTES];
    let mut output_open = true;
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut forwarded: Option<Signal> = None;
    let drain_deadline = tokio::time::sleep(OUTPUT_DRAIN_AFTER_EXIT);
    tokio::pin!(drain_deadline);
    while output_open || status.is_none() {
        tokio::select! {
            read = output.read(&mut buffer), if output_open => match read {
                Ok(0) => output_open = false,
                Ok(n_read) => log.write(decoder.decode(&buffer[..n_read])),
                Err(error) => {
                    output_open = false;
                    log.write(format!("\n[gantry-worker] lost the tool's output: {error}\n"));
                }
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit);
                drain_deadline.as_mut().reset(Instant::now() + OUTPUT_DRAIN_AFTER_EXIT);
            }
            () = &mut drain_deadline, if status.is_some() && output_open => break,
            () = termination.requested() => {
                let signal = if termination.is_forced() { Signal::SIGKILL } else { Signal::SIGINT };
                if forwarded != Some(signal) && forwarded != Some(Signal::SIGKILL) {
                    forwarded = Some(signal);
                    if let Some(group) = process_group {
                        // The group may be gone already, which is what was asked for.
                        let _ = killpg(group, signal);
                    }
                }
            }
        }
    }
    log.write(decoder.finish());

    if forwarded.is_some() {
        return Ending::Terminated;
    }
    match status {
        Some(Ok(status)) => ending(status),
        Some(Err(error)) => Ending::Lost { error },
        // The loop only ends early once `status` is set.
        None => Ending::Lost { error: io::Error::other("the tool's exit status is unknown") },
    }
}

pub(crate) fn ending(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited { code },
        (None, Some(signal)) => Ending::KilledBySignal { signal },
        (None, None) => {
            Ending::Lost { error: io::Error::other("the tool's exit status is unknown") }
        }
    }
}

/// Runs the tool with its stdout captured rather than logged: `output -json` prints
/// sensitive values, which must go nowhere.
pub(crate) async fn run_captured(
    job: &WorkerJob,
    args: &[String],
) -> Result<std::process::Output, io::Error> {
    check_working_directory(job)?;
    command(job, &job.tool_executable, args).output().await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ffi::OsStr;

    use gantry_domain::{RunId, RunType};
    use gantry_proto::agent::Job;

    use super::*;

    fn job(environment: &[(&str, &str)]) -> WorkerJob {
        WorkerJob {
            run_id: RunId::generate(),
            run_type: RunType::Tracked,
            job: Job::Plan,
            tool_executable: "terraform".into(),
            working_directory: "/work".into(),
            environment: environment
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            plan_file: "plan.tfplan".into(),
            command: None,
            collect_sensitive_outputs: false,
            debug: false,
        }
    }

    /// The environment changes the command makes: `None` removes a variable.
    fn environment_changes(job: &WorkerJob) -> HashMap<String, Option<String>> {
        let command = command(job, &job.tool_executable, &[]);
        command
            .as_std()
            .get_envs()
            .map(|(name, value)| {
                let text = |text: &OsStr| text.to_string_lossy().into_owned();
                (text(name), value.map(text))
            })
            .collect()
    }

    #[test]
    fn the_tool_gets_the_job_environment_and_automation_flags_but_no_worker_secrets() {
        let job =
            job(&[("TF_VAR_region", "eu-west-1"), ("TF_INPUT", "1"), (CAPABILITY_ENV, "smuggled")]);
        let changes = environment_changes(&job);
        assert_eq!(changes["TF_VAR_region"].as_deref(), Some("eu-west-1"));
        assert_eq!(changes["TF_IN_AUTOMATION"].as_deref(), Some("1"));
        assert_eq!(changes["TF_INPUT"].as_deref(), Some("0"));
        assert_eq!(changes["CHECKPOINT_DISABLE"].as_deref(), Some("1"));
        assert_eq!(changes[SOCKET_ENV], None);
        assert_eq!(changes[CAPABILITY_ENV], None);
    }

    fn check(args: &[&str], expect: &str) {
        let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
        assert_eq!(command_line("terraform", &args), expect);
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        check(
            &["plan", "-input=false", "-out=plan.tfplan"],
            "terraform plan -input=false -out=plan.tfplan",
        );
        check(&["apply", "my plan", "it's"], r"terraform apply 'my plan' 'it'\''s'");
        check(&[""], "terraform ''");
    }
}
