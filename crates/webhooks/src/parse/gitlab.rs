//! GitLab's deliveries: `Push Hook`, `Tag Push Hook` and `Merge Request Hook`; every other
//! event is left alone. GitLab has no ping: its test delivery is a sample of the event.

use serde_json::Value;

use super::{ParseError, Payload, RefPushLayout, collect_urls, push_ignored, ref_push};
use crate::event::{Action, PullRequest, PullRequestAction};

pub(super) const REPOSITORY_FIELD: &str = "project.git_http_url";

pub(super) fn urls(payload: &Payload<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    // `project` is the current layout; `repository` is older and kept by GitLab beside it.
    collect_urls(
        &mut urls,
        payload.get("project"),
        &["git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url", "url"],
    );
    collect_urls(
        &mut urls,
        payload.get("repository"),
        &["git_http_url", "git_ssh_url", "homepage", "url"],
    );
    urls
}

pub(super) fn read(payload: &Payload<'_>) -> Result<Action, ParseError> {
    match payload.event {
        "Push Hook" => push(payload),
        "Tag Push Hook" => {
            let git_ref = payload.string("ref").unwrap_or("refs/tags/");
            let after = payload.string("after").unwrap_or_default();
            Ok(push_ignored(git_ref, after, false)
                .unwrap_or_else(|| Action::Ignored("a tag push".to_owned())))
        }
        "Merge Request Hook" => merge_request(payload),
        "System Hook" => Ok(Action::Ignored(
            "system hook deliveries are not acted on: add the webhook to the project or its \
             group instead"
                .to_owned(),
        )),
        _ => Ok(payload.not_acted_on()),
    }
}

fn push(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let layout = RefPushLayout {
        deleted_flag: None,
        // GitLab lists at most 20 commits and counts them all here.
        total_field: Some("total_commits_count"),
        cap: None,
        // GitLab's payload does not say whether a push was forced.
        incomparable_flags: &[],
    };
    ref_push(payload, &layout)
}

fn merge_request(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let action = match payload.string("object_attributes.action")? {
        "open" | "reopen" => PullRequestAction::Opened,
        // GitLab sends `update` for edits of the title, labels or reviewers too; only a
        // push to the source branch adds `oldrev`, the head before it.
        "update" if has_old_revision(payload) => PullRequestAction::Updated,
        "close" | "merge" => PullRequestAction::Closed,
        other => PullRequestAction::Other(other.to_owned()),
    };
    Ok(Action::PullRequest(PullRequest {
        number: payload.number("object_attributes.iid")?,
        action,
        head_commit: payload.commit("object_attributes.last_commit.id")?.to_owned(),
        head_branch: payload.name("object_attributes.source_branch")?.to_owned(),
        base_branch: payload.name("object_attributes.target_branch")?.to_owned(),
        title: payload.string("object_attributes.title")?.to_owned(),
    }))
}

fn has_old_revision(payload: &Payload<'_>) -> bool {
    payload
        .get("object_attributes.oldrev")
        .and_then(Value::as_str)
        .is_some_and(|oldrev| !oldrev.is_empty())
}
