//! The open-file limit: every simulated launcher holds a TLS connection, in this process
//! and in the server, so 1,000 of them do not fit under the usual soft limit of 1,024.

use anyhow::Context as _;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors beyond one per launcher: the database, its WAL, the listener, the admin
/// client, pipes, the runtime's own.
const SPARE_DESCRIPTORS: u64 = 256;

/// Raises this process's soft open-file limit to its hard limit (the server, started
/// afterwards, inherits it) and checks that `connections` fit. Returns the new limit.
pub(crate) fn raise_open_file_limit(connections: usize) -> anyhow::Result<u64> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).context("cannot read the open-file limit")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .with_context(|| format!("cannot raise the open-file limit from {soft} to {hard}"))?;
    }
    let needed = connections as u64 + SPARE_DESCRIPTORS;
    anyhow::ensure!(
        hard >= needed,
        "{connections} launchers need about {needed} open files in this process and in the \
         server, but the hard limit is {hard}: raise it (ulimit -Hn, or LimitNOFILE) and retry"
    );
    Ok(hard)
}
