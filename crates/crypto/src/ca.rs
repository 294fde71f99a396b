//! The server's certificate authority: created at first start, it issues pool client
//! certificates from owners' CSRs and the server's own TLS certificate.
//!
//! The CSR is only trusted for its public key and its proof of possession: every other
//! field of the issued certificate is set here (rcgen would otherwise copy requested
//! extensions such as `CA:TRUE`, and take the key algorithm from the CSR's signature
//! algorithm rather than its key).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509CertificationRequest};

use crate::certificate::key_algorithm;
use crate::{Certificate, Error, KeyAlgorithm};

const CA_VALIDITY: Duration = Duration::days(20 * 365);
const POOL_CERTIFICATE_VALIDITY: Duration = Duration::days(10 * 365);
const SERVER_CERTIFICATE_VALIDITY: Duration = Duration::days(397);
/// Certificates start a little in the past so that a launcher whose clock is slightly
/// behind still accepts them.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// A certificate issued to a pool.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub certificate: Certificate,
    pub key_algorithm: KeyAlgorithm,
}

/// The server's TLS certificate chain and key, PEM.
pub struct ServerTlsIdentity {
    pub certificate_chain_pem: String,
    pub private_key_pem: String,
}

impl std::fmt::Debug for ServerTlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsIdentity").finish_non_exhaustive()
    }
}

/// The server's certificate authority.
pub struct CertificateAuthority {
    key: KeyPair,
    certificate: Certificate,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.certificate.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new P-256 authority, valid for twenty years.
    pub fn generate(common_name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let certificate = params.self_signed(&key)?;
        Ok(Self { certificate: Certificate::from_der(certificate.der())?, key })
    }

    /// The authority as stored: its certificate and PKCS#8 key, both PEM.
    pub fn from_pem(certificate_pem: &str, private_key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(private_key_pem)?;
        Ok(Self { certificate: Certificate::from_pem(certificate_pem)?, key })
    }

    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The authority's private key, PKCS#8 PEM, for the server's store only.
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>, Error> {
        let der = rustls_pki_types::CertificateDer::from(self.certificate.der().to_vec());
        Ok(Issuer::from_ca_cert_der(&der, &self.key)?)
    }

    /// Checks the CSR's self-signature and key type, then issues a client certificate for
    /// the pool, bound to the CSR's public key and nothing else from the CSR.
    pub fn issue_pool_certificate(
        &self,
        csr_pem: &str,
        pool_id: &str,
    ) -> Result<IssuedCertificate, Error> {
        let (spki_der, key_algorithm) = verified_csr_public_key(csr_pem)?;
        let public_key = SubjectPublicKeyInfo::from_der(&spki_der)
            .map_err(|e| Error::UnsupportedCsrKey(e.to_string()))?;

        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("gantry-pool-{pool_id}"));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + POOL_CERTIFICATE_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issued = params.signed_by(&public_key, &self.issuer()?)?;
        let certificate = Certificate::from_der(issued.der())?;
        if certificate.spki_der() != spki_der.as_slice() {
            return Err(Error::Generation(
                "the issued certificate does not carry the CSR's public key".to_owned(),
            ));
        }
        Ok(IssuedCertificate { certificate, key_algorithm })
    }

    /// A TLS server certificate for these DNS names and IP addresses, with a new key.
    pub fn issue_server_certificate(
        &self,
        hostnames: &[String],
    ) -> Result<ServerTlsIdentity, Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::new(hostnames.to_vec())?;
        params.distinguished_name = name("gantry server");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + SERVER_CERTIFICATE_VALIDITY;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let issued = params.signed_by(&key, &self.issuer()?)?;
        Ok(ServerTlsIdentity {
            certificate_chain_pem: format!("{}{}", issued.pem(), self.certificate.pem()),
            private_key_pem: key.serialize_pem(),
        })
    }

    /// Fails unless this authority signed the certificate.
    pub fn verify_issued(&self, certificate: &Certificate) -> Result<(), Error> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(certificate.der())
            .map_err(|e| Error::MalformedCertificate(e.to_string()))?;
        let (_, ca) = x509_parser::certificate::X509Certificate::from_der(self.certificate.der())
            .map_err(|e| Error::MalformedCertificate(e.to_string()))?;
        parsed.verify_signature(Some(ca.public_key())).map_err(|_| Error::UntrustedCertificate)
    }
}

/// The DER SubjectPublicKeyInfo of a CSR with a supported key whose self-signature
/// verifies. The key is checked first: a signature by an unsupported key (RSA-1024, say)
/// would otherwise be reported as forged.
fn verified_csr_public_key(csr_pem: &str) -> Result<(Vec<u8>, KeyAlgorithm), Error> {
    let trimmed = csr_pem.trim();
    if !trimmed.contains("-----BEGIN") {
        return Err(Error::MalformedCsr(
            "expected PEM text starting with -----BEGIN CERTIFICATE REQUEST-----".to_owned(),
        ));
    }
    let normalized = trimmed.replace("NEW CERTIFICATE REQUEST", "CERTIFICATE REQUEST");
    let der = CertificateSigningRequestDer::from_pem_slice(normalized.as_bytes())
        .map_err(|_| Error::MalformedCsr("no CERTIFICATE REQUEST PEM block".to_owned()))?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| Error::MalformedCsr(format!("the DER does not parse ({e})")))?;
    let spki = &csr.certification_request_info.subject_pki;
    let key_algorithm = key_algorithm(spki).map_err(Error::UnsupportedCsrKey)?;
    csr.verify_signature().map_err(|_| Error::CsrSignature)?;
    Ok((spki.raw.to_vec(), key_algorithm))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    // A positive INTEGER: clear the sign bit.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
