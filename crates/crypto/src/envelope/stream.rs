//! The body: the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over
//! AES-256-GCM. Chunk `i` is sealed under the data key with nonce
//! `prefix (7) ‖ i (4, big-endian) ‖ last (1)` and the header hash as associated data.
//! Every chunk but the last holds exactly `chunk size` plaintext bytes; the last holds
//! 0..=chunk size, and is empty only when the whole blob is. Because the index and the
//! last flag are in the nonce, reordering, dropping, truncating or extending the chunk
//! sequence makes some chunk fail authentication.
//!
//! The end of the stream marks the final chunk, so a reader looks one byte past each
//! full-size chunk to learn whether another follows.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use super::EnvelopeError;
use super::format::{NONCE_PREFIX_LEN, read_up_to};
use super::wrap::{DATA_KEY_LEN, internal};

/// AES-GCM's tag, after each chunk's ciphertext.
pub(crate) const TAG_LEN: usize = 16;

/// The AEAD of one blob: its data key, nonce prefix and header hash.
struct ChunkCipher {
    key: LessSafeKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    header_hash: [u8; 32],
}

impl ChunkCipher {
    fn new(
        data_key: &[u8; DATA_KEY_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        header_hash: [u8; 32],
    ) -> Result<Self, EnvelopeError> {
        let key = UnboundKey::new(&AES_256_GCM, data_key)
            .map_err(|_| internal("AES-256-GCM rejected a 32-byte key"))?;
        Ok(Self { key: LessSafeKey::new(key), nonce_prefix, header_hash })
    }

    fn nonce(&self, index: u32, last: bool) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
        nonce[11] = u8::from(last);
        Nonce::assume_unique_for_key(nonce)
    }

    /// Encrypts `in_out` in place and returns the tag.
    fn seal(
        &self,
        index: u32,
        last: bool,
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                self.nonce(index, last),
                Aad::from(&self.header_hash),
                in_out,
            )
            .map_err(|_| internal("AES-256-GCM sealing failed"))?;
        let mut bytes = [0u8; TAG_LEN];
        bytes.copy_from_slice(tag.as_ref());
        Ok(bytes)
    }

    /// Decrypts `record` (ciphertext ‖ tag) into `plaintext`, leaving `record` intact so
    /// that a failed attempt can be retried with the other last flag. Whether the
    /// plaintext is usable is the return value; on `false` it must not be used.
    fn open(&self, index: u32, last: bool, record: &[u8], plaintext: &mut [u8]) -> bool {
        let Some(ciphertext_len) = record.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (ciphertext, tag) = record.split_at(ciphertext_len);
        self.key
            .open_separate_gather(
                self.nonce(index, last),
                Aad::from(&self.header_hash),
                ciphertext,
                tag,
                &mut plaintext[..ciphertext_len],
            )
            .is_ok()
    }
}

/// Splits a plaintext stream into sealed chunks written to `inner`, holding at most one
/// chunk (plus its tag) in memory.
pub(crate) struct ChunkWriter<W> {
    inner: W,
    cipher: ChunkCipher,
    chunk_size: usize,
    /// `chunk_size + TAG_LEN` bytes: the pending plaintext, sealed in place.
    buffer: Box<[u8]>,
    filled: usize,
    next_index: u64,
    /// A chunk was half written or sealing failed: the output is unusable.
    poisoned: bool,
}

impl<W: Write> ChunkWriter<W> {
    pub(crate) fn new(
        inner: W,
        data_key: &[u8; DATA_KEY_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        header_hash: [u8; 32],
        chunk_size: usize,
    ) -> Result<Self, EnvelopeError> {
        Ok(Self {
            inner,
            cipher: ChunkCipher::new(data_key, nonce_prefix, header_hash)?,
            chunk_size,
            buffer: vec![0u8; chunk_size + TAG_LEN].into_boxed_slice(),
            filled: 0,
            next_index: 0,
            poisoned: false,
        })
    }

    fn check_usable(&self) -> Result<(), EnvelopeError> {
        if self.poisoned {
            return Err(EnvelopeError::Io(io::Error::other(
                "an earlier write to the envelope failed: the blob is incomplete",
            )));
        }
        Ok(())
    }

    /// Seals and writes the pending chunk.
    fn emit(&mut self, last: bool) -> Result<(), EnvelopeError> {
        let index = u32::try_from(self.next_index).map_err(|_| {
            self.poisoned = true;
            EnvelopeError::Io(io::Error::other(
                "the blob is too large for one envelope: at most 2^32 chunks",
            ))
        })?;
        // Poisoned until the chunk is fully written: the buffer now turns into ciphertext.
        self.poisoned = true;
        let filled = self.filled;
        let tag = self.cipher.seal(index, last, &mut self.buffer[..filled])?;
        self.buffer[filled..filled + TAG_LEN].copy_from_slice(&tag);
        self.inner.write_all(&self.buffer[..filled + TAG_LEN])?;
        self.poisoned = false;
        self.filled = 0;
        self.next_index += 1;
        Ok(())
    }

    /// Buffers plaintext. A full chunk is sealed only once more plaintext arrives, since
    /// until then it may be the last.
    pub(crate) fn write_plaintext(&mut self, plaintext: &[u8]) -> Result<usize, EnvelopeError> {
        self.check_usable()?;
        if plaintext.is_empty() {
            return Ok(0);
        }
        if self.filled == self.chunk_size {
            self.emit(false)?;
        }
        let take = plaintext.len().min(self.chunk_size - self.filled);
        self.buffer[self.filled..self.filled + take].copy_from_slice(&plaintext[..take]);
        self.filled += take;
        Ok(take)
    }

    /// Reads all of `input` straight into the chunk buffer (no intermediate copy), one
    /// byte past a full chunk to learn whether it is the last. Returns the bytes read.
    pub(crate) fn write_from(&mut self, input: &mut impl Read) -> Result<u64, EnvelopeError> {
        self.check_usable()?;
        let mut total = 0u64;
        loop {
            // The buffer has room for chunk_size + TAG_LEN bytes, so one byte of
            // lookahead fits after a full chunk.
            let read = read_up_to(input, &mut self.buffer[self.filled..=self.chunk_size])
                .inspect_err(|_| {
                    // Bytes read before the error are lost with it: the blob cannot be
                    // completed correctly any more.
                    self.poisoned = true;
                })?;
            self.filled += read;
            total += read as u64;
            if self.filled <= self.chunk_size {
                // The input ended (read_up_to only stops short at the end).
                return Ok(total);
            }
            let lookahead = self.buffer[self.chunk_size];
            self.filled = self.chunk_size;
            self.emit(false)?;
            self.buffer[0] = lookahead;
            self.filled = 1;
        }
    }

    /// Seals the pending plaintext as the final chunk and flushes `inner`.
    pub(crate) fn finish(mut self) -> Result<W, EnvelopeError> {
        self.check_usable()?;
        self.emit(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    pub(crate) fn flush_inner(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A crypto failure that ends a reader for good.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Integrity(u64),
    Truncated,
    TrailingData,
}

impl From<Failure> for EnvelopeError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Integrity(chunk) => Self::Integrity { chunk },
            Failure::Truncated => Self::Truncated,
            Failure::TrailingData => Self::TrailingData,
        }
    }
}

/// Reads sealed chunks from `inner` and yields the plaintext of each chunk whose tag
/// verified, in order; the end of `inner` must come right after a chunk sealed as last.
///
/// Chunks are decrypted from `raw` into `plain` rather than in place: that touches the
/// same bytes, and keeps the ciphertext intact so that a full-size chunk failing as one
/// kind (middle or final) can be tried as the other. That second try is what tells an
/// append (`TrailingData`) or a cut at a chunk boundary (`Truncated`) from an alteration.
pub(crate) struct ChunkReader<R> {
    inner: R,
    cipher: ChunkCipher,
    chunk_size: usize,
    /// One record (`chunk_size + TAG_LEN`) and one byte of lookahead.
    raw: Box<[u8]>,
    raw_filled: usize,
    /// The plaintext of the current chunk, served from `plain_pos`.
    plain: Box<[u8]>,
    plain_len: usize,
    plain_pos: usize,
    next_index: u64,
    finished: bool,
    failure: Option<Failure>,
}

impl<R: Read> ChunkReader<R> {
    pub(crate) fn new(
        inner: R,
        data_key: &[u8; DATA_KEY_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        header_hash: [u8; 32],
        chunk_size: usize,
    ) -> Result<Self, EnvelopeError> {
        Ok(Self {
            inner,
            cipher: ChunkCipher::new(data_key, nonce_prefix, header_hash)?,
            chunk_size,
            raw: vec![0u8; chunk_size + TAG_LEN + 1].into_boxed_slice(),
            raw_filled: 0,
            plain: vec![0u8; chunk_size].into_boxed_slice(),
            plain_len: 0,
            plain_pos: 0,
            next_index: 0,
            finished: false,
            failure: None,
        })
    }

    /// The plaintext of the next authenticated chunk, `None` after the final one. I/O
    /// errors (including `WouldBlock`) leave the reader able to resume; a failed
    /// authentication ends it, and every later call repeats the error.
    pub(crate) fn next_chunk(&mut self) -> Result<Option<&[u8]>, EnvelopeError> {
        if let Some(failure) = self.failure {
            return Err(failure.into());
        }
        if self.finished {
            return Ok(None);
        }
        match self.open_next() {
            Ok(len) => {
                self.plain_len = len;
                self.plain_pos = len;
                Ok(Some(&self.plain[..len]))
            }
            Err(Ok(failure)) => {
                self.failure = Some(failure);
                Err(failure.into())
            }
            Err(Err(io_error)) => Err(EnvelopeError::Io(io_error)),
        }
    }

    /// Reads and opens the next record into `plain`, returning its plaintext length.
    fn open_next(&mut self) -> Result<usize, Result<Failure, io::Error>> {
        let record_len = self.chunk_size + TAG_LEN;
        // Resumable: `raw_filled` survives an I/O error.
        while self.raw_filled < self.raw.len() {
            match self.inner.read(&mut self.raw[self.raw_filled..]) {
                Ok(0) => break,
                Ok(n) => self.raw_filled += n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(Err(error)),
            }
        }
        let index = self.next_index;
        let Ok(nonce_index) = u32::try_from(index) else {
            // No writer seals more than 2^32 chunks.
            return Err(Ok(Failure::Integrity(index)));
        };
        let (cipher, raw, plain) = (&self.cipher, &self.raw, &mut self.plain);

        if self.raw_filled > record_len {
            // A full record and more bytes after it: this must be a middle chunk.
            let record = &raw[..record_len];
            if cipher.open(nonce_index, false, record, plain) {
                self.raw[0] = self.raw[record_len];
                self.raw_filled = 1;
                self.next_index += 1;
                return Ok(self.chunk_size);
            }
            // A valid final chunk followed by anything is an append, not an alteration.
            return Err(Ok(if cipher.open(nonce_index, true, record, plain) {
                Failure::TrailingData
            } else {
                Failure::Integrity(index)
            }));
        }

        // The input ended: this record must be the final chunk.
        let record = &raw[..self.raw_filled];
        if self.raw_filled < TAG_LEN {
            // Nothing, or less than a tag: the blob was cut (at a chunk boundary, or
            // within the last few bytes).
            return Err(Ok(Failure::Truncated));
        }
        if cipher.open(nonce_index, true, record, plain) {
            self.finished = true;
            self.next_index += 1;
            return Ok(self.raw_filled - TAG_LEN);
        }
        // A full record that opens as a middle chunk: the chunks after it are missing.
        Err(Ok(
            if self.raw_filled == record_len && cipher.open(nonce_index, false, record, plain) {
                Failure::Truncated
            } else {
                Failure::Integrity(index)
            },
        ))
    }

    /// Copies plaintext into `buffer`, opening chunks as needed (the `Read` contract).
    pub(crate) fn read_plaintext(&mut self, buffer: &mut [u8]) -> Result<usize, EnvelopeError> {
        if buffer.is_empty() {
            return Ok(0);
        }
        while self.plain_pos == self.plain_len {
            if self.next_chunk()?.is_none() {
                return Ok(0);
            }
            // next_chunk marks the chunk consumed (it hands it out whole); `Read` serves
            // it from its start.
            self.plain_pos = 0;
        }
        let len = buffer.len().min(self.plain_len - self.plain_pos);
        buffer[..len].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + len]);
        self.plain_pos += len;
        Ok(len)
    }
}

/// Seals `plaintext` as a chunk sequence with an explicit data key, nonce prefix and
/// header hash: the STREAM layer alone, deterministic, for test vectors. Never use it to
/// seal real data (a fixed key and prefix repeat nonces).
#[doc(hidden)]
pub fn seal_chunks_with_key(
    data_key: &[u8; 32],
    nonce_prefix: &[u8; 7],
    header_hash: &[u8; 32],
    chunk_size: usize,
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if chunk_size == 0 {
        return Err(EnvelopeError::BadChunkSize(0));
    }
    let mut writer =
        ChunkWriter::new(Vec::new(), data_key, *nonce_prefix, *header_hash, chunk_size)?;
    writer.write_from(&mut &plaintext[..])?;
    writer.finish()
}

/// Opens a chunk sequence made by [`seal_chunks_with_key`].
#[doc(hidden)]
pub fn open_chunks_with_key(
    data_key: &[u8; 32],
    nonce_prefix: &[u8; 7],
    header_hash: &[u8; 32],
    chunk_size: usize,
    sealed: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if chunk_size == 0 {
        return Err(EnvelopeError::BadChunkSize(0));
    }
    let mut reader = ChunkReader::new(sealed, data_key, *nonce_prefix, *header_hash, chunk_size)?;
    let mut plaintext = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        plaintext.extend_from_slice(chunk);
    }
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [0x42; 32];
    const PREFIX: [u8; 7] = [1, 2, 3, 4, 5, 6, 7];
    const HASH: [u8; 32] = [0xAA; 32];

    fn seal(chunk_size: usize, plaintext: &[u8]) -> Vec<u8> {
        seal_chunks_with_key(&KEY, &PREFIX, &HASH, chunk_size, plaintext).unwrap()
    }

    fn open(chunk_size: usize, sealed: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        open_chunks_with_key(&KEY, &PREFIX, &HASH, chunk_size, sealed)
    }

    #[test]
    fn chunk_counts_and_sizes_follow_the_format() {
        // (plaintext length, expected sealed length) for chunks of 4 bytes.
        for (len, sealed_len) in [(0, 16), (1, 17), (4, 20), (5, 4 + 16 + 1 + 16), (8, 2 * 20)] {
            let plaintext: Vec<u8> = (0..len as u8).collect();
            let sealed = seal(4, &plaintext);
            assert_eq!(sealed.len(), sealed_len, "plaintext of {len} bytes");
            assert_eq!(open(4, &sealed).unwrap(), plaintext);
        }
    }

    #[test]
    fn the_nonce_is_prefix_index_and_last_flag() {
        let cipher = ChunkCipher::new(&KEY, PREFIX, HASH).unwrap();
        assert_eq!(cipher.nonce(0x0102_0304, true).as_ref(), &[1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 1]);
        assert_eq!(cipher.nonce(0, false).as_ref(), &[1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn the_stream_layer_detects_every_rearrangement() {
        let plaintext: Vec<u8> = (0..10u8).collect();
        let sealed = seal(4, &plaintext); // chunks of 20, 20 and 18 bytes
        let chunk = |i: usize| &sealed[i * 20..(i * 20 + 20).min(sealed.len())];
        let integrity = |result: Result<Vec<u8>, EnvelopeError>, expected: u64| {
            assert!(
                matches!(result, Err(EnvelopeError::Integrity { chunk }) if chunk == expected),
                "expected chunk {expected} to fail"
            );
        };
        integrity(open(4, &[chunk(1), chunk(0), chunk(2)].concat()), 0);
        integrity(open(4, &[chunk(0), chunk(2)].concat()), 1);
        assert!(matches!(open(4, &sealed[..40]), Err(EnvelopeError::Truncated)));
        assert!(matches!(open(4, &sealed[..20]), Err(EnvelopeError::Truncated)));
        assert!(matches!(open(4, &sealed[..5]), Err(EnvelopeError::Truncated)));
        integrity(open(4, &sealed[..57]), 2);
        let sealed_elsewhere =
            seal_chunks_with_key(&KEY, &PREFIX, &[0xBB; 32], 4, &plaintext).unwrap();
        integrity(open(4, &sealed_elsewhere), 0);
        let full = seal(5, &plaintext); // two full chunks, the second one last
        assert!(matches!(open(5, &[&full[..], b"x"].concat()), Err(EnvelopeError::TrailingData)));
    }
}
