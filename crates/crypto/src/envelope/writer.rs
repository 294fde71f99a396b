//! Sealing: a fresh random data key and nonce prefix per blob, the data key wrapped for
//! the pool key's own public half, the header signed with the pool key and written
//! first, then the chunks as plaintext streams in. Sealing needs the private key: that
//! is what makes a blob's origin checkable (`signature.rs`).

use std::fmt;
use std::io::{self, Read, Write};

use zeroize::Zeroizing;

use super::format::{
    HeaderFields, NONCE_PREFIX_LEN, check_chunk_size, header_hash, signature_section,
};
use super::signature::sign_header;
use super::stream::ChunkWriter;
use super::wrap::{DATA_KEY_LEN, internal};
use super::{DEFAULT_CHUNK_SIZE, EnvelopeContext, EnvelopeError};
use crate::PoolPrivateKey;

/// Encrypts everything written to it into `inner` as one envelope. Buffers at most one
/// chunk. [`SealingWriter::finish`] writes the final chunk: dropping the writer without
/// it leaves a truncated blob that will not open. `flush` flushes `inner` but cannot emit
/// the pending chunk, since only `finish` knows it is the last.
pub struct SealingWriter<W: Write> {
    chunks: ChunkWriter<W>,
    chunk_size: u32,
}

impl<W: Write> fmt::Debug for SealingWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingWriter")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl<W: Write> SealingWriter<W> {
    /// Wraps a new data key for `sealer`'s own public key, bound to `context`, signs the
    /// header with `sealer` and writes it.
    pub fn new(
        sealer: &PoolPrivateKey,
        context: &EnvelopeContext,
        inner: W,
    ) -> Result<Self, EnvelopeError> {
        Self::with_chunk_size(sealer, context, DEFAULT_CHUNK_SIZE, inner)
    }

    /// [`SealingWriter::new`] with another chunk size (1024 to 16 MiB): smaller chunks
    /// cost more tags, larger ones more memory on both sides.
    pub fn with_chunk_size(
        sealer: &PoolPrivateKey,
        context: &EnvelopeContext,
        chunk_size: u32,
        mut inner: W,
    ) -> Result<Self, EnvelopeError> {
        check_chunk_size(chunk_size)?;
        let context_bytes = context.to_bytes()?;
        let mut data_key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        aws_lc_rs::rand::fill(data_key.as_mut_slice())
            .and_then(|()| aws_lc_rs::rand::fill(&mut nonce_prefix))
            .map_err(|_| internal("the system random source failed"))?;
        let wrap_key = sealer.wrap_key();
        let wrapped_key = wrap_key.wrap(&data_key, &context_bytes)?;
        let mut header = HeaderFields {
            algorithm: wrap_key.algorithm(),
            chunk_size,
            recipient_fingerprint: &sealer.recipient_fingerprint(),
            context: &context_bytes,
            wrapped_key: &wrapped_key,
            nonce_prefix: &nonce_prefix,
        }
        .encode()?;
        // The chunks authenticate the signed part only: the signature cannot cover itself.
        let hash = header_hash(&header);
        header.extend_from_slice(&signature_section(&sign_header(sealer, &hash)?)?);
        inner.write_all(&header)?;
        // usize is at least 32 bits on every target Gantry builds for.
        let chunk_len =
            usize::try_from(chunk_size).map_err(|_| EnvelopeError::BadChunkSize(chunk_size))?;
        let chunks = ChunkWriter::new(inner, &data_key, nonce_prefix, hash, chunk_len)?;
        Ok(Self { chunks, chunk_size })
    }

    /// Writes the final chunk, flushes and returns the inner writer.
    pub fn finish(self) -> Result<W, EnvelopeError> {
        self.chunks.finish()
    }
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.chunks.write_plaintext(buffer).map_err(EnvelopeError::into_io)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.chunks.flush_inner()
    }
}

/// Seals all of `input` with `sealer` (for its own public key, signed by it) into
/// `output`; returns the plaintext length. Reads straight into the chunk buffer, so
/// memory stays at one chunk whatever the size.
pub fn seal(
    sealer: &PoolPrivateKey,
    context: &EnvelopeContext,
    mut input: impl Read,
    output: impl Write,
) -> Result<u64, EnvelopeError> {
    let mut writer = SealingWriter::new(sealer, context, output)?;
    let plaintext_len = writer.chunks.write_from(&mut input)?;
    writer.finish()?;
    Ok(plaintext_len)
}
