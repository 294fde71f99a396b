//! A managed-state stack's state through a run. It is brought into the workspace, opened
//! with the pool key, before any of the run's code runs; after an apply (or a task's
//! command) the state the run left is checked, sealed and stored once, before the run's
//! outcome is reported, so that the next run of the stack starts from it. The run's code
//! is hostile: every access goes through the workspace as the launcher opened it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gantry_crypto::{EnvelopeContext, OpeningReader, PoolPrivateKey, Purpose};
use gantry_proto::agent::{Assignment, BlobRef, StateStored};

use super::RunContext;
use super::sealed::{
    Hashing, Scratch, context, download, envelope_error, explain, open_scratch, seal_into,
    upload_state,
};
use crate::confined::{Confined, FileRefusal};
use crate::state_check::{self, StateIdentity};

/// The state file a managed-state stack uses, relative to its project root.
pub(crate) const STATE_FILE: &str = "gantry.tfstate";
/// Replaces the configuration's backend with a local one at `STATE_FILE`; a relative
/// path, so that the plan applies wherever the workspace is unpacked.
const BACKEND_OVERRIDE_FILE: &str = "gantry_managed_state_override.tf";
const BACKEND_OVERRIDE: &str = "# Written by Gantry: this stack's state is managed by Gantry, encrypted to the pool key.\n\
terraform {\n  backend \"local\" {\n    path = \"gantry.tfstate\"\n  }\n}\n";

/// A managed-state run: after its apply, the new state is stored before the outcome is
/// reported, so that the next run of the stack starts from it.
#[derive(Debug)]
pub(crate) struct ManagedState {
    pub(crate) context: Arc<RunContext>,
    pub(crate) assignment: Assignment,
    pub(crate) files: Arc<ProjectFiles>,
    /// The state the run started from.
    pub(crate) before: Option<StateBefore>,
    /// The apply has started: from now on the state may change.
    pub(crate) applying: std::sync::atomic::AtomicBool,
    /// The state was stored (or storing it failed): once per run.
    pub(crate) stored: tokio::sync::Mutex<Option<Result<bool, String>>>,
    /// The server kept the stored state as this orphaned version (the run no longer
    /// held its stack's lock), until the run's log says so.
    orphaned_as: std::sync::Mutex<Option<u64>>,
}

impl ManagedState {
    /// The managed state of a run that may change it (tracked runs and tasks); `None`
    /// for runs that only read it. `before` is the state it starts from.
    pub(crate) fn for_run(
        context: &Arc<RunContext>,
        assignment: &Assignment,
        files: Arc<ProjectFiles>,
        before: Option<StateBefore>,
    ) -> Option<Self> {
        assignment.run_type.takes_stack_lock().then(|| Self {
            context: Arc::clone(context),
            assignment: assignment.clone(),
            files,
            before,
            applying: std::sync::atomic::AtomicBool::new(
                assignment.job == gantry_proto::agent::Job::Apply,
            ),
            stored: tokio::sync::Mutex::new(None),
            orphaned_as: std::sync::Mutex::new(None),
        })
    }

    /// Stores the state the apply left, once; later calls return the first result.
    pub(crate) async fn store_after_apply(&self) -> Option<Result<bool, String>> {
        if !self.applying.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let mut stored = self.stored.lock().await;
        if stored.is_none() {
            let result = store_state_version(
                &self.context,
                &self.assignment,
                &self.files,
                self.before.as_ref(),
            )
            .await;
            if let Ok(Some(version)) = &result
                && version.orphaned
                && let Ok(mut orphaned_as) = self.orphaned_as.lock()
            {
                *orphaned_as = version.version;
            }
            *stored = Some(result.map(|version| version.is_some()));
        }
        stored.clone()
    }

    /// Once, after the state was stored as an orphaned version: the run's log line that
    /// says so and how to make it current. The run's ending is unaffected.
    pub(crate) fn take_orphan_notice(&self) -> Option<String> {
        let version = self.orphaned_as.lock().ok()?.take()?;
        Some(orphan_notice(&self.assignment.stack.name, version))
    }
}

/// What the run's log says when the server kept its state as an orphaned version.
fn orphan_notice(stack: &str, version: u64) -> String {
    format!(
        "\nThe server kept the new state as orphaned state version {version} of stack {stack}, not as its current state: \
         this run no longer held the stack's lock (the server had ended it, or the lock had passed on). \
         Nothing is lost; to make it current: gantry stack state adopt {stack} {version}\n"
    )
}

/// A managed-state run's files: its workspace as the launcher opened it before any of
/// the run's code ran, and the project root inside it. Every access goes through
/// [`Confined`]: the run may have left links, fifos or hard links in their place.
#[derive(Debug)]
pub(crate) struct ProjectFiles {
    workspace: Confined,
    /// The project root, relative to the workspace, with no link in it.
    project: PathBuf,
}

impl ProjectFiles {
    /// Opens the workspace of a run whose checkout (or unpacked plan) is in place.
    pub(crate) fn open(workspace: &Path, project_root: &str) -> Result<Self, String> {
        let project = crate::workspace::project_directory(workspace, project_root)?;
        let root =
            workspace.canonicalize().map_err(|e| format!("the workspace is unreadable: {e}"))?;
        let project = project
            .strip_prefix(&root)
            .map_err(|_| format!("the project root {project_root:?} leads outside the repository"))?
            .to_path_buf();
        let workspace =
            Confined::open(&root).map_err(|e| format!("cannot open the workspace: {e}"))?;
        Ok(Self { workspace, project })
    }

    /// Opens the workspace of a run whose code has run, at the project root found when it
    /// was first opened (`project`, relative, as journaled): nothing the run planted since
    /// is followed to find it.
    pub(crate) fn reopen(workspace: &Path, project: &Path) -> Result<Self, String> {
        if project.is_absolute()
            || project.components().any(|part| !matches!(part, std::path::Component::Normal(_)))
        {
            return Err(format!(
                "the journaled project root {} is not inside the workspace",
                project.display()
            ));
        }
        let workspace =
            Confined::open(workspace).map_err(|e| format!("cannot open the workspace: {e}"))?;
        Ok(Self { workspace, project: project.to_path_buf() })
    }

    /// The project root, relative to the workspace.
    pub(crate) fn project(&self) -> &Path {
        &self.project
    }

    fn state_file(&self) -> PathBuf {
        self.project.join(STATE_FILE)
    }
}

/// What a run's journal keeps of its managed state: enough to store the state a run
/// left after its launcher died, under the same rules as before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StateJournal {
    /// The project root, relative to the workspace, as found before the run's code ran.
    pub(crate) project: PathBuf,
    /// The state the run started from: none when the stack had none.
    pub(crate) before_sha256: Option<String>,
    pub(crate) before_lineage: Option<String>,
    pub(crate) before_serial: Option<u64>,
}

impl StateJournal {
    pub(crate) fn of(project: &Path, before: Option<&StateBefore>) -> Self {
        Self {
            project: project.to_path_buf(),
            before_sha256: before.map(|before| before.sha256.clone()),
            before_lineage: before.map(|before| before.identity.lineage.clone()),
            before_serial: before.map(|before| before.identity.serial),
        }
    }

    /// The state the run started from.
    pub(crate) fn before(&self) -> Option<StateBefore> {
        match (&self.before_sha256, &self.before_lineage, self.before_serial) {
            (Some(sha256), Some(lineage), Some(serial)) => Some(StateBefore {
                sha256: sha256.clone(),
                identity: StateIdentity { lineage: lineage.clone(), serial },
            }),
            _ => None,
        }
    }
}

/// The state a run started from: its digest tells whether the run changed it, its
/// identity what may follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateBefore {
    pub(crate) sha256: String,
    pub(crate) identity: StateIdentity,
}

/// Prepares a managed-state stack's project: the backend override, and the stack's
/// current state decrypted into `STATE_FILE` (any state file the repository or an
/// earlier job left there is replaced: the server's current version is the truth).
/// Returns what the run starts from (none when the stack has no state yet).
pub(crate) async fn bring_in_state(
    run_context: &RunContext,
    assignment: &Assignment,
    files: &Arc<ProjectFiles>,
) -> Result<Option<StateBefore>, String> {
    let override_file = files.project.join(BACKEND_OVERRIDE_FILE);
    let written = files.workspace.replace(&override_file, 0o644).and_then(|mut file| {
        file.write_all(BACKEND_OVERRIDE.as_bytes()).map_err(|source| FileRefusal::Io {
            action: "write",
            path: override_file.display().to_string(),
            source,
        })
    });
    written.map_err(|e| format!("cannot write the managed-state backend: {e}"))?;
    let Some(version) = &assignment.state else {
        files
            .workspace
            .remove(&files.state_file())
            .map_err(|e| format!("cannot clear the state file: {e}"))?;
        return Ok(None);
    };
    let scratch = Scratch::new(run_context, &format!("{}.state-in.gantry", assignment.run_id));
    let downloaded = download(run_context, assignment.run_id, "state", &scratch.0, &version.blob)
        .await
        .map_err(|e| format!("cannot download the stack's state: {e}"))?
        .ok_or_else(|| "the stack's state is gone from the server".to_owned())?;
    // The producing run is part of the encryption context: the server cannot pass off
    // another run's blob as this version.
    let producer = downloaded.produced_by.unwrap_or(version.run_id);
    if producer != version.run_id {
        return Err(format!(
            "the server sent state produced by run {producer}, not run {}",
            version.run_id
        ));
    }
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = context(run_context, assignment, version.run_id, Purpose::State);
    let (path, files) = (scratch.0.clone(), Arc::clone(files));
    let producer = version.run_id;
    tokio::task::spawn_blocking(move || {
        let file =
            open_scratch(&path).map_err(|e| format!("cannot read the downloaded state: {e}"))?;
        let mut reader = OpeningReader::new(&key, &envelope, std::io::BufReader::new(file))
            .map_err(|e| explain("state", &e))?;
        let state_file = files.state_file();
        let mut output = Hashing {
            inner: files
                .workspace
                .replace(&state_file, 0o644)
                .map_err(|e| format!("cannot write the state file: {e}"))?,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            size: 0,
        };
        std::io::copy(&mut reader, &mut output).map_err(|e| match envelope_error(&e) {
            Some(envelope) => explain("state", envelope),
            None => format!("cannot decrypt the state: {e}"),
        })?;
        let sha256 = hex::encode(output.digest.finish());
        // Nothing of the run has run yet: the file is the one just written.
        let written = files
            .workspace
            .read(&state_file, u64::MAX)
            .map_err(|e| format!("cannot read the state back: {e}"))?
            .ok_or_else(|| "the state file vanished as it was written".to_owned())?;
        let identity = state_check::identify(written).map_err(|refusal| {
            format!(
                "the stack's current state (stored by run {producer}) is refused: {refusal}; roll the stack back to a good version (gantry stack state rollback)"
            )
        })?;
        Ok(Some(StateBefore { sha256, identity }))
    })
    .await
    .map_err(|e| format!("decrypting the state crashed: {e}"))?
}

/// A reader that hashes what passes through it and copies it to a writer: the state is
/// validated and sealed in one pass, so what is sealed is exactly what was validated.
struct Tee<'a, R> {
    input: R,
    copy: &'a mut dyn Write,
    digest: aws_lc_rs::digest::Context,
    failed_copy: Option<std::io::Error>,
}

impl<R: std::io::Read> std::io::Read for Tee<'_, R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = self.input.read(buffer)?;
        self.digest.update(&buffer[..read]);
        if let Err(error) = self.copy.write_all(&buffer[..read]) {
            let message = error.to_string();
            self.failed_copy = Some(error);
            return Err(std::io::Error::other(message));
        }
        Ok(read)
    }
}

/// What sealing the state a run left found.
enum SealedState {
    /// No state file, or the same bytes the run started from.
    Unchanged,
    /// A valid successor, sealed into the scratch file.
    Sealed(BlobRef),
}

/// After an apply (successful or not: a failed apply may have created resources), seals
/// and stores the state it left, if it changed and is a valid successor of the state the
/// run started from. On an upload failure the sealed state is kept on this machine and
/// the error says where; a refused state is never sealed, and the stack keeps its
/// previous version. Answers what the server made of the state (`None`: the run left it
/// unchanged): the stack's current version, or an orphaned one when the run no longer
/// held the stack's lock.
pub(crate) async fn store_state_version(
    run_context: &RunContext,
    assignment: &Assignment,
    files: &Arc<ProjectFiles>,
    before: Option<&StateBefore>,
) -> Result<Option<StateStored>, String> {
    let name = format!("{}.state-out.gantry", assignment.run_id);
    let path = run_context.scratch_dir.join(&name);
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = context(run_context, assignment, assignment.run_id, Purpose::State);
    let limit = run_context.config.archive_limits.max_state_bytes;
    let (sealed, files_in_task, before_in_task) =
        (path.clone(), Arc::clone(files), before.cloned());
    let outcome = tokio::task::spawn_blocking(move || {
        seal_state(&sealed, &key, &envelope, &files_in_task, before_in_task.as_ref(), limit)
    })
    .await
    .map_err(|e| format!("sealing the state crashed: {e}"))?;
    let blob = match outcome {
        Ok(SealedState::Unchanged) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(None);
        }
        Ok(SealedState::Sealed(blob)) => blob,
        Err(problem) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(problem);
        }
    };
    match upload_state(run_context, assignment, &path, &blob).await {
        Ok(stored) => {
            let _ = tokio::fs::remove_file(&path).await;
            if stored.orphaned {
                tracing::warn!(run = %assignment.run_id, version = ?stored.version, "the server kept the run's state as an orphaned version: the run no longer held its stack's lock");
            }
            Ok(Some(stored))
        }
        Err(error) => {
            // Never lose state: keep the sealed file where an operator can find it.
            let (sealed, work_dir) = (path.clone(), run_context.config.work_dir.clone());
            let kept =
                tokio::task::spawn_blocking(move || keep_unsaved_state(&sealed, &work_dir, &name))
                    .await;
            let location = match kept {
                Ok(Ok(kept)) => kept.display().to_string(),
                _ => path.display().to_string(),
            };
            Err(format!(
                "the new state could not be stored ({error}); it is kept, encrypted, at {location} on {}",
                run_context.config.hostname
            ))
        }
    }
}

/// Where a sealed state that could not be uploaded is kept, in the work directory.
const UNSAVED_STATE_DIR: &str = "unsaved-state";

/// Copies a sealed state that could not be uploaded from scratch into the work
/// directory's `unsaved-state`, and returns where it is. In a Pod the work directory is
/// the workspace volume, which the run's code can write (and which may outlive the Pod,
/// unlike scratch): nothing there is followed, and scratch may be another filesystem,
/// so the file is copied rather than renamed.
fn keep_unsaved_state(sealed: &Path, work_dir: &Path, name: &str) -> Result<PathBuf, String> {
    let kept = Path::new(UNSAVED_STATE_DIR).join(name);
    let copied = || -> Result<(), String> {
        let directory = Confined::open(work_dir).map_err(|e| e.to_string())?;
        directory
            .create_directory(Path::new(UNSAVED_STATE_DIR), 0o700)
            .map_err(|e| e.to_string())?;
        let mut output = directory.replace(&kept, 0o600).map_err(|e| e.to_string())?;
        let mut input = open_scratch(sealed).map_err(|e| e.to_string())?;
        std::io::copy(&mut input, &mut output).map_err(|e| e.to_string())?;
        output.sync_all().map_err(|e| e.to_string())
    };
    copied()?;
    let _ = std::fs::remove_file(sealed);
    Ok(work_dir.join(kept))
}

/// Reads the state file once, through the workspace as the launcher opened it: hashes,
/// validates and seals the same bytes.
fn seal_state(
    sealed: &Path,
    key: &PoolPrivateKey,
    envelope: &EnvelopeContext,
    files: &ProjectFiles,
    before: Option<&StateBefore>,
    limit: u64,
) -> Result<SealedState, String> {
    let state_file = files.state_file();
    let refused = |rule: String| {
        format!(
            "the state it left in {} is refused ({rule}); the stack keeps its previous state",
            state_file.display()
        )
    };
    let file = match files.workspace.read(&state_file, limit) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(SealedState::Unchanged),
        Err(FileRefusal::TooLarge { size, limit, .. }) => {
            return Err(refused(format!(
                "it is {size} bytes, over GANTRY_LAUNCHER_STATE_MAX_SIZE of {limit} bytes"
            )));
        }
        Err(refusal) => return Err(refused(refusal.to_string())),
    };
    let mut verdict = None;
    let mut sha256 = String::new();
    let blob = seal_into(sealed, key, envelope, |output| {
        let mut tee = Tee {
            input: std::io::Read::take(file, limit),
            copy: output,
            digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
            failed_copy: None,
        };
        let identity = state_check::identify(&mut tee);
        if let Some(error) = tee.failed_copy.take() {
            return Err(format!("cannot encrypt the state: {error}"));
        }
        sha256 = hex::encode(tee.digest.finish());
        verdict = Some(identity);
        Ok(())
    })?;
    if before.is_some_and(|before| before.sha256 == sha256) {
        return Ok(SealedState::Unchanged);
    }
    let identity = match verdict {
        Some(Ok(identity)) => identity,
        Some(Err(refusal)) => return Err(refused(refusal.to_string())),
        None => return Err(refused("it could not be read".to_owned())),
    };
    state_check::check_successor(before.map(|before| &before.identity), &identity)
        .map_err(|refusal| refused(refusal.to_string()))?;
    Ok(SealedState::Sealed(blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsaved_state_is_kept_in_the_work_directory_never_through_a_link() {
        let (scratch, work, outside) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let sealed = scratch.path().join("run.state-out.gantry");
        std::fs::write(&sealed, "ciphertext").unwrap();

        // The run's code left a link where the kept state goes (a Pod's workspace volume).
        std::os::unix::fs::symlink(outside.path(), work.path().join(UNSAVED_STATE_DIR)).unwrap();
        let error = keep_unsaved_state(&sealed, work.path(), "run.state-out.gantry").unwrap_err();
        assert!(error.contains("is a symbolic link"), "{error}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(sealed.is_file(), "a state that could not be kept stays where it was");

        std::fs::remove_file(work.path().join(UNSAVED_STATE_DIR)).unwrap();
        let kept = keep_unsaved_state(&sealed, work.path(), "run.state-out.gantry").unwrap();
        assert_eq!(kept, work.path().join("unsaved-state/run.state-out.gantry"));
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "ciphertext");
        assert!(!sealed.exists());
    }
}
