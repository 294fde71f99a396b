//! `gantry-launcher init`: the run Pod's init container. It prepares the run exactly as
//! the launcher does before it starts a worker (initialization policy, checkout or the
//! planned workspace decrypted, managed state, sealed inputs), puts the verified worker
//! binary into the binaries volume, opens the workspace to the worker container's user,
//! and leaves the hand-off for the sidecar. Its lines go to the run log; a failure is
//! reported to the server with the reason in the log, and init exits non-zero.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use gantry_proto::agent::Assignment;
use gantry_proto::pod::{HANDOFF_VERSION, PodHandoff, WORKER_BINARY_FILE};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::InitConfig;
use super::context::{PodError, connect, run_context, unix_ms, write_handoff};
use crate::client::AgentClient;
use crate::config::LauncherConfig;
use crate::logs::LogRelay;
use crate::run::prepare::{self, Prepared};
use crate::run::{self, RunContext};

/// Prepares the run into the Pod's volumes. `stop` (SIGTERM: the Pod is being deleted)
/// ends the preparation, and the run fails saying so.
pub async fn init(
    config: LauncherConfig,
    mut init: InitConfig,
    stop: CancellationToken,
) -> Result<(), PodError> {
    crate::stack_secrets::open_in_place(&config, &mut init.pod.assignment);
    let run_timeout = config.limits.run_timeout;
    // The run's time limit counts from here, the closest the Pod comes to the operator's
    // acknowledgement; the sidecar goes on with the same deadline.
    let deadline = Instant::now() + run_timeout;
    let deadline_unix_ms = unix_ms(SystemTime::now() + run_timeout);
    let context = run_context(
        init.pod.adopt(config),
        &init.pod,
        &init.binaries_dir,
        Some(init.runner.clone()),
    )?;
    connect(&context.client, &stop, deadline).await?;
    let assignment = &init.pod.assignment;
    tracing::info!(run = %assignment.run_id, job = ?assignment.job, "preparing the run");
    let first_seq = log_position(&context.client, assignment).await;
    let (logs, upload) = run::start_log(&context, assignment, first_seq);
    let workspace = context.workspace(assignment.run_id);
    let prepared = match prepare::prepare_run(
        &context, assignment, &workspace, &logs, &stop, deadline,
    )
    .await
    {
        Some(prepared) => prepared,
        None => {
            logs.finish(upload).await;
            // A workspace volume may outlive the Pod: no sidecar comes to clean up.
            crate::workspace::remove(&workspace).await;
            return Err(PodError::RunFailed("it did not start; its log says why".to_owned()));
        }
    };
    let handed_over =
        hand_over(&context, &init, &workspace, &prepared, &logs, deadline_unix_ms).await;
    if let Err(message) = &handed_over {
        logs.append(&format!("\n{message}\n"));
        run::report_failure(&context, &logs, assignment.run_id, message.clone()).await;
    }
    logs.finish(upload).await;
    if handed_over.is_err() {
        crate::workspace::remove(&workspace).await;
    }
    handed_over.map_err(PodError::RunFailed)
}

/// Where init's lines go in the run log. The operator may have written there after its
/// poll (why the Pod was pending), so the assignment's position can be behind the
/// server's: chunks below the server's position would be taken for ones it has.
async fn log_position(client: &AgentClient, assignment: &Assignment) -> u64 {
    match client.upload_logs(assignment.run_id, Vec::new()).await {
        Ok(next_seq) => next_seq.max(assignment.log_next_seq),
        Err(error) => {
            tracing::warn!(run = %assignment.run_id, %error, "cannot learn where the run log ends; going on from the assignment's position");
            assignment.log_next_seq
        }
    }
}

/// Everything the worker and the sidecar need from init, after the preparation.
async fn hand_over(
    context: &Arc<RunContext>,
    init: &InitConfig,
    workspace: &Path,
    prepared: &Prepared,
    logs: &LogRelay,
    deadline_unix_ms: u64,
) -> Result<(), String> {
    let assignment: &Assignment = &init.pod.assignment;
    place_worker_binary(context, &init.binaries_dir).await?;
    // The worker container runs as the runner image's user, which init cannot know.
    let tree = workspace.to_path_buf();
    tokio::task::spawn_blocking(move || crate::workspace::hand_over_tree(&tree, None))
        .await
        .map_err(|e| format!("opening the workspace crashed: {e}"))?
        .map_err(|e| format!("cannot open the workspace to the worker container: {e}"))?;
    // The sidecar goes on with the log where init's last line ended.
    logs.flush().await;
    let before = prepared.managed_state.as_ref().and_then(|managed| managed.before.as_ref());
    let handoff = PodHandoff {
        version: HANDOFF_VERSION,
        run_id: assignment.run_id,
        job: prepared.job.clone(),
        log_next_seq: logs.next_seq(),
        deadline_unix_ms,
        managed_state: prepared.managed_state.is_some(),
        state_before: before.map(|before| before.sha256.clone()),
        state_lineage: before.map(|before| before.identity.lineage.clone()),
        state_serial: before.map(|before| before.identity.serial),
    };
    write_handoff(&init.pod.scratch_dir, &handoff).await
}

/// The verified worker binary, as `gantry-worker` in the binaries volume: copied under a
/// temporary name and renamed, so that a worker never starts a half-written binary.
async fn place_worker_binary(context: &RunContext, binaries_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let source = context.worker_binaries.current(&context.client).await?;
    let target = binaries_dir.join(WORKER_BINARY_FILE);
    let partial = binaries_dir.join(format!(".{WORKER_BINARY_FILE}.partial"));
    let placed = async {
        tokio::fs::copy(&source, &partial).await?;
        tokio::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).await?;
        tokio::fs::rename(&partial, &target).await
    };
    placed.await.map_err(|e| format!("Cannot put the worker binary at {}: {e}", target.display()))
}
