//! The authorization matrix, built from the route tables that build the routers: every
//! REST and UI route × every role × a key reaching everything, or scoped to one pool and
//! asked about it or about another → the exact status. A route added without a probe
//! here fails the test; one cannot be added without a decision (the table needs one).
//!
//! Each route has a probe: a request whose answer, once authorized, is the same whatever
//! ran before it (a drain of a drained pool, a confirmation of a stopped run, a creation
//! of a name that exists), so the matrix can run in any order on one server.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gantry_crypto::{generate_pool_key, hash_secret};
use gantry_domain::access::Role;
use gantry_domain::{LauncherId, WorkerId};
use gantry_store::{UiSessionRecord, WorkerRecord};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::routes::{Guarded, Target};
use crate::state::{AppState, now};
use crate::{Server, ServerConfig};

/// What a probe acts on: the pool a scoped key reaches, or the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Inside,
    Outside,
}

/// One pool's fixtures: the pool, a stack on it, a stopped run of that stack, a worker.
#[derive(Debug, Clone)]
struct Fixtures {
    pool: String,
    stack: String,
    run: String,
    worker: String,
}

/// A probe's request for one side, and its status once authorized.
struct Probe {
    path: String,
    body: Option<Value>,
    authorized: StatusCode,
}

/// How a plane's routes are probed.
type ProbeOf = fn(&Method, &str, &Fixtures) -> Option<Probe>;

/// A key of the matrix: its role, whether it is scoped to the inside pool, and how it
/// authenticates on each plane.
struct Key {
    role: Role,
    scoped: bool,
    secret: String,
    cookie: String,
    csrf: String,
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Body,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = router.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    // Live streams never end: their status is all there is to check.
    let body = tokio::time::timeout(
        Duration::from_millis(200),
        axum::body::to_bytes(response.into_body(), usize::MAX),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    .unwrap_or_default();
    (status, body)
}

async fn api(router: &Router, secret: &str, method: Method, path: &str, body: Value) -> Value {
    let headers = [
        ("authorization", format!("Bearer {secret}")),
        ("content-type", "application/json".into()),
    ];
    let (status, answer) =
        call(router, method, &format!("/api/v1{path}"), &headers, Body::from(body.to_string()))
            .await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    serde_json::from_str(&answer).unwrap_or(Value::Null)
}

/// A pool with a stack, a worker, and a run stopped before it started.
async fn fixtures(router: &Router, state: &AppState, admin: &str, name: &str) -> Fixtures {
    let key = generate_pool_key(name).unwrap();
    let pool = json!({"name": name, "csr": key.csr_pem, "labels": [format!("{name}-label")]});
    let created = api(router, admin, Method::POST, "/pools", pool).await;
    let pool_id = created["pool"]["id"].as_str().unwrap().parse().unwrap();
    let stack = format!("{name}-stack");
    let repository = "https://git.example.com/x.git";
    let request =
        json!({"name": stack, "repository": repository, "pool": name, "managed_state": true});
    api(router, admin, Method::POST, "/stacks", request).await;
    let run = api(router, admin, Method::POST, &format!("/stacks/{stack}/runs"), json!({})).await;
    let run = run["id"].as_str().unwrap().to_owned();
    api(router, admin, Method::POST, &format!("/runs/{run}/stop"), json!({})).await;
    let worker = WorkerRecord {
        id: WorkerId::generate(),
        pool_id,
        launcher_id: LauncherId::generate(),
        metadata: BTreeMap::new(),
        launcher_version: "0.0.0".to_owned(),
        hostname: "host".to_owned(),
        drained: true,
        current_run_id: None,
        created_at: now(),
        last_seen_at: now(),
    };
    state.store.register_worker(&worker).await.unwrap();
    Fixtures { pool: name.to_owned(), stack, run, worker: worker.id.to_string() }
}

/// A key of `role` made through the API, signed in to the UI.
async fn key(router: &Router, state: &AppState, admin: &str, role: Role, scoped: bool) -> Key {
    let scope = if scoped { vec!["pool:inside"] } else { vec![] };
    let name = format!("{role}-{}", if scoped { "scoped" } else { "all" });
    let request = json!({"name": name, "role": role.as_str(), "scope": scope});
    let created = api(router, admin, Method::POST, "/keys", request).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["key"]["id"].as_str().unwrap().to_owned();
    // As signing in does: a signed cookie, and its session stored.
    let expires = now().plus(Duration::from_secs(3600));
    let cookie = state.ui_sessions.issue(&key_id, expires.unix_millis());
    let session = UiSessionRecord {
        id_hash: hash_secret(&cookie),
        key_id,
        created_at: now(),
        expires_at: expires,
    };
    state.store.insert_ui_session(&session).await.unwrap();
    let csrf = crate::ui::csrf_token(&cookie);
    Key { role, scoped, secret, cookie, csrf }
}

/// The probe of an API route for the fixtures of one side.
fn api_probe(method: &Method, path: &str, f: &Fixtures) -> Option<Probe> {
    use StatusCode as S;
    let fill = |path: &str| {
        path.replace("{pool}", &f.pool)
            .replace("{stack}", &f.stack)
            .replace("{run}", &f.run)
            .replace("{worker}", &f.worker)
    };
    let probe = |authorized: StatusCode, body: Option<Value>| {
        Some(Probe { path: fill(path), body, authorized })
    };
    let m = method.as_str();
    match (m, path) {
        ("GET", "/webhooks/{webhook}/secret") => Some(Probe {
            path: "/webhooks/no-such-webhook/secret".into(),
            body: None,
            authorized: S::NOT_FOUND,
        }),
        ("GET", _) => probe(S::OK, None),
        ("POST", "/keys") => probe(S::BAD_REQUEST, Some(json!({"name": "", "role": "reader"}))),
        ("POST", "/webhooks") => {
            probe(S::BAD_REQUEST, Some(json!({"provider": "svn", "repository": "x"})))
        }
        ("DELETE", "/webhooks/{webhook}") => Some(Probe {
            path: "/webhooks/no-such-webhook".into(),
            body: None,
            authorized: S::NOT_FOUND,
        }),
        // Public: a delivery without its event header is refused as such, whoever sends it.
        ("POST", "/webhooks/{webhook}") => Some(Probe {
            path: "/webhooks/github".into(),
            body: Some(json!({})),
            authorized: S::BAD_REQUEST,
        }),
        ("DELETE", "/keys/{key}") => {
            Some(Probe { path: "/keys/no-such-key".into(), body: None, authorized: S::NOT_FOUND })
        }
        // The name exists: refused after authorization, whoever asks first.
        ("POST", "/pools") => {
            probe(S::CONFLICT, Some(json!({"name": f.pool, "csr": "-", "labels": []})))
        }
        ("POST", "/pools/{pool}/reset") => probe(S::BAD_REQUEST, Some(json!({}))),
        ("POST", "/pools/{pool}/drain" | "/pools/{pool}/cycle") => probe(S::OK, None),
        ("POST", "/pools/{pool}/undrain") => probe(S::OK, None),
        ("POST", "/workers/{worker}/drain" | "/workers/{worker}/undrain") => probe(S::OK, None),
        ("POST", "/stacks") => probe(
            S::CONFLICT,
            Some(
                json!({"name": f.stack, "repository": "https://git.example.com/x.git", "pool": f.pool}),
            ),
        ),
        ("POST", "/stacks/{stack}/runs") => probe(S::BAD_REQUEST, Some(json!({"type": "TASK"}))),
        // The stack is not fenced: there is nothing to lift.
        ("POST", "/stacks/{stack}/unfence") => probe(S::CONFLICT, None),
        ("PUT", "/stacks/{stack}/secrets") => probe(S::BAD_REQUEST, Some(json!({"x": 1}))),
        ("POST", "/stacks/{stack}/state/rollback") => probe(S::NOT_FOUND, Some(json!({"to": 99}))),
        ("POST", "/stacks/{stack}/state/adopt") => {
            probe(S::NOT_FOUND, Some(json!({"version": 99})))
        }
        ("POST", "/stacks/{stack}/dependencies") => {
            probe(S::BAD_REQUEST, Some(json!({"upstream": f.stack})))
        }
        ("DELETE", "/stacks/{stack}/dependencies/{upstream}") => Some(Probe {
            path: format!("/stacks/{}/dependencies/{}", f.stack, f.stack),
            body: None,
            authorized: S::NOT_FOUND,
        }),
        ("POST", "/stacks/{stack}/schedules") => {
            probe(S::BAD_REQUEST, Some(json!({"kind": "nightly", "cron": "0 3 * * *"})))
        }
        ("DELETE", "/stacks/{stack}/schedules/{schedule}") => Some(Probe {
            path: format!("/stacks/{}/schedules/no-such-schedule", f.stack),
            body: None,
            authorized: S::NOT_FOUND,
        }),
        ("POST", "/runs/{run}/confirm" | "/runs/{run}/discard" | "/runs/{run}/stop") => {
            probe(S::CONFLICT, None)
        }
        // The run was stopped: only a waiting run can be prioritized.
        ("POST", "/runs/{run}/prioritize") => probe(S::BAD_REQUEST, None),
        // The run was stopped: only a run that has not ended can be failed.
        ("POST", "/runs/{run}/fail") => probe(S::CONFLICT, Some(json!({"reason": "stuck"}))),
        _ => None,
    }
}

/// The probe of a UI route for the fixtures of one side.
fn ui_probe(method: &Method, path: &str, f: &Fixtures) -> Option<Probe> {
    use StatusCode as S;
    let fill = |path: &str| {
        path.replace("{pool}", &f.pool)
            .replace("{stack}", &f.stack)
            .replace("{run}", &f.run)
            .replace("{worker}", &f.worker)
            .replace("{tab}", "workers")
    };
    let form = |fields: &[(&str, &str)]| {
        Some(Value::Object(fields.iter().map(|(k, v)| (k.to_string(), json!(v))).collect()))
    };
    let probe = |authorized: StatusCode, body: Option<Value>| {
        Some(Probe { path: fill(path), body, authorized })
    };
    let m = method.as_str();
    match (m, path) {
        // Nested under `/ui`, the route `/` is `/ui` itself.
        ("GET", "/") => Some(Probe { path: String::new(), body: None, authorized: S::SEE_OTHER }),
        ("GET", _) => probe(S::OK, None),
        ("POST", "/sign-in") => probe(S::FORBIDDEN, form(&[("api_key", "x")])),
        ("POST", "/sign-out") => None,
        ("POST", "/keys") => probe(S::BAD_REQUEST, form(&[("name", ""), ("role", "reader")])),
        ("POST", "/keys/{key}/revoke") => Some(Probe {
            path: "/keys/no-such-key/revoke".into(),
            body: form(&[]),
            authorized: S::NOT_FOUND,
        }),
        ("POST", "/webhooks") => {
            probe(S::BAD_REQUEST, form(&[("provider", "svn"), ("repository", "x")]))
        }
        ("POST", "/webhooks/{webhook}/delete") => Some(Probe {
            path: "/webhooks/no-such-webhook/delete".into(),
            body: form(&[]),
            authorized: S::NOT_FOUND,
        }),
        // The CSR is checked before the name: the form comes back with the error.
        ("POST", "/pools") => probe(
            S::UNPROCESSABLE_ENTITY,
            form(&[("name", &f.pool), ("csr", "-"), ("description", ""), ("labels", "")]),
        ),
        (
            "POST",
            "/pools/{pool}/drain"
            | "/pools/{pool}/undrain"
            | "/workers/{worker}/drain"
            | "/workers/{worker}/undrain",
        ) => probe(S::SEE_OTHER, form(&[])),
        ("POST", "/runs/{run}/prioritize") => probe(S::BAD_REQUEST, form(&[])),
        ("POST", "/stacks/{stack}/runs") => probe(S::BAD_REQUEST, form(&[("type", "TASK")])),
        ("POST", "/stacks/{stack}/state/rollback") => probe(S::NOT_FOUND, form(&[("to", "99")])),
        ("POST", "/stacks/{stack}/state/adopt") => probe(S::NOT_FOUND, form(&[("version", "99")])),
        ("POST", "/stacks/{stack}/schedules") => {
            probe(S::BAD_REQUEST, Some(json!({"kind": "nightly", "cron": "0 3 * * *"})))
        }
        ("DELETE", "/stacks/{stack}/schedules/{schedule}") => Some(Probe {
            path: format!("/stacks/{}/schedules/no-such-schedule", f.stack),
            body: None,
            authorized: S::NOT_FOUND,
        }),
        ("POST", "/runs/{run}/confirm" | "/runs/{run}/discard" | "/runs/{run}/stop") => {
            probe(S::CONFLICT, form(&[]))
        }
        _ => None,
    }
}

/// The status a key must get on a route, for a target on `side`.
fn expected(route: &Guarded, key: &Key, side: Side, authorized: StatusCode) -> StatusCode {
    let target = route.access.target;
    if target == Target::Public {
        return authorized;
    }
    if key.role < route.access.role {
        return StatusCode::FORBIDDEN;
    }
    if !key.scoped || side == Side::Inside {
        return if key.scoped && target == Target::Unscoped {
            StatusCode::FORBIDDEN
        } else {
            authorized
        };
    }
    match target {
        Target::Unscoped | Target::NewPool | Target::NewStack => StatusCode::FORBIDDEN,
        Target::Pool | Target::Stack | Target::StackAndUpstream | Target::Run | Target::Worker => {
            StatusCode::NOT_FOUND
        }
        Target::Public | Target::Listed | Target::Caller => authorized,
    }
}

struct Matrix {
    router: Router,
    keys: Vec<Key>,
    inside: Fixtures,
    outside: Fixtures,
    _data_dir: tempfile::TempDir,
    _server: Server,
}

async fn matrix() -> Matrix {
    let data_dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::for_tests(data_dir.path());
    let mut server = Server::start(config).await.unwrap();
    let admin = server.take_initial_admin_key().unwrap();
    let state = server.app_state();
    let router = crate::router(state.clone());
    let inside = fixtures(&router, &state, &admin, "inside").await;
    let outside = fixtures(&router, &state, &admin, "outside").await;
    let mut keys = Vec::new();
    for role in Role::ALL {
        keys.push(key(&router, &state, &admin, role, false).await);
        // An admin key cannot be scoped.
        if role != Role::Admin {
            keys.push(key(&router, &state, &admin, role, true).await);
        }
    }
    Matrix { router, keys, inside, outside, _data_dir: data_dir, _server: server }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_every_role_in_and_out_of_scope_as_decided() {
    let m = matrix().await;
    let planes: [(&str, Vec<Guarded>, ProbeOf); 2] =
        [("/api/v1", crate::api::routes(), api_probe), ("/ui", crate::ui::routes(), ui_probe)];
    let mut failures = Vec::new();
    let mut checked = 0;
    for (prefix, routes, probe_of) in planes {
        for route in &routes {
            if prefix == "/ui" && route.path == "/sign-out" {
                // Checked on its own below: it ends the session it is called with.
                continue;
            }
            for (side, fixtures) in [(Side::Inside, &m.inside), (Side::Outside, &m.outside)] {
                let probe = probe_of(&route.method, route.path, fixtures).unwrap_or_else(|| {
                    panic!(
                        "{} {prefix}{} has no probe in the authorization matrix: add one",
                        route.method, route.path
                    )
                });
                for key in &m.keys {
                    let want = expected(route, key, side, probe.authorized);
                    let (got, body) = send(&m.router, prefix, route, &probe, key).await;
                    checked += 1;
                    if got != want {
                        failures.push(format!(
                            "{} {prefix}{} as {}{} on the {side:?} pool: {got}, expected {want}: {body:.200}",
                            route.method,
                            probe.path,
                            key.role,
                            if key.scoped { " (scoped)" } else { "" },
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 500, "the matrix ran only {checked} cases");
}

async fn send(
    router: &Router,
    prefix: &str,
    route: &Guarded,
    probe: &Probe,
    key: &Key,
) -> (StatusCode, String) {
    let path = format!("{prefix}{}", probe.path);
    if prefix == "/api/v1" {
        let mut headers = vec![("authorization", format!("Bearer {}", key.secret))];
        let body = match &probe.body {
            Some(body) => {
                headers.push(("content-type", "application/json".to_owned()));
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        return call(router, route.method.clone(), &path, &headers, body).await;
    }
    let mut headers = vec![
        ("cookie", format!("__Host-gantry-session={}", key.cookie)),
        ("host", "gantry.test".to_owned()),
        ("origin", "https://gantry.test".to_owned()),
    ];
    let body = match &probe.body {
        Some(Value::Object(fields)) => {
            headers.push(("content-type", "application/x-www-form-urlencoded".to_owned()));
            let mut pairs: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v.as_str().unwrap_or_default())))
                .collect();
            pairs.push(format!("csrf={}", key.csrf));
            Body::from(pairs.join("&"))
        }
        _ => Body::empty(),
    };
    call(router, route.method.clone(), &path, &headers, body).await
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_every_guarded_route_is_refused() {
    let m = matrix().await;
    for route in crate::api::routes() {
        let probe = api_probe(&route.method, route.path, &m.inside).unwrap();
        let (status, body) = call(
            &m.router,
            route.method.clone(),
            &format!("/api/v1{}", probe.path),
            &[],
            Body::empty(),
        )
        .await;
        let want = if route.access.target == Target::Public {
            probe.authorized
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, want, "{} {}: {body}", route.method, route.path);
    }
    for route in crate::ui::routes() {
        if route.access.target == Target::Public {
            continue;
        }
        let path = ui_probe(&route.method, route.path, &m.inside)
            .map_or(route.path.to_owned(), |p| p.path);
        let (status, _) =
            call(&m.router, route.method.clone(), &format!("/ui{path}"), &[], Body::empty()).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{} /ui{path} sends to the sign-in page",
            route.method
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_a_scoped_key_only_what_it_reaches() {
    let m = matrix().await;
    let scoped = m.keys.iter().find(|key| key.scoped && key.role == Role::Reader).unwrap();
    let everything = m.keys.iter().find(|key| !key.scoped && key.role == Role::Reader).unwrap();
    for path in ["/pools", "/stacks", "/runs", "/workers"] {
        let auth = |key: &Key| [("authorization", format!("Bearer {}", key.secret))];
        let (_, all) = call(
            &m.router,
            Method::GET,
            &format!("/api/v1{path}"),
            &auth(everything),
            Body::empty(),
        )
        .await;
        let (_, some) =
            call(&m.router, Method::GET, &format!("/api/v1{path}"), &auth(scoped), Body::empty())
                .await;
        for (fixtures, shown) in [(&m.inside, true), (&m.outside, false)] {
            for id in [&fixtures.pool, &fixtures.stack, &fixtures.run, &fixtures.worker] {
                if all.contains(id.as_str()) {
                    assert_eq!(some.contains(id.as_str()), shown, "{path}: {id} in {some}");
                }
            }
        }
    }
    // Lists of the UI too.
    for path in ["/ui/pools", "/ui/stacks"] {
        let cookie = [("cookie", format!("__Host-gantry-session={}", scoped.cookie))];
        let (status, page) = call(&m.router, Method::GET, path, &cookie, Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("inside") && !page.contains("outside"), "{path}: {page}");
    }
    // A run list of a stack out of reach is "not found", as the stack is.
    let auth = [("authorization", format!("Bearer {}", scoped.secret))];
    let path = format!("/api/v1/runs?stack={}", m.outside.stack);
    assert_eq!(
        call(&m.router, Method::GET, &path, &auth, Body::empty()).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_reaching_out_of_scope_is_neither_added_nor_removed_by_a_scoped_key() {
    async fn as_key(
        m: &Matrix,
        scoped: bool,
        method: Method,
        path: &str,
        body: &str,
    ) -> StatusCode {
        let key = m.keys.iter().find(|key| key.role == Role::Operator && key.scoped == scoped);
        let headers = [
            ("authorization", format!("Bearer {}", key.unwrap().secret)),
            ("content-type", "application/json".to_owned()),
        ];
        call(&m.router, method, path, &headers, Body::from(body.to_owned())).await.0
    }
    let m = matrix().await;
    let dependencies = format!("/api/v1/stacks/{}/dependencies", m.inside.stack);
    let across = json!({"upstream": m.outside.stack}).to_string();
    let edge = format!("{dependencies}/{}", m.outside.stack);
    let scoped = as_key(&m, true, Method::POST, &dependencies, &across).await;
    assert_eq!(scoped, StatusCode::NOT_FOUND, "the upstream is out of reach");
    let unscoped = as_key(&m, false, Method::POST, &dependencies, &across).await;
    assert_eq!(unscoped, StatusCode::CREATED);
    let scoped = as_key(&m, true, Method::DELETE, &edge, "").await;
    assert_eq!(scoped, StatusCode::NOT_FOUND, "the upstream is out of reach");
    let headers = [("authorization", format!("Bearer {}", m.keys[0].secret))];
    let (_, listed) = call(&m.router, Method::GET, &dependencies, &headers, Body::empty()).await;
    assert!(listed.contains(&m.outside.stack), "the edge is still there: {listed}");
    assert_eq!(as_key(&m, false, Method::DELETE, &edge, "").await, StatusCode::OK);
}

#[test]
fn every_route_is_in_the_tables_once() {
    for routes in [crate::api::routes(), crate::ui::routes()] {
        let mut seen = std::collections::HashSet::new();
        for route in &routes {
            assert!(
                seen.insert((route.method.clone(), route.path)),
                "{} {} twice",
                route.method,
                route.path
            );
        }
    }
}
