//! Schedules on real stores, with the clock passed in: a firing missed across an outage
//! runs once, a firing is taken once by replicas on one PostgreSQL, a crash between the
//! trigger and the move on triggers nothing more, and a slow run is not piled upon.

use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use gantry_domain::RunState;
use gantry_store::{RunChange, RunFilter, RunRecord, ScheduleRecord};
use serde_json::{Value, json};

use super::fire_due;
use crate::config::Database;
use crate::state::{AppState, now};
use crate::{Server, ServerConfig};

/// A started server (its background loops not running: the tests fire schedules and
/// carry effects out themselves, at the instants they choose) and its admin key.
pub(crate) struct Replica {
    pub(crate) state: AppState,
    router: Router,
    admin: String,
    _server: Server,
}

impl Replica {
    pub(crate) async fn start(config: ServerConfig, admin: Option<&str>) -> Self {
        let mut server = Server::start(config).await.unwrap();
        let admin = match admin {
            Some(admin) => admin.to_owned(),
            None => server.take_initial_admin_key().unwrap(),
        };
        let state = server.app_state();
        let router = crate::router(state.clone());
        Self { state, router, admin, _server: server }
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        crate::test_routes::call_api(&self.router, &self.admin, method, path, body).await
    }

    /// Pool `p` and the stacks `names` on it.
    pub(crate) async fn stacks(&self, names: &[&str]) {
        let key = gantry_crypto::generate_pool_key("p").unwrap();
        let (status, body) =
            self.call(Method::POST, "/pools", json!({"name": "p", "csr": key.csr_pem})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        for name in names {
            let stack =
                json!({"name": name, "repository": "https://git.example.com/x.git", "pool": "p"});
            let (status, body) = self.call(Method::POST, "/stacks", stack).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }

    pub(crate) async fn schedule(&self, stack: &str, request: Value) -> ScheduleRecord {
        let (status, body) =
            self.call(Method::POST, &format!("/stacks/{stack}/schedules"), request).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_str().unwrap();
        self.state
            .store
            .list_schedules(None)
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.id == id)
            .unwrap()
    }

    pub(crate) async fn runs_of(&self, stack: &str) -> Vec<RunRecord> {
        let stack = self.state.store.find_stack_by_name(stack).await.unwrap().unwrap();
        let filter = RunFilter { stack_id: Some(stack.id), limit: 100 };
        self.state.store.list_runs(&filter).await.unwrap()
    }

    pub(crate) async fn reread(&self, schedule: &ScheduleRecord) -> ScheduleRecord {
        let all = self.state.store.list_schedules(None).await.unwrap();
        all.into_iter().find(|s| s.id == schedule.id).unwrap()
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firings_missed_across_an_outage_run_once_and_the_schedule_moves_past_them() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app"]).await;
    let hourly = server.schedule("app", json!({"kind": "tracked", "cron": "0 * * * *"})).await;
    let created = now();
    assert!(hourly.next_fire_at > created && hourly.next_fire_at <= created.plus(HOUR));
    assert_eq!(hourly.next_fire_at.unix_millis() % HOUR.as_millis() as i64, 0);
    assert_eq!(fire_due(&server.state, created).await.unwrap(), 0, "not due yet");

    // Back three days (72 firings) later.
    let back = hourly.next_fire_at.plus(HOUR * 72).plus(Duration::from_secs(90));
    assert_eq!(fire_due(&server.state, back).await.unwrap(), 1);
    assert_eq!(fire_due(&server.state, back).await.unwrap(), 0);
    let [run] = server.runs_of("app").await.try_into().unwrap();
    assert_eq!(run.run_type, gantry_domain::RunType::Tracked);
    assert_eq!(
        run.triggered_by,
        format!(
            "schedule:tracked:{} at {}",
            hourly.id,
            gantry_proto::format_timestamp(hourly.next_fire_at)
        )
    );
    let moved = server.reread(&hourly).await;
    assert_eq!(moved.last_fired_at, Some(hourly.next_fire_at));
    assert_eq!(moved.last_outcome, Some(format!("tracked run {}", run.id)));
    assert_eq!(
        moved.next_fire_at,
        hourly.next_fire_at.plus(HOUR * 73),
        "the next hour after the return"
    );

    // Survives a restart: the schedule is in the database, and fires at its next hour.
    drop(server);
    let restarted = Replica::start(ServerConfig::for_tests(data.path()), Some("")).await;
    let later = moved.next_fire_at.plus(Duration::from_secs(1));
    assert_eq!(fire_due(&restarted.state, later).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_whose_server_died_before_moving_the_schedule_on_triggers_no_second_run() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app"]).await;
    let task = json!({"kind": "task", "cron": "30 2 * * *", "time_zone": "Europe/Berlin", "command": "terraform output"});
    let nightly = server.schedule("app", task).await;
    let stack = server.state.store.find_stack_by_name("app").await.unwrap().unwrap();
    // The trigger, committed; the move on, never.
    let at = nightly.next_fire_at.plus(Duration::from_secs(1));
    let outcome =
        super::trigger(&server.state, &nightly, &stack, nightly.next_fire_at).await.unwrap();
    let [run] = server.runs_of("app").await.try_into().unwrap();
    assert_eq!(outcome, format!("task run {}", run.id));
    assert_eq!(run.command.as_deref(), Some("terraform output"));
    assert_eq!(server.reread(&nightly).await.next_fire_at, nightly.next_fire_at, "still due");

    assert_eq!(fire_due(&server.state, at).await.unwrap(), 1);
    assert_eq!(server.runs_of("app").await.len(), 1, "the firing's run was found, not repeated");
    assert_eq!(server.reread(&nightly).await.last_outcome, Some(outcome));

    // The run has not ended by the next night: that firing is skipped, not queued behind it.
    let next_night = server.reread(&nightly).await.next_fire_at;
    assert_eq!(fire_due(&server.state, next_night).await.unwrap(), 1);
    assert_eq!(server.runs_of("app").await.len(), 1);
    let skipped = server.reread(&nightly).await.last_outcome.unwrap();
    assert!(
        skipped.starts_with(&format!("skipped: run {} of an earlier firing", run.id)),
        "{skipped}"
    );

    // Once it has ended, the next night triggers again.
    let stopped = RunChange::new(run.id, run.state, RunState::Stopped, now());
    server.state.store.change_run(&stopped).await.unwrap();
    let third_night = server.reread(&nightly).await.next_fire_at;
    assert_eq!(fire_due(&server.state, third_night).await.unwrap(), 1);
    assert_eq!(server.runs_of("app").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_postgres_take_each_firing_once() {
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    let data = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = ServerConfig::for_tests(data.path());
        config.database = Database::Postgres(url.clone());
        config
    };
    let first = Replica::start(config(), None).await;
    let second = Replica::start(config(), Some(&first.admin)).await;
    let stacks: Vec<String> = (0..8).map(|i| format!("app-{i}")).collect();
    first.stacks(&stacks.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let mut schedules = Vec::new();
    for stack in &stacks {
        let request =
            json!({"kind": "drift", "cron": "*/15 * * * *", "time_zone": "America/New_York"});
        schedules.push(first.schedule(stack, request).await);
    }
    let due = schedules.iter().map(|s| s.next_fire_at).max().unwrap().plus(Duration::from_secs(1));
    // Both look at the same instant, again and again, as their loops would.
    let mut taken = 0;
    for _ in 0..3 {
        let (a, b) = tokio::join!(fire_due(&first.state, due), fire_due(&second.state, due));
        taken += a.unwrap() + b.unwrap();
    }
    assert_eq!(taken, stacks.len(), "each firing taken by one replica");
    for stack in &stacks {
        let runs = first.runs_of(stack).await;
        assert_eq!(runs.len(), 1, "{stack}: {runs:?}");
        assert!(super::is_drift_check(&runs[0].triggered_by), "{}", runs[0].triggered_by);
        assert_eq!(runs[0].run_type, gantry_domain::RunType::Proposed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_refused_with_the_reason_and_listed_and_deleted_per_stack() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app", "db"]).await;
    let refused = [
        (json!({"kind": "nightly", "cron": "0 3 * * *"}), "not a schedule kind"),
        (json!({"kind": "tracked", "cron": "0 3 * *"}), "five"),
        (
            json!({"kind": "tracked", "cron": "0 3 * * *", "time_zone": "Mars/Olympus"}),
            "Mars/Olympus",
        ),
        (json!({"kind": "tracked", "cron": "0 0 30 2 *"}), "never"),
        (json!({"kind": "task", "cron": "0 3 * * *"}), "needs a command"),
        (json!({"kind": "task", "cron": "0 3 * * *", "command": "  "}), "needs a command"),
        (json!({"kind": "drift", "cron": "0 3 * * *", "command": "ls"}), "only a task"),
        (json!({"kind": "task", "cron": "0 3 * * *", "command": "x".repeat(5000)}), "5000 bytes"),
        (json!({"kind": "tracked", "cron": "0 3 * * *", "every": "day"}), "every"),
    ];
    for (request, reason) in refused {
        let (status, body) =
            server.call(Method::POST, "/stacks/app/schedules", request.clone()).await;
        assert!(status.is_client_error(), "{request}: {status} {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{request}: {message:?} should name {reason:?}");
    }
    assert_eq!(server.state.store.list_schedules(None).await.unwrap(), vec![], "nothing stored");

    let drift = server
        .schedule("app", json!({"kind": "drift", "cron": "@daily", "time_zone": "Asia/Tokyo"}))
        .await;
    server.schedule("db", json!({"kind": "tracked", "cron": "0 6 * * MON-FRI"})).await;
    let (status, listed) = server.call(Method::GET, "/stacks/app/schedules", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    let [shown] = listed["schedules"].as_array().unwrap().clone().try_into().unwrap();
    assert_eq!(
        (shown["id"].as_str(), shown["time_zone"].as_str()),
        (Some(drift.id.as_str()), Some("Asia/Tokyo"))
    );
    assert_eq!(shown["next_fire_at"], gantry_proto::format_timestamp(drift.next_fire_at));
    // Midnight in Tokyo is 15:00 UTC.
    assert_eq!(
        drift.next_fire_at.unix_millis() % (24 * HOUR.as_millis() as i64),
        15 * HOUR.as_millis() as i64
    );

    // A schedule is deleted only through its own stack.
    let of_app = format!("/stacks/db/schedules/{}", drift.id);
    assert_eq!(server.call(Method::DELETE, &of_app, Value::Null).await.0, StatusCode::NOT_FOUND);
    let path = format!("/stacks/app/schedules/{}", drift.id);
    assert_eq!(server.call(Method::DELETE, &path, Value::Null).await.0, StatusCode::OK);
    assert_eq!(server.call(Method::DELETE, &path, Value::Null).await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.state.store.list_schedules(None).await.unwrap().len(), 1);

    for _ in 0..super::MAX_PER_STACK {
        server.schedule("app", json!({"kind": "tracked", "cron": "0 3 * * *"})).await;
    }
    let (status, body) = server
        .call(
            Method::POST,
            "/stacks/app/schedules",
            json!({"kind": "tracked", "cron": "0 4 * * *"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}
