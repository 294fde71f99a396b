//! Random bearer secrets (API keys, session tokens), their stored hashes, and the
//! stateless session challenges any server replica can check.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Error;

/// A new secret: `prefix` followed by 256 random bits, URL-safe. The prefix makes a
/// leaked secret recognisable by scanners.
pub fn random_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// How a secret is stored: SHA-256, hex. The secrets are 256-bit random values, so a
/// fast hash is enough; only the hash ever reaches the store.
pub fn hash_secret(secret: &str) -> String {
    crate::certificate::sha256_hex(secret.as_bytes())
}

/// Issues and checks session challenges: `pool.expiry.nonce.mac`, where the MAC is
/// HMAC-SHA256 under a key every server replica shares through the store. A challenge is
/// only good for its pool and until it expires.
pub struct ChallengeSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for ChallengeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeSigner(hidden)")
    }
}

impl ChallengeSigner {
    pub fn new(key: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    /// A new random key for [`ChallengeSigner::new`].
    pub fn generate_key() -> Vec<u8> {
        let mut bytes = vec![0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
        bytes
    }

    pub fn issue(&self, pool_id: &str, expires_at_unix_millis: i64) -> String {
        let mut nonce = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
        let payload =
            format!("{pool_id}.{expires_at_unix_millis}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    pub fn verify(
        &self,
        challenge: &str,
        pool_id: &str,
        now_unix_millis: i64,
    ) -> Result<(), Error> {
        let (payload, tag) = challenge.rsplit_once('.').ok_or(Error::BadChallenge)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| Error::BadChallenge)?;
        hmac::verify(&self.key, payload.as_bytes(), &tag).map_err(|_| Error::BadChallenge)?;
        let mut parts = payload.split('.');
        let (Some(challenge_pool), Some(expiry)) = (parts.next(), parts.next()) else {
            return Err(Error::BadChallenge);
        };
        let expiry: i64 = expiry.parse().map_err(|_| Error::BadChallenge)?;
        if challenge_pool != pool_id || now_unix_millis > expiry {
            return Err(Error::BadChallenge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_hash_stably() {
        let a = random_secret("gak_");
        let b = random_secret("gak_");
        assert_ne!(a, b);
        assert!(a.starts_with("gak_") && a.len() == 4 + 43);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_eq!(hash_secret(&a).len(), 64);
        assert!(!hash_secret(&a).contains(&a[4..]));
    }

    #[test]
    fn challenges_are_bound_to_pool_expiry_and_key() {
        let signer = ChallengeSigner::new(b"0123456789abcdef0123456789abcdef");
        let challenge = signer.issue("pool-a", 1_000);
        assert!(signer.verify(&challenge, "pool-a", 999).is_ok());
        assert!(signer.verify(&challenge, "pool-a", 1_001).is_err(), "expired");
        assert!(signer.verify(&challenge, "pool-b", 999).is_err(), "other pool");
        let other = ChallengeSigner::new(b"another key, another server.....");
        assert!(other.verify(&challenge, "pool-a", 999).is_err(), "other key");
        let forged = challenge.replacen("1000", "9999", 1);
        assert!(signer.verify(&forged, "pool-a", 999).is_err(), "altered expiry");
        assert!(signer.verify("garbage", "pool-a", 0).is_err());
    }
}
