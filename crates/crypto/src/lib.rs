//! Gantry's cryptography: pool private keys, certificate signing requests, the server's
//! certificate authority, pool tokens, session proofs, secret hashing, the master key that
//! seals server secrets, and the envelope format that encrypts run state to the pool key
//! and signs it with that key. Standard
//! constructions from aws-lc-rs, hpke, rcgen and x509-parser only; no primitive is
//! written here.

mod ca;
mod certificate;
mod envelope;
mod error;
mod keys;
mod master_key;
mod release;
mod sealed_secret;
mod secrets;
mod session;
mod token;

pub use ca::{CertificateAuthority, IssuedCertificate, ServerTlsIdentity};
pub use certificate::{Certificate, KeyAlgorithm, sha256_hex};
pub use envelope::{
    DEFAULT_CHUNK_SIZE, EnvelopeContext, EnvelopeError, EnvelopeHeader, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE, OpeningReader, Purpose, SealingWriter, UnknownPurpose, WrapAlgorithm, open,
    read_header, seal,
};
#[doc(hidden)]
pub use envelope::{open_chunks_with_key, seal_chunks_with_key};
pub use error::Error;
pub use keys::{GeneratedPoolKey, PoolPrivateKey, generate_pool_key};
pub use master_key::{MasterKey, SEALED_PREFIX, SealError, is_sealed, sealed_key_id};
pub use release::{
    ReleaseError, ReleasePublicKey, binary_digest, generate_release_key, sign_binary_digest,
};
pub use sealed_secret::{
    SealedSecretHeader, SecretContext, SecretError, open_secret, read_secret_header, seal_secret,
};
pub use secrets::{ChallengeSigner, hash_secret, random_secret};
pub use session::{session_message, verify_session_signature};
pub use token::PoolToken;
