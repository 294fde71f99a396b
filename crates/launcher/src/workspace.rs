//! Run workspaces: a checkout of the stack's repository at the run's commit, made with
//! the real `git` (so every URL and credential helper git supports works), kept between
//! plan and apply when the run waits for confirmation.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use gantry_domain::Timestamp;
use gantry_proto::agent::CommitAuthor;
use tokio::process::Command;

/// What was checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checkout {
    pub(crate) sha: String,
    /// The subject: the message's first line.
    pub(crate) message: String,
    pub(crate) author: CommitAuthor,
}

/// The last second an RFC 3339 time can name (9999-12-31T23:59:59Z). A commit may claim
/// any author time; one past this could not cross the wire, and the report carrying it
/// would be refused.
const LAST_AUTHOR_SECOND: u64 = 253_402_300_799;

/// Why a checkout failed; the message is shown in the run log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckoutError {
    #[error("cannot run git: {0} (install git on the launcher's machine)")]
    GitMissing(std::io::Error),
    #[error("git {step} failed: {output}")]
    Git { step: &'static str, output: String },
    #[error("cannot prepare the workspace directory {path}: {source}")]
    Directory { path: String, source: std::io::Error },
}

/// Runs git with a fixed, non-interactive configuration.
async fn git(dir: &Path, step: &'static str, args: &[&str]) -> Result<String, CheckoutError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        // Never block on a password prompt, never run repository-supplied helpers via
        // the ext:: transport.
        .args(["-c", "protocol.ext.allow=never", "-c", "advice.detachedHead=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .stdin(Stdio::null())
        // A checkout cut short by the run timeout or a stop must not leave git running.
        .kill_on_drop(true)
        .output()
        .await
        .map_err(CheckoutError::GitMissing)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|line| !line.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(5)..].join("\n");
        Err(CheckoutError::Git { step, output: tail })
    }
}

/// Checks out `commit` (or the head of `branch`) of `repository` into an empty `dir`.
pub(crate) async fn checkout(
    dir: &Path,
    repository: &str,
    branch: &str,
    commit: Option<&str>,
) -> Result<Checkout, CheckoutError> {
    create_dir(dir).await?;
    // An empty template: copying the sample hooks is a third of an init's time.
    git(dir, "init", &["init", "--quiet", "--template="]).await?;
    let branch_ref = format!("refs/heads/{branch}");
    match commit {
        Some(sha) => {
            // Servers that allow fetching a commit directly (protocol v2 does) need only
            // that commit; others get the branch, which must contain it.
            if git(
                dir,
                "fetch",
                &["fetch", "--quiet", "--depth", "1", "--no-tags", "--", repository, sha],
            )
            .await
            .is_err()
            {
                git(
                    dir,
                    "fetch",
                    &["fetch", "--quiet", "--no-tags", "--", repository, &branch_ref],
                )
                .await?;
            }
            git(dir, "checkout", &["checkout", "--quiet", "--detach", sha]).await?;
        }
        None => {
            git(
                dir,
                "fetch",
                &["fetch", "--quiet", "--depth", "1", "--no-tags", "--", repository, &branch_ref],
            )
            .await?;
            git(dir, "checkout", &["checkout", "--quiet", "--detach", "FETCH_HEAD"]).await?;
        }
    }
    // NUL-separated: a name or subject may hold any other character. `%an`, not `%aN`:
    // the commit's own author, not what the repository's mailmap makes of it.
    let head = git(
        dir,
        "log",
        &["log", "-1", "--no-show-signature", "--format=%H%x00%s%x00%an%x00%ae%x00%at"],
    )
    .await?;
    let fields: Vec<&str> = head.split('\0').collect();
    let [sha, message, name, email, authored_at] = fields[..] else {
        return Err(CheckoutError::Git {
            step: "log",
            output: format!("unexpected output {head:?}: expected five fields"),
        });
    };
    let seconds: u64 = authored_at.parse().map_err(|_| CheckoutError::Git {
        step: "log",
        output: format!("unexpected author time {authored_at:?}: expected seconds since 1970"),
    })?;
    // Later than the wire can carry: taken as made at the last second it can name, so a
    // rule against commits from the future still sees one.
    let seconds = seconds.min(LAST_AUTHOR_SECOND);
    let authored_at = Timestamp::from_unix_millis(seconds as i64 * 1000);
    Ok(Checkout {
        sha: sha.to_owned(),
        message: message.to_owned(),
        author: CommitAuthor { name: name.to_owned(), email: email.to_owned(), authored_at },
    })
}

async fn create_dir(dir: &Path) -> Result<(), CheckoutError> {
    let error = |source| CheckoutError::Directory { path: dir.display().to_string(), source };
    if tokio::fs::try_exists(dir).await.map_err(error)? {
        tokio::fs::remove_dir_all(dir).await.map_err(error)?;
    }
    tokio::fs::create_dir_all(dir).await.map_err(error)
}

/// The home a run of the process executor gets beside its workspace.
pub(crate) fn home_beside(workspace: &Path) -> PathBuf {
    let mut name = workspace.file_name().unwrap_or_default().to_owned();
    name.push(".home");
    workspace.with_file_name(name)
}

/// Removes a workspace; a failure is only worth a warning.
pub(crate) async fn remove(dir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %dir.display(), %error, "cannot remove a workspace");
    }
}

/// Hands a tree to the user a run executes as: each entry is given to `owner` when this
/// process may change owners, and otherwise opened to everyone (directories `rwx`, files
/// `rw`, execute bits kept). Symbolic links are left alone. Only for trees in places no
/// one but the run's own parties can reach (a run container's mount, a run Pod's volume).
pub(crate) fn hand_over_tree(path: &Path, owner: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // A loop, not recursion: the repository or the run chose the tree's depth, and a
    // thread's stack must not be what bounds it.
    let mut pending = vec![path.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)?;
        let owned =
            owner.is_some_and(|uid| std::os::unix::fs::lchown(&path, Some(uid), Some(uid)).is_ok());
        if !owned && !metadata.is_symlink() {
            let mode =
                metadata.permissions().mode() | if metadata.is_dir() { 0o777 } else { 0o666 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The directory the tool runs in: the project root inside the checkout, which must
/// exist and stay inside it.
pub(crate) fn project_directory(workspace: &Path, project_root: &str) -> Result<PathBuf, String> {
    let directory = workspace.join(project_root);
    let resolved = directory.canonicalize().map_err(|_| {
        format!("the project root {project_root:?} does not exist in the repository")
    })?;
    let root = workspace.canonicalize().map_err(|e| format!("the workspace is unreadable: {e}"))?;
    if !resolved.starts_with(&root) {
        return Err(format!("the project root {project_root:?} leads outside the repository"));
    }
    if !resolved.is_dir() {
        return Err(format!("the project root {project_root:?} is not a directory"));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use gantry_testkit::GitRepository;

    use super::*;

    /// A repository with two commits on main; returns (url, first sha, second sha).
    fn repository(root: &Path) -> (String, String, String) {
        let repository = GitRepository::create(&root.join("repo"), &[("infra/main.tf", "# one\n")]);
        let first = repository.head();
        let second = repository.commit(&[("infra/main.tf", "# two\n")], "second");
        (repository.url(), first, second)
    }

    #[tokio::test]
    async fn checks_out_the_branch_head_or_a_given_commit() {
        let root = tempfile::tempdir().unwrap();
        let (url, first, second) = repository(root.path());

        let head = checkout(&root.path().join("w1"), &url, "main", None).await.unwrap();
        assert_eq!((head.sha, head.message.as_str()), (second, "second"));
        assert_eq!(
            (head.author.name.as_str(), head.author.email.as_str()),
            ("Gantry Tests", "tests@gantry.invalid")
        );
        // Made a moment ago, by the clock of this machine.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let age = now.as_millis() as i64 - head.author.authored_at.unix_millis();
        assert!((0..600_000).contains(&age), "authored {age} ms ago");
        assert_eq!(
            std::fs::read_to_string(root.path().join("w1/infra/main.tf")).unwrap(),
            "# two\n"
        );

        let pinned = checkout(&root.path().join("w2"), &url, "main", Some(&first)).await.unwrap();
        assert_eq!(pinned.sha, first);
        assert_eq!(
            std::fs::read_to_string(root.path().join("w2/infra/main.tf")).unwrap(),
            "# one\n"
        );
    }

    /// The author and the author's time, not the committer's, whatever characters the
    /// author's name holds; a time past what the wire can carry is taken as the last one.
    #[tokio::test]
    async fn the_commit_author_and_time_are_the_authors_own() {
        let root = tempfile::tempdir().unwrap();
        let repository = GitRepository::create(&root.path().join("repo"), &[("main.tf", "")]);
        let commit = |author: &str, date: &str, message: &str| {
            let author = format!("--author={author}");
            let date = format!("--date={date}");
            gantry_testkit::git(
                &repository.path,
                &["commit", "--quiet", "--allow-empty", &author, &date, "-m", message],
            );
            repository.head()
        };
        let sha = commit(
            "Mallory \"ops\" O'Neil <mallory@corp.example>",
            "@1700000000 +0200",
            "rotate | keys\n\nbody",
        );
        let checked = checkout(&root.path().join("w1"), &repository.url(), "main", None).await;
        let checked = checked.unwrap();
        assert_eq!(
            checked,
            Checkout {
                sha,
                message: "rotate | keys".to_owned(),
                author: CommitAuthor {
                    name: "Mallory \"ops\" O'Neil".to_owned(),
                    email: "mallory@corp.example".to_owned(),
                    authored_at: Timestamp::from_unix_millis(1_700_000_000_000),
                },
            }
        );

        commit("Far Future <future@corp.example>", "@300000000000 +0000", "later");
        let checked = checkout(&root.path().join("w2"), &repository.url(), "main", None).await;
        let authored_at = checked.unwrap().author.authored_at;
        assert_eq!(authored_at, Timestamp::from_unix_millis(LAST_AUTHOR_SECOND as i64 * 1000));
    }

    #[tokio::test]
    async fn failures_say_which_git_step_failed() {
        let root = tempfile::tempdir().unwrap();
        let (url, _, _) = repository(root.path());
        let error =
            checkout(&root.path().join("w"), &url, "nope", None).await.unwrap_err().to_string();
        assert!(error.starts_with("git fetch failed:") && error.contains("nope"), "{error}");
        let missing = format!("file://{}/missing", root.path().display());
        let error =
            checkout(&root.path().join("w"), &missing, "main", None).await.unwrap_err().to_string();
        assert!(error.starts_with("git fetch failed:"), "{error}");
    }

    #[test]
    fn project_roots_must_exist_inside_the_checkout() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("infra")).unwrap();
        assert!(project_directory(root.path(), "infra").is_ok());
        assert!(project_directory(root.path(), "").is_ok());
        assert!(project_directory(root.path(), "missing").unwrap_err().contains("does not exist"));
        std::os::unix::fs::symlink("/etc", root.path().join("escape")).unwrap();
        assert!(project_directory(root.path(), "escape").unwrap_err().contains("outside"));
    }

    /// The repository or the run chose the tree's depth: handing it over walks it without
    /// a stack frame per level.
    #[test]
    fn a_tree_as_deep_as_paths_go_is_handed_over_on_a_small_stack() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let deepest = gantry_testkit::fuzz::deep_tree(root.path());
        std::fs::write(deepest.join("main.tf"), "").unwrap();
        let tree = root.path().to_path_buf();
        gantry_testkit::fuzz::on_small_stack(move || hand_over_tree(&tree, None)).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&deepest), 0o777);
        assert_eq!(mode(&deepest.join("main.tf")) & 0o666, 0o666);
    }
}
