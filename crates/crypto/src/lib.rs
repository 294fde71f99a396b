//! Gantry's cryptography: pool private keys, certificate signing requests, the server's
//! certificate authority, pool tokens, session proofs and secret hashing. Standard
//! constructions from aws-lc-rs, rcgen and x509-parser only; no primitive is written here.

mod ca;
mod certificate;
mod error;
mod keys;
mod secrets;
mod session;
mod token;

pub use ca::{CertificateAuthority, IssuedCertificate, ServerTlsIdentity};
pub use certificate::{Certificate, KeyAlgorithm};
pub use error::Error;
pub use keys::{GeneratedPoolKey, PoolPrivateKey, generate_pool_key};
pub use secrets::{ChallengeSigner, hash_secret, random_secret};
pub use session::{session_message, verify_session_signature};
pub use token::PoolToken;
