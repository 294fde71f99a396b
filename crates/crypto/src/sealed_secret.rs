//! Sealed secret values: a stack's secret variable sealed by whoever sets it (the CLI, or
//! the server on the UI's behalf) with nothing but the pool certificate, and opened by a
//! launcher of the pool with the pool key. Unlike an envelope it carries no signature —
//! only the pool key signs, and the people setting secrets do not hold it — so it
//! proves nothing about who sealed it; it keeps the value from anyone without the key.
//! The format is specified in `docs/encryption.md` ("Sealed secret values").

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use zeroize::Zeroizing;

use crate::envelope::{DATA_KEY_LEN, WrapAlgorithm, WrapKey, spki_fingerprint};
use crate::{Certificate, KeyAlgorithm, PoolPrivateKey};

const MAGIC: &[u8; 8] = b"GNTRYSEC";
const VERSION: u8 = 1;
const CONTEXT_PREFIX: &str = "gantry-secret-v1";
const FINGERPRINT_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// What a sealed value belongs to: it opens only for this pool, stack and variable, so a
/// value cannot be moved to another stack's variable or another pool unnoticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretContext<'a> {
    pub pool_id: &'a str,
    /// The stack's name: the CLI seals before the stack, and so its id, exists.
    pub stack: &'a str,
    pub variable: &'a str,
}

impl SecretContext<'_> {
    fn render(&self) -> Result<String, SecretError> {
        for (what, value) in
            [("pool id", self.pool_id), ("stack", self.stack), ("variable", self.variable)]
        {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(SecretError::InvalidContext(format!(
                    "the {what} {value:?} is empty or holds control characters"
                )));
            }
        }
        Ok(format!(
            "{CONTEXT_PREFIX}\npool={}\nstack={}\nvariable={}",
            self.pool_id, self.stack, self.variable
        ))
    }
}

/// Why a sealed value cannot be made or opened. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("invalid sealed secret context: {0}")]
    InvalidContext(String),
    #[error("not a sealed secret value: {0}")]
    NotSealed(String),
    #[error("sealed secret format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("sealed for {found}, not for {expected}")]
    WrongContext { expected: String, found: String },
    #[error(
        "sealed for another pool key: the pool was reset after it was sealed, or the value was sealed for another pool"
    )]
    WrongKey,
    #[error("the value does not open with the pool key: it was altered or sealed wrongly")]
    DoesNotOpen,
    #[error("the opened value is not UTF-8 text")]
    NotText,
}

/// What a sealed value's header says, readable without any key: which key it is sealed
/// for and to which context. Not authenticated until the value opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecretHeader {
    /// SHA-256 of the DER SubjectPublicKeyInfo of the key it is sealed for.
    pub recipient_fingerprint: [u8; FINGERPRINT_LEN],
    /// The context string: `gantry-secret-v1\npool=…\nstack=…\nvariable=…`.
    pub context: String,
}

impl SealedSecretHeader {
    /// Whether it is sealed for this certificate's key.
    pub fn is_for(&self, certificate: &Certificate) -> bool {
        self.recipient_fingerprint == spki_fingerprint(certificate.spki_der())
    }

    /// Whether it is sealed for this context.
    pub fn is_in(&self, context: &SecretContext<'_>) -> bool {
        context.render().is_ok_and(|expected| expected == self.context)
    }
}

/// Seals `value` for the key of `certificate`, bound to `context`: base64 text, as the
/// API carries and the server stores it.
pub fn seal_secret(
    certificate: &Certificate,
    context: &SecretContext<'_>,
    value: &str,
) -> Result<String, SecretError> {
    let context = context.render()?;
    let wrap_key = match certificate.algorithm() {
        KeyAlgorithm::Rsa { .. } => WrapKey::from_rsa(certificate.spki_der()),
        KeyAlgorithm::P256 => WrapKey::from_p256_point(certificate.public_key()),
    }
    .map_err(SecretError::NotSealed)?;
    let data_key = Zeroizing::new(random::<DATA_KEY_LEN>());
    let wrapped = wrap_key
        .wrap(&data_key, context.as_bytes())
        .map_err(|e| SecretError::NotSealed(e.to_string()))?;
    let nonce = random::<NONCE_LEN>();
    let mut sealed = Vec::with_capacity(64 + context.len() + wrapped.len() + value.len());
    sealed.extend_from_slice(MAGIC);
    sealed.push(VERSION);
    sealed.push(wrap_key.algorithm().id());
    sealed.extend_from_slice(&spki_fingerprint(certificate.spki_der()));
    push_field(&mut sealed, context.as_bytes());
    push_field(&mut sealed, &wrapped);
    sealed.extend_from_slice(&nonce);
    let header_len = sealed.len();
    let mut body = Zeroizing::new(value.as_bytes().to_vec());
    aead_key(&data_key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&sealed[..header_len]),
            &mut *body,
        )
        .map_err(|_| SecretError::NotSealed("AES-256-GCM sealing failed".to_owned()))?;
    sealed.extend_from_slice(&body);
    Ok(base64::engine::general_purpose::STANDARD.encode(sealed))
}

/// Reads the header of a sealed value without opening it.
pub fn read_secret_header(sealed: &str) -> Result<SealedSecretHeader, SecretError> {
    parse(sealed).map(|parsed| parsed.header)
}

/// Opens a value sealed for `key` and `context`.
pub fn open_secret(
    key: &PoolPrivateKey,
    context: &SecretContext<'_>,
    sealed: &str,
) -> Result<Zeroizing<String>, SecretError> {
    let expected = context.render()?;
    let parsed = parse(sealed)?;
    if parsed.header.context != expected {
        return Err(SecretError::WrongContext {
            expected: describe(&expected),
            found: describe(&parsed.header.context),
        });
    }
    if parsed.header.recipient_fingerprint != key.recipient_fingerprint() {
        return Err(SecretError::WrongKey);
    }
    if key.unwrap_key().algorithm() != parsed.algorithm {
        return Err(SecretError::WrongKey);
    }
    let data_key = key
        .unwrap_key()
        .unwrap(&parsed.wrapped, expected.as_bytes())
        .map_err(|_| SecretError::DoesNotOpen)?;
    let mut body = Zeroizing::new(parsed.body);
    let nonce = Nonce::try_assume_unique_for_key(&parsed.nonce)
        .map_err(|_| SecretError::NotSealed("the nonce is malformed".to_owned()))?;
    let opened = aead_key(&data_key)
        .open_in_place(nonce, Aad::from(&parsed.signed[..]), &mut body)
        .map_err(|_| SecretError::DoesNotOpen)?;
    let text = std::str::from_utf8(opened).map_err(|_| SecretError::NotText)?;
    Ok(Zeroizing::new(text.to_owned()))
}

struct Parsed {
    header: SealedSecretHeader,
    algorithm: WrapAlgorithm,
    wrapped: Vec<u8>,
    nonce: [u8; NONCE_LEN],
    /// The header's bytes: the associated data of the body.
    signed: Vec<u8>,
    body: Vec<u8>,
}

fn parse(sealed: &str) -> Result<Parsed, SecretError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed.trim())
        .map_err(|_| SecretError::NotSealed("it is not base64".to_owned()))?;
    let mut reader = Reader { bytes: &bytes, at: 0 };
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(SecretError::NotSealed("the GNTRYSEC magic is missing".to_owned()));
    }
    let version = reader.take(1)?[0];
    if version != VERSION {
        return Err(SecretError::UnsupportedVersion(version));
    }
    let algorithm = reader.take(1)?[0];
    let algorithm = WrapAlgorithm::from_id(algorithm).map_err(|_| {
        SecretError::NotSealed(format!(
            "key wrapping algorithm {algorithm} is not supported (expected 1 or 2)"
        ))
    })?;
    let mut recipient_fingerprint = [0u8; FINGERPRINT_LEN];
    recipient_fingerprint.copy_from_slice(reader.take(FINGERPRINT_LEN)?);
    let context = reader.field()?;
    let context = String::from_utf8(context.to_vec())
        .map_err(|_| SecretError::NotSealed("the context is not UTF-8".to_owned()))?;
    let wrapped = reader.field()?.to_vec();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(reader.take(NONCE_LEN)?);
    let signed = bytes[..reader.at].to_vec();
    let body = bytes[reader.at..].to_vec();
    if body.len() < TAG_LEN {
        return Err(SecretError::NotSealed("it ends before its authentication tag".to_owned()));
    }
    Ok(Parsed {
        header: SealedSecretHeader { recipient_fingerprint, context },
        algorithm,
        wrapped,
        nonce,
        signed,
        body,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], SecretError> {
        let end =
            self.at.checked_add(len).filter(|end| *end <= self.bytes.len()).ok_or_else(|| {
                SecretError::NotSealed("it is truncated inside its header".to_owned())
            })?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// A field preceded by its 2-byte big-endian length.
    fn field(&mut self) -> Result<&'a [u8], SecretError> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        self.take(len)
    }
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    // Contexts are a few hundred bytes at most and wrapped keys at most 1024 (RSA-8192).
    let len = u16::try_from(field.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&field[..usize::from(len)]);
}

fn aead_key(data_key: &[u8; DATA_KEY_LEN]) -> LessSafeKey {
    // A 32-byte key always makes an AES-256 key.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).expect("a 32-byte AES-256 key"))
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // As for envelopes: without a working random source nothing may be sealed.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random source works");
    bytes
}

/// A context string as people read it: `pool P, stack S, variable V`.
fn describe(context: &str) -> String {
    let fields: Vec<String> = context
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| format!("{name} {value}"))
        .collect();
    if fields.is_empty() { format!("{context:?}") } else { fields.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CertificateAuthority, generate_pool_key};

    fn pool(id: &str) -> (PoolPrivateKey, Certificate) {
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let generated = generate_pool_key("pool").unwrap();
        let issued = ca.issue_pool_certificate(&generated.csr_pem, id).unwrap();
        (PoolPrivateKey::from_pem(&generated.private_key_pem).unwrap(), issued.certificate)
    }

    fn rsa_pool() -> (PoolPrivateKey, Certificate) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("pool.key");
        let csr = dir.path().join("pool.csr");
        let status = std::process::Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=pool"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let ca = CertificateAuthority::generate("test CA").unwrap();
        let issued =
            ca.issue_pool_certificate(&std::fs::read_to_string(csr).unwrap(), "p1").unwrap();
        (
            PoolPrivateKey::from_pem(&std::fs::read_to_string(key).unwrap()).unwrap(),
            issued.certificate,
        )
    }

    const CONTEXT: SecretContext<'static> =
        SecretContext { pool_id: "p1", stack: "web", variable: "TF_VAR_password" };

    #[test]
    fn a_value_sealed_with_the_certificate_opens_with_the_key_only() {
        for (key, certificate) in [pool("p1"), rsa_pool()] {
            let sealed = seal_secret(&certificate, &CONTEXT, "hunter22-secret").unwrap();
            assert!(!sealed.contains("hunter22"));
            assert_eq!(*open_secret(&key, &CONTEXT, &sealed).unwrap(), "hunter22-secret");
            let header = read_secret_header(&sealed).unwrap();
            assert!(header.is_for(&certificate) && header.is_in(&CONTEXT));
            // Sealing is randomised: the same value never seals to the same text.
            assert_ne!(sealed, seal_secret(&certificate, &CONTEXT, "hunter22-secret").unwrap());
        }
    }

    #[test]
    fn another_key_context_or_a_changed_byte_does_not_open() {
        let (key, certificate) = pool("p1");
        let (other_key, other_certificate) = pool("p1");
        let sealed = seal_secret(&certificate, &CONTEXT, "hunter22-secret").unwrap();
        assert_eq!(open_secret(&other_key, &CONTEXT, &sealed).unwrap_err(), SecretError::WrongKey);
        assert!(!read_secret_header(&sealed).unwrap().is_for(&other_certificate));
        let moved = SecretContext { stack: "api", ..CONTEXT };
        assert_eq!(
            open_secret(&key, &moved, &sealed).unwrap_err().to_string(),
            "sealed for pool p1, stack web, variable TF_VAR_password, not for pool p1, stack api, variable TF_VAR_password"
        );
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(open_secret(&key, &CONTEXT, &altered).unwrap_err(), SecretError::DoesNotOpen);
        assert!(matches!(
            open_secret(&key, &CONTEXT, "hunter22-secret").unwrap_err(),
            SecretError::NotSealed(_)
        ));
        assert!(matches!(
            read_secret_header("R05UUllTRUM=").unwrap_err(),
            SecretError::NotSealed(_)
        ));
    }

    #[test]
    fn a_context_with_a_newline_is_refused() {
        let (_, certificate) = pool("p1");
        let context = SecretContext { variable: "A\nstack=x", ..CONTEXT };
        assert!(matches!(
            seal_secret(&certificate, &context, "value").unwrap_err(),
            SecretError::InvalidContext(_)
        ));
    }
}
