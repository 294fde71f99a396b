//! Moving secret variables out of a process's environment block. The process marks
//! itself non-dumpable, writes the secrets into a sealed memory file, re-executes its
//! own program without them and, as the new program, reads them once and closes the file.
//!
//! Why a re-execution: `/proc/<pid>/environ` shows the block the program was started
//! with, whatever `remove_var` does afterwards (which is `unsafe` besides, and the
//! workspace forbids unsafe code). Only a new program image gets a new block, and only
//! `execve` gives one to the same process id, so a supervisor (systemd, kubelet, a test)
//! keeps its child.
//!
//! Why non-dumpable: a process of the same user could otherwise read the secrets from
//! its memory (`/proc/<pid>/mem`, ptrace) or, before the re-execution, its environment.
//! The kernel allows that to root (`CAP_SYS_PTRACE`) only.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use zeroize::Zeroize;

/// Set only in the re-executed program: the descriptor of the memory file holding the
/// secrets. Its presence also says the re-execution happened, so it never repeats.
pub const HANDOVER_FD_ENV: &str = "GANTRY_SECRETS_FD";

/// The program the process re-executes: its own, the same file even if the path it
/// was started from now names another (an upgrade in progress).
const OWN_PROGRAM: &str = "/proc/self/exe";

/// Once these are set the file can neither change nor lose them: what the new program
/// reads is exactly what the old one wrote.
const SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// More than any key, token and capability together: a bound on what is read.
const MAX_HANDOVER_BYTES: u64 = 1 << 20;

/// The secret variables taken out of the environment, by name. `Debug` shows the
/// names only.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Secrets(Vec<(String, String)>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

impl Secrets {
    /// The value of `name`, when it was set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(found, _)| found == name).map(|(_, value)| value.as_str())
    }

    /// Every variable taken, with its value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (name.as_str(), value.as_str()))
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        for (_, value) in &mut self.0 {
            value.zeroize();
        }
    }
}

/// Why the secrets could not be taken out of the environment. Never holds a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretEnvError {
    #[error("cannot mark the process non-dumpable: {0}")]
    NotDumpable(nix::errno::Errno),
    #[error("{variable} is not valid UTF-8")]
    NotUtf8 { variable: String },
    #[error("cannot hand {variables} over to the re-executed program: {source}")]
    Handover { variables: String, source: io::Error },
    #[error("cannot re-execute {OWN_PROGRAM} to take {variables} out of the environment: {source}")]
    Exec { variables: String, source: io::Error },
    #[error("{HANDOVER_FD_ENV}={value:?}: {problem}")]
    Received { value: String, problem: String },
}

/// Takes the variables `names` out of this process's environment block; call it first
/// thing in `main`, before any thread or child starts.
///
/// Marks the process non-dumpable, then:
/// * when none of `names` is set, returns no secrets;
/// * when some are, re-executes the program without them (this call does not return)
///   and, in the re-executed program, returns their values. The new program's
///   environment has [`HANDOVER_FD_ENV`] instead, which holds nothing secret: the
///   descriptor is closed by then, and children never inherit it.
pub fn take_from_environment(names: &[&str]) -> Result<Secrets, SecretEnvError> {
    nix::sys::prctl::set_dumpable(false).map_err(SecretEnvError::NotDumpable)?;
    if let Some(value) = std::env::var_os(HANDOVER_FD_ENV) {
        keep_program_name();
        return receive(&value);
    }
    let mut present = Vec::new();
    for name in names {
        if let Some(value) = std::env::var_os(name) {
            let value = value
                .into_string()
                .map_err(|_| SecretEnvError::NotUtf8 { variable: (*name).to_owned() })?;
            present.push(((*name).to_owned(), value));
        }
    }
    let present = Secrets(present);
    if present.0.is_empty() {
        return Ok(present);
    }
    let variables = names.join(", ");
    let file = seal(&present)
        .map_err(|source| SecretEnvError::Handover { variables: variables.clone(), source })?;
    // The file descriptor must survive `execve`: it was made without close-on-exec, and
    // nothing else runs in this process yet that could start a child meanwhile.
    let source = reexecute(names, file.as_raw_fd());
    Err(SecretEnvError::Exec { variables, source })
}

/// Replaces this program with itself, same arguments, without `names` in its environment.
/// Returns only when that failed.
fn reexecute(names: &[&str], handover: RawFd) -> io::Error {
    let mut arguments = std::env::args_os();
    let mut command = std::process::Command::new(OWN_PROGRAM);
    if let Some(program_name) = arguments.next() {
        command.arg0(program_name);
    }
    command.args(arguments);
    for name in names {
        command.env_remove(name);
    }
    command.env(HANDOVER_FD_ENV, handover.to_string());
    command.exec()
}

/// Names the process after its program file again. The kernel names a process after the
/// path it was executed by, `exe` here, which `ps`, `pkill` and the journal would show.
/// A name that cannot be set leaves only that cosmetic loss.
fn keep_program_name() {
    let name = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_name().map(|name| name.as_bytes().to_vec()))
        .and_then(|name| std::ffi::CString::new(name).ok());
    if let Some(name) = name {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// A sealed memory file holding `secrets`, not closed on exec.
fn seal(secrets: &Secrets) -> io::Result<OwnedFd> {
    let descriptor = memfd_create(c"gantry-secrets", MFdFlags::MFD_ALLOW_SEALING)?;
    let mut file = File::from(descriptor);
    let mut bytes = encode(secrets);
    let written = file.write_all(&bytes);
    bytes.zeroize();
    written?;
    fcntl(&file, FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(OwnedFd::from(file))
}

/// Reads the secrets from the descriptor `value` names, and closes it.
fn receive(value: &OsStr) -> Result<Secrets, SecretEnvError> {
    let problem = |problem: &str| SecretEnvError::Received {
        value: value.to_string_lossy().into_owned(),
        problem: problem.to_owned(),
    };
    // 0, 1 and 2 are the standard streams: never closed here, whatever the variable says.
    let descriptor = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.parse::<RawFd>().ok())
        .filter(|descriptor| *descriptor > 2)
        .ok_or_else(|| problem("expected the number of a file descriptor above 2"))?;
    let read = read_sealed(descriptor);
    // Closed whatever was read: a child must never inherit it. An error means it was not
    // open, which is what closing is for.
    let _ = nix::unistd::close(descriptor);
    let mut bytes = read.map_err(|error| {
        problem(&format!("cannot read the secrets this program handed to itself: {error}"))
    })?;
    let secrets = decode(&bytes);
    bytes.zeroize();
    secrets.ok_or_else(|| problem("the secrets this program handed to itself are malformed"))
}

/// The content of the sealed memory file open as `descriptor`. Opened again through
/// `/proc/self/fd`, since safe code cannot adopt a raw descriptor; the seals prove it is
/// the file a previous image of this program sealed, not some other open file.
fn read_sealed(descriptor: RawFd) -> io::Result<Vec<u8>> {
    let file = File::open(format!("/proc/self/fd/{descriptor}"))?;
    let seals = fcntl(&file, FcntlArg::F_GET_SEALS)
        .map_err(|_| io::Error::other("it is not a sealed memory file"))?;
    if !SealFlag::from_bits_truncate(seals).contains(SEALS) {
        return Err(io::Error::other("it is not a sealed memory file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_HANDOVER_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_HANDOVER_BYTES {
        bytes.zeroize();
        return Err(io::Error::other("it is larger than any secrets this program hands over"));
    }
    Ok(bytes)
}

/// `name NUL value NUL` for each variable: neither can hold a NUL, being from the
/// environment.
fn encode(secrets: &Secrets) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (name, value) in secrets.iter() {
        for part in [name, value] {
            bytes.extend_from_slice(part.as_bytes());
            bytes.push(0);
        }
    }
    bytes
}

fn decode(bytes: &[u8]) -> Option<Secrets> {
    let Some(body) = bytes.strip_suffix(&[0]) else {
        return bytes.is_empty().then(Secrets::default);
    };
    let parts: Vec<&[u8]> = body.split(|byte| *byte == 0).collect();
    if !parts.len().is_multiple_of(2) {
        return None;
    }
    let mut secrets = Secrets::default();
    for pair in parts.chunks(2) {
        let name = std::str::from_utf8(pair[0]).ok().filter(|name| !name.is_empty())?;
        let value = std::str::from_utf8(pair[1]).ok()?;
        secrets.0.push((name.to_owned(), value.to_owned()));
    }
    Some(secrets)
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    fn secrets(pairs: &[(&str, &str)]) -> Secrets {
        Secrets(pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect())
    }

    #[test]
    fn encoded_secrets_decode_to_the_same_values() {
        for pairs in [
            &[][..],
            &[("GANTRY_TOKEN", "token")][..],
            &[("GANTRY_POOL_PRIVATE_KEY", "-----BEGIN\nline=\n"), ("EMPTY", "")][..],
        ] {
            let original = secrets(pairs);
            assert_eq!(decode(&encode(&original)), Some(original));
        }
        for malformed in [&b"NAME"[..], b"NAME\0", b"\0value\0", b"N\0v\0M\0"] {
            assert_eq!(decode(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn debug_output_names_the_variables_only() {
        let taken = secrets(&[("GANTRY_TOKEN", "hidden-value")]);
        assert_eq!(format!("{taken:?}"), "{\"GANTRY_TOKEN\"}");
    }

    #[test]
    fn a_sealed_file_is_read_once_and_closed() {
        let original = secrets(&[("GANTRY_WORKER_CAPABILITY", "capability-value")]);
        let descriptor = seal(&original).unwrap().into_raw_fd();
        let received = receive(OsStr::new(&descriptor.to_string())).unwrap();
        assert_eq!(received.get("GANTRY_WORKER_CAPABILITY"), Some("capability-value"));
        assert_eq!(received.get("GANTRY_TOKEN"), None);
    }

    #[test]
    fn anything_but_a_sealed_memory_file_is_refused_without_closing_the_standard_streams() {
        let mut plain = tempfile::tempfile().unwrap();
        plain.write_all(&encode(&secrets(&[("NAME", "planted")]))).unwrap();
        let descriptor = plain.into_raw_fd();
        let error = receive(OsStr::new(&descriptor.to_string())).unwrap_err().to_string();
        assert!(error.contains("it is not a sealed memory file"), "{error}");

        for value in ["1", "-3", "three", ""] {
            let error = receive(OsStr::new(value)).unwrap_err().to_string();
            assert_eq!(
                error,
                format!(
                    "GANTRY_SECRETS_FD={value:?}: expected the number of a file descriptor above 2"
                )
            );
        }
    }
}
