//! The webhooks in the web UI, for admins: the repositories whose VCS sends deliveries,
//! and the newest deliveries with what each triggered or why it triggered nothing.

use axum::extract::State;
use axum::response::IntoResponse;
use maud::html;

use super::layout::{UiResult, header_row, page, time};
use super::session::UiSession;
use crate::error::ApiError;
use crate::state::AppState;

/// How many deliveries the page shows.
const SHOWN_DELIVERIES: u32 = 100;

/// `GET /ui/webhooks`
pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> UiResult {
    let webhooks = state.store.list_webhooks().await.map_err(ApiError::from)?;
    let deliveries = state.store.list_deliveries(SHOWN_DELIVERIES).await.map_err(ApiError::from)?;
    let body = html! {
        h1 { "Webhooks" }
        p {
            "Create one with " code { "gantry webhook create --provider github --repository URL" }
            ": it prints the payload URL and secret to set in the repository's settings."
        }
        div.table-scroll {
            table #webhooks {
                caption.visually-hidden { "Webhooks" }
                thead { (header_row(&["Provider", "Repository", "Payload URL", "Id", "Created by", "Created"])) }
                tbody {
                    @for webhook in &webhooks {
                        tr {
                            td { (webhook.provider) }
                            td { code { (webhook.repository) } }
                            td { code { (format!("{}/api/v1/webhooks/{}", state.public_url.trim_end_matches('/'), webhook.provider)) } }
                            td { code { (webhook.id) } }
                            td { (webhook.created_by) }
                            td { (time(webhook.created_at)) }
                        }
                    }
                }
            }
        }
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
    Ok(page("Webhooks", Some(&session), body).into_response())
}
