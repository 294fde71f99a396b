//! What the CLI prints: tables and detail views for people, pretty JSON for scripts, and
//! run logs with or without their ANSI colours. Rendering functions are pure (they take
//! "now" as an argument) so that their output can be snapshot-tested.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use comfy_table::{ContentArrangement, Table, presets};
use gantry_domain::{PoolId, RunState, Timestamp};
use gantry_proto::api::{
    Dependencies, Output, Pool, PoolKind, Queue, Run, Stack, StateVersion, StateVersionList, Worker,
};
use gantry_proto::api::{StackDrift, StackLockFence};
use gantry_proto::format_timestamp;
use gantry_proto::keys::ApiKey;
use gantry_proto::schedules::Schedule;
use gantry_proto::webhooks::{Delivery, Webhook};
use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// Tables and text for people.
    #[default]
    Table,
    /// The API's JSON, pretty-printed, for scripts.
    Json,
}

/// Whether run logs keep the ANSI colour codes Terraform writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colours on a terminal, none in a file or a pipe (or when NO_COLOR is set).
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether colour codes must be removed before printing.
    pub fn strips(self, stdout_is_terminal: bool, no_color_set: bool) -> bool {
        match self {
            Self::Always => false,
            Self::Never => true,
            Self::Auto => !stdout_is_terminal || no_color_set,
        }
    }
}

/// Writes log chunks as they are stored, or without their escape sequences.
pub struct LogWriter<W: Write> {
    out: W,
    stripper: Option<AnsiStripper>,
}

impl<W: Write> LogWriter<W> {
    pub fn new(out: W, strip: bool) -> Self {
        Self { out, stripper: strip.then(AnsiStripper::default) }
    }

    pub fn write_chunk(&mut self, text: &str) -> io::Result<()> {
        match &mut self.stripper {
            Some(stripper) => self.out.write_all(stripper.strip(text).as_bytes())?,
            None => self.out.write_all(text.as_bytes())?,
        }
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Removes ANSI escape sequences (ECMA-48: CSI such as colours, OSC such as hyperlinks,
/// and the other escapes) from text that arrives in pieces: the state is kept between
/// calls because one sequence may be split across two log chunks. Hand-written because
/// the strippers at hand reset their state at the end of each piece.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnsiStripper {
    state: EscapeState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum EscapeState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// After ESC and intermediate bytes (`ESC ( B`).
    EscapeIntermediate,
    /// After `ESC [`: parameters until a final byte.
    ControlSequence,
    /// After `ESC ]` (OSC), `ESC P` (DCS), `ESC X`, `ESC ^` or `ESC _`: a string until
    /// BEL or `ESC \`.
    ControlString,
    /// ESC inside a control string.
    ControlStringEscape,
}

impl AnsiStripper {
    pub fn strip(&mut self, text: &str) -> String {
        use EscapeState::*;
        const ESC: char = '\u{1b}';
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            self.state = match (self.state, c) {
                (Text, ESC) => Escape,
                (Text, c) => {
                    out.push(c);
                    Text
                }
                (Escape | ControlStringEscape, ESC) => Escape,
                (ControlStringEscape, '\\') => Text,
                (Escape | ControlStringEscape, '[') => ControlSequence,
                (Escape | ControlStringEscape, ']' | 'P' | 'X' | '^' | '_') => ControlString,
                (Escape | ControlStringEscape | EscapeIntermediate, ' '..='/') => {
                    EscapeIntermediate
                }
                (Escape | ControlStringEscape | EscapeIntermediate, '0'..='~') => Text,
                (ControlSequence, '0'..='?' | ' '..='/') => ControlSequence,
                (ControlSequence, '@'..='~') => Text,
                (ControlSequence | EscapeIntermediate, ESC) => Escape,
                (ControlString, '\u{7}') => Text,
                (ControlString, ESC) => ControlStringEscape,
                (ControlString, _) => ControlString,
                // A malformed sequence ends at the first byte that cannot be part of it;
                // that byte is text again.
                (Escape | ControlStringEscape | EscapeIntermediate | ControlSequence, c) => {
                    out.push(c);
                    Text
                }
            };
        }
        out
    }
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{text}")
}

/// The current time, for relative timestamps.
pub fn now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_unix_millis(millis)
}

/// `45s ago`, `2m ago`, `3h ago`, `4d ago`; older than a month, the date.
pub fn relative_time(at: Timestamp, now: Timestamp) -> String {
    if at > now {
        return "just now".to_owned();
    }
    let seconds = now.since(at).as_secs();
    match seconds {
        0..=4 => "just now".to_owned(),
        5..=59 => format!("{seconds}s ago"),
        60..=3_599 => format!("{}m ago", seconds / 60),
        3_600..=86_399 => format!("{}h ago", seconds / 3_600),
        86_400..=2_591_999 => format!("{}d ago", seconds / 86_400),
        _ => absolute_time(at).chars().take(10).collect(),
    }
}

/// `2026-01-02T03:04:05Z`: RFC 3339 in UTC without the milliseconds.
pub fn absolute_time(at: Timestamp) -> String {
    let text = format_timestamp(at);
    match (text.find('.'), text.ends_with('Z')) {
        (Some(dot), true) => format!("{}Z", &text[..dot]),
        _ => text,
    }
}

/// `0.4s`, `42s`, `1m05s`, `2h03m`, `3d04h`: tenths below ten seconds, where runs
/// usually end.
pub fn compact_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..=9 => format!("{:.1}s", duration.as_secs_f64()),
        10..=59 => format!("{seconds}s"),
        60..=3_599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3_600..=86_399 => format!("{}h{:02}m", seconds / 3_600, (seconds % 3_600) / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, (seconds % 86_400) / 3_600),
    }
}

/// A table without borders, like `docker ps`: easy to read and to grep.
fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(header.to_vec());
    table
}

fn finish(mut table: Table) -> String {
    let n_columns = table.column_count();
    for (index, column) in table.column_iter_mut().enumerate() {
        let right = if index + 1 == n_columns { 0 } else { 2 };
        column.set_padding((0, right));
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// Key-value lines with aligned values; empty values are left out.
fn fields(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 2;
    let mut text = String::new();
    for (key, value) in rows.iter().filter(|(_, value)| !value.is_empty()) {
        let label = format!("{key}:");
        text.push_str(&format!("{label:<width$}{value}\n", width = width));
    }
    text
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn or_dash(text: &str) -> String {
    if text.is_empty() { "-".to_owned() } else { text.to_owned() }
}

fn short_commit(commit: &str) -> String {
    commit.chars().take(8).collect()
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn kind(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Private => "private",
        PoolKind::Shared => "shared",
    }
}

pub fn pools_table(pools: &[Pool], now: Timestamp) -> String {
    if pools.is_empty() {
        return "No pools yet. Create one with: gantry keygen && gantry pool create --name NAME --csr pool.csr\n".to_owned();
    }
    let mut table = table(&[
        "NAME",
        "ID",
        "KIND",
        "WORKERS",
        "BUSY",
        "DRAINED",
        "PENDING RUNS",
        "LABELS",
        "CREATED",
    ]);
    for pool in pools {
        table.add_row(vec![
            pool.name.clone(),
            pool.id.to_string(),
            kind(pool.kind).to_owned(),
            pool.workers.to_string(),
            pool.busy_workers.to_string(),
            pool.drained_workers.to_string(),
            pool.pending_runs.to_string(),
            or_dash(&pool.labels.join(",")),
            relative_time(pool.created_at, now),
        ]);
    }
    finish(table)
}

/// `pool_names` maps pool ids to names where they are known; otherwise the id is shown.
pub fn workers_table(
    workers: &[Worker],
    pool_names: &BTreeMap<PoolId, String>,
    now: Timestamp,
) -> String {
    if workers.is_empty() {
        return "No workers. Workers appear when a launcher of the pool connects.\n".to_owned();
    }
    let mut table =
        table(&["ID", "POOL", "STATUS", "CURRENT RUN", "TAGS", "LAUNCHER", "LAST SEEN"]);
    for worker in workers {
        let tags: Vec<String> =
            worker.metadata.iter().map(|(key, value)| format!("{key}={value}")).collect();
        table.add_row(vec![
            worker.id.to_string(),
            pool_names.get(&worker.pool_id).cloned().unwrap_or_else(|| worker.pool_id.to_string()),
            worker.status.to_string(),
            worker.current_run_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            or_dash(&tags.join(",")),
            or_dash(&worker.launcher_version),
            relative_time(worker.last_seen_at, now),
        ]);
    }
    finish(table)
}

fn stack_source(stack: &Stack) -> String {
    let mut source = format!("{}@{}", stack.repository, stack.branch);
    if !stack.project_root.is_empty() {
        source.push_str(&format!(" ({})", stack.project_root));
    }
    source
}

pub fn stacks_table(stacks: &[Stack], now: Timestamp) -> String {
    if stacks.is_empty() {
        return "No stacks yet. Create one with: gantry stack create --name NAME --repository URL --pool POOL\n".to_owned();
    }
    let mut table =
        table(&["NAME", "ID", "POOL", "TOOL", "SOURCE", "AUTODEPLOY", "DRIFTED", "CREATED"]);
    for stack in stacks {
        table.add_row(vec![
            stack.name.clone(),
            stack.id.to_string(),
            stack.pool_name.clone(),
            stack.tool.to_string(),
            stack_source(stack),
            yes_no(stack.autodeploy),
            stack.drift.as_ref().map_or_else(|| "-".to_owned(), |d| relative_time(d.since, now)),
            relative_time(stack.created_at, now),
        ]);
    }
    finish(table)
}

pub fn runs_table(runs: &[Run], now: Timestamp) -> String {
    if runs.is_empty() {
        return "No runs.\n".to_owned();
    }
    let mut table = table(&["ID", "STACK", "TYPE", "STATE", "COMMIT", "CREATED", "DURATION"]);
    for run in runs {
        table.add_row(vec![
            run.id.to_string(),
            run.stack_name.clone(),
            run.run_type.to_string(),
            run.state.to_string(),
            run.commit.as_deref().map_or_else(|| "-".to_owned(), short_commit),
            relative_time(run.created_at, now),
            compact_duration(run_duration(run, now)),
        ]);
    }
    finish(table)
}

/// From creation to the end, or to now for a run that has not ended.
fn run_duration(run: &Run, now: Timestamp) -> Duration {
    let end = if run.state.is_terminal() {
        run.history.last().map_or(run.updated_at, |change| change.at)
    } else {
        now
    };
    end.since(run.created_at)
}

/// `2.5 KiB`: a size in the binary units people read, bytes below one KiB.
fn byte_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let exponent = (bytes.max(1).ilog2() / 10).min(4);
    match exponent {
        0 => format!("{bytes} B"),
        _ => format!(
            "{:.1} {}",
            bytes as f64 / 1024f64.powi(exponent as i32),
            units[exponent as usize]
        ),
    }
}

/// The versions of a stack's managed state, newest (current) first.
pub fn state_versions_table(list: &StateVersionList, now: Timestamp) -> String {
    if list.versions.is_empty() {
        return format!("Stack {} has no state yet: its first apply stores one.\n", list.stack);
    }
    let mut table = table(&["VERSION", "CURRENT", "RUN", "SIZE", "CREATED", "ROLLBACK OF"]);
    for version in &list.versions {
        table.add_row(vec![
            version.version.to_string(),
            if version.orphaned { "orphaned".to_owned() } else { yes_no(version.current) },
            version.run_id.to_string(),
            byte_size(version.size),
            relative_time(version.created_at, now),
            rollback_of(version),
        ]);
    }
    let mut text = finish(table);
    text.push_str(&format!(
        "\nThe server keeps the newest {} versions of each stack. Return to one with: gantry stack state rollback {} --to VERSION\n",
        list.kept, list.stack
    ));
    if list.versions.iter().any(|version| version.orphaned) {
        text.push_str(&format!(
            "Orphaned versions were stored by runs that had lost the stack's lock; they are kept until adopted: gantry stack state adopt {} VERSION\n",
            list.stack
        ));
    }
    text
}

/// `3 (by admin)`: the version a rollback restored and who asked, `adopts 5 (by admin)`
/// for an adoption, `-` for others.
fn rollback_of(version: &StateVersion) -> String {
    let restored = |of: u64, by: &Option<String>| match by {
        Some(by) => format!("{of} (by {by})"),
        None => of.to_string(),
    };
    match (version.rollback_of, version.adopted_from) {
        (Some(of), _) => restored(of, &version.rolled_back_by),
        (None, Some(of)) => format!("adopts {}", restored(of, &version.adopted_by)),
        (None, None) => "-".to_owned(),
    }
}

/// What a rollback made: the new current version and what it restores.
pub fn rollback_text(stack: &str, version: &StateVersion) -> String {
    format!(
        "Stack {stack}'s current state is now version {}, a copy of version {} as run {} stored it ({}).\nThe next run starts from it.\n",
        version.version,
        version.rollback_of.map_or_else(|| "?".to_owned(), |of| of.to_string()),
        version.run_id,
        byte_size(version.size),
    )
}

/// What an adoption made: the new current version and the orphaned one it copies.
pub fn adoption_text(stack: &str, version: &StateVersion) -> String {
    format!(
        "Stack {stack}'s current state is now version {}, a copy of orphaned version {} as run {} stored it ({}).\nThe next run starts from it.\n",
        version.version,
        version.adopted_from.map_or_else(|| "?".to_owned(), |of| of.to_string()),
        version.run_id,
        byte_size(version.size),
    )
}

/// What a stack depends on and what depends on it.
pub fn dependencies_text(stack: &str, dependencies: &Dependencies) -> String {
    let mut text = String::new();
    if dependencies.upstream.is_empty() {
        text.push_str(&format!("Stack {stack} depends on no stack.\n"));
    } else {
        text.push_str(&format!("Stack {stack} depends on:\n"));
        for dependency in &dependencies.upstream {
            text.push_str(&format!("  {}\n", dependency.upstream));
            for reference in &dependency.references {
                let always = if reference.trigger_always { " (triggers always)" } else { "" };
                text.push_str(&format!(
                    "    output {} -> {}{always}\n",
                    reference.output, reference.variable
                ));
            }
        }
    }
    if !dependencies.downstream.is_empty() {
        text.push_str(&format!("Depending on it: {}\n", dependencies.downstream.join(", ")));
    }
    text
}

/// A pool's queue: in-progress runs first, then waiting ones in order, with reasons.
pub fn queue_table(queue: &Queue, now: Timestamp) -> String {
    if queue.entries.is_empty() {
        return format!("The queue of pool {} is empty.\n", queue.pool);
    }
    let mut table = table(&["#", "RUN", "STACK", "TYPE", "STATE", "QUEUED", "WHY IT WAITS"]);
    let mut position = 0;
    for entry in &queue.entries {
        let place = if entry.in_progress {
            "-".to_owned()
        } else {
            position += 1;
            position.to_string()
        };
        let mut why = entry.run.waiting_reason.clone().unwrap_or_default();
        if entry.run.prioritized && !entry.in_progress {
            why = format!("(prioritized) {why}");
        }
        table.add_row(vec![
            place,
            entry.run.id.to_string(),
            entry.run.stack_name.clone(),
            entry.run.run_type.to_string(),
            entry.run.state.to_string(),
            relative_time(entry.run.created_at, now),
            or_dash(&why),
        ]);
    }
    finish(table)
}

pub fn pool_details(pool: &Pool, workers: &[Worker], now: Timestamp) -> String {
    let mut text = fields(&[
        ("Pool", pool.name.clone()),
        ("ID", pool.id.to_string()),
        ("Kind", kind(pool.kind).to_owned()),
        ("Description", pool.description.clone()),
        ("Labels", pool.labels.join(", ")),
        ("Key", pool.key_algorithm.clone().unwrap_or_default()),
        ("Certificate", pool.certificate_fingerprint.clone().unwrap_or_default()),
        (
            "Workers",
            format!(
                "{} ({} busy, {} drained)",
                pool.workers, pool.busy_workers, pool.drained_workers
            ),
        ),
        ("Pending runs", pool.pending_runs.to_string()),
        ("Used by", pool.used_by.join(", ")),
        (
            "Created",
            format!("{} ({})", absolute_time(pool.created_at), relative_time(pool.created_at, now)),
        ),
    ]);
    if pool.kind == PoolKind::Private {
        text.push_str("\nWorkers:\n");
        let names = BTreeMap::from([(pool.id, pool.name.clone())]);
        text.push_str(&indent(&workers_table(workers, &names, now)));
    }
    text
}

/// A fenced stack's lock, for `stack show`.
fn lock_fence_text(fence: &StackLockFence) -> String {
    format!(
        "fenced until {} (the worker of run {} may still be stopping; `gantry stack unfence` lifts it)",
        absolute_time(fence.until),
        fence.run_id
    )
}

/// A drifted stack, for `stack show`.
fn drift_text(drift: &StackDrift) -> String {
    format!(
        "drifted since {} (found by drift check {}; a tracked run that finishes clears it)",
        absolute_time(drift.since),
        drift.run_id
    )
}

pub fn stack_details(stack: &Stack, runs: &[Run], now: Timestamp) -> String {
    let mut text = fields(&[
        ("Stack", stack.name.clone()),
        ("ID", stack.id.to_string()),
        ("Description", stack.description.clone()),
        ("Repository", stack.repository.clone()),
        ("Branch", stack.branch.clone()),
        ("Project root", stack.project_root.clone()),
        ("Pool", format!("{} ({})", stack.pool_name, stack.pool_id)),
        ("Tool", stack.tool.to_string()),
        (
            "Runner image",
            stack.runner_image.clone().unwrap_or_else(|| "(the pool's default)".to_owned()),
        ),
        ("Autodeploy", yes_no(stack.autodeploy)),
        ("Managed state", yes_no(stack.managed_state)),
        ("Lock", stack.lock_fence.as_ref().map(lock_fence_text).unwrap_or_default()),
        ("Drift", stack.drift.as_ref().map(drift_text).unwrap_or_default()),
        (
            "Sensitive outputs",
            if stack.share_sensitive_outputs {
                "shared with dependent stacks"
            } else {
                "not shared"
            }
            .to_owned(),
        ),
        ("Labels", stack.labels.join(", ")),
        ("Trigger paths", stack.trigger_paths.join(", ")),
        (
            "Created",
            format!(
                "{} ({})",
                absolute_time(stack.created_at),
                relative_time(stack.created_at, now)
            ),
        ),
    ]);
    if !stack.environment.is_empty() {
        text.push_str("\nEnvironment:\n");
        for variable in &stack.environment {
            let value = match (&variable.value, variable.secret) {
                (_, true) => "(secret)".to_owned(),
                (Some(value), false) => value.clone(),
                (None, false) => String::new(),
            };
            text.push_str(&format!("  {}={value}\n", variable.name));
        }
    }
    text.push_str("\nLatest runs:\n");
    text.push_str(&indent(&runs_table(runs, now)));
    text
}

fn output_value(output: &Output) -> String {
    if output.sensitive {
        return "(sensitive)".to_owned();
    }
    match &output.value {
        Some(value) => value.to_string(),
        None => "(unknown)".to_owned(),
    }
}

/// `gantry run show`: the run, its state timeline with the time spent in each state,
/// its outputs, and why it failed or waits.
pub fn run_details(run: &Run, now: Timestamp) -> String {
    let commit = match (&run.commit, &run.commit_message) {
        (Some(commit), Some(message)) => {
            format!("{} {}", short_commit(commit), message.lines().next().unwrap_or_default())
        }
        (Some(commit), None) => short_commit(commit),
        (None, _) => "(head of the branch, not resolved yet)".to_owned(),
    };
    let changes = match run.has_changes {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => String::new(),
    };
    let mut text = fields(&[
        ("Run", run.id.to_string()),
        ("Stack", format!("{} ({})", run.stack_name, run.stack_id)),
        ("Type", run.run_type.to_string()),
        ("State", run.state.to_string()),
        ("Branch", run.branch.clone()),
        ("Commit", commit),
        ("Autodeploy", yes_no(run.autodeploy)),
        ("Command", run.command.clone().unwrap_or_default()),
        ("Triggered by", run.triggered_by.clone()),
        ("Prioritized", if run.prioritized { "yes".to_owned() } else { String::new() }),
        (
            "Stopping",
            if run.stop_requested {
                "yes: its launcher is stopping it".to_owned()
            } else {
                String::new()
            },
        ),
        ("Worker", run.worker_id.map(|id| id.to_string()).unwrap_or_default()),
        ("Changes", changes),
        (
            "Created",
            format!("{} ({})", absolute_time(run.created_at), relative_time(run.created_at, now)),
        ),
        ("Duration", compact_duration(run_duration(run, now))),
        ("Failure", run.failure.clone().unwrap_or_default()),
        ("Waiting", run.waiting_reason.clone().unwrap_or_default()),
    ]);

    if !run.history.is_empty() {
        text.push_str("\nTimeline:\n");
        let mut timeline = table(&["STATE", "AT", "FOR"]);
        for (index, change) in run.history.iter().enumerate() {
            let spent = match run.history.get(index + 1) {
                Some(next) => compact_duration(next.at.since(change.at)),
                None if change.state.is_terminal() => "-".to_owned(),
                None => format!("{} so far", compact_duration(now.since(change.at))),
            };
            timeline.add_row(vec![
                change.state.to_string(),
                format!("+{}", compact_duration(change.at.since(run.created_at))),
                spent,
            ]);
        }
        text.push_str(&indent(&finish(timeline)));
    }

    if !run.outputs.is_empty() {
        text.push_str("\nOutputs:\n");
        let mut outputs = table(&["NAME", "VALUE"]);
        for output in &run.outputs {
            outputs.add_row(vec![output.name.clone(), output_value(output)]);
        }
        text.push_str(&indent(&finish(outputs)));
    }

    if run.state == RunState::Unconfirmed {
        text.push_str(&format!(
            "\nThe plan waits for confirmation: gantry run confirm {id}  (or: gantry run discard {id})\n",
            id = run.id
        ));
    }
    text
}

/// One line for a state change seen while following a run.
pub fn state_line(run: &Run) -> String {
    let mut line = format!("gantry: run {} is {}", run.id, run.state);
    if let Some(reason) = run.waiting_reason.as_deref().filter(|_| !run.state.is_terminal()) {
        line.push_str(&format!(" ({reason})"));
    }
    if let Some(failure) = run.failure.as_deref() {
        line.push_str(&format!(": {failure}"));
    }
    line
}

/// API keys, active ones first; a key's status says whether it still works.
/// The audit log, oldest first, with absolute times: it is a record, read later.
pub fn audit_table(entries: &[gantry_proto::audit::AuditEntry]) -> String {
    let mut table = table(&["#", "TIME", "ACTOR", "ACTION", "TARGET", "SOURCE", "OUTCOME"]);
    for entry in entries {
        table.add_row(vec![
            entry.seq.to_string(),
            absolute_time(entry.at),
            entry.actor.clone(),
            entry.action.clone(),
            entry.target.clone(),
            entry.source.clone(),
            entry.outcome.clone(),
        ]);
    }
    finish(table)
}

/// The registered webhooks, oldest first.
pub fn webhooks_table(webhooks: &[Webhook], now: Timestamp) -> String {
    let mut table =
        table(&["ID", "PROVIDER", "REPOSITORY", "PAYLOAD URL", "CREATED BY", "CREATED"]);
    for webhook in webhooks {
        table.add_row(vec![
            webhook.id.clone(),
            webhook.provider.clone(),
            webhook.repository.clone(),
            webhook.url.clone(),
            webhook.created_by.clone(),
            relative_time(webhook.created_at, now),
        ]);
    }
    finish(table)
}

/// A stack's schedules: when each fires next and what its last firing did.
pub fn schedules_table(schedules: &[Schedule], now: Timestamp) -> String {
    let mut table =
        table(&["ID", "KIND", "CRON", "TIME ZONE", "NEXT (UTC)", "LAST FIRED", "LAST OUTCOME"]);
    for schedule in schedules {
        let kind = match &schedule.command {
            Some(command) => format!("{}: {command}", schedule.kind),
            None => schedule.kind.clone(),
        };
        table.add_row(vec![
            schedule.id.clone(),
            kind,
            schedule.cron.clone(),
            schedule.time_zone.clone(),
            schedule.next_fire_at.map_or_else(|| "never".to_owned(), absolute_time),
            schedule.last_fired_at.map_or_else(|| "-".to_owned(), |at| relative_time(at, now)),
            schedule.last_outcome.clone().unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    finish(table)
}

/// Deliveries, newest first: what each triggered or why it triggered nothing.
pub fn deliveries_table(deliveries: &[Delivery], now: Timestamp) -> String {
    let mut table =
        table(&["RECEIVED", "PROVIDER", "EVENT", "STATUS", "RUNS", "OUTCOME", "DELIVERY"]);
    for delivery in deliveries {
        let runs: Vec<String> = delivery.runs.iter().map(ToString::to_string).collect();
        table.add_row(vec![
            relative_time(delivery.received_at, now),
            delivery.provider.clone(),
            delivery.event.clone(),
            delivery.status.to_string(),
            if runs.is_empty() { "-".to_owned() } else { runs.join(",") },
            delivery.outcome.clone(),
            delivery.delivery_id.clone(),
        ]);
    }
    finish(table)
}

pub fn keys_table(keys: &[ApiKey], now: Timestamp) -> String {
    let mut table = table(&[
        "NAME",
        "ID",
        "ROLE",
        "SCOPE",
        "STATUS",
        "EXPIRES",
        "LAST USED",
        "CREATED BY",
        "CREATED",
    ]);
    let status = |key: &ApiKey| match (key.revoked_at, key.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(at)) if at <= now => "expired",
        _ => "active",
    };
    let mut keys: Vec<&ApiKey> = keys.iter().collect();
    keys.sort_by_key(|key| status(key) != "active");
    for key in keys {
        table.add_row(vec![
            key.name.clone(),
            key.id.clone(),
            key.role.to_string(),
            if key.scope.is_empty() { "everything".to_owned() } else { key.scope.join(",") },
            status(key).to_owned(),
            key.expires_at.map_or_else(|| "never".to_owned(), absolute_time),
            key.last_used_at.map_or_else(|| "never".to_owned(), |at| relative_time(at, now)),
            key.created_by.clone(),
            relative_time(key.created_at, now),
        ]);
    }
    finish(table)
}

#[cfg(test)]
mod tests {
    use gantry_domain::{RunId, RunType, StackId, Tool, WorkerId, WorkerStatus};
    use gantry_proto::api::{EnvironmentVariable, StateChange};

    use super::*;

    const T0: i64 = 1_767_323_045_000; // 2026-01-02T03:04:05Z

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(T0 + seconds * 1_000)
    }

    fn pool() -> Pool {
        Pool {
            id: PoolId::from_u128(1),
            name: "build-farm".to_owned(),
            kind: PoolKind::Private,
            description: "VMs in the basement".to_owned(),
            labels: vec!["prod".to_owned(), "eu".to_owned()],
            certificate_fingerprint: Some("sha256:3f2a9c1d".to_owned()),
            key_algorithm: Some("EC P-256".to_owned()),
            workers: 2,
            busy_workers: 1,
            drained_workers: 0,
            pending_runs: 3,
            used_by: Vec::new(),
            created_at: at(0),
        }
    }

    fn workers() -> Vec<Worker> {
        vec![
            Worker {
                id: WorkerId::from_u128(10),
                pool_id: PoolId::from_u128(1),
                status: WorkerStatus::Busy,
                busy: true,
                drained: false,
                current_run_id: Some(RunId::from_u128(100)),
                metadata: BTreeMap::from([
                    ("az".to_owned(), "eu-1a".to_owned()),
                    ("host".to_owned(), "vm-7".to_owned()),
                ]),
                launcher_version: "0.1.0".to_owned(),
                hostname: "vm-7".to_owned(),
                created_at: at(10),
                last_seen_at: at(3_590),
            },
            Worker {
                id: WorkerId::from_u128(11),
                pool_id: PoolId::from_u128(2),
                status: WorkerStatus::Idle,
                busy: false,
                drained: false,
                current_run_id: None,
                metadata: BTreeMap::new(),
                launcher_version: "0.1.0".to_owned(),
                hostname: "vm-8".to_owned(),
                created_at: at(10),
                last_seen_at: at(3_000),
            },
        ]
    }

    fn stack() -> Stack {
        Stack {
            id: StackId::from_u128(50),
            name: "network".to_owned(),
            repository: "https://git.example.com/infra.git".to_owned(),
            branch: "main".to_owned(),
            project_root: "network".to_owned(),
            pool_id: PoolId::from_u128(1),
            pool_name: "build-farm".to_owned(),
            tool: Tool::Terraform,
            runner_image: None,
            autodeploy: false,
            managed_state: false,
            share_sensitive_outputs: false,
            environment: vec![
                EnvironmentVariable {
                    name: "TF_VAR_region".to_owned(),
                    value: Some("eu-west-1".to_owned()),
                    secret: false,
                    sealed_value: None,
                },
                EnvironmentVariable {
                    name: "TF_VAR_token".to_owned(),
                    value: None,
                    secret: true,
                    sealed_value: None,
                },
            ],
            description: String::new(),
            labels: vec!["core".to_owned()],
            trigger_paths: vec!["modules/**".to_owned()],
            created_at: at(-86_400 * 3),
            lock_fence: None,
            drift: None,
        }
    }

    fn run(state: RunState) -> Run {
        let states: &[(RunState, i64)] = &[
            (RunState::Queued, 0),
            (RunState::Ready, 2),
            (RunState::Preparing, 3),
            (RunState::Initializing, 9),
            (RunState::Planning, 14),
            (RunState::Unconfirmed, 79),
            (RunState::Confirmed, 300),
            (RunState::Applying, 301),
            (RunState::Failed, 400),
        ];
        let end = states.iter().position(|(s, _)| *s == state).map_or(states.len(), |i| i + 1);
        Run {
            id: RunId::from_u128(100),
            stack_id: StackId::from_u128(50),
            stack_name: "network".to_owned(),
            pool_id: PoolId::from_u128(1),
            run_type: RunType::Tracked,
            state,
            branch: "main".to_owned(),
            commit: Some("3f2a9c1d8e7b6a5f4e3d2c1b0a99887766554433".to_owned()),
            commit_message: Some("Add the VPN gateway\n\nLong description.".to_owned()),
            autodeploy: false,
            command: None,
            prioritized: false,
            stop_requested: false,
            triggered_by: "admin".to_owned(),
            worker_id: Some(WorkerId::from_u128(10)),
            has_changes: Some(true),
            failure: (state == RunState::Failed)
                .then(|| "terraform apply exited with status 1".to_owned()),
            waiting_reason: None,
            history: states[..end]
                .iter()
                .map(|(state, seconds)| StateChange { state: *state, at: at(*seconds) })
                .collect(),
            outputs: vec![
                Output {
                    name: "gateway_ip".to_owned(),
                    value: Some(serde_json::json!("10.0.0.1")),
                    sensitive: false,
                },
                Output {
                    name: "ports".to_owned(),
                    value: Some(serde_json::json!([443, 1194])),
                    sensitive: false,
                },
                Output { name: "psk".to_owned(), value: None, sensitive: true },
            ],
            created_at: at(0),
            updated_at: at(end as i64),
        }
    }

    #[test]
    fn a_fenced_stack_says_until_when_and_how_to_lift_it() {
        let mut fenced = stack();
        assert!(!super::stack_details(&fenced, &[], at(0)).contains("Lock:"));
        fenced.lock_fence = Some(StackLockFence { run_id: RunId::from_u128(7), until: at(600) });
        let text = super::stack_details(&fenced, &[], at(0));
        let line = text.lines().find(|line| line.starts_with("Lock:")).unwrap();
        assert!(line.contains(&format!("fenced until {}", absolute_time(at(600)))), "{line}");
        assert!(line.contains(&RunId::from_u128(7).to_string()), "{line}");
        assert!(line.contains("gantry stack unfence"), "{line}");
    }

    #[test]
    fn a_drifted_stack_says_since_when_and_what_clears_it() {
        let mut drifted = stack();
        assert!(!super::stack_details(&drifted, &[], at(0)).contains("Drift:"));
        drifted.drift = Some(StackDrift { run_id: RunId::from_u128(9), since: at(-7_200) });
        let text = super::stack_details(&drifted, &[], at(0));
        let line = text.lines().find(|line| line.starts_with("Drift:")).unwrap();
        assert!(line.contains(&format!("drifted since {}", absolute_time(at(-7_200)))), "{line}");
        assert!(line.contains(&RunId::from_u128(9).to_string()), "{line}");
        let listed = super::stacks_table(&[drifted], at(0));
        assert!(listed.lines().nth(1).unwrap().contains("2h ago"), "{listed}");
    }

    #[test]
    fn relative_times_are_compact() {
        let now = at(0);
        let cases = [
            (at(10), "just now"),
            (at(-3), "just now"),
            (at(-45), "45s ago"),
            (at(-150), "2m ago"),
            (at(-3 * 3_600 - 5), "3h ago"),
            (at(-4 * 86_400), "4d ago"),
            (at(-40 * 86_400), "2025-11-23"),
        ];
        for (time, expect) in cases {
            assert_eq!(relative_time(time, now), expect);
        }
        assert_eq!(absolute_time(at(0)), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn durations_are_compact() {
        let cases = [
            (0, "0.0s"),
            (420, "0.4s"),
            (9_960, "10.0s"),
            (42_000, "42s"),
            (65_000, "1m05s"),
            (7_380_000, "2h03m"),
            (273_600_000, "3d04h"),
        ];
        for (millis, expect) in cases {
            assert_eq!(compact_duration(Duration::from_millis(millis)), expect, "{millis} ms");
        }
    }

    #[test]
    fn colours_are_stripped_off_a_terminal_unless_forced() {
        let cases = [
            (ColorChoice::Auto, true, false, false),
            (ColorChoice::Auto, false, false, true),
            (ColorChoice::Auto, true, true, true),
            (ColorChoice::Always, false, true, false),
            (ColorChoice::Never, true, false, true),
        ];
        for (choice, terminal, no_color, expect) in cases {
            assert_eq!(
                choice.strips(terminal, no_color),
                expect,
                "{choice:?} {terminal} {no_color}"
            );
        }
    }

    #[test]
    fn stripping_removes_escape_sequences_even_when_split_across_chunks() {
        let chunks = [
            "\u{1b}[0m\u{1b}[1mTerraform will perform the following actions:\u{1b}[0m\n",
            "  \u{1b}[32m+\u{1b}[0m resource \"terraform_data\" \"x\" {\n\tid = \u{1b}[",
            "1m(known after apply)\u{1b}[0m\r\n",
            "\u{1b}]8;;https://example.com\u{7}link\u{1b}]8;;\u{7} and unicode: é ✓\n",
        ];
        let mut stripped = LogWriter::new(Vec::new(), true);
        let mut raw = LogWriter::new(Vec::new(), false);
        for chunk in chunks {
            stripped.write_chunk(chunk).unwrap();
            raw.write_chunk(chunk).unwrap();
        }
        assert_eq!(
            String::from_utf8(stripped.into_inner()).unwrap(),
            "Terraform will perform the following actions:\n  + resource \"terraform_data\" \"x\" {\n\tid = (known after apply)\r\nlink and unicode: é ✓\n"
        );
        assert_eq!(String::from_utf8(raw.into_inner()).unwrap(), chunks.concat());
    }

    #[test]
    fn stripping_gives_the_same_text_wherever_the_chunks_are_cut() {
        let text =
            "a\u{1b}[1;32mb\u{1b}(Bc\u{1b}]0;title\u{1b}\\d\u{1b}]8;;x\u{7}e\u{1b}[0m\u{1b}Mf\n";
        assert_eq!(AnsiStripper::default().strip(text), "abcdef\n");
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        for &cut in &boundaries {
            let mut stripper = AnsiStripper::default();
            let joined = stripper.strip(&text[..cut]) + &stripper.strip(&text[cut..]);
            assert_eq!(joined, "abcdef\n", "cut at {cut}");
        }
        // A broken sequence does not swallow the text after it.
        assert_eq!(AnsiStripper::default().strip("x\u{1b}[12\nnext"), "x\nnext");
    }

    #[test]
    fn pools_table() {
        let mut shared = pool();
        shared.id = PoolId::from_u128(2);
        shared.name = "shared".to_owned();
        shared.kind = PoolKind::Shared;
        shared.labels = Vec::new();
        insta::assert_snapshot!(super::pools_table(&[pool(), shared], at(3_600)));
        insta::assert_snapshot!("pools_table_empty", super::pools_table(&[], at(0)));
    }

    #[test]
    fn pool_details() {
        insta::assert_snapshot!(super::pool_details(&pool(), &workers()[..1], at(3_600)));
    }

    #[test]
    fn workers_table() {
        let names = BTreeMap::from([(PoolId::from_u128(1), "build-farm".to_owned())]);
        insta::assert_snapshot!(super::workers_table(&workers(), &names, at(3_600)));
    }

    #[test]
    fn stacks_table() {
        insta::assert_snapshot!(super::stacks_table(&[stack()], at(0)));
    }

    #[test]
    fn stack_details() {
        let runs = [run(RunState::Failed), run(RunState::Planning)];
        insta::assert_snapshot!(super::stack_details(&stack(), &runs, at(500)));
    }

    #[test]
    fn runs_table() {
        let mut proposed = run(RunState::Finished);
        proposed.run_type = RunType::Proposed;
        proposed.commit = None;
        insta::assert_snapshot!(super::runs_table(
            &[run(RunState::Failed), run(RunState::Planning), proposed],
            at(500)
        ));
    }

    #[test]
    fn run_details_of_a_failed_run() {
        insta::assert_snapshot!(super::run_details(&run(RunState::Failed), at(500)));
    }

    #[test]
    fn run_details_of_an_unconfirmed_run() {
        insta::assert_snapshot!(super::run_details(&run(RunState::Unconfirmed), at(120)));
    }

    #[test]
    fn run_details_of_a_waiting_run() {
        let mut waiting = run(RunState::Queued);
        waiting.worker_id = None;
        waiting.commit = None;
        waiting.commit_message = None;
        waiting.has_changes = None;
        waiting.outputs = Vec::new();
        waiting.waiting_reason = Some("waiting on run 01KDXYZ (holds the stack lock)".to_owned());
        insta::assert_snapshot!(super::run_details(&waiting, at(30)));
        assert_eq!(
            state_line(&waiting),
            "gantry: run 00000000000000000000000034 is QUEUED (waiting on run 01KDXYZ (holds the stack lock))"
        );
    }

    #[test]
    fn state_versions_table() {
        let version = |n: u64, run: u128, size: u64, rollback_of: Option<u64>| StateVersion {
            version: n,
            current: n == 4,
            run_id: RunId::from_u128(run),
            sha256: "ab".repeat(32),
            size,
            created_at: at(n as i64 * 100),
            rollback_of,
            rolled_back_by: rollback_of.map(|_| "admin".to_owned()),
            orphaned: false,
            adopted_from: None,
            adopted_by: None,
        };
        let list = StateVersionList {
            stack: "network".to_owned(),
            kept: 20,
            versions: vec![
                version(4, 1, 2_400, Some(1)),
                version(3, 3, 3 << 20, None),
                version(2, 2, 1_000, None),
                version(1, 1, 2_400, None),
            ],
        };
        insta::assert_snapshot!(super::state_versions_table(&list, at(500)));
        let empty = StateVersionList { versions: Vec::new(), ..list.clone() };
        assert_eq!(
            super::state_versions_table(&empty, at(0)),
            "Stack network has no state yet: its first apply stores one.\n"
        );
        assert_eq!(
            rollback_text("network", &list.versions[0]),
            "Stack network's current state is now version 4, a copy of version 1 as run \
             00000000000000000000000001 stored it (2.3 KiB).\nThe next run starts from it.\n"
        );

        // An orphaned version is marked, and an adoption names the one it copies.
        let adopted = StateVersion {
            rollback_of: None,
            rolled_back_by: None,
            adopted_from: Some(5),
            adopted_by: Some("ops".to_owned()),
            current: true,
            ..version(6, 7, 900, None)
        };
        let orphaned = StateVersion { orphaned: true, ..version(5, 7, 900, None) };
        let earlier =
            list.versions.iter().map(|earlier| StateVersion { current: false, ..earlier.clone() });
        let list = StateVersionList {
            versions: [adopted.clone(), orphaned].into_iter().chain(earlier).collect(),
            ..list
        };
        insta::assert_snapshot!(
            "state_versions_table_with_an_adopted_orphan",
            super::state_versions_table(&list, at(700))
        );
        assert_eq!(
            adoption_text("network", &adopted),
            "Stack network's current state is now version 6, a copy of orphaned version 5 as \
             run 00000000000000000000000007 stored it (900 B).\nThe next run starts from it.\n"
        );
    }

    #[test]
    fn json_output_is_the_api_json() {
        let value = serde_json::to_value(run(RunState::Failed)).unwrap();
        assert_eq!(value["created_at"], "2026-01-02T03:04:05Z");
        assert_eq!(value["state"], "FAILED");
    }

    #[test]
    fn keys_table() {
        use gantry_domain::access::Role;
        let key = |name: &str, role: Role, scope: &[&str]| ApiKey {
            id: format!("{name:0>16}"),
            name: name.to_owned(),
            role,
            scope: scope.iter().map(|s| s.to_string()).collect(),
            created_by: "admin".to_owned(),
            created_at: at(0),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        let mut deployer = key("deployer", Role::Writer, &["stack:web", "pool:build"]);
        deployer.expires_at = Some(at(86_400));
        deployer.last_used_at = Some(at(3_000));
        let mut old = key("old", Role::Reader, &[]);
        old.revoked_at = Some(at(10));
        let mut lapsed = key("lapsed", Role::Operator, &["pool:k8s"]);
        lapsed.expires_at = Some(at(60));
        let admin = key("admin", Role::Admin, &[]);
        insta::assert_snapshot!(super::keys_table(&[old, admin, lapsed, deployer], at(3_600)));
    }
}
