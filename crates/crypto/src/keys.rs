//! Pool private keys: parsing every format openssl writes for RSA and P-256 keys,
//! preparing them to seal and open envelopes, signing session proofs and envelope
//! headers, checking a key against its certificate, and generating new P-256 keys with
//! their CSR (`gantry keygen`).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::certificate::verify_signature;
use crate::envelope::{UnwrapKey, WrapKey, spki_fingerprint};
use crate::{Certificate, Error, KeyAlgorithm};

/// A pool's private key. It never leaves the launcher. It signs session proofs, seals
/// envelopes (to its own public key, signed with itself) and opens them; loading refuses
/// a key that cannot do all of that.
pub struct PoolPrivateKey {
    signing: SigningKey,
    wrap_key: WrapKey,
    unwrap_key: UnwrapKey,
    recipient_fingerprint: [u8; 32],
}

enum SigningKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
}

impl std::fmt::Debug for PoolPrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolPrivateKey({}, hidden)", self.algorithm())
    }
}

impl PoolPrivateKey {
    /// Parses PEM: PKCS#8 (`PRIVATE KEY`, RSA or P-256), PKCS#1 (`RSA PRIVATE KEY`) or
    /// SEC1 (`EC PRIVATE KEY`). Other blocks in the text (such as `EC PARAMETERS`) are
    /// skipped.
    pub fn from_pem(text: &str) -> Result<Self, Error> {
        if !text.contains("-----BEGIN") {
            return Err(Error::NotPem);
        }
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(Error::EncryptedKey);
        }
        let der =
            PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|_| Error::NoPrivateKey)?;
        let signing = match der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der();
                if let Ok(rsa) = RsaKeyPair::from_pkcs8(bytes) {
                    checked_rsa(rsa)?
                } else {
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, bytes)
                        .map(SigningKey::P256)
                        .map_err(|_| {
                            Error::UnsupportedKey(
                                "the PKCS#8 key is neither RSA nor EC P-256 (Ed25519 and other curves cannot decrypt run state)".to_owned(),
                            )
                        })?
                }
            }
            PrivateKeyDer::Pkcs1(pkcs1) => RsaKeyPair::from_der(pkcs1.secret_pkcs1_der())
                .map_err(|e| Error::UnsupportedKey(format!("the RSA key does not parse: {e}")))
                .and_then(checked_rsa)?,
            PrivateKeyDer::Sec1(sec1) => EcdsaKeyPair::from_private_key_der(
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                sec1.secret_sec1_der(),
            )
            .map(SigningKey::P256)
            .map_err(|_| Error::UnsupportedKey("the EC key is not on curve P-256".to_owned()))?,
            _ => return Err(Error::NoPrivateKey),
        };
        Self::prepared(signing)
    }

    /// Prepares encryption and decryption next to signing, and the fingerprint envelopes
    /// name the key by.
    fn prepared(signing: SigningKey) -> Result<Self, Error> {
        let public_spki = match &signing {
            SigningKey::Rsa(rsa) => rsa.public_key().as_der(),
            SigningKey::P256(ec) => ec.public_key().as_der(),
        }
        .map_err(|_| {
            Error::UnsupportedKey(
                "the public key does not encode as SubjectPublicKeyInfo".to_owned(),
            )
        })?;
        let (wrap_key, unwrap_key) = match &signing {
            SigningKey::Rsa(rsa) => {
                (WrapKey::from_rsa(public_spki.as_ref()), UnwrapKey::from_rsa(rsa))
            }
            SigningKey::P256(ec) => (WrapKey::from_p256(ec), UnwrapKey::from_p256(ec)),
        };
        Ok(Self {
            recipient_fingerprint: spki_fingerprint(public_spki.as_ref()),
            wrap_key: wrap_key.map_err(Error::UnsupportedKey)?,
            unwrap_key: unwrap_key.map_err(Error::UnsupportedKey)?,
            signing,
        })
    }

    /// Parses the value of `GANTRY_POOL_PRIVATE_KEY`: PEM text, or its base64 encoding
    /// on one line (`base64 -w 0 pool.key`) or wrapped.
    pub fn from_config_value(value: &str) -> Result<Self, Error> {
        let trimmed = value.trim();
        if trimmed.contains("-----BEGIN") {
            return Self::from_pem(trimmed);
        }
        let compact: String = trimmed.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&compact)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&compact))
            .map_err(|_| Error::NotBase64Pem)?;
        let text = String::from_utf8(decoded).map_err(|_| Error::NotBase64Pem)?;
        if !text.contains("-----BEGIN") {
            return Err(Error::NotBase64Pem);
        }
        Self::from_pem(&text)
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        match &self.signing {
            SigningKey::Rsa(rsa) => KeyAlgorithm::Rsa { bits: rsa.public_modulus_len() * 8 },
            SigningKey::P256(_) => KeyAlgorithm::P256,
        }
    }

    /// SHA-256 of this key's public SubjectPublicKeyInfo, as envelope headers name the
    /// key they are sealed for: the SHA-256 of its certificate's SubjectPublicKeyInfo.
    pub fn recipient_fingerprint(&self) -> [u8; 32] {
        self.recipient_fingerprint
    }

    pub(crate) fn wrap_key(&self) -> &WrapKey {
        &self.wrap_key
    }

    pub(crate) fn unwrap_key(&self) -> &UnwrapKey {
        &self.unwrap_key
    }

    /// Checks a signature against this key's own public half, exactly as
    /// [`Certificate::verify`] checks one against the certificate: opening an envelope
    /// needs no certificate, since a pool's blobs are sealed and signed by the pool key.
    pub(crate) fn verify_own(&self, message: &[u8], signature_bytes: &[u8]) -> Result<(), Error> {
        verify_signature(self.algorithm(), self.public_key(), message, signature_bytes)
    }

    fn public_key(&self) -> &[u8] {
        match &self.signing {
            SigningKey::Rsa(rsa) => rsa.public_key().as_ref(),
            SigningKey::P256(ec) => ec.public_key().as_ref(),
        }
    }

    /// Whether this key is the private half of the certificate's public key.
    pub fn matches(&self, certificate: &Certificate) -> bool {
        self.public_key() == certificate.public_key()
    }

    /// Fails with [`Error::KeyMismatch`] when the key does not belong to the certificate.
    pub fn ensure_matches(&self, certificate: &Certificate) -> Result<(), Error> {
        if self.matches(certificate) { Ok(()) } else { Err(Error::KeyMismatch) }
    }

    /// Signs with RSA-PSS-SHA256 (MGF1-SHA256, 32-byte salt) or ECDSA-P256-SHA256
    /// (ASN.1 DER). Callers prefix what they sign with their own domain separator
    /// (`gantry-session-v1\n`, `gantry-envelope-signature-v1\n`), so that a signature made
    /// for one purpose is never valid for another.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let rng = SystemRandom::new();
        match &self.signing {
            SigningKey::Rsa(rsa) => {
                let mut out = vec![0; rsa.public_modulus_len()];
                rsa.sign(&signature::RSA_PSS_SHA256, &rng, message, &mut out)
                    .map_err(|_| Error::Generation("RSA signing failed".to_owned()))?;
                Ok(out)
            }
            SigningKey::P256(ec) => ec
                .sign(&rng, message)
                .map(|sig| sig.as_ref().to_vec())
                .map_err(|_| Error::Generation("ECDSA signing failed".to_owned())),
        }
    }
}

fn checked_rsa(rsa: RsaKeyPair) -> Result<SigningKey, Error> {
    let bits = rsa.public_modulus_len() * 8;
    if bits < 2048 {
        return Err(Error::UnsupportedKey(format!(
            "RSA-{bits} is too short: expected at least 2048 bits"
        )));
    }
    Ok(SigningKey::Rsa(rsa))
}

/// A freshly generated pool key and its certificate signing request, both PEM.
pub struct GeneratedPoolKey {
    /// Unencrypted PKCS#8, as `openssl genpkey` writes it.
    pub private_key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for GeneratedPoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedPoolKey").field("csr_pem", &self.csr_pem).finish_non_exhaustive()
    }
}

/// Generates an EC P-256 pool key (fast, and as strong as RSA-3072) and a CSR for it.
pub fn generate_pool_key(common_name: &str) -> Result<GeneratedPoolKey, Error> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let csr = params.serialize_request(&key)?;
    Ok(GeneratedPoolKey { private_key_pem: key.serialize_pem(), csr_pem: csr.pem()? })
}
