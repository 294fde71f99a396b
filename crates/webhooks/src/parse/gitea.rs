//! Gitea's deliveries: `push` and `pull_request`, in a layout close to GitHub's; every
//! other event is left alone. Gitea has no ping: its test delivery is a push.

use super::{ParseError, Payload, RefPushLayout, collect_urls, github, ref_push};
use crate::event::{Action, PullRequestAction};

pub(super) const REPOSITORY_FIELD: &str = "repository.clone_url";

pub(super) fn urls(payload: &Payload<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    collect_urls(&mut urls, payload.get("repository"), &["clone_url", "ssh_url", "html_url"]);
    urls
}

pub(super) fn read(payload: &Payload<'_>) -> Result<Action, ParseError> {
    match payload.event {
        "push" => push(payload),
        // Gitea names label, assignment, milestone and new-commit changes all
        // `pull_request`; the action word tells them apart.
        "pull_request" => github::pull_request(payload, action),
        _ => Ok(payload.not_acted_on()),
    }
}

fn push(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let layout = RefPushLayout {
        deleted_flag: None,
        // Gitea lists only as many commits as its activity feed shows (five by default) and
        // counts them all in `total_commits` (since 1.15; older versions list them all).
        total_field: Some("total_commits"),
        cap: None,
        // Gitea's payload does not say whether a push was forced.
        incomparable_flags: &[],
    };
    ref_push(payload, &layout)
}

fn action(action: &str) -> PullRequestAction {
    match action {
        "opened" | "reopened" => PullRequestAction::Opened,
        "synchronized" => PullRequestAction::Updated,
        "closed" => PullRequestAction::Closed,
        other => PullRequestAction::Other(other.to_owned()),
    }
}
