//! Stacks: the list, and a stack's page with its settings, its run history (live), the
//! buttons that trigger a tracked or a proposed run, its schedules, and for a stack whose
//! state Gantry manages, the kept state versions with a button to roll back to each earlier one.

use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use gantry_domain::RunType;
use gantry_proto::api::{self, TriggerRun};
use gantry_store::{RunFilter, StackRecord};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{UiResult, badge, duration, header_row, labels, page, size, time};
use super::session::{CheckedForm, UiSession, token_field};
use crate::access::visible;
use crate::api::{runs as run_ops, stacks as stack_ops, state_versions as state_ops};
use crate::error::{ApiError, PathParam};
use crate::lookup;
use crate::state::AppState;

/// How many of a stack's runs its page shows.
const HISTORY: u32 = 30;

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> UiResult {
    let reach = session.actor.reach(&state).await?;
    let stacks = visible(stack_ops::all_stacks(&state).await?, reach.as_ref(), |reach, stack| {
        reach.stack(stack.id)
    });
    let mut latest = Vec::with_capacity(stacks.len());
    for stack in &stacks {
        let filter = RunFilter { stack_id: Some(stack.id), limit: 1 };
        latest.push(state.store.list_runs(&filter).await?.into_iter().next());
    }
    let body = html! {
        h1 { "Stacks" }
        @if stacks.is_empty() {
            p { "No stack yet: create one with " code { "gantry stack create" } "." }
        } @else {
            div.table-scroll {
                table #stacks {
                    caption.visually-hidden { "Stacks" }
                    thead { (header_row(&["Name", "Pool", "Source", "Tool", "Latest run", "Labels"])) }
                    tbody {
                        @for (stack, run) in stacks.iter().zip(&latest) {
                            tr {
                                th scope="row" { a href={ "/ui/stacks/" (stack.id) } { (stack.name) }
                                    @if stack.drift.is_some() { " " (badge("DRIFTED")) } }
                                td { a href={ "/ui/pools/" (stack.pool_id) } { (stack.pool_name) } }
                                td { (source(stack)) }
                                td { (stack.tool.to_string()) }
                                td { @match run {
                                    Some(run) => a href={ "/ui/runs/" (run.id) }
                                        aria-label={ "Latest run, " (run.state.to_string()) } {
                                        (badge(&run.state.to_string()))
                                    },
                                    None => span.muted { "never run" },
                                } }
                                td { (labels(&stack.labels)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page("Stacks", Some(&session), body).into_response())
}

/// Where a stack's code comes from: repository, branch and project root.
fn source(stack: &api::Stack) -> Markup {
    html! {
        code { (stack.repository) } br;
        span.muted { "branch " (stack.branch)
            @if !stack.project_root.is_empty() { ", in " (stack.project_root) } }
    }
}

pub(super) async fn show(
    State(state): State<AppState>,
    session: UiSession,
    PathParam(key): PathParam<String>,
) -> UiResult {
    let record = lookup::stack(&state, &key).await?;
    let stack = stack_ops::one_stack(&state, &record).await?;
    let history = history_panel(&state, &record).await?;
    let schedules = crate::schedules::of_stack(&state, &record).await?;
    let versions = match record.managed_state {
        true => Some(state_ops::versions(&state, &record).await?),
        false => None,
    };
    let body = html! {
        h1 { (stack.name) " " span.kind { "stack" } }
        @if !stack.description.is_empty() { p { (stack.description) } }
        dl.facts {
            dt { "Source" } dd { (source(&stack)) }
            dt { "Pool" } dd { a href={ "/ui/pools/" (stack.pool_id) } { (stack.pool_name) } }
            dt { "Tool" } dd { (stack.tool.to_string())
                @if let Some(image) = &stack.runner_image { " in " code { (image) } } }
            dt { "Applies" } dd { @if stack.autodeploy { "without confirmation (autodeploy)" }
                @else { "after a confirmation" } }
            dt { "State" } dd { @if stack.managed_state { "managed by Gantry, encrypted to the pool's key" }
                @else { "in the stack's own backend" } }
            dt { "Environment" } dd { (environment(&stack.environment)) }
            dt { "Labels" } dd { (labels(&stack.labels)) }
            @if !stack.trigger_paths.is_empty() {
                dt { "Trigger paths" } dd { @for (i, path) in stack.trigger_paths.iter().enumerate() {
                    @if i > 0 { ", " } code { (path) } } }
            }
            @if let Some(fence) = &stack.lock_fence {
                dt { "Lock" } dd #lock-fence { "fenced until " (time(fence.until)) " (the worker of run "
                    a href={ "/ui/runs/" (fence.run_id) } { code { (fence.run_id) } }
                    " may still be stopping)" }
            }
            @if let Some(drift) = &stack.drift {
                dt { "Drift" } dd #drift { (badge("DRIFTED")) " since " (time(drift.since))
                    " (found by drift check " a href={ "/ui/runs/" (drift.run_id) } { code { (drift.run_id) } }
                    "; a tracked run that finishes clears it)" }
            }
        }
        section.actions aria-labelledby="trigger-heading" {
            h2 #trigger-heading { "Trigger a run" }
            div.toolbar {
                (trigger_form(&session, &stack, RunType::Tracked, "Trigger tracked run",
                    "Plans, then applies once confirmed"))
                (trigger_form(&session, &stack, RunType::Proposed, "Trigger proposed run",
                    "Plans only"))
            }
        }
        (schedules_section(&schedules))
        section aria-labelledby="runs-heading" {
            h2 #runs-heading { "Runs" }
            div #panel.panel data-live={ "/ui/stacks/" (stack.id) "/live" } { (history) }
        }
        @if let Some(versions) = &versions { (state_versions(&session, &stack, versions)) }
    };
    Ok(page(&format!("{} · Stack", stack.name), Some(&session), body).into_response())
}

/// The stack's schedules: when each fires next and what its last firing did.
fn schedules_section(schedules: &[gantry_proto::schedules::Schedule]) -> Markup {
    html! {
        section aria-labelledby="schedules-heading" {
            h2 #schedules-heading { "Schedules" }
            @if schedules.is_empty() {
                p { "None: add one with " code { "gantry stack schedule add" } "." }
            } @else {
                div.table-scroll {
                    table #schedules {
                        caption.visually-hidden { "Schedules" }
                        thead { (header_row(&["Kind", "Cron", "Next", "Last fired", "Last outcome"])) }
                        tbody {
                            @for schedule in schedules {
                                tr {
                                    th scope="row" { (schedule.kind)
                                        @if let Some(command) = &schedule.command { ": " code { (command) } }
                                        @if schedule.reconcile { span.muted { " (reconciles)" } } }
                                    td { code { (schedule.cron) } " " span.muted { (schedule.time_zone) } }
                                    td { @match schedule.next_fire_at {
                                        Some(at) => (time(at)),
                                        None => span.muted { "never" },
                                    } }
                                    td { @match schedule.last_fired_at {
                                        Some(at) => (time(at)),
                                        None => span.muted { "not yet" },
                                    } }
                                    td { (schedule.last_outcome.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The kept state versions, newest first, each earlier one with its rollback button and
/// each orphaned one marked, with its adopt button.
fn state_versions(session: &UiSession, stack: &api::Stack, list: &api::StateVersionList) -> Markup {
    html! {
        section aria-labelledby="state-heading" {
            h2 #state-heading { "State versions" }
            p.help { "The newest " (list.kept) " versions are kept, encrypted to the pool's key. \
                Runs start from the current one; rolling back makes an earlier one current \
                again, as a new version. An orphaned version was stored by a run that had lost \
                the stack's lock (the server had ended it): it is kept until adopted." }
            @if list.versions.is_empty() {
                p { "No state yet: the first apply stores one." }
            } @else {
                div.table-scroll {
                    table #state-versions {
                        caption.visually-hidden { "State versions, newest first" }
                        thead { (header_row(&["Version", "Produced by", "Size", "Created", "Action"])) }
                        tbody {
                            @for version in &list.versions {
                                tr {
                                    th scope="row" { (version.version)
                                        @if version.current { " " span.badge { "current" } }
                                        @if version.orphaned { " " span.badge { "orphaned" } } }
                                    td { a href={ "/ui/runs/" (version.run_id) } { code { (version.run_id) } }
                                        @if let Some(of) = version.rollback_of {
                                            br; span.muted { "rollback to version " (of)
                                                @if let Some(by) = &version.rolled_back_by { " by " (by) } }
                                        }
                                        @if let Some(of) = version.adopted_from {
                                            br; span.muted { "adopts orphaned version " (of)
                                                @if let Some(by) = &version.adopted_by { " by " (by) } }
                                        } }
                                    td { (size(version.size)) }
                                    td { (time(version.created_at)) }
                                    td { @if version.orphaned {
                                        form method="post" action={ "/ui/stacks/" (stack.id) "/state/adopt" } {
                                            (token_field(session))
                                            input type="hidden" name="version" value=(version.version);
                                            button id={ "adopt-" (version.version) } type="submit"
                                                aria-label={ "Adopt orphaned version " (version.version) } { "Adopt" }
                                        }
                                    } @else if !version.current {
                                        form method="post" action={ "/ui/stacks/" (stack.id) "/state/rollback" } {
                                            (token_field(session))
                                            input type="hidden" name="to" value=(version.version);
                                            button id={ "rollback-" (version.version) } type="submit"
                                                aria-label={ "Roll back to version " (version.version) } { "Roll back" }
                                        }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn environment(variables: &[api::EnvironmentVariable]) -> Markup {
    html! {
        @if variables.is_empty() { span.muted { "none" } }
        @else { ul.plain { @for variable in variables {
            li { code { (variable.name) }
                @match &variable.value {
                    Some(value) if !variable.secret => { " = " code { (value) } }
                    _ => { " " span.muted { "(secret, hidden)" } }
                }
            }
        } } }
    }
}

fn trigger_form(
    session: &UiSession,
    stack: &api::Stack,
    run_type: RunType,
    label: &str,
    help: &str,
) -> Markup {
    let slug = run_type.as_str().to_ascii_lowercase();
    html! {
        form method="post" action={ "/ui/stacks/" (stack.id) "/runs" } {
            (token_field(session))
            input type="hidden" name="type" value=(run_type.as_str());
            button id={ "trigger-" (slug) } type="submit"
                aria-describedby={ "trigger-" (slug) "-help" } { (label) }
            span.help id={ "trigger-" (slug) "-help" } { " " (help) }
        }
    }
}

/// The stack's newest runs, as the page shows them and as live updates replace them.
pub(super) async fn history_panel(state: &AppState, stack: &StackRecord) -> UiResult<Markup> {
    let filter = RunFilter { stack_id: Some(stack.id), limit: HISTORY };
    let runs = run_ops::recent_runs(state, filter).await?;
    Ok(html! {
        @if runs.is_empty() {
            p { "No run yet." }
        } @else {
            div.table-scroll {
                table #runs {
                    caption.visually-hidden { "Runs, newest first" }
                    thead { (header_row(&["Run", "State", "Type", "Commit", "Triggered", "Took"])) }
                    tbody {
                        @for run in &runs {
                            tr {
                                th scope="row" { a href={ "/ui/runs/" (run.id) } { code { (run.id) } } }
                                td.status { (badge(&run.state.to_string())) }
                                td { (run.run_type.to_string()) }
                                td { (commit(run)) }
                                td { (time(run.created_at)) br; span.muted { "by " (run.triggered_by) } }
                                td { @if run.state.is_terminal() {
                                    (duration(run.created_at, run.updated_at))
                                } @else { span.muted { "running" } } }
                            }
                        }
                    }
                }
            }
        }
    })
}

/// A run's commit: its short SHA and message, or the branch head it will resolve.
pub(super) fn commit(run: &api::Run) -> Markup {
    html! {
        @match &run.commit {
            Some(sha) => {
                code title=(sha) { (sha.get(..8).unwrap_or(sha)) }
                @if let Some(message) = &run.commit_message {
                    " " span.commit-message { (message.lines().next().unwrap_or_default()) }
                }
            }
            None => span.muted { "head of " (run.branch) },
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TriggerForm {
    #[serde(rename = "type")]
    run_type: String,
}

pub(super) async fn trigger(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    form: CheckedForm<TriggerForm>,
) -> UiResult {
    let stack = lookup::stack(&state, &key).await?;
    let run_type = match form.fields.run_type.parse::<RunType>() {
        Ok(run_type @ (RunType::Tracked | RunType::Proposed)) => run_type,
        _ => {
            return Err(ApiError::invalid(format!(
                "run type {:?} cannot be triggered here: expected TRACKED or PROPOSED",
                form.fields.run_type
            ))
            .into());
        }
    };
    let request = TriggerRun { run_type, commit: None, command: None };
    let run = run_ops::trigger_run(&state, &stack, request, &form.session.actor.key_name).await?;
    Ok(Redirect::to(&format!("/ui/runs/{}", run.id)).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct RollbackForm {
    /// Text: a flattened form field does not parse as a number.
    to: String,
}

pub(super) async fn rollback_state(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    form: CheckedForm<RollbackForm>,
) -> UiResult {
    let stack = lookup::stack(&state, &key).await?;
    let to = form.fields.to.parse::<u64>().map_err(|_| {
        ApiError::invalid(format!("version {:?} is not a state version number", form.fields.to))
    })?;
    // Recorded by the key's name, as the API records it.
    state_ops::rollback_state(&state, &stack, to, &form.session.actor.key_name).await?;
    Ok(Redirect::to(&format!("/ui/stacks/{}", stack.id)).into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct AdoptForm {
    /// Text: a flattened form field does not parse as a number.
    version: String,
}

pub(super) async fn adopt_state(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    form: CheckedForm<AdoptForm>,
) -> UiResult {
    let stack = lookup::stack(&state, &key).await?;
    let version = form.fields.version.parse::<u64>().map_err(|_| {
        ApiError::invalid(format!(
            "version {:?} is not a state version number",
            form.fields.version
        ))
    })?;
    state_ops::adopt_state(&state, &stack, version, &form.session.actor.key_name).await?;
    Ok(Redirect::to(&format!("/ui/stacks/{}", stack.id)).into_response())
}
