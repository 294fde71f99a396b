//! `gantry stack schedule add|list|delete`: cron schedules that trigger a stack's tracked
//! runs, tasks and drift checks.

use clap::{Subcommand, ValueEnum};
use gantry_proto::schedules::CreateSchedule;

use super::{Context, Outcome};
use crate::output::{self, print_json};

const ADD_AFTER_HELP: &str = "\
The expression has the five fields of cron: minute, hour, day of month, month, day of
week (0-7 or SUN-SAT; 0 and 7 are Sunday), each *, a value, a range (1-5), a step (*/15,
9-17/2) or a list of these; or one of @hourly, @daily, @weekly, @monthly, @yearly. Its
times are wall-clock times of --time-zone (UTC unless given): a time skipped by a
daylight-saving change does not fire that day, a time that occurs twice fires once.

Each firing triggers one run, however many server replicas run. A firing missed while no
server ran triggers one run when one is back (not one per missed firing). A firing whose
schedule's previous run has not ended yet is skipped. Kinds:
  tracked  a tracked run of the stack's branch head (it applies if the stack autodeploys)
  task     the --command, with the stack's lock, like `gantry run task`
  drift    a proposed run that looks for changes made outside Gantry: one whose plan has
           changes marks the stack drifted (gantry stack list, the UI, the metric
           gantry_stacks_drifted) until a tracked run of it finishes; with --reconcile it
           also triggers that tracked run (which waits for confirmation unless the stack
           autodeploys)

Examples:
  gantry stack schedule add network --cron '0 3 * * *' --time-zone Europe/Berlin --kind drift
  gantry stack schedule add network --cron '*/30 * * * *' --kind drift --reconcile
  gantry stack schedule add network --cron '0 6 * * MON-FRI' --kind tracked
  gantry stack schedule add network --cron '@weekly' --kind task --command 'terraform state list'";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Tracked,
    Task,
    Drift,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a schedule to a stack
    #[command(after_help = ADD_AFTER_HELP)]
    Add {
        /// Stack name or id
        stack: String,
        /// Five-field cron expression, e.g. '0 3 * * *'
        #[arg(long)]
        cron: String,
        /// IANA time zone of the expression's times, e.g. Europe/Berlin
        #[arg(long, default_value = "UTC")]
        time_zone: String,
        /// What each firing triggers
        #[arg(long, value_enum, default_value = "tracked")]
        kind: Kind,
        /// The command of a task schedule
        #[arg(long, required_if_eq("kind", "task"))]
        command: Option<String>,
        /// For a drift schedule: a check that finds drift triggers a tracked run to undo it
        #[arg(long)]
        reconcile: bool,
    },
    /// List a stack's schedules: when each fires next and what its last firing did
    List {
        /// Stack name or id
        stack: String,
    },
    /// Delete a schedule
    Delete {
        /// Stack name or id
        stack: String,
        /// The schedule's id (`gantry stack schedule list`)
        schedule: String,
    },
}

pub async fn run(context: &Context, command: &ScheduleCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    match command {
        ScheduleCommand::Add { stack, cron, time_zone, kind, command, reconcile } => {
            let kind = match kind {
                Kind::Tracked => "tracked",
                Kind::Task => "task",
                Kind::Drift => "drift",
            };
            let request = CreateSchedule {
                kind: kind.to_owned(),
                cron: cron.clone(),
                time_zone: Some(time_zone.clone()),
                command: command.clone(),
                reconcile: *reconcile,
            };
            let created = client.create_schedule(stack, &request).await?;
            if context.is_json() {
                print_json(&created)?;
            } else {
                let next =
                    created.next_fire_at.map_or_else(|| "never".to_owned(), output::absolute_time);
                println!(
                    "Added the {} schedule {} of stack {} ({} in {}): it fires next at {next}.",
                    created.kind, created.id, created.stack, created.cron, created.time_zone
                );
            }
        }
        ScheduleCommand::List { stack } => {
            let list = client.list_schedules(stack).await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::schedules_table(&list.schedules, output::now()));
            }
        }
        ScheduleCommand::Delete { stack, schedule } => {
            let deleted = client.delete_schedule(stack, schedule).await?;
            if context.is_json() {
                print_json(&deleted)?;
            } else {
                println!(
                    "Deleted the {} schedule {} of stack {}.",
                    deleted.kind, deleted.id, deleted.stack
                );
            }
        }
    }
    Ok(Outcome::Success)
}
