//! Each pool agent's two loops: the long-poll that turns assignments into run Pods and
//! stop requests into Pod deletions, and the heartbeat that keeps the workers and held
//! runs alive on the server. Both end when the agent is replaced or its pool goes away.

use std::sync::Arc;
use std::time::Duration;

use gantry_proto::agent::Heartbeat;

use crate::agent::{POLL_WAIT, PoolAgent};
use crate::reconcile::{Context, start_run, stop_run};

pub(crate) fn spawn(ctx: Arc<Context>, agent: Arc<PoolAgent>) {
    tokio::spawn(poll(Arc::clone(&ctx), Arc::clone(&agent)));
    tokio::spawn(heartbeat(ctx, agent));
}

async fn poll(ctx: Arc<Context>, agent: Arc<PoolAgent>) {
    let mut failures = 0u32;
    while !agent.stop.is_cancelled() {
        let holding = agent.holding().await;
        let answer = tokio::select! {
            answer = agent.client.poll(POLL_WAIT, holding) => answer,
            () = agent.stop.cancelled() => return,
        };
        match answer {
            Ok(answer) => {
                failures = 0;
                for run_id in answer.stop_run_ids {
                    if let Err(error) = stop_run(&ctx, &agent, run_id).await {
                        tracing::warn!(run = %run_id, %error, "cannot delete the run pod");
                    }
                }
                for assignment in answer.assignments {
                    let run_id = assignment.run_id;
                    if let Err(error) = start_run(&ctx, &agent, assignment).await {
                        tracing::warn!(run = %run_id, %error, "cannot start the run; the server hands it again when the lease lapses");
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_millis(500 * u64::from(failures.min(20)));
                tracing::warn!(%error, ?delay, "poll failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = agent.stop.cancelled() => return,
                }
            }
        }
    }
}

async fn heartbeat(ctx: Arc<Context>, agent: Arc<PoolAgent>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(agent.client.heartbeat_interval()) => {}
            () = agent.stop.cancelled() => return,
        }
        if pool_deleted(&ctx, &agent).await {
            // Its Worker resources and run Pods go with it (owner references); the
            // server forgets its workers now rather than when their heartbeats lapse.
            tracing::info!(launcher = %agent.launcher_id, "the WorkerPool was deleted: leaving the server");
            agent.stop.cancel();
            if let Err(error) = agent.client.close().await {
                tracing::warn!(%error, "cannot close the pool's session");
            }
            return;
        }
        let beat = {
            let state = agent.state.lock().await;
            Heartbeat {
                worker_ids: state.workers.keys().copied().collect(),
                running_run_ids: state.runs.keys().copied().collect(),
            }
        };
        match agent.client.heartbeat(&beat).await {
            Ok(answer) => {
                if !answer.unknown_worker_ids.is_empty() {
                    // The server lost them (a long outage): the next reconciliation
                    // registers replacements.
                    let mut state = agent.state.lock().await;
                    for id in &answer.unknown_worker_ids {
                        state.workers.remove(id);
                    }
                    tracing::warn!(
                        workers = answer.unknown_worker_ids.len(),
                        "the server forgot workers of this pool"
                    );
                }
                for run_id in answer.stop_run_ids {
                    if let Err(error) = stop_run(&ctx, &agent, run_id).await {
                        tracing::warn!(run = %run_id, %error, "cannot delete the run pod");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "heartbeat failed"),
        }
    }
}

async fn pool_deleted(ctx: &Context, agent: &PoolAgent) -> bool {
    use kube::ResourceExt;
    let pool = agent.pool.borrow().clone();
    let api: kube::Api<crate::crd::WorkerPool> =
        kube::Api::namespaced(ctx.kube.clone(), &pool.namespace().unwrap_or_default());
    match api.get_opt(&pool.name_any()).await {
        Ok(Some(current)) => current.metadata.uid != pool.metadata.uid,
        Ok(None) => true,
        Err(_) => false,
    }
}
