//! The header signature: the origin of a blob. Wrapping a data key needs only the pool's
//! public key, which the server issued and stores, so without a signature the server
//! could seal a blob of its choosing (say, a Terraform state) for any context. Only the
//! pool private key signs, so a blob that verifies was sealed by a launcher of the pool.
//!
//! The signed message is `gantry-envelope-signature-v1\n` ‖ the header hash. The prefix
//! matters: launchers also sign session challenges that the server chooses, but always
//! after `gantry-session-v1\n`, and neither prefix starts the other, so no challenge can
//! make a launcher sign an envelope header, and no envelope signature is a session proof.

use super::EnvelopeError;
use super::wrap::internal;
use crate::PoolPrivateKey;

/// What every envelope signature's message starts with.
const DOMAIN_SEPARATOR: &[u8] = b"gantry-envelope-signature-v1\n";

/// The bytes the pool key signs for a header whose signed part hashes to `header_hash`.
fn signature_message(header_hash: &[u8; 32]) -> Vec<u8> {
    [DOMAIN_SEPARATOR, header_hash].concat()
}

/// Signs a header: RSA-PSS-SHA256 or ECDSA-P256-SHA256 (ASN.1), whichever the key is.
pub(crate) fn sign_header(
    sealer: &PoolPrivateKey,
    header_hash: &[u8; 32],
) -> Result<Vec<u8>, EnvelopeError> {
    sealer
        .sign(&signature_message(header_hash))
        .map_err(|error| internal(&format!("signing the envelope header failed ({error})")))
}

/// Checks a header's signature against the opening key's own public half: the pool key
/// seals for itself, so the key that can open a blob is the only key that may have
/// signed it. A missing (empty) or malformed signature fails like a wrong one.
pub(crate) fn verify_header(
    opener: &PoolPrivateKey,
    header_hash: &[u8; 32],
    signature: &[u8],
) -> Result<(), EnvelopeError> {
    if signature.is_empty() {
        return Err(EnvelopeError::Forged);
    }
    opener.verify_own(&signature_message(header_hash), signature).map_err(|_| EnvelopeError::Forged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_and_session_messages_can_never_coincide() {
        let session = crate::session::session_message("");
        assert!(!session.starts_with(DOMAIN_SEPARATOR));
        assert!(!DOMAIN_SEPARATOR.starts_with(&session));
        assert_eq!(signature_message(&[0xab; 32]).len(), DOMAIN_SEPARATOR.len() + 32);
        assert!(signature_message(&[0xab; 32]).starts_with(b"gantry-envelope-signature-v1\n"));
    }

    #[test]
    fn headers_verify_only_with_the_signing_key_and_hash() {
        let key = |pem: &str| PoolPrivateKey::from_pem(pem).unwrap();
        let p256 = key(&crate::generate_pool_key("a").unwrap().private_key_pem);
        let other = key(&crate::generate_pool_key("b").unwrap().private_key_pem);
        let hash = [7u8; 32];
        let signature = sign_header(&p256, &hash).unwrap();
        verify_header(&p256, &hash, &signature).unwrap();
        let forged = |result: Result<(), EnvelopeError>| {
            assert!(matches!(result, Err(EnvelopeError::Forged)), "{result:?}");
        };
        forged(verify_header(&other, &hash, &signature));
        forged(verify_header(&p256, &[8u8; 32], &signature));
        forged(verify_header(&p256, &hash, &[]));
        forged(verify_header(&p256, &hash, &signature[..signature.len() - 1]));
        // A signature over the bare hash, without the domain separator, is not one.
        forged(verify_header(&p256, &hash, &p256.sign(&hash).unwrap()));
    }
}
