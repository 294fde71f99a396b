//! A crash between a run's change and its effects loses nothing: the change is committed
//! through the real lifecycle by a server whose effects loop never runs (it "crashed"
//! right after the commit), and a server started afterwards on the same database carries
//! the effects out, once, however often it starts and however many replicas share it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::http::Method;
use gantry_domain::scheduler::WaitReason;
use gantry_domain::{RunEvent, RunState};
use gantry_store::{
    BlobStore, BlobStream, BlobWritten, Effect, ObjectBlobStore, RunChange, RunFilter, RunRecord,
    StoreError,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Database;
use crate::lifecycle::{self, Details};
use crate::state::{AppState, now};
use crate::{Server, ServerConfig};

/// A server process on a database: serving (its effects loop running), or only started,
/// as one that crashed right after its last commit.
struct Process {
    state: AppState,
    router: Router,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Process {
    async fn start(config: ServerConfig, serve: bool) -> Self {
        let server = Server::start(config).await.unwrap();
        Self::of(server, serve)
    }

    fn of(server: Server, serve: bool) -> Self {
        let state = server.app_state();
        let router = crate::router(state.clone());
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = serve.then(|| {
            tokio::spawn(async move { server.serve(signal.cancelled_owned()).await.unwrap() })
        });
        Self { state, router, stop, task }
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    async fn api(&self, admin: &str, method: Method, path: &str, body: Value) -> Value {
        let (status, answer) =
            crate::test_routes::call_api(&self.router, admin, method, path, body).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// A pool `p`, and for each `(downstream, upstream)` both stacks and the dependency.
    async fn stacks_depending(&self, admin: &str, pairs: &[(&str, &str)]) {
        let key = gantry_crypto::generate_pool_key("p").unwrap();
        self.api(admin, Method::POST, "/pools", json!({"name": "p", "csr": key.csr_pem})).await;
        let mut created = std::collections::HashSet::new();
        for (downstream, upstream) in pairs {
            for name in [downstream, upstream] {
                if created.insert(*name) {
                    let stack = json!({"name": name, "repository": "https://git.example.com/x.git", "pool": "p"});
                    self.api(admin, Method::POST, "/stacks", stack).await;
                }
            }
            let path = format!("/stacks/{downstream}/dependencies");
            self.api(admin, Method::POST, &path, json!({"upstream": upstream})).await;
        }
    }

    async fn trigger(&self, admin: &str, stack: &str) -> RunRecord {
        let run = self.api(admin, Method::POST, &format!("/stacks/{stack}/runs"), json!({})).await;
        let id = run["id"].as_str().unwrap().parse().unwrap();
        self.state.store.get_run(id).await.unwrap().unwrap()
    }

    /// Takes `run` to APPLYING as its launcher would have (the store applies what it is
    /// told), then ends it with `event` through the lifecycle.
    async fn end_applying(&self, run: &RunRecord, event: RunEvent) -> RunRecord {
        let applying = RunChange::new(run.id, run.state, RunState::Applying, now());
        let applying = self.state.store.change_run(&applying).await.unwrap();
        let failure = (event == RunEvent::Fail).then(|| "the apply failed".to_owned());
        let details = Details { failure, ..Details::default() };
        lifecycle::apply(&self.state, &applying, &event, details).await.unwrap()
    }

    async fn runs_of(&self, stack: &str) -> Vec<RunRecord> {
        let stack = self.state.store.find_stack_by_name(stack).await.unwrap().unwrap();
        let filter = RunFilter { stack_id: Some(stack.id), limit: 100 };
        self.state.store.list_runs(&filter).await.unwrap()
    }

    /// Waits until the outbox is empty, for up to 20 s.
    async fn effects_carried_out(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let pending = self.state.store.pending_effects().await.unwrap();
            if pending.is_empty() {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "still pending: {pending:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn sqlite_config(data_dir: &std::path::Path) -> ServerConfig {
    ServerConfig::for_tests(data_dir)
}

/// A server on a SQLite file in `data_dir` whose effects loop never runs, as one killed
/// right after each commit, with the stacks of `pairs` (`(downstream, upstream)`)
/// created; and its admin key.
async fn crashing_server(data_dir: &std::path::Path, pairs: &[(&str, &str)]) -> (Process, String) {
    let mut server = Server::start(sqlite_config(data_dir)).await.unwrap();
    let admin = server.take_initial_admin_key().unwrap();
    let crashing = Process::of(server, false);
    crashing.stacks_depending(&admin, pairs).await;
    (crashing, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_whose_server_crashed_before_its_cascade_triggers_its_dependents_once() {
    let data = tempfile::tempdir().unwrap();
    let (crashed, admin) =
        crashing_server(data.path(), &[("app", "network"), ("audit", "network")]).await;
    let upstream = crashed.trigger(&admin, "network").await;
    let finished = crashed.end_applying(&upstream, RunEvent::Applied).await;
    assert_eq!(finished.state, RunState::Finished);
    let pending = crashed.state.store.pending_effects().await.unwrap();
    assert!(
        pending.iter().any(|p| p.effect == Effect::RunEnded { run_id: upstream.id }),
        "the run's end is recorded with the run's change: {pending:?}"
    );
    assert_eq!(crashed.runs_of("app").await, vec![], "nothing carried it out");
    drop(crashed);

    let restarted = Process::start(sqlite_config(data.path()), true).await;
    restarted.effects_carried_out().await;
    let triggered_by = format!("dependency:{}", upstream.id);
    for stack in ["app", "audit"] {
        let runs = restarted.runs_of(stack).await;
        assert_eq!(runs.len(), 1, "{stack}: {runs:?}");
        assert_eq!(runs[0].triggered_by, triggered_by);
    }
    restarted.stop().await;

    // Carried out again, as after a crash between the trigger and the effect's deletion:
    // nothing more.
    let again = Process::start(sqlite_config(data.path()), true).await;
    let replay = Effect::RunEnded { run_id: upstream.id };
    again.state.store.add_effects(&[replay], now()).await.unwrap();
    again.state.events.wake_effects();
    again.effects_carried_out().await;
    for stack in ["app", "audit"] {
        assert_eq!(again.runs_of(stack).await.len(), 1, "{stack}");
    }
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_runs_dependents_wait_for_its_cascade_and_are_skipped_after_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let (crashed, admin) = crashing_server(data.path(), &[("app", "network")]).await;
    let upstream = crashed.trigger(&admin, "network").await;
    let waiting = crashed.trigger(&admin, "app").await;
    let failed = crashed.end_applying(&upstream, RunEvent::Fail).await;
    assert_eq!(failed.state, RunState::Failed);
    drop(crashed);

    // Before any effects loop ran, a scheduling pass holds the downstream run back: the
    // upstream run's end may skip it.
    let recovering = Process::start(sqlite_config(data.path()), false).await;
    let pass = crate::scheduling::pass(&recovering.state).await.unwrap();
    assert!(!pass.decision.promotions.contains(&waiting.id), "{:?}", pass.decision);
    let reason = pass.decision.waiting.iter().find(|w| w.run_id == waiting.id).map(|w| w.reason);
    assert_eq!(reason, Some(WaitReason::Dependency { stack: upstream.stack_id, run: upstream.id }));
    drop(recovering);

    let restarted = Process::start(sqlite_config(data.path()), true).await;
    restarted.effects_carried_out().await;
    let skipped = restarted.state.store.get_run(waiting.id).await.unwrap().unwrap();
    assert_eq!(skipped.state, RunState::Skipped, "{skipped:?}");
    assert!(skipped.failure.unwrap().contains(&upstream.id.to_string()));
    // A run queued after the upstream run ended is not the cascade's to skip, even when
    // the cascade is carried out again.
    let later = restarted.trigger(&admin, "app").await;
    let replay = Effect::RunEnded { run_id: upstream.id };
    restarted.state.store.add_effects(&[replay], now()).await.unwrap();
    restarted.state.events.wake_effects();
    restarted.effects_carried_out().await;
    let later = restarted.state.store.get_run(later.id).await.unwrap().unwrap();
    assert_ne!(later.state, RunState::Skipped);
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_runs_workspace_is_forgotten_with_its_change_and_deleted_after_a_crash() {
    let data = tempfile::tempdir().unwrap();
    let (crashed, admin) = crashing_server(data.path(), &[("app", "network")]).await;
    let run = crashed.trigger(&admin, "network").await;
    let key = format!("runs/{}/workspace", run.id.to_string().to_ascii_lowercase());
    let body: BlobStream =
        Box::pin(futures_util::stream::iter([Ok(axum::body::Bytes::from_static(b"sealed"))]));
    let written = crashed.state.blobs.put(&key, body, 1024).await.unwrap();
    let record = gantry_store::BlobRecord {
        key: key.clone(),
        sha256: written.sha256,
        size: written.size,
        created_at: now(),
    };
    crashed.state.store.put_run_blob(run.id, crate::agent::WORKSPACE, &record).await.unwrap();
    crashed.end_applying(&run, RunEvent::Applied).await;
    let workspace = crashed.state.store.run_blob(run.id, crate::agent::WORKSPACE).await.unwrap();
    assert_eq!(workspace, None, "no row names the blob once the run ended");
    assert!(crashed.state.blobs.get(&key).await.unwrap().is_some(), "nothing deleted it yet");
    drop(crashed);

    let restarted = Process::start(sqlite_config(data.path()), true).await;
    restarted.effects_carried_out().await;
    assert!(restarted.state.blobs.get(&key).await.unwrap().is_none());
    restarted.stop().await;
}

/// Which replicas deleted each blob.
type Deletions = Arc<Mutex<HashMap<String, Vec<&'static str>>>>;

/// The real blob store, noting the deletions a replica makes.
#[derive(Debug)]
struct CountingBlobs {
    inner: ObjectBlobStore,
    replica: &'static str,
    deletions: Deletions,
}

#[async_trait]
impl BlobStore for CountingBlobs {
    async fn put(
        &self,
        key: &str,
        body: BlobStream,
        max_size: u64,
    ) -> Result<BlobWritten, StoreError> {
        self.inner.put(key, body, max_size).await
    }

    async fn get(&self, key: &str) -> Result<Option<(u64, BlobStream)>, StoreError> {
        self.inner.get(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        {
            let mut deletions = self.deletions.lock().unwrap_or_else(PoisonError::into_inner);
            deletions.entry(key.to_owned()).or_default().push(self.replica);
        }
        self.inner.delete(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgres_carry_each_effect_out_once() {
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    // One data directory (one master key) and one blob directory for every replica.
    let data = tempfile::tempdir().unwrap();
    let deletions: Deletions = Arc::default();
    let replica = |name: &'static str| {
        let mut config = ServerConfig::for_tests(data.path());
        config.database = Database::Postgres(url.clone());
        let deletions = Arc::clone(&deletions);
        let url = url.clone();
        async move {
            let store: Arc<dyn gantry_store::Store> =
                Arc::new(gantry_store::PostgresStore::connect(&url).await.unwrap());
            let inner = ObjectBlobStore::open(&config.blob_store).await.unwrap();
            let blobs = Arc::new(CountingBlobs { inner, replica: name, deletions });
            Server::start_with_store(config, store, blobs).await.unwrap()
        }
    };

    // Ends recorded by a replica that crashed before carrying any out.
    let mut first = replica("crashed").await;
    let admin = first.take_initial_admin_key().unwrap();
    let crashed = Process::of(first, false);
    let pairs: Vec<(String, String)> =
        (0..6).map(|i| (format!("app-{i}"), format!("network-{i}"))).collect();
    let pairs_ref: Vec<(&str, &str)> =
        pairs.iter().map(|(d, u)| (d.as_str(), u.as_str())).collect();
    crashed.stacks_depending(&admin, &pairs_ref).await;
    let mut upstream_runs = Vec::new();
    for (_, upstream) in &pairs {
        let run = crashed.trigger(&admin, upstream).await;
        crashed.end_applying(&run, RunEvent::Applied).await;
        upstream_runs.push(run);
    }
    // More than one claim's batch: both replicas' loops take part.
    let keys: Vec<String> = (0..160).map(|i| format!("left/{i:03}")).collect();
    for key in &keys {
        let body: BlobStream =
            Box::pin(futures_util::stream::iter([Ok(axum::body::Bytes::from_static(b"x"))]));
        crashed.state.blobs.put(key, body, 16).await.unwrap();
    }
    let deletions_left: Vec<Effect> =
        keys.iter().map(|key| Effect::DeleteBlob { key: key.clone() }).collect();
    crashed.state.store.add_effects(&deletions_left, now()).await.unwrap();
    assert_eq!(crashed.state.store.pending_effects().await.unwrap().len(), 6 + keys.len());
    drop(crashed);

    // Two replicas serve at once; both loops claim from the same outbox.
    // (Opened one after the other: two blob stores opening one directory at once race on
    // its write check.)
    let (one, two) = (replica("one").await, replica("two").await);
    let (one, two) = (Process::of(one, true), Process::of(two, true));
    one.effects_carried_out().await;
    for ((downstream, _), upstream) in pairs.iter().zip(&upstream_runs) {
        let runs = one.runs_of(downstream).await;
        assert_eq!(runs.len(), 1, "{downstream}: {runs:?}");
        assert_eq!(runs[0].triggered_by, format!("dependency:{}", upstream.id));
    }
    let deletions = deletions.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for key in &keys {
        let by = deletions.get(key).map(Vec::len);
        assert_eq!(by, Some(1), "{key} deleted once: {:?}", deletions.get(key));
        assert!(one.state.blobs.get(key).await.unwrap().is_none());
    }
    for name in ["one", "two"] {
        let done = deletions.values().filter(|by| by.contains(&name)).count();
        assert!(done > 0, "replica {name} carried out none of them: {deletions:?}");
    }
    one.stop().await;
    two.stop().await;
}
