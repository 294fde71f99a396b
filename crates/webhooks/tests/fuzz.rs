//! Fuzz tests of what the server hands over from an unauthenticated request: `parse`,
//! `verify` and `delivery_id` must answer every body and header set, of every provider,
//! with a value or an error and never a panic; so must trigger paths and the paths they
//! are matched against. Bodies are arbitrary bytes, JSON built from
//! the field names the readers look for, and recorded payloads with a byte changed.
//! `GANTRY_FUZZ_CASES=100000` runs a long search.

mod support;

use gantry_webhooks::{
    Headers, Provider, delivery_id, parse, repository_key, trigger_paths, verify,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::Value;
use support::fixture;

const FIXTURES: &[&str] = &[
    "github/push.json",
    "github/pull_request_opened.json",
    "github/ping.json",
    "gitlab/push_truncated.json",
    "gitlab/merge_request_update.json",
    "gitea/push.json",
    "gitea/pull_request_synchronized.json",
    "bitbucket/repo_push.json",
    "bitbucket/pullrequest_created.json",
];

/// Names the readers look for, so that arbitrary JSON reaches past the first lookup.
const KEYS: &[&str] = &[
    "ref",
    "before",
    "after",
    "created",
    "deleted",
    "forced",
    "commits",
    "added",
    "modified",
    "removed",
    "total_commits",
    "total_commits_count",
    "repository",
    "project",
    "clone_url",
    "ssh_url",
    "html_url",
    "git_url",
    "web_url",
    "git_http_url",
    "git_ssh_url",
    "homepage",
    "url",
    "links",
    "html",
    "href",
    "clone",
    "pull_request",
    "number",
    "action",
    "head",
    "base",
    "sha",
    "title",
    "object_attributes",
    "iid",
    "oldrev",
    "last_commit",
    "id",
    "source_branch",
    "target_branch",
    "push",
    "changes",
    "new",
    "old",
    "type",
    "name",
    "target",
    "hash",
    "pullrequest",
    "source",
    "destination",
    "branch",
    "commit",
];

const EVENTS: &[&str] = &[
    "push",
    "pull_request",
    "ping",
    "create",
    "Push Hook",
    "Tag Push Hook",
    "Merge Request Hook",
    "System Hook",
    "repo:push",
    "pullrequest:created",
    "pullrequest:updated",
    "pullrequest:fulfilled",
    "pullrequest:comment_created",
    "pullrequest:",
];

const HEADER_NAMES: &[&str] = &[
    "X-GitHub-Event",
    "X-Gitlab-Event",
    "X-Gitea-Event",
    "X-Gogs-Event",
    "X-Event-Key",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "X-Gitea-Signature",
    "X-Gitlab-Token",
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Gogs-Delivery",
    "Idempotency-Key",
    "X-Gitlab-Event-UUID",
    "X-Request-UUID",
];

fn config() -> Config {
    let cases = match std::env::var("GANTRY_FUZZ_CASES") {
        Err(_) => 512,
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("GANTRY_FUZZ_CASES={text:?}: expected a number of cases")),
    };
    Config { cases, ..Config::default() }
}

fn provider() -> impl Strategy<Value = Provider> {
    prop::sample::select(Provider::ALL.to_vec())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::sample::select(EVENTS).prop_map(str::to_owned),
        "(sha256=)?[0-9a-fA-F]{0,70}",
        Just("0000000000000000000000000000000000000000".to_owned()),
        Just("refs/heads/main".to_owned()),
        Just("refs/tags/v1".to_owned()),
        Just("refs/heads/".to_owned()),
        "[a-z0-9@:/._ -]{0,24}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        prop::sample::select(HEADER_NAMES).prop_map(str::to_owned),
        prop::sample::select(HEADER_NAMES).prop_map(str::to_lowercase),
        any::<String>(),
    ];
    prop::collection::vec((name, text()), 0..8)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 96, 8, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(KEYS).prop_map(str::to_owned),
            1 => any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..10)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        json().prop_map(|value| serde_json::to_vec(&value).unwrap()),
        (prop::sample::select(FIXTURES), any::<usize>(), any::<u8>()).prop_map(
            |(name, at, byte)| {
                let mut body = fixture(name);
                let at = at % body.len();
                body[at] = byte;
                body
            }
        ),
    ]
}

/// Everything the server calls with a delivery's headers and body.
fn read_everything(provider: Provider, headers: &[(String, String)], body: &[u8]) {
    let headers = Headers(headers);
    if let Ok(event) = parse(provider, &headers, body) {
        for url in &event.repository_urls {
            let _ = repository_key(url);
        }
    }
    let _ = verify(provider, &headers, body, b"It's a Secret to Everybody");
    let _ = verify(provider, &headers, body, b"");
    let _ = delivery_id(provider, &headers);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_deliveries_never_panic(
        provider in provider(),
        headers in headers(),
        body in body(),
    ) {
        read_everything(provider, &headers, &body);
    }

    #[test]
    fn arbitrary_bodies_of_known_events_never_panic(
        provider in provider(),
        event in prop::sample::select(EVENTS),
        body in body(),
    ) {
        let headers = vec![(provider.event_header().to_owned(), event.to_owned())];
        read_everything(provider, &headers, &body);
    }

    /// A stack's trigger paths are written by its operators and the paths by a pusher:
    /// any of either is answered, and a literal pattern matches itself.
    #[test]
    fn arbitrary_trigger_paths_never_panic(
        pattern in prop_oneof![any::<String>(), "[a-z*?/.]{0,40}"],
        path in prop_oneof![any::<String>(), "[a-z/.]{0,40}"],
    ) {
        let _ = trigger_paths::validate(&pattern);
        let _ = trigger_paths::matches(&pattern, &path);
        let literal = path.replace(['*', '?'], "");
        prop_assert!(trigger_paths::matches(&literal, &literal) || literal.trim().is_empty() || literal.split('/').all(|s| s.trim().is_empty() || s == "."));
    }

    #[test]
    fn arbitrary_addresses_never_panic(url in prop_oneof![any::<String>(), "[a-zA-Z0-9@:/.\\[\\]?#~\\\\-]{0,40}"]) {
        let _ = repository_key(&url);
    }
}
