//! From a delivery's event header and JSON body to an [`Event`]: what every provider's
//! reader shares (reading fields with errors that name them, the changed paths of a list of
//! commits, the repository's addresses), and the choice of reader.

mod bitbucket;
mod gitea;
mod github;
mod gitlab;

use std::collections::BTreeSet;

use serde_json::Value;

use crate::event::{Action, Event, Push, is_full_commit_id};
use crate::provider::{Headers, Provider};

/// Why a delivery's body cannot be read as the event its header names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "no {header} header: the request is not a {} webhook delivery",
        provider.label()
    )]
    MissingEventHeader { provider: Provider, header: &'static str },
    #[error(
        "the body of the {} `{event}` delivery is not JSON ({reason}): the webhook must \
         send application/json",
        provider.label()
    )]
    NotJson { provider: Provider, event: String, reason: String },
    #[error(
        "the {} `{event}` payload has no {field}: expected {expected}",
        provider.label()
    )]
    MissingField {
        provider: Provider,
        event: String,
        /// The field's path in the payload, e.g. `pull_request.head.sha`.
        field: String,
        expected: &'static str,
    },
}

/// The event a delivery carries, in provider-neutral terms. An event Gantry does not act
/// on is not an error but [`Action::Ignored`]; an error means the delivery is not what its
/// headers say it is.
pub fn parse(provider: Provider, headers: &Headers<'_>, body: &[u8]) -> Result<Event, ParseError> {
    let header = provider.event_header();
    let name = headers
        .non_blank(header)
        // Gitea writes the event under Gogs' name as well; a Gogs-compatible sender may
        // write only that one.
        .or_else(|| (provider == Provider::Gitea).then(|| headers.non_blank("X-Gogs-Event"))?)
        .ok_or(ParseError::MissingEventHeader { provider, header })?;
    let root: Value = serde_json::from_slice(body).map_err(|error| ParseError::NotJson {
        provider,
        event: name.to_owned(),
        reason: error.to_string(),
    })?;
    if !root.is_object() {
        return Err(ParseError::NotJson {
            provider,
            event: name.to_owned(),
            reason: format!("a JSON {}, where an object was expected", kind(&root)),
        });
    }
    let payload = Payload { provider, event: name, root: &root };
    let (repository_urls, action, repository_field) = match provider {
        Provider::GitHub => {
            (github::urls(&payload), github::read(&payload)?, github::REPOSITORY_FIELD)
        }
        Provider::GitLab => {
            (gitlab::urls(&payload), gitlab::read(&payload)?, gitlab::REPOSITORY_FIELD)
        }
        Provider::Gitea => (gitea::urls(&payload), gitea::read(&payload)?, gitea::REPOSITORY_FIELD),
        Provider::Bitbucket => {
            (bitbucket::urls(&payload), bitbucket::read(&payload)?, bitbucket::REPOSITORY_FIELD)
        }
    };
    // Without an address a push or pull request cannot be matched to any stack.
    if repository_urls.is_empty() && matches!(action, Action::Push(_) | Action::PullRequest(_)) {
        return Err(payload.missing(repository_field, "the repository's address"));
    }
    Ok(Event { name: name.to_owned(), repository_urls, action })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A delivery's body with the names its errors need.
struct Payload<'a> {
    provider: Provider,
    event: &'a str,
    root: &'a Value,
}

impl<'a> Payload<'a> {
    /// The value at `path` from the root, if every step exists.
    fn get(&self, path: &str) -> Option<&'a Value> {
        at(self.root, path)
    }

    fn missing(&self, field: &str, expected: &'static str) -> ParseError {
        ParseError::MissingField {
            provider: self.provider,
            event: self.event.to_owned(),
            field: field.to_owned(),
            expected,
        }
    }

    fn string(&self, path: &str) -> Result<&'a str, ParseError> {
        self.get(path).and_then(Value::as_str).ok_or_else(|| self.missing(path, "a string"))
    }

    /// A string that must not be empty: a branch or commit without a name is no better
    /// than none.
    fn name(&self, path: &str) -> Result<&'a str, ParseError> {
        self.get(path)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| self.missing(path, "a non-empty string"))
    }

    /// A whole commit id, as GitHub, GitLab and Gitea write them.
    fn commit(&self, path: &str) -> Result<&'a str, ParseError> {
        self.get(path)
            .and_then(Value::as_str)
            .filter(|id| is_full_commit_id(id))
            .ok_or_else(|| self.missing(path, "a full commit id (40 or 64 hex digits)"))
    }

    /// A commit id that may be abbreviated, as Bitbucket Cloud writes them in pull requests.
    fn abbreviated_commit(&self, path: &str) -> Result<&'a str, ParseError> {
        self.get(path)
            .and_then(Value::as_str)
            .filter(|id| {
                (7..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_hexdigit())
            })
            .ok_or_else(|| self.missing(path, "a commit id of 7 to 64 hex digits"))
    }

    fn number(&self, path: &str) -> Result<u64, ParseError> {
        self.get(path).and_then(Value::as_u64).ok_or_else(|| self.missing(path, "a whole number"))
    }

    fn flag(&self, path: &str) -> bool {
        self.get(path).and_then(Value::as_bool).unwrap_or(false)
    }

    /// The action of an event Gantry does not act on.
    fn not_acted_on(&self) -> Action {
        Action::Ignored(format!(
            "`{}` events are not acted on: Gantry acts on pushes and pull requests",
            self.event
        ))
    }

    /// The branch that `refs/heads/<branch>` at `path` names.
    fn branch(&self, path: &str) -> Result<&'a str, ParseError> {
        self.string(path)?
            .strip_prefix("refs/heads/")
            .filter(|branch| !branch.is_empty())
            .ok_or_else(|| self.missing(path, "refs/heads/ followed by a branch's name"))
    }
}

/// The value at a dotted `path` below `value`; a number steps into a list.
fn at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |value, step| match value {
        Value::Array(items) => items.get(step.parse::<usize>().ok()?),
        _ => value.get(step),
    })
}

/// The non-empty strings at `paths` below `value`, in order, without repeats.
fn collect_urls(urls: &mut Vec<String>, value: Option<&Value>, paths: &[&str]) {
    let Some(value) = value else { return };
    for path in paths {
        if let Some(url) = at(value, path).and_then(Value::as_str) {
            push_url(urls, url);
        }
    }
}

fn push_url(urls: &mut Vec<String>, url: &str) {
    if !url.trim().is_empty() && !urls.iter().any(|known| known == url) {
        urls.push(url.to_owned());
    }
}

/// How a push's commit list may be read for the paths it changed.
struct CommitList<'a> {
    /// The payload's "commits".
    commits: Option<&'a Value>,
    /// How many commits the push brought, when the payload says and may list fewer.
    total: Option<u64>,
    /// The most commits the provider lists: a list that long may have been cut.
    cap: Option<usize>,
    /// The push created the branch or rewrote it, so its commits are not all that changed.
    incomparable: bool,
}

impl CommitList<'_> {
    /// The paths that the listed commits added, modified or removed, sorted and without
    /// repeats; None when the list may not hold every pushed commit or file.
    fn changed_paths(&self) -> Option<Vec<String>> {
        if self.incomparable {
            return None;
        }
        let commits = self.commits?.as_array()?;
        if commits.is_empty() {
            // The branch moved (a deletion never reaches here), so something changed that
            // the list does not show: a rewind to an older commit, for one.
            return None;
        }
        if self.total.is_some_and(|total| total > commits.len() as u64) {
            return None;
        }
        if self.cap.is_some_and(|cap| commits.len() >= cap) {
            return None;
        }
        let mut paths = BTreeSet::new();
        for commit in commits {
            for list in ["added", "modified", "removed"] {
                match commit.get(list) {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(files)) => {
                        for file in files {
                            paths.insert(file.as_str()?.to_owned());
                        }
                    }
                    // A list that is not one cannot be trusted to hold every path.
                    Some(_) => return None,
                }
            }
        }
        Some(paths.into_iter().collect())
    }
}

/// What a provider's push in GitHub's layout (`ref`, `before`, `after`, `commits`: GitHub,
/// Gitea, GitLab) says beyond that layout.
struct RefPushLayout {
    /// A flag set on a branch's deletion, besides `after` being all zeros.
    deleted_flag: Option<&'static str>,
    /// The count of every pushed commit, when the list may show fewer.
    total_field: Option<&'static str>,
    /// The most commits the provider lists.
    cap: Option<usize>,
    /// Flags set on a push that created or rewrote the branch.
    incomparable_flags: &'static [&'static str],
}

/// A push in GitHub's layout.
fn ref_push(payload: &Payload<'_>, layout: &RefPushLayout) -> Result<Action, ParseError> {
    let git_ref = payload.string("ref")?;
    let after = payload.string("after")?;
    let deleted = layout.deleted_flag.is_some_and(|flag| payload.flag(flag));
    if let Some(ignored) = push_ignored(git_ref, after, deleted) {
        return Ok(ignored);
    }
    let before = payload.string("before").unwrap_or_default();
    let commits = CommitList {
        commits: payload.get("commits"),
        total: layout.total_field.and_then(|field| payload.get(field)).and_then(Value::as_u64),
        cap: layout.cap,
        incomparable: layout.incomparable_flags.iter().any(|flag| payload.flag(flag))
            || crate::event::is_zero_commit(before),
    };
    Ok(Action::Push(Push {
        branch: payload.branch("ref")?.to_owned(),
        commit: payload.commit("after")?.to_owned(),
        changed_paths: commits.changed_paths(),
    }))
}

/// What a push to `git_ref` is when it is not a push to a branch that Gantry acts on: a
/// tag push, a deletion, a push to some other ref.
fn push_ignored(git_ref: &str, after: &str, deleted: bool) -> Option<Action> {
    let deleted = deleted || crate::event::is_zero_commit(after);
    if git_ref.starts_with("refs/tags/") {
        let what = if deleted { "a tag deletion" } else { "a tag push" };
        return Some(Action::Ignored(what.to_owned()));
    }
    if !git_ref.starts_with("refs/heads/") {
        return Some(Action::Ignored(format!("a push to {git_ref}, which is not a branch")));
    }
    deleted.then(|| Action::Ignored("a branch deletion".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(value: Value) -> CommitList<'static> {
        CommitList {
            commits: Some(Box::leak(Box::new(value))),
            total: None,
            cap: None,
            incomparable: false,
        }
    }

    #[test]
    fn changed_paths_are_the_union_of_every_commit_sorted() {
        let list = commits(serde_json::json!([
            {"added": ["b.tf"], "modified": ["a.tf"], "removed": []},
            {"added": [], "modified": ["a.tf"], "removed": ["c/d.tf"]},
        ]));
        assert_eq!(
            list.changed_paths(),
            Some(vec!["a.tf".to_owned(), "b.tf".to_owned(), "c/d.tf".to_owned()])
        );
    }

    #[test]
    fn a_list_that_may_be_cut_says_nothing() {
        let mut list = commits(serde_json::json!([{"added": ["a"]}]));
        list.total = Some(2);
        assert_eq!(list.changed_paths(), None);
        list.total = Some(1);
        list.cap = Some(1);
        assert_eq!(list.changed_paths(), None);
    }

    #[test]
    fn a_path_that_is_not_a_string_makes_the_list_unknown() {
        let list = commits(serde_json::json!([{"added": [7]}]));
        assert_eq!(list.changed_paths(), None);
        let list = commits(serde_json::json!([{"added": "a.tf"}]));
        assert_eq!(list.changed_paths(), None);
    }

    #[test]
    fn other_refs_than_branches_are_ignored_with_why() {
        let zero = "0000000000000000000000000000000000000000";
        let sha = "fd489864e7642b48eaad6e3f155c10e46810ec72";
        assert_eq!(
            push_ignored("refs/tags/v1", sha, false),
            Some(Action::Ignored("a tag push".to_owned()))
        );
        assert_eq!(
            push_ignored("refs/tags/v1", zero, false),
            Some(Action::Ignored("a tag deletion".to_owned()))
        );
        assert_eq!(
            push_ignored("refs/heads/main", sha, true),
            Some(Action::Ignored("a branch deletion".to_owned()))
        );
        assert_eq!(
            push_ignored("refs/notes/commits", sha, false),
            Some(Action::Ignored("a push to refs/notes/commits, which is not a branch".to_owned()))
        );
        assert_eq!(push_ignored("refs/heads/main", sha, false), None);
    }
}
