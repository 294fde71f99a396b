//! Keys and CSRs made the way users make them: with the `openssl` command.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The key types the reference and Gantry document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `openssl req -new -newkey rsa:4096 -nodes ...`, the reference's command.
    Rsa4096,
    /// An EC P-256 key (PKCS#8) and its CSR.
    P256,
}

/// A key and CSR on disk.
#[derive(Debug, Clone)]
pub struct OpensslKey {
    pub key_path: PathBuf,
    pub key_pem: String,
    pub csr_pem: String,
}

/// Runs `openssl` in `dir`, panicking with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed (Debian package openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl OpensslKey {
    /// Makes `<name>.key` and `<name>.csr` in `dir`.
    pub fn generate(dir: &Path, name: &str, kind: KeyKind) -> Self {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        match kind {
            KeyKind::Rsa4096 => openssl(
                dir,
                &[
                    "req", "-new", "-newkey", "rsa:4096", "-nodes", "-keyout", &key, "-out", &csr,
                    "-subj", "/CN=pool",
                ],
            ),
            KeyKind::P256 => openssl(
                dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    "/CN=pool",
                ],
            ),
        }
        let key_path = dir.join(&key);
        Self {
            key_pem: std::fs::read_to_string(&key_path).expect("openssl wrote the key"),
            csr_pem: std::fs::read_to_string(dir.join(&csr)).expect("openssl wrote the CSR"),
            key_path,
        }
    }
}
