//! Run state that crosses the control plane, encrypted to the pool key: the packed
//! workspace of a plan waiting for confirmation (so that any worker of the pool can
//! apply it), the stack's managed Terraform state (which versions may be stored is
//! `state`'s business), and the sensitive outputs a stack shares with the stacks that
//! depend on it. The server only ever holds ciphertext; everything is sealed here, on the
//! pool's machine, before upload, and signed with the pool key, so that what comes back
//! is known to come from the pool.

use std::io::Write;
use std::path::{Path, PathBuf};

use gantry_crypto::{
    EnvelopeContext, EnvelopeError, OpeningReader, PoolPrivateKey, Purpose, SealingWriter,
};
use gantry_domain::RunId;
use gantry_proto::agent::{Assignment, BlobRef, SealedInput, StateStored};
use gantry_proto::local::SensitiveOutput;

use super::RunContext;
use crate::archive::{self, ArchiveError};
use crate::client::{ClientError, Downloaded};
use crate::delivery::{Delivery, until_acknowledged};

pub(super) fn context(
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
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new(run_context: &RunContext, name: &str) -> Self {
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
pub(super) struct Hashing<W> {
    pub(super) inner: W,
    pub(super) digest: aws_lc_rs::digest::Context,
    pub(super) size: u64,
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
pub(super) fn seal_into(
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

/// Creates a scratch file anew, private to the launcher's user: whatever is in its place
/// is replaced, and nothing is written through a link.
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

/// Opens a scratch file to read it back, refusing a link in its place: scratch space is
/// the launcher's own (in a Pod, a volume the worker container does not mount), and this
/// holds even if it were not.
pub(super) fn open_scratch(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(path)
}

/// Uploads a sealed file, kept until the server acknowledges it (see `delivery`): an
/// outage delays a run's new state, it never loses it. The error is the server's
/// refusal, or the last failure when the launcher left before the server took it.
pub(super) async fn upload(
    run_context: &RunContext,
    run_id: RunId,
    what: &str,
    file: &Path,
    blob: &BlobRef,
) -> Result<(), ClientError> {
    let client = &run_context.client;
    let delivery = until_acknowledged(
        run_id,
        what,
        &client.deliveries_abandoned(),
        || client.upload_blob(run_id, what, file, &blob.sha256),
        tokio::time::sleep,
    )
    .await;
    match delivery {
        Delivery::Acknowledged(_) => Ok(()),
        Delivery::Refused(error) | Delivery::Abandoned(error) => Err(error),
    }
}

/// Uploads a sealed state as `upload` does, with the lock generation of the run's
/// assignment: the answer says whether it became the stack's current version or was
/// kept as an orphaned one.
pub(super) async fn upload_state(
    run_context: &RunContext,
    assignment: &Assignment,
    file: &Path,
    blob: &BlobRef,
) -> Result<StateStored, ClientError> {
    let (client, run_id) = (&run_context.client, assignment.run_id);
    let delivery = until_acknowledged(
        run_id,
        "state",
        &client.deliveries_abandoned(),
        || client.upload_state(run_id, file, &blob.sha256, assignment.lock_generation),
        tokio::time::sleep,
    )
    .await;
    match delivery {
        Delivery::Acknowledged(stored) => Ok(stored),
        Delivery::Refused(error) | Delivery::Abandoned(error) => Err(error),
    }
}

/// Downloads a blob into `file`, trying again while the server is unreachable or
/// unavailable; what waits for it (a run being prepared) bounds the wait.
pub(super) async fn download(
    run_context: &RunContext,
    run_id: RunId,
    what: &str,
    file: &Path,
    expected: &BlobRef,
) -> Result<Option<Downloaded>, ClientError> {
    let client = &run_context.client;
    let delivery = until_acknowledged(
        run_id,
        what,
        &client.deliveries_abandoned(),
        || client.download_blob(run_id, what, file, Some(&expected.sha256)),
        tokio::time::sleep,
    )
    .await;
    match delivery {
        Delivery::Acknowledged(downloaded) => Ok(downloaded),
        Delivery::Refused(error) | Delivery::Abandoned(error) => Err(error),
    }
}

/// Says what an envelope failure means for this run, in the words users need.
pub(super) fn explain(what: &str, error: &EnvelopeError) -> String {
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
pub(super) fn envelope_error(error: &std::io::Error) -> Option<&EnvelopeError> {
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
        let file = open_scratch(&path)
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
        let file = open_scratch(&path).map_err(|e| format!("cannot read the {what}: {e}"))?;
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
