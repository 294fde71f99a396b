//! What one client can hold or try over HTTP: timeouts on headers, requests and idle
//! connections, a cap on connections per source address, oversized bodies answered 413
//! (not cut off), and limits on failed authentication answered 429 with `Retry-After`.
//! Everything is counted in memory, per replica: behind a load balancer spreading one
//! address over n replicas, that address gets n times the allowance.

mod body;
mod connections;
mod failures;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderValue, Method, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_domain::PoolId;
use http_body_util::BodyExt;

use connections::{Activity, InFlight};
pub(crate) use connections::{ConnectionCounts, GuardedAcceptor};
use failures::{Address, Limiter};

use crate::config::HttpLimits;
use crate::error::ApiError;
use crate::state::AppState;

/// The largest JSON or form body: log uploads are the largest; blobs stream past it.
pub(crate) const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The limits every request of a replica shares.
#[derive(Debug)]
pub(crate) struct HttpGuards {
    limits: HttpLimits,
    /// The longest a launcher's long-poll waits.
    poll_timeout: Duration,
    max_blob_size: u64,
    /// Failed API keys (REST and web UI) per source address.
    api_keys: Limiter<Address>,
    /// Failed launcher session proofs per source address: counted apart, so that a
    /// launcher with a wrong key does not lock out the admins of its machine.
    pool_keys: Limiter<Address>,
    /// Webhook deliveries whose signature did not verify, per source address: counted
    /// apart too, so that forged deliveries do not lock out the admins behind that address.
    webhook_signatures: Limiter<Address>,
    pools: Limiter<PoolId>,
}

impl HttpGuards {
    pub(crate) fn new(limits: &HttpLimits, poll_timeout: Duration, max_blob_size: u64) -> Self {
        Self {
            api_keys: Limiter::per_minute(limits.auth_failures_per_minute),
            pool_keys: Limiter::per_minute(limits.auth_failures_per_minute),
            webhook_signatures: Limiter::per_minute(limits.auth_failures_per_minute),
            pools: Limiter::per_minute(limits.pool_auth_failures_per_minute),
            limits: limits.clone(),
            poll_timeout,
            max_blob_size,
        }
    }

    /// Refuses an authentication attempt of `kind` from `source` while attempts of that
    /// kind from there have failed too often — or, for a launcher's session proof, while
    /// its pool's have. Checked before the credentials are, so that a refused client
    /// learns nothing from them.
    pub(crate) fn admit(&self, source: Source, kind: Failure) -> Result<(), ApiError> {
        let now = Instant::now();
        // Whole seconds, rounded up: what `Retry-After` can say.
        let whole = |wait: Duration| Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64);
        if let Some(ip) = source.0
            && let Err(wait) = self.addresses_of(kind).admit(Address::from(ip), now)
        {
            let message = match kind {
                Failure::WebhookSignature => {
                    format!("too many webhook deliveries from {ip} failed to verify")
                }
                _ => format!("too many failed authentications from {ip}"),
            };
            return Err(ApiError::RateLimited { message, retry_after: whole(wait) });
        }
        if let Some(pool) = kind.pool()
            && let Err(wait) = self.pools.admit(pool, now)
        {
            let message = format!("too many failed session proofs for pool {pool}");
            return Err(ApiError::RateLimited { message, retry_after: whole(wait) });
        }
        Ok(())
    }

    /// Where the failures of each kind are counted per address: API keys (the REST API
    /// and the UI's sign-in share theirs), pool keys and webhook signatures apart, so that
    /// failing at one locks nobody out of another.
    fn addresses_of(&self, kind: Failure) -> &Limiter<Address> {
        match kind {
            Failure::WebhookSignature => &self.webhook_signatures,
            Failure::SessionProof(_) => &self.pool_keys,
            Failure::ApiKey | Failure::UiSignIn => &self.api_keys,
        }
    }
}

/// What failed (or tries) to authenticate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Failure {
    /// An unknown API key on the REST API.
    ApiKey,
    /// An unknown API key at the web UI's sign-in.
    UiSignIn,
    /// A launcher's proof of a pool's key did not verify.
    SessionProof(PoolId),
    /// A VCS delivery's signature or token did not verify with its repository's webhook.
    WebhookSignature,
}

impl Failure {
    fn pool(self) -> Option<PoolId> {
        match self {
            Self::SessionProof(pool) => Some(pool),
            Self::ApiKey | Self::UiSignIn | Self::WebhookSignature => None,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::ApiKey => "API key",
            Self::UiSignIn => "web UI sign-in",
            Self::SessionProof(_) => "launcher session proof",
            Self::WebhookSignature => "webhook delivery signature",
        }
    }
}

/// The one place a failed authentication is recorded: it counts against its source
/// address (and pool), and is logged. Never given the credential itself.
pub(crate) async fn authentication_failed(state: &AppState, source: Source, failure: Failure) {
    let guards = &state.http_guards;
    let now = Instant::now();
    if let Some(ip) = source.0 {
        guards.addresses_of(failure).record(Address::from(ip), now);
    }
    if let Some(pool) = failure.pool() {
        guards.pools.record(pool, now);
    }
    tracing::warn!(
        source = source.0.map(|ip| ip.to_string()),
        pool = failure.pool().map(|pool| pool.to_string()),
        what = failure.what(),
        "authentication failed"
    );
    crate::audit::refused_credential(state, source, failure.what(), failure.pool()).await;
}

/// The address a request came from: the connection's peer. `None` for requests that
/// did not come over a socket (tests calling the router directly).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source(pub(crate) Option<IpAddr>);

impl Source {
    pub(crate) fn of(extensions: &Extensions) -> Self {
        Self(extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip().to_canonical()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

/// Marks a REST API answer as a failed authentication, for [`guard`] to record.
#[derive(Debug, Clone, Copy)]
struct ApiKeyRefused;

/// Adds what an error's response needs beyond its body: `Retry-After` on a 429, and the
/// mark of a refused API key.
pub(crate) fn mark_response(error: &ApiError, response: &mut Response) {
    match error {
        ApiError::RateLimited { retry_after, .. } => {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs()));
        }
        ApiError::InvalidApiKey => {
            response.extensions_mut().insert(ApiKeyRefused);
        }
        _ => {}
    }
}

/// How long a request may take, and how large its body may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bounds {
    /// `None`: no bound on the whole request, only between pieces of its body.
    deadline: Option<Duration>,
    body_limit: u64,
}

impl HttpGuards {
    /// The long-poll waits up to the poll timeout before it answers; a blob upload may
    /// take as long as its size needs, as long as it keeps coming.
    fn bounds(&self, method: &Method, path: &str) -> Bounds {
        let request = self.limits.request_timeout;
        let agent_run = path
            .strip_prefix("/agent/v1/runs/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, what)| what);
        if *method == Method::PUT && matches!(agent_run, Some("workspace" | "state")) {
            return Bounds { deadline: None, body_limit: self.max_blob_size };
        }
        let deadline = if path == "/agent/v1/poll" { request + self.poll_timeout } else { request };
        Bounds { deadline: Some(deadline), body_limit: BODY_LIMIT as u64 }
    }
}

/// The middleware every request passes: refuses a client that failed to authenticate too
/// often, answers an oversized body 413, bounds the request's time, records a refused
/// API key, and reads what the handler left of the body before answering.
pub(crate) async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let in_flight = request.extensions().get::<Arc<Activity>>().map(Activity::begin);
    let guards = &state.http_guards;
    let source = Source::of(request.extensions());
    let version = request.version();
    let path = request.uri().path().to_owned();
    let bounds = guards.bounds(request.method(), &path);
    // Draining invites a client waiting for `100 Continue` to send what it held back.
    let may_drain = !request.headers().contains_key(EXPECT);
    let drain_for = guards.limits.request_timeout;

    if path.starts_with("/api/")
        && request.headers().contains_key(axum::http::header::AUTHORIZATION)
        && let Err(refused) = guards.admit(source, Failure::ApiKey)
    {
        let (_, body) = request.into_parts();
        let drained =
            may_drain && body::drain(body.into_data_stream(), body::DRAIN_LIMIT, drain_for).await;
        return finish(refused.into_response(), drained, version, in_flight);
    }
    let length = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = length.filter(|length| *length > bounds.body_limit) {
        let (_, body) = request.into_parts();
        let drained =
            may_drain && body::drain(body.into_data_stream(), body::DRAIN_LIMIT, drain_for).await;
        let refused = ApiError::TooLarge(format!(
            "the request body is {length} bytes, more than the {} bytes {path} accepts",
            bounds.body_limit
        ));
        return finish(refused.into_response(), drained, version, in_flight);
    }

    let (parts, body) = request.into_parts();
    let (body, leftover) = body::returning(body, guards.limits.request_timeout);
    let request = Request::from_parts(parts, body);
    let response = match bounds.deadline {
        Some(deadline) => match tokio::time::timeout(deadline, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout(deadline).into_response(),
        },
        None => next.run(request).await,
    };
    if response.extensions().get::<ApiKeyRefused>().is_some() {
        authentication_failed(&state, source, Failure::ApiKey).await;
    }
    let unread = leftover.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let drained = match unread {
        Some(unread) => may_drain && body::drain(unread, body::DRAIN_LIMIT, drain_for).await,
        None => true,
    };
    finish(response, drained, version, in_flight)
}

/// The response as sent: it says `Connection: close` when the request body could not be
/// read to its end (HTTP/1.1 cannot carry another request after it), and it keeps the
/// connection's request in flight until its body is sent.
fn finish(
    mut response: Response,
    body_read: bool,
    version: Version,
    in_flight: Option<InFlight>,
) -> Response {
    if !body_read && version <= Version::HTTP_11 {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    match in_flight {
        Some(in_flight) => response.map(|body| {
            axum::body::Body::new(body.map_frame(move |frame| {
                let _ = &in_flight;
                frame
            }))
        }),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_polls_and_blob_uploads_have_their_own_bounds() {
        let limits = HttpLimits::default();
        let guards = HttpGuards::new(&limits, Duration::from_secs(30), 1 << 34);
        let request =
            Bounds { deadline: Some(limits.request_timeout), body_limit: BODY_LIMIT as u64 };
        assert_eq!(guards.bounds(&Method::POST, "/api/v1/stacks"), request);
        assert_eq!(guards.bounds(&Method::GET, "/agent/v1/runs/r1/workspace"), request);
        assert_eq!(
            guards.bounds(&Method::POST, "/agent/v1/poll"),
            Bounds { deadline: Some(limits.request_timeout + Duration::from_secs(30)), ..request }
        );
        for what in ["workspace", "state"] {
            assert_eq!(
                guards.bounds(&Method::PUT, &format!("/agent/v1/runs/r1/{what}")),
                Bounds { deadline: None, body_limit: 1 << 34 }
            );
        }
        assert_eq!(guards.bounds(&Method::PUT, "/agent/v1/runs/r1/sensitive-outputs"), request);
    }
}
