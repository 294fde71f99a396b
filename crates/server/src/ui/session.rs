//! Signing in with an API key: the key is checked against its stored hash once, and the
//! browser then holds a session cookie signed with a key every replica reads from the
//! store (so any replica accepts it). Every form carries a token derived from the cookie
//! and every POST must also come from this origin.

use std::time::Duration;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, RequestPartsExt};
use gantry_crypto::{hash_secret, random_secret, sha256_hex};
use gantry_store::UiSessionRecord;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout;
use crate::access::Actor;
use crate::error::ApiError;
use crate::state::{AppState, now};

/// `__Host-`: the browser keeps it only if Secure, path `/` and no domain.
const SESSION_COOKIE: &str = "__Host-gantry-session";
/// Holds the sign-in form's token before there is a session.
const SIGN_IN_COOKIE: &str = "__Host-gantry-sign-in";
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const SIGN_IN_LIFETIME: Duration = Duration::from_secs(900);

/// A signed-in browser.
#[derive(Debug, Clone)]
pub(super) struct UiSession {
    /// The API key it signed in with, as it is now.
    pub(super) actor: Actor,
    /// The token every form of this session carries.
    pub(super) csrf: String,
}

/// Why a UI request is refused before its handler runs.
#[derive(Debug)]
pub(super) enum Refusal {
    SignInFirst,
    Forbidden(&'static str),
    /// The database did not answer.
    Unavailable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::SignInFirst => Redirect::to("/ui/sign-in").into_response(),
            Self::Unavailable => layout::error_page(ApiError::Unavailable(
                "the database did not answer: try again".to_owned(),
            )),
            Self::Forbidden(why) => {
                let page = layout::page(
                    "Refused",
                    None,
                    html! {
                        h1 { "Refused" }
                        p { (why) }
                        p { a href="/ui/pools" { "Back to the pools" } }
                    },
                );
                (StatusCode::FORBIDDEN, page).into_response()
            }
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn set_cookie(name: &str, value: &str, lifetime: Duration) -> HeaderValue {
    let cookie = format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        lifetime.as_secs()
    );
    HeaderValue::from_str(&cookie).expect("cookie values are URL-safe base64 and digits")
}

/// A token bound to one secret value: its hash under a purpose label. The secret (the
/// cookie) never reaches the page, so another site can neither read nor forge it.
pub(super) fn form_token(purpose: &str, secret: &str) -> String {
    sha256_hex(format!("gantry-ui-{purpose}:{secret}").as_bytes())
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A POST must come from a page of this server: browsers name the page's origin in
/// `Origin`, which another site cannot set. The host is HTTP/1's `Host` or HTTP/2's
/// `:authority` (in the URI).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok());
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| uri.authority().map(|authority| authority.as_str()));
    matches!((origin, host), (Some(origin), Some(host)) if origin == format!("https://{host}"))
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refusal> {
        // The route's authorization found it already.
        if let Some(session) = parts.extensions.get::<UiSession>() {
            return Ok(session.clone());
        }
        Self::load(parts, state).await
    }
}

impl UiSession {
    /// The session of the request's cookie: signed by this server, still stored (not
    /// signed out of), and its key neither revoked nor expired. Read from the database
    /// on every request, so that revoking the key ends the session at once.
    async fn load(parts: &Parts, state: &AppState) -> Result<Self, Refusal> {
        let value = cookie(&parts.headers, SESSION_COOKIE).ok_or(Refusal::SignInFirst)?;
        // `key-id.expiry.nonce.mac`: the signature covers the key id first.
        let (key_id, _) = value.split_once('.').ok_or(Refusal::SignInFirst)?;
        let at = now();
        state
            .ui_sessions
            .verify(value, key_id, at.unix_millis())
            .map_err(|_| Refusal::SignInFirst)?;
        let found = state.store.find_ui_session(&hash_secret(value)).await.map_err(|error| {
            tracing::error!(%error, "could not read a UI session");
            Refusal::Unavailable
        })?;
        let (session, key) = found.ok_or(Refusal::SignInFirst)?;
        if session.expires_at <= at || session.key_id != key_id {
            return Err(Refusal::SignInFirst);
        }
        let actor = Actor::from_key(state, &key).await.ok_or(Refusal::SignInFirst)?;
        Ok(Self { actor, csrf: form_token("csrf", value) })
    }
}

/// The actor of a UI request's session, which the request keeps for its handler; the
/// page to answer with when there is none.
pub(crate) async fn session_actor(parts: &mut Parts, state: &AppState) -> Result<Actor, Response> {
    let session = UiSession::load(parts, state).await.map_err(IntoResponse::into_response)?;
    let actor = session.actor.clone();
    parts.extensions.insert(session);
    Ok(actor)
}

/// A form posted by a signed-in browser from one of this server's pages, with its
/// session's token, and its other fields (`T`; none by default).
#[derive(Debug)]
pub(super) struct CheckedForm<T = NoFields> {
    pub(super) session: UiSession,
    pub(super) fields: T,
}

/// A form whose button is all it says.
#[derive(Debug, Deserialize)]
pub(super) struct NoFields {}

#[derive(Deserialize)]
struct WithToken<T> {
    csrf: String,
    #[serde(flatten)]
    fields: T,
}

impl<T: serde::de::DeserializeOwned + Send> FromRequest<AppState> for CheckedForm<T> {
    type Rejection = Refusal;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Refusal> {
        let (mut parts, body) = request.into_parts();
        let session = parts.extract_with_state::<UiSession, _>(state).await?;
        if !same_origin(&parts.headers, &parts.uri) {
            return Err(Refusal::Forbidden("This form was not sent from a page of this server."));
        }
        let Form(form) = Form::<WithToken<T>>::from_request(Request::from_parts(parts, body), &())
            .await
            .map_err(|_| Refusal::Forbidden("This form has no valid token: reload the page."))?;
        if !same(&form.csrf, &session.csrf) {
            return Err(Refusal::Forbidden("This form's token has expired: reload the page."));
        }
        Ok(Self { session, fields: form.fields })
    }
}

pub(super) async fn sign_in_page(headers: HeaderMap) -> Response {
    sign_in_form(&headers, StatusCode::OK, None)
}

fn sign_in_form(headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let nonce = cookie(headers, SIGN_IN_COOKIE)
        .filter(|value| value.len() == 43)
        .map_or_else(|| random_secret(""), str::to_owned);
    let body = html! {
        h1 { "Sign in" }
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        form.sign-in method="post" action="/ui/sign-in" {
            input type="hidden" name="csrf" value=(form_token("sign-in", &nonce));
            label for="api-key" { "API key" }
            input #api-key type="password" name="api_key" required autocomplete="off"
                autofocus aria-describedby="api-key-help";
            p #api-key-help.help {
                "An API key: the admin key " code { "gantry server" } " printed at its first start, or one "
                code { "gantry key create" } " made."
            }
            button type="submit" { "Sign in" }
        }
    };
    let mut response = (status, layout::page("Sign in", None, body)).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, &nonce, SIGN_IN_LIFETIME));
    response
}

#[derive(Deserialize)]
pub(super) struct SignIn {
    csrf: String,
    api_key: String,
}

pub(super) async fn sign_in(
    State(state): State<AppState>,
    source: crate::http_limits::Source,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let nonce = cookie(&headers, SIGN_IN_COOKIE);
    let token_ok = nonce.is_some_and(|nonce| same(&form.csrf, &form_token("sign-in", nonce)));
    if !same_origin(&headers, &uri) || !token_ok {
        let why = "The sign-in form expired or was not sent from this server: try again.";
        return sign_in_form(&headers, StatusCode::FORBIDDEN, Some(why));
    }
    if let Err(refused) = state.http_guards.admit(source, crate::http_limits::Failure::UiSignIn) {
        let why = refused.to_string();
        let mut page = sign_in_form(&headers, StatusCode::TOO_MANY_REQUESTS, Some(&why));
        crate::http_limits::mark_response(&refused, &mut page);
        return page;
    }
    let key = match state.store.find_api_key(&hash_secret(form.api_key.trim())).await {
        Ok(Some(key)) if key.is_active(now()) => key,
        Ok(_) => {
            let failure = crate::http_limits::Failure::UiSignIn;
            crate::http_limits::authentication_failed(&state, source, failure).await;
            let why = "That API key is not valid.";
            return sign_in_form(&headers, StatusCode::UNAUTHORIZED, Some(why));
        }
        Err(error) => return super::layout::error_page(error.into()),
    };
    let at = now();
    let expires = at.plus(SESSION_LIFETIME);
    let value = state.ui_sessions.issue(&key.id, expires.unix_millis());
    let session = UiSessionRecord {
        id_hash: hash_secret(&value),
        key_id: key.id.clone(),
        created_at: at,
        expires_at: expires,
    };
    if let Err(error) = state.store.insert_ui_session(&session).await {
        return super::layout::error_page(error.into());
    }
    tracing::info!(key = %key.name, "signed in to the web UI");
    let mut response = Redirect::to("/ui/pools").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &value, SESSION_LIFETIME));
    headers.append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, "", Duration::ZERO));
    response
}

/// Ends the session on the server, not only in this browser: a copy of the cookie stops
/// working too.
pub(super) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    _: CheckedForm,
) -> Response {
    if let Some(value) = cookie(&headers, SESSION_COOKIE)
        && let Err(error) = state.store.delete_ui_session(&hash_secret(value)).await
    {
        return super::layout::error_page(error.into());
    }
    let mut response = Redirect::to("/ui/sign-in").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", Duration::ZERO));
    response
}

/// The hidden field every form of a session carries.
pub(super) fn token_field(session: &UiSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}
