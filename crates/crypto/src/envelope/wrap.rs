//! Wrapping the 32-byte data key for the pool key: RSA-OAEP-SHA256 (aws-lc-rs) for RSA
//! pool keys, HPKE base mode (RFC 9180, the `hpke` crate) for P-256 pool keys. Either way
//! the context string is bound in (OAEP label, HPKE info), so a wrapped key moved into
//! another context's header no longer unwraps.

use std::io;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{
    OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, RsaKeyPair};
use hpke::aead::AesGcm128;
use hpke::kdf::HkdfSha256;
use hpke::kem::DhP256HkdfSha256;
use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::format::FINGERPRINT_LEN;
use super::{EnvelopeError, WrapAlgorithm};

/// The length of the data key: an AES-256 key.
pub(crate) const DATA_KEY_LEN: usize = 32;

type Kem = DhP256HkdfSha256;
type HpkePublicKey = <Kem as hpke::Kem>::PublicKey;
type HpkePrivateKey = <Kem as hpke::Kem>::PrivateKey;
type HpkeEncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// `enc` of DHKEM(P-256): an uncompressed point.
const HPKE_ENC_LEN: usize = 65;
/// The HPKE-sealed data key: 32 bytes and AES-128-GCM's 16-byte tag.
const HPKE_SEALED_KEY_LEN: usize = DATA_KEY_LEN + 16;

/// The public half used to wrap data keys: the pool key's own public key, prepared when
/// the key is loaded (a launcher seals for its own pool, so it needs no certificate).
pub(crate) enum WrapKey {
    RsaOaep(OaepPublicEncryptingKey),
    Hpke(HpkePublicKey),
}

impl WrapKey {
    /// `spki_der` is the key pair's own SubjectPublicKeyInfo, as aws-lc-rs encodes it.
    pub(crate) fn from_rsa(spki_der: &[u8]) -> Result<Self, String> {
        let public_key = PublicEncryptingKey::from_der(spki_der)
            .map_err(|e| format!("the RSA public key cannot encrypt ({e})"))?;
        OaepPublicEncryptingKey::new(public_key)
            .map(Self::RsaOaep)
            .map_err(|_| "the RSA public key cannot encrypt with OAEP".to_owned())
    }

    pub(crate) fn from_p256(key_pair: &EcdsaKeyPair) -> Result<Self, String> {
        // `public_key()` of a P-256 pair is the uncompressed point, which is exactly the
        // serialization the `hpke` crate reads.
        Self::from_p256_point(key_pair.public_key().as_ref())
    }

    /// From the uncompressed point a P-256 certificate carries.
    pub(crate) fn from_p256_point(point: &[u8]) -> Result<Self, String> {
        HpkePublicKey::from_bytes(point)
            .map(Self::Hpke)
            .map_err(|_| "the EC public key is not an uncompressed P-256 point".to_owned())
    }

    pub(crate) fn algorithm(&self) -> WrapAlgorithm {
        match self {
            Self::RsaOaep(_) => WrapAlgorithm::RsaOaepSha256,
            Self::Hpke(_) => WrapAlgorithm::HpkeP256,
        }
    }

    /// Wraps `data_key` for this key, bound to `context`.
    pub(crate) fn wrap(
        &self,
        data_key: &[u8; DATA_KEY_LEN],
        context: &[u8],
    ) -> Result<Vec<u8>, EnvelopeError> {
        match self {
            Self::RsaOaep(oaep) => {
                let mut wrapped = vec![0u8; oaep.ciphertext_size()];
                let len = oaep
                    .encrypt(&OAEP_SHA256_MGF1SHA256, data_key, &mut wrapped, Some(context))
                    .map_err(|_| internal("RSA-OAEP encryption failed"))?
                    .len();
                wrapped.truncate(len);
                Ok(wrapped)
            }
            Self::Hpke(public_key) => {
                let (encapped, sealed) = hpke::single_shot_seal::<AesGcm128, HkdfSha256, Kem, _>(
                    &OpModeS::Base,
                    public_key,
                    context,
                    data_key,
                    &[],
                    &mut AwsLcRng,
                )
                .map_err(|e| internal(&format!("HPKE sealing failed ({e})")))?;
                let mut wrapped = encapped.to_bytes().to_vec();
                wrapped.extend_from_slice(&sealed);
                Ok(wrapped)
            }
        }
    }
}

/// The private half used to unwrap data keys, prepared when a pool key is loaded so that
/// a key that cannot decrypt is refused at startup, not at the first apply.
pub(crate) enum UnwrapKey {
    RsaOaep(OaepPrivateDecryptingKey),
    Hpke(HpkePrivateKey),
}

impl UnwrapKey {
    /// aws-lc-rs decrypts with a PKCS#8 key: re-export the key pair rather than writing
    /// DER by hand (the pair may have been loaded from PKCS#1).
    pub(crate) fn from_rsa(key_pair: &RsaKeyPair) -> Result<Self, String> {
        let pkcs8: Pkcs8V1Der<'static> =
            key_pair.as_der().map_err(|_| "the RSA key does not export as PKCS#8".to_owned())?;
        let private_key = PrivateDecryptingKey::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| format!("the RSA key cannot decrypt ({e})"))?;
        OaepPrivateDecryptingKey::new(private_key)
            .map(Self::RsaOaep)
            .map_err(|_| "the RSA key cannot decrypt with OAEP".to_owned())
    }

    pub(crate) fn from_p256(key_pair: &EcdsaKeyPair) -> Result<Self, String> {
        // The buffer holding the scalar is zeroed when dropped (aws-lc-rs `Buffer`).
        let scalar = key_pair
            .private_key()
            .as_be_bytes()
            .map_err(|_| "the EC key does not export its scalar".to_owned())?;
        HpkePrivateKey::from_bytes(scalar.as_ref())
            .map(Self::Hpke)
            .map_err(|_| "the EC key is not a valid P-256 scalar".to_owned())
    }

    pub(crate) fn algorithm(&self) -> WrapAlgorithm {
        match self {
            Self::RsaOaep(_) => WrapAlgorithm::RsaOaepSha256,
            Self::Hpke(_) => WrapAlgorithm::HpkeP256,
        }
    }

    /// Unwraps the data key; any failure is [`EnvelopeError::Unwrap`] (no detail, as
    /// befits a padding or tag check).
    pub(crate) fn unwrap(
        &self,
        wrapped: &[u8],
        context: &[u8],
    ) -> Result<Zeroizing<[u8; DATA_KEY_LEN]>, EnvelopeError> {
        let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        match self {
            Self::RsaOaep(private_key) => {
                if wrapped.len() != private_key.key_size_bytes() {
                    return Err(EnvelopeError::Unwrap);
                }
                let mut plaintext = Zeroizing::new(vec![0u8; private_key.min_output_size()]);
                let unwrapped = private_key
                    .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, &mut plaintext, Some(context))
                    .map_err(|_| EnvelopeError::Unwrap)?;
                if unwrapped.len() != DATA_KEY_LEN {
                    return Err(EnvelopeError::Unwrap);
                }
                data_key.copy_from_slice(unwrapped);
            }
            Self::Hpke(private_key) => {
                if wrapped.len() != HPKE_ENC_LEN + HPKE_SEALED_KEY_LEN {
                    return Err(EnvelopeError::Unwrap);
                }
                let (enc, sealed) = wrapped.split_at(HPKE_ENC_LEN);
                let encapped =
                    HpkeEncappedKey::from_bytes(enc).map_err(|_| EnvelopeError::Unwrap)?;
                let opened = Zeroizing::new(
                    hpke::single_shot_open::<AesGcm128, HkdfSha256, Kem>(
                        &OpModeR::Base,
                        private_key,
                        &encapped,
                        context,
                        sealed,
                        &[],
                    )
                    .map_err(|_| EnvelopeError::Unwrap)?,
                );
                if opened.len() != DATA_KEY_LEN {
                    return Err(EnvelopeError::Unwrap);
                }
                data_key.copy_from_slice(&opened);
            }
        }
        Ok(data_key)
    }
}

/// SHA-256 of a DER SubjectPublicKeyInfo: the key's own, as aws-lc-rs encodes it (for
/// the keys Gantry accepts, the same bytes as the pool certificate's SubjectPublicKeyInfo).
pub(crate) fn spki_fingerprint(spki_der: &[u8]) -> [u8; FINGERPRINT_LEN] {
    super::format::header_hash(spki_der)
}

/// Randomness for the `hpke` crate (rand_core 0.9) from aws-lc-rs's generator.
struct AwsLcRng;

impl hpke::rand_core::RngCore for AwsLcRng {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0u8; 4];
        self.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0u8; 8];
        self.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, destination: &mut [u8]) {
        // `RngCore::fill_bytes` cannot return an error. aws-lc-rs fails only when the
        // operating system's random source does, and continuing without randomness would
        // be far worse than stopping: this is the one panic of the envelope code.
        #[allow(clippy::expect_used)]
        aws_lc_rs::rand::fill(destination).expect("the system random source works");
    }
}

impl hpke::rand_core::CryptoRng for AwsLcRng {}

/// A failure that a valid key and a working system cannot produce.
pub(crate) fn internal(what: &str) -> EnvelopeError {
    EnvelopeError::Io(io::Error::other(format!("{what}: this is a bug or a broken system")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rng_adapter_yields_fresh_bytes() {
        use hpke::rand_core::RngCore;
        let mut rng = AwsLcRng;
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        rng.fill_bytes(&mut a);
        rng.fill_bytes(&mut b);
        assert_ne!(a, b);
        assert_ne!(rng.next_u64(), rng.next_u64());
    }
}
