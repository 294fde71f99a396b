//! Worker identities: an Ed25519 key per Worker, kept in a Secret of its own. The server
//! records each worker's public key fingerprint (worker metadata `identity`), so a worker
//! is recognisable across operator restarts and in the server's views. Ed25519 makes
//! 1,000 of them in milliseconds, where the reference's per-worker RSA keys make
//! scale-out CPU-bound.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

/// Worker metadata key under which the server shows the identity fingerprint.
pub const IDENTITY_METADATA: &str = "identity";
/// The Secret key holding the PKCS#8 private key (DER).
pub const IDENTITY_SECRET_KEY: &str = "identity.pk8";

/// A generated identity.
pub struct WorkerIdentity {
    pkcs8: Zeroizing<Vec<u8>>,
    /// SHA-256 of the public key, hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for WorkerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl WorkerIdentity {
    pub fn generate() -> Result<Self, IdentityError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| IdentityError("the system random generator failed"))?;
        Self::from_pkcs8(document.as_ref())
    }

    /// An identity read back from its Secret.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, IdentityError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| IdentityError("the identity is not an Ed25519 PKCS#8 key"))?;
        Ok(Self {
            fingerprint: gantry_crypto::sha256_hex(pair.public_key().as_ref()),
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }
}

#[derive(Debug, thiserror::Error)]
#[error("worker identity: {0}")]
pub struct IdentityError(&'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_survives_its_secret_and_each_one_differs() {
        let first = WorkerIdentity::generate().unwrap();
        let again = WorkerIdentity::from_pkcs8(first.pkcs8()).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 64);
        assert_ne!(first.fingerprint, WorkerIdentity::generate().unwrap().fingerprint);
        assert!(WorkerIdentity::from_pkcs8(b"not a key").is_err());
        assert!(!format!("{first:?}").contains("pkcs8:"));
    }
}
