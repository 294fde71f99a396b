//! Bitbucket Cloud's deliveries: `repo:push` and `pullrequest:*`; every other event is
//! left alone. Bitbucket has no ping, and its push payloads list no files.

use serde_json::Value;

use super::{ParseError, Payload, at, push_url};
use crate::event::{Action, PullRequest, PullRequestAction, Push};

pub(super) const REPOSITORY_FIELD: &str = "repository.links.html.href";

pub(super) fn urls(payload: &Payload<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    let Some(links) = payload.get("repository.links") else {
        return urls;
    };
    if let Some(page) = at(links, "html.href").and_then(Value::as_str) {
        push_url(&mut urls, page);
    }
    // Webhook payloads carry only the page today; the API's repository object, which they
    // resemble, lists the clone addresses too.
    for clone in links.get("clone").and_then(Value::as_array).into_iter().flatten() {
        if let Some(url) = clone.get("href").and_then(Value::as_str) {
            push_url(&mut urls, url);
        }
    }
    urls
}

pub(super) fn read(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let event = payload.event;
    if event == "repo:push" {
        return push(payload);
    }
    match event.strip_prefix("pullrequest:") {
        Some(comment) if comment.starts_with("comment_") => Ok(payload.not_acted_on()),
        Some(what) => pull_request(payload, what),
        None => Ok(payload.not_acted_on()),
    }
}

/// One push may move several refs, each a "change". Gantry's [`Push`] is one branch, so
/// this takes the first change that leaves a branch at a commit and passes over the rest:
/// a push of several branches at once (`git push --all`) starts runs for the first only,
/// and the others wait for their next push.
fn push(payload: &Payload<'_>) -> Result<Action, ParseError> {
    let changes = payload
        .get("push.changes")
        .and_then(Value::as_array)
        .ok_or_else(|| payload.missing("push.changes", "a list of changes"))?;
    let moved_branch = changes.iter().position(|change| kind(change, "new") == Some("branch"));
    let Some(index) = moved_branch else {
        return Ok(Action::Ignored(ignored_reason(changes).to_owned()));
    };
    let new = format!("push.changes.{index}.new");
    Ok(Action::Push(Push {
        branch: payload.name(&format!("{new}.name"))?.to_owned(),
        commit: payload.commit(&format!("{new}.target.hash"))?.to_owned(),
        changed_paths: None,
    }))
}

fn kind<'a>(change: &'a Value, side: &str) -> Option<&'a str> {
    change.get(side)?.get("type")?.as_str()
}

fn ignored_reason(changes: &[Value]) -> &'static str {
    let deleted = |what: &str| {
        changes.iter().any(|change| {
            change.get("new").is_none_or(Value::is_null) && kind(change, "old") == Some(what)
        })
    };
    if changes.iter().any(|change| kind(change, "new") == Some("tag")) {
        "a tag push"
    } else if deleted("branch") {
        "a branch deletion"
    } else if deleted("tag") {
        "a tag deletion"
    } else {
        "a push that leaves no branch at a new commit"
    }
}

fn pull_request(payload: &Payload<'_>, what: &str) -> Result<Action, ParseError> {
    let action = match what {
        "created" => PullRequestAction::Opened,
        "updated" => PullRequestAction::Updated,
        "fulfilled" | "rejected" => PullRequestAction::Closed,
        other => PullRequestAction::Other(other.to_owned()),
    };
    Ok(Action::PullRequest(PullRequest {
        number: payload.number("pullrequest.id")?,
        action,
        head_commit: payload.abbreviated_commit("pullrequest.source.commit.hash")?.to_owned(),
        head_branch: payload.name("pullrequest.source.branch.name")?.to_owned(),
        base_branch: payload.name("pullrequest.destination.branch.name")?.to_owned(),
        title: payload.string("pullrequest.title")?.to_owned(),
    }))
}
