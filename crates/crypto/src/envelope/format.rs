//! The v1 header, byte by byte (integers big-endian):
//!
//! ```text
//! magic "GNTRYENV" (8) | version 1 (1) | wrap algorithm (1) | chunk size (4)
//! | recipient fingerprint (32) | context length (2) | context
//! | wrapped-key length (2) | wrapped key | nonce prefix (7)
//! | signature length (2) | signature
//! ```
//!
//! Everything before the signature section is the *signed part*; its SHA-256, the header
//! hash, is what the pool key signs and every chunk's associated data. The signature
//! cannot cover itself, and keeping it out of the chunks' associated data lets a
//! verifier check it from the hash alone.
//!
//! Parsing reads exactly the header and nothing more (the body follows in the same
//! stream), checks each field as soon as it is read so that a file from a newer format is
//! named as such rather than misparsed, and hashes the bytes exactly as they were read.

use std::fmt;
use std::io::{self, Read};

use aws_lc_rs::digest;

use super::EnvelopeError;
use super::wrap::internal;

pub(crate) const MAGIC: &[u8; 8] = b"GNTRYENV";
pub(crate) const VERSION: u8 = 1;
pub(crate) const NONCE_PREFIX_LEN: usize = 7;
pub(crate) const FINGERPRINT_LEN: usize = 32;

/// Plaintext bytes per chunk unless a writer asks otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// The smallest chunk size a reader accepts.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// The largest chunk size a reader accepts: it bounds a reader's memory (two buffers of
/// about this size) whatever the header says.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// How the data key is wrapped for the pool key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WrapAlgorithm {
    /// `1`: RSA-OAEP, SHA-256 and MGF1-SHA-256, label = the context string.
    RsaOaepSha256,
    /// `2`: HPKE base mode, DHKEM(P-256, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM,
    /// info = the context string, empty aad.
    HpkeP256,
}

impl WrapAlgorithm {
    /// The header byte.
    pub fn id(self) -> u8 {
        match self {
            Self::RsaOaepSha256 => 1,
            Self::HpkeP256 => 2,
        }
    }

    pub fn from_id(id: u8) -> Result<Self, EnvelopeError> {
        match id {
            1 => Ok(Self::RsaOaepSha256),
            2 => Ok(Self::HpkeP256),
            other => Err(EnvelopeError::UnsupportedAlgorithm(other)),
        }
    }
}

impl fmt::Display for WrapAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RsaOaepSha256 => "RSA-OAEP-SHA256",
            Self::HpkeP256 => "HPKE DHKEM(P-256)/HKDF-SHA256/AES-128-GCM",
        })
    }
}

/// The public fields of an envelope header, for diagnostics ([`read_header`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub version: u8,
    pub algorithm: WrapAlgorithm,
    pub chunk_size: u32,
    pub recipient_fingerprint: [u8; 32],
    /// The context string; bytes that are not UTF-8 show as U+FFFD.
    pub context: String,
}

/// Whether `chunk_size` is one a reader accepts.
pub(crate) fn check_chunk_size(chunk_size: u32) -> Result<(), EnvelopeError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        Ok(())
    } else {
        Err(EnvelopeError::BadChunkSize(chunk_size))
    }
}

/// The fields a writer puts in the signed part of a header.
pub(crate) struct HeaderFields<'a> {
    pub(crate) algorithm: WrapAlgorithm,
    pub(crate) chunk_size: u32,
    pub(crate) recipient_fingerprint: &'a [u8; FINGERPRINT_LEN],
    pub(crate) context: &'a [u8],
    pub(crate) wrapped_key: &'a [u8],
    pub(crate) nonce_prefix: &'a [u8; NONCE_PREFIX_LEN],
}

impl HeaderFields<'_> {
    /// The signed part's bytes: the header up to and including the nonce prefix.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let context_len = length_field(self.context.len(), "the context")?;
        let wrapped_key_len = length_field(self.wrapped_key.len(), "the wrapped key")?;
        let mut bytes = Vec::with_capacity(
            MAGIC.len()
                + 1
                + 1
                + 4
                + FINGERPRINT_LEN
                + 2
                + self.context.len()
                + 2
                + self.wrapped_key.len()
                + NONCE_PREFIX_LEN,
        );
        bytes.extend_from_slice(MAGIC);
        bytes.push(VERSION);
        bytes.push(self.algorithm.id());
        bytes.extend_from_slice(&self.chunk_size.to_be_bytes());
        bytes.extend_from_slice(self.recipient_fingerprint);
        bytes.extend_from_slice(&context_len.to_be_bytes());
        bytes.extend_from_slice(self.context);
        bytes.extend_from_slice(&wrapped_key_len.to_be_bytes());
        bytes.extend_from_slice(self.wrapped_key);
        bytes.extend_from_slice(self.nonce_prefix);
        Ok(bytes)
    }
}

/// The signature section that ends the header: its length, then the signature.
pub(crate) fn signature_section(signature: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let len = length_field(signature.len(), "the signature")?;
    Ok([&len.to_be_bytes()[..], signature].concat())
}

/// A field's length as its 2-byte length field. The context's length is checked when it
/// is rendered ([`EnvelopeError::InvalidContext`]); wrapped keys and signatures of the
/// keys Gantry accepts take at most 1024 bytes (RSA-8192), so an overflow is a bug.
fn length_field(len: usize, what: &str) -> Result<u16, EnvelopeError> {
    u16::try_from(len).map_err(|_| {
        internal(&format!("{what} is {len} bytes: the header's length field holds at most 65535"))
    })
}

/// SHA-256 of the header's signed part: what the pool key signs, and the associated data
/// of every chunk.
pub(crate) fn header_hash(header_bytes: &[u8]) -> [u8; 32] {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest::digest(&digest::SHA256, header_bytes).as_ref());
    hash
}

/// A header as read, with what opening needs beyond [`EnvelopeHeader`].
pub(crate) struct ParsedHeader {
    pub(crate) header: EnvelopeHeader,
    pub(crate) context_bytes: Vec<u8>,
    pub(crate) wrapped_key: Vec<u8>,
    pub(crate) nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// SHA-256 of the signed part (every header byte before the signature section), as
    /// read.
    pub(crate) hash: [u8; 32],
    /// The signature section's content, unchecked; possibly empty.
    pub(crate) signature: Vec<u8>,
}

/// Reads and checks a header, consuming exactly its bytes from `input`.
pub(crate) fn parse_header(input: &mut impl Read) -> Result<ParsedHeader, EnvelopeError> {
    let mut magic = [0u8; 8];
    let magic_len = read_up_to(input, &mut magic)?;
    if magic_len < magic.len() || &magic != MAGIC {
        return Err(EnvelopeError::NotAnEnvelope);
    }
    let mut reader = RecordingReader { inner: input, bytes: magic.to_vec() };

    let version = reader.u8()?;
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let algorithm = WrapAlgorithm::from_id(reader.u8()?)?;
    let chunk_size = u32::from_be_bytes(reader.array()?);
    check_chunk_size(chunk_size)?;
    let recipient_fingerprint: [u8; FINGERPRINT_LEN] = reader.array()?;
    let context_len = u16::from_be_bytes(reader.array()?);
    let context_bytes = reader.vec(context_len.into())?;
    let wrapped_key_len = u16::from_be_bytes(reader.array()?);
    let wrapped_key = reader.vec(wrapped_key_len.into())?;
    let nonce_prefix: [u8; NONCE_PREFIX_LEN] = reader.array()?;
    let hash = header_hash(&reader.bytes);
    // Read even by `read_header`, so that a header is only ever parsed whole: a blob
    // without its signature section is `Truncated` (or `Forged`) wherever it is read.
    let signature_len = u16::from_be_bytes(reader.array()?);
    let signature = reader.vec(signature_len.into())?;

    Ok(ParsedHeader {
        header: EnvelopeHeader {
            version,
            algorithm,
            chunk_size,
            recipient_fingerprint,
            context: String::from_utf8_lossy(&context_bytes).into_owned(),
        },
        hash,
        context_bytes,
        wrapped_key,
        nonce_prefix,
        signature,
    })
}

/// Reads an envelope's header without any key, for diagnostics: which algorithm, which
/// pool key (by fingerprint) and which context it was sealed for. The signature is not
/// checked: nothing read here is authentic until [`crate::open`] says so.
pub fn read_header(mut input: impl Read) -> Result<EnvelopeHeader, EnvelopeError> {
    parse_header(&mut input).map(|parsed| parsed.header)
}

/// Reads until `buffer` is full or the input ends; returns how many bytes were read.
pub(crate) fn read_up_to(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Reads header fields, keeping every byte for the header hash. An input that ends
/// inside the header is [`EnvelopeError::Truncated`].
struct RecordingReader<'a, R> {
    inner: &'a mut R,
    bytes: Vec<u8>,
}

impl<R: Read> RecordingReader<'_, R> {
    fn fill(&mut self, len: usize) -> Result<&[u8], EnvelopeError> {
        let start = self.bytes.len();
        self.bytes.resize(start + len, 0);
        let read = read_up_to(self.inner, &mut self.bytes[start..])?;
        if read < len {
            return Err(EnvelopeError::Truncated);
        }
        Ok(&self.bytes[start..])
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.fill(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.fill(N)?);
        Ok(array)
    }

    fn vec(&mut self, len: usize) -> Result<Vec<u8>, EnvelopeError> {
        Ok(self.fill(len)?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signed part's length in [`sample`].
    const SIGNED_LEN: usize = 8 + 1 + 1 + 4 + 32 + 2 + 3 + 2 + 5 + 7;

    fn sample() -> Vec<u8> {
        let signed = HeaderFields {
            algorithm: WrapAlgorithm::HpkeP256,
            chunk_size: DEFAULT_CHUNK_SIZE,
            recipient_fingerprint: &[7; 32],
            context: b"ctx",
            wrapped_key: &[9; 5],
            nonce_prefix: &[1, 2, 3, 4, 5, 6, 7],
        }
        .encode()
        .unwrap();
        [signed, signature_section(&[0x5a; 4]).unwrap()].concat()
    }

    #[test]
    fn headers_encode_field_by_field_and_parse_back() {
        let bytes = sample();
        let mut expected = b"GNTRYENV\x01\x02\x00\x01\x00\x00".to_vec();
        expected.extend_from_slice(&[7; 32]);
        expected.extend_from_slice(b"\x00\x03ctx\x00\x05");
        expected.extend_from_slice(&[9; 5]);
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(expected.len(), SIGNED_LEN);
        expected.extend_from_slice(b"\x00\x04\x5a\x5a\x5a\x5a");
        assert_eq!(bytes, expected);

        let mut input = [bytes.as_slice(), b"body"].concat();
        let mut cursor = input.as_slice();
        let parsed = parse_header(&mut cursor).unwrap();
        assert_eq!(cursor, b"body", "exactly the header is consumed");
        assert_eq!(parsed.header.algorithm, WrapAlgorithm::HpkeP256);
        assert_eq!(parsed.header.chunk_size, 65536);
        assert_eq!(parsed.header.context, "ctx");
        assert_eq!(parsed.wrapped_key, [9; 5]);
        assert_eq!(parsed.nonce_prefix, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(parsed.signature, [0x5a; 4]);
        assert_eq!(parsed.hash, header_hash(&bytes[..SIGNED_LEN]), "the signature is not hashed");
        input[0] = b'X';
        assert!(matches!(read_header(input.as_slice()), Err(EnvelopeError::NotAnEnvelope)));
    }

    #[test]
    fn each_bad_field_is_named() {
        let check = |index: usize, value: u8, expected: fn(&EnvelopeError) -> bool| {
            let mut bytes = sample();
            bytes[index] = value;
            let error = read_header(bytes.as_slice()).unwrap_err();
            assert!(expected(&error), "byte {index} = {value}: {error:?}");
        };
        check(8, 2, |e| matches!(e, EnvelopeError::UnsupportedVersion(2)));
        check(9, 3, |e| matches!(e, EnvelopeError::UnsupportedAlgorithm(3)));
        check(10, 0x10, |e| matches!(e, EnvelopeError::BadChunkSize(0x1001_0000)));
        check(11, 0, |e| matches!(e, EnvelopeError::BadChunkSize(0)));
        assert!(matches!(read_header(&b"GNTRY"[..]), Err(EnvelopeError::NotAnEnvelope)));
        assert!(matches!(read_header(&b""[..]), Err(EnvelopeError::NotAnEnvelope)));
        let bytes = sample();
        for cut in 8..bytes.len() {
            assert!(
                matches!(read_header(&bytes[..cut]), Err(EnvelopeError::Truncated)),
                "cut at {cut}"
            );
        }
    }
}
