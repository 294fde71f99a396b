//! Which stacks a delivery concerns: a repository address reduced to what its spellings
//! share, so that the payload's addresses can be matched to a stack's, and whether the
//! paths a push changed reach a stack's project root.

/// A repository address reduced to what two spellings of it share, for matching a
/// payload's repository to a stack's: the host lowercased, without scheme, user or port;
/// the path lowercased too (GitHub, GitLab, Gitea and Bitbucket all match repository paths
/// in any case); no trailing `/` or `.git`, nor query or fragment.
/// `https://github.com/Acme/Infra.git`, `git@github.com:acme/infra.git` and
/// `ssh://git@github.com/acme/infra` all give `github.com/acme/infra`. Local repositories
/// keep their path as it is, case included, since file systems tell cases apart:
/// `file:///srv/git/infra.git` and `/srv/git/infra/` both give `/srv/git/infra`.
pub fn repository_key(url: &str) -> String {
    let url = url.trim();
    if let Some((scheme, rest)) = url.split_once("://")
        && is_scheme(scheme)
    {
        if scheme.eq_ignore_ascii_case("file") {
            // `file:///srv/x` has an empty host, `file://host/srv/x` a named one; either way
            // the path starts at the first slash after it.
            let path = rest.find('/').map_or("", |slash| &rest[slash..]);
            return local(path);
        }
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        return remote(host(authority), path);
    }
    if let Some((user_host, path)) = scp_like(url) {
        return remote(host(user_host), path);
    }
    if url.starts_with(['/', '.', '~']) || is_drive_path(url) {
        return local(url);
    }
    // `github.com/acme/infra`: an address already without its scheme.
    let (authority, path) = url.split_at(url.find('/').unwrap_or(url.len()));
    remote(host(authority), path)
}

/// Whether a push touching `changed` concerns a stack whose project root is
/// `project_root` ("" or "." for the whole repository) and whose trigger paths are
/// `trigger_paths`: a changed path equal to the root or under it, or matching one of the
/// trigger paths (globs, see [`crate::trigger_paths`]). None (the payload could not say
/// what changed) concerns every stack. A module that the stack's configuration reads from
/// elsewhere in the repository counts only when a trigger path names it.
pub fn touches(changed: Option<&[String]>, project_root: &str, trigger_paths: &[String]) -> bool {
    let Some(changed) = changed else {
        return true;
    };
    let root = relative(project_root);
    changed.iter().any(|path| {
        let path = relative(path);
        root.is_empty()
            || path == root
            || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
            || trigger_paths.iter().any(|pattern| crate::trigger_paths::matches(pattern, path))
    })
}

/// A repository-relative path without leading `./` or `/`, nor trailing `/`; "" for the
/// repository itself.
fn relative(path: &str) -> &str {
    let mut path = path.trim();
    loop {
        let shorter = path.trim_start_matches('/');
        let shorter = shorter.strip_prefix("./").unwrap_or(shorter);
        if shorter == path {
            break;
        }
        path = shorter;
    }
    let path = path.trim_end_matches('/');
    if path == "." { "" } else { path }
}

/// RFC 3986: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// git's scp-like syntax, `[user@]host:path`: a colon before any slash. A single letter
/// before the colon is a Windows drive, not a host.
fn scp_like(url: &str) -> Option<(&str, &str)> {
    let colon = url.find(':')?;
    let before = &url[..colon];
    if before.is_empty() || before.contains('/') || is_drive_path(url) {
        return None;
    }
    Some((before, &url[colon + 1..]))
}

fn is_drive_path(url: &str) -> bool {
    let bytes = url.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes[1] == b':'
        && bytes.get(2).is_none_or(|&next| next == b'\\' || next == b'/')
}

/// The host of `[user[:password]@]host[:port]`, lowercased.
fn host(authority: &str) -> String {
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if host.starts_with('[') {
        // An IPv6 literal: its colons are not a port's.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split_once(':').map_or(host, |(name, _)| name)
    };
    host.to_ascii_lowercase()
}

fn remote(host: String, path: &str) -> String {
    let collapsed = collapse_slashes(&path.to_lowercase());
    let path = trim_repository_path(&collapsed).trim_start_matches('/');
    if path.is_empty() { host } else { format!("{host}/{path}") }
}

fn local(path: &str) -> String {
    let collapsed = collapse_slashes(path);
    let trimmed = trim_repository_path(&collapsed);
    if trimmed.is_empty() && collapsed.starts_with('/') {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Without trailing slashes and `.git`, in any order and number (`infra.git/`,
/// `infra/.git`).
fn trim_repository_path(path: &str) -> &str {
    let mut path = path;
    loop {
        let shorter = path.trim_end_matches('/');
        let shorter = shorter.strip_suffix(".git").unwrap_or(shorter);
        if shorter == path {
            return path;
        }
        path = shorter;
    }
}

fn collapse_slashes(path: &str) -> String {
    let mut collapsed = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && collapsed.ends_with('/')) {
            collapsed.push(c);
        }
    }
    collapsed
}
