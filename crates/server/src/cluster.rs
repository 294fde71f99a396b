//! The channel between server processes sharing one store: wake-ups made in one process
//! (a launcher's assignment, a run's change, a pool's sessions ending) are published
//! through the store and replayed in the others, so a launcher long-polling one replica
//! hears at once about a run another replica assigned.
//!
//! Messages are batched: whatever queued while the last batch was being sent goes out as
//! one message, so a busy replica sends few, large messages rather than one per change.
//! When the channel loses messages (the database connection dropped), every local
//! long-poll is woken and a scheduling pass requested: launchers ask again for what they
//! may have missed.

use std::collections::HashSet;

use futures_util::StreamExt;
use gantry_domain::{LauncherId, PoolId, RunId};
use gantry_store::{Signal, SignalStream, StoreError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::events::ClusterSignal;
use crate::state::AppState;

/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_MESSAGE: usize = 7000;

/// Joins this process to the cluster when the store is shared; returns the tasks that
/// carry signals, which end at shutdown.
pub(crate) async fn join(state: &AppState) -> Result<Vec<JoinHandle<()>>, StoreError> {
    if !state.store.shared() {
        return Ok(Vec::new());
    }
    let Some(incoming) = state.store.signals().await? else { return Ok(Vec::new()) };
    let origin = format!("{:016x}", rand_origin());
    let (outgoing, outbox) = mpsc::unbounded_channel();
    state.events.connect_cluster(outgoing);
    tracing::info!(process = %origin, "sharing wake-ups with the other server processes");
    Ok(vec![
        tokio::spawn(publish(state.clone(), origin.clone(), outbox)),
        tokio::spawn(replay(state.clone(), origin, incoming)),
    ])
}

/// A random id for this process, to recognize its own messages coming back.
fn rand_origin() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

async fn publish(
    state: AppState,
    origin: String,
    mut outbox: mpsc::UnboundedReceiver<ClusterSignal>,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            signal = outbox.recv() => signal,
            () = state.shutdown.cancelled() => None,
        };
        let Some(first) = first else { return };
        batch.push(first);
        while let Ok(signal) = outbox.try_recv() {
            batch.push(signal);
        }
        for message in encode(&origin, &batch) {
            if let Err(error) = state.store.publish_signal(&message).await {
                // The others' launchers still poll again within the poll timeout.
                tracing::warn!(%error, "could not tell the other server processes about changes");
            }
        }
        batch.clear();
    }
}

async fn replay(state: AppState, origin: String, mut incoming: SignalStream) {
    loop {
        let signal = tokio::select! {
            signal = incoming.next() => signal,
            () = state.shutdown.cancelled() => return,
        };
        match signal {
            None => return,
            Some(Signal::Gap) => {
                state.events.wake_all_launchers_here();
                state.events.request_scheduling();
            }
            Some(Signal::Message(message)) => {
                let Some(signals) = decode(&origin, &message) else { continue };
                for signal in signals {
                    apply(&state, signal);
                }
            }
        }
    }
}

fn apply(state: &AppState, signal: ClusterSignal) {
    match signal {
        ClusterSignal::Launcher(launcher_id) => state.events.wake_launcher_here(launcher_id),
        ClusterSignal::Run(run_id) => state.events.run_changed_here(run_id),
        ClusterSignal::PoolSessions(pool_id) => state.sessions.forget_pool(pool_id),
        ClusterSignal::Session(token_hash) => state.sessions.forget(&token_hash),
        ClusterSignal::PoolWorkers(pool_id) => state.events.pool_workers_changed_here(pool_id),
    }
}

/// Messages of at most `MAX_MESSAGE` bytes: the origin on the first line, then one
/// signal per line, each once.
fn encode(origin: &str, signals: &[ClusterSignal]) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut messages = Vec::new();
    let mut message = String::new();
    for signal in signals {
        if !seen.insert(signal) {
            continue;
        }
        let line = match signal {
            ClusterSignal::Launcher(id) => format!("L {id}"),
            ClusterSignal::Run(id) => format!("R {id}"),
            ClusterSignal::PoolSessions(id) => format!("P {id}"),
            ClusterSignal::Session(hash) => format!("S {hash}"),
            ClusterSignal::PoolWorkers(id) => format!("W {id}"),
        };
        if !message.is_empty() && message.len() + line.len() + 1 > MAX_MESSAGE {
            messages.push(std::mem::take(&mut message));
        }
        if message.is_empty() {
            message.push_str(origin);
        }
        message.push('\n');
        message.push_str(&line);
    }
    if !message.is_empty() {
        messages.push(message);
    }
    messages
}

/// The signals of another process's message; `None` for this process's own. Lines that
/// do not parse (a newer version's signals) are skipped.
fn decode(origin: &str, message: &str) -> Option<Vec<ClusterSignal>> {
    let mut lines = message.lines();
    if lines.next()? == origin {
        return None;
    }
    let signals = lines
        .filter_map(|line| {
            let (kind, value) = line.split_once(' ')?;
            match kind {
                "L" => value.parse::<LauncherId>().ok().map(ClusterSignal::Launcher),
                "R" => value.parse::<RunId>().ok().map(ClusterSignal::Run),
                "P" => value.parse::<PoolId>().ok().map(ClusterSignal::PoolSessions),
                "S" => Some(ClusterSignal::Session(value.to_owned())),
                "W" => value.parse::<PoolId>().ok().map(ClusterSignal::PoolWorkers),
                _ => None,
            }
        })
        .collect();
    Some(signals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_without_duplicates_and_skip_their_origin() {
        let launcher = LauncherId::generate();
        let run = RunId::generate();
        let pool = PoolId::generate();
        let signals = vec![
            ClusterSignal::Launcher(launcher),
            ClusterSignal::Run(run),
            ClusterSignal::Run(run),
            ClusterSignal::PoolSessions(pool),
            ClusterSignal::Session("ab12".to_owned()),
            ClusterSignal::PoolWorkers(pool),
        ];
        let messages = encode("me", &signals);
        assert_eq!(messages.len(), 1);
        assert_eq!(decode("me", &messages[0]), None, "a process ignores its own messages");
        let decoded = decode("other", &messages[0]).unwrap();
        assert_eq!(
            decoded,
            vec![
                ClusterSignal::Launcher(launcher),
                ClusterSignal::Run(run),
                ClusterSignal::PoolSessions(pool),
                ClusterSignal::Session("ab12".to_owned()),
                ClusterSignal::PoolWorkers(pool),
            ]
        );
    }

    #[test]
    fn large_batches_are_split_under_the_payload_limit() {
        let signals: Vec<ClusterSignal> =
            (0..1000).map(|_| ClusterSignal::Run(RunId::generate())).collect();
        let messages = encode("origin", &signals);
        assert!(messages.len() > 1);
        assert!(messages.iter().all(|message| message.len() <= MAX_MESSAGE));
        let total: usize = messages.iter().map(|m| decode("x", m).unwrap().len()).sum();
        assert_eq!(total, 1000);
    }

    #[test]
    fn unknown_lines_are_skipped() {
        let run = RunId::generate();
        let decoded = decode("x", &format!("other\nZ something\nR {run}\nR not-an-id")).unwrap();
        assert_eq!(decoded, vec![ClusterSignal::Run(run)]);
    }
}
