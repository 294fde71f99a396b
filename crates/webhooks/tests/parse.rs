//! Recorded deliveries of every provider, read into events: the pushes and pull requests
//! Gantry acts on with their exact commits, branches and paths, the ones it leaves alone
//! with why, and the bodies it refuses with an error that names them.

mod support;

use gantry_webhooks::{
    Action, Event, Headers, ParseError, Provider, PullRequest, PullRequestAction, Push, parse,
};
use serde_json::Value;
use support::{delivery, fixture, pairs};

const ZERO: &str = "0000000000000000000000000000000000000000";

fn read(provider: Provider, event: &str, name: &str) -> Event {
    read_body(provider, event, &fixture(name))
}

fn read_body(provider: Provider, event: &str, body: &[u8]) -> Event {
    let headers = delivery(provider, event, body);
    parse(provider, &Headers(&headers), body)
        .unwrap_or_else(|error| panic!("{provider} {event}: {error}"))
}

/// A recorded payload with one field changed, for the cases no recording shows.
fn edited(name: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut payload: Value = serde_json::from_slice(&fixture(name)).unwrap();
    edit(&mut payload);
    serde_json::to_vec(&payload).unwrap()
}

fn push(branch: &str, commit: &str, changed_paths: Option<&[&str]>) -> Action {
    Action::Push(Push {
        branch: branch.to_owned(),
        commit: commit.to_owned(),
        changed_paths: changed_paths.map(|paths| paths.iter().map(|&p| p.to_owned()).collect()),
    })
}

fn pull_request(
    number: u64,
    action: PullRequestAction,
    head_commit: &str,
    (head_branch, base_branch): (&str, &str),
    title: &str,
) -> Action {
    Action::PullRequest(PullRequest {
        number,
        action,
        head_commit: head_commit.to_owned(),
        head_branch: head_branch.to_owned(),
        base_branch: base_branch.to_owned(),
        title: title.to_owned(),
    })
}

fn ignored(why: &str) -> Action {
    Action::Ignored(why.to_owned())
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|&value| value.to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// GitHub

#[test]
fn github_push() {
    let event = read(Provider::GitHub, "push", "github/push.json");
    assert_eq!(
        event,
        Event {
            name: "push".to_owned(),
            repository_urls: strings(&[
                "https://github.com/binkkatal/sample_app.git",
                "git@github.com:binkkatal/sample_app.git",
                "https://github.com/binkkatal/sample_app",
                "git://github.com/binkkatal/sample_app.git",
            ]),
            action: push(
                "master",
                "fd489864e7642b48eaad6e3f155c10e46810ec72",
                Some(&[".razorops.yaml", "app/controllers/application_controller.rb"]),
            ),
        }
    );
}

#[test]
fn github_push_creating_a_branch_cannot_say_what_changed() {
    let event = read(Provider::GitHub, "push", "github/push_branch_create.json");
    assert_eq!(
        event.action,
        push("feature-branch", "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd", None)
    );
}

#[test]
fn github_forced_push_cannot_say_what_changed() {
    let body = edited("github/push.json", |payload| payload["forced"] = true.into());
    let event = read_body(Provider::GitHub, "push", &body);
    assert_eq!(event.action, push("master", "fd489864e7642b48eaad6e3f155c10e46810ec72", None));
}

#[test]
fn github_push_listing_the_most_commits_github_lists_may_be_cut() {
    let body = edited("github/push.json", |payload| {
        let commit = payload["commits"][0].clone();
        payload["commits"] = Value::Array(vec![commit; 2048]);
    });
    let event = read_body(Provider::GitHub, "push", &body);
    assert_eq!(event.action, push("master", "fd489864e7642b48eaad6e3f155c10e46810ec72", None));
}

#[test]
fn github_branch_deletion_and_tag_push_are_ignored() {
    let deletion = read(Provider::GitHub, "push", "github/push_branch_delete.json");
    assert_eq!(deletion.action, ignored("a branch deletion"));
    assert_eq!(deletion.repository_urls[0], "https://github.com/bradrydzewski/drone-test-go.git");
    let tag = read(Provider::GitHub, "push", "github/push_tag.json");
    assert_eq!(tag.action, ignored("a tag push"));
}

#[test]
fn github_pull_request_opened() {
    let event = read(Provider::GitHub, "pull_request", "github/pull_request_opened.json");
    assert_eq!(event.name, "pull_request");
    assert_eq!(
        event.repository_urls,
        strings(&[
            "https://github.com/baxterthehacker/public-repo.git",
            "git@github.com:baxterthehacker/public-repo.git",
            "https://github.com/baxterthehacker/public-repo",
            "git://github.com/baxterthehacker/public-repo.git",
        ])
    );
    assert_eq!(
        event.action,
        pull_request(
            1,
            PullRequestAction::Opened,
            "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            ("changes", "master"),
            "Update the README with new information",
        )
    );
}

#[test]
fn github_pull_request_synchronize_closed_and_labeled() {
    let cases = [
        (
            "github/pull_request_synchronize.json",
            PullRequestAction::Updated,
            "8102e371cd01cf668893cb2d04a04d52331b1dc9",
        ),
        (
            "github/pull_request_closed.json",
            PullRequestAction::Closed,
            "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
        ),
        (
            "github/pull_request_labeled.json",
            PullRequestAction::Other("labeled".to_owned()),
            "d2b75aa7797ec26b088fa2dd527e9d2c052fcedd",
        ),
    ];
    for (name, action, head) in cases {
        let event = read(Provider::GitHub, "pull_request", name);
        assert_eq!(
            event.action,
            pull_request(1, action, head, ("master", "bradrydzewski-patch-1"), "Update .drone.yml"),
            "{name}"
        );
    }
}

#[test]
fn github_ping_proves_the_secret() {
    let event = read(Provider::GitHub, "ping", "github/ping.json");
    assert_eq!(event.action, Action::Ping);
    // An app's or organisation's ping names no repository, and needs none.
    assert!(event.repository_urls.is_empty());
}

// ---------------------------------------------------------------------------------------
// GitLab

#[test]
fn gitlab_push() {
    let event = read(Provider::GitLab, "Push Hook", "gitlab/push.json");
    assert_eq!(
        event,
        Event {
            name: "Push Hook".to_owned(),
            repository_urls: strings(&[
                "https://gitlab.com/gitlab-org/hello-world.git",
                "git@gitlab.com:gitlab-org/hello-world.git",
                "https://gitlab.com/gitlab-org/hello-world",
            ]),
            action: push(
                "master",
                "2adc9465c4edfc33834e173fe89436a7cb899a1d",
                Some(&["README.md"]),
            ),
        }
    );
}

#[test]
fn gitlab_push_listing_fewer_commits_than_it_counts_cannot_say_what_changed() {
    // GitLab's own sample: two commits listed of `total_commits_count: 4`.
    let event = read(Provider::GitLab, "Push Hook", "gitlab/push_truncated.json");
    assert_eq!(event.action, push("master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", None));
    // The same commits with the count they hold do say.
    let body = edited("gitlab/push_truncated.json", |payload| {
        payload["total_commits_count"] = 2.into();
    });
    assert_eq!(
        read_body(Provider::GitLab, "Push Hook", &body).action,
        push(
            "master",
            "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
            Some(&["CHANGELOG", "app/controller/application.rb"]),
        )
    );
}

#[test]
fn gitlab_branch_deletion_and_tag_push_are_ignored() {
    let deletion = read(Provider::GitLab, "Push Hook", "gitlab/push_branch_delete.json");
    assert_eq!(deletion.action, ignored("a branch deletion"));
    let tag = read(Provider::GitLab, "Tag Push Hook", "gitlab/tag_push.json");
    assert_eq!(tag.action, ignored("a tag push"));
    assert_eq!(tag.name, "Tag Push Hook");
}

#[test]
fn gitlab_merge_request_opened_and_merged() {
    for (name, action) in [
        ("gitlab/merge_request_open.json", PullRequestAction::Opened),
        ("gitlab/merge_request_merge.json", PullRequestAction::Closed),
    ] {
        let event = read(Provider::GitLab, "Merge Request Hook", name);
        assert_eq!(event.name, "Merge Request Hook");
        assert_eq!(
            event.action,
            pull_request(
                1,
                action,
                "c4c79227ed610f1151f05bbc5be33b4f340d39c8",
                ("feature", "master"),
                "update readme",
            ),
            "{name}"
        );
    }
}

#[test]
fn gitlab_merge_request_update_with_new_commits_is_an_update() {
    let event = read(Provider::GitLab, "Merge Request Hook", "gitlab/merge_request_update.json");
    assert_eq!(
        event.action,
        pull_request(
            607,
            PullRequestAction::Updated,
            "eee7db80b395994106c2f2e070c7a3dc2cce0c87",
            ("feat/b-er-code", "test"),
            "fix: face verification",
        )
    );
    assert_eq!(event.repository_urls[0], "https://gitlab.example.com/ryf/java/ruoyi-vue-plus.git");
}

#[test]
fn gitlab_merge_request_update_without_new_commits_is_other() {
    // Marked ready for review: `update`, but no `oldrev`.
    let event = read(
        Provider::GitLab,
        "Merge Request Hook",
        "gitlab/merge_request_update_without_commits.json",
    );
    assert_eq!(
        event.action,
        pull_request(
            3,
            PullRequestAction::Other("update".to_owned()),
            "ffd71529ecdfb41a530ee13f91b8fdd3e743c754",
            ("main1234", "main"),
            "Draft: Update README.md",
        )
    );
}

// ---------------------------------------------------------------------------------------
// Gitea

#[test]
fn gitea_push() {
    let event = read(Provider::Gitea, "push", "gitea/push.json");
    assert_eq!(
        event,
        Event {
            name: "push".to_owned(),
            repository_urls: strings(&[
                "http://try.gitea.io/gogits/hello-world.git",
                "git@localhost:gogits/hello-world.git",
                "http://try.gitea.io/gogits/hello-world",
            ]),
            action: push(
                "master",
                "4522cbcefc20728a5b72b3a86af35e608622c514",
                Some(&["README.md"]),
            ),
        }
    );
}

#[test]
fn gitea_push_creating_a_branch_or_counting_more_commits_cannot_say_what_changed() {
    let created = read(Provider::Gitea, "push", "gitea/push_branch_create.json");
    assert_eq!(created.action, push("master", "67b56589a45103f891bdee7c0546e5d40bc02001", None));
    let body = edited("gitea/push.json", |payload| {
        payload["total_commits"] = 6.into();
    });
    assert_eq!(
        read_body(Provider::Gitea, "push", &body).action,
        push("master", "4522cbcefc20728a5b72b3a86af35e608622c514", None)
    );
}

#[test]
fn gitea_branch_deletion_and_tag_push_are_ignored() {
    let body = edited("gitea/push.json", |payload| payload["after"] = ZERO.into());
    assert_eq!(read_body(Provider::Gitea, "push", &body).action, ignored("a branch deletion"));
    let body = edited("gitea/push.json", |payload| {
        payload["ref"] = "refs/tags/v1.0.0".into();
    });
    assert_eq!(read_body(Provider::Gitea, "push", &body).action, ignored("a tag push"));
    // Gitea's own events for new and deleted refs are not acted on either.
    let created = read(Provider::Gitea, "create", "gitea/create_tag.json");
    assert!(matches!(created.action, Action::Ignored(why) if why.contains("`create`")));
    let deleted = read(Provider::Gitea, "delete", "gitea/delete_branch.json");
    assert!(matches!(deleted.action, Action::Ignored(why) if why.contains("`delete`")));
}

#[test]
fn gitea_pull_requests() {
    let cases = [
        ("gitea/pull_request_opened.json", PullRequestAction::Opened, "Add License File"),
        ("gitea/pull_request_synchronized.json", PullRequestAction::Updated, "Add License File"),
        ("gitea/pull_request_closed.json", PullRequestAction::Closed, "Add LICENSE File"),
    ];
    for (name, action, title) in cases {
        let event = read(Provider::Gitea, "pull_request", name);
        assert_eq!(
            event.repository_urls,
            strings(&[
                "https://try.gitea.io/jcitizen/my-repo.git",
                "git@try.gitea.io:jcitizen/my-repo.git",
                "https://try.gitea.io/jcitizen/my-repo",
            ]),
            "{name}"
        );
        assert_eq!(
            event.action,
            pull_request(
                1,
                action,
                "2eba238e33607c1fa49253182e9fff42baafa1eb",
                ("feature", "master"),
                title,
            ),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bitbucket Cloud

#[test]
fn bitbucket_push() {
    let event = read(Provider::Bitbucket, "repo:push", "bitbucket/repo_push.json");
    assert_eq!(
        event,
        Event {
            name: "repo:push".to_owned(),
            repository_urls: strings(&["https://bitbucket.org/brydzewski/foo"]),
            // Bitbucket lists no files.
            action: push("master", "141977fedf5cf35aa290ac87d4b5177ac4cd9de1", None),
        }
    );
}

#[test]
fn bitbucket_push_takes_the_first_change_that_moves_a_branch() {
    let body = edited("bitbucket/repo_push.json", |payload| {
        let branch = payload["push"]["changes"][0].clone();
        let tag = serde_json::json!({
            "new": {"type": "tag", "name": "v1", "target": {"hash": "40e7580cf11311d84a6e5e97e2cbba6df1675750"}},
            "old": null, "created": true, "closed": false, "forced": false, "commits": []
        });
        let mut other = branch.clone();
        other["new"]["name"] = "develop".into();
        payload["push"]["changes"] = Value::Array(vec![tag, branch, other]);
    });
    assert_eq!(
        read_body(Provider::Bitbucket, "repo:push", &body).action,
        push("master", "141977fedf5cf35aa290ac87d4b5177ac4cd9de1", None)
    );
}

#[test]
fn bitbucket_branch_deletion_and_tag_push_are_ignored() {
    let deletion = read(Provider::Bitbucket, "repo:push", "bitbucket/repo_push_branch_delete.json");
    assert_eq!(deletion.action, ignored("a branch deletion"));
    let tag = read(Provider::Bitbucket, "repo:push", "bitbucket/repo_push_tag.json");
    assert_eq!(tag.action, ignored("a tag push"));
}

#[test]
fn bitbucket_pull_requests() {
    let cases = [
        (
            "pullrequest:created",
            "bitbucket/pullrequest_created.json",
            1,
            PullRequestAction::Opened,
            "507a576e59b3",
            "Awesome new feature",
        ),
        (
            "pullrequest:updated",
            "bitbucket/pullrequest_updated.json",
            1,
            PullRequestAction::Updated,
            "0704fc5beccc",
            "Awesome new feature",
        ),
        (
            "pullrequest:fulfilled",
            "bitbucket/pullrequest_fulfilled.json",
            1,
            PullRequestAction::Closed,
            "0704fc5beccc",
            "Awesome new feature",
        ),
        (
            "pullrequest:rejected",
            "bitbucket/pullrequest_rejected.json",
            2,
            PullRequestAction::Closed,
            "6ca9fe26898a",
            "update README",
        ),
    ];
    for (event_key, name, number, action, head, title) in cases {
        let event = read(Provider::Bitbucket, event_key, name);
        assert_eq!(event.repository_urls, strings(&["https://bitbucket.org/brydzewski/foo"]));
        // Bitbucket Cloud abbreviates the head to 12 hex digits; it is passed on as given.
        assert_eq!(
            event.action,
            pull_request(number, action, head, ("develop", "master"), title),
            "{name}"
        );
        assert!(!gantry_webhooks::is_full_commit_id(head));
    }
    let approved =
        read(Provider::Bitbucket, "pullrequest:approved", "bitbucket/pullrequest_created.json");
    assert!(matches!(
        approved.action,
        Action::PullRequest(PullRequest { action: PullRequestAction::Other(word), .. })
            if word == "approved"
    ));
}

// ---------------------------------------------------------------------------------------
// What every provider shares

#[test]
fn an_unknown_event_is_ignored_with_why() {
    let cases = [
        (Provider::GitHub, "issue_comment", "github/push.json"),
        (Provider::GitLab, "Note Hook", "gitlab/push.json"),
        (Provider::Gitea, "issue_comment", "gitea/push.json"),
        (Provider::Bitbucket, "pullrequest:comment_created", "bitbucket/pullrequest_created.json"),
        (Provider::Bitbucket, "issue:created", "bitbucket/repo_push.json"),
    ];
    for (provider, name, body) in cases {
        let event = read(provider, name, body);
        assert_eq!(event.name, name);
        assert_eq!(
            event.action,
            Action::Ignored(format!(
                "`{name}` events are not acted on: Gantry acts on pushes and pull requests"
            )),
            "{provider} {name}"
        );
        assert!(!event.repository_urls.is_empty(), "{provider} {name}");
    }
}

#[test]
fn a_gitlab_system_hook_is_ignored_with_why() {
    let event = read(Provider::GitLab, "System Hook", "gitlab/push.json");
    assert!(matches!(event.action, Action::Ignored(why) if why.contains("system hook")));
}

#[test]
fn a_body_that_is_not_json_is_an_error_naming_the_delivery() {
    for provider in Provider::ALL {
        let headers = pairs(&[(provider.event_header(), "push")]);
        let error = parse(provider, &Headers(&headers), b"payload=%7B%22ref%22").unwrap_err();
        assert!(
            matches!(&error, ParseError::NotJson { event, .. } if event == "push"),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "the body of the {} `push` delivery is not JSON (",
                provider.label()
            )),
            "{message}"
        );
        assert!(message.ends_with("the webhook must send application/json"));

        let error = parse(provider, &Headers(&headers), b"[1, 2]").unwrap_err();
        assert!(
            error.to_string().contains("a JSON array, where an object was expected"),
            "{error}"
        );
    }
}

#[test]
fn a_delivery_without_its_event_header_is_an_error() {
    let body = fixture("github/push.json");
    for provider in Provider::ALL {
        let headers = pairs(&[("Content-Type", "application/json")]);
        let error = parse(provider, &Headers(&headers), &body).unwrap_err();
        assert_eq!(
            error,
            ParseError::MissingEventHeader { provider, header: provider.event_header() }
        );
        assert_eq!(
            error.to_string(),
            format!(
                "no {} header: the request is not a {} webhook delivery",
                provider.event_header(),
                provider.label()
            )
        );
    }
}

#[test]
fn a_gitea_delivery_may_name_its_event_the_gogs_way() {
    let body = fixture("gitea/push.json");
    let headers = pairs(&[("X-Gogs-Event", "push")]);
    let event = parse(Provider::Gitea, &Headers(&headers), &body).unwrap();
    assert!(matches!(event.action, Action::Push(_)));
}

#[test]
fn a_missing_field_is_named_with_what_was_expected() {
    let body = edited("github/pull_request_opened.json", |payload| {
        payload["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
    });
    let headers = delivery(Provider::GitHub, "pull_request", &body);
    let error = parse(Provider::GitHub, &Headers(&headers), &body).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the GitHub `pull_request` payload has no pull_request.head.sha: expected a full commit \
         id (40 or 64 hex digits)"
    );

    let body = edited("bitbucket/repo_push.json", |payload| {
        payload["push"]["changes"][0]["new"]["target"]["hash"] = "141977f".into();
    });
    let headers = delivery(Provider::Bitbucket, "repo:push", &body);
    let error = parse(Provider::Bitbucket, &Headers(&headers), &body).unwrap_err();
    assert_eq!(
        error,
        ParseError::MissingField {
            provider: Provider::Bitbucket,
            event: "repo:push".to_owned(),
            field: "push.changes.0.new.target.hash".to_owned(),
            expected: "a full commit id (40 or 64 hex digits)",
        }
    );
}

#[test]
fn a_push_without_a_repository_address_is_an_error() {
    let body = edited("gitlab/push.json", |payload| {
        let object = payload.as_object_mut().unwrap();
        object.remove("project");
        object.remove("repository");
    });
    let headers = delivery(Provider::GitLab, "Push Hook", &body);
    let error = parse(Provider::GitLab, &Headers(&headers), &body).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the GitLab `Push Hook` payload has no project.git_http_url: expected the repository's \
         address"
    );
}
