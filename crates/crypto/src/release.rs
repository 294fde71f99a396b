//! Signing worker binaries: a detached Ed25519 signature over the binary's SHA-256
//! digest, so that a launcher runs only a worker signed by the key it pins, whatever
//! server it downloads it from. The signed message is a fixed label and the digest, so a
//! signature made for anything else never verifies as a binary's.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// What is signed before the digest.
const LABEL: &[u8] = b"gantry worker binary v1\n";

/// Why a signing key, public key or signature cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("not an Ed25519 signing key (base64 of its PKCS#8 document): {0}")]
    SigningKey(String),
    #[error("not an Ed25519 public key (base64 of its 32 bytes)")]
    PublicKey,
    #[error("not a signature (base64 of 64 bytes)")]
    SignatureFormat,
    #[error("the worker binary's signature does not verify with the pinned key")]
    BadSignature,
}

/// A new signing key: base64 of its PKCS#8 document, and base64 of its public key.
pub fn generate_release_key() -> Result<(String, String), ReleaseError> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|error| ReleaseError::SigningKey(error.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())
        .map_err(|error| ReleaseError::SigningKey(error.to_string()))?;
    Ok((STANDARD.encode(document.as_ref()), STANDARD.encode(pair.public_key().as_ref())))
}

/// The SHA-256 digest of a binary, hex.
pub fn binary_digest(binary: &[u8]) -> String {
    crate::sha256_hex(binary)
}

fn message(sha256_hex: &str) -> Vec<u8> {
    [LABEL, sha256_hex.as_bytes()].concat()
}

/// Signs the binary whose SHA-256 (hex) is `sha256_hex`; base64 of the signature.
pub fn sign_binary_digest(signing_key: &str, sha256_hex: &str) -> Result<String, ReleaseError> {
    let document = STANDARD
        .decode(signing_key.trim())
        .map_err(|error| ReleaseError::SigningKey(error.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(&document)
        .map_err(|error| ReleaseError::SigningKey(error.to_string()))?;
    Ok(STANDARD.encode(pair.sign(&message(sha256_hex)).as_ref()))
}

/// A pinned public key, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasePublicKey(Vec<u8>);

impl ReleasePublicKey {
    pub fn parse(text: &str) -> Result<Self, ReleaseError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| ReleaseError::PublicKey)?;
        if bytes.len() != 32 {
            return Err(ReleaseError::PublicKey);
        }
        Ok(Self(bytes))
    }

    /// Whether `signature` (base64) signs the binary of this digest.
    pub fn verify(&self, sha256_hex: &str, signature: &str) -> Result<(), ReleaseError> {
        let signature =
            STANDARD.decode(signature.trim()).map_err(|_| ReleaseError::SignatureFormat)?;
        UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(&message(sha256_hex), &signature)
            .map_err(|_| ReleaseError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_binary_verifies_and_nothing_else_does() {
        let (signing, public) = generate_release_key().unwrap();
        let public = ReleasePublicKey::parse(&public).unwrap();
        let digest = binary_digest(b"\x7fELF a worker");
        let signature = sign_binary_digest(&signing, &digest).unwrap();
        public.verify(&digest, &signature).unwrap();

        let other = binary_digest(b"\x7fELF another worker");
        assert_eq!(public.verify(&other, &signature), Err(ReleaseError::BadSignature));
        let (_, stranger) = generate_release_key().unwrap();
        let stranger = ReleasePublicKey::parse(&stranger).unwrap();
        assert_eq!(stranger.verify(&digest, &signature), Err(ReleaseError::BadSignature));
        assert_eq!(public.verify(&digest, "%%"), Err(ReleaseError::SignatureFormat));
    }

    #[test]
    fn keys_are_checked_when_read() {
        assert_eq!(ReleasePublicKey::parse("AAAA"), Err(ReleaseError::PublicKey));
        assert!(matches!(sign_binary_digest("bm9wZQ==", "00"), Err(ReleaseError::SigningKey(_))));
    }
}
