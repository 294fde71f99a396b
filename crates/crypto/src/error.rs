//! The errors of the crypto layer. Messages read after "failed to …" and never contain
//! key material.

/// Everything that can go wrong with keys, certificates, tokens and proofs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PEM block found: expected text starting with -----BEGIN")]
    NotPem,
    #[error(
        "the private key is protected by a passphrase: decrypt it first (openssl pkey -in pool.key -out pool-plain.key)"
    )]
    EncryptedKey,
    #[error(
        "no private key found in the PEM text (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoPrivateKey,
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("the value is neither PEM nor base64 of a PEM file")]
    NotBase64Pem,
    #[error("not a certificate signing request: {0}")]
    MalformedCsr(String),
    #[error(
        "the certificate signing request's signature does not verify: it was altered or not signed by its own key"
    )]
    CsrSignature,
    #[error("unsupported key in the certificate signing request: {0}")]
    UnsupportedCsrKey(String),
    #[error("not a certificate: {0}")]
    MalformedCertificate(String),
    #[error("the certificate was not issued by this server's certificate authority")]
    UntrustedCertificate,
    #[error("not a Gantry pool token: {0}")]
    MalformedToken(String),
    #[error("the signature does not verify against the pool certificate")]
    BadSignature,
    #[error("the session challenge is invalid or has expired")]
    BadChallenge,
    #[error("the private key does not match the pool certificate")]
    KeyMismatch,
    #[error("certificate generation failed: {0}")]
    Generation(String),
}

impl From<rcgen::Error> for Error {
    fn from(error: rcgen::Error) -> Self {
        Self::Generation(error.to_string())
    }
}
