//! The schedules' contract: schedules listed per stack, due ones found, each firing taken
//! once by compare-and-set, at most one run per firing, and drifted stacks.

use std::sync::Arc;

use gantry_domain::{RunId, RunState, ScheduleKind, StackId};

use super::{at, run_record, stack_record, world};
use crate::{DriftRecord, ScheduleRecord, Store, StoreError};

fn schedule(id: &str, stack_id: StackId, next_fire_at: i64) -> ScheduleRecord {
    ScheduleRecord {
        id: id.to_owned(),
        stack_id,
        kind: ScheduleKind::Task,
        cron: "0 3 * * *".to_owned(),
        time_zone: "Europe/Berlin".to_owned(),
        command: Some("terraform output".to_owned()),
        reconcile: false,
        next_fire_at: at(next_fire_at),
        last_fired_at: None,
        last_outcome: None,
        created_by: "admin".to_owned(),
        created_at: at(1),
    }
}

pub async fn schedules_are_listed_per_stack_and_found_when_due<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let nightly = schedule("01JD0000000000000000000001", stack.id, 5_000);
    let hourly = ScheduleRecord {
        kind: ScheduleKind::Drift,
        command: None,
        reconcile: true,
        ..schedule("01JD0000000000000000000002", other.id, 2_000)
    };
    store.insert_schedule(&nightly).await.unwrap();
    store.insert_schedule(&hourly).await.unwrap();
    let twice = store.insert_schedule(&nightly).await.unwrap_err();
    assert!(matches!(twice, StoreError::AlreadyExists { kind: "schedule", .. }), "{twice}");

    assert_eq!(store.list_schedules(None).await.unwrap(), vec![nightly.clone(), hourly.clone()]);
    assert_eq!(store.list_schedules(Some(stack.id)).await.unwrap(), vec![nightly.clone()]);
    assert_eq!(store.due_schedules(at(1_999), 10).await.unwrap(), vec![]);
    assert_eq!(
        store.due_schedules(at(9_000), 10).await.unwrap(),
        vec![hourly.clone(), nightly.clone()],
        "the longest due first"
    );
    assert_eq!(store.due_schedules(at(9_000), 1).await.unwrap(), vec![hourly.clone()]);

    assert!(store.delete_schedule(&hourly.id).await.unwrap());
    assert!(!store.delete_schedule(&hourly.id).await.unwrap());
    assert_eq!(store.list_schedules(None).await.unwrap(), vec![nightly]);
}

pub async fn a_firing_is_taken_once<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let nightly = schedule("01JD0000000000000000000001", stack.id, 5_000);
    store.insert_schedule(&nightly).await.unwrap();

    let (first, second) = tokio::join!(
        store.advance_schedule(&nightly.id, at(5_000), at(9_000), "tracked run A"),
        store.advance_schedule(&nightly.id, at(5_000), at(9_000), "tracked run B"),
    );
    assert!(first.unwrap() ^ second.unwrap(), "exactly one takes the firing");
    let [moved] = store.list_schedules(None).await.unwrap().try_into().unwrap();
    assert_eq!(moved.next_fire_at, at(9_000));
    assert_eq!(moved.last_fired_at, Some(at(5_000)));
    assert!(
        moved.last_outcome.as_deref().is_some_and(|outcome| outcome.starts_with("tracked run"))
    );
    // A process that read the schedule before it moved on cannot take that firing again.
    assert!(!store.advance_schedule(&nightly.id, at(5_000), at(9_000), "late").await.unwrap());
    assert!(
        !store.advance_schedule("01JD0000000000000000000009", at(1), at(2), "gone").await.unwrap()
    );
    assert_eq!(store.due_schedules(at(8_999), 10).await.unwrap(), vec![]);
}

pub async fn a_firing_triggers_one_run_per_stack<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let fired = |created| {
        let mut run = run_record(&stack, RunState::Queued, created);
        run.triggered_by = "schedule:01JD0000000000000000000001 at 2026-12-03T03:00:00Z".to_owned();
        run
    };
    store.insert_run(&fired(1)).await.unwrap();
    let again = store.insert_run(&fired(2)).await.unwrap_err();
    assert!(matches!(&again, StoreError::AlreadyExists { kind: "run", .. }), "{again}");
    let mut next = fired(3);
    next.triggered_by = "schedule:01JD0000000000000000000001 at 2026-12-04T03:00:00Z".to_owned();
    store.insert_run(&next).await.unwrap();
}

pub async fn a_stack_stays_drifted_since_it_was_first_found_until_cleared<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let found = |stack_id, run, detected| DriftRecord {
        stack_id,
        run_id: RunId::from_u128(run),
        detected_at: at(detected),
    };
    store.mark_drifted(&found(stack.id, 1, 100)).await.unwrap();
    store.mark_drifted(&found(other.id, 2, 50)).await.unwrap();
    store.mark_drifted(&found(stack.id, 3, 900)).await.unwrap();
    assert_eq!(
        store.drifted_stacks().await.unwrap(),
        vec![found(other.id, 2, 50), found(stack.id, 3, 100)],
        "the longest drifted first; since the first check, named after the latest"
    );
    assert!(store.clear_drift(other.id).await.unwrap());
    assert!(!store.clear_drift(other.id).await.unwrap());
    assert_eq!(store.drifted_stacks().await.unwrap(), vec![found(stack.id, 3, 100)]);
}
