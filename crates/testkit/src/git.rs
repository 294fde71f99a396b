//! Git repositories for stacks, served over `file://`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `git` in `dir` with a fixed identity, panicking on failure; returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Gantry Tests")
        .env("GIT_AUTHOR_EMAIL", "tests@gantry.invalid")
        .env("GIT_COMMITTER_NAME", "Gantry Tests")
        .env("GIT_COMMITTER_EMAIL", "tests@gantry.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git is installed");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository with a `main` branch.
#[derive(Debug)]
pub struct GitRepository {
    pub path: PathBuf,
}

impl GitRepository {
    /// Creates a repository at `path` whose first commit holds `files` (path, content).
    pub fn create(path: &Path, files: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(path).expect("create the repository directory");
        git(path, &["init", "--quiet", "--initial-branch=main"]);
        let repository = Self { path: path.to_path_buf() };
        repository.commit(files, "initial configuration");
        repository
    }

    /// Writes `files` and commits them; returns the commit SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, content) in files {
            let file = self.path.join(name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).expect("create parent directories");
            }
            std::fs::write(file, content).expect("write a repository file");
        }
        git(&self.path, &["add", "--all"]);
        git(&self.path, &["commit", "--quiet", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Commits a symbolic link at `name` to `target` (which need not exist); returns the
    /// commit SHA. For repositories as hostile authors write them.
    pub fn commit_link(&self, name: &str, target: &str, message: &str) -> String {
        let link = self.path.join(name);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("create parent directories");
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("create a symbolic link");
        git(&self.path, &["add", "--all"]);
        git(&self.path, &["commit", "--quiet", "-m", message]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }
}
