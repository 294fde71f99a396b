//! Run state that crosses the control plane, encrypted to the pool key: the packed
//! workspace of a plan waiting for confirmation (so that any worker of the pool can
//! apply it), the stack's managed Terraform state, and the sensitive outputs a stack
//! shares with the stacks that depend on it. The server only ever holds
//! ciphertext; everything is sealed here, on the pool's machine, before upload, and
//! signed with the pool key, so that what comes back is known to come from the pool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_crypto::{
    EnvelopeContext, EnvelopeError, OpeningReader, PoolPrivateKey, Purpose, SealingWriter,
};
use gantry_domain::RunId;
use gantry_proto::agent::{Assignment, BlobRef, SealedInput};
use gantry_proto::local::SensitiveOutput;

use std::sync::Arc;

use crate::archive::{self, ArchiveError};
use crate::backoff::{Backoff, shown};
use crate::client::ClientError;
use crate::confined::{Confined, FileRefusal};
use crate::run::RunContext;
use crate::state_check::{self, StateIdentity};

/// The state file a managed-state stack uses, relative to its project root.
pub(crate) const STATE_FILE: &str = "gantry.tfstate";
/// Replaces the configuration's backend with a local one at `STATE_FILE`; a relative
/// path, so that the plan applies wherever the workspace is unpacked.
const BACKEND_OVERRIDE_FILE: &str = "gantry_managed_state_override.tf";
const BACKEND_OVERRIDE: &str = "# Written by Gantry: this stack's state is managed by Gantry, encrypted to the pool key.\n\
terraform {\n  backend \"local\" {\n    path = \"gantry.tfstate\"\n  }\n}\n";
const TRANSFER_ATTEMPTS: usize = 6;

fn context(
    run_context: &RunContext,
    assignment: &Assignment,
    run_id: RunId,
    purpose: Purpose,
) -> EnvelopeContext {
    EnvelopeContext {
        pool_id: run_context.config.pool_id.to_string(),
        stack_id: assignment.stack.id.to_string(),
        run_id: run_id.to_string(),
        purpose,
    }
}

/// A temporary file for one blob, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(run_context: &RunContext, name: &str) -> Self {
        Self(run_context.scratch_dir.join(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A writer that hashes what passes through it: the SHA-256 of the ciphertext, which
/// the server checks on arrival and launchers check on download.
struct Hashing<W> {
    inner: W,
    digest: aws_lc_rs::digest::Context,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.digest.update(&bytes[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Seals what `produce` writes into `path`; returns the ciphertext's SHA-256 and size.
fn seal_into(
    path: &Path,
    sealer: &PoolPrivateKey,
    context: &EnvelopeContext,
    produce: impl FnOnce(&mut dyn Write) -> Result<(), String>,
) -> Result<BlobRef, String> {
    let file = create_scratch(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let hashing = Hashing {
        inner: std::io::BufWriter::new(file),
        digest: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        size: 0,
    };
    let mut sealing =
        SealingWriter::new(sealer, context, hashing).map_err(|e| format!("cannot encrypt: {e}"))?;
    produce(&mut sealing)?;
    let mut hashing = sealing.finish().map_err(|e| format!("cannot encrypt: {e}"))?;
    hashing.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    hashing
        .inner
        .get_ref()
        .sync_all()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(BlobRef { sha256: hex::encode(hashing.digest.finish()), size: hashing.size })
}

/// Creates a scratch file anew, private to the launcher's user. Scratch space may be
/// shared with a run (a Pod's workspace volume): whatever is in its place is replaced,
/// and nothing is written through a link.
fn create_scratch(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
}

/// Uploads a sealed file, retrying while the server is unreachable.
async fn upload(
    run_context: &RunContext,
    run_id: RunId,
    what: &str,
    file: &Path,
    blob: &BlobRef,
) -> Result<(), ClientError> {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_context.client.upload_blob(run_id, what, file, &blob.sha256).await {
            Ok(_) => return Ok(()),
            Err(error) if error.is_transient() && attempt < TRANSFER_ATTEMPTS => {
                let delay = backoff.delay();
                tracing::warn!(run = %run_id, %error, "uploading the {what} failed; retrying in {}", shown(delay));
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Downloads a blob into `file`, retrying while the server is unreachable.
async fn download(
    run_context: &RunContext,
    run_id: RunId,
    what: &str,
    file: &Path,
    expected: &BlobRef,
) -> Result<Option<crate::client::Downloaded>, ClientError> {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match run_context.client.download_blob(run_id, what, file, Some(&expected.sha256)).await {
            Ok(downloaded) => return Ok(downloaded),
            Err(error) if error.is_transient() && attempt < TRANSFER_ATTEMPTS => {
                let delay = backoff.delay();
                tracing::warn!(run = %run_id, %error, "downloading the {what} failed; retrying in {}", shown(delay));
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Says what an envelope failure means for this run, in the words users need.
fn explain(what: &str, error: &EnvelopeError) -> String {
    match error {
        EnvelopeError::WrongKey => format!(
            "the {what} was sealed for another pool key: the pool was reset after it was stored, so this pool's launchers can no longer read it"
        ),
        EnvelopeError::Integrity { .. }
        | EnvelopeError::Truncated
        | EnvelopeError::TrailingData => {
            format!(
                "the stored {what} fails its integrity check ({error}): it was altered or damaged, and is refused"
            )
        }
        EnvelopeError::WrongContext { .. } => {
            format!("the stored {what} belongs to another run or purpose ({error}): it is refused")
        }
        EnvelopeError::Forged => format!(
            "the stored {what} is not signed by this pool's key: no launcher of this pool sealed it, so the server or its storage substituted it, and it is refused"
        ),
        other => format!("the stored {what} cannot be decrypted: {other}"),
    }
}

/// The envelope error behind an I/O error from an `OpeningReader`, if there is one.
fn envelope_error(error: &std::io::Error) -> Option<&EnvelopeError> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<EnvelopeError>())
}

/// A reader that remembers why decryption failed: whatever the archive reader makes of
/// the I/O error, the run's failure names the real cause.
struct Recording<R> {
    inner: R,
    failure: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl<R: std::io::Read> std::io::Read for Recording<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buffer).inspect_err(|error| {
            if let (Some(envelope), Ok(mut failure)) = (envelope_error(error), self.failure.lock())
            {
                failure.get_or_insert_with(|| explain("workspace", envelope));
            }
        })
    }
}

/// Packs, seals and uploads the workspace of a plan that waits for confirmation.
pub(crate) async fn store_workspace(
    run_context: &RunContext,
    assignment: &Assignment,
    workspace: &Path,
) -> Result<BlobRef, String> {
    let scratch = Scratch::new(run_context, &format!("{}.workspace.gantry", assignment.run_id));
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = context(run_context, assignment, assignment.run_id, Purpose::Workspace);
    let (path, directory) = (scratch.0.clone(), workspace.to_path_buf());
    let blob = tokio::task::spawn_blocking(move || {
        seal_into(&path, &key, &envelope, |output| {
            archive::pack(&directory, output)
                .map(|_| ())
                .map_err(|e| format!("cannot pack the workspace: {e}"))
        })
    })
    .await
    .map_err(|e| format!("packing the workspace crashed: {e}"))??;
    upload(run_context, assignment.run_id, "workspace", &scratch.0, &blob)
        .await
        .map_err(|e| format!("cannot upload the encrypted workspace: {e}"))?;
    Ok(blob)
}

/// Downloads, verifies, decrypts and unpacks the workspace a confirmed run applies.
pub(crate) async fn restore_workspace(
    run_context: &RunContext,
    assignment: &Assignment,
    workspace: &Path,
) -> Result<(), String> {
    let expected = assignment.workspace.as_ref().ok_or_else(|| {
        "the server holds no stored workspace for this run: trigger a new run".to_owned()
    })?;
    let scratch = Scratch::new(run_context, &format!("{}.workspace.gantry", assignment.run_id));
    download(run_context, assignment.run_id, "workspace", &scratch.0, expected)
        .await
        .map_err(|e| format!("cannot download the stored workspace: {e}"))?
        .ok_or_else(|| {
            "the stored workspace is gone from the server: trigger a new run".to_owned()
        })?;
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = context(run_context, assignment, assignment.run_id, Purpose::Workspace);
    let limits = run_context.config.archive_limits;
    let (path, directory) = (scratch.0.clone(), workspace.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read the downloaded workspace: {e}"))?;
        let reader = OpeningReader::new(&key, &envelope, std::io::BufReader::new(file))
            .map_err(|e| explain("workspace", &e))?;
        let failure = std::sync::Arc::default();
        let recording = Recording { inner: reader, failure: std::sync::Arc::clone(&failure) };
        archive::unpack(recording, &directory, &limits).map(|_| ()).map_err(
            |error: ArchiveError| {
                let decryption = failure.lock().ok().and_then(|mut failure| failure.take());
                decryption.unwrap_or_else(|| format!("the stored workspace is refused: {error}"))
            },
        )
    })
    .await
    .map_err(|e| format!("unpacking the workspace crashed: {e}"))?
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

    fn state_file(&self) -> PathBuf {
        self.project.join(STATE_FILE)
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
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read the downloaded state: {e}"))?;
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
/// previous version.
pub(crate) async fn store_state(
    run_context: &RunContext,
    assignment: &Assignment,
    files: &Arc<ProjectFiles>,
    before: Option<&StateBefore>,
) -> Result<bool, String> {
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
            return Ok(false);
        }
        Ok(SealedState::Sealed(blob)) => blob,
        Err(problem) => {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(problem);
        }
    };
    match upload(run_context, assignment.run_id, "state", &path, &blob).await {
        Ok(()) => {
            let _ = tokio::fs::remove_file(&path).await;
            Ok(true)
        }
        Err(error) => {
            // Never lose state: keep the sealed file where an operator can find it.
            let kept = run_context.config.work_dir.join("unsaved-state").join(&name);
            let moved = async {
                tokio::fs::create_dir_all(kept.parent().unwrap_or(&run_context.config.work_dir))
                    .await?;
                tokio::fs::rename(&path, &kept).await
            }
            .await;
            let location = match moved {
                Ok(()) => kept.display().to_string(),
                Err(_) => path.display().to_string(),
            };
            Err(format!(
                "the new state could not be stored ({error}); it is kept, encrypted, at {location} on {}",
                run_context.config.hostname
            ))
        }
    }
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

/// Seals a tracked run's sensitive output values and uploads them, for the runs of the
/// stacks that depend on its stack; only launchers of this pool can open them.
pub(crate) async fn store_sensitive_outputs(
    run_context: &RunContext,
    assignment: &Assignment,
    outputs: &[SensitiveOutput],
) -> Result<(), String> {
    let values: serde_json::Map<String, serde_json::Value> =
        outputs.iter().map(|output| (output.name.clone(), output.value.clone())).collect();
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&values).map_err(|e| format!("cannot encode the outputs: {e}"))?,
    );
    let scratch = Scratch::new(run_context, &format!("{}.outputs.gantry", assignment.run_id));
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = context(run_context, assignment, assignment.run_id, Purpose::Outputs);
    let path = scratch.0.clone();
    let blob = tokio::task::spawn_blocking(move || {
        seal_into(&path, &key, &envelope, |output| {
            output.write_all(&plaintext).map_err(|e| format!("cannot encrypt the outputs: {e}"))
        })
    })
    .await
    .map_err(|e| format!("sealing the outputs crashed: {e}"))??;
    upload(run_context, assignment.run_id, "sensitive-outputs", &scratch.0, &blob)
        .await
        .map_err(|e| format!("cannot upload the sealed outputs: {e}"))
}

/// The environment variables of the run's sealed inputs: each upstream run's sensitive
/// outputs downloaded once, checked, opened with the pool key.
pub(crate) async fn open_sealed_inputs(
    run_context: &RunContext,
    assignment: &Assignment,
) -> Result<Vec<(String, String)>, String> {
    let mut variables = Vec::new();
    let mut opened: std::collections::HashMap<RunId, serde_json::Map<String, serde_json::Value>> =
        std::collections::HashMap::new();
    for input in &assignment.sealed_inputs {
        let values = match opened.entry(input.upstream_run_id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(open_upstream_outputs(run_context, assignment, input).await?)
            }
        };
        let value = values.get(&input.output);
        let Some(value) = value else {
            return Err(format!(
                "missing input {}: run {} of stack {} sealed no output {:?}",
                input.variable, input.upstream_run_id, input.upstream_stack, input.output
            ));
        };
        variables.push((input.variable.clone(), gantry_proto::agent::environment_value(value)));
    }
    Ok(variables)
}

async fn open_upstream_outputs(
    run_context: &RunContext,
    assignment: &Assignment,
    input: &SealedInput,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let what = format!("sensitive outputs of stack {}", input.upstream_stack);
    let scratch = Scratch::new(
        run_context,
        &format!("{}.inputs.{}.gantry", assignment.run_id, input.upstream_run_id),
    );
    download(
        run_context,
        assignment.run_id,
        &format!("inputs/{}", input.upstream_run_id),
        &scratch.0,
        &input.blob,
    )
    .await
    .map_err(|e| format!("cannot download the {what}: {e}"))?
    .ok_or_else(|| format!("the {what} are gone from the server: run that stack again"))?;
    let key = std::sync::Arc::clone(&run_context.config.key);
    let envelope = EnvelopeContext {
        pool_id: run_context.config.pool_id.to_string(),
        stack_id: input.upstream_stack_id.to_string(),
        run_id: input.upstream_run_id.to_string(),
        purpose: Purpose::Outputs,
    };
    let path = scratch.0.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file =
            std::fs::File::open(&path).map_err(|e| format!("cannot read the {what}: {e}"))?;
        let mut reader = OpeningReader::new(&key, &envelope, std::io::BufReader::new(file))
            .map_err(|e| explain(&what, &e))?;
        let mut plaintext = zeroize::Zeroizing::new(Vec::new());
        reader.read_to_end(&mut plaintext).map_err(|error| match envelope_error(&error) {
            Some(envelope) => explain(&what, envelope),
            None => format!("cannot read the {what}: {error}"),
        })?;
        serde_json::from_slice(&plaintext).map_err(|_| format!("the {what} are not a JSON object"))
    })
    .await
    .map_err(|e| format!("opening the sealed outputs crashed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_the_pool_did_not_seal_is_explained_as_a_substitution() {
        let message = explain("state", &EnvelopeError::Forged);
        assert_eq!(
            message,
            "the stored state is not signed by this pool's key: no launcher of this pool sealed it, so the server or its storage substituted it, and it is refused"
        );
    }
}
