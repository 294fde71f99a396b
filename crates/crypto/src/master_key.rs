//! The server's master key (a key-encryption key kept outside the database) and the
//! sealed form of the server secrets it protects: AES-256-GCM, bound to the secret's
//! purpose so a sealed value cannot be moved to another row, and prefixed with the id of
//! the key that sealed it so a wrong or rotated key is named rather than guessed at.
//!
//! A sealed value is `gantry-sealed-v1:` ‖ key id (8 bytes) ‖ nonce (12) ‖ ciphertext and
//! tag. The additional data is a fixed label, the key id and the purpose.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// What every sealed value starts with; the version names the format.
pub const SEALED_PREFIX: &[u8] = b"gantry-sealed-v1:";
const KEY_ID_LEN: usize = 8;
const KEY_LEN: usize = 32;
const AAD_LABEL: &[u8] = b"gantry server secret v1\0";
const KEY_ID_LABEL: &[u8] = b"gantry master key id v1\0";
const TAG_LEN: usize = 16;

/// A 256-bit key-encryption key. `Debug` shows its id only.
pub struct MasterKey {
    key: LessSafeKey,
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id()).finish_non_exhaustive()
    }
}

/// Why a master key or a sealed value cannot be used. No message carries key material or
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a master key is 32 bytes written in base64 (44 characters); this one is {0}")]
    BadKey(String),
    #[error("the value is not sealed (it does not start with gantry-sealed-v1:)")]
    NotSealed,
    #[error("the sealed value is cut short")]
    Truncated,
    #[error("{purpose} was sealed with the master key {sealed_with}, but the key given is {given}")]
    WrongKey { purpose: String, sealed_with: String, given: String },
    #[error(
        "{purpose} does not authenticate under the master key {key}: it was altered or belongs to another purpose"
    )]
    Tampered { purpose: String, key: String },
}

impl MasterKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut()).expect("the system random source works");
        Self::from_array(bytes)
    }

    /// The key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::BadKey(format!("{} bytes long", bytes.len())))?;
        Ok(Self::from_array(Zeroizing::new(array)))
    }

    /// The key from its base64 text (standard alphabet, surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::BadKey("not valid base64".to_owned()))?,
        );
        Self::from_bytes(&bytes)
    }

    /// The key as base64 text, for its file. Handle as the secret it is.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_ref()))
    }

    /// The key's id: 16 hex characters derived from the key, safe to show and log.
    pub fn id(&self) -> String {
        hex::encode(self.id)
    }

    fn from_array(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &[KEY_ID_LABEL, bytes.as_ref()].concat(),
        );
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        let unbound =
            UnboundKey::new(&AES_256_GCM, bytes.as_ref()).expect("32 bytes is an AES-256 key");
        Self { key: LessSafeKey::new(unbound), bytes, id }
    }

    /// `plaintext` sealed for `purpose` (for example the name of the row it is kept in).
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("the system random source works");
        let mut sealed = Vec::with_capacity(
            SEALED_PREFIX.len() + KEY_ID_LEN + NONCE_LEN + plaintext.len() + TAG_LEN,
        );
        sealed.extend_from_slice(SEALED_PREFIX);
        sealed.extend_from_slice(&self.id);
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(purpose)),
                &mut body,
            )
            .expect("AES-GCM seals any value shorter than 64 GiB");
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The plaintext of a value sealed for `purpose` with this key.
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let sealed_with = sealed_key_id(sealed)?;
        if sealed_with != self.id() {
            return Err(SealError::WrongKey {
                purpose: purpose.to_owned(),
                sealed_with,
                given: self.id(),
            });
        }
        let rest = &sealed[SEALED_PREFIX.len() + KEY_ID_LEN..];
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Truncated)?;
        let mut body = Zeroizing::new(body.to_vec());
        let opened = self
            .key
            .open_in_place(nonce, Aad::from(self.aad(purpose)), &mut body)
            .map_err(|_| SealError::Tampered { purpose: purpose.to_owned(), key: self.id() })?;
        let len = opened.len();
        body.truncate(len);
        Ok(body)
    }

    fn aad(&self, purpose: &str) -> Vec<u8> {
        [AAD_LABEL, &self.id, purpose.as_bytes()].concat()
    }
}

/// Whether `value` is in the sealed form (by its prefix; nothing is checked).
pub fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(SEALED_PREFIX)
}

/// The id of the master key that sealed `value`.
pub fn sealed_key_id(value: &[u8]) -> Result<String, SealError> {
    let rest = value.strip_prefix(SEALED_PREFIX).ok_or(SealError::NotSealed)?;
    let id = rest.get(..KEY_ID_LEN).ok_or(SealError::Truncated)?;
    Ok(hex::encode(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_their_key_and_purpose() {
        let key = MasterKey::generate();
        let sealed = key.seal("certificate-authority", b"-----BEGIN PRIVATE KEY-----");
        assert!(is_sealed(&sealed));
        assert_eq!(sealed_key_id(&sealed).unwrap(), key.id());
        assert!(!sealed.windows(7).any(|w| w == b"PRIVATE"), "the plaintext shows through");
        let opened = key.open("certificate-authority", &sealed).unwrap();
        assert_eq!(opened.as_slice(), b"-----BEGIN PRIVATE KEY-----");
        // A fresh nonce each time: the same value never seals to the same bytes.
        assert_ne!(sealed, key.seal("certificate-authority", b"-----BEGIN PRIVATE KEY-----"));
        assert_eq!(key.open("empty", &key.seal("empty", b"")).unwrap().as_slice(), b"");
    }

    #[test]
    fn a_value_moved_to_another_purpose_does_not_open() {
        let key = MasterKey::generate();
        let sealed = key.seal("ui-session-key", b"k");
        let error = key.open("session-challenge-key", &sealed).unwrap_err();
        assert_eq!(
            error,
            SealError::Tampered { purpose: "session-challenge-key".to_owned(), key: key.id() }
        );
    }

    #[test]
    fn every_altered_byte_is_detected() {
        let key = MasterKey::generate();
        let sealed = key.seal("shared-pool-key", b"secret value");
        for index in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[index] ^= 0x01;
            assert!(key.open("shared-pool-key", &altered).is_err(), "byte {index} went unnoticed");
        }
        for len in 0..sealed.len() {
            assert!(key.open("shared-pool-key", &sealed[..len]).is_err(), "cut at {len} opened");
        }
    }

    #[test]
    fn another_key_is_named_not_tried() {
        let key = MasterKey::generate();
        let other = MasterKey::generate();
        assert_ne!(key.id(), other.id());
        let sealed = key.seal("certificate-authority", b"value");
        let error = other.open("certificate-authority", &sealed).unwrap_err();
        assert_eq!(
            error,
            SealError::WrongKey {
                purpose: "certificate-authority".to_owned(),
                sealed_with: key.id(),
                given: other.id(),
            }
        );
        assert!(error.to_string().contains(&key.id()), "{error}");
        // A forged prefix carrying the right id still fails authentication.
        let mut forged = sealed.clone();
        forged[SEALED_PREFIX.len()..SEALED_PREFIX.len() + KEY_ID_LEN]
            .copy_from_slice(&hex::decode(other.id()).unwrap());
        assert!(matches!(
            other.open("certificate-authority", &forged),
            Err(SealError::Tampered { .. })
        ));
    }

    #[test]
    fn clear_values_are_not_taken_for_sealed_ones() {
        let key = MasterKey::generate();
        assert!(!is_sealed(b"{\"certificate_pem\":\"...\"}"));
        assert_eq!(key.open("x", b"clear").unwrap_err(), SealError::NotSealed);
        assert_eq!(sealed_key_id(b"gantry-sealed-v1:abc").unwrap_err(), SealError::Truncated);
    }

    #[test]
    fn keys_round_trip_through_base64_and_bad_ones_are_refused() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let again = MasterKey::from_base64(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(again.id(), key.id());
        assert_eq!(again.open("p", &key.seal("p", b"v")).unwrap().as_slice(), b"v");
        let short = MasterKey::from_base64("c2hvcnQ=").unwrap_err();
        assert_eq!(
            short.to_string(),
            "a master key is 32 bytes written in base64 (44 characters); this one is 5 bytes long"
        );
        assert!(matches!(MasterKey::from_base64("not base64!"), Err(SealError::BadKey(_))));
        assert!(!format!("{key:?}").contains(text.as_str()));
        assert!(format!("{key:?}").contains(&key.id()));
    }
}
