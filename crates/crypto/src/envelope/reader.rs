//! Opening: the header is read and checked (context, then recipient, then key type)
//! before any key operation, so the common mistakes get precise errors; then its
//! signature is verified with the pool key's own public half (a blob the pool did not
//! seal is refused before its wrapped key is touched), the data key unwraps, and the
//! chunks stream out, each only once its tag has verified.

use std::fmt;
use std::io::{self, Read, Write};

use super::format::{EnvelopeHeader, parse_header};
use super::signature::verify_header;
use super::stream::ChunkReader;
use super::{EnvelopeContext, EnvelopeError};
use crate::PoolPrivateKey;

/// Decrypts an envelope as it is read. `read` yields only plaintext of chunks whose tag
/// verified and reports the end only after the chunk sealed as final; a failure comes as
/// a `std::io::Error` whose inner error is the [`EnvelopeError`] (`EnvelopeError::from`
/// recovers it).
pub struct OpeningReader<R: Read> {
    chunks: ChunkReader<R>,
    header: EnvelopeHeader,
}

impl<R: Read> fmt::Debug for OpeningReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningReader").field("header", &self.header).finish_non_exhaustive()
    }
}

impl<R: Read> OpeningReader<R> {
    /// Reads and checks the header, verifies its signature and unwraps the data key.
    pub fn new(
        key: &PoolPrivateKey,
        context: &EnvelopeContext,
        mut inner: R,
    ) -> Result<Self, EnvelopeError> {
        let expected_context = context.to_bytes()?;
        let parsed = parse_header(&mut inner)?;
        // These checks only give precise errors: the context is also the OAEP label or
        // HPKE info and, through the header hash, every chunk's associated data.
        if parsed.context_bytes != expected_context {
            return Err(context.mismatch(&parsed.context_bytes));
        }
        if parsed.header.recipient_fingerprint != key.recipient_fingerprint() {
            return Err(EnvelopeError::WrongKey);
        }
        let unwrap_key = key.unwrap_key();
        if unwrap_key.algorithm() != parsed.header.algorithm {
            return Err(EnvelopeError::KeyTypeMismatch);
        }
        // The origin check, and the one that makes every check above authentic: the
        // signature covers the whole signed part, so past this point the context, the
        // wrapped key and the nonce prefix are the pool's own. Before unwrapping, so that
        // no private-key decryption ever runs on a header the server made up.
        verify_header(key, &parsed.hash, &parsed.signature)?;
        let data_key = unwrap_key.unwrap(&parsed.wrapped_key, &parsed.context_bytes)?;
        let chunk_len = usize::try_from(parsed.header.chunk_size)
            .map_err(|_| EnvelopeError::BadChunkSize(parsed.header.chunk_size))?;
        let chunks =
            ChunkReader::new(inner, &data_key, parsed.nonce_prefix, parsed.hash, chunk_len)?;
        Ok(Self { chunks, header: parsed.header })
    }

    /// The envelope's header.
    pub fn header(&self) -> &EnvelopeHeader {
        &self.header
    }
}

impl<R: Read> Read for OpeningReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.chunks.read_plaintext(buffer).map_err(EnvelopeError::into_io)
    }
}

/// Opens the envelope in `input` into `output`; returns the plaintext length. Each chunk
/// is written as soon as it verifies, so on an error `output` holds a verified prefix of
/// the plaintext, never the whole: discard it.
pub fn open(
    key: &PoolPrivateKey,
    context: &EnvelopeContext,
    input: impl Read,
    mut output: impl Write,
) -> Result<u64, EnvelopeError> {
    let mut reader = OpeningReader::new(key, context, input)?;
    let mut plaintext_len = 0u64;
    // Writes each chunk from the reader's own buffer: no copy through `Read`.
    while let Some(chunk) = reader.chunks.next_chunk()? {
        output.write_all(chunk)?;
        plaintext_len += chunk.len() as u64;
    }
    output.flush()?;
    Ok(plaintext_len)
}
