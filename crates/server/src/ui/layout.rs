//! The page shell every UI page shares (landmarks, navigation, sign-out form), the error
//! page, and small formatting helpers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_domain::Timestamp;
use gantry_domain::access::Role;
use maud::{DOCTYPE, Markup, html};

use super::session::{UiSession, token_field};
use crate::error::ApiError;

pub(super) fn page(title: &str, session: Option<&UiSession>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Gantry" }
                link rel="stylesheet" href="/ui/assets/gantry.css";
                script src="/ui/assets/gantry.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui/pools" { "Gantry" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            ul {
                                li { a href="/ui/pools" { "Worker pools" } }
                                li { a href="/ui/stacks" { "Stacks" } }
                                @if session.actor.role == Role::Admin {
                                    li { a href="/ui/keys" { "API keys" } }
                                    li { a href="/ui/audit" { "Audit log" } }
                                    li { a href="/ui/webhooks" { "Webhooks" } }
                                }
                            }
                        }
                        form.sign-out method="post" action="/ui/sign-out" {
                            (token_field(session))
                            span.who { "Key " code { (session.actor.key_name) } " (" (session.actor.role) ")" }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { (main) }
            }
        }
    }
}

/// A failed request as a page: the status and message users would get from the API.
pub(super) fn error_page(error: ApiError) -> Response {
    let status = error.status();
    if status.is_server_error() {
        tracing::error!(%error, "UI request failed");
    }
    let message = match status.is_server_error() {
        true => "The server could not complete this request; its log says why.".to_owned(),
        false => error.to_string(),
    };
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p role="alert" { (message) }
        p { a href="/ui/pools" { "Back to the pools" } }
    };
    (status, page("Error", None, body)).into_response()
}

/// UI handlers' errors become pages, not JSON.
pub(super) struct UiError(ApiError);

impl From<ApiError> for UiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<gantry_store::StoreError> for UiError {
    fn from(error: gantry_store::StoreError) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        error_page(self.0)
    }
}

pub(super) type UiResult<T = Response> = Result<T, UiError>;

/// What a form that creates something answers: the page of what it created, or, when its
/// input was refused, the form's page again with the reason.
pub(super) async fn created_or_refused<T>(
    created: Result<T, ApiError>,
    created_page: impl FnOnce(&T) -> Response,
    form_page: impl AsyncFnOnce(StatusCode, String) -> Result<Response, ApiError>,
) -> UiResult {
    match created {
        Ok(created) => Ok(created_page(&created)),
        Err(error) if error.status().is_client_error() => {
            Ok(form_page(error.status(), error.to_string()).await?)
        }
        Err(error) => Err(error.into()),
    }
}

/// A point in time, readable by people and machines.
pub(super) fn time(at: Timestamp) -> Markup {
    let text = rfc3339(at);
    html! { time datetime=(text) { (text.replace('T', " ").trim_end_matches('Z')) " UTC" } }
}

/// A point in time of today's work, as a clock reads it; the full time is in the markup
/// and shown on hover.
pub(super) fn clock(at: Timestamp) -> Markup {
    let text = rfc3339(at);
    let clock = text.get(11..19).unwrap_or(&text).to_owned();
    html! { time datetime=(text) title=(text) { (clock) } }
}

fn rfc3339(at: Timestamp) -> String {
    let millis = u64::try_from(at.unix_millis()).unwrap_or(0);
    let system = std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis);
    humantime::format_rfc3339_seconds(system).to_string()
}

/// A status word as a badge; the word itself carries the meaning, colour only helps.
pub(super) fn badge(word: &str) -> Markup {
    html! { span class={ "badge badge-" (word.to_ascii_lowercase()) } { (word) } }
}

/// A table's column headings.
pub(super) fn header_row(columns: &[&str]) -> Markup {
    html! { tr { @for column in columns { th scope="col" { (column) } } } }
}

pub(super) fn labels(labels: &[String]) -> Markup {
    html! {
        @if labels.is_empty() { span.muted { "none" } }
        @else { ul.labels { @for label in labels { li { (label) } } } }
    }
}

/// A size in bytes as people read it: `512 B`, `3.4 KiB`, `12.0 MiB`.
pub(super) fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    // Each unit is 2^10 of the one before it.
    let exponent = (bytes.max(1).ilog2() / 10).min(4);
    let value = bytes as f64 / 1024f64.powi(exponent as i32);
    if exponent == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[exponent as usize])
    }
}

/// How long something took, to the precision people read: `850 ms`, `4.2 s`, `3 min 5 s`,
/// `2 h 7 min`.
pub(super) fn duration(from: Timestamp, to: Timestamp) -> Markup {
    let millis = u64::try_from(to.unix_millis() - from.unix_millis()).unwrap_or(0);
    let seconds = millis / 1000;
    let text = match millis {
        0..1_000 => format!("{millis} ms"),
        1_000..60_000 => format!("{}.{} s", seconds, (millis % 1000) / 100),
        60_000..3_600_000 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, (seconds % 3600) / 60),
    };
    html! { span.duration { (text) } }
}
