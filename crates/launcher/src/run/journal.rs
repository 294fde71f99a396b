//! A run's journal in the launcher's work directory: what a launcher started again with
//! the same work directory needs to finish a run its dead instance left (`recovery`).
//! Written whole or not at all (a temporary file renamed, then the directory synced) as
//! the run goes on: when it is taken on (durable before its worker can start), once
//! prepared (the state it started from), once its worker started (where that worker is),
//! and before its final report goes out (durable before it is sent). Each write costs two
//! disk flushes, a millisecond or more: those that need not hold the run up are made on a
//! blocking thread while it goes on, in order, each with the entry as it is then.
//!
//! It holds no secret that is not already on the machine in clear: the stack's secret
//! variables are left out (they stay sealed in the assignment), and so are the values of
//! the stack's inputs; the pool key is in the launcher's configuration. The workspace
//! beside it holds the run's files, the decrypted state among them, as before.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use gantry_proto::agent::{Assignment, RunReport};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::state::{StateBefore, StateJournal};
use crate::executor::WorkerHandle;

/// The format this launcher writes; a journal of another format is left alone.
const JOURNAL_VERSION: u32 = 1;
const EXTENSION: &str = "json";
/// The largest journal read: an assignment with its environment, far below this.
const MAX_JOURNAL_BYTES: u64 = 16 << 20;

/// What is known of one run, as last written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournalEntry {
    version: u32,
    /// The assignment, without the values of secret variables and inputs.
    pub(crate) assignment: Assignment,
    /// The managed state the run started from, once it was brought in.
    #[serde(default)]
    pub(crate) state: Option<StateJournal>,
    /// Where its worker runs, once started.
    #[serde(default)]
    pub(crate) worker: Option<WorkerHandle>,
    /// How the run ended, when that was being reported: sent again until acknowledged.
    #[serde(default)]
    pub(crate) final_report: Option<RunReport>,
}

/// One run's journal file, kept up to date while the run is on this launcher.
#[derive(Debug)]
pub(crate) struct RunJournal {
    path: PathBuf,
    entry: Mutex<JournalEntry>,
    /// Held while the file is written or removed; `true` once the run left, after which
    /// nothing is written again.
    file: Mutex<bool>,
}

impl RunJournal {
    /// The journal of a run just taken on, in `dir`, written on a blocking thread: the
    /// returned task ends once it is on disk (await it before the worker can start). A
    /// journal that cannot be written is said in the launcher's log, not fatal: the run
    /// goes on, unrecoverable.
    pub(crate) fn begin(dir: &Path, assignment: &Assignment) -> (Arc<Self>, JoinHandle<()>) {
        let journal = Arc::new(Self {
            path: dir.join(format!("{}.{EXTENSION}", assignment.run_id)),
            entry: Mutex::new(JournalEntry {
                version: JOURNAL_VERSION,
                assignment: without_secrets(assignment),
                state: None,
                worker: None,
                final_report: None,
            }),
            file: Mutex::new(false),
        });
        let written = journal.save_in_background();
        (journal, written)
    }

    fn change(&self, change: impl FnOnce(&mut JournalEntry)) {
        change(&mut self.entry.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The run's managed state starts from `before`, in `project` of its workspace:
    /// written while the run goes on (the task ends once it is on disk).
    pub(crate) fn prepared(
        self: &Arc<Self>,
        project: &Path,
        before: Option<&StateBefore>,
    ) -> JoinHandle<()> {
        let state = StateJournal::of(project, before);
        self.change(|entry| entry.state = Some(state));
        self.save_in_background()
    }

    /// The run's worker started: written while the worker goes on, not holding it up
    /// (the task ends once it is on disk).
    pub(crate) fn worker_started(self: &Arc<Self>, handle: WorkerHandle) -> JoinHandle<()> {
        self.change(|entry| entry.worker = Some(handle));
        self.save_in_background()
    }

    /// The run's final report is about to be sent: on disk when this returns.
    pub(crate) fn final_report(&self, report: &RunReport) {
        let report = report.clone();
        self.change(|entry| entry.final_report = Some(report));
        self.save();
    }

    /// The run left this launcher: nothing is left to recover, and nothing is written
    /// again by a write still under way.
    pub(crate) fn end_now(&self) {
        let mut ended = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        *ended = true;
        remove(&self.path);
    }

    fn save_in_background(self: &Arc<Self>) -> JoinHandle<()> {
        let journal = Arc::clone(self);
        tokio::task::spawn_blocking(move || journal.save())
    }

    fn save(&self) {
        let ended = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if *ended {
            return;
        }
        // Read under the file's lock: whichever write comes last writes the newest entry.
        let entry = self.entry.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Err(error) = write(&self.path, &entry) {
            tracing::warn!(run = %entry.assignment.run_id, path = %self.path.display(), %error, "cannot write the run's journal: a launcher started again could not recover this run");
        }
    }
}

/// Where a launcher instance keeps its runs' journals, beside their workspaces in
/// `runs_dir`: private to the launcher's user.
pub(crate) fn directory(runs_dir: &Path) -> PathBuf {
    runs_dir.parent().unwrap_or(runs_dir).join("journal")
}

/// Whether `report` ends the run's stay on this launcher: written to the journal before
/// it is sent. A plan's report is not: the server's answer decides what follows it.
pub(crate) fn ends_the_run(report: &RunReport) -> bool {
    matches!(
        report,
        RunReport::Applied
            | RunReport::Performed
            | RunReport::Failed { .. }
            | RunReport::Stopped
            | RunReport::WorkspaceStored { .. }
    )
}

/// The journal's copy of an assignment: what is secret in it is left out.
fn without_secrets(assignment: &Assignment) -> Assignment {
    let mut kept = assignment.clone();
    for variable in &mut kept.stack.environment {
        if variable.secret {
            variable.value = None;
        }
    }
    kept.inputs.clear();
    kept
}

fn write(path: &Path, entry: &JournalEntry) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let text = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&partial)?;
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&partial, path)?;
    sync_dir(path)
}

/// Makes a rename or removal in `path`'s directory survive a power loss.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Removes a journal file; a journal that stays would be recovered again, harmlessly.
pub(crate) fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            let _ = sync_dir(path);
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot remove a run's journal");
        }
    }
}

/// The journals in `dir`, each with its path; one that cannot be read is named in the
/// launcher's log and skipped (left in place for an operator).
pub(crate) fn read_all(dir: &Path) -> Vec<(PathBuf, JournalEntry)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut journals = Vec::new();
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.extension().is_none_or(|extension| extension != EXTENSION) {
            continue;
        }
        match read(&path) {
            Ok(entry) => journals.push((path, entry)),
            Err(problem) => {
                tracing::error!(path = %path.display(), "cannot read a run's journal: {problem}; left in place");
            }
        }
    }
    journals
}

fn read(path: &Path) -> Result<JournalEntry, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(MAX_JOURNAL_BYTES).read_to_end(&mut text).map_err(|e| e.to_string())?;
    let entry: JournalEntry = serde_json::from_slice(&text).map_err(|e| {
        format!("not a journal (JSON error at line {}, column {})", e.line(), e.column())
    })?;
    if entry.version != JOURNAL_VERSION {
        return Err(format!(
            "format version {}, this launcher reads {JOURNAL_VERSION}",
            entry.version
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use gantry_domain::RunId;

    use super::*;

    fn assignment() -> Assignment {
        serde_json::from_value(serde_json::json!({
            "run_id": RunId::generate().to_string(),
            "worker_id": gantry_domain::WorkerId::generate().to_string(),
            "run_type": "TRACKED",
            "job": "apply",
            "stack": {
                "id": gantry_domain::StackId::generate().to_string(),
                "name": "app", "repository": "file:///r", "branch": "main",
                "project_root": "infra", "tool": "terraform", "runner_image": null,
                "environment": [
                    {"name": "PLAIN", "value": "visible", "secret": false},
                    {"name": "TOKEN", "value": "opened-secret-value", "secret": true, "sealed_value": "c2VhbGVk"}
                ],
            },
            "commit": null,
            "inputs": [["TF_VAR_upstream", "an-input-value"]],
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_journal_keeps_what_recovery_needs_and_no_secret_value() {
        let dir = tempfile::tempdir().unwrap();
        let assignment = assignment();
        let (journal, written) = RunJournal::begin(dir.path(), &assignment);
        written.await.unwrap();
        assert_eq!(read_all(dir.path()).len(), 1, "on disk once the task ended");
        journal.worker_started(WorkerHandle::Container { id: "abc".to_owned() }).await.unwrap();
        journal.final_report(&RunReport::Applied);
        let path = dir.path().join(format!("{}.json", assignment.run_id));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("opened-secret-value") && !text.contains("an-input-value"),
            "{text}"
        );
        assert!(text.contains("c2VhbGVk") && text.contains("visible"), "{text}");

        let read = read_all(dir.path());
        assert_eq!(read.len(), 1);
        let (read_path, entry) = &read[0];
        assert_eq!(read_path.file_stem().unwrap(), &*assignment.run_id.to_string());
        assert_eq!(entry.worker, Some(WorkerHandle::Container { id: "abc".to_owned() }));
        assert!(matches!(entry.final_report, Some(RunReport::Applied)));
        assert!(!dir.path().join(format!("{}.partial", assignment.run_id)).exists());

        journal.end_now();
        assert!(read_all(dir.path()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_made_in_the_background_leave_the_newest_entry_and_none_after_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, written) = RunJournal::begin(dir.path(), &assignment());
        // Many writes at once, each on a blocking thread, ending in no particular order.
        let started = |prefix: &str| -> Vec<JoinHandle<()>> {
            (0..20)
                .map(|id| {
                    journal.worker_started(WorkerHandle::Container { id: format!("{prefix}-{id}") })
                })
                .collect()
        };
        let writes = started("worker");
        journal.final_report(&RunReport::Stopped);
        written.await.unwrap();
        for write in writes {
            write.await.unwrap();
        }
        let [(_, entry)] = read_all(dir.path()).try_into().unwrap();
        assert_eq!(entry.worker, Some(WorkerHandle::Container { id: "worker-19".to_owned() }));
        assert!(matches!(entry.final_report, Some(RunReport::Stopped)), "no older entry won");

        // Writes still under way when the run leaves write nothing after the removal.
        let late = started("late");
        journal.end_now();
        for write in late {
            write.await.unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "no journal comes back: {left:?}");
    }

    #[test]
    fn a_damaged_or_foreign_journal_is_skipped_and_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let damaged = dir.path().join(format!("{}.json", RunId::generate()));
        std::fs::write(&damaged, b"{\"version\": 1, \"assign").unwrap();
        let newer = dir.path().join(format!("{}.json", RunId::generate()));
        let mut entry = serde_json::to_value(JournalEntry {
            version: JOURNAL_VERSION,
            assignment: assignment(),
            state: None,
            worker: None,
            final_report: None,
        })
        .unwrap();
        entry["version"] = 2.into();
        std::fs::write(&newer, entry.to_string()).unwrap();
        assert!(read_all(dir.path()).is_empty());
        assert!(damaged.exists() && newer.exists());
    }
}
