//! The audit log: every change made through the REST API or the web UI, and every refused
//! credential, appended with who, what, on what, from where and how it ended. Entries
//! are recorded by one middleware over the route tables rather than by each handler, so a
//! new route cannot forget to record; admins list them and check their hash chain.

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use gantry_domain::PoolId;
use gantry_proto::audit::{AuditEntry, AuditList, AuditQuery, AuditVerified};
use gantry_store::{AuditFilter, AuditRecord, verify_audit_chain};

use crate::access::Actor;
use crate::error::{ApiResult, Json, QueryParams};
use crate::http_limits::Source;
use crate::state::{AppState, now};

/// The actor of a request whose credential was refused or missing.
pub(crate) const UNAUTHENTICATED: &str = "unauthenticated";

/// Who made a request, left on its response by the authorization middleware for
/// [`audited`] to record: the response is all a middleware around it sees.
#[derive(Debug, Clone)]
pub(crate) struct Caller(String);

impl Caller {
    pub(crate) fn of(actor: &Actor) -> Self {
        Self(actor_name(&actor.key_name))
    }
}

/// How the log names an API key: by its name, which is what people know it by.
fn actor_name(key_name: &str) -> String {
    format!("key:{key_name}")
}

/// Appends an entry. A failure to record is logged, not returned: the change it
/// describes has already happened and its caller should learn how it went.
pub(crate) async fn record(state: &AppState, entry: gantry_store::AuditEntry) {
    if let Err(error) = state.store.append_audit(&entry).await {
        tracing::error!(
            actor = %entry.actor,
            action = %entry.action,
            outcome = %entry.outcome,
            %error,
            "could not append to the audit log"
        );
    }
}

fn source_text(source: Source) -> String {
    source.0.map(|ip| ip.to_string()).unwrap_or_default()
}

/// Records a credential that did not authenticate (never the credential itself).
pub(crate) async fn refused_credential(
    state: &AppState,
    source: Source,
    what: &str,
    pool: Option<PoolId>,
) {
    let entry = gantry_store::AuditEntry {
        at: now(),
        actor: UNAUTHENTICATED.to_owned(),
        action: format!("authenticate {what}"),
        target: pool.map(|pool| format!("pool={pool}")).unwrap_or_default(),
        source: source_text(source),
        outcome: "denied".to_owned(),
    };
    record(state, entry).await;
}

/// Records what a launcher did on the agent plane, as `launcher:ID`.
pub(crate) async fn launcher_event(
    state: &AppState,
    launcher: gantry_domain::LauncherId,
    action: &str,
    target: String,
    source: Source,
) {
    let entry = gantry_store::AuditEntry {
        at: now(),
        actor: format!("launcher:{launcher}"),
        action: action.to_owned(),
        target,
        source: source_text(source),
        outcome: "ok".to_owned(),
    };
    record(state, entry).await;
}

/// How a request ended, as the log says it: refusals of the caller apart from other
/// failures.
fn outcome(status: StatusCode) -> String {
    let word = match status.as_u16() {
        100..=399 => "ok",
        401 | 403 => "denied",
        400..=499 => "failed",
        _ => "error",
    };
    format!("{word} {}", status.as_u16())
}

/// The middleware over every route that changes something: records the request's
/// caller, route, path parameters, source and status once it has been answered. Bodies
/// are never recorded: they may hold secrets (a key's secret, a stack's variables).
pub(crate) async fn audited(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let source = Source::of(request.extensions());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| request.uri().path().to_owned(), |path| path.as_str().to_owned());
    let action = format!("{} {route}", request.method());
    let (mut parts, body) = request.into_parts();
    let target = match RawPathParams::from_request_parts(&mut parts, &state).await {
        Ok(params) => {
            params.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>()
        }
        Err(_) => Vec::new(),
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    let actor = response
        .extensions()
        .get::<Caller>()
        .map_or_else(|| UNAUTHENTICATED.to_owned(), |caller| caller.0.clone());
    let entry = gantry_store::AuditEntry {
        at: now(),
        actor,
        action,
        target: target.join(" "),
        source: source_text(source),
        outcome: outcome(response.status()),
    };
    record(&state, entry).await;
    response
}

pub(crate) fn entry_view(record: &AuditRecord) -> AuditEntry {
    AuditEntry {
        seq: record.seq,
        at: record.entry.at,
        actor: record.entry.actor.clone(),
        action: record.entry.action.clone(),
        target: record.entry.target.clone(),
        source: record.entry.source.clone(),
        outcome: record.entry.outcome.clone(),
        prev_hash: record.prev_hash.clone(),
        hash: record.hash.clone(),
    }
}

/// The entries a query selects; an actor without a kind (`ops`) means the key of that
/// name (`key:ops`), apart from `unauthenticated`.
pub(crate) async fn entries(state: &AppState, query: AuditQuery) -> ApiResult<Vec<AuditRecord>> {
    let actor = query.actor.filter(|actor| !actor.is_empty()).map(|actor| {
        if actor.contains(':') || actor == UNAUTHENTICATED { actor } else { actor_name(&actor) }
    });
    Ok(state.store.list_audit(&AuditFilter { since: query.since, actor }).await?)
}

/// `GET /api/v1/audit`
pub(crate) async fn list(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let records = entries(&state, query).await?;
    Ok(Json(AuditList { entries: records.iter().map(entry_view).collect() }))
}

/// `GET /api/v1/audit/verify`
pub(crate) async fn verify(State(state): State<AppState>) -> ApiResult<Json<AuditVerified>> {
    let records = state.store.list_audit(&AuditFilter::default()).await?;
    Ok(Json(match verify_audit_chain(&records) {
        Ok(entries) => AuditVerified { entries, first_broken: None, reason: None },
        Err(broken) => AuditVerified {
            entries: records.len() as u64,
            first_broken: Some(broken.seq),
            reason: Some(broken.reason),
        },
    }))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::{Method, Request, StatusCode};
    use gantry_crypto::generate_pool_key;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use crate::{Server, ServerConfig};

    const PEER: &str = "192.0.2.7:40000";

    /// A request from `PEER` with `secret` as its bearer key.
    async fn call(
        router: &Router,
        secret: &str,
        method: Method,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let peer: SocketAddr = PEER.parse().unwrap();
        let request = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"))
            .header("authorization", format!("Bearer {secret}"))
            .header("content-type", "application/json")
            .extension(ConnectInfo(peer))
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn find<'a>(entries: &'a [Value], action: &str, outcome: &str) -> &'a Value {
        entries
            .iter()
            .find(|entry| entry["action"] == action && entry["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no entry {action} {outcome} in {entries:#?}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_and_refusals_are_recorded_without_secrets_and_a_tampered_row_is_named() {
        let data_dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::for_tests(data_dir.path());
        let mut server = Server::start(config).await.unwrap();
        let admin = server.take_initial_admin_key().unwrap();
        let router = crate::router(server.app_state());

        let pool_key = generate_pool_key("blue").unwrap();
        let pool = json!({"name": "blue", "csr": pool_key.csr_pem});
        assert_eq!(
            call(&router, &admin, Method::POST, "/pools", pool).await.0,
            StatusCode::CREATED
        );
        let reader = json!({"name": "auditor", "role": "reader"});
        let (status, created) = call(&router, &admin, Method::POST, "/keys", reader).await;
        assert_eq!(status, StatusCode::CREATED);
        let reader_secret = created["secret"].as_str().unwrap().to_owned();
        let drain = "/pools/blue/drain";
        assert_eq!(call(&router, &admin, Method::POST, drain, json!({})).await.0, StatusCode::OK);
        let (status, _) = call(&router, &reader_secret, Method::POST, drain, json!({})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let wrong = "gantry_not-a-key";
        let (status, _) = call(&router, wrong, Method::POST, drain, json!({})).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, listed) = call(&router, &admin, Method::GET, "/audit", Value::Null).await;
        assert_eq!(status, StatusCode::OK, "{listed}");
        let entries = listed["entries"].as_array().unwrap().clone();
        let admin_name = find(&entries, "POST /api/v1/pools", "ok 201")["actor"].clone();
        assert!(admin_name.as_str().unwrap().starts_with("key:"), "{admin_name}");
        find(&entries, "POST /api/v1/keys", "ok 201");
        let drained = find(&entries, "POST /api/v1/pools/{pool}/drain", "ok 200");
        assert_eq!(
            (&drained["actor"], drained["target"].as_str()),
            (&admin_name, Some("pool=blue"))
        );
        assert_eq!(drained["source"], "192.0.2.7");
        let denied = find(&entries, "POST /api/v1/pools/{pool}/drain", "denied 403");
        assert_eq!(denied["actor"], "key:auditor");
        let refused = find(&entries, "POST /api/v1/pools/{pool}/drain", "denied 401");
        assert_eq!(refused["actor"], super::UNAUTHENTICATED);
        find(&entries, "authenticate API key", "denied");
        let everything = serde_json::to_string(&entries).unwrap();
        for secret in [admin.as_str(), reader_secret.as_str(), wrong] {
            assert!(!everything.contains(secret), "a secret is in the audit log: {everything}");
        }
        let (_, by_actor) =
            call(&router, &admin, Method::GET, "/audit?actor=auditor", Value::Null).await;
        let by_actor = by_actor["entries"].as_array().unwrap();
        assert!(!by_actor.is_empty() && by_actor.iter().all(|e| e["actor"] == "key:auditor"));
        let (_, verified) = call(&router, &admin, Method::GET, "/audit/verify", Value::Null).await;
        assert_eq!(verified["first_broken"], Value::Null, "{verified}");

        // An admin with the database file could rewrite history; the chain shows it.
        let seq = drained["seq"].as_u64().unwrap();
        let url = format!("sqlite://{}", data_dir.path().join("gantry.db").display());
        let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
        sqlx::query("UPDATE audit_log SET outcome = 'failed 404' WHERE seq = $1")
            .bind(seq as i64)
            .execute(&mut db)
            .await
            .unwrap();
        let (_, verified) = call(&router, &admin, Method::GET, "/audit/verify", Value::Null).await;
        assert_eq!(verified["first_broken"], json!(seq), "{verified}");
    }
}
