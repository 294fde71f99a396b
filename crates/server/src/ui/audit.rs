//! The audit log in the web UI, for admins: every recorded change, newest first, with
//! whether its hash chain holds.

use axum::extract::State;
use axum::response::IntoResponse;
use gantry_proto::audit::AuditQuery;
use gantry_store::{AuditFilter, verify_audit_chain};
use maud::html;

use super::layout::{UiResult, header_row, page, time};
use super::session::UiSession;
use crate::error::{ApiError, QueryParams};
use crate::state::AppState;

/// `GET /ui/audit?since=RFC3339&actor=NAME`
pub(super) async fn list(
    State(state): State<AppState>,
    session: UiSession,
    QueryParams(query): QueryParams<AuditQuery>,
) -> UiResult {
    let all = state.store.list_audit(&AuditFilter::default()).await.map_err(ApiError::from)?;
    let chain = verify_audit_chain(&all);
    let mut shown = crate::audit::entries(&state, query).await?;
    shown.reverse();
    let body = html! {
        h1 { "Audit log" }
        @match &chain {
            Ok(entries) => p { "The hash chain holds over all " (entries) " entries." }
            Err(broken) => p.error role="alert" { (broken) }
        }
        div.table-scroll {
            table #audit {
                caption.visually-hidden { "Audit log, newest first" }
                thead { (header_row(&["#", "Time", "Actor", "Action", "Target", "Source", "Outcome"])) }
                tbody {
                    @for record in &shown {
                        tr {
                            td { (record.seq) }
                            td { (time(record.entry.at)) }
                            td { code { (record.entry.actor) } }
                            td { code { (record.entry.action) } }
                            td { (record.entry.target) }
                            td { (record.entry.source) }
                            td { (record.entry.outcome) }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Audit log", Some(&session), body).into_response())
}
