//! The errors of sealing and opening envelopes. Messages read after "failed to open the
//! blob: …", say what the operator can do about it, and never contain key material.

use std::io;

/// Everything that can go wrong with an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a Gantry envelope: the GNTRYENV magic is missing")]
    NotAnEnvelope,
    #[error("envelope format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("envelope key wrapping algorithm {0} is not supported (expected 1 or 2)")]
    UnsupportedAlgorithm(u8),
    #[error("envelope chunk size {0} is out of range (1024 to 16777216 bytes)")]
    BadChunkSize(u32),
    /// The caller's context cannot be rendered unambiguously: an empty id, an id holding
    /// a control character, or a context too long for the header's length field.
    #[error("invalid envelope context: {0}")]
    InvalidContext(String),
    /// `expected` and `found` describe the two contexts readably ("run X (state)"),
    /// naming the stack or pool only where those differ.
    #[error("sealed for {found}, not for {expected}")]
    WrongContext { expected: String, found: String },
    #[error(
        "sealed for another pool key: the pool was reset after it was sealed, or it belongs to another pool"
    )]
    WrongKey,
    #[error(
        "the envelope's key wrapping does not fit the pool key (RSA-OAEP needs an RSA key, HPKE an EC P-256 key)"
    )]
    KeyTypeMismatch,
    /// The header's signature is missing, malformed or made by another key. Anyone with
    /// the pool certificate (the server included) can wrap a data key for the pool; only
    /// the pool key can sign.
    #[error(
        "the blob is not signed by this pool's key: it was not sealed by a launcher of the pool"
    )]
    Forged,
    /// Reached only with a valid signature: the pool key signed a header whose wrapped
    /// key it cannot unwrap, which no correct launcher does.
    #[error(
        "the data key does not unwrap with the pool key, although the pool key signed the header: the blob was sealed wrongly"
    )]
    Unwrap,
    #[error("the blob was altered: chunk {chunk} fails authentication")]
    Integrity { chunk: u64 },
    #[error("the blob is truncated: it ends before its final chunk")]
    Truncated,
    #[error("the blob has bytes after its final chunk")]
    TrailingData,
    /// Reading or writing the blob failed.
    #[error("{0}")]
    Io(#[source] io::Error),
}

/// Unpacks the [`EnvelopeError`] that [`crate::OpeningReader`] and
/// [`crate::SealingWriter`] carry inside `std::io::Error` (their `Read`/`Write` impls
/// can only return that), so `?` on their results keeps the precise variant.
impl From<io::Error> for EnvelopeError {
    fn from(error: io::Error) -> Self {
        match error.downcast::<EnvelopeError>() {
            Ok(envelope_error) => envelope_error,
            Err(error) => Self::Io(error),
        }
    }
}

impl EnvelopeError {
    /// This error as the `std::io::Error` a `Read` or `Write` impl returns: I/O errors as
    /// themselves, the others wrapped so that [`From<io::Error>`] recovers them.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            Self::Io(error) => error,
            error @ Self::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, error),
            error @ Self::InvalidContext(_) => io::Error::new(io::ErrorKind::InvalidInput, error),
            error => io::Error::new(io::ErrorKind::InvalidData, error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_errors_survive_a_trip_through_io_errors() {
        let error: EnvelopeError = EnvelopeError::Integrity { chunk: 3 }.into_io().into();
        assert!(matches!(error, EnvelopeError::Integrity { chunk: 3 }));
        let error: EnvelopeError = EnvelopeError::Truncated.into_io().into();
        assert!(matches!(error, EnvelopeError::Truncated));
        let io_error = EnvelopeError::Forged.into_io();
        assert_eq!(io_error.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(EnvelopeError::from(io_error), EnvelopeError::Forged));
        let io_error = EnvelopeError::InvalidContext("the run id is empty".to_owned()).into_io();
        assert_eq!(io_error.kind(), io::ErrorKind::InvalidInput);
        assert!(matches!(
            EnvelopeError::from(io_error),
            EnvelopeError::InvalidContext(message) if message == "the run id is empty"
        ));
        let plain = io::Error::new(io::ErrorKind::BrokenPipe, "pipe closed");
        let error: EnvelopeError = EnvelopeError::Io(plain).into_io().into();
        assert!(
            matches!(&error, EnvelopeError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe),
            "{error:?}"
        );
        assert_eq!(error.to_string(), "pipe closed");
    }
}
