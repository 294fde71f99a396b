//! Fuzz tests of the wire types: every body a peer sends (a launcher to the server, the
//! server to a launcher, a worker to its launcher, `init` to `sidecar` through a file the
//! worker container could write, a user to the REST API) read from arbitrary JSON and
//! from mutations of a valid body. Reading must fail cleanly or give a value that writes
//! out as JSON reading back to the same value: no panic, and nothing accepted that the
//! other side could not send again. Case counts: `gantry_testkit::fuzz`.

use gantry_proto::{agent, api, local, pod};
use gantry_testkit::fuzz::{self, mutated};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// Reads `body` as a `T`; when that succeeds, checks that the value writes out as JSON
/// that reads back to the same JSON.
fn check<T: Serialize + DeserializeOwned>(body: &[u8]) -> Result<bool, TestCaseError> {
    let Ok(value) = serde_json::from_slice::<T>(body) else { return Ok(false) };
    let written = serde_json::to_value(&value)
        .map_err(|e| TestCaseError::fail(format!("an accepted value does not write: {e}")))?;
    let again = serde_json::from_value::<T>(written.clone())
        .map_err(|e| TestCaseError::fail(format!("{written} does not read back: {e}")))?;
    prop_assert_eq!(serde_json::to_value(&again).unwrap(), written);
    Ok(true)
}

type Check = fn(&[u8]) -> Result<bool, TestCaseError>;

const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const AT: &str = "2026-03-01T12:00:00.123Z";

/// A valid body of each type, as its sender writes it.
fn bodies() -> Vec<(&'static str, Check, String)> {
    let blob = json!({"sha256": "ab12", "size": 10});
    let stack = json!({
        "id": ID, "name": "s", "repository": "https://git.example/r.git", "branch": "main",
        "project_root": "", "tool": "terraform", "runner_image": null,
        "environment": [{"name": "A", "value": "1"}, {"name": "S", "secret": true}],
        "share_sensitive_outputs": true,
    });
    let assignment = json!({
        "run_id": ID, "worker_id": ID, "run_type": "TRACKED", "job": "plan", "stack": stack,
        "commit": "abc", "command": null, "inputs": [["TF_VAR_x", "1"]],
        "sealed_inputs": [{
            "variable": "V", "output": "o", "upstream_stack": "u", "upstream_stack_id": ID,
            "upstream_run_id": ID, "blob": blob,
        }],
        "log_next_seq": 3, "managed_state": true, "state": {"run_id": ID, "blob": blob},
        "workspace": blob,
    });
    let job = json!({
        "run_id": ID, "run_type": "TASK", "job": "apply", "tool_executable": "terraform",
        "working_directory": "/w", "environment": [["A", "1"]], "plan_file": "p",
        "command": "ls", "collect_sensitive_outputs": true, "debug": false,
    });
    let worker = json!({
        "id": ID, "pool_id": ID, "status": "IDLE", "busy": false, "drained": false,
        "current_run_id": null, "metadata": {"zone": "a"}, "launcher_version": "1",
        "hostname": "h", "created_at": AT, "last_seen_at": AT,
    });
    let pool = json!({
        "id": ID, "name": "p", "kind": "private", "description": "", "labels": ["x"],
        "certificate_fingerprint": "ab", "key_algorithm": "EC P-256", "workers": 1,
        "busy_workers": 0, "drained_workers": 0, "pending_runs": 2, "used_by": ["s"],
        "created_at": AT,
    });
    let run = json!({
        "id": ID, "stack_id": ID, "stack_name": "s", "pool_id": ID, "type": "PROPOSED",
        "state": "UNCONFIRMED", "branch": "main", "commit": "abc", "commit_message": "m",
        "autodeploy": false, "command": null, "prioritized": true, "stop_requested": false,
        "triggered_by": "u", "worker_id": ID, "has_changes": true, "failure": null,
        "waiting_reason": null, "history": [{"state": "QUEUED", "at": AT}],
        "outputs": [{"name": "o", "value": {"a": [1, 2.5, "x"]}, "sensitive": false}],
        "created_at": AT, "updated_at": "2026-03-01T13:00:00+01:00",
    });
    let reports = [
        json!({"kind": "commit_resolved", "sha": "abc", "message": "m"}),
        json!({"kind": "phase_started", "phase": "PLANNING"}),
        json!({"kind": "planned", "has_changes": true}),
        json!({"kind": "workspace_stored", "sha256": "ab", "size": 3}),
        json!({"kind": "outputs", "outputs": [{"name": "o", "value": 1, "sensitive": true}]}),
        json!({"kind": "failed", "message": "no"}),
    ];
    let launcher = json!({"id": ID, "version": "1", "hostname": "h", "protocol_version": 1});
    let mut bodies: Vec<(&'static str, Check, Value)> = vec![
        ("ChallengeRequest", check::<agent::ChallengeRequest>, json!({"pool_id": ID})),
        (
            "ChallengeResponse",
            check::<agent::ChallengeResponse>,
            json!({"challenge": "c.1.n.t", "certificate_fingerprint": "ab"}),
        ),
        (
            "OpenSession",
            check::<agent::OpenSession>,
            json!({"pool_id": ID, "challenge": "c", "signature": "c2ln", "launcher": launcher}),
        ),
        (
            "SessionOpened",
            check::<agent::SessionOpened>,
            json!({
                "session_token": "gst_x", "launcher_id": ID, "expires_in_seconds": 3600,
                "heartbeat_interval_seconds": 10, "poll_timeout_seconds": 30,
            }),
        ),
        (
            "RegisterWorkers",
            check::<agent::RegisterWorkers>,
            json!({"workers": [{"previous_id": ID, "metadata": {"zone": "a"}}, {}]}),
        ),
        ("WorkersRegistered", check::<agent::WorkersRegistered>, json!({"worker_ids": [ID]})),
        ("LeaveWorkers", check::<agent::LeaveWorkers>, json!({"worker_ids": [ID]})),
        ("WorkersLeft", check::<agent::WorkersLeft>, json!({"left": [ID], "busy": []})),
        (
            "Poll",
            check::<agent::Poll>,
            json!({"wait_seconds": 30, "holding": [{"run_id": ID, "job": "apply"}]}),
        ),
        (
            "PollResponse",
            check::<agent::PollResponse>,
            json!({"assignments": [assignment], "stop_run_ids": [ID], "cycle": false}),
        ),
        ("Acknowledge", check::<agent::Acknowledge>, json!({"worker_id": ID, "job": "plan"})),
        (
            "Heartbeat",
            check::<agent::Heartbeat>,
            json!({"worker_ids": [ID], "running_run_ids": [ID]}),
        ),
        (
            "HeartbeatResponse",
            check::<agent::HeartbeatResponse>,
            json!({"unknown_worker_ids": [], "stop_run_ids": [ID], "cycle": true}),
        ),
        (
            "ReportResponse",
            check::<agent::ReportResponse>,
            json!({"directive": "upload_workspace"}),
        ),
        (
            "UploadLogs",
            check::<agent::UploadLogs>,
            json!({"chunks": [{"seq": 0, "text": "a\u{1b}[31mb\n"}, {"seq": 1, "text": ""}]}),
        ),
        ("LogsAccepted", check::<agent::LogsAccepted>, json!({"next_seq": 2})),
        (
            "WorkerBinary",
            check::<agent::WorkerBinary>,
            json!({"arch": "x86_64", "sha256": "ab", "size": 1, "signature": "c2ln"}),
        ),
        ("WorkerJob", check::<local::WorkerJob>, job.clone()),
        ("WorkerLog", check::<local::WorkerLog>, json!({"text": "plan: 1 to add"})),
        (
            "WorkerReport",
            check::<local::WorkerReport>,
            json!({
                "report": {"kind": "outputs", "outputs": []},
                "sensitive_outputs": [{"name": "s", "value": {"k": "v"}}],
            }),
        ),
        ("WorkerDirective", check::<local::WorkerDirective>, json!({"directive": "finish"})),
        (
            "PodHandoff",
            check::<pod::PodHandoff>,
            json!({
                "version": 1, "run_id": ID, "job": job, "log_next_seq": 4,
                "deadline_unix_ms": 1_790_000_000_000u64, "managed_state": true,
                "state_before": "ab",
            }),
        ),
        (
            "ErrorResponse",
            check::<api::ErrorResponse>,
            json!({"error": {"code": "not_found", "message": "m"}}),
        ),
        (
            "CreatePool",
            check::<api::CreatePool>,
            json!({"name": "p", "csr": "-----BEGIN", "description": "d", "labels": ["a"]}),
        ),
        ("ResetPool", check::<api::ResetPool>, json!({"csr": "x"})),
        ("PoolCreated", check::<api::PoolCreated>, json!({"pool": pool, "token": "t"})),
        (
            "CreateStack",
            check::<api::CreateStack>,
            json!({
                "name": "s", "repository": "r", "branch": "b", "project_root": "p", "pool": "p",
                "tool": "tofu", "runner_image": "i", "autodeploy": true, "managed_state": true,
                "share_sensitive_outputs": false,
                "environment": [{"name": "A", "value": "1", "secret": true}],
                "description": "", "labels": [],
            }),
        ),
        (
            "TriggerRun",
            check::<api::TriggerRun>,
            json!({"type": "task", "commit": "abc", "command": "ls"}),
        ),
        (
            "AddDependency",
            check::<api::AddDependency>,
            json!({
                "upstream": "u",
                "references": [{"output": "o", "variable": "V", "trigger_always": true}],
            }),
        ),
        ("WorkerList", check::<api::WorkerList>, json!({"workers": [worker]})),
        ("RunList", check::<api::RunList>, json!({"runs": [run]})),
        (
            "LogPage",
            check::<api::LogPage>,
            json!({
                "chunks": [{"seq": 0, "text": "t", "at": AT}], "next_seq": 1, "complete": false,
            }),
        ),
        ("StreamEnd", check::<api::StreamEnd>, json!({"state": "FINISHED"})),
        (
            "Queue",
            check::<api::Queue>,
            json!({"pool": "p", "entries": [{"run": run, "in_progress": true}]}),
        ),
        (
            "Dependencies",
            check::<api::Dependencies>,
            json!({
                "upstream": [{"upstream_id": ID, "upstream": "u", "references": []}],
                "downstream": ["d"],
            }),
        ),
        ("Health", check::<api::Health>, json!({"status": "ok", "version": "1"})),
    ];
    for report in reports {
        bodies.push(("ReportRequest", check::<agent::ReportRequest>, json!({"report": report})));
    }
    bodies.into_iter().map(|(name, check, body)| (name, check, body.to_string())).collect()
}

#[test]
fn every_sample_body_is_valid() {
    // Mutations start from bodies a sender really writes, or they exercise little.
    for (name, check, body) in bodies() {
        assert!(check(body.as_bytes()).unwrap(), "the sample {name} does not read: {body}");
    }
}

/// Words the wire types use: field names, enum texts, report kinds, an id and times.
const WORDS: &str = "
    pool_id challenge signature launcher id version hostname protocol_version workers
    previous_id metadata worker_ids wait_seconds holding run_id job plan apply report kind
    phase PLANNING APPLYING commit_resolved phase_started planned workspace_stored outputs
    applied failed stopped chunks seq text running_run_ids name value sensitive
    sensitive_outputs directive finish csr type TRACKED task command commit state QUEUED at
    tool terraform tofu environment secret upstream references output variable status IDLE
    created_at 01ARZ3NDEKTSV4RRFFQ69G5FAV 2026-03-01T12:00:00.123Z 1969-12-31T23:59:59.9999Z
    9999-12-31T23:59:59Z
";

fn sample_and_mutations() -> impl Strategy<Value = (usize, Vec<u8>)> {
    let count = bodies().len();
    (0..count).prop_flat_map(|index| {
        let body = bodies()[index].2.clone().into_bytes();
        (Just(index), mutated(body))
    })
}

proptest! {
    #![proptest_config(fuzz::config(512))]

    #[test]
    fn arbitrary_json_reads_as_no_type_or_round_trips(value in fuzz::json(WORDS)) {
        let body = serde_json::to_vec(&value).unwrap();
        for (_, check, _) in bodies() {
            check(&body)?;
        }
    }

    #[test]
    fn mutated_bodies_read_cleanly_or_round_trip((index, body) in sample_and_mutations()) {
        let (_, check, _) = &bodies()[index];
        check(&body)?;
    }

    #[test]
    fn arbitrary_bytes_read_cleanly(body in prop::collection::vec(any::<u8>(), 0..256)) {
        for (_, check, _) in bodies() {
            check(&body)?;
        }
    }
}
