//! The outbox's contract: effects recorded with the change that needs them, claimed by
//! one caller at a time, postponed after a failure, gone once carried out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::{RunId, RunState};

use super::{at, blob, run_record, stack_record, world};
use crate::{Effect, RunChange, Store, StoreError};

const LEASE: Duration = Duration::from_secs(60);

fn keys(pending: &[crate::PendingEffectRecord]) -> Vec<String> {
    let mut keys: Vec<String> = pending.iter().map(|pending| pending.effect.key()).collect();
    keys.sort();
    keys
}

pub async fn a_run_change_records_its_effects_and_releases_its_blobs_or_neither<S: Store>(
    store: Arc<S>,
) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Applying, 5);
    store.insert_run(&run).await.unwrap();
    store.put_run_blob(run.id, "workspace", &blob("runs/r/workspace", "ab", 6)).await.unwrap();
    store.put_run_blob(run.id, "plan", &blob("runs/r/plan", "cd", 6)).await.unwrap();
    let ending = |from| {
        let mut change = RunChange::new(run.id, from, RunState::Failed, at(10));
        change.effects = vec![Effect::RunEnded { run_id: run.id }];
        change.release_blobs = vec!["workspace".to_owned()];
        change
    };

    // A change that does not apply records nothing and releases nothing.
    let refused = store.change_run(&ending(RunState::Planning)).await.unwrap_err();
    assert!(matches!(refused, StoreError::StateConflict { .. }), "{refused}");
    assert_eq!(store.pending_effects().await.unwrap(), vec![]);
    assert!(store.run_blob(run.id, "workspace").await.unwrap().is_some());

    store.change_run(&ending(RunState::Applying)).await.unwrap();
    let pending = store.pending_effects().await.unwrap();
    let expected = vec![
        Effect::DeleteBlob { key: "runs/r/workspace".to_owned() }.key(),
        Effect::RunEnded { run_id: run.id }.key(),
    ];
    assert_eq!(keys(&pending), expected);
    assert!(pending.iter().all(|p| p.created_at == at(10) && p.attempts == 0), "{pending:?}");
    assert_eq!(store.run_blob(run.id, "workspace").await.unwrap(), None, "no row names it");
    assert!(store.run_blob(run.id, "plan").await.unwrap().is_some(), "only what was released");

    // Recorded again while pending: still one of each.
    store.add_effects(&[Effect::RunEnded { run_id: run.id }], at(11)).await.unwrap();
    assert_eq!(keys(&store.pending_effects().await.unwrap()), expected);
}

pub async fn effects_are_claimed_for_a_lease_postponed_and_completed<S: Store>(store: Arc<S>) {
    let first = Effect::DeleteBlob { key: "a".to_owned() };
    let second = Effect::RunEnded { run_id: RunId::generate() };
    store.add_effects(std::slice::from_ref(&first), at(100)).await.unwrap();
    store.add_effects(std::slice::from_ref(&second), at(200)).await.unwrap();
    assert_eq!(store.claim_effects(at(50), LEASE, 10).await.unwrap(), vec![], "not due yet");

    let claimed = store.claim_effects(at(1_000), LEASE, 1).await.unwrap();
    assert_eq!(claimed.len(), 1, "at most the limit");
    assert_eq!(
        (claimed[0].effect.clone(), claimed[0].attempts),
        (first.clone(), 1),
        "oldest first"
    );
    let claimed = store.claim_effects(at(1_000), LEASE, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.effect.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&second)
    );
    assert_eq!(store.claim_effects(at(2_000), LEASE, 10).await.unwrap(), vec![], "both held");

    // A holder that never reports back loses its claim when the lease runs out.
    let lease_end = 1_000 + LEASE.as_millis() as i64;
    let again = store.claim_effects(at(lease_end), LEASE, 10).await.unwrap();
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|pending| pending.attempts == 2), "{again:?}");

    // A failed try is due again when postponed to, with its error.
    store.postpone_effect(&first, at(90_000), "the blob store is down").await.unwrap();
    assert_eq!(store.claim_effects(at(89_999), LEASE, 10).await.unwrap(), vec![]);
    let retried = store.claim_effects(at(90_000), LEASE, 10).await.unwrap();
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].effect, first);
    assert_eq!(retried[0].last_error.as_deref(), Some("the blob store is down"));
    assert_eq!(retried[0].attempts, 3);

    store.complete_effect(&first).await.unwrap();
    store.complete_effect(&second).await.unwrap();
    assert_eq!(store.pending_effects().await.unwrap(), vec![]);
    store.complete_effect(&second).await.unwrap();
}

pub async fn concurrent_claims_take_each_effect_once<S: Store>(store: Arc<S>) {
    let effects: Vec<Effect> =
        (0..60).map(|i| Effect::DeleteBlob { key: format!("blobs/{i:02}") }).collect();
    store.add_effects(&effects, at(1)).await.unwrap();
    let claimants: Vec<_> = (0..6)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = store.claim_effects(at(5), LEASE, 4).await.unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    mine.extend(claimed.into_iter().map(|pending| pending.effect.key()));
                }
            })
        })
        .collect();
    let mut times_claimed: HashMap<String, usize> = HashMap::new();
    for claimant in claimants {
        for key in claimant.await.unwrap() {
            *times_claimed.entry(key).or_default() += 1;
        }
    }
    assert_eq!(times_claimed.len(), effects.len(), "every effect was claimed");
    assert!(times_claimed.values().all(|&n| n == 1), "{times_claimed:?}");
}

pub async fn a_prune_records_the_deletion_of_the_blobs_it_unnames<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    for i in 1..=3 {
        let run = run_record(&stack, RunState::Applying, i);
        store.add_state_version(stack.id, run.id, &blob(&format!("s/{i}"), "0a", i)).await.unwrap();
    }
    let unnamed = store.prune_state_versions(stack.id, 1).await.unwrap();
    assert_eq!(unnamed, ["s/1", "s/2"]);
    let pending = store.pending_effects().await.unwrap();
    let expected: Vec<String> =
        unnamed.iter().map(|key| Effect::DeleteBlob { key: key.clone() }.key()).collect();
    assert_eq!(keys(&pending), expected);
}

pub async fn an_upstream_run_triggers_one_run_per_downstream_stack<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let triggered = |stack, created| {
        let mut run = run_record(stack, RunState::Queued, created);
        run.triggered_by = "dependency:01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned();
        run
    };
    store.insert_run(&triggered(&stack, 1)).await.unwrap();
    let again = store.insert_run(&triggered(&stack, 2)).await.unwrap_err();
    assert!(
        matches!(&again, StoreError::AlreadyExists { kind: "run", name } if name.starts_with("dependency:")),
        "{again}"
    );
    store.insert_run(&triggered(&other, 3)).await.unwrap();
    // Runs triggered otherwise are not limited.
    store.insert_run(&run_record(&stack, RunState::Queued, 4)).await.unwrap();
    store.insert_run(&run_record(&stack, RunState::Queued, 5)).await.unwrap();
    let runs = store.list_runs(&crate::RunFilter { stack_id: Some(stack.id), limit: 10 }).await;
    assert_eq!(runs.unwrap().len(), 3);
}
