//! Webhooks from VCS providers: registering a repository's webhook, receiving its
//! deliveries (verified with the webhook's secret before anything is acted on), and the
//! runs a push or a pull request triggers, each delivery logged with what came of it.

use std::collections::BTreeSet;
use std::str::FromStr;

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use gantry_domain::validation::validate_repository;
use gantry_domain::{RunId, RunType};
use gantry_proto::webhooks::{
    CreateWebhook, CreatedWebhook, Delivery, DeliveryAnswer, DeliveryList, Webhook, WebhookList,
    WebhookSecret,
};
use gantry_store::{DeliveryRecord, StackRecord, StoreError, WebhookRecord};
use gantry_webhooks::{Action, Event, Headers, Provider, PullRequest, PullRequestAction, Push};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::access::Actor;
use crate::error::{ApiError, ApiResult, Json, PathParam, QueryParams};
use crate::http_limits::{Failure, Source, authentication_failed};
use crate::lifecycle;
use crate::state::{AppState, now};

/// The server secret every webhook's secret is derived from.
pub(crate) const WEBHOOK_KEY_SECRET: &str = "webhook-key";

/// The key webhook secrets are derived from: a webhook's secret is never stored, and a
/// copy of the database alone (where this key is sealed) yields none.
#[derive(Clone)]
pub(crate) struct WebhookKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(hidden)")
    }
}

impl WebhookKey {
    pub(crate) fn new(key: Zeroizing<Vec<u8>>) -> Self {
        Self(key)
    }

    /// The secret of the webhook with this id: 43 characters of base64url.
    pub(crate) fn secret_of(&self, webhook_id: &str) -> Zeroizing<String> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&key, format!("gantry-webhook:{webhook_id}").as_bytes());
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }
}

fn provider(text: &str) -> Result<Provider, ApiError> {
    Provider::from_str(text).map_err(|error| ApiError::invalid(error.to_string()))
}

fn view(state: &AppState, record: &WebhookRecord) -> Webhook {
    Webhook {
        id: record.id.clone(),
        provider: record.provider.clone(),
        repository: record.repository.clone(),
        url: format!(
            "{}/api/v1/webhooks/{}",
            state.public_url.trim_end_matches('/'),
            record.provider
        ),
        created_by: record.created_by.clone(),
        created_at: record.created_at,
    }
}

/// `POST /api/v1/webhooks`
pub(crate) async fn create(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Json(request): Json<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    Ok((StatusCode::CREATED, Json(register(&state, &actor, &request).await?)))
}

/// Registers a repository's webhook for the API and the UI: the webhook and its secret.
pub(crate) async fn register(
    state: &AppState,
    actor: &Actor,
    request: &CreateWebhook,
) -> Result<CreatedWebhook, ApiError> {
    let provider = provider(&request.provider)?;
    validate_repository(&request.repository).map_err(|e| ApiError::invalid(e.to_string()))?;
    let record = WebhookRecord {
        id: ulid::Ulid::new().to_string(),
        provider: provider.as_str().to_owned(),
        repository: request.repository.clone(),
        repository_key: gantry_webhooks::repository_key(&request.repository),
        created_by: actor.key_name.clone(),
        created_at: now(),
    };
    state.store.insert_webhook(&record).await.map_err(|error| match error {
        StoreError::AlreadyExists { .. } => ApiError::Conflict(format!(
            "repository {:?} has a {} webhook already: delete it first to change its secret",
            request.repository, provider
        )),
        other => other.into(),
    })?;
    let secret = state.webhook_key.secret_of(&record.id).to_string();
    Ok(CreatedWebhook { webhook: view(state, &record), secret })
}

/// `GET /api/v1/webhooks`
pub(crate) async fn list(State(state): State<AppState>) -> ApiResult<Json<WebhookList>> {
    Ok(Json(WebhookList { webhooks: all(&state).await? }))
}

/// Every webhook, oldest first, as the API and the UI show them.
pub(crate) async fn all(state: &AppState) -> Result<Vec<Webhook>, ApiError> {
    let records = state.store.list_webhooks().await?;
    Ok(records.iter().map(|record| view(state, record)).collect())
}

async fn find(state: &AppState, id: &str) -> Result<WebhookRecord, ApiError> {
    let webhooks = state.store.list_webhooks().await?;
    webhooks
        .into_iter()
        .find(|webhook| webhook.id == id)
        .ok_or_else(|| ApiError::not_found("webhook", id))
}

/// `GET /api/v1/webhooks/{webhook}/secret`
pub(crate) async fn secret(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<WebhookSecret>> {
    let webhook = find(&state, &id).await?;
    Ok(Json(WebhookSecret { secret: state.webhook_key.secret_of(&webhook.id).to_string() }))
}

/// `DELETE /api/v1/webhooks/{webhook}`: its deliveries are refused from then on; the
/// webhook as it was is the answer.
pub(crate) async fn delete(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> ApiResult<Json<Webhook>> {
    Ok(Json(unregister(&state, &id).await?))
}

/// Deletes a webhook for the API and the UI: the webhook as it was.
pub(crate) async fn unregister(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    let webhook = find(state, id).await?;
    if !state.store.delete_webhook(id).await? {
        return Err(ApiError::not_found("webhook", id));
    }
    Ok(view(state, &webhook))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveriesQuery {
    limit: Option<u32>,
}

/// `GET /api/v1/webhooks/deliveries`
pub(crate) async fn deliveries(
    State(state): State<AppState>,
    QueryParams(query): QueryParams<DeliveriesQuery>,
) -> ApiResult<Json<DeliveryList>> {
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let records = state.store.list_deliveries(limit).await?;
    Ok(Json(DeliveryList { deliveries: records.into_iter().map(delivery_view).collect() }))
}

fn delivery_view(record: DeliveryRecord) -> Delivery {
    Delivery {
        provider: record.provider,
        delivery_id: record.delivery_id,
        received_at: record.received_at,
        event: record.event,
        repository: record.repository,
        status: record.status,
        outcome: record.outcome,
        runs: record.runs,
    }
}

/// `POST /api/v1/webhooks/{provider}`: a delivery. Answered 401 unless a webhook of the
/// payload's repository signed it; then 200 for what was acted on, 202 for what was
/// accepted but triggers nothing (with the reason). A delivery id seen before gets its
/// first answer again and triggers nothing more.
pub(crate) async fn receive(
    State(state): State<AppState>,
    PathParam(provider_name): PathParam<String>,
    source: Source,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<DeliveryAnswer>)> {
    let provider = Provider::from_str(&provider_name)
        .map_err(|_| ApiError::not_found("webhook provider", provider_name.clone()))?;
    let pairs: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let headers = Headers(&pairs);
    let event = gantry_webhooks::parse(provider, &headers, &body)
        .map_err(|error| ApiError::invalid(error.to_string()))?;
    let keys: BTreeSet<String> =
        event.repository_urls.iter().map(|url| gantry_webhooks::repository_key(url)).collect();
    let shown_repository = event.repository_urls.first().cloned().unwrap_or_default();
    let webhooks: Vec<WebhookRecord> = state
        .store
        .list_webhooks()
        .await?
        .into_iter()
        .filter(|webhook| {
            webhook.provider == provider.as_str() && keys.contains(&webhook.repository_key)
        })
        .collect();
    // The id header is not signed: a captured delivery replayed under another id must
    // still be the same delivery. Its body, which the signature covers, says which.
    let digest = body_digest(&body);
    let delivery_id =
        gantry_webhooks::delivery_id(provider, &headers).unwrap_or_else(|| digest.clone());
    if webhooks.is_empty() {
        // Nothing to verify it with: it proves nothing, so it is not logged either.
        let outcome = format!(
            "no {provider} webhook is registered for repository {shown_repository:?}: nothing is triggered"
        );
        return Ok(answer(StatusCode::ACCEPTED, delivery_id, outcome, vec![], false));
    }
    // Guessing a signature is guessing a key: an address that failed too often is refused
    // before anything is verified (or audited) again; its API keys still work.
    state.http_guards.admit(source, Failure::WebhookSignature)?;
    let signed = webhooks.iter().any(|webhook| {
        let secret = state.webhook_key.secret_of(&webhook.id);
        gantry_webhooks::verify(provider, &headers, &body, secret.as_bytes()).is_ok()
    });
    if !signed {
        let secret = state.webhook_key.secret_of(&webhooks[0].id);
        let reason = gantry_webhooks::verify(provider, &headers, &body, secret.as_bytes())
            .err()
            .map(|error| error.to_string())
            .unwrap_or_default();
        authentication_failed(&state, source, Failure::WebhookSignature).await;
        return Err(ApiError::InvalidProof(reason));
    }
    if let Some(first) = state.store.get_delivery(provider.as_str(), &digest).await? {
        let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
        return Ok(answer(status, first.delivery_id, first.outcome, first.runs, true));
    }
    let (status, outcome, runs) = act(&state, provider, &event, &keys, &digest).await?;
    tracing::info!(%provider, delivery = %delivery_id, event = %event.name, %outcome, "webhook delivery");
    let record = DeliveryRecord {
        provider: provider.as_str().to_owned(),
        digest,
        delivery_id: delivery_id.clone(),
        received_at: now(),
        event: event.name.clone(),
        repository: shown_repository,
        status: status.as_u16(),
        outcome: outcome.clone(),
        runs: runs.clone(),
    };
    state.store.record_delivery(&record).await?;
    Ok(answer(status, delivery_id, outcome, runs, false))
}

/// What a delivery is known by: 128 bits of the SHA-256 of its body.
fn body_digest(body: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
    hex::encode(&digest.as_ref()[..16])
}

fn answer(
    status: StatusCode,
    delivery_id: String,
    outcome: String,
    runs: Vec<RunId>,
    duplicate: bool,
) -> (StatusCode, Json<DeliveryAnswer>) {
    (status, Json(DeliveryAnswer { delivery_id, outcome, runs, duplicate }))
}

/// The stacks of the event's repository tracking `branch`.
async fn stacks_of(
    state: &AppState,
    keys: &BTreeSet<String>,
    branch: &str,
) -> Result<Vec<StackRecord>, ApiError> {
    let stacks = state.store.list_stacks().await?;
    Ok(stacks
        .into_iter()
        .filter(|stack| {
            stack.branch == branch
                && keys.contains(&gantry_webhooks::repository_key(&stack.repository))
        })
        .collect())
}

/// What the delivery triggers: its status, the outcome for the log, and the runs.
async fn act(
    state: &AppState,
    provider: Provider,
    event: &Event,
    keys: &BTreeSet<String>,
    digest: &str,
) -> Result<(StatusCode, String, Vec<RunId>), ApiError> {
    let triggered_by = format!("webhook:{provider}:{digest}");
    match &event.action {
        Action::Ping => {
            Ok((StatusCode::OK, "ping: the webhook's secret is right".to_owned(), vec![]))
        }
        Action::Ignored(why) => Ok((StatusCode::ACCEPTED, format!("ignored: {why}"), vec![])),
        Action::Push(push) => on_push(state, keys, push, &triggered_by).await,
        Action::PullRequest(pull) => {
            on_pull_request(state, provider, keys, pull, &triggered_by).await
        }
    }
}

async fn on_push(
    state: &AppState,
    keys: &BTreeSet<String>,
    push: &Push,
    triggered_by: &str,
) -> Result<(StatusCode, String, Vec<RunId>), ApiError> {
    let stacks = stacks_of(state, keys, &push.branch).await?;
    if stacks.is_empty() {
        let outcome =
            format!("ignored: no stack tracks branch {:?} of this repository", push.branch);
        return Ok((StatusCode::ACCEPTED, outcome, vec![]));
    }
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    for stack in &stacks {
        let changed = push.changed_paths.as_deref();
        if !gantry_webhooks::touches(changed, &stack.project_root, &stack.trigger_paths) {
            let also = match stack.trigger_paths.as_slice() {
                [] => String::new(),
                paths => format!(" nor matching its trigger paths {paths:?}"),
            };
            notes.push(format!(
                "{}: nothing under its project root {:?}{also} changed",
                stack.name, stack.project_root
            ));
            continue;
        }
        let trigger = lifecycle::TriggerOn {
            run_type: RunType::Tracked,
            branch: stack.branch.clone(),
            commit: Some(push.commit.clone()),
        };
        notes.push(trigger_noted(state, stack, trigger, triggered_by, &mut runs).await?);
    }
    Ok(summary(&format!("push of {} to {}", short(&push.commit), push.branch), notes, runs))
}

async fn on_pull_request(
    state: &AppState,
    provider: Provider,
    keys: &BTreeSet<String>,
    pull: &PullRequest,
    triggered_by: &str,
) -> Result<(StatusCode, String, Vec<RunId>), ApiError> {
    let stacks = stacks_of(state, keys, &pull.base_branch).await?;
    let subject =
        format!("pull request #{} ({} into {})", pull.number, pull.head_branch, pull.base_branch);
    if stacks.is_empty() {
        let outcome = format!(
            "ignored: no stack tracks branch {:?}, the base of {subject}",
            pull.base_branch
        );
        return Ok((StatusCode::ACCEPTED, outcome, vec![]));
    }
    let mut notes = Vec::new();
    let mut runs = Vec::new();
    match &pull.action {
        PullRequestAction::Opened | PullRequestAction::Updated => {
            // Marked with the pull request: its closing finds them by it.
            let triggered_by = format!("{triggered_by} pull request #{}", pull.number);
            for stack in &stacks {
                let trigger = lifecycle::TriggerOn {
                    run_type: RunType::Proposed,
                    branch: pull.head_branch.clone(),
                    commit: Some(pull.head_commit.clone()),
                };
                notes.push(trigger_noted(state, stack, trigger, &triggered_by, &mut runs).await?);
            }
        }
        PullRequestAction::Closed => {
            let mark = format!(" pull request #{}", pull.number);
            let provider_prefix = format!("webhook:{provider}:");
            for run in state.store.active_runs().await? {
                let of_it = stacks.iter().any(|stack| stack.id == run.stack_id)
                    && run.run_type == RunType::Proposed
                    && run.branch == pull.head_branch
                    && run.triggered_by.starts_with(&provider_prefix)
                    && run.triggered_by.ends_with(&mark);
                if of_it {
                    lifecycle::stop_as_it_is_now(state, run.clone()).await?;
                    notes.push(format!("stopped run {}", run.id));
                    runs.push(run.id);
                }
            }
            if notes.is_empty() {
                notes.push("no proposed run of it was still active".to_owned());
            }
        }
        PullRequestAction::Other(action) => {
            return Ok((
                StatusCode::ACCEPTED,
                format!("ignored: {subject} was {action}, which triggers nothing"),
                vec![],
            ));
        }
    }
    Ok(summary(&subject, notes, runs))
}

/// Triggers one run and says what came of it; a run this delivery triggered already (a
/// redelivery handled before its record was written) is not triggered again.
async fn trigger_noted(
    state: &AppState,
    stack: &StackRecord,
    trigger: lifecycle::TriggerOn,
    triggered_by: &str,
    runs: &mut Vec<RunId>,
) -> Result<String, ApiError> {
    let run_type = trigger.run_type;
    if let Err(error @ ApiError::Conflict(_)) =
        crate::api::runs::refuse_stale_secrets(state, stack).await
    {
        return Ok(format!("{}: not triggered: {error}", stack.name));
    }
    match lifecycle::trigger_on(state, stack, trigger, None, triggered_by).await {
        Ok(run) => {
            runs.push(run.id);
            Ok(format!("{}: {} run {}", stack.name, run_type.as_str().to_lowercase(), run.id))
        }
        Err(ApiError::Store(StoreError::AlreadyExists { .. })) => {
            Ok(format!("{}: triggered by this delivery already", stack.name))
        }
        Err(error @ ApiError::Conflict(_)) => Ok(format!("{}: not triggered: {error}", stack.name)),
        Err(error) => Err(error),
    }
}

fn summary(
    subject: &str,
    notes: Vec<String>,
    runs: Vec<RunId>,
) -> (StatusCode, String, Vec<RunId>) {
    let status = if runs.is_empty() { StatusCode::ACCEPTED } else { StatusCode::OK };
    (status, format!("{subject}: {}", notes.join("; ")), runs)
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}
