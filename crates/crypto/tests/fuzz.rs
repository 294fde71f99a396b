//! Fuzz tests of everything this crate reads from a peer: envelopes (they come back from
//! the server's blob store), pool tokens, private keys, certificates, CSRs, session
//! challenges and release signatures. Arbitrary inputs and mutations of valid ones must
//! give an error, never a panic, a hang or a buffer sized by what the input claims; what
//! is authenticated (envelopes, challenges, issued certificates) must refuse every
//! mutation. Case counts: `gantry_testkit::fuzz` (`GANTRY_FUZZ_CASES` for long runs).

use std::io::{self, Read};
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gantry_crypto::{
    Certificate, CertificateAuthority, ChallengeSigner, EnvelopeContext, EnvelopeError,
    OpeningReader, PoolPrivateKey, PoolToken, Purpose, ReleasePublicKey, SealingWriter,
    generate_pool_key, generate_release_key, open, read_header, seal, sign_binary_digest,
    verify_session_signature,
};
use gantry_testkit::fuzz::{self, mutated, within_hang_limit};
use proptest::prelude::*;

mod support;

use support::{openssl, read};

// ---------------------------------------------------------------------------------------
// Fixtures

/// The chunk size of the sample envelopes: small, so that a few KiB make several chunks.
const CHUNK_SIZE: usize = 1024;
/// AES-GCM's tag after each chunk.
const TAG_LEN: usize = 16;
/// The header's variable fields have 2-byte lengths: no header read needs more.
const MAX_HEADER_FIELD: usize = u16::MAX as usize;

struct Pool {
    key: PoolPrivateKey,
    /// The key's PEM as `openssl` or `gantry keygen` wrote it, and in its other format
    /// (PKCS#1 for RSA, SEC1 for P-256).
    pems: [String; 2],
    csr_pem: String,
    /// An envelope of [`sample_plaintext`], sealed by this key for [`context`].
    envelope: Vec<u8>,
    /// Where the envelope's body (its first chunk) starts.
    body_start: usize,
}

struct Fixtures {
    rsa: Pool,
    p256: Pool,
    ca: CertificateAuthority,
    /// Issued by `ca` for the P-256 pool.
    certificate: Certificate,
    token: String,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_pool_key("fuzz").unwrap();
        std::fs::write(dir.path().join("p256.key"), &generated.private_key_pem).unwrap();
        openssl(
            dir.path(),
            &[
                "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key", "-out",
                "rsa.csr", "-subj", "/CN=fuzz",
            ],
        );
        for (from, to) in [("rsa.key", "rsa-pkcs1.key"), ("p256.key", "p256-sec1.key")] {
            openssl(dir.path(), &["pkey", "-in", from, "-traditional", "-out", to]);
        }
        let rsa = pool(
            [read(dir.path(), "rsa.key"), read(dir.path(), "rsa-pkcs1.key")],
            read(dir.path(), "rsa.csr"),
        );
        let p256 =
            pool([generated.private_key_pem, read(dir.path(), "p256-sec1.key")], generated.csr_pem);
        let ca = CertificateAuthority::generate("fuzz CA").unwrap();
        let certificate = ca.issue_pool_certificate(&p256.csr_pem, "pool").unwrap().certificate;
        let token = PoolToken::new(
            "https://gantry.example:8443".to_owned(),
            Some(ca.certificate().pem().to_owned()),
            "01JPOOL0000000000000000000".to_owned(),
            certificate.pem().to_owned(),
        )
        .encode();
        Fixtures { rsa, p256, ca, certificate, token }
    })
}

fn pool(pems: [String; 2], csr_pem: String) -> Pool {
    let key = PoolPrivateKey::from_pem(&pems[0]).unwrap();
    let mut envelope = Vec::new();
    let mut writer =
        SealingWriter::with_chunk_size(&key, &context(), CHUNK_SIZE as u32, &mut envelope).unwrap();
    io::copy(&mut sample_plaintext().as_slice(), &mut writer).unwrap();
    writer.finish().unwrap();
    let body_len = sample_plaintext().len() + 3 * TAG_LEN;
    let body_start = envelope.len() - body_len;
    Pool { key, pems, csr_pem, envelope, body_start }
}

fn context() -> EnvelopeContext {
    EnvelopeContext {
        pool_id: "01JPOOL0000000000000000000".to_owned(),
        stack_id: "01JSTACK000000000000000000".to_owned(),
        run_id: "01JRUN00000000000000000000".to_owned(),
        purpose: Purpose::State,
    }
}

/// Two full chunks and a partial last one.
fn sample_plaintext() -> Vec<u8> {
    (0..2 * CHUNK_SIZE + 500).map(|i| (i * 7 % 251) as u8).collect()
}

/// The RSA pool, or the P-256 one.
fn pool_of(rsa: bool) -> &'static Pool {
    if rsa { &fixtures().rsa } else { &fixtures().p256 }
}

// ---------------------------------------------------------------------------------------
// Envelopes

/// A reader over `bytes` that remembers the largest buffer it was asked to fill: a parser
/// that sized a buffer by a length it read would ask for that much.
struct Probe<'a> {
    bytes: &'a [u8],
    largest_request: usize,
}

impl Read for Probe<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.largest_request = self.largest_request.max(buffer.len());
        self.bytes.read(buffer)
    }
}

/// What opening a blob gave: the plaintext read before it ended or failed, the outcome,
/// and the largest read the opener asked for.
struct Opened {
    plaintext: Vec<u8>,
    result: Result<(), EnvelopeError>,
    largest_request: usize,
}

/// Opens `blob` through [`OpeningReader`], reading in pieces of 700 bytes.
fn open_probed(key: &PoolPrivateKey, blob: &[u8]) -> Opened {
    let mut probe = Probe { bytes: blob, largest_request: 0 };
    let mut plaintext = Vec::new();
    let result = OpeningReader::new(key, &context(), &mut probe).and_then(|mut reader| {
        let mut piece = [0u8; 700];
        loop {
            match reader.read(&mut piece)? {
                0 => return Ok(()),
                n => plaintext.extend_from_slice(&piece[..n]),
            }
        }
    });
    Opened { plaintext, result, largest_request: probe.largest_request }
}

/// Checks that `blob`, which is not `pool`'s envelope, opens neither way (streamed and
/// with [`open`]), that whatever plaintext came out before the error is a prefix of the
/// genuine one, and that no read asked for more than a header field or one chunk.
fn assert_refused(pool: &Pool, blob: &[u8]) -> Result<(), TestCaseError> {
    let opened = open_probed(&pool.key, blob);
    prop_assert!(opened.result.is_err(), "a blob that is not the envelope opened");
    prop_assert!(
        sample_plaintext().starts_with(&opened.plaintext),
        "{} bytes of plaintext that the pool never sealed came out",
        opened.plaintext.len()
    );
    prop_assert!(
        opened.largest_request <= MAX_HEADER_FIELD.max(CHUNK_SIZE + TAG_LEN + 1),
        "a read of {} bytes",
        opened.largest_request
    );
    let mut output = Vec::new();
    prop_assert!(open(&pool.key, &context(), blob, &mut output).is_err());
    prop_assert!(sample_plaintext().starts_with(&output));
    // Diagnostics read the header without a key: any answer but a panic will do.
    let _ = read_header(blob);
    Ok(())
}

/// Arbitrary bytes, often behind the magic and a plausible start of a header so that the
/// parser gets past its first checks; chunk sizes include the largest and absurd ones.
fn arbitrary_blob() -> impl Strategy<Value = Vec<u8>> {
    let rest = prop::collection::vec(any::<u8>(), 0..4096);
    let chunk_size = prop_oneof![
        Just(1024u32),
        Just(16 * 1024 * 1024),
        Just(16 * 1024 * 1024 + 1),
        Just(u32::MAX),
        any::<u32>()
    ];
    prop_oneof![
        rest.clone(),
        (0u8..4, 0u8..4, chunk_size, rest).prop_map(|(version, algorithm, chunk_size, rest)| {
            [&b"GNTRYENV"[..], &[version, algorithm], &chunk_size.to_be_bytes(), &rest].concat()
        }),
    ]
}

proptest! {
    #![proptest_config(fuzz::config(192))]

    #[test]
    fn arbitrary_bytes_never_open(blob in arbitrary_blob()) {
        within_hang_limit(move || {
            for pool in [pool_of(true), pool_of(false)] {
                let opened = open_probed(&pool.key, &blob);
                prop_assert!(opened.result.is_err());
                prop_assert!(opened.plaintext.is_empty());
                // Nothing verified: no chunk buffer may have been made.
                let largest = opened.largest_request;
                prop_assert!(largest <= MAX_HEADER_FIELD, "a read of {} bytes", largest);
                let _ = read_header(blob.as_slice());
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    #[test]
    fn mutated_envelopes_never_open(
        rsa in any::<bool>(),
        mutations in fuzz::mutations(),
    ) {
        within_hang_limit(move || {
            let pool = pool_of(rsa);
            let blob = fuzz::apply(&pool.envelope, &mutations);
            if blob == pool.envelope {
                // Mutations that cancel out: the envelope must still open.
                let opened = open_probed(&pool.key, &blob);
                prop_assert!(opened.result.is_ok(), "{:?}", opened.result);
                prop_assert_eq!(opened.plaintext, sample_plaintext());
                return Ok(());
            }
            assert_refused(pool, &blob)
        })?;
    }

    /// Chunks dropped, repeated and reordered whole: every sequence but the original
    /// fails, and nothing out of order is ever yielded.
    #[test]
    fn rearranged_chunks_never_open(
        rsa in any::<bool>(),
        order in prop::collection::vec(0usize..3, 0..6),
    ) {
        within_hang_limit(move || {
            let pool = pool_of(rsa);
            let (header, body) = pool.envelope.split_at(pool.body_start);
            let chunks: Vec<&[u8]> = body.chunks(CHUNK_SIZE + TAG_LEN).collect();
            let body = order.iter().flat_map(|&i| chunks[i].to_vec());
            let blob: Vec<u8> = header.iter().copied().chain(body).collect();
            if order == [0, 1, 2] {
                prop_assert!(open_probed(&pool.key, &blob).result.is_ok());
                return Ok(());
            }
            assert_refused(pool, &blob)
        })?;
    }
}

// ---------------------------------------------------------------------------------------
// Tokens, keys, certificates, CSRs

/// PEM text around `der`, as openssl writes it.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// The label and DER of the first PEM block of `text`.
fn pem_der(text: &str) -> (String, Vec<u8>) {
    let label =
        text.lines().next().unwrap().trim_start_matches("-----BEGIN ").trim_end_matches("-----");
    let body: String = text.lines().filter(|line| !line.starts_with("-----")).collect();
    (label.to_owned(), STANDARD.decode(body).unwrap())
}

/// Mutations of a PEM text: of its text, or of its DER wrapped again in PEM (which is
/// where the ASN.1 parsers get exercised).
fn mutated_pem(text: String) -> impl Strategy<Value = String> {
    let (label, der) = pem_der(&text);
    prop_oneof![
        mutated(text.into_bytes()).prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        mutated(der).prop_map(move |der| pem(&label, &der)),
    ]
}

/// Text that is sometimes PEM-shaped around arbitrary bytes.
fn arbitrary_text() -> impl Strategy<Value = String> {
    let label = prop::sample::select(vec![
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "CERTIFICATE",
        "CERTIFICATE REQUEST",
        "NEW CERTIFICATE REQUEST",
        "ENCRYPTED PRIVATE KEY",
    ]);
    prop_oneof![
        any::<String>(),
        (label, prop::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(label, der)| pem(label, &der)),
    ]
}

/// A loaded key must do everything a pool key does: seal a blob that it then opens.
fn assert_usable(key: &PoolPrivateKey) -> Result<(), TestCaseError> {
    let mut sealed = Vec::new();
    seal(key, &context(), &b"state"[..], &mut sealed)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut opened = Vec::new();
    let result = open(key, &context(), sealed.as_slice(), &mut opened);
    prop_assert!(result.is_ok(), "a key that loaded cannot open its own blob: {:?}", result);
    prop_assert_eq!(opened, b"state");
    Ok(())
}

fn key_pem() -> impl Strategy<Value = String> {
    let f = fixtures();
    let pems: Vec<String> = [&f.rsa, &f.p256].iter().flat_map(|pool| pool.pems.clone()).collect();
    prop::sample::select(pems).prop_flat_map(mutated_pem)
}

proptest! {
    #![proptest_config(fuzz::config(192))]

    #[test]
    fn mutated_private_keys_load_usable_or_not_at_all(text in key_pem()) {
        within_hang_limit(move || {
            if let Ok(key) = PoolPrivateKey::from_pem(&text) {
                assert_usable(&key)?;
            }
            // As GANTRY_POOL_PRIVATE_KEY may carry it: base64 of the PEM text.
            if let Ok(key) = PoolPrivateKey::from_config_value(&STANDARD.encode(&text)) {
                assert_usable(&key)?;
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    #[test]
    fn arbitrary_text_is_no_key_certificate_csr_or_token(text in arbitrary_text()) {
        within_hang_limit(move || {
            let f = fixtures();
            prop_assert!(PoolPrivateKey::from_pem(&text).is_err());
            prop_assert!(PoolPrivateKey::from_config_value(&text).is_err());
            prop_assert!(f.ca.issue_pool_certificate(&text, "pool").is_err());
            prop_assert!(PoolToken::decode(&text).is_err());
            if let Ok(certificate) = Certificate::from_pem(&text) {
                prop_assert!(f.ca.verify_issued(&certificate).is_err());
            }
            let _ = ReleasePublicKey::parse(&text);
            Ok::<_, TestCaseError>(())
        })?;
    }

    #[test]
    fn mutated_certificates_are_trusted_only_as_issued(
        der in mutated(fixtures().certificate.der().to_vec()),
    ) {
        within_hang_limit(move || {
            let f = fixtures();
            let pem = pem("CERTIFICATE", &der);
            for parsed in [Certificate::from_der(&der), Certificate::from_pem(&pem)] {
                let Ok(certificate) = parsed else { continue };
                if f.ca.verify_issued(&certificate).is_ok() {
                    // Only bytes the signature does not cover may differ (x509-parser
                    // accepts some BER in the outer signature algorithm), and what the
                    // certificate says must be what was issued.
                    prop_assert_eq!(certificate.spki_der(), f.certificate.spki_der());
                    prop_assert_eq!(certificate.not_after_unix(), f.certificate.not_after_unix());
                }
                let _ = verify_session_signature(&certificate, "challenge", &der);
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    #[test]
    fn mutated_csrs_issue_only_for_their_own_key(
        rsa in any::<bool>(),
        mutations in fuzz::mutations(),
    ) {
        within_hang_limit(move || {
            let f = fixtures();
            let pool = pool_of(rsa);
            let (label, der) = pem_der(&pool.csr_pem);
            let mutated_der = fuzz::apply(&der, &mutations);
            let text = fuzz::apply(pool.csr_pem.as_bytes(), &mutations);
            for csr in [pem(&label, &mutated_der), String::from_utf8_lossy(&text).into_owned()] {
                let Ok(issued) = f.ca.issue_pool_certificate(&csr, "pool") else { continue };
                // The self-signature covers the key: a certificate is only ever issued
                // for the key whose holder signed the CSR.
                prop_assert!(pool.key.matches(&issued.certificate));
                prop_assert!(f.ca.verify_issued(&issued.certificate).is_ok());
            }
            Ok::<_, TestCaseError>(())
        })?;
    }

    #[test]
    fn mutated_tokens_decode_to_usable_tokens_or_not_at_all(
        json_level in any::<bool>(),
        mutations in fuzz::mutations(),
    ) {
        within_hang_limit(move || {
            let token = &fixtures().token;
            let text = if json_level {
                let json = URL_SAFE_NO_PAD.decode(token).unwrap();
                URL_SAFE_NO_PAD.encode(fuzz::apply(&json, &mutations))
            } else {
                String::from_utf8_lossy(&fuzz::apply(token.as_bytes(), &mutations)).into_owned()
            };
            if let Ok(decoded) = PoolToken::decode(&text) {
                // What decoding accepts, a launcher can use: and it reads back the same.
                prop_assert!(decoded.pool_certificate().is_ok());
                prop_assert_eq!(PoolToken::decode(&decoded.encode()).unwrap(), decoded);
            }
            Ok::<_, TestCaseError>(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------
// Challenges and release signatures

fn signer() -> &'static (ChallengeSigner, String) {
    static SIGNER: OnceLock<(ChallengeSigner, String)> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let signer = ChallengeSigner::new(&ChallengeSigner::generate_key());
        let challenge = signer.issue("01JPOOL0000000000000000000", i64::MAX / 2);
        (signer, challenge)
    })
}

fn release() -> &'static (ReleasePublicKey, String, String) {
    static RELEASE: OnceLock<(ReleasePublicKey, String, String)> = OnceLock::new();
    RELEASE.get_or_init(|| {
        let (signing, public) = generate_release_key().unwrap();
        let digest = gantry_crypto::binary_digest(b"\x7fELF worker");
        let signature = sign_binary_digest(&signing, &digest).unwrap();
        (ReleasePublicKey::parse(&public).unwrap(), digest, signature)
    })
}

proptest! {
    #![proptest_config(fuzz::config(512))]

    #[test]
    fn only_the_issued_challenge_verifies(text in mutated(signer().1.clone().into_bytes())) {
        let (signer, challenge) = signer();
        let text = String::from_utf8_lossy(&text);
        let result = signer.verify(&text, "01JPOOL0000000000000000000", 0);
        prop_assert_eq!(result.is_ok(), text == challenge.as_str());
    }

    #[test]
    fn arbitrary_challenges_do_not_verify(text in any::<String>()) {
        prop_assert!(signer().0.verify(&text, "01JPOOL0000000000000000000", 0).is_err());
    }

    #[test]
    fn only_the_release_signature_verifies(text in mutated(release().2.clone().into_bytes())) {
        let (public, digest, signature) = release();
        let text = String::from_utf8_lossy(&text);
        let result = public.verify(digest, &text);
        // Base64 tolerates surrounding whitespace, nothing else.
        prop_assert_eq!(result.is_ok(), text.trim() == signature.as_str());
    }
}
