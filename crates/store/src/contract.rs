//! The contract every `Store` adapter passes: one suite, run against each engine by
//! `store_contract_tests!`. Each case starts from an empty store.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_domain::access::{Role, Scope};
use gantry_domain::{
    EnvironmentVariable, LauncherId, PoolId, PoolKind, RunId, RunState, RunType, StackId,
    Timestamp, Tool, WorkerId,
};

use crate::LockFenceRecord;
use crate::StateFence;
use crate::UiSessionRecord;
use crate::{
    ApiKeyRecord, BlobRecord, BlobStore, DependencyRecord, OutputRecord, OutputReferenceRecord,
    PickupRecord, PoolRecord, RunChange, RunFilter, RunRecord, SessionRecord, StackRecord,
    StateRollbackRecord, StateVersionRecord, Store, StoreError, WorkerCountsRecord, WorkerRecord,
};

mod effects;
mod schedules;
mod webhooks;
pub use effects::*;
pub use schedules::*;
pub use webhooks::*;

/// Generates one `#[tokio::test]` per contract case. `$make` is an async expression
/// producing a fresh, empty store (and anything that must live as long as it).
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store_contract_tests!(@each required $make);
    };
    // For engines a test may not have (a server it did not start): `$make` yields `None`
    // when the engine is unavailable and the test may be skipped.
    (optional $make:expr) => {
        $crate::store_contract_tests!(@each optional $make);
    };
    (@each $mode:ident $make:expr) => {
        $crate::store_contract_tests!(@cases $mode $make;
            secrets_are_created_once,
            secrets_are_replaced_together_or_not_at_all,
            api_keys_are_found_by_hash_only,
            api_keys_are_listed_revoked_and_touched,
            ui_sessions_end_with_their_key_or_on_sign_out,
            audit_entries_chain_and_filter,
            concurrent_audit_appends_make_one_chain,
            pool_names_are_unique,
            sessions_expire,
            workers_keep_their_state_across_registrations,
            touching_reports_workers_the_launcher_does_not_own,
            only_workers_still_dead_and_free_are_deleted_as_dead,
            stacks_round_trip_with_their_environment,
            stack_environments_and_pools_are_updated_together,
            run_changes_are_compare_and_set,
            a_run_is_readable_before_its_insert_returns,
            releasing_a_worker_clears_both_sides,
            a_run_failed_under_its_worker_fences_its_stack_in_the_same_change,
            a_fence_is_lifted_early_only_by_the_launcher_that_held_its_run,
            assignment_is_all_or_nothing,
            a_pass_promotes_and_assigns_in_batches,
            a_pass_assigns_the_runs_it_promotes_in_one_commit,
            concurrent_assignments_give_a_worker_one_run,
            runs_are_listed_newest_first_and_active_oldest_first,
            log_uploads_are_ordered_and_idempotent,
            concurrent_log_retries_never_duplicate,
            outputs_are_replaced_as_a_whole,
            a_pool_reset_replaces_the_certificate_and_ends_sessions,
            run_blobs_are_recorded_per_purpose,
            state_versions_are_numbered_per_stack,
            state_versions_are_listed_newest_first,
            a_rollback_is_a_new_current_version_with_the_old_blob_and_run,
            a_rollback_to_a_missing_version_is_a_clear_error,
            pruning_keeps_the_newest_versions_and_every_blob_still_named,
            rollbacks_racing_prunes_never_leave_a_version_without_its_blob,
            lock_generations_rise_each_time_a_lock_taking_run_takes_the_lock,
            a_state_upload_is_current_only_while_its_run_holds_the_lock,
            orphaned_versions_are_adopted_as_new_versions_and_never_pruned,
            workers_and_pools_drain_and_undrain,
            workers_are_counted_and_idle_ones_listed_oldest_first,
            held_runs_come_with_what_their_pickup_needs,
            runs_are_prioritized_and_stop_requests_kept,
            dependencies_are_kept_with_their_references,
            overlapping_batches_never_give_a_run_or_worker_twice,
            periodic_work_is_claimed_once_per_interval,
            a_run_change_records_its_effects_and_releases_its_blobs_or_neither,
            effects_are_claimed_for_a_lease_postponed_and_completed,
            concurrent_claims_take_each_effect_once,
            a_prune_records_the_deletion_of_the_blobs_it_unnames,
            an_upstream_run_triggers_one_run_per_downstream_stack,
            signals_reach_every_listener,
            ended_runs_logs_are_offered_for_archiving,
            a_sealed_log_refuses_appends,
            a_seal_waits_for_the_appends_under_way,
            a_log_over_its_limit_keeps_its_head_and_tail,
            webhooks_are_one_per_provider_and_repository,
            a_delivery_keeps_its_first_record_and_old_ones_are_forgotten,
            a_delivery_triggers_one_run_per_stack,
            schedules_are_listed_per_stack_and_found_when_due,
            a_firing_is_taken_once,
            a_firing_triggers_one_run_per_stack,
            a_stack_stays_drifted_since_it_was_first_found_until_cleared
        );
    };
    (@cases required $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::contract::$case(std::sync::Arc::new(store)).await;
            }
        )*
    };
    (@cases optional $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _guard)) = $make.await else { return };
                $crate::contract::$case(std::sync::Arc::new(store)).await;
            }
        )*
    };
}

/// The per-run log limit of the cases that do not test it.
const NO_LIMIT: u64 = u64::MAX;

fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(millis)
}

fn pool_record(name: &str) -> PoolRecord {
    PoolRecord {
        id: PoolId::generate(),
        name: name.to_owned(),
        kind: PoolKind::Private,
        description: "a pool".to_owned(),
        labels: vec!["env:test".to_owned()],
        certificate_pem: Some("-----BEGIN CERTIFICATE-----".to_owned()),
        certificate_fingerprint: Some("ab".repeat(32)),
        key_algorithm: Some("EC P-256".to_owned()),
        cycle_requested_at: None,
        created_at: at(1),
        updated_at: at(1),
    }
}

fn stack_record(pool_id: PoolId, name: &str) -> StackRecord {
    StackRecord {
        id: StackId::generate(),
        name: name.to_owned(),
        repository: "file:///srv/repo.git".to_owned(),
        branch: "main".to_owned(),
        project_root: "infra".to_owned(),
        pool_id,
        tool: Tool::Terraform,
        runner_image: None,
        autodeploy: false,
        managed_state: true,
        share_sensitive_outputs: true,
        environment: vec![
            EnvironmentVariable {
                name: "TF_VAR_region".to_owned(),
                value: "eu".to_owned(),
                secret: false,
            },
            EnvironmentVariable {
                name: "TOKEN".to_owned(),
                value: "s3cr3t".to_owned(),
                secret: true,
            },
        ],
        description: String::new(),
        labels: vec![],
        trigger_paths: vec!["modules/**".to_owned()],
        created_at: at(2),
    }
}

fn run_record(stack: &StackRecord, state: RunState, created: i64) -> RunRecord {
    RunRecord {
        id: RunId::generate(),
        stack_id: stack.id,
        pool_id: stack.pool_id,
        run_type: RunType::Tracked,
        state,
        branch: "main".to_owned(),
        commit_sha: None,
        commit_message: None,
        autodeploy: false,
        worker_id: None,
        prioritized: false,
        has_changes: None,
        failure: None,
        triggered_by: "admin".to_owned(),
        command: None,
        stop_requested_at: None,
        created_at: at(created),
        updated_at: at(created),
        lock_generation: None,
    }
}

fn worker_record(pool_id: PoolId, launcher_id: LauncherId) -> WorkerRecord {
    WorkerRecord {
        id: WorkerId::generate(),
        pool_id,
        launcher_id,
        metadata: BTreeMap::from([("zone".to_owned(), "a".to_owned())]),
        launcher_version: "0.1.0".to_owned(),
        hostname: "host".to_owned(),
        drained: false,
        current_run_id: None,
        created_at: at(3),
        last_seen_at: at(3),
    }
}

/// A pool, a stack in it and a worker of it.
async fn world<S: Store>(store: &S) -> (PoolRecord, StackRecord, WorkerRecord) {
    let pool = pool_record("pool");
    store.insert_pool(&pool).await.unwrap();
    let stack = stack_record(pool.id, "stack");
    store.insert_stack(&stack).await.unwrap();
    let worker =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    (pool, stack, worker)
}

pub async fn secrets_are_created_once<S: Store>(store: Arc<S>) {
    let first = store.secret_or_insert("hmac", b"first", at(1)).await.unwrap();
    let second = store.secret_or_insert("hmac", b"second", at(2)).await.unwrap();
    assert_eq!(first, b"first");
    assert_eq!(second, b"first");
}

pub async fn secrets_are_replaced_together_or_not_at_all<S: Store>(store: Arc<S>) {
    store.secret_or_insert("b", b"b-clear", at(1)).await.unwrap();
    store.secret_or_insert("a", b"a-clear", at(1)).await.unwrap();
    let listed = store.list_secrets().await.unwrap();
    assert_eq!(
        listed,
        vec![("a".to_owned(), b"a-clear".to_vec()), ("b".to_owned(), b"b-clear".to_vec())]
    );
    store
        .replace_secrets(&[("a", b"a-clear", b"a-sealed"), ("b", b"b-clear", b"b-sealed")])
        .await
        .unwrap();
    assert_eq!(store.secret_or_insert("a", b"other", at(2)).await.unwrap(), b"a-sealed");
    // "b" no longer holds what the caller expected: "a" stays as it was too.
    let stale = store
        .replace_secrets(&[("a", b"a-sealed", b"a-rotated"), ("b", b"b-clear", b"b-rotated")])
        .await;
    assert!(
        matches!(stale, Err(StoreError::SecretChanged { ref name }) if name == "b"),
        "{stale:?}"
    );
    let unchanged = store.list_secrets().await.unwrap();
    assert_eq!(
        unchanged,
        vec![("a".to_owned(), b"a-sealed".to_vec()), ("b".to_owned(), b"b-sealed".to_vec())]
    );
    let missing = store.replace_secrets(&[("absent", b"x", b"y")]).await;
    assert!(matches!(missing, Err(StoreError::SecretChanged { .. })), "{missing:?}");
}

pub async fn api_keys_are_found_by_hash_only<S: Store>(store: Arc<S>) {
    assert_eq!(store.count_api_keys().await.unwrap(), 0);
    let key = api_key_record("k1", "admin", "h1", Role::Admin, Scope::everything());
    store.insert_api_key(&key).await.unwrap();
    assert_eq!(store.find_api_key("h1").await.unwrap(), Some(key.clone()));
    assert_eq!(store.find_api_key("h2").await.unwrap(), None);
    // By id too: a UI session names its key by id, and an audit record by its name.
    assert_eq!(store.get_api_key("k1").await.unwrap(), Some(key));
    assert_eq!(store.get_api_key("h1").await.unwrap(), None);
    assert_eq!(store.count_api_keys().await.unwrap(), 1);
}

fn api_key_record(id: &str, name: &str, hash: &str, role: Role, scope: Scope) -> ApiKeyRecord {
    ApiKeyRecord {
        id: id.to_owned(),
        name: name.to_owned(),
        secret_hash: hash.to_owned(),
        role,
        scope,
        created_by: "gantry server".to_owned(),
        created_at: at(1),
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    }
}

pub async fn api_keys_are_listed_revoked_and_touched<S: Store>(store: Arc<S>) {
    let admin = api_key_record("k1", "admin", "h1", Role::Admin, Scope::everything());
    let scope = Scope::parse(&["pool:build", "stack-label:prod"]).unwrap();
    let mut deployer = api_key_record("k2", "deployer", "h2", Role::Writer, scope);
    deployer.created_by = "admin".to_owned();
    deployer.created_at = at(2);
    deployer.expires_at = Some(at(1_000));
    store.insert_api_key(&admin).await.unwrap();
    store.insert_api_key(&deployer).await.unwrap();
    assert_eq!(store.list_api_keys().await.unwrap(), vec![admin.clone(), deployer.clone()]);
    assert_eq!(store.find_api_key("h2").await.unwrap(), Some(deployer.clone()));

    store.touch_api_key("k2", at(5)).await.unwrap();
    let touched = store.get_api_key("k2").await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(at(5)));

    let revoked = store.revoke_api_key("k2", at(7)).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(at(7)));
    assert!(!revoked.is_active(at(8)));
    // A second revocation keeps the first time.
    assert_eq!(store.revoke_api_key("k2", at(9)).await.unwrap().revoked_at, Some(at(7)));
    assert_eq!(store.find_api_key("h2").await.unwrap().unwrap().revoked_at, Some(at(7)));
    assert!(store.get_api_key("k1").await.unwrap().unwrap().is_active(at(8)));
    let missing = store.revoke_api_key("k3", at(9)).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { .. }), "{missing:?}");
}

pub async fn ui_sessions_end_with_their_key_or_on_sign_out<S: Store>(store: Arc<S>) {
    let key = api_key_record("k1", "admin", "h1", Role::Admin, Scope::everything());
    store.insert_api_key(&key).await.unwrap();
    let session = |id: &str, created: i64, expires: i64| UiSessionRecord {
        id_hash: id.to_owned(),
        key_id: "k1".to_owned(),
        created_at: at(created),
        expires_at: at(expires),
    };
    store.insert_ui_session(&session("s1", 1, 100)).await.unwrap();
    store.insert_ui_session(&session("s2", 2, 100)).await.unwrap();
    let found = store.find_ui_session("s1").await.unwrap();
    assert_eq!(found, Some((session("s1", 1, 100), key.clone())));
    assert_eq!(store.find_ui_session("nope").await.unwrap(), None);

    store.delete_ui_session("s1").await.unwrap();
    assert_eq!(store.find_ui_session("s1").await.unwrap(), None, "signing out ends it");
    assert!(store.find_ui_session("s2").await.unwrap().is_some());

    // A new session sweeps out the expired ones.
    store.insert_ui_session(&session("s3", 200, 300)).await.unwrap();
    assert_eq!(store.find_ui_session("s2").await.unwrap(), None);

    store.revoke_api_key("k1", at(201)).await.unwrap();
    assert_eq!(store.find_ui_session("s3").await.unwrap(), None, "revoking the key ends it");
}

fn audit_entry(millis: i64, actor: &str) -> crate::AuditEntry {
    crate::AuditEntry {
        at: at(millis),
        actor: actor.to_owned(),
        action: "POST /api/v1/pools/{pool}/drain".to_owned(),
        target: "pool=blue".to_owned(),
        source: "127.0.0.1".to_owned(),
        outcome: "ok 200".to_owned(),
    }
}

pub async fn audit_entries_chain_and_filter<S: Store>(store: Arc<S>) {
    let all = crate::AuditFilter::default();
    assert_eq!(store.list_audit(&all).await.unwrap(), vec![]);
    let first = store.append_audit(&audit_entry(10, "key:ops")).await.unwrap();
    let second = store.append_audit(&audit_entry(20, "key:ci")).await.unwrap();
    assert_eq!((first.seq, first.prev_hash.as_str()), (1, crate::AUDIT_GENESIS));
    assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
    let listed = store.list_audit(&all).await.unwrap();
    assert_eq!(listed, vec![first, second.clone()]);
    assert_eq!(crate::verify_audit_chain(&listed), Ok(2));
    let since = crate::AuditFilter { since: Some(at(15)), actor: None };
    assert_eq!(store.list_audit(&since).await.unwrap(), vec![second.clone()]);
    let by_actor = crate::AuditFilter { since: None, actor: Some("key:ci".to_owned()) };
    assert_eq!(store.list_audit(&by_actor).await.unwrap(), vec![second]);
}

pub async fn concurrent_audit_appends_make_one_chain<S: Store>(store: Arc<S>) {
    let appends = (0..16).map(|index| {
        let store = store.clone();
        tokio::spawn(async move { store.append_audit(&audit_entry(index, "key:ops")).await })
    });
    for append in futures_util::future::join_all(appends).await {
        append.unwrap().unwrap();
    }
    let listed = store.list_audit(&crate::AuditFilter::default()).await.unwrap();
    assert_eq!(crate::verify_audit_chain(&listed), Ok(16));
}

pub async fn pool_names_are_unique<S: Store>(store: Arc<S>) {
    let pool = pool_record("pool");
    store.insert_pool(&pool).await.unwrap();
    let mut same_name = pool_record("pool");
    same_name.description = "other".to_owned();
    let error = store.insert_pool(&same_name).await.unwrap_err();
    assert!(matches!(error, StoreError::AlreadyExists { kind: "pool", .. }), "{error}");
    assert_eq!(store.list_pools().await.unwrap(), vec![pool.clone()]);
    assert_eq!(store.get_pool(pool.id).await.unwrap(), Some(pool.clone()));
    assert_eq!(store.find_pool_by_name("pool").await.unwrap(), Some(pool));
    assert_eq!(store.get_pool(same_name.id).await.unwrap(), None);
}

pub async fn sessions_expire<S: Store>(store: Arc<S>) {
    let pool = pool_record("pool");
    store.insert_pool(&pool).await.unwrap();
    let session = SessionRecord {
        token_hash: "t1".to_owned(),
        pool_id: pool.id,
        launcher_id: LauncherId::generate(),
        certificate_fingerprint: "f".to_owned(),
        hostname: "h".to_owned(),
        launcher_version: "v".to_owned(),
        created_at: at(10),
        expires_at: at(20),
    };
    store.insert_session(&session).await.unwrap();
    let found = store.find_session("t1").await.unwrap().unwrap();
    assert_eq!(found.session, session);
    assert_eq!(found.pool_certificate_fingerprint, pool.certificate_fingerprint);
    assert_eq!(found.pool_cycle_requested_at, None);
    store.request_pool_cycle(pool.id, at(15)).await.unwrap();
    let found = store.find_session("t1").await.unwrap().unwrap();
    assert_eq!(found.pool_cycle_requested_at, Some(at(15)), "the pool as it is now");
    assert_eq!(store.delete_expired_sessions(at(20)).await.unwrap(), 0);
    assert_eq!(store.delete_expired_sessions(at(21)).await.unwrap(), 1);
    assert_eq!(store.find_session("t1").await.unwrap(), None);
    store.insert_session(&session).await.unwrap();
    store.delete_session("t1").await.unwrap();
    assert_eq!(store.find_session("t1").await.unwrap(), None);
}

pub async fn workers_keep_their_state_across_registrations<S: Store>(store: Arc<S>) {
    let (pool, stack, worker) = world(&*store).await;
    let run = run_record(&stack, RunState::Ready, 5);
    store.insert_run(&run).await.unwrap();
    assert!(store.assign_run(run.id, worker.id, at(6)).await.unwrap());

    let mut again = worker.clone();
    again.launcher_id = LauncherId::generate();
    again.metadata = BTreeMap::from([("zone".to_owned(), "b".to_owned())]);
    again.last_seen_at = at(9);
    let stored = store.register_worker(&again).await.unwrap();
    assert_eq!(stored.launcher_id, again.launcher_id);
    assert_eq!(stored.metadata, again.metadata);
    assert_eq!(stored.current_run_id, Some(run.id), "the run stays with the worker");
    assert_eq!(stored.created_at, worker.created_at);

    let other_pool = pool_record("other");
    store.insert_pool(&other_pool).await.unwrap();
    let mut hijack = worker.clone();
    hijack.pool_id = other_pool.id;
    assert!(store.register_worker(&hijack).await.is_err(), "a worker id cannot move pools");
    assert_eq!(store.list_workers(Some(pool.id)).await.unwrap().len(), 1);
    assert!(store.list_workers(Some(other_pool.id)).await.unwrap().is_empty());
}

pub async fn touching_reports_workers_the_launcher_does_not_own<S: Store>(store: Arc<S>) {
    let (_, _, worker) = world(&*store).await;
    let stranger = WorkerId::generate();
    let unknown =
        store.touch_workers(worker.launcher_id, &[worker.id, stranger], at(50)).await.unwrap();
    assert_eq!(unknown, vec![stranger]);
    assert_eq!(store.get_worker(worker.id).await.unwrap().unwrap().last_seen_at, at(50));
    let unknown = store.touch_workers(LauncherId::generate(), &[worker.id], at(60)).await.unwrap();
    assert_eq!(unknown, vec![worker.id], "another launcher does not own it");
    store.delete_workers(&[worker.id]).await.unwrap();
    assert_eq!(store.get_worker(worker.id).await.unwrap(), None);
}

pub async fn only_workers_still_dead_and_free_are_deleted_as_dead<S: Store>(store: Arc<S>) {
    let (pool, stack, busy) = world(&*store).await;
    let alive = store.register_worker(&worker_record(pool.id, busy.launcher_id)).await.unwrap();
    let dead = store.register_worker(&worker_record(pool.id, busy.launcher_id)).await.unwrap();
    // All three were idle and last seen at 3 when the sweep read them; since then one
    // took a run and one heart-beat.
    let run = run_record(&stack, RunState::Ready, 5);
    store.insert_run(&run).await.unwrap();
    assert!(store.assign_run(run.id, busy.id, at(6)).await.unwrap());
    store.touch_workers(alive.launcher_id, &[alive.id], at(60)).await.unwrap();

    let deleted = store.delete_dead_workers(&[busy.id, alive.id, dead.id], at(50)).await.unwrap();
    assert_eq!(deleted, vec![dead.id]);
    assert_eq!(store.get_worker(dead.id).await.unwrap(), None);
    let kept = store.get_worker(busy.id).await.unwrap().expect("the busy worker is kept");
    assert_eq!(kept.current_run_id, Some(run.id));
    assert_eq!(store.get_run(run.id).await.unwrap().unwrap().worker_id, Some(busy.id));
    assert!(store.get_worker(alive.id).await.unwrap().is_some(), "the live worker is kept");
}

pub async fn stacks_round_trip_with_their_environment<S: Store>(store: Arc<S>) {
    let pool = pool_record("pool");
    store.insert_pool(&pool).await.unwrap();
    let stack = stack_record(pool.id, "stack");
    store.insert_stack(&stack).await.unwrap();
    assert_eq!(store.get_stack(stack.id).await.unwrap(), Some(stack.clone()));
    assert_eq!(store.find_stack_by_name("stack").await.unwrap(), Some(stack.clone()));
    let error = store.insert_stack(&stack_record(pool.id, "stack")).await.unwrap_err();
    assert!(matches!(error, StoreError::AlreadyExists { kind: "stack", .. }), "{error}");
    assert_eq!(store.list_stacks().await.unwrap(), vec![stack]);
}

pub async fn stack_environments_and_pools_are_updated_together<S: Store>(store: Arc<S>) {
    let pool = pool_record("pool");
    let other = pool_record("other");
    store.insert_pool(&pool).await.unwrap();
    store.insert_pool(&other).await.unwrap();
    let first = stack_record(pool.id, "first");
    let second = stack_record(pool.id, "second");
    store.insert_stack(&first).await.unwrap();
    store.insert_stack(&second).await.unwrap();
    let sealed = vec![EnvironmentVariable {
        name: "TF_VAR_password".to_owned(),
        value: "sealed text".to_owned(),
        secret: true,
    }];
    store
        .update_stack_environments(&[
            (first.id, other.id, sealed.clone()),
            (second.id, pool.id, sealed.clone()),
        ])
        .await
        .unwrap();
    let moved = store.get_stack(first.id).await.unwrap().unwrap();
    assert_eq!((moved.pool_id, &moved.environment), (other.id, &sealed));
    assert_eq!(store.get_stack(second.id).await.unwrap().unwrap().environment, sealed);

    // A stack that is gone fails the whole update: the first one is not changed either.
    let error = store
        .update_stack_environments(&[
            (first.id, pool.id, vec![]),
            (StackId::generate(), pool.id, vec![]),
        ])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { kind: "stack", .. }), "{error}");
    assert_eq!(store.get_stack(first.id).await.unwrap().unwrap(), moved);
}

pub async fn a_run_is_readable_before_its_insert_returns<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Queued, 5);
    // What another connection read each time the insert said the run was visible.
    let seen = std::sync::Mutex::new(Vec::new());
    let runtime = tokio::runtime::Handle::current();
    let visible = || {
        let found = tokio::task::block_in_place(|| runtime.block_on(store.get_run(run.id)));
        seen.lock().unwrap().push(found.unwrap().map(|found| found.state));
    };
    store.insert_run_visible_first(&run, &visible).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), [Some(RunState::Queued)], "told once, and readable then");
    assert_eq!(store.get_run(run.id).await.unwrap().unwrap(), run);
    let history = store.run_history(run.id).await.unwrap();
    assert_eq!(history.iter().map(|c| c.state).collect::<Vec<_>>(), [RunState::Queued]);
}

pub async fn run_changes_are_compare_and_set<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Queued, 5);
    store.insert_run(&run).await.unwrap();

    let changed = store
        .change_run(&RunChange::new(run.id, RunState::Queued, RunState::Ready, at(6)))
        .await
        .unwrap();
    assert_eq!(changed.state, RunState::Ready);
    assert_eq!(changed.updated_at, at(6));

    let stale = store
        .change_run(&RunChange::new(run.id, RunState::Queued, RunState::Discarded, at(7)))
        .await;
    assert!(
        matches!(stale, Err(StoreError::StateConflict { found: RunState::Ready, .. })),
        "{stale:?}"
    );

    let mut fail = RunChange::new(run.id, RunState::Ready, RunState::Failed, at(8));
    fail.failure = Some("worker lost".to_owned());
    fail.has_changes = Some(true);
    let failed = store.change_run(&fail).await.unwrap();
    assert_eq!(failed.failure.as_deref(), Some("worker lost"));
    assert_eq!(failed.has_changes, Some(true));

    let history: Vec<_> =
        store.run_history(run.id).await.unwrap().into_iter().map(|c| (c.state, c.at)).collect();
    assert_eq!(
        history,
        vec![(RunState::Queued, at(5)), (RunState::Ready, at(6)), (RunState::Failed, at(8))]
    );
    let missing = store
        .change_run(&RunChange::new(RunId::generate(), RunState::Queued, RunState::Ready, at(9)))
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound { kind: "run", .. })));
}

pub async fn releasing_a_worker_clears_both_sides<S: Store>(store: Arc<S>) {
    let (_, stack, worker) = world(&*store).await;
    let run = run_record(&stack, RunState::Ready, 5);
    store.insert_run(&run).await.unwrap();
    assert!(store.assign_run(run.id, worker.id, at(6)).await.unwrap());
    store
        .change_run(&RunChange::new(run.id, RunState::Ready, RunState::Preparing, at(7)))
        .await
        .unwrap();

    let mut leave = RunChange::new(run.id, RunState::Preparing, RunState::Finished, at(8));
    leave.release_worker = true;
    let finished = store.change_run(&leave).await.unwrap();
    assert_eq!(finished.worker_id, None);
    assert_eq!(store.get_worker(worker.id).await.unwrap().unwrap().current_run_id, None);
}

pub async fn a_run_failed_under_its_worker_fences_its_stack_in_the_same_change<S: Store>(
    store: Arc<S>,
) {
    let (pool, stack, worker) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let run = run_record(&stack, RunState::Ready, 5);
    store.insert_run(&run).await.unwrap();
    assert!(store.assign_run(run.id, worker.id, at(6)).await.unwrap());
    store
        .change_run(&RunChange::new(run.id, RunState::Ready, RunState::Applying, at(7)))
        .await
        .unwrap();

    // A change that loses its race fences nothing.
    let mut stale = RunChange::new(run.id, RunState::Planning, RunState::Failed, at(8));
    stale.fence_stack_until = Some(at(100));
    assert!(matches!(store.change_run(&stale).await, Err(StoreError::StateConflict { .. })));
    assert_eq!(store.lock_fences(at(8)).await.unwrap(), Vec::new());

    let mut fail = RunChange::new(run.id, RunState::Applying, RunState::Failed, at(8));
    fail.release_worker = true;
    fail.fence_stack_until = Some(at(100));
    let failed = store.change_run(&fail).await.unwrap();
    assert_eq!((failed.state, failed.worker_id), (RunState::Failed, None));
    let fence =
        LockFenceRecord { stack_id: stack.id, run_id: run.id, until: at(100), created_at: at(8) };
    assert_eq!(store.lock_fences(at(99)).await.unwrap(), vec![fence.clone()]);
    assert_eq!(store.lock_fences(at(100)).await.unwrap(), Vec::new(), "a fence ends at its time");

    // A later fence of the stack wins over an earlier one, never the other way round.
    let earlier = run_record(&stack, RunState::Applying, 9);
    store.insert_run(&earlier).await.unwrap();
    let mut short = RunChange::new(earlier.id, RunState::Applying, RunState::Failed, at(10));
    short.fence_stack_until = Some(at(50));
    store.change_run(&short).await.unwrap();
    assert_eq!(store.lock_fences(at(10)).await.unwrap(), vec![fence.clone()]);
    let later = run_record(&stack, RunState::Applying, 11);
    store.insert_run(&later).await.unwrap();
    let mut long = RunChange::new(later.id, RunState::Applying, RunState::Failed, at(12));
    long.fence_stack_until = Some(at(200));
    store.change_run(&long).await.unwrap();
    let longer = LockFenceRecord {
        stack_id: stack.id,
        run_id: later.id,
        until: at(200),
        created_at: at(12),
    };
    assert_eq!(store.lock_fences(at(12)).await.unwrap(), vec![longer.clone()]);

    // Lifting is per stack; a stack without a fence in force has nothing to lift.
    assert_eq!(store.lift_lock_fence(other.id, at(13)).await.unwrap(), None);
    assert_eq!(store.lift_lock_fence(stack.id, at(13)).await.unwrap(), Some(longer));
    assert_eq!(store.lock_fences(at(13)).await.unwrap(), Vec::new());
    assert_eq!(store.lift_lock_fence(stack.id, at(14)).await.unwrap(), None);
}

pub async fn a_fence_is_lifted_early_only_by_the_launcher_that_held_its_run<S: Store>(
    store: Arc<S>,
) {
    let (_, stack, worker) = world(&*store).await;
    let run = run_record(&stack, RunState::Applying, 5);
    store.insert_run(&run).await.unwrap();
    let mut fail = RunChange::new(run.id, RunState::Applying, RunState::Failed, at(8));
    fail.fence_stack_until = Some(at(100));
    fail.fence_holder = Some(worker.launcher_id);
    store.change_run(&fail).await.unwrap();
    let fence =
        LockFenceRecord { stack_id: stack.id, run_id: run.id, until: at(100), created_at: at(8) };

    // Another launcher, or the holder speaking of another run, lifts nothing.
    let stranger = LauncherId::generate();
    assert_eq!(store.lift_lock_fence_of_run(run.id, stranger, at(9)).await.unwrap(), None);
    let other_run = RunId::generate();
    assert_eq!(
        store.lift_lock_fence_of_run(other_run, worker.launcher_id, at(9)).await.unwrap(),
        None
    );
    assert_eq!(store.lock_fences(at(9)).await.unwrap(), vec![fence.clone()]);
    // A fence already past is not lifted again.
    assert_eq!(
        store.lift_lock_fence_of_run(run.id, worker.launcher_id, at(100)).await.unwrap(),
        None
    );
    assert_eq!(
        store.lift_lock_fence_of_run(run.id, worker.launcher_id, at(10)).await.unwrap(),
        Some(fence)
    );
    assert_eq!(store.lock_fences(at(10)).await.unwrap(), Vec::new());

    // A fence whose holder was not known (its worker was gone) waits for its time.
    let unknown = run_record(&stack, RunState::Applying, 11);
    store.insert_run(&unknown).await.unwrap();
    let mut fail = RunChange::new(unknown.id, RunState::Applying, RunState::Failed, at(12));
    fail.fence_stack_until = Some(at(100));
    store.change_run(&fail).await.unwrap();
    assert_eq!(
        store.lift_lock_fence_of_run(unknown.id, worker.launcher_id, at(13)).await.unwrap(),
        None
    );
    assert_eq!(store.lock_fences(at(13)).await.unwrap().len(), 1);
}

pub async fn assignment_is_all_or_nothing<S: Store>(store: Arc<S>) {
    let (pool, stack, worker) = world(&*store).await;
    let queued = run_record(&stack, RunState::Queued, 5);
    store.insert_run(&queued).await.unwrap();
    assert!(
        !store.assign_run(queued.id, worker.id, at(6)).await.unwrap(),
        "QUEUED runs wait for promotion"
    );
    assert_eq!(store.get_worker(worker.id).await.unwrap().unwrap().current_run_id, None);

    let first = run_record(&stack, RunState::Ready, 7);
    let second = run_record(&stack, RunState::Confirmed, 8);
    store.insert_run(&first).await.unwrap();
    store.insert_run(&second).await.unwrap();
    assert!(store.assign_run(first.id, worker.id, at(9)).await.unwrap());
    assert!(!store.assign_run(second.id, worker.id, at(9)).await.unwrap(), "the worker is busy");
    assert_eq!(
        store.get_run(second.id).await.unwrap().unwrap().worker_id,
        None,
        "nothing half-done"
    );

    let mut drained = worker_record(pool.id, LauncherId::generate());
    drained.drained = true;
    let drained = store.register_worker(&drained).await.unwrap();
    assert!(
        !store.assign_run(second.id, drained.id, at(9)).await.unwrap(),
        "drained workers take nothing"
    );
    assert_eq!(store.get_run(second.id).await.unwrap().unwrap().worker_id, None);

    let idle =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    assert!(!store.assign_run(first.id, idle.id, at(9)).await.unwrap(), "a run goes to one worker");
    assert!(store.assign_run(second.id, idle.id, at(9)).await.unwrap());
    let second = store.get_run(second.id).await.unwrap().unwrap();
    assert_eq!(second.worker_id, Some(idle.id));
    assert_eq!(store.get_worker(idle.id).await.unwrap().unwrap().current_run_id, Some(second.id));
}

pub async fn a_pass_promotes_and_assigns_in_batches<S: Store>(store: Arc<S>) {
    let (pool, stack, worker) = world(&*store).await;
    let other =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    let first = run_record(&stack, RunState::Queued, 5);
    let second = run_record(&stack, RunState::Queued, 6);
    let ready = run_record(&stack, RunState::Ready, 7);
    for run in [&first, &second, &ready] {
        store.insert_run(run).await.unwrap();
    }
    let promoted =
        store.promote_runs(&[first.id, ready.id, second.id, RunId::generate()], at(8)).await;
    let promoted = promoted.unwrap();
    assert_eq!(promoted.iter().map(|run| run.id).collect::<Vec<_>>(), [first.id, second.id]);
    assert!(promoted.iter().all(|run| run.state == RunState::Ready && run.updated_at == at(8)));
    let history: Vec<_> =
        store.run_history(first.id).await.unwrap().into_iter().map(|c| (c.state, c.at)).collect();
    assert_eq!(history, [(RunState::Queued, at(5)), (RunState::Ready, at(8))]);
    assert!(store.promote_runs(&[first.id], at(9)).await.unwrap().is_empty(), "promoted once");

    let made = store
        .assign_runs(&[(first.id, worker.id), (second.id, worker.id), (ready.id, other.id)], at(9))
        .await
        .unwrap();
    assert_eq!(made, [true, false, true], "a worker offered again is refused");
    assert_eq!(store.get_run(second.id).await.unwrap().unwrap().worker_id, None);
    assert_eq!(store.get_worker(worker.id).await.unwrap().unwrap().current_run_id, Some(first.id));
    assert_eq!(store.get_worker(other.id).await.unwrap().unwrap().current_run_id, Some(ready.id));
    let third = run_record(&stack, RunState::Ready, 10);
    store.insert_run(&third).await.unwrap();
    let spare =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    let made =
        store.assign_runs(&[(third.id, worker.id), (third.id, spare.id)], at(10)).await.unwrap();
    assert_eq!(made, [false, false], "the busy worker refuses; a run offered again is refused");
    let again = store.assign_runs(&[(first.id, other.id)], at(10)).await.unwrap();
    assert_eq!(again, [false]);
    assert_eq!(store.get_worker(other.id).await.unwrap().unwrap().current_run_id, Some(ready.id));
}

pub async fn a_pass_assigns_the_runs_it_promotes_in_one_commit<S: Store>(store: Arc<S>) {
    let (pool, stack, worker) = world(&*store).await;
    let other =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    let promoted_and_assigned = run_record(&stack, RunState::Queued, 5);
    let only_promoted = run_record(&stack, RunState::Queued, 6);
    let not_promoted = run_record(&stack, RunState::Queued, 7);
    for run in [&promoted_and_assigned, &only_promoted, &not_promoted] {
        store.insert_run(run).await.unwrap();
    }
    let committed = store
        .commit_pass(
            &[promoted_and_assigned.id, only_promoted.id],
            &[(promoted_and_assigned.id, worker.id), (not_promoted.id, other.id)],
            at(8),
        )
        .await
        .unwrap();
    assert_eq!(
        committed.promoted.iter().map(|run| run.id).collect::<Vec<_>>(),
        [promoted_and_assigned.id, only_promoted.id]
    );
    assert_eq!(committed.assigned, [true, false], "a run still QUEUED is not assigned");
    let assigned = store.get_run(promoted_and_assigned.id).await.unwrap().unwrap();
    assert_eq!((assigned.state, assigned.worker_id), (RunState::Ready, Some(worker.id)));
    assert_eq!(
        store.get_worker(worker.id).await.unwrap().unwrap().current_run_id,
        Some(promoted_and_assigned.id)
    );
    let history: Vec<_> = store
        .run_history(promoted_and_assigned.id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.state, c.at))
        .collect();
    assert_eq!(history, [(RunState::Queued, at(5)), (RunState::Ready, at(8))]);
    assert_eq!(store.get_run(not_promoted.id).await.unwrap().unwrap().state, RunState::Queued);
    assert_eq!(store.get_worker(other.id).await.unwrap().unwrap().current_run_id, None);

    let nothing = store.commit_pass(&[], &[], at(9)).await.unwrap();
    assert_eq!(nothing, crate::CommittedPass::default());
    let again = store
        .commit_pass(&[promoted_and_assigned.id], &[(only_promoted.id, worker.id)], at(9))
        .await
        .unwrap();
    assert!(again.promoted.is_empty(), "promoted once");
    assert_eq!(again.assigned, [false], "the worker is busy");
}

/// A pass for engine-specific tests to commit: one queued run to promote, and to assign
/// to an idle worker.
pub async fn a_pass_to_commit<S: Store>(store: &S) -> (Vec<RunId>, Vec<(RunId, WorkerId)>) {
    let (_, stack, worker) = world(store).await;
    let run = run_record(&stack, RunState::Queued, 5);
    store.insert_run(&run).await.unwrap();
    (vec![run.id], vec![(run.id, worker.id)])
}

pub async fn concurrent_assignments_give_a_worker_one_run<S: Store>(store: Arc<S>) {
    let (_, stack, worker) = world(&*store).await;
    let mut runs = Vec::new();
    for i in 0..8 {
        let run = run_record(&stack, RunState::Ready, 10 + i);
        store.insert_run(&run).await.unwrap();
        runs.push(run.id);
    }
    let attempts: Vec<_> = runs
        .iter()
        .map(|run_id| {
            let store = Arc::clone(&store);
            let run_id = *run_id;
            tokio::spawn(async move { store.assign_run(run_id, worker.id, at(20)).await.unwrap() })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        won += usize::from(attempt.await.unwrap());
    }
    assert_eq!(won, 1);
    let holder = store.get_worker(worker.id).await.unwrap().unwrap().current_run_id.unwrap();
    for run_id in runs {
        let run = store.get_run(run_id).await.unwrap().unwrap();
        assert_eq!(run.worker_id.is_some(), run_id == holder);
    }
}

pub async fn overlapping_batches_never_give_a_run_or_worker_twice<S: Store>(store: Arc<S>) {
    overlapping_batches_through(vec![store]).await;
}

/// The case above, with the passes sent through each of `replicas` in turn: handles on
/// one database, as several server processes hold.
pub async fn overlapping_batches_through<S: Store>(replicas: Vec<Arc<S>>) {
    let store = Arc::clone(&replicas[0]);
    let (pool, stack, first_worker) = world(&*store).await;
    let mut workers = vec![first_worker.id];
    for _ in 0..5 {
        let worker = worker_record(pool.id, LauncherId::generate());
        workers.push(store.register_worker(&worker).await.unwrap().id);
    }
    let mut runs = Vec::new();
    for i in 0..6 {
        let run = run_record(&stack, RunState::Ready, 10 + i);
        store.insert_run(&run).await.unwrap();
        runs.push(run.id);
    }
    // Sixteen passes at once, each pairing every run with a different rotation of the
    // workers, as replicas deciding from the same snapshot would.
    let passes: Vec<_> = (0..16)
        .map(|pass| {
            let store = Arc::clone(&replicas[pass % replicas.len()]);
            let pairs: Vec<(RunId, WorkerId)> = runs
                .iter()
                .enumerate()
                .map(|(i, run)| (*run, workers[(i + pass) % workers.len()]))
                .collect();
            tokio::spawn(async move { store.assign_runs(&pairs, at(20)).await.unwrap() })
        })
        .collect();
    for pass in passes {
        pass.await.unwrap();
    }
    let mut holders = std::collections::HashSet::new();
    for run_id in &runs {
        let run = store.get_run(*run_id).await.unwrap().unwrap();
        let Some(worker_id) = run.worker_id else { continue };
        assert!(holders.insert(worker_id), "worker {worker_id} was given two runs");
        let worker = store.get_worker(worker_id).await.unwrap().unwrap();
        assert_eq!(worker.current_run_id, Some(*run_id), "both sides agree");
    }
    for worker_id in &workers {
        let worker = store.get_worker(*worker_id).await.unwrap().unwrap();
        if let Some(run_id) = worker.current_run_id {
            let run = store.get_run(run_id).await.unwrap().unwrap();
            assert_eq!(
                run.worker_id,
                Some(*worker_id),
                "worker {worker_id} holds a run not its own"
            );
        }
    }
    assert!(!holders.is_empty(), "some pass must have assigned");
}

pub async fn ended_runs_logs_are_offered_for_archiving<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let mut ended = run_record(&stack, RunState::Finished, 10);
    ended.updated_at = at(100);
    let mut later = run_record(&stack, RunState::Failed, 11);
    later.updated_at = at(300);
    let live = run_record(&stack, RunState::Performing, 12);
    let mut silent = run_record(&stack, RunState::Finished, 13);
    silent.updated_at = at(350);
    for run in [&ended, &later, &live, &silent] {
        store.insert_run(run).await.unwrap();
    }
    for run in [&ended, &later, &live] {
        store.append_logs(run.id, &[(0, "line\n".to_owned())], NO_LIMIT, at(50)).await.unwrap();
    }
    let offered = |before: i64, skip: Vec<RunId>, limit: u32| {
        let store = Arc::clone(&store);
        async move { store.runs_with_logs_to_archive(at(before), &skip, limit).await.unwrap() }
    };
    assert_eq!(offered(200, vec![], 10).await, [ended.id]);
    assert_eq!(offered(400, vec![], 10).await, [ended.id, later.id, silent.id], "silent: to seal");
    assert_eq!(offered(400, vec![], 1).await, [ended.id]);
    assert_eq!(offered(400, vec![ended.id], 1).await, [later.id], "skipped ones hold none back");
    store.seal_log(ended.id, at(400)).await.unwrap();
    assert_eq!(offered(400, vec![], 10).await, [ended.id, later.id, silent.id], "still has chunks");
    store.delete_logs(ended.id).await.unwrap();
    assert_eq!(store.read_logs(ended.id, 0, 10).await.unwrap(), []);
    store.seal_log(silent.id, at(400)).await.unwrap();
    assert_eq!(offered(400, vec![], 10).await, [later.id], "sealed and archived: done");
    assert_eq!(store.read_logs(live.id, 0, 10).await.unwrap().len(), 1, "others keep theirs");
}

pub async fn a_sealed_log_refuses_appends<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Finished, 5);
    store.insert_run(&run).await.unwrap();
    let chunk = |seq: u64| (seq, format!("line {seq}\n"));
    assert_eq!(store.append_logs(run.id, &[chunk(0)], NO_LIMIT, at(6)).await.unwrap(), 1);
    store.seal_log(run.id, at(7)).await.unwrap();
    store.seal_log(run.id, at(8)).await.unwrap();
    let late = store.append_logs(run.id, &[chunk(1)], NO_LIMIT, at(9)).await;
    assert!(matches!(late, Err(StoreError::LogSealed { run_id }) if run_id == run.id), "{late:?}");
    store.delete_logs(run.id).await.unwrap();
    let restart = store.append_logs(run.id, &[chunk(0)], NO_LIMIT, at(10)).await;
    assert!(matches!(restart, Err(StoreError::LogSealed { .. })), "once archived too: {restart:?}");
    let missing = store.seal_log(RunId::generate(), at(10)).await;
    assert!(matches!(missing, Err(StoreError::NotFound { kind: "run", .. })), "{missing:?}");

    let archive = blob("runs/a/log-1", "ab", 11);
    assert!(store.put_run_blob_once(run.id, "log", &archive).await.unwrap());
    let again = blob("runs/a/log-2", "cd", 12);
    assert!(!store.put_run_blob_once(run.id, "log", &again).await.unwrap(), "never replaced");
    assert_eq!(store.run_blob(run.id, "log").await.unwrap(), Some(archive));
}

pub async fn a_seal_waits_for_the_appends_under_way<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Finished, 5);
    store.insert_run(&run).await.unwrap();
    // Appenders race the seal; whatever an appender was told is stored must be readable
    // once the seal returns (the archive is made from that reading).
    let appenders: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut accepted = 0;
                loop {
                    let chunks: Vec<(u64, String)> =
                        (accepted..accepted + 5).map(|seq| (seq, format!("{seq}\n"))).collect();
                    match store.append_logs(run.id, &chunks, NO_LIMIT, at(6)).await {
                        Ok(next) => accepted = next,
                        Err(StoreError::LogSealed { .. }) => return accepted,
                        Err(error) => panic!("{error}"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    store.seal_log(run.id, at(7)).await.unwrap();
    let stored = store.read_logs(run.id, 0, 100_000).await.unwrap();
    let mut most = 0;
    for appender in appenders {
        most = most.max(appender.await.unwrap());
    }
    assert!(most > 0, "some appends went in before the seal");
    assert_eq!(stored.len() as u64, most, "every accepted chunk is there at the seal");
    assert!(stored.iter().enumerate().all(|(i, chunk)| chunk.seq == i as u64));
}

pub async fn a_log_over_its_limit_keeps_its_head_and_tail<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Applying, 5);
    store.insert_run(&run).await.unwrap();
    // 100 chunks of 10 bytes under a limit of 200: 10 head chunks, 10 tail chunks.
    let chunk = |seq: u64| (seq, format!("line {seq:04}\n"));
    for first in (0..100).step_by(7) {
        let chunks: Vec<_> = (first..(first + 9).min(100)).map(chunk).collect();
        store.append_logs(run.id, &chunks, 200, at(6)).await.unwrap();
    }
    assert_eq!(store.append_logs(run.id, &[chunk(99)], 200, at(7)).await.unwrap(), 100);
    let kept: Vec<u64> =
        store.read_logs(run.id, 0, 1000).await.unwrap().iter().map(|c| c.seq).collect();
    let expected: Vec<u64> = (0..10).chain(90..100).collect();
    assert_eq!(kept, expected);
    let cut = store.log_cut(run.id).await.unwrap();
    assert_eq!(cut, Some(crate::LogCutRecord { at_seq: 10, chunks: 80, bytes: 800 }));
    let under = run_record(&stack, RunState::Applying, 6);
    store.insert_run(&under).await.unwrap();
    store.append_logs(under.id, &[chunk(0)], 200, at(6)).await.unwrap();
    assert_eq!(store.log_cut(under.id).await.unwrap(), None, "nothing cut");
}

pub async fn periodic_work_is_claimed_once_per_interval<S: Store>(store: Arc<S>) {
    let every = std::time::Duration::from_secs(5);
    let claims = |now: i64| {
        let attempts: Vec<_> = (0..12)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.claim_periodic("sweep", every, at(now)).await })
            })
            .collect();
        async move {
            let mut won = 0;
            for attempt in attempts {
                won += usize::from(attempt.await.unwrap().unwrap());
            }
            won
        }
    };
    assert_eq!(claims(100_000).await, 1, "the first interval is claimed once");
    assert_eq!(claims(104_999).await, 0, "not again within the interval");
    assert_eq!(claims(105_000).await, 1, "once in the next");
    assert!(store.claim_periodic("other", every, at(105_000)).await.unwrap(), "jobs are separate");
}

pub async fn signals_reach_every_listener<S: Store>(store: Arc<S>) {
    let Some(mut first) = store.signals().await.unwrap() else {
        assert!(!store.shared(), "a shared store must carry signals");
        store.publish_signal("nobody listens").await.unwrap();
        return;
    };
    let mut second = store.signals().await.unwrap().expect("every listener gets a stream");
    store.publish_signal("wake launcher 42").await.unwrap();
    for listener in [&mut first, &mut second] {
        let signal = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match futures_util::StreamExt::next(listener).await {
                    Some(crate::Signal::Gap) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the signal arrives");
        assert_eq!(signal, Some(crate::Signal::Message("wake launcher 42".to_owned())));
    }
}

pub async fn runs_are_listed_newest_first_and_active_oldest_first<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let old = run_record(&stack, RunState::Queued, 10);
    let done = run_record(&stack, RunState::Finished, 20);
    let new = run_record(&other, RunState::Unconfirmed, 30);
    for run in [&old, &done, &new] {
        store.insert_run(run).await.unwrap();
    }
    let ids = |runs: Vec<RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_runs(&RunFilter::default()).await.unwrap()),
        vec![new.id, done.id, old.id]
    );
    assert_eq!(
        ids(store.list_runs(&RunFilter { stack_id: Some(stack.id), limit: 1 }).await.unwrap()),
        vec![done.id]
    );
    assert_eq!(ids(store.active_runs().await.unwrap()), vec![old.id, new.id]);
}

pub async fn log_uploads_are_ordered_and_idempotent<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Planning, 5);
    store.insert_run(&run).await.unwrap();
    let chunk = |seq: u64| (seq, format!("line {seq}\n"));
    assert_eq!(store.append_logs(run.id, &[], NO_LIMIT, at(5)).await.unwrap(), 0, "nothing yet");

    assert_eq!(store.append_logs(run.id, &[chunk(0), chunk(1)], NO_LIMIT, at(6)).await.unwrap(), 2);
    assert_eq!(
        store.append_logs(run.id, &[chunk(1), chunk(2)], NO_LIMIT, at(7)).await.unwrap(),
        3,
        "a retry overlaps"
    );
    let gap = store.append_logs(run.id, &[chunk(3), chunk(5)], NO_LIMIT, at(8)).await;
    assert!(matches!(gap, Err(StoreError::LogGap { expected: 4, received: 5 })), "{gap:?}");
    assert_eq!(
        store.append_logs(run.id, &[], NO_LIMIT, at(9)).await.unwrap(),
        4,
        "the gap stored nothing"
    );

    let all = store.read_logs(run.id, 0, 100).await.unwrap();
    let text: String = all.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(text, "line 0\nline 1\nline 2\nline 3\n");
    assert_eq!(all.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    let tail = store.read_logs(run.id, 2, 1).await.unwrap();
    assert_eq!(tail.len(), 1);
    assert_eq!(tail[0].seq, 2);
    assert_eq!(tail[0].at, at(7));
}

pub async fn concurrent_log_retries_never_duplicate<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Planning, 5);
    store.insert_run(&run).await.unwrap();
    let chunks: Vec<(u64, String)> = (0..50).map(|seq| (seq, format!("{seq}\n"))).collect();
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let chunks = chunks.clone();
            tokio::spawn(async move {
                store.append_logs(run.id, &chunks, NO_LIMIT, at(6)).await.unwrap()
            })
        })
        .collect();
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), 50);
    }
    assert_eq!(store.read_logs(run.id, 0, 1000).await.unwrap().len(), 50);
}

pub async fn outputs_are_replaced_as_a_whole<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Applying, 5);
    store.insert_run(&run).await.unwrap();
    let first = vec![
        OutputRecord { name: "a".to_owned(), value_json: Some("1".to_owned()), sensitive: false },
        OutputRecord { name: "b".to_owned(), value_json: None, sensitive: true },
    ];
    store.replace_outputs(run.id, &first).await.unwrap();
    assert_eq!(store.outputs(run.id).await.unwrap(), first);
    let second = vec![OutputRecord {
        name: "c".to_owned(),
        value_json: Some("\"x\"".to_owned()),
        sensitive: false,
    }];
    store.replace_outputs(run.id, &second).await.unwrap();
    assert_eq!(store.outputs(run.id).await.unwrap(), second);
}

pub async fn a_pool_reset_replaces_the_certificate_and_ends_sessions<S: Store>(store: Arc<S>) {
    let (pool, _, _) = world(&*store).await;
    let session = SessionRecord {
        token_hash: "t".to_owned(),
        pool_id: pool.id,
        launcher_id: LauncherId::generate(),
        certificate_fingerprint: pool.certificate_fingerprint.clone().unwrap(),
        hostname: "h".to_owned(),
        launcher_version: "v".to_owned(),
        created_at: at(1),
        expires_at: at(1_000_000),
    };
    store.insert_session(&session).await.unwrap();
    let reset =
        store.reset_pool_certificate(pool.id, "NEW PEM", "cd", "RSA-4096", at(50)).await.unwrap();
    assert_eq!(reset.certificate_pem.as_deref(), Some("NEW PEM"));
    assert_eq!(reset.certificate_fingerprint.as_deref(), Some("cd"));
    assert_eq!(reset.key_algorithm.as_deref(), Some("RSA-4096"));
    assert_eq!(reset.updated_at, at(50));
    assert_eq!(reset.created_at, pool.created_at);
    assert_eq!(store.find_session("t").await.unwrap(), None, "old sessions end at once");
    let missing = store.reset_pool_certificate(PoolId::generate(), "x", "y", "z", at(51)).await;
    assert!(matches!(missing, Err(StoreError::NotFound { kind: "pool", .. })));
}

fn blob(key: &str, sha: &str, created: i64) -> BlobRecord {
    BlobRecord { key: key.to_owned(), sha256: sha.repeat(32), size: 42, created_at: at(created) }
}

pub async fn run_blobs_are_recorded_per_purpose<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_record(&stack, RunState::Planning, 5);
    store.insert_run(&run).await.unwrap();
    assert_eq!(store.run_blob(run.id, "workspace").await.unwrap(), None);
    store.put_run_blob(run.id, "workspace", &blob("runs/a/workspace", "ab", 6)).await.unwrap();
    store.put_run_blob(run.id, "plan", &blob("runs/a/plan", "cd", 6)).await.unwrap();
    let replaced = blob("runs/a/workspace-2", "ef", 7);
    store.put_run_blob(run.id, "workspace", &replaced).await.unwrap();
    assert_eq!(store.run_blob(run.id, "workspace").await.unwrap(), Some(replaced));
    assert_eq!(store.run_blob(run.id, "plan").await.unwrap().unwrap().sha256, "cd".repeat(32));
}

pub async fn state_versions_are_numbered_per_stack<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    assert_eq!(store.current_state_version(stack.id).await.unwrap(), None);
    let first_run = run_record(&stack, RunState::Applying, 5);
    let second_run = run_record(&stack, RunState::Applying, 6);
    let first =
        store.add_state_version(stack.id, first_run.id, &blob("s/1", "01", 5)).await.unwrap();
    let second =
        store.add_state_version(stack.id, second_run.id, &blob("s/2", "02", 6)).await.unwrap();
    let elsewhere =
        store.add_state_version(other.id, first_run.id, &blob("o/1", "03", 7)).await.unwrap();
    assert_eq!((first.seq, second.seq, elsewhere.seq), (1, 2, 1));
    let current = store.current_state_version(stack.id).await.unwrap().unwrap();
    assert_eq!(current, second);
    assert_eq!(current.run_id, second_run.id);
}

/// Adds `n` versions of `stack`, each from its own run and blob (`<prefix>/<i>`).
async fn add_state_versions<S: Store>(
    store: &S,
    stack: &StackRecord,
    prefix: &str,
    n: u64,
) -> Vec<StateVersionRecord> {
    let mut versions = Vec::new();
    for i in 1..=n {
        let run = run_record(stack, RunState::Applying, 10 + i as i64);
        let blob = blob(&format!("{prefix}/{i}"), &format!("{:02x}", i % 256), 10 + i as i64);
        versions.push(store.add_state_version(stack.id, run.id, &blob).await.unwrap());
    }
    versions
}

pub async fn state_versions_are_listed_newest_first<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    assert_eq!(store.list_state_versions(stack.id).await.unwrap(), vec![]);
    let added = add_state_versions(&*store, &stack, "s", 3).await;
    add_state_versions(&*store, &other, "o", 1).await;
    let listed = store.list_state_versions(stack.id).await.unwrap();
    assert_eq!(listed, added.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(listed[0], store.current_state_version(stack.id).await.unwrap().unwrap());
    assert!(listed.iter().all(|version| version.rollback.is_none()));
}

pub async fn a_rollback_is_a_new_current_version_with_the_old_blob_and_run<S: Store>(
    store: Arc<S>,
) {
    let (_, stack, _) = world(&*store).await;
    let added = add_state_versions(&*store, &stack, "s", 3).await;
    let rolled = store.rollback_state_version(stack.id, 1, "admin", at(100)).await.unwrap();
    assert_eq!(rolled.seq, 4, "a new version, after every other");
    assert_eq!(rolled.run_id, added[0].run_id, "the blob's encryption context names that run");
    assert_eq!(
        (&rolled.blob.key, &rolled.blob.sha256),
        (&added[0].blob.key, &added[0].blob.sha256)
    );
    assert_eq!((rolled.blob.size, rolled.blob.created_at), (added[0].blob.size, at(100)));
    assert_eq!(rolled.rollback, Some(StateRollbackRecord { of_seq: 1, by: "admin".to_owned() }));
    assert_eq!(store.current_state_version(stack.id).await.unwrap(), Some(rolled.clone()));
    // History is kept as it was: the versions rolled back over are still there.
    let listed = store.list_state_versions(stack.id).await.unwrap();
    assert_eq!(listed.iter().map(|version| version.seq).collect::<Vec<_>>(), [4, 3, 2, 1]);
    assert_eq!(listed[1..], added.iter().rev().cloned().collect::<Vec<_>>());
    // A rollback of a rollback names the version it restores, and the original run.
    let again = store.rollback_state_version(stack.id, 4, "ci", at(101)).await.unwrap();
    assert_eq!((again.seq, again.run_id), (5, added[0].run_id));
    assert_eq!(again.rollback, Some(StateRollbackRecord { of_seq: 4, by: "ci".to_owned() }));
    // A run's next version follows on.
    let next = add_state_versions(&*store, &stack, "t", 1).await;
    assert_eq!(next[0].seq, 6);
}

pub async fn a_rollback_to_a_missing_version_is_a_clear_error<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let missing = store.rollback_state_version(stack.id, 1, "admin", at(5)).await.unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { kind: "state version", .. }), "{missing}");
    assert_eq!(
        missing.to_string(),
        format!("state version 1 of stack {} does not exist", stack.id)
    );
    add_state_versions(&*store, &stack, "s", 2).await;
    let beyond = store.rollback_state_version(stack.id, 3, "admin", at(5)).await.unwrap_err();
    assert!(matches!(beyond, StoreError::NotFound { kind: "state version", .. }), "{beyond}");
    let pruned = store.prune_state_versions(stack.id, 1).await.unwrap();
    assert_eq!(pruned, ["s/1"]);
    let gone = store.rollback_state_version(stack.id, 1, "admin", at(5)).await.unwrap_err();
    assert!(matches!(gone, StoreError::NotFound { kind: "state version", .. }), "{gone}");
    let nowhere =
        store.rollback_state_version(StackId::generate(), 1, "admin", at(5)).await.unwrap_err();
    assert!(matches!(nowhere, StoreError::NotFound { kind: "stack", .. }), "{nowhere}");
    let seqs: Vec<u64> =
        store.list_state_versions(stack.id).await.unwrap().iter().map(|v| v.seq).collect();
    assert_eq!(seqs, [2], "refused rollbacks add nothing");
}

pub async fn pruning_keeps_the_newest_versions_and_every_blob_still_named<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    add_state_versions(&*store, &other, "o", 3).await;
    assert_eq!(store.prune_state_versions(stack.id, 2).await.unwrap(), Vec::<String>::new());
    add_state_versions(&*store, &stack, "s", 4).await;
    // Versions 5 and 6 restore versions 1 and 2: their blobs are named twice.
    store.rollback_state_version(stack.id, 1, "admin", at(50)).await.unwrap();
    store.rollback_state_version(stack.id, 2, "admin", at(51)).await.unwrap();
    assert_eq!(store.prune_state_versions(stack.id, 6).await.unwrap(), Vec::<String>::new());

    // Keeping 3 deletes versions 1 to 3: the blobs of 1 and 2 are still named by 5 and 6.
    let unnamed = store.prune_state_versions(stack.id, 3).await.unwrap();
    assert_eq!(unnamed, ["s/3"]);
    let kept = store.list_state_versions(stack.id).await.unwrap();
    let keys: Vec<(u64, &str)> =
        kept.iter().map(|version| (version.seq, version.blob.key.as_str())).collect();
    assert_eq!(keys, [(6, "s/2"), (5, "s/1"), (4, "s/4")]);
    assert_eq!(store.prune_state_versions(stack.id, 3).await.unwrap(), Vec::<String>::new());

    // Keeping 1: versions 4 and 5 go with their blobs; 6 keeps s/2.
    let mut unnamed = store.prune_state_versions(stack.id, 1).await.unwrap();
    unnamed.sort();
    assert_eq!(unnamed, ["s/1", "s/4"]);
    let current = store.current_state_version(stack.id).await.unwrap().unwrap();
    assert_eq!((current.seq, current.blob.key.as_str()), (6, "s/2"));
    assert_eq!(store.list_state_versions(other.id).await.unwrap().len(), 3, "per stack");
    let next = add_state_versions(&*store, &stack, "t", 1).await;
    assert_eq!(next[0].seq, 7, "numbers are never reused");
}

pub async fn rollbacks_racing_prunes_never_leave_a_version_without_its_blob<S: Store>(
    store: Arc<S>,
) {
    let (_, stack, _) = world(&*store).await;
    add_state_versions(&*store, &stack, "s", 3).await;
    // One writer adds versions and prunes to 2, as uploads do; another rolls back to
    // whichever version is oldest, as a user might, while it is being pruned.
    let adder = {
        let (store, stack) = (Arc::clone(&store), stack.clone());
        tokio::spawn(async move {
            let mut unnamed = Vec::new();
            for i in 0..30 {
                let run = run_record(&stack, RunState::Applying, 100 + i);
                let blob = blob(&format!("a/{i}"), "aa", 100 + i);
                store.add_state_version(stack.id, run.id, &blob).await.unwrap();
                unnamed.extend(store.prune_state_versions(stack.id, 2).await.unwrap());
            }
            unnamed
        })
    };
    let roller = {
        let (store, stack) = (Arc::clone(&store), stack.clone());
        tokio::spawn(async move {
            let mut unnamed = Vec::new();
            for _ in 0..30 {
                let versions = store.list_state_versions(stack.id).await.unwrap();
                let oldest = versions.last().unwrap().seq;
                match store.rollback_state_version(stack.id, oldest, "admin", at(200)).await {
                    Ok(_) => unnamed.extend(store.prune_state_versions(stack.id, 2).await.unwrap()),
                    Err(StoreError::NotFound { kind: "state version", .. }) => {}
                    Err(error) => panic!("{error}"),
                }
            }
            unnamed
        })
    };
    let mut unnamed = adder.await.unwrap();
    unnamed.extend(roller.await.unwrap());
    // Once no version names a blob, none ever does again (a rollback needs a version that
    // names it), so handing a key out twice means a version named it after its deletion.
    let mut distinct = unnamed.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), unnamed.len(), "a blob was handed out twice: {unnamed:?}");
    let kept = store.list_state_versions(stack.id).await.unwrap();
    assert_eq!(kept.len(), 2);
    for version in &kept {
        assert!(
            !unnamed.contains(&version.blob.key),
            "version {} names {}, which a prune handed out for deletion",
            version.seq,
            version.blob.key
        );
    }
    let seqs: Vec<u64> = kept.iter().map(|version| version.seq).collect();
    assert_eq!(seqs[0], seqs[1] + 1);
}

/// Generates one `#[tokio::test]` per blob-store contract case. `$make` is an async
/// expression producing a fresh, empty blob store (and anything that must outlive it).
///
/// `blob_store_contract_tests!(one_test NAME, SETUP, MAKE)` runs every case in one test
/// instead, for stores whose setup is costly (a server process): `SETUP` is an async
/// expression giving `Option<T>` (`None` skips the test), and `MAKE` a function from
/// `&T` to a future of a fresh store and its guard.
#[macro_export]
macro_rules! blob_store_contract_tests {
    ($make:expr) => {
        $crate::blob_store_contract_tests!(@cases [each $make]);
    };
    (one_test $name:ident, $setup:expr, $make:path) => {
        $crate::blob_store_contract_tests!(@cases [one $name $setup, $make]);
    };
    (@cases [$($how:tt)*]) => {
        $crate::blob_store_contract_tests!(@run [$($how)*]
            blobs_round_trip_and_report_their_digest,
            a_new_blob_replaces_the_old_one_only_when_complete,
            oversized_or_broken_uploads_leave_nothing,
            large_blobs_stream_in_parts_and_replace_only_when_complete,
            blob_keys_cannot_escape
        );
    };
    (@run [each $make:expr] $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (blobs, _guard) = $make.await;
                $crate::contract::$case(std::sync::Arc::new(blobs)).await;
            }
        )*
    };
    (@run [one $name:ident $setup:expr, $make:path] $($case:ident),* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(shared) = $setup.await else { return };
            $(
                eprintln!("blob store contract: {}", stringify!($case));
                let (blobs, _guard) = $make(&shared).await;
                $crate::contract::$case(std::sync::Arc::new(blobs)).await;
            )*
        }
    };
}

fn body(parts: Vec<&'static [u8]>) -> crate::BlobStream {
    use futures_util::StreamExt;
    futures_util::stream::iter(parts.into_iter().map(|part| Ok(bytes::Bytes::from_static(part))))
        .boxed()
}

async fn read_all<B: BlobStore>(blobs: &B, key: &str) -> Option<Vec<u8>> {
    use futures_util::TryStreamExt;
    let (size, stream) = blobs.get(key).await.unwrap()?;
    let bytes: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let bytes = bytes.concat();
    assert_eq!(bytes.len() as u64, size);
    Some(bytes)
}

pub async fn blobs_round_trip_and_report_their_digest<B: BlobStore>(blobs: Arc<B>) {
    let written =
        blobs.put("runs/r1/workspace", body(vec![b"hello ", b"world"]), 1 << 20).await.unwrap();
    assert_eq!(written.size, 11);
    assert_eq!(written.sha256, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    assert_eq!(read_all(&*blobs, "runs/r1/workspace").await.unwrap(), b"hello world");
    assert!(read_all(&*blobs, "runs/r2/workspace").await.is_none());
    blobs.delete("runs/r1/workspace").await.unwrap();
    blobs.delete("runs/r1/workspace").await.unwrap();
    assert!(read_all(&*blobs, "runs/r1/workspace").await.is_none());
}

pub async fn a_new_blob_replaces_the_old_one_only_when_complete<B: BlobStore>(blobs: Arc<B>) {
    blobs.put("k", body(vec![b"old"]), 1 << 20).await.unwrap();
    let broken: crate::BlobStream = {
        use futures_util::StreamExt;
        futures_util::stream::iter(vec![
            Ok(bytes::Bytes::from_static(b"new, but")),
            Err(std::io::Error::other("connection reset")),
        ])
        .boxed()
    };
    assert!(blobs.put("k", broken, 1 << 20).await.is_err());
    assert_eq!(read_all(&*blobs, "k").await.unwrap(), b"old", "a broken upload replaces nothing");
    blobs.put("k", body(vec![b"new"]), 1 << 20).await.unwrap();
    assert_eq!(read_all(&*blobs, "k").await.unwrap(), b"new");
}

pub async fn oversized_or_broken_uploads_leave_nothing<B: BlobStore>(blobs: Arc<B>) {
    let error = blobs.put("big", body(vec![b"0123456789", b"0123456789"]), 15).await.unwrap_err();
    assert!(matches!(error, StoreError::TooLarge { limit: 15 }), "{error}");
    assert!(read_all(&*blobs, "big").await.is_none());
}

/// A body of `len` bytes in 64 KiB chunks, and its SHA-256 (hex).
fn large_body(len: usize, seed: u8) -> (crate::BlobStream, Vec<u8>, String) {
    use futures_util::StreamExt;
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
    let sha256 = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes));
    let chunks: Vec<std::io::Result<bytes::Bytes>> =
        bytes.chunks(64 * 1024).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    (futures_util::stream::iter(chunks).boxed(), bytes, sha256)
}

/// Bodies longer than one upload part (8 MiB) go up in parts: they arrive whole, and one
/// refused after several parts were sent replaces nothing.
pub async fn large_blobs_stream_in_parts_and_replace_only_when_complete<B: BlobStore>(
    blobs: Arc<B>,
) {
    const MIB: usize = 1024 * 1024;
    let (long, bytes, sha256) = large_body(19 * MIB + 7, 1);
    let written = blobs.put("states/s1/v1", long, 64 << 20).await.unwrap();
    assert_eq!((written.size, written.sha256), (bytes.len() as u64, sha256));
    assert!(read_all(&*blobs, "states/s1/v1").await.unwrap() == bytes, "the bytes came back");

    let (too_big, _, _) = large_body(19 * MIB + 7, 2);
    let error = blobs.put("states/s1/v1", too_big, (17 * MIB) as u64).await.unwrap_err();
    assert!(matches!(error, StoreError::TooLarge { .. }), "{error}");
    assert!(read_all(&*blobs, "states/s1/v1").await.unwrap() == bytes, "the old blob stays");

    let (exactly_one_part, bytes, sha256) = large_body(8 * MIB, 3);
    let written = blobs.put("states/s1/v1", exactly_one_part, 8 * MIB as u64).await.unwrap();
    assert_eq!(written.sha256, sha256);
    assert!(read_all(&*blobs, "states/s1/v1").await.unwrap() == bytes);
    let written = blobs.put("empty", body(vec![]), 0).await.unwrap();
    assert_eq!(written.size, 0);
    assert_eq!(read_all(&*blobs, "empty").await.unwrap(), b"");
}

pub async fn blob_keys_cannot_escape<B: BlobStore>(blobs: Arc<B>) {
    for key in ["", "../x", "a/../../x", "/abs", "a//b", "A", ".hidden", "a b"] {
        let error = blobs.put(key, body(vec![b"x"]), 10).await.unwrap_err();
        assert!(matches!(error, StoreError::InvalidKey(_)), "{key:?}: {error}");
    }
}

pub async fn workers_and_pools_drain_and_undrain<S: Store>(store: Arc<S>) {
    let (pool, _, worker) = world(&*store).await;
    let second =
        store.register_worker(&worker_record(pool.id, LauncherId::generate())).await.unwrap();
    let drained = store.set_worker_drained(worker.id, true).await.unwrap().unwrap();
    assert!(drained.drained);
    assert!(!store.get_worker(second.id).await.unwrap().unwrap().drained);
    assert_eq!(store.set_worker_drained(WorkerId::generate(), true).await.unwrap(), None);
    let all = store.set_pool_drained(pool.id, true).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|w| w.drained));
    let again = store.register_worker(&worker).await.unwrap();
    assert!(again.drained, "a launcher re-registering does not undrain its worker");
    let undrained = store.set_pool_drained(pool.id, false).await.unwrap();
    assert!(undrained.iter().all(|w| !w.drained));
    let cycled = store.request_pool_cycle(pool.id, at(70)).await.unwrap();
    assert_eq!(cycled.cycle_requested_at, Some(at(70)));
    assert!(matches!(
        store.request_pool_cycle(PoolId::generate(), at(71)).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn workers_are_counted_and_idle_ones_listed_oldest_first<S: Store>(store: Arc<S>) {
    let (pool, stack, first) = world(&*store).await;
    let launcher = LauncherId::generate();
    let mut later = Vec::new();
    for created in 4..7 {
        let mut worker = worker_record(pool.id, launcher);
        worker.created_at = at(created);
        later.push(store.register_worker(&worker).await.unwrap());
    }
    let other_pool = pool_record("other");
    store.insert_pool(&other_pool).await.unwrap();
    store.register_worker(&worker_record(other_pool.id, launcher)).await.unwrap();

    let run = run_record(&stack, RunState::Ready, 10);
    store.insert_run(&run).await.unwrap();
    assert!(store.assign_run(run.id, later[0].id, at(11)).await.unwrap());
    store.set_worker_drained(later[1].id, true).await.unwrap();

    let idle = |pool_id, limit| {
        let store = Arc::clone(&store);
        async move {
            let workers = store.idle_workers(pool_id, limit).await.unwrap();
            workers.into_iter().map(|worker| worker.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(idle(pool.id, 10).await, [first.id, later[2].id], "idle, undrained, oldest first");
    assert_eq!(idle(pool.id, 1).await, [first.id]);
    assert!(idle(PoolId::generate(), 5).await.is_empty());

    let counts = store.worker_counts().await.unwrap();
    let of = |pool_id| counts.iter().find(|c| c.pool_id == pool_id).copied().unwrap();
    assert_eq!(
        of(pool.id),
        WorkerCountsRecord { pool_id: pool.id, connected: 4, busy: 1, drained: 1 }
    );
    assert_eq!(
        of(other_pool.id),
        WorkerCountsRecord { pool_id: other_pool.id, connected: 1, busy: 0, drained: 0 }
    );
    assert_eq!(counts.len(), 2);

    let (found, held_by) = store.get_run_with_launcher(run.id).await.unwrap().unwrap();
    assert_eq!((found.id, held_by), (run.id, Some(launcher)));
    let idle_run = run_record(&stack, RunState::Ready, 12);
    store.insert_run(&idle_run).await.unwrap();
    assert_eq!(store.get_run_with_launcher(idle_run.id).await.unwrap().unwrap().1, None);
    assert!(store.get_run_with_launcher(RunId::generate()).await.unwrap().is_none());

    let held = store.launcher_runs(launcher, pool.id).await.unwrap();
    assert_eq!(held.iter().map(|run| run.id).collect::<Vec<_>>(), [run.id]);
    assert!(store.launcher_runs(launcher, other_pool.id).await.unwrap().is_empty());
    assert!(store.launcher_runs(LauncherId::generate(), pool.id).await.unwrap().is_empty());

    let owned = store.launcher_workers(launcher).await.unwrap();
    assert_eq!(owned.len(), 4);
    assert!(owned.iter().all(|w| w.launcher_id == launcher));
    assert!(store.launcher_workers(LauncherId::generate()).await.unwrap().is_empty());
}

pub async fn held_runs_come_with_what_their_pickup_needs<S: Store>(store: Arc<S>) {
    let (pool, stack, _) = world(&*store).await;
    let downstream = stack_record(pool.id, "downstream");
    store.insert_stack(&downstream).await.unwrap();
    let dependency = DependencyRecord {
        downstream: downstream.id,
        upstream: stack.id,
        references: Vec::new(),
        created_at: at(3),
    };
    store.put_dependency(&dependency).await.unwrap();
    let launcher = LauncherId::generate();
    let mut workers = Vec::new();
    for created in 4..7 {
        let mut worker = worker_record(pool.id, launcher);
        worker.created_at = at(created);
        workers.push(store.register_worker(&worker).await.unwrap());
    }
    // A plan to pick up whose first log chunks are in (its launcher asks again after a
    // lost answer), an apply of a stack with an upstream, and a run executing.
    let plan = run_record(&stack, RunState::Ready, 10);
    let apply = run_record(&downstream, RunState::Confirmed, 11);
    let executing = run_record(&stack, RunState::Ready, 12);
    for (run, worker) in [&plan, &apply, &executing].into_iter().zip(&workers) {
        store.insert_run(run).await.unwrap();
        assert!(store.assign_run(run.id, worker.id, at(13)).await.unwrap());
    }
    store
        .change_run(&RunChange::new(executing.id, RunState::Ready, RunState::Planning, at(14)))
        .await
        .unwrap();
    let chunks = [(0, "a".to_owned()), (1, "b".to_owned())];
    store.append_logs(plan.id, &chunks, NO_LIMIT, at(15)).await.unwrap();
    // The apply's plan said who wrote its commit; the plan's launcher (an older one) did not.
    let author = crate::CommitAuthorRecord {
        name: "Ada".to_owned(),
        email: "ada@corp.example".to_owned(),
        authored_at: at(2),
    };
    store.set_run_commit(apply.id, "c0ffee", "Open port 443", Some(&author)).await.unwrap();
    store.set_run_commit(plan.id, "f00d", "Close port 22", None).await.unwrap();

    let held = store.held_runs(launcher, pool.id).await.unwrap();
    let runs: Vec<RunId> = held.iter().map(|held| held.run.id).collect();
    assert_eq!(runs, [plan.id, apply.id, executing.id], "in the order of their workers");
    assert_eq!(held[2].run.state, RunState::Planning);
    assert_eq!(
        (held[1].run.commit_sha.as_deref(), held[1].run.commit_message.as_deref()),
        (Some("c0ffee"), Some("Open port 443"))
    );
    let stored = |id| {
        let store = Arc::clone(&store);
        async move { store.get_stack(id).await.unwrap() }
    };
    assert_eq!(
        held[0].pickup,
        Some(PickupRecord {
            stack: stored(stack.id).await,
            next_log_seq: 2,
            has_upstreams: false,
            commit_author: None,
        })
    );
    assert_eq!(
        held[1].pickup,
        Some(PickupRecord {
            stack: stored(downstream.id).await,
            next_log_seq: 0,
            has_upstreams: true,
            commit_author: Some(author),
        })
    );
    assert!(held[1].pickup.as_ref().unwrap().stack.is_some());
    assert_eq!(held[2].pickup, None, "an executing run is not picked up");
    assert!(store.held_runs(launcher, PoolId::generate()).await.unwrap().is_empty());
    assert!(store.held_runs(LauncherId::generate(), pool.id).await.unwrap().is_empty());
}

pub async fn runs_are_prioritized_and_stop_requests_kept<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let mut run = run_record(&stack, RunState::Planning, 5);
    run.run_type = RunType::Task;
    run.command = Some("terraform state list".to_owned());
    store.insert_run(&run).await.unwrap();
    assert_eq!(
        store.get_run(run.id).await.unwrap().unwrap().command.as_deref(),
        Some("terraform state list")
    );
    let prioritized = store.prioritize_run(run.id, at(6)).await.unwrap();
    assert!(prioritized.prioritized);
    let stopping = store.request_run_stop(run.id, at(7)).await.unwrap();
    assert_eq!(stopping.stop_requested_at, Some(at(7)));
    let again = store.request_run_stop(run.id, at(8)).await.unwrap();
    assert_eq!(again.stop_requested_at, Some(at(7)), "the first request counts");
    assert!(matches!(
        store.prioritize_run(RunId::generate(), at(9)).await,
        Err(StoreError::NotFound { kind: "run", .. })
    ));
}

pub async fn dependencies_are_kept_with_their_references<S: Store>(store: Arc<S>) {
    let (pool, upstream, _) = world(&*store).await;
    let downstream = stack_record(pool.id, "downstream");
    store.insert_stack(&downstream).await.unwrap();
    let dependency = DependencyRecord {
        downstream: downstream.id,
        upstream: upstream.id,
        references: vec![OutputReferenceRecord {
            output: "vpc_id".to_owned(),
            variable: "TF_VAR_vpc".to_owned(),
            trigger_always: false,
        }],
        created_at: at(10),
    };
    store.put_dependency(&dependency).await.unwrap();
    assert_eq!(store.list_dependencies().await.unwrap(), vec![dependency.clone()]);
    let mut changed = dependency.clone();
    changed.references[0].trigger_always = true;
    store.put_dependency(&changed).await.unwrap();
    assert_eq!(store.list_dependencies().await.unwrap(), vec![changed]);
    assert!(store.delete_dependency(downstream.id, upstream.id).await.unwrap());
    assert!(!store.delete_dependency(downstream.id, upstream.id).await.unwrap());
    assert!(store.list_dependencies().await.unwrap().is_empty());
}

/// Inserts a queued run of `stack` and gives it the stack's lock as a scheduling pass
/// does; returns it as it is now.
async fn run_given_the_lock<S: Store>(
    store: &S,
    stack: &StackRecord,
    run_type: RunType,
    created: i64,
) -> RunRecord {
    let run = RunRecord { run_type, ..run_record(stack, RunState::Queued, created) };
    store.insert_run(&run).await.unwrap();
    let committed = store.commit_pass(&[run.id], &[], at(created)).await.unwrap();
    assert_eq!(committed.promoted.len(), 1);
    let stored = store.get_run(run.id).await.unwrap().unwrap();
    assert_eq!(committed.promoted[0], stored, "the pass returns the run as stored");
    stored
}

/// Moves a run from `from` to `to`, as the lifecycle does.
async fn move_run<S: Store>(store: &S, run: &RunRecord, from: RunState, to: RunState) {
    store.change_run(&RunChange::new(run.id, from, to, at(50))).await.unwrap();
}

pub async fn lock_generations_rise_each_time_a_lock_taking_run_takes_the_lock<S: Store>(
    store: Arc<S>,
) {
    let (pool, stack, _) = world(&*store).await;
    let other = stack_record(pool.id, "other");
    store.insert_stack(&other).await.unwrap();
    let first = run_given_the_lock(&*store, &stack, RunType::Tracked, 5).await;
    assert_eq!(first.lock_generation, Some(1));
    let proposed = run_given_the_lock(&*store, &stack, RunType::Proposed, 6).await;
    assert_eq!(proposed.lock_generation, None, "a proposed run takes no lock");
    let elsewhere = run_given_the_lock(&*store, &other, RunType::Task, 7).await;
    assert_eq!(elsewhere.lock_generation, Some(1), "per stack");
    move_run(&*store, &first, RunState::Ready, RunState::Failed).await;
    let task = run_given_the_lock(&*store, &stack, RunType::Task, 8).await;
    assert_eq!(task.lock_generation, Some(2));
    let ended = store.get_run(first.id).await.unwrap().unwrap();
    assert_eq!(ended.lock_generation, Some(1), "a run keeps the generation it was given");
    // A run promoted again (it is not QUEUED) takes nothing.
    assert!(store.commit_pass(&[task.id], &[], at(9)).await.unwrap().promoted.is_empty());
    let later = run_given_the_lock(&*store, &stack, RunType::Tracked, 10).await;
    assert_eq!(later.lock_generation, Some(3));
}

pub async fn a_state_upload_is_current_only_while_its_run_holds_the_lock<S: Store>(store: Arc<S>) {
    let (_, stack, _) = world(&*store).await;
    let run = run_given_the_lock(&*store, &stack, RunType::Tracked, 5).await;
    move_run(&*store, &run, RunState::Ready, RunState::Applying).await;
    let holding =
        |lock_generation| Some(StateFence { run_state: RunState::Applying, lock_generation });

    let (first, added) = store
        .add_run_state_version(stack.id, run.id, holding(Some(1)), &blob("s/1", "01", 20))
        .await
        .unwrap();
    assert!(added && !first.orphaned, "{first:?}");
    assert_eq!(store.current_state_version(stack.id).await.unwrap(), Some(first.clone()));
    let (again, added) = store
        .add_run_state_version(stack.id, run.id, holding(Some(1)), &blob("s/1", "01", 21))
        .await
        .unwrap();
    assert_eq!((again, added), (first.clone(), false), "a retried upload is the same version");
    // A launcher that sends no generation (older ones) is current while its run holds it.
    let (unfenced, _) = store
        .add_run_state_version(stack.id, run.id, holding(None), &blob("s/2", "02", 22))
        .await
        .unwrap();
    assert!(!unfenced.orphaned);

    // A generation the stack is no longer at, a state the run is no longer in, or no
    // fence at all: kept, but orphaned.
    let (stale, added) = store
        .add_run_state_version(stack.id, run.id, holding(Some(0)), &blob("s/3", "03", 23))
        .await
        .unwrap();
    assert!(added && stale.orphaned);
    let planning = Some(StateFence { run_state: RunState::Planning, lock_generation: Some(1) });
    let (moved, _) = store
        .add_run_state_version(stack.id, run.id, planning, &blob("s/4", "04", 24))
        .await
        .unwrap();
    assert!(moved.orphaned);
    let (unfenced_orphan, _) =
        store.add_run_state_version(stack.id, run.id, None, &blob("s/5", "05", 25)).await.unwrap();
    assert!(unfenced_orphan.orphaned);
    let (orphan_again, added) =
        store.add_run_state_version(stack.id, run.id, None, &blob("s/5", "05", 26)).await.unwrap();
    assert_eq!((orphan_again, added), (unfenced_orphan.clone(), false));

    // The server failed the run while it went on applying: its state is fenced off.
    move_run(&*store, &run, RunState::Applying, RunState::Failed).await;
    let (after_failure, _) = store
        .add_run_state_version(stack.id, run.id, holding(Some(1)), &blob("s/6", "06", 27))
        .await
        .unwrap();
    assert!(after_failure.orphaned);
    // The lock passed on while the run's row still said APPLYING: the generation tells.
    let lingering = run_given_the_lock(&*store, &stack, RunType::Tracked, 30).await;
    move_run(&*store, &lingering, RunState::Ready, RunState::Applying).await;
    let next = run_given_the_lock(&*store, &stack, RunType::Task, 31).await;
    move_run(&*store, &next, RunState::Ready, RunState::Performing).await;
    let (passed_on, _) = store
        .add_run_state_version(stack.id, lingering.id, holding(Some(2)), &blob("s/7", "07", 32))
        .await
        .unwrap();
    assert!(passed_on.orphaned);
    let performing = Some(StateFence { run_state: RunState::Performing, lock_generation: Some(3) });
    let (holder, _) = store
        .add_run_state_version(stack.id, next.id, performing, &blob("s/8", "08", 33))
        .await
        .unwrap();
    assert!(!holder.orphaned);

    let current = store.current_state_version(stack.id).await.unwrap().unwrap();
    assert_eq!(current, holder, "orphaned versions are never current");
    let listed: Vec<(u64, bool)> = store
        .list_state_versions(stack.id)
        .await
        .unwrap()
        .iter()
        .map(|version| (version.seq, version.orphaned))
        .collect();
    assert_eq!(
        listed,
        [(8, false), (7, true), (6, true), (5, true), (4, true), (3, true), (2, false), (1, false)]
    );
    let missing = store
        .add_run_state_version(stack.id, RunId::generate(), None, &blob("s/9", "09", 34))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound { kind: "run", .. }), "{missing}");
}

pub async fn orphaned_versions_are_adopted_as_new_versions_and_never_pruned<S: Store>(
    store: Arc<S>,
) {
    let (_, stack, _) = world(&*store).await;
    add_state_versions(&*store, &stack, "s", 2).await;
    let run = run_given_the_lock(&*store, &stack, RunType::Tracked, 5).await;
    move_run(&*store, &run, RunState::Ready, RunState::Failed).await;
    let (orphan, _) =
        store.add_run_state_version(stack.id, run.id, None, &blob("o/1", "0f", 20)).await.unwrap();
    assert_eq!((orphan.seq, orphan.orphaned), (3, true));

    // Rollbacks and adoptions do not mix: each names what it restores.
    let refused = store.rollback_state_version(stack.id, 3, "admin", at(40)).await.unwrap_err();
    assert!(matches!(refused, StoreError::NotFound { kind: "state version", .. }), "{refused}");
    let not_orphaned = store.adopt_state_version(stack.id, 2, "admin", at(40)).await.unwrap_err();
    assert!(
        matches!(not_orphaned, StoreError::NotFound { kind: "orphaned state version", .. }),
        "{not_orphaned}"
    );

    let adopted = store.adopt_state_version(stack.id, 3, "admin", at(41)).await.unwrap();
    assert_eq!((adopted.seq, adopted.run_id, adopted.orphaned), (4, run.id, false));
    assert_eq!((adopted.blob.key.as_str(), adopted.blob.created_at), ("o/1", at(41)));
    assert_eq!(adopted.adoption, Some(StateRollbackRecord { of_seq: 3, by: "admin".to_owned() }));
    assert_eq!(adopted.rollback, None);
    assert_eq!(store.current_state_version(stack.id).await.unwrap(), Some(adopted.clone()));
    let listed = store.list_state_versions(stack.id).await.unwrap();
    assert_eq!(listed[0], adopted);
    assert_eq!(listed[1], orphan, "the orphaned version stays as it was");

    // Pruning to one version keeps the orphaned one, and so its blob.
    add_state_versions(&*store, &stack, "t", 2).await;
    let mut unnamed = store.prune_state_versions(stack.id, 1).await.unwrap();
    unnamed.sort();
    assert_eq!(unnamed, ["s/1", "s/2", "t/1"], "o/1 is still named by the orphaned version");
    let kept: Vec<(u64, bool)> = store
        .list_state_versions(stack.id)
        .await
        .unwrap()
        .iter()
        .map(|version| (version.seq, version.orphaned))
        .collect();
    assert_eq!(kept, [(6, false), (3, true)]);
    let again = store.adopt_state_version(stack.id, 3, "ci", at(42)).await.unwrap();
    assert_eq!((again.seq, again.blob.key.as_str()), (7, "o/1"), "adopted as often as needed");
}
