//! Creating a pool: a form for its name, description, labels and the owner's CSR, and
//! the one page that shows the pool's token, with the launcher command to start with it.
//! A refused form comes back with what was typed and the reason at the field concerned.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gantry_proto::api::{CreatePool, PoolCreated};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{UiResult, error_page, page};
use super::session::{CheckedForm, UiSession, token_field};
use crate::api::pools as pool_ops;
use crate::error::ApiError;
use crate::state::AppState;

/// What the form holds, as typed.
#[derive(Debug, Default, Deserialize)]
pub(super) struct PoolForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    /// Comma-separated.
    #[serde(default)]
    labels: String,
    #[serde(default)]
    csr: String,
}

/// The field a refusal is about, and why.
struct FieldError {
    field: &'static str,
    message: String,
}

pub(super) async fn new_pool(session: UiSession) -> UiResult {
    Ok(form_page(&session, &PoolForm::default(), None, StatusCode::OK))
}

pub(super) async fn create(State(state): State<AppState>, form: CheckedForm<PoolForm>) -> Response {
    let CheckedForm { session, fields } = form;
    let labels = fields
        .labels
        .split(',')
        .map(str::trim)
        .filter(|label| !label.is_empty())
        .map(str::to_owned)
        .collect();
    let request = CreatePool {
        name: fields.name.trim().to_owned(),
        csr: fields.csr.clone(),
        description: fields.description.trim().to_owned(),
        labels,
    };
    if request.csr.trim().is_empty() {
        let error = FieldError {
            field: "csr",
            message: "Paste the certificate signing request: the PEM text from \
                      -----BEGIN CERTIFICATE REQUEST----- to its END line."
                .to_owned(),
        };
        return form_page(&session, &fields, Some(error), StatusCode::BAD_REQUEST);
    }
    match pool_ops::create_pool(&state, request).await {
        Ok(created) => created_page(&session, &created),
        Err(error) => match field_of(&error) {
            Some(field) => {
                let error = FieldError { field, message: capitalized(&error.to_string()) };
                form_page(&session, &fields, Some(error), error_status(field))
            }
            None => error_page(error),
        },
    }
}

/// Which field a refusal of pool creation is about; `None` when it is no user's typo.
fn field_of(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::Csr(_) => Some("csr"),
        ApiError::InvalidRequest(_) => Some("name"),
        ApiError::Store(gantry_store::StoreError::AlreadyExists { .. }) => Some("name"),
        _ => None,
    }
}

/// The label of a field that can be refused.
fn label_of(field: &str) -> &'static str {
    match field {
        "name" => "Name",
        _ => "Certificate signing request",
    }
}

fn error_status(field: &str) -> StatusCode {
    match field {
        "name" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn capitalized(message: &str) -> String {
    let mut characters = message.chars();
    characters.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(characters).collect::<String>()
    })
}

fn form_page(
    session: &UiSession,
    form: &PoolForm,
    error: Option<FieldError>,
    status: StatusCode,
) -> Response {
    let error_for = |field: &str| error.as_ref().filter(|error| error.field == field);
    let body = html! {
        h1 { "New worker pool" }
        p {
            "A private pool runs on your machines. Make its key there and paste the key's "
            "certificate signing request here; the private key never leaves your machine."
        }
        @if let Some(error) = &error {
            p.error role="alert" {
                "The pool was not created: see " a href={ "#" (error.field) } { (label_of(error.field)) } "."
            }
        }
        form.stacked #new-pool method="post" action="/ui/pools" novalidate {
            (token_field(session))
            (field("name", label_of("name"), error_for("name"), html! {
                "Letters, digits, dots, dashes and underscores, such as " code { "prod-eu" } "."
            }, |described| html! {
                input #name type="text" name="name" value=(form.name) required
                    autocomplete="off" spellcheck="false" aria-describedby=(described)
                    aria-invalid=[error_for("name").map(|_| "true")];
            }))
            (field("description", "Description (optional)", None, html! {
                "What the pool is for, for the people who pick it."
            }, |described| html! {
                input #description type="text" name="description" value=(form.description)
                    aria-describedby=(described);
            }))
            (field("labels", "Labels (optional)", None, html! {
                "Comma-separated, such as " code { "team=infra, region=eu" } "."
            }, |described| html! {
                input #labels type="text" name="labels" value=(form.labels)
                    autocomplete="off" aria-describedby=(described);
            }))
            (field("csr", label_of("csr"), error_for("csr"), html! {
                "PEM text, as " code { "openssl req -new -newkey rsa:4096 -nodes -keyout pool.key -out pool.csr -subj /CN=pool" }
                " or " code { "gantry keygen" } " writes it: paste the content of " code { "pool.csr" } "."
            }, |described| html! {
                textarea #csr name="csr" rows="10" required spellcheck="false"
                    aria-describedby=(described)
                    aria-invalid=[error_for("csr").map(|_| "true")] { (form.csr) }
            }))
            button #create-pool type="submit" { "Create pool" }
        }
    };
    (status, page("New worker pool", Some(session), body)).into_response()
}

/// A labelled field with its help text, and its error when the form was refused for it.
fn field(
    name: &str,
    label: &str,
    error: Option<&FieldError>,
    help: Markup,
    control: impl FnOnce(String) -> Markup,
) -> Markup {
    let help_id = format!("{name}-help");
    let error_id = format!("{name}-error");
    let described = match error {
        Some(_) => format!("{error_id} {help_id}"),
        None => help_id.clone(),
    };
    html! {
        div.field {
            label for=(name) { (label) }
            @if let Some(error) = error {
                p.error id=(error_id) { (error.message) }
            }
            (control(described))
            p.help id=(help_id) { (help) }
        }
    }
}

/// The token, this once, with the command that starts a launcher with it.
fn created_page(session: &UiSession, created: &PoolCreated) -> Response {
    let pool = &created.pool;
    let command = launcher_command(&created.token);
    let body = html! {
        h1 { "Pool " (pool.name) " created" }
        p.notice role="status" {
            strong { "Copy the token now: it is shown only this once." }
            " It holds no secret — without the pool's private key it opens nothing — "
            "but Gantry does not keep it. A lost token means resetting the pool."
        }
        h2 { "Start a launcher" }
        p {
            "On the machine that holds " code { "pool.key" } " (the private key the CSR was "
            "made with), with " code { "gantry-worker" } " next to " code { "gantry-launcher" } ":"
        }
        div.copyable {
            pre #launcher-command tabindex="0" aria-label="Launcher command" { code { (command) } }
            button.copy type="button" data-copy="launcher-command" hidden { "Copy command" }
        }
        h2 { "The token alone" }
        div.copyable {
            pre #token.token tabindex="0" aria-label="Pool token" { code { (created.token) } }
            button.copy type="button" data-copy="token" hidden { "Copy token" }
        }
        p { a href={ "/ui/pools/" (pool.id) } { "Go to pool " (pool.name) } }
    };
    (StatusCode::CREATED, page(&format!("Pool {} created", pool.name), Some(session), body))
        .into_response()
}

/// The command the README starts a launcher with, filled in with this token.
fn launcher_command(token: &str) -> String {
    format!(
        "GANTRY_TOKEN='{token}' \\\nGANTRY_POOL_PRIVATE_KEY=\"$(base64 -w 0 pool.key)\" \\\ngantry-launcher"
    )
}
