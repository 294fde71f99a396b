//! Matching a delivery to stacks: the spellings of one repository's address that must
//! meet in one key, the ones that must not, and which changed paths reach a project root.

use gantry_webhooks::{repository_key, touches};

#[test]
fn spellings_of_one_repository_share_a_key() {
    let cases = [
        ("https://github.com/Acme/Infra.git", "github.com/acme/infra"),
        ("git@github.com:acme/infra.git", "github.com/acme/infra"),
        ("ssh://git@github.com/acme/infra", "github.com/acme/infra"),
        ("git://github.com/acme/infra.git", "github.com/acme/infra"),
        ("https://github.com/acme/infra/", "github.com/acme/infra"),
        ("https://github.com/acme/infra.git/", "github.com/acme/infra"),
        ("  https://GitHub.com/acme/infra  ", "github.com/acme/infra"),
        ("https://x-access-token:ghs_abc@github.com/acme/infra.git", "github.com/acme/infra"),
        ("https://github.com:443/acme/infra", "github.com/acme/infra"),
        ("https://github.com/acme/infra?tab=readme#top", "github.com/acme/infra"),
        ("https://github.com//acme//infra", "github.com/acme/infra"),
        ("github.com/acme/infra", "github.com/acme/infra"),
        (
            "ssh://git@gitlab.example.com:2222/group/sub/proj.git",
            "gitlab.example.com/group/sub/proj",
        ),
        ("git@gitlab.example.com:group/sub/proj.git", "gitlab.example.com/group/sub/proj"),
        ("https://gitlab.example.com/group/sub/proj", "gitlab.example.com/group/sub/proj"),
        ("https://bitbucket.org/brydzewski/foo", "bitbucket.org/brydzewski/foo"),
        ("git@bitbucket.org:brydzewski/foo.git", "bitbucket.org/brydzewski/foo"),
        ("http://[::1]:3000/example/example.git", "[::1]/example/example"),
        ("http://localhost:3000/example/example.git", "localhost/example/example"),
        ("git@localhost:example/example.git", "localhost/example/example"),
    ];
    for (url, key) in cases {
        assert_eq!(repository_key(url), key, "{url}");
    }
}

#[test]
fn local_repositories_keep_their_path() {
    let cases = [
        ("file:///srv/git/infra.git", "/srv/git/infra"),
        ("file:///srv/git/infra/", "/srv/git/infra"),
        ("file://localhost/srv/git/infra.git", "/srv/git/infra"),
        ("/srv/git/infra.git", "/srv/git/infra"),
        ("/srv/git/infra/.git", "/srv/git/infra"),
        // File systems tell cases apart.
        ("/srv/git/Infra", "/srv/git/Infra"),
        ("./infra.git", "./infra"),
        ("file:///", "/"),
    ];
    for (url, key) in cases {
        assert_eq!(repository_key(url), key, "{url}");
    }
}

#[test]
fn different_repositories_keep_different_keys() {
    let pairs = [
        ("https://github.com/acme/infra", "https://github.com/acme/infra-modules"),
        ("https://github.com/acme/infra", "https://gitlab.com/acme/infra"),
        ("https://github.com/acme/infra", "https://github.com/other/infra"),
        ("git@gitlab.example.com:group/proj.git", "git@gitlab.example.com:group/sub/proj.git"),
        ("file:///srv/git/infra", "https://srv/git/infra"),
    ];
    for (one, other) in pairs {
        assert_ne!(repository_key(one), repository_key(other), "{one} vs {other}");
    }
}

fn paths(paths: &[&str]) -> Vec<String> {
    paths.iter().map(|&path| path.to_owned()).collect()
}

#[test]
fn a_change_under_the_project_root_touches_it() {
    let changed = paths(&["README.md", "stacks/prod/main.tf", "modules/vpc/variables.tf"]);
    for root in
        ["stacks/prod", "stacks/prod/", "./stacks/prod", "/stacks/prod", "modules", "README.md"]
    {
        assert!(touches(Some(&changed), root, &[]), "{root}");
    }
    for root in ["stacks/staging", "stacks/pro", "stacks/prod/network", "modules/vp", "docs"] {
        assert!(!touches(Some(&changed), root, &[]), "{root}");
    }
}

#[test]
fn a_change_matching_a_trigger_path_touches_a_stack_elsewhere() {
    let changed = paths(&["modules/vpc/variables.tf"]);
    let trigger = paths(&["docs/*.md", "modules/**"]);
    assert!(touches(Some(&changed), "stacks/prod", &trigger));
    assert!(!touches(Some(&changed), "stacks/prod", &paths(&["modules/*.tf", "module/**"])));
    assert!(!touches(Some(&paths(&["docs/guide/a.md"])), "stacks/prod", &trigger));
}

#[test]
fn the_whole_repository_is_touched_by_any_change() {
    let changed = paths(&["README.md"]);
    for root in ["", ".", "./", "/"] {
        assert!(touches(Some(&changed), root, &[]), "{root:?}");
        assert!(!touches(Some(&[]), root, &[]), "{root:?}");
    }
}

#[test]
fn unknown_changes_touch_every_root() {
    for root in ["", "stacks/prod", "anything"] {
        assert!(touches(None, root, &[]), "{root}");
    }
}
