//! Parsed X.509 certificates: the public key they carry, their fingerprint and expiry,
//! and signature checks against that key.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::Error;

/// The kinds of key a pool may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Rsa { bits: usize },
    P256,
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rsa { bits } => write!(f, "RSA-{bits}"),
            Self::P256 => f.write_str("EC P-256"),
        }
    }
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Which supported algorithm a SubjectPublicKeyInfo holds, or why it is not supported.
pub(crate) fn key_algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyAlgorithm, String> {
    let oid = spki.algorithm.algorithm.to_id_string();
    match oid.as_str() {
        OID_RSA => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let bits = rsa.key_size();
                if (2048..=8192).contains(&bits) {
                    Ok(KeyAlgorithm::Rsa { bits })
                } else {
                    Err(format!(
                        "RSA-{bits}: expected an RSA key of 2048 to 8192 bits, or EC P-256"
                    ))
                }
            }
            _ => Err("the RSA public key does not parse".to_owned()),
        },
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some(OID_P256) => Ok(KeyAlgorithm::P256),
                Some(other) => {
                    Err(format!("EC curve {other}: expected EC P-256 (prime256v1) or RSA"))
                }
                None => Err("EC key without a named curve: expected EC P-256".to_owned()),
            }
        }
        other => {
            Err(format!("key algorithm {other}: expected RSA (2048 to 8192 bits) or EC P-256"))
        }
    }
}

/// A certificate, as received or as issued.
#[derive(Debug, Clone)]
pub struct Certificate {
    pem: String,
    der: Vec<u8>,
    spki_der: Vec<u8>,
    public_key: Vec<u8>,
    algorithm: KeyAlgorithm,
    not_after_unix: i64,
    fingerprint: String,
}

impl Certificate {
    /// Parses the first certificate of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| Error::MalformedCertificate("no CERTIFICATE PEM block".to_owned()))?;
        Self::from_der(der.as_ref())
    }

    pub fn from_der(der: &[u8]) -> Result<Self, Error> {
        let (rest, certificate) = X509Certificate::from_der(der)
            .map_err(|e| Error::MalformedCertificate(e.to_string()))?;
        // Bytes after the certificate would be kept in `der` and its fingerprint: the same
        // certificate would have as many fingerprints as trailers, and a launcher comparing
        // its token's with the server's would take the pool for reset.
        if !rest.is_empty() {
            return Err(Error::MalformedCertificate(format!(
                "{} bytes follow its DER encoding",
                rest.len()
            )));
        }
        let spki = certificate.public_key();
        let algorithm = key_algorithm(spki).map_err(Error::MalformedCertificate)?;
        Ok(Self {
            pem: pem_encode("CERTIFICATE", der),
            der: der.to_vec(),
            spki_der: spki.raw.to_vec(),
            public_key: spki.subject_public_key.data.to_vec(),
            algorithm,
            not_after_unix: certificate.validity().not_after.timestamp(),
            fingerprint: sha256_hex(der),
        })
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER encoding, lowercase hex: how pools and sessions name a
    /// certificate.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    pub fn not_after_unix(&self) -> i64 {
        self.not_after_unix
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The raw public key: PKCS#1 RSAPublicKey for RSA, the uncompressed point for EC.
    pub(crate) fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Fails unless `issuer`'s key signed this certificate: how a client holding the
    /// server's CA certificate checks a pool certificate the server hands it.
    pub fn verify_issued_by(&self, issuer: &Certificate) -> Result<(), Error> {
        let (_, parsed) = X509Certificate::from_der(&self.der)
            .map_err(|e| Error::MalformedCertificate(e.to_string()))?;
        let (_, issuer) = X509Certificate::from_der(&issuer.der)
            .map_err(|e| Error::MalformedCertificate(e.to_string()))?;
        parsed.verify_signature(Some(issuer.public_key())).map_err(|_| Error::UntrustedCertificate)
    }

    /// Whether `candidate`'s subject is this certificate's issuer: the authority that
    /// must have signed it, if the names are honest ([`Self::verify_issued_by`] checks).
    pub fn names_as_issuer(&self, candidate: &Certificate) -> bool {
        let parsed = X509Certificate::from_der(&self.der);
        let candidate = X509Certificate::from_der(&candidate.der);
        match (parsed, candidate) {
            (Ok((_, parsed)), Ok((_, candidate))) => {
                parsed.issuer().as_raw() == candidate.subject().as_raw()
            }
            _ => false,
        }
    }

    /// Checks a signature made by the certificate's key: RSA-PSS-SHA256 for RSA keys,
    /// ECDSA-SHA256 (ASN.1) for P-256 keys.
    pub fn verify(&self, message: &[u8], signature_bytes: &[u8]) -> Result<(), Error> {
        verify_signature(self.algorithm, &self.public_key, message, signature_bytes)
    }
}

/// Checks a pool key's signature against its raw public key (PKCS#1 RSAPublicKey for RSA,
/// the uncompressed point for P-256): RSA-PSS-SHA256 or ECDSA-P256-SHA256 (ASN.1), the
/// two schemes [`crate::PoolPrivateKey::sign`] makes. One function for every verifier —
/// the server checking a session proof against the certificate, a launcher checking an
/// envelope against its own key — so the accepted schemes cannot drift apart.
pub(crate) fn verify_signature(
    algorithm: KeyAlgorithm,
    public_key: &[u8],
    message: &[u8],
    signature_bytes: &[u8],
) -> Result<(), Error> {
    let scheme: &'static dyn signature::VerificationAlgorithm = match algorithm {
        KeyAlgorithm::Rsa { .. } => &signature::RSA_PSS_2048_8192_SHA256,
        KeyAlgorithm::P256 => &signature::ECDSA_P256_SHA256_ASN1,
    };
    UnparsedPublicKey::new(scheme, public_key)
        .verify(message, signature_bytes)
        .map_err(|_| Error::BadSignature)
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// PEM text of one DER block, wrapped at 64 columns as RFC 7468 asks.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_after_the_certificate_are_refused() {
        let authority = crate::CertificateAuthority::generate("test CA").unwrap();
        let mut der = authority.certificate().der().to_vec();
        assert!(Certificate::from_der(&der).is_ok());
        der.extend_from_slice(b"trailer");
        let error = Certificate::from_der(&der).unwrap_err();
        assert_eq!(error.to_string(), "not a certificate: 7 bytes follow its DER encoding");
    }

    #[test]
    fn a_certificate_checks_against_its_issuer_only() {
        let authority = crate::CertificateAuthority::generate("test CA").unwrap();
        let other = crate::CertificateAuthority::generate("other CA").unwrap();
        let csr = crate::generate_pool_key("pool").unwrap().csr_pem;
        let issued = authority.issue_pool_certificate(&csr, "p1").unwrap().certificate;
        issued.verify_issued_by(authority.certificate()).unwrap();
        assert!(issued.names_as_issuer(authority.certificate()));
        assert!(!issued.names_as_issuer(&issued));
        assert!(matches!(
            issued.verify_issued_by(other.certificate()),
            Err(Error::UntrustedCertificate)
        ));
    }
}
