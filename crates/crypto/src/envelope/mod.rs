//! The versioned envelope format that keeps run state (workspaces, Terraform state, plan
//! files) away from the server: a random data key per blob wraps with the pool's public
//! key, the header is signed with the pool's private key (so only a launcher of the pool
//! can seal), and the blob streams through AES-256-GCM in fixed-size chunks (the STREAM
//! construction). The format is specified byte by byte in `docs/encryption.md`.

mod context;
mod error;
mod format;
mod reader;
mod signature;
mod stream;
mod wrap;
mod writer;

pub use context::{EnvelopeContext, Purpose, UnknownPurpose};
pub use error::EnvelopeError;
pub use format::{
    DEFAULT_CHUNK_SIZE, EnvelopeHeader, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, WrapAlgorithm, read_header,
};
pub use reader::{OpeningReader, open};
#[doc(hidden)]
pub use stream::{open_chunks_with_key, seal_chunks_with_key};
pub use writer::{SealingWriter, seal};

pub(crate) use wrap::{DATA_KEY_LEN, UnwrapKey, WrapKey, spki_fingerprint};
