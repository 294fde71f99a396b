//! GitHub's deliveries: `push`, `pull_request` and `ping`; every other event is left alone.
//! Gitea's pull request payloads copy this layout, so their reader is shared.

use super::{ParseError, Payload, RefPushLayout, collect_urls, ref_push};
use crate::event::{Action, PullRequest, PullRequestAction};

pub(super) const REPOSITORY_FIELD: &str = "repository.clone_url";

/// GitHub lists at most this many commits in a push; a list this long may have been cut.
const MAX_COMMITS: usize = 2048;

pub(super) fn urls(payload: &Payload<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    collect_urls(
        &mut urls,
        payload.get("repository"),
        &["clone_url", "ssh_url", "html_url", "git_url"],
    );
    urls
}

pub(super) fn read(payload: &Payload<'_>) -> Result<Action, ParseError> {
    match payload.event {
        "ping" => Ok(Action::Ping),
        "push" => push(payload),
        "pull_request" => pull_request(payload, action),
        _ => Ok(payload.not_acted_on()),
    }
}

fn push(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let layout = RefPushLayout {
        deleted_flag: Some("deleted"),
        total_field: None,
        cap: Some(MAX_COMMITS),
        incomparable_flags: &["created", "forced"],
    };
    ref_push(payload, &layout)
}

fn action(action: &str) -> PullRequestAction {
    match action {
        "opened" | "reopened" => PullRequestAction::Opened,
        "synchronize" => PullRequestAction::Updated,
        "closed" => PullRequestAction::Closed,
        other => PullRequestAction::Other(other.to_owned()),
    }
}

/// A pull request event in GitHub's layout, its action word read by `action`.
pub(super) fn pull_request(
    payload: &Payload<'_>,
    action: fn(&str) -> PullRequestAction,
) -> Result<Action, ParseError> {
    Ok(Action::PullRequest(PullRequest {
        number: payload.number("number")?,
        action: action(payload.string("action")?),
        head_commit: payload.commit("pull_request.head.sha")?.to_owned(),
        head_branch: payload.name("pull_request.head.ref")?.to_owned(),
        base_branch: payload.name("pull_request.base.ref")?.to_owned(),
        title: payload.string("pull_request.title")?.to_owned(),
    }))
}
