//! What a delivery means once its provider's wording is set aside: a push to a branch, a
//! change to a pull request, a ping, or something Gantry leaves alone and says why.

/// The event a delivery carries, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The provider's own name of the event (`push`, `pull_request`, `Merge Request Hook`,
    /// `repo:push`, ...), for the delivery log.
    pub name: String,
    /// Every address the payload gives for the repository (clone over https, ssh, web
    /// page), as written, without repeats. Empty only for an event Gantry does not act on
    /// whose payload names no repository (an organisation's ping).
    pub repository_urls: Vec<String>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Push(Push),
    PullRequest(PullRequest),
    /// A ping or test delivery (GitHub `ping`): nothing to do, but it proves the secret
    /// works.
    Ping,
    /// An event Gantry does not act on, with why (e.g. "a tag push", "`issues` events are
    /// not acted on").
    Ignored(String),
}

/// A push that moved a branch to a new commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The branch, without `refs/heads/`.
    pub branch: String,
    /// The pushed head (the payload's "after"), a full SHA.
    pub commit: String,
    /// Paths added, modified or removed by the pushed commits, sorted and without repeats,
    /// or None when the payload cannot say. It cannot when it lists no files (Bitbucket),
    /// when it lists fewer commits than were pushed (GitLab sends at most 20, Gitea as many
    /// as its feed shows, GitHub at most 2048), when the push created the branch (there is
    /// no "before" to compare with), when it was forced (the commits it dropped changed
    /// paths too), or when it lists no commit although the branch moved.
    pub changed_paths: Option<Vec<String>>,
}

/// A pull request (GitLab: merge request) that was opened, updated or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// GitHub's and Gitea's number, GitLab's iid, Bitbucket's id: what its page shows.
    pub number: u64,
    pub action: PullRequestAction,
    /// The head commit as the payload gives it: a full SHA from GitHub, GitLab and Gitea.
    /// Bitbucket Cloud gives only a 12-character abbreviation (its pull request payloads
    /// have never carried more); [`is_full_commit_id`] tells the two apart, and the head
    /// branch gives the full SHA.
    pub head_commit: String,
    pub head_branch: String,
    pub base_branch: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened or reopened.
    Opened,
    /// New commits were pushed to it. Bitbucket's `pullrequest:updated` cannot be told
    /// apart from an edit of the title or description, and counts as this too.
    Updated,
    /// Closed, merged or declined.
    Closed,
    /// Anything else (labelled, edited, approved, ...), with the provider's own word.
    Other(String),
}

/// Whether `id` is a whole commit id (40 hex digits for SHA-1, 64 for SHA-256) rather than
/// an abbreviation such as the ones Bitbucket Cloud puts in pull request payloads.
pub fn is_full_commit_id(id: &str) -> bool {
    matches!(id.len(), 40 | 64) && id.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Whether a commit id is git's "no commit": the "before" of a created ref, the "after" of
/// a deleted one.
pub(crate) fn is_zero_commit(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|byte| byte == b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_commit_ids_are_40_or_64_hex_digits() {
        assert!(is_full_commit_id("fd489864e7642b48eaad6e3f155c10e46810ec72"));
        assert!(is_full_commit_id(&"a".repeat(64)));
        assert!(!is_full_commit_id("0704fc5beccc"));
        assert!(!is_full_commit_id(&"g".repeat(40)));
        assert!(!is_full_commit_id(""));
    }

    #[test]
    fn the_zero_commit_is_all_zeros() {
        assert!(is_zero_commit("0000000000000000000000000000000000000000"));
        assert!(!is_zero_commit(""));
        assert!(!is_zero_commit("0000000000000000000000000000000000000001"));
    }
}
