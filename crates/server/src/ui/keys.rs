//! API keys in the web UI, for admins: the list with each key's role, scope, expiry and
//! last use, a form that creates one (its secret shown this once) and revocation.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use gantry_domain::access::Role;
use gantry_proto::keys::{CreateKey, KeyCreated};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{UiResult, created_or_refused, header_row, page, time};
use super::session::{CheckedForm, NoFields, UiSession, token_field};
use crate::access::{create_key, revoke_key};
use crate::error::{ApiError, PathParam};
use crate::state::{AppState, now};

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> UiResult {
    Ok(list_page(&state, &session, StatusCode::OK, None).await?)
}

async fn list_page(
    state: &AppState,
    session: &UiSession,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, ApiError> {
    let at = now();
    let keys = state.store.list_api_keys().await?;
    let body = html! {
        h1 { "API keys" }
        p {
            "Each key has a role — " strong { "reader" } " reads, " strong { "writer" }
            " also triggers, confirms, discards and stops runs, " strong { "operator" }
            " also manages pools and stacks, " strong { "admin" } " also manages keys — "
            "and may be scoped to some pools or stacks."
        }
        div.table-scroll {
            table #keys {
                caption.visually-hidden { "API keys" }
                thead { (header_row(&["Name", "Role", "Scope", "Created", "Expires", "Last used", "Status", ""])) }
                tbody {
                    @for key in &keys {
                        tr {
                            td { code { (key.name) } }
                            td { (key.role) }
                            td {
                                @if key.scope.is_everything() { span.muted { "everything" } }
                                @else { ul.labels { @for selector in key.scope.written() { li { (selector) } } } }
                            }
                            td { (time(key.created_at)) br; span.muted { "by " (key.created_by) } }
                            td { @match key.expires_at { Some(at) => (time(at)), None => span.muted { "never" } } }
                            td { @match key.last_used_at { Some(at) => (time(at)), None => span.muted { "never" } } }
                            td {
                                @if key.revoked_at.is_some() { "revoked" }
                                @else if !key.is_active(at) { "expired" }
                                @else { "active" }
                            }
                            td {
                                @if key.is_active(at) {
                                    form method="post" action={ "/ui/keys/" (key.id) "/revoke" } {
                                        (token_field(session))
                                        button type="submit" aria-label={ "Revoke key " (key.name) } { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Create a key" }
        @if let Some(error) = &error { p.error role="alert" { (error) } }
        (create_form(session))
    };
    Ok((status, page("API keys", Some(session), body)).into_response())
}

fn create_form(session: &UiSession) -> Markup {
    html! {
        form.key-form method="post" action="/ui/keys" {
            (token_field(session))
            label for="key-name" { "Name" }
            input #key-name type="text" name="name" required autocomplete="off";
            label for="key-role" { "Role" }
            select #key-role name="role" {
                @for role in Role::ALL { option value=(role) selected[role == Role::Reader] { (role) } }
            }
            label for="key-scope" { "Scope (optional)" }
            input #key-scope type="text" name="scope" aria-describedby="key-scope-help";
            p #key-scope-help.help {
                "Comma-separated: " code { "pool:NAME" } ", " code { "pool-label:LABEL" } ", "
                code { "stack:NAME" } ", " code { "stack-label:LABEL" } ". Empty reaches everything."
            }
            label for="key-days" { "Expires after (days, optional)" }
            input #key-days type="number" name="expires_in_days" min="1";
            button type="submit" { "Create key" }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct KeyForm {
    name: String,
    role: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    expires_in_days: String,
}

impl KeyForm {
    fn request(&self) -> Result<CreateKey, String> {
        let role = self.role.parse::<Role>().map_err(|e| e.to_string())?;
        let scope = self
            .scope
            .split(',')
            .map(str::trim)
            .filter(|selector| !selector.is_empty())
            .map(str::to_owned)
            .collect();
        let days = self.expires_in_days.trim();
        let expires_at = match days {
            "" => None,
            days => {
                let days = days.parse::<u32>().ok().filter(|days| *days > 0).ok_or_else(|| {
                    format!("{days:?} is not a number of days: expected 1 or more")
                })?;
                Some(now().plus(std::time::Duration::from_secs(u64::from(days) * 86_400)))
            }
        };
        Ok(CreateKey { name: self.name.trim().to_owned(), role, scope, expires_at })
    }
}

pub(super) async fn create(State(state): State<AppState>, form: CheckedForm<KeyForm>) -> UiResult {
    let CheckedForm { session, fields } = form;
    let created = match fields.request() {
        Ok(request) => create_key(&state, &session.actor, request).await,
        Err(message) => Err(ApiError::invalid(message)),
    };
    created_or_refused(
        created,
        |created| created_page(&session, created),
        async |status, error| list_page(&state, &session, status, Some(error)).await,
    )
    .await
}

/// The secret, this once.
fn created_page(session: &UiSession, created: &KeyCreated) -> Response {
    let key = &created.key;
    let body = html! {
        h1 { "Key " (key.name) " created" }
        p.notice role="status" {
            strong { "Copy the key now: it is shown only this once." }
            " Gantry keeps only its hash. A lost key is revoked and replaced."
        }
        div.copyable {
            pre #api-key.token tabindex="0" aria-label="API key" { code { (created.secret) } }
            button.copy type="button" data-copy="api-key" hidden { "Copy key" }
        }
        p { a href="/ui/keys" { "Back to the keys" } }
    };
    (StatusCode::CREATED, page(&format!("Key {} created", key.name), Some(session), body))
        .into_response()
}

pub(super) async fn revoke(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    form: CheckedForm<NoFields>,
) -> UiResult {
    // Revoking the key this browser signed in with ends its session too: the next
    // page is the sign-in form.
    revoke_key(&state, &form.session.actor, &key).await?;
    Ok(Redirect::to("/ui/keys").into_response())
}
