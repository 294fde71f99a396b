//! The webhooks in the web UI, for admins: the repositories whose VCS sends deliveries,
//! a form that registers one (its payload URL and secret shown next), deletion, and the
//! newest deliveries with what each triggered or why it triggered nothing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use gantry_proto::webhooks::{CreateWebhook, CreatedWebhook};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{UiResult, created_or_refused, header_row, page, time};
use super::session::{CheckedForm, NoFields, UiSession, token_field};
use crate::error::{ApiError, PathParam};
use crate::state::AppState;
use crate::webhooks::{all, register, unregister};

/// How many deliveries the page shows.
const SHOWN_DELIVERIES: u32 = 100;

/// The providers the form offers, with the names people know them by.
const PROVIDERS: [(&str, &str); 4] = [
    ("github", "GitHub"),
    ("gitlab", "GitLab"),
    ("gitea", "Gitea"),
    ("bitbucket", "Bitbucket Cloud"),
];

/// `GET /ui/webhooks`
pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> UiResult {
    Ok(list_page(&state, &session, StatusCode::OK, None).await?)
}

async fn list_page(
    state: &AppState,
    session: &UiSession,
    status: StatusCode,
    error: Option<String>,
) -> Result<Response, ApiError> {
    let webhooks = all(state).await?;
    let deliveries = state.store.list_deliveries(SHOWN_DELIVERIES).await?;
    let body = html! {
        h1 { "Webhooks" }
        p {
            "A registered repository's pushes trigger tracked runs of the stacks tracking the \
             pushed branch, and its pull requests proposed runs (docs/webhooks.md)."
        }
        div.table-scroll {
            table #webhooks {
                caption.visually-hidden { "Webhooks" }
                thead { (header_row(&["Provider", "Repository", "Payload URL", "Id", "Created by", "Created", ""])) }
                tbody {
                    @for webhook in &webhooks {
                        tr {
                            td { (webhook.provider) }
                            td { code { (webhook.repository) } }
                            td { code { (webhook.url) } }
                            td { code { (webhook.id) } }
                            td { (webhook.created_by) }
                            td { (time(webhook.created_at)) }
                            td {
                                form method="post" action={ "/ui/webhooks/" (webhook.id) "/delete" } {
                                    (token_field(session))
                                    button type="submit" aria-label={ "Delete the webhook of " (webhook.repository) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Register a repository" }
        @if let Some(error) = &error { p.error role="alert" { (error) } }
        (create_form(session))
        h2 { "Deliveries" }
        div.table-scroll {
            table #deliveries {
                caption.visually-hidden { "Webhook deliveries, newest first" }
                thead { (header_row(&["Received", "Provider", "Event", "Status", "Runs", "Outcome", "Delivery"])) }
                tbody {
                    @for delivery in &deliveries {
                        tr {
                            td { (time(delivery.received_at)) }
                            td { (delivery.provider) }
                            td { (delivery.event) }
                            td { (delivery.status) }
                            td {
                                @for run in &delivery.runs {
                                    a href={ "/ui/runs/" (run) } { code { (run) } } " "
                                }
                            }
                            td { (delivery.outcome) }
                            td { code { (delivery.delivery_id) } }
                        }
                    }
                }
            }
        }
    };
    Ok((status, page("Webhooks", Some(session), body)).into_response())
}

fn create_form(session: &UiSession) -> Markup {
    html! {
        form.key-form method="post" action="/ui/webhooks" {
            (token_field(session))
            label for="webhook-provider" { "Provider" }
            select #webhook-provider name="provider" {
                @for (value, name) in PROVIDERS { option value=(value) { (name) } }
            }
            label for="webhook-repository" { "Repository" }
            input #webhook-repository type="text" name="repository" required autocomplete="off"
                aria-describedby="webhook-repository-help";
            p #webhook-repository-help.help {
                "As the stacks name it; any spelling of it matches (https or ssh)."
            }
            button type="submit" { "Register" }
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct WebhookForm {
    provider: String,
    repository: String,
}

/// `POST /ui/webhooks`
pub(super) async fn create(
    State(state): State<AppState>,
    form: CheckedForm<WebhookForm>,
) -> UiResult {
    let CheckedForm { session, fields } = form;
    let request = CreateWebhook {
        provider: fields.provider,
        repository: fields.repository.trim().to_owned(),
    };
    let created = register(&state, &session.actor, &request).await;
    created_or_refused(
        created,
        |created| created_page(&session, created),
        async |status, error| list_page(&state, &session, status, Some(error)).await,
    )
    .await
}

/// What to set in the repository's settings.
fn created_page(session: &UiSession, created: &CreatedWebhook) -> Response {
    let webhook = &created.webhook;
    let body = html! {
        h1 { "Webhook of " (webhook.repository) " registered" }
        p.notice role="status" {
            "Set these in the repository's webhook settings (content type "
            code { "application/json" } "; events: pushes and pull or merge requests). "
            "Administrators can show the secret again with "
            code { "gantry webhook secret " (webhook.id) } "."
        }
        dl.facts {
            dt { "Payload URL" } dd { code #payload-url { (webhook.url) } }
            dt { "Secret" } dd {
                div.copyable {
                    pre #webhook-secret.token tabindex="0" aria-label="Webhook secret" { code { (created.secret) } }
                    button.copy type="button" data-copy="webhook-secret" hidden { "Copy secret" }
                }
            }
        }
        p { a href="/ui/webhooks" { "Back to the webhooks" } }
    };
    let title = format!("Webhook of {} registered", webhook.repository);
    (StatusCode::CREATED, page(&title, Some(session), body)).into_response()
}

/// `POST /ui/webhooks/{webhook}/delete`
pub(super) async fn delete(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
    _form: CheckedForm<NoFields>,
) -> UiResult {
    unregister(&state, &id).await?;
    Ok(Redirect::to("/ui/webhooks").into_response())
}
