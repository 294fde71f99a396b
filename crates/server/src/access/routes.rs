//! The decision each route carries: the least role it needs and how the pool or stack it
//! acts on is found, so that a key's scope can be checked before the handler runs. The
//! REST router is built from a table of [`Guarded`] routes, so a route cannot exist
//! without its decision, and the authorization matrix test reads the same table.

use axum::Form;
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request, State};
use axum::handler::Handler;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, request::Parts};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use gantry_domain::access::{Named, Role};

use super::Actor;
use crate::auth::bearer;
use crate::error::ApiError;
use crate::lookup;
use crate::state::AppState;

/// What a route acts on, for checking a key's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// Needs no key at all (health and readiness probes).
    Public,
    /// Not bound to a pool or stack (API keys): scoped keys are refused.
    Unscoped,
    /// A list: the handler shows only what the key reaches.
    Listed,
    /// The pool in the path parameter `{pool}`.
    Pool,
    /// The caller itself (signing out): every key reaches it.
    Caller,
    /// The stack in `{stack}`.
    Stack,
    /// The stack in `{stack}` and the upstream stack, named by the path's `{upstream}` or
    /// else by the JSON body's `upstream`: a dependency passes one's outputs to the other.
    StackAndUpstream,
    /// The run in `{run}`, through its stack.
    Run,
    /// The worker in `{worker}`, through its pool.
    Worker,
    /// A pool the JSON body creates (`name`, `labels`).
    NewPool,
    /// A stack the JSON body creates (`name`, `labels`, `pool`).
    NewStack,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Access {
    pub(crate) role: Role,
    pub(crate) target: Target,
}

pub(crate) const PUBLIC: Access = Access { role: Role::Reader, target: Target::Public };

pub(crate) const fn needs(role: Role, target: Target) -> Access {
    Access { role, target }
}

/// One route of a router built from a table: its method, path, decision and handler.
pub(crate) struct Guarded {
    // The router takes the method from `handler`; the audit layer and the matrix test
    // read it here.
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    pub(crate) access: Access,
    handler: MethodRouter<AppState>,
}

impl Guarded {
    pub(crate) fn new<H, T>(method: Method, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        Self { method, path, access, handler: on(filter, handler) }
    }
}

/// How a router built from a table finds its caller and refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plane {
    /// `Authorization: Bearer <API key>`; refusals are JSON errors.
    Api,
    /// The web UI's session cookie; refusals are pages.
    Ui,
}

/// A router of the table's routes, each behind its decision.
pub(crate) fn router(
    state: &AppState,
    plane: Plane,
    routes: Vec<Guarded>,
) -> axum::Router<AppState> {
    routes.into_iter().fold(axum::Router::new(), |router, route| {
        let decision = (state.clone(), plane, route.access);
        let handler = route.handler.route_layer(from_fn_with_state(decision, authorize));
        // Every change is recorded, refusals included: the audit layer sits outside the
        // decision. Reads and the public routes (health, sign-in) are not changes.
        let changes = route.method != Method::GET && route.access.target != Target::Public;
        let handler = if changes {
            handler.route_layer(from_fn_with_state(state.clone(), crate::audit::audited))
        } else {
            handler
        };
        router.route(route.path, handler)
    })
}

async fn authorize(
    State((state, plane, access)): State<(AppState, Plane, Access)>,
    request: Request,
    next: Next,
) -> Response {
    if access.target == Target::Public {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let actor = match plane {
        Plane::Api => match bearer(&parts) {
            Ok(secret) => Actor::from_secret(&state, secret).await,
            Err(error) => Err(error),
        },
        Plane::Ui => match crate::ui::session_actor(&mut parts, &state).await {
            Ok(actor) => Ok(actor),
            Err(refusal) => return refusal.into_response(),
        },
    };
    let (decided, caller) = match actor {
        Ok(actor) => {
            let caller = crate::audit::Caller::of(&actor);
            (decide(&state, access, actor, parts, body).await, Some(caller))
        }
        Err(error) => (Err(error), None),
    };
    let mut response = match (decided, plane) {
        (Ok(request), _) => next.run(request).await,
        (Err(error), Plane::Api) => error.into_response(),
        (Err(error), Plane::Ui) => crate::ui::refusal_page(error),
    };
    if let Some(caller) = caller {
        response.extensions_mut().insert(caller);
    }
    response
}

/// Lets the request through, carrying its actor, or says why not.
async fn decide(
    state: &AppState,
    access: Access,
    actor: Actor,
    mut parts: Parts,
    body: Body,
) -> Result<Request, ApiError> {
    if actor.role < access.role {
        return Err(ApiError::Forbidden(format!(
            "API key {:?} has the role {}; this needs {} or above",
            actor.key_name, actor.role, access.role
        )));
    }
    let body = if actor.scope.is_everything() {
        body
    } else {
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
        let param = |name: &str| {
            params.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_owned())
        };
        within_scope(state, access.target, &actor, param, body).await?
    };
    parts.extensions.insert(actor);
    Ok(Request::from_parts(parts, body))
}

/// The fields of a creation request a scope is checked against, from a JSON body (the
/// API) or a form (the UI). A body that does not parse gives empty fields: it is the
/// handler's to refuse, with its own words.
#[derive(Debug, Default)]
struct Created {
    name: String,
    labels: Vec<String>,
    pool: Option<String>,
    upstream: Option<String>,
}

impl Created {
    async fn read(bytes: &axum::body::Bytes) -> Self {
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(bytes) {
            let text = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            let labels = fields.get("labels").and_then(|v| v.as_array()).map(|labels| {
                labels.iter().filter_map(|label| label.as_str().map(str::to_owned)).collect()
            });
            return Self {
                name: text("name").unwrap_or_default(),
                labels: labels.unwrap_or_default(),
                pool: text("pool"),
                upstream: text("upstream"),
            };
        }
        let request = Request::builder()
            .method(Method::POST)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(bytes.clone()));
        let Ok(request) = request else { return Self::default() };
        let Ok(Form(fields)) = Form::<Vec<(String, String)>>::from_request(request, &()).await
        else {
            return Self::default();
        };
        let text = |name: &str| {
            fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim().to_owned())
        };
        // The UI's pool form writes labels separated by commas.
        let labels = text("labels").unwrap_or_default();
        Self {
            name: text("name").unwrap_or_default(),
            labels: labels
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            pool: text("pool").filter(|pool| !pool.is_empty()),
            upstream: text("upstream"),
        }
    }
}

/// The largest body read here to find a creation's target: far above any valid one.
const TARGET_BODY_LIMIT: usize = 1 << 20;

/// Checks that a scoped key reaches the route's target; returns the body, read and
/// put back when the target is in it. A target the key does not reach is "not found",
/// as a missing one is, so that a scoped key learns nothing about what lies outside.
async fn within_scope(
    state: &AppState,
    target: Target,
    actor: &Actor,
    param: impl Fn(&str) -> Option<String>,
    body: Body,
) -> Result<Body, ApiError> {
    let named = |name: &'static str| {
        param(name).ok_or_else(|| ApiError::Internal(format!("the route has no {{{name}}}")))
    };
    match target {
        Target::Public | Target::Listed | Target::Caller => {}
        Target::Unscoped => {
            return Err(ApiError::Forbidden(format!(
                "API key {:?} is scoped to some pools or stacks; this needs a key without a scope",
                actor.key_name
            )));
        }
        Target::Pool => {
            let key = named("pool")?;
            reached_pool(state, actor, &key).await?;
        }
        Target::Stack => {
            reached_stack(state, actor, &named("stack")?).await?;
        }
        Target::Run => {
            let key = named("run")?;
            let run = lookup::run(state, &key).await?;
            let stack = lookup::stack(state, &run.stack_id.to_string()).await?;
            let pool = lookup::pool(state, &stack.pool_id.to_string()).await?;
            if !actor.reaches_stack(&stack, &pool) {
                return Err(ApiError::not_found("run", key));
            }
        }
        Target::Worker => {
            let key = named("worker")?;
            let worker = match key.parse() {
                Ok(id) => state.store.get_worker(id).await?,
                Err(_) => None,
            };
            let worker = worker.ok_or_else(|| ApiError::not_found("worker", &key))?;
            let pool = lookup::pool(state, &worker.pool_id.to_string()).await?;
            if !actor.reaches_pool(&pool) {
                return Err(ApiError::not_found("worker", key));
            }
        }
        Target::StackAndUpstream if param("upstream").is_some() => {
            reached_stack(state, actor, &named("stack")?).await?;
            reached_stack(state, actor, &named("upstream")?).await?;
        }
        Target::NewPool | Target::NewStack | Target::StackAndUpstream => {
            let bytes = axum::body::to_bytes(body, TARGET_BODY_LIMIT).await.map_err(|_| {
                ApiError::invalid(format!(
                    "the request body is over {TARGET_BODY_LIMIT} bytes or could not be read"
                ))
            })?;
            let created = Created::read(&bytes).await;
            check_created(state, target, actor, &created, named).await?;
            return Ok(Body::from(bytes));
        }
    }
    Ok(body)
}

async fn check_created(
    state: &AppState,
    target: Target,
    actor: &Actor,
    created: &Created,
    named: impl Fn(&'static str) -> Result<String, ApiError>,
) -> Result<(), ApiError> {
    let this = Named { name: &created.name, labels: &created.labels };
    let outside = |kind: &str| {
        ApiError::Forbidden(format!(
            "API key {:?} does not reach the {kind} {:?}: its scope is {}",
            actor.key_name,
            created.name,
            actor.scope.written().join(", ")
        ))
    };
    match target {
        Target::NewPool if !actor.scope.covers_pool(this) => Err(outside("pool")),
        Target::NewStack => {
            let pool = created.pool.as_deref().unwrap_or(crate::shared_pool::NAME);
            let reached = match lookup::pool(state, pool).await {
                Ok(pool) => actor.reaches_stack_named(this, &pool),
                // A missing pool is the handler's to name.
                Err(ApiError::NotFound { .. }) => {
                    actor.scope.covers_stack(this, Named { name: "", labels: &[] })
                }
                Err(error) => return Err(error),
            };
            if reached { Ok(()) } else { Err(outside("stack")) }
        }
        Target::StackAndUpstream => {
            reached_stack(state, actor, &named("stack")?).await?;
            match &created.upstream {
                Some(upstream) => reached_stack(state, actor, upstream).await,
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

async fn reached_pool(state: &AppState, actor: &Actor, key: &str) -> Result<(), ApiError> {
    let pool = lookup::pool(state, key).await?;
    if actor.reaches_pool(&pool) { Ok(()) } else { Err(ApiError::not_found("pool", key)) }
}

async fn reached_stack(state: &AppState, actor: &Actor, key: &str) -> Result<(), ApiError> {
    let stack = lookup::stack(state, key).await?;
    let pool = lookup::pool(state, &stack.pool_id.to_string()).await?;
    if actor.reaches_stack(&stack, &pool) { Ok(()) } else { Err(ApiError::not_found("stack", key)) }
}
