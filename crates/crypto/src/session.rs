//! Session proofs: a launcher signs the server's challenge with the pool private key, and
//! the server checks the signature against the pool certificate it issued.

use crate::{Certificate, Error};

const DOMAIN_SEPARATOR: &[u8] = b"gantry-session-v1\n";

/// The bytes a launcher signs for `challenge`. The server chooses the challenge, so the
/// prefix is what keeps a session signature from ever being valid for another purpose
/// (envelope headers are signed after `gantry-envelope-signature-v1\n`).
pub fn session_message(challenge: &str) -> Vec<u8> {
    [DOMAIN_SEPARATOR, challenge.as_bytes()].concat()
}

/// Checks the launcher's signature over `challenge`.
pub fn verify_session_signature(
    certificate: &Certificate,
    challenge: &str,
    signature: &[u8],
) -> Result<(), Error> {
    certificate.verify(&session_message(challenge), signature)
}
