//! The envelope format against real keys: every key format openssl writes, random
//! lengths and chunk boundaries, every kind of tampering with its exact error, blobs
//! forged by someone holding only the pool certificate, the committed test vectors, and
//! the format checked against the `openssl` command's own RSA-OAEP, RSA-PSS and ECDSA.

use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use gantry_crypto::{
    Certificate, CertificateAuthority, DEFAULT_CHUNK_SIZE, EnvelopeContext, EnvelopeError,
    KeyAlgorithm, OpeningReader, PoolPrivateKey, Purpose, SealingWriter, WrapAlgorithm,
    generate_pool_key, open, open_chunks_with_key, read_header, seal, seal_chunks_with_key,
    session_message,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Fixtures

mod support;

use support::{openssl, read};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().try_into().unwrap()
}

fn authority() -> &'static CertificateAuthority {
    static AUTHORITY: OnceLock<CertificateAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| CertificateAuthority::generate("test CA").unwrap())
}

/// A pool key as the launcher loads it and its certificate as the server issues it.
struct Pool {
    key: PoolPrivateKey,
    key_pem: String,
    certificate: Certificate,
}

impl Pool {
    /// How envelopes sealed by this pool wrap their data key.
    fn algorithm(&self) -> WrapAlgorithm {
        match self.key.algorithm() {
            KeyAlgorithm::Rsa { .. } => WrapAlgorithm::RsaOaepSha256,
            KeyAlgorithm::P256 => WrapAlgorithm::HpkeP256,
        }
    }
}

fn pool(key_pem: &str, csr_pem: &str) -> Pool {
    let issued = authority().issue_pool_certificate(csr_pem, "pool").unwrap();
    let key = PoolPrivateKey::from_pem(key_pem).unwrap();
    key.ensure_matches(&issued.certificate).unwrap();
    // Headers name the key by what anyone can compute from the certificate.
    assert_eq!(key.recipient_fingerprint(), sha256(issued.certificate.spki_der()));
    Pool { key, key_pem: key_pem.to_owned(), certificate: issued.certificate }
}

fn openssl_rsa_pool(bits: u32) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-keyout",
            "pool.key",
            "-out",
            "pool.csr",
            "-subj",
            "/CN=pool",
        ],
    );
    pool(&read(dir.path(), "pool.key"), &read(dir.path(), "pool.csr"))
}

fn rsa_2048() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| openssl_rsa_pool(2048))
}

fn p256() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let generated = generate_pool_key("pool").unwrap();
        pool(&generated.private_key_pem, &generated.csr_pem)
    })
}

fn both_pools() -> [&'static Pool; 2] {
    [rsa_2048(), p256()]
}

fn context(run: &str, purpose: Purpose) -> EnvelopeContext {
    EnvelopeContext {
        pool_id: "01JPOOL0000000000000000000".to_owned(),
        stack_id: "01JSTACK000000000000000000".to_owned(),
        run_id: run.to_owned(),
        purpose,
    }
}

/// Deterministic bytes that look random (xorshift), so that chunks differ.
fn plaintext(len: usize, seed: u8) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Seals through `SealingWriter`, writing `data` in pieces of `piece` bytes.
fn seal_in_pieces(
    pool: &Pool,
    context: &EnvelopeContext,
    chunk_size: u32,
    data: &[u8],
    piece: usize,
) -> Vec<u8> {
    let mut writer =
        SealingWriter::with_chunk_size(&pool.key, context, chunk_size, Vec::new()).unwrap();
    for part in data.chunks(piece) {
        writer.write_all(part).unwrap();
    }
    writer.finish().unwrap()
}

fn open_blob(
    pool: &Pool,
    context: &EnvelopeContext,
    blob: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let mut output = Vec::new();
    let len = open(&pool.key, context, blob, &mut output)?;
    assert_eq!(len, output.len() as u64);
    Ok(output)
}

/// Reads through `OpeningReader` in pieces of `piece` bytes; returns what was yielded
/// before the end or the first error.
fn read_in_pieces(
    pool: &Pool,
    context: &EnvelopeContext,
    blob: &[u8],
    piece: usize,
) -> (Vec<u8>, Result<(), EnvelopeError>) {
    let mut reader = match OpeningReader::new(&pool.key, context, blob) {
        Ok(reader) => reader,
        Err(error) => return (Vec::new(), Err(error)),
    };
    let mut output = Vec::new();
    let mut buffer = vec![0u8; piece];
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return (output, Ok(())),
            Ok(n) => output.extend_from_slice(&buffer[..n]),
            Err(error) => return (output, Err(error.into())),
        }
    }
}

/// Where the fields of a sealed blob are (docs/encryption.md, "Header").
struct Layout {
    context: Range<usize>,
    wrapped_key_len_at: usize,
    wrapped_key: Range<usize>,
    nonce_prefix: Range<usize>,
    /// Everything before the signature section: what the header hash covers.
    signed_len: usize,
    signature_len_at: usize,
    signature: Range<usize>,
    header_len: usize,
    chunk_size: usize,
}

fn layout(blob: &[u8]) -> Layout {
    let u16_at = |at: usize| usize::from(u16::from_be_bytes([blob[at], blob[at + 1]]));
    let chunk_size = u32::from_be_bytes(blob[10..14].try_into().unwrap()) as usize;
    let context = 48..48 + u16_at(46);
    let wrapped_key_len_at = context.end;
    let wrapped_key = wrapped_key_len_at + 2..wrapped_key_len_at + 2 + u16_at(wrapped_key_len_at);
    let nonce_prefix = wrapped_key.end..wrapped_key.end + 7;
    let signature_len_at = nonce_prefix.end;
    let signature = signature_len_at + 2..signature_len_at + 2 + u16_at(signature_len_at);
    Layout {
        header_len: signature.end,
        signed_len: signature_len_at,
        context,
        wrapped_key_len_at,
        wrapped_key,
        nonce_prefix,
        signature_len_at,
        signature,
        chunk_size,
    }
}

/// What the pool key signs for a header whose signed part is `signed`
/// (docs/encryption.md, "Signature"): the domain separator, then the header hash.
fn signature_message(signed: &[u8]) -> Vec<u8> {
    [&b"gantry-envelope-signature-v1\n"[..], &sha256(signed)].concat()
}

/// `blob` with its signature section replaced by one holding `signature`.
fn with_signature(blob: &[u8], signature: &[u8]) -> Vec<u8> {
    let layout = layout(blob);
    let length = u16::try_from(signature.len()).unwrap().to_be_bytes();
    [&blob[..layout.signed_len], &length, signature, &blob[layout.header_len..]].concat()
}

/// `blob`, whose signed part was changed, signed again by `key`: what it would take to
/// get past the signature check. Shows what the checks behind it still catch.
fn resigned(blob: &[u8], key: &PoolPrivateKey) -> Vec<u8> {
    let signed = &blob[..layout(blob).signed_len];
    with_signature(blob, &key.sign(&signature_message(signed)).unwrap())
}

/// Checks a sealed blob's signature with the certificate, as anyone holding it can.
fn assert_signed_by(certificate: &Certificate, blob: &[u8]) {
    let layout = layout(blob);
    let message = signature_message(&blob[..layout.signed_len]);
    certificate.verify(&message, &blob[layout.signature.clone()]).unwrap();
    let signature_len = layout.signature.len();
    match certificate.algorithm() {
        KeyAlgorithm::Rsa { bits } => assert_eq!(signature_len, bits / 8, "RSA-PSS"),
        KeyAlgorithm::P256 => assert!((8..=72).contains(&signature_len), "ECDSA, DER"),
    }
}

impl Layout {
    /// Chunk `index`'s ciphertext and tag within the blob.
    fn record(&self, blob: &[u8], index: usize) -> Range<usize> {
        let start = self.header_len + index * (self.chunk_size + 16);
        start..(start + self.chunk_size + 16).min(blob.len())
    }
}

/// The sealed body length for `len` plaintext bytes: every chunk carries a 16-byte tag,
/// and there is always at least the final chunk.
fn body_len(len: usize, chunk_size: usize) -> usize {
    len + 16 * len.div_ceil(chunk_size).max(1)
}

#[track_caller]
fn assert_error(result: Result<Vec<u8>, EnvelopeError>, expected: fn(&EnvelopeError) -> bool) {
    match result {
        Ok(_) => panic!("the blob opened"),
        Err(error) => assert!(expected(&error), "unexpected error: {error:?} ({error})"),
    }
}

// ---------------------------------------------------------------------------------------
// Round trips with every key users bring

fn assert_round_trip(pool: &Pool) {
    let data = plaintext(3 * 1024 + 5, 7);
    let context = context("01JRUN", Purpose::Workspace);

    let mut blob = Vec::new();
    assert_eq!(seal(&pool.key, &context, data.as_slice(), &mut blob).unwrap(), 3077);
    let header = read_header(blob.as_slice()).unwrap();
    assert_eq!(header.version, 1);
    assert_eq!(header.algorithm, pool.algorithm());
    assert_eq!(header.chunk_size, DEFAULT_CHUNK_SIZE);
    assert_eq!(header.recipient_fingerprint, sha256(pool.certificate.spki_der()));
    assert_signed_by(&pool.certificate, &blob);
    assert_eq!(
        header.context,
        "gantry-envelope-v1\npool=01JPOOL0000000000000000000\nstack=01JSTACK000000000000000000\nrun=01JRUN\npurpose=workspace"
    );
    assert_eq!(open_blob(pool, &context, &blob).unwrap(), data);
    assert!(
        !blob.windows(32).any(|window| data.windows(32).take(64).any(|p| p == window)),
        "no plaintext shows through"
    );

    let small_chunks = seal_in_pieces(pool, &context, 1024, &data, 1000);
    assert_signed_by(&pool.certificate, &small_chunks);
    let (opened, result) = read_in_pieces(pool, &context, &small_chunks, 777);
    result.unwrap();
    assert_eq!(opened, data);
}

fn assert_rsa_round_trips(bits: u32) {
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-keyout",
            "pkcs8.key",
            "-out",
            "pool.csr",
            "-subj",
            "/CN=pool",
        ],
    );
    openssl(dir.path(), &["rsa", "-in", "pkcs8.key", "-traditional", "-out", "pkcs1.key"]);
    let pkcs8 = read(dir.path(), "pkcs8.key");
    let pkcs1 = read(dir.path(), "pkcs1.key");
    assert!(pkcs8.contains("BEGIN PRIVATE KEY") && pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    let csr = read(dir.path(), "pool.csr");
    for key_pem in [&pkcs8, &pkcs1] {
        let pool = pool(key_pem, &csr);
        assert_eq!(pool.algorithm(), WrapAlgorithm::RsaOaepSha256);
        assert_round_trip(&pool);
    }
    // A blob sealed and signed with the key in one format opens with it in the other.
    let context = context("01JRUN", Purpose::State);
    for (sealer, opener) in [(&pkcs8, &pkcs1), (&pkcs1, &pkcs8)] {
        let mut blob = Vec::new();
        seal(&pool(sealer, &csr).key, &context, &b"state"[..], &mut blob).unwrap();
        assert_eq!(open_blob(&pool(opener, &csr), &context, &blob).unwrap(), b"state");
        let layout = layout(&blob);
        assert_eq!(layout.wrapped_key.len(), bits as usize / 8);
        assert_eq!(layout.signature.len(), bits as usize / 8);
    }
}

#[test]
fn rsa_2048_keys_round_trip_in_pkcs8_and_pkcs1() {
    assert_rsa_round_trips(2048);
}

#[test]
fn rsa_3072_keys_round_trip_in_pkcs8_and_pkcs1() {
    assert_rsa_round_trips(3072);
}

#[test]
fn rsa_4096_keys_round_trip_in_pkcs8_and_pkcs1() {
    assert_rsa_round_trips(4096);
}

#[test]
fn p256_keys_round_trip_in_sec1_pkcs8_and_from_gantry_keygen() {
    let dir = tempfile::tempdir().unwrap();
    openssl(dir.path(), &["ecparam", "-name", "prime256v1", "-genkey", "-out", "sec1.key"]);
    openssl(dir.path(), &["req", "-new", "-key", "sec1.key", "-out", "pool.csr", "-subj", "/CN=p"]);
    openssl(dir.path(), &["pkcs8", "-topk8", "-nocrypt", "-in", "sec1.key", "-out", "pkcs8.key"]);
    let csr = read(dir.path(), "pool.csr");
    for name in ["sec1.key", "pkcs8.key"] {
        let pool = pool(&read(dir.path(), name), &csr);
        assert_eq!(pool.algorithm(), WrapAlgorithm::HpkeP256);
        assert_round_trip(&pool);
    }
    // A blob signed with the SEC1-loaded key opens with the PKCS#8-loaded one.
    let context = context("r", Purpose::Plan);
    let mut blob = Vec::new();
    seal(&pool(&read(dir.path(), "sec1.key"), &csr).key, &context, &b"plan"[..], &mut blob)
        .unwrap();
    assert_eq!(
        open_blob(&pool(&read(dir.path(), "pkcs8.key"), &csr), &context, &blob).unwrap(),
        b"plan"
    );
    let generated = generate_pool_key("pool").unwrap();
    let keygen = pool(&generated.private_key_pem, &generated.csr_pem);
    assert_round_trip(&keygen);
    let mut blob = Vec::new();
    seal(&keygen.key, &context, &b"plan"[..], &mut blob).unwrap();
    assert_eq!(layout(&blob).wrapped_key.len(), 65 + 32 + 16, "enc ‖ sealed data key");
}

#[test]
fn keys_and_writers_keep_secrets_out_of_debug_output() {
    for pool in both_pools() {
        let writer = SealingWriter::new(&pool.key, &context("r", Purpose::Plan), Vec::new());
        let shown = format!("{:?} {:?}", pool.key, writer.unwrap());
        assert!(shown.contains("hidden"), "{shown}");
        assert!(!shown.contains("PRIVATE") && !shown.contains("key:"), "{shown}");
    }
}

#[test]
fn keys_and_streams_can_cross_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_and_sync::<PoolPrivateKey>(); // the launcher shares it in an `Arc`
    send::<SealingWriter<Vec<u8>>>();
    send::<OpeningReader<std::fs::File>>();
    send::<EnvelopeError>();
}

// ---------------------------------------------------------------------------------------
// Lengths: random and at every chunk boundary

fn assert_any_length_round_trips(
    pool: &Pool,
    len: usize,
    write_piece: usize,
    read_piece: usize,
    seed: u8,
) -> Result<(), TestCaseError> {
    let data = plaintext(len, seed);
    let context = context("01JRUNPROP", Purpose::State);
    let blob = seal_in_pieces(pool, &context, 1024, &data, write_piece);
    let layout = layout(&blob);
    prop_assert_eq!(blob.len(), layout.header_len + body_len(len, 1024));
    let (opened, result) = read_in_pieces(pool, &context, &blob, read_piece);
    prop_assert!(result.is_ok(), "{:?}", result);
    prop_assert_eq!(opened, data);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn rsa_envelopes_of_any_length_round_trip(
        len in 0usize..=5 * 1024 + 64,
        write_piece in 1usize..=2500,
        read_piece in 1usize..=2500,
        seed in any::<u8>(),
    ) {
        assert_any_length_round_trips(rsa_2048(), len, write_piece, read_piece, seed)?;
    }

    #[test]
    fn p256_envelopes_of_any_length_round_trip(
        len in 0usize..=5 * 1024 + 64,
        write_piece in 1usize..=2500,
        read_piece in 1usize..=2500,
        seed in any::<u8>(),
    ) {
        assert_any_length_round_trips(p256(), len, write_piece, read_piece, seed)?;
    }
}

#[test]
fn lengths_at_every_chunk_boundary_round_trip_for_both_algorithms() {
    let context = context("01JRUNEDGE", Purpose::Plan);
    for pool in both_pools() {
        for (chunk_size, multiples) in [(1024usize, 1..=4), (DEFAULT_CHUNK_SIZE as usize, 1..=2)] {
            let mut lengths = vec![0, 1];
            for n in multiples {
                lengths.extend([n * chunk_size - 1, n * chunk_size, n * chunk_size + 1]);
            }
            for len in lengths {
                let data = plaintext(len, len as u8);
                let blob = seal_in_pieces(pool, &context, chunk_size as u32, &data, 4096);
                let layout = layout(&blob);
                assert_eq!(blob.len(), layout.header_len + body_len(len, chunk_size), "{len}");
                assert_eq!(open_blob(pool, &context, &blob).unwrap(), data, "{len}");
                let (opened, result) = read_in_pieces(pool, &context, &blob, 1);
                result.unwrap();
                assert_eq!(opened, data, "{len}");
                if chunk_size == DEFAULT_CHUNK_SIZE as usize {
                    // `seal` reads ahead instead of waiting for writes: same chunking.
                    let mut sealed = Vec::new();
                    assert_eq!(
                        seal(&pool.key, &context, data.as_slice(), &mut sealed).unwrap(),
                        len as u64
                    );
                    // Same body length (ECDSA signatures vary by a byte or two in DER).
                    assert_eq!(
                        sealed.len() - self::layout(&sealed).header_len,
                        blob.len() - layout.header_len,
                        "{len}"
                    );
                    assert_eq!(open_blob(pool, &context, &sealed).unwrap(), data, "{len}");
                }
            }
        }
    }
}

/// A writer whose output can be inspected while a `SealingWriter` owns it.
#[derive(Clone, Default)]
struct SharedOutput(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl Write for SharedOutput {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buffer);
        Ok(buffer.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_writer_holds_back_a_full_chunk_until_more_plaintext_arrives() {
    let pool = p256();
    let context = context("01JRUNLAZY", Purpose::Workspace);
    let output = SharedOutput::default();
    let mut writer =
        SealingWriter::with_chunk_size(&pool.key, &context, 1024, output.clone()).unwrap();
    let header_len = output.0.borrow().len();
    assert_eq!(header_len, layout(&output.0.borrow()).header_len, "new writes the header");
    writer.write_all(&[1; 1024]).unwrap();
    writer.flush().unwrap();
    // Only `finish` can tell whether this full chunk is the last: it is held back.
    assert_eq!(output.0.borrow().len(), header_len);
    writer.write_all(&[2; 1]).unwrap();
    assert_eq!(output.0.borrow().len(), header_len + 1040);
    writer.finish().unwrap();
    let blob = output.0.borrow().clone();
    assert_eq!(blob.len(), header_len + 1040 + 17);
    let mut expected = vec![1; 1024];
    expected.push(2);
    assert_eq!(open_blob(pool, &context, &blob).unwrap(), expected);
}

#[test]
fn a_writer_dropped_without_finish_leaves_a_blob_that_does_not_open() {
    for pool in both_pools() {
        let context = context("01JRUNDROP", Purpose::State);
        let mut blob = Vec::new();
        {
            let mut writer =
                SealingWriter::with_chunk_size(&pool.key, &context, 1024, &mut blob).unwrap();
            writer.write_all(&plaintext(5000, 1)).unwrap();
        }
        assert_error(open_blob(pool, &context, &blob), |e| matches!(e, EnvelopeError::Truncated));
    }
}

// ---------------------------------------------------------------------------------------
// Tampering: each alteration and its exact error

const TAMPER_LEN: usize = 3000; // chunks of 1024, 1024 and 952 bytes

fn tamper_fixture(pool: &Pool) -> (EnvelopeContext, Vec<u8>, Vec<u8>) {
    let context = context("01JRUNTAMPER", Purpose::State);
    let data = plaintext(TAMPER_LEN, 3);
    let blob = seal_in_pieces(pool, &context, 1024, &data, 8192);
    (context, data, blob)
}

fn altered(blob: &[u8], at: usize, change: impl FnOnce(&mut u8)) -> Vec<u8> {
    let mut copy = blob.to_vec();
    change(&mut copy[at]);
    copy
}

#[test]
fn a_changed_header_byte_gets_a_precise_error() {
    for pool in both_pools() {
        let (context, data, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        let open = |bytes: Vec<u8>| open_blob(pool, &context, &bytes);
        assert_eq!(open(blob.clone()).unwrap(), data);

        assert_error(open(altered(&blob, 0, |b| *b ^= 1)), |e| {
            matches!(e, EnvelopeError::NotAnEnvelope)
        });
        assert_error(open(altered(&blob, 8, |b| *b = 2)), |e| {
            matches!(e, EnvelopeError::UnsupportedVersion(2))
        });
        assert_error(open(altered(&blob, 9, |b| *b = 9)), |e| {
            matches!(e, EnvelopeError::UnsupportedAlgorithm(9))
        });
        // The other algorithm's id: the fingerprint still matches, the key type does not.
        assert_error(open(altered(&blob, 9, |b| *b = 3 - *b)), |e| {
            matches!(e, EnvelopeError::KeyTypeMismatch)
        });
        assert_error(open(altered(&blob, 10, |b| *b = 0x7f)), |e| {
            matches!(e, EnvelopeError::BadChunkSize(0x7f00_0400))
        });
        // 1024 → 1280: still a valid size, but not the signed one.
        assert_error(open(altered(&blob, 12, |b| *b ^= 1)), |e| matches!(e, EnvelopeError::Forged));
        assert_error(open(altered(&blob, 14, |b| *b ^= 1)), |e| {
            matches!(e, EnvelopeError::WrongKey)
        });
        assert_error(open(altered(&blob, 45, |b| *b ^= 0x80)), |e| {
            matches!(e, EnvelopeError::WrongKey)
        });
        let run_at = layout.context.start
            + std::str::from_utf8(&blob[layout.context.clone()]).unwrap().find("run=").unwrap()
            + 4;
        let result = open(altered(&blob, run_at, |b| *b = b'X'));
        assert_error(result, |e| matches!(e, EnvelopeError::WrongContext { .. }));
        let message = open(altered(&blob, run_at, |b| *b = b'X')).unwrap_err().to_string();
        assert_eq!(
            message,
            "sealed for run X1JRUNTAMPER (state), not for run 01JRUNTAMPER (state)"
        );
        for at in [
            layout.wrapped_key.start + 5,
            layout.wrapped_key.end - 1,
            layout.nonce_prefix.start,
            layout.nonce_prefix.end - 1,
        ] {
            assert_error(open(altered(&blob, at, |b| *b ^= 1)), |e| {
                matches!(e, EnvelopeError::Forged)
            });
        }
        // A changed length misplaces every field after it: the signature section is read
        // from the wrong bytes, and runs past the input or does not verify.
        for change in [1, 0x80] {
            assert_error(
                open(altered(&blob, layout.wrapped_key_len_at + 1, |b| *b ^= change)),
                |e| matches!(e, EnvelopeError::Forged | EnvelopeError::Truncated),
            );
        }
        for cut in [5, 30, layout.context.end, layout.signed_len - 1, layout.header_len - 1] {
            let expected: fn(&EnvelopeError) -> bool = if cut < 8 {
                |e| matches!(e, EnvelopeError::NotAnEnvelope)
            } else {
                |e| matches!(e, EnvelopeError::Truncated)
            };
            assert_error(open(blob[..cut].to_vec()), expected);
        }
        let message = open(altered(&blob, 12, |b| *b ^= 1)).unwrap_err().to_string();
        assert_eq!(
            message,
            "the blob is not signed by this pool's key: it was not sealed by a launcher of the pool"
        );
    }
}

/// Past the signature, the older checks still stand on their own: a header altered and
/// then signed again with the pool key (which only a launcher has) still fails where the
/// wrapped key or the chunks no longer fit it.
#[test]
fn behind_the_signature_the_wrap_and_the_chunks_still_bind_the_header() {
    for pool in both_pools() {
        let (context, data, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        let open = |bytes: Vec<u8>| open_blob(pool, &context, &bytes);
        assert_eq!(open(resigned(&blob, &pool.key)).unwrap(), data, "re-signing alone is harmless");
        for at in [layout.wrapped_key.start + 5, layout.wrapped_key.end - 1] {
            assert_error(open(resigned(&altered(&blob, at, |b| *b ^= 1), &pool.key)), |e| {
                matches!(e, EnvelopeError::Unwrap)
            });
        }
        for at in [12, layout.nonce_prefix.start, layout.nonce_prefix.end - 1] {
            assert_error(open(resigned(&altered(&blob, at, |b| *b ^= 1), &pool.key)), |e| {
                matches!(e, EnvelopeError::Integrity { chunk: 0 })
            });
        }
    }
}

/// The context check before the signature only gives a precise message: a header
/// rewritten to claim another context is not signed, and even signed again by the pool
/// key it would not unwrap, because the context is the OAEP label or HPKE info under
/// which the data key was wrapped (and part of every chunk's associated data).
#[test]
fn a_header_rewritten_for_another_run_still_does_not_open() {
    for pool in both_pools() {
        let sealed_for = context("01JRUNAAAA", Purpose::State);
        let mut blob = Vec::new();
        seal(&pool.key, &sealed_for, &plaintext(100, 1)[..], &mut blob).unwrap();
        let layout = layout(&blob);
        let context_text = std::str::from_utf8(&blob[layout.context.clone()]).unwrap();
        let rewritten = context_text.replace("01JRUNAAAA", "01JRUNBBBB");
        blob.splice(layout.context.clone(), rewritten.bytes());
        assert_eq!(read_header(blob.as_slice()).unwrap().context, rewritten);
        let victim = context("01JRUNBBBB", Purpose::State);
        assert_error(open_blob(pool, &victim, &blob), |e| matches!(e, EnvelopeError::Forged));
        let resigned = resigned(&blob, &pool.key);
        assert_error(open_blob(pool, &victim, &resigned), |e| matches!(e, EnvelopeError::Unwrap));
    }
}

#[test]
fn a_changed_or_missing_signature_is_refused_as_forged() {
    for pool in both_pools() {
        let (context, _, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        let open = |bytes: Vec<u8>| open_blob(pool, &context, &bytes);
        for at in [layout.signature.start, layout.signature.start + 20, layout.signature.end - 1] {
            for change in [0x01, 0x80] {
                assert_error(open(altered(&blob, at, |b| *b ^= change)), |e| {
                    matches!(e, EnvelopeError::Forged)
                });
            }
        }
        let signature = &blob[layout.signature.clone()];
        for wrong in [
            &[][..],
            &signature[..signature.len() - 1],
            &[signature, &[0][..]].concat(),
            &vec![0; signature.len()],
        ] {
            assert_error(open(with_signature(&blob, wrong)), |e| {
                matches!(e, EnvelopeError::Forged)
            });
        }
        // A changed length field: the signature takes one byte of the body, or leaves one.
        for change in [1, 0x80] {
            assert_error(
                open(altered(&blob, layout.signature_len_at + 1, |b| *b ^= change)),
                |e| matches!(e, EnvelopeError::Forged | EnvelopeError::Truncated),
            );
        }
        // Without its signature section, the body's first bytes are taken for it.
        let stripped = [&blob[..layout.signed_len], &blob[layout.header_len..]].concat();
        assert_error(open(stripped), |e| {
            matches!(e, EnvelopeError::Forged | EnvelopeError::Truncated)
        });
    }
}

/// What the signature is for: someone holding only the pool certificate (the server
/// issued and stores it) assembles a blob exactly as the format says — the data key
/// wrapped for the pool's public key, the pool's fingerprint, the right context, valid
/// chunks — and cannot sign it. Signed by the pool key, the same assembly opens, so the
/// signature is the only thing that stops it.
#[test]
fn a_blob_forged_with_only_the_pool_certificate_is_refused() {
    let other_p256 =
        PoolPrivateKey::from_pem(&generate_pool_key("other").unwrap().private_key_pem).unwrap();
    let other_rsa = &openssl_rsa_pool(2048).key;
    for pool in both_pools() {
        let context = context("01JRUNFORGED", Purpose::State);
        let forged_state = br#"{"version":4,"resources":[{"type":"attacker_chosen"}]}"#;
        let (signed, body) = assemble_for_certificate(&pool.certificate, &context, forged_state);
        let message = signature_message(&signed);
        let with = |signature: &[u8]| {
            let length = u16::try_from(signature.len()).unwrap().to_be_bytes();
            [&signed[..], &length, signature, &body].concat()
        };
        let genuine = pool.key.sign(&message).unwrap();
        assert_eq!(open_blob(pool, &context, &with(&genuine)).unwrap(), forged_state);

        let header_hash = sha256(&signed);
        let attempts: [(&str, Vec<u8>); 6] = [
            ("no signature", Vec::new()),
            ("another P-256 key", other_p256.sign(&message).unwrap()),
            ("another RSA key", other_rsa.sign(&message).unwrap()),
            ("random bytes", plaintext(genuine.len(), 5)),
            // A malicious server chooses session challenges: a session proof over the
            // header hash is still no envelope signature.
            (
                "a session proof",
                pool.key.sign(&session_message(&hex::encode(header_hash))).unwrap(),
            ),
            ("the bare hash signed", pool.key.sign(&header_hash).unwrap()),
        ];
        for (what, signature) in attempts {
            let forged = with(&signature);
            let error = open_blob(pool, &context, &forged).unwrap_err();
            assert!(matches!(error, EnvelopeError::Forged), "{what}: {error:?}");
            let reader = OpeningReader::new(&pool.key, &context, forged.as_slice());
            assert!(matches!(reader, Err(EnvelopeError::Forged)), "{what}");
        }
    }
}

/// The same forgery starting from a real blob: sealed by another pool's key for the
/// right context, its fingerprint rewritten to the pool's.
#[test]
fn a_blob_sealed_by_another_key_under_the_pool_fingerprint_is_refused() {
    let context = context("01JRUNOTHER", Purpose::Workspace);
    for (sealer, pool) in
        [(p256(), rsa_2048()), (rsa_2048(), p256()), (&openssl_rsa_pool(2048), rsa_2048())]
    {
        let mut blob = Vec::new();
        seal(&sealer.key, &context, &b"not from this pool"[..], &mut blob).unwrap();
        blob[14..46].copy_from_slice(&pool.key.recipient_fingerprint());
        blob[9] = pool.algorithm().id();
        assert_error(open_blob(pool, &context, &blob), |e| matches!(e, EnvelopeError::Forged));
    }
}

/// Signed by the pool, a header still belongs to its own body only: the data key differs
/// from blob to blob.
#[test]
fn a_genuine_header_on_another_blobs_body_fails_its_first_chunk() {
    for pool in both_pools() {
        let (context, _, first) = tamper_fixture(pool);
        let (_, _, second) = tamper_fixture(pool);
        let spliced =
            [&first[..layout(&first).header_len], &second[layout(&second).header_len..]].concat();
        assert_error(open_blob(pool, &context, &spliced), |e| {
            matches!(e, EnvelopeError::Integrity { chunk: 0 })
        });
    }
}

/// What the signature does not give (docs/encryption.md): freshness. An older blob the
/// pool really sealed for the same context still opens; the launcher relies on the
/// server to hand out the latest one.
#[test]
fn an_older_genuine_blob_for_the_same_context_still_opens() {
    let pool = p256();
    let context = context("01JRUNROLLBACK", Purpose::State);
    let (mut older, mut newer) = (Vec::new(), Vec::new());
    seal(&pool.key, &context, &b"serial 1"[..], &mut older).unwrap();
    seal(&pool.key, &context, &b"serial 2"[..], &mut newer).unwrap();
    assert_eq!(open_blob(pool, &context, &newer).unwrap(), b"serial 2");
    assert_eq!(open_blob(pool, &context, &older).unwrap(), b"serial 1");
}

/// The signed part and the body of a blob assembled from the format's description with
/// only `certificate`: what anyone holding it (the server included) can make.
fn assemble_for_certificate(
    certificate: &Certificate,
    context: &EnvelopeContext,
    plaintext: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let context_bytes = format!(
        "gantry-envelope-v1\npool={}\nstack={}\nrun={}\npurpose={}",
        context.pool_id, context.stack_id, context.run_id, context.purpose
    )
    .into_bytes();
    let data_key = [0x3c; 32];
    let (algorithm, wrapped) = match certificate.algorithm() {
        KeyAlgorithm::Rsa { .. } => {
            (1, wrap_rsa_oaep(certificate.spki_der(), &data_key, &context_bytes))
        }
        KeyAlgorithm::P256 => (2, wrap_hpke(certificate.spki_der(), &data_key, &context_bytes)),
    };
    let nonce_prefix = [9, 8, 7, 6, 5, 4, 3];
    let mut signed = b"GNTRYENV\x01".to_vec();
    signed.push(algorithm);
    signed.extend_from_slice(&1024u32.to_be_bytes());
    signed.extend_from_slice(&sha256(certificate.spki_der()));
    signed.extend_from_slice(&u16::try_from(context_bytes.len()).unwrap().to_be_bytes());
    signed.extend_from_slice(&context_bytes);
    signed.extend_from_slice(&u16::try_from(wrapped.len()).unwrap().to_be_bytes());
    signed.extend_from_slice(&wrapped);
    signed.extend_from_slice(&nonce_prefix);
    let body =
        seal_chunks_with_key(&data_key, &nonce_prefix, &sha256(&signed), 1024, plaintext).unwrap();
    (signed, body)
}

/// RSA-OAEP-SHA256 with aws-lc-rs directly, from the certificate's public key.
fn wrap_rsa_oaep(spki_der: &[u8], data_key: &[u8; 32], label: &[u8]) -> Vec<u8> {
    use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
    let key =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(spki_der).unwrap()).unwrap();
    let mut wrapped = vec![0; key.ciphertext_size()];
    let len =
        key.encrypt(&OAEP_SHA256_MGF1SHA256, data_key, &mut wrapped, Some(label)).unwrap().len();
    wrapped.truncate(len);
    wrapped
}

/// HPKE base mode, DHKEM(P-256)/HKDF-SHA256/AES-128-GCM, with the `hpke` crate directly,
/// from the certificate's public key (the last 65 bytes of a P-256 SubjectPublicKeyInfo
/// are its uncompressed point).
fn wrap_hpke(spki_der: &[u8], data_key: &[u8; 32], info: &[u8]) -> Vec<u8> {
    use hpke::{Deserializable, OpModeS, Serializable};
    type Kem = hpke::kem::DhP256HkdfSha256;
    struct Rng;
    impl hpke::rand_core::RngCore for Rng {
        fn next_u32(&mut self) -> u32 {
            let mut bytes = [0; 4];
            self.fill_bytes(&mut bytes);
            u32::from_le_bytes(bytes)
        }
        fn next_u64(&mut self) -> u64 {
            let mut bytes = [0; 8];
            self.fill_bytes(&mut bytes);
            u64::from_le_bytes(bytes)
        }
        fn fill_bytes(&mut self, destination: &mut [u8]) {
            aws_lc_rs::rand::fill(destination).unwrap();
        }
    }
    impl hpke::rand_core::CryptoRng for Rng {}
    let point = &spki_der[spki_der.len() - 65..];
    let public_key = <Kem as hpke::Kem>::PublicKey::from_bytes(point).unwrap();
    let (encapped, sealed) = hpke::single_shot_seal::<
        hpke::aead::AesGcm128,
        hpke::kdf::HkdfSha256,
        Kem,
        _,
    >(&OpModeS::Base, &public_key, info, data_key, &[], &mut Rng)
    .unwrap();
    [&encapped.to_bytes()[..], &sealed].concat()
}

#[test]
fn a_changed_chunk_byte_fails_that_chunk_after_only_verified_plaintext() {
    for pool in both_pools() {
        let (context, data, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        for (chunk, at) in [
            (0, layout.record(&blob, 0).start),
            (1, layout.record(&blob, 1).start + 100),
            (1, layout.record(&blob, 1).end - 1), // the tag
            (2, layout.record(&blob, 2).start + 3),
            (2, blob.len() - 1),
        ] {
            let tampered = altered(&blob, at, |b| *b ^= 0x20);
            assert_error(open_blob(pool, &context, &tampered), |e| {
                matches!(e, EnvelopeError::Integrity { .. })
            });
            let (yielded, result) = read_in_pieces(pool, &context, &tampered, 100);
            let error = result.unwrap_err();
            assert!(
                matches!(error, EnvelopeError::Integrity { chunk: c } if c == chunk as u64),
                "byte {at}: {error:?}"
            );
            assert_eq!(
                error.to_string(),
                format!("the blob was altered: chunk {chunk} fails authentication")
            );
            assert_eq!(yielded, data[..chunk * 1024], "only chunks before {chunk} were yielded");
        }
    }
}

#[test]
fn truncated_blobs_are_refused() {
    for pool in both_pools() {
        let (context, _, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        let open = |end: usize| open_blob(pool, &context, &blob[..end]);
        // Cut at a chunk boundary: what remains authenticates, but no chunk is final.
        for end in [layout.header_len, layout.record(&blob, 1).start, layout.record(&blob, 2).start]
        {
            assert_error(open(end), |e| matches!(e, EnvelopeError::Truncated));
        }
        // Cut inside a chunk.
        for end in [
            layout.record(&blob, 0).start + 10,
            layout.record(&blob, 1).start + 500,
            layout.record(&blob, 2).start + 900,
            blob.len() - 1,
        ] {
            assert_error(open(end), |e| {
                matches!(e, EnvelopeError::Integrity { .. } | EnvelopeError::Truncated)
            });
        }
        assert_eq!(
            open(layout.record(&blob, 1).start).unwrap_err().to_string(),
            "the blob is truncated: it ends before its final chunk"
        );
    }
}

#[test]
fn dropped_swapped_repeated_or_foreign_chunks_are_refused() {
    for pool in both_pools() {
        let (context, _, blob) = tamper_fixture(pool);
        let layout = layout(&blob);
        let header = &blob[..layout.header_len];
        let record = |i: usize| &blob[layout.record(&blob, i)];
        let open = |parts: &[&[u8]]| open_blob(pool, &context, &parts.concat());
        assert_error(open(&[header, record(0), record(2)]), |e| {
            matches!(e, EnvelopeError::Integrity { chunk: 1 })
        });
        assert_error(open(&[header, record(1), record(0), record(2)]), |e| {
            matches!(e, EnvelopeError::Integrity { chunk: 0 })
        });
        assert_error(open(&[header, record(0), record(0), record(1), record(2)]), |e| {
            matches!(e, EnvelopeError::Integrity { chunk: 1 })
        });
        // A chunk from another envelope for the same key and context.
        let (_, _, other) = tamper_fixture(pool);
        let foreign = &other[layout.record(&other, 1)];
        assert_error(open(&[header, record(0), foreign, record(2)]), |e| {
            matches!(e, EnvelopeError::Integrity { chunk: 1 })
        });
    }
}

#[test]
fn appended_bytes_are_refused() {
    for pool in both_pools() {
        let context = context("01JRUNAPPEND", Purpose::Workspace);
        // A final chunk of full size: appended bytes are recognised as such.
        let blob = seal_in_pieces(pool, &context, 1024, &plaintext(2048, 4), 4096);
        let last = layout(&blob).record(&blob, 1);
        for extra in [&b"x"[..], &blob[last.clone()], &[0; 5000][..]] {
            let result = open_blob(pool, &context, &[&blob[..], extra].concat());
            assert_error(result, |e| matches!(e, EnvelopeError::TrailingData));
        }
        let message =
            open_blob(pool, &context, &[&blob[..], b"x"].concat()).unwrap_err().to_string();
        assert_eq!(message, "the blob has bytes after its final chunk");
        // A short final chunk ends only where the stream ends, so bytes appended to it
        // make it a different (unauthentic) final chunk.
        let (context, _, blob) = tamper_fixture(pool);
        let result = open_blob(pool, &context, &[&blob[..], b"x"].concat());
        assert_error(result, |e| matches!(e, EnvelopeError::Integrity { chunk: 2 }));
    }
}

#[test]
fn another_run_or_purpose_is_refused_with_both_contexts_named() {
    for pool in both_pools() {
        let sealed_for = context("01JRUNX", Purpose::State);
        let mut blob = Vec::new();
        seal(&pool.key, &sealed_for, &b"{}"[..], &mut blob).unwrap();
        let cases = [
            (
                context("01JRUNY", Purpose::Workspace),
                "sealed for run 01JRUNX (state), not for run 01JRUNY (workspace)",
            ),
            (
                context("01JRUNX", Purpose::Plan),
                "sealed for run 01JRUNX (state), not for run 01JRUNX (plan)",
            ),
            (
                EnvelopeContext { stack_id: "01JOTHERSTACK".to_owned(), ..sealed_for.clone() },
                "sealed for run 01JRUNX (state) of stack 01JSTACK000000000000000000, not for run 01JRUNX (state) of stack 01JOTHERSTACK",
            ),
        ];
        for (expected, message) in cases {
            let error = open_blob(pool, &expected, &blob).unwrap_err();
            assert!(matches!(error, EnvelopeError::WrongContext { .. }), "{error:?}");
            assert_eq!(error.to_string(), message);
        }
    }
}

#[test]
fn another_pool_key_is_refused_before_any_decryption() {
    let other_p256 = {
        let generated = generate_pool_key("other").unwrap();
        pool(&generated.private_key_pem, &generated.csr_pem)
    };
    let context = context("01JRUNKEY", Purpose::State);
    for (sealed_by, opened_by) in
        [(p256(), &other_p256), (rsa_2048(), &other_p256), (p256(), rsa_2048())]
    {
        let mut blob = Vec::new();
        seal(&sealed_by.key, &context, &b"state"[..], &mut blob).unwrap();
        let error = open_blob(opened_by, &context, &blob).unwrap_err();
        assert!(matches!(error, EnvelopeError::WrongKey), "{error:?}");
        assert_eq!(
            error.to_string(),
            "sealed for another pool key: the pool was reset after it was sealed, or it belongs to another pool"
        );
    }
}

#[test]
fn reader_errors_are_io_errors_carrying_the_envelope_error() {
    let pool = rsa_2048();
    let (context, _, blob) = tamper_fixture(pool);
    let tampered = altered(&blob, layout(&blob).record(&blob, 1).start, |b| *b ^= 1);
    let mut reader = OpeningReader::new(&pool.key, &context, tampered.as_slice()).unwrap();
    let error = io::copy(&mut reader, &mut io::sink()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    assert!(error.get_ref().unwrap().downcast_ref::<EnvelopeError>().is_some());
    assert!(matches!(EnvelopeError::from(error), EnvelopeError::Integrity { chunk: 1 }));
    // The reader stays failed.
    let again = reader.read(&mut [0; 10]).unwrap_err();
    assert!(matches!(EnvelopeError::from(again), EnvelopeError::Integrity { chunk: 1 }));

    let cut = &blob[..layout(&blob).record(&blob, 1).start];
    let mut reader = OpeningReader::new(&pool.key, &context, cut).unwrap();
    let error = io::copy(&mut reader, &mut io::sink()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    assert!(matches!(EnvelopeError::from(error), EnvelopeError::Truncated));
}

#[test]
fn contexts_that_could_be_confused_are_refused() {
    let pool = p256();
    let forged =
        EnvelopeContext { pool_id: "P\nstack=S".to_owned(), ..context("R", Purpose::State) };
    let error = SealingWriter::new(&pool.key, &forged, Vec::new()).unwrap_err();
    assert!(matches!(&error, EnvelopeError::InvalidContext(_)), "{error:?}");
    assert_eq!(
        error.to_string(),
        r#"invalid envelope context: the pool id "P\nstack=S" is empty or holds control characters"#
    );
    let error = OpeningReader::new(&pool.key, &forged, &b""[..]).unwrap_err();
    assert!(matches!(&error, EnvelopeError::InvalidContext(_)), "{error:?}");
    let empty_run = context("", Purpose::State);
    let error = seal(&pool.key, &empty_run, &b""[..], Vec::new()).unwrap_err();
    assert!(matches!(&error, EnvelopeError::InvalidContext(_)), "{error:?}");
}

#[test]
fn chunk_sizes_outside_the_readable_range_are_refused_when_sealing() {
    let pool = p256();
    for size in [0, 1023, 16 * 1024 * 1024 + 1] {
        let result = SealingWriter::with_chunk_size(
            &pool.key,
            &context("r", Purpose::Plan),
            size,
            Vec::new(),
        );
        assert!(matches!(result, Err(EnvelopeError::BadChunkSize(s)) if s == size));
    }
}

// ---------------------------------------------------------------------------------------
// The format, checked with another implementation: openssl's RSA-OAEP, RSA-PSS and ECDSA

/// Whether an `openssl` command succeeds (for commands expected to fail).
fn openssl_succeeds(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl").args(args).current_dir(dir).output().unwrap().status.success()
}

/// The `openssl dgst` options for the pool key's signature scheme: RSA-PSS with SHA-256,
/// MGF1-SHA-256 (the default with `-sha256`) and a salt as long as the digest; plain
/// ECDSA-SHA256 for P-256.
fn dgst_options(algorithm: KeyAlgorithm) -> Vec<&'static str> {
    match algorithm {
        KeyAlgorithm::Rsa { .. } => vec![
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:digest",
            "-sigopt",
            "rsa_mgf1_md:sha256",
        ],
        KeyAlgorithm::P256 => Vec::new(),
    }
}

/// openssl checks a blob's signature with the public key from the certificate (not the
/// private key: what the server holds is enough to check origin) and refuses it once a
/// byte changes; then a signature openssl makes over the same message opens with Gantry.
/// This pins the signed message, the scheme parameters and the signature encoding.
fn assert_signature_matches_openssl(pool: &Pool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    std::fs::write(path.join("pool.key"), &pool.key_pem).unwrap();
    std::fs::write(path.join("cert.pem"), pool.certificate.pem()).unwrap();
    openssl(path, &["x509", "-in", "cert.pem", "-pubkey", "-noout", "-out", "pub.pem"]);
    let context = context("01JRUNOPENSSLSIG", Purpose::State);
    let data = plaintext(1500, 2);
    let blob = seal_in_pieces(pool, &context, 1024, &data, 8192);
    let layout = layout(&blob);
    std::fs::write(path.join("message.bin"), signature_message(&blob[..layout.signed_len]))
        .unwrap();
    std::fs::write(path.join("signature.bin"), &blob[layout.signature.clone()]).unwrap();
    let options = dgst_options(pool.key.algorithm());
    let verify = |signature: &str| {
        let mut args = vec!["dgst", "-sha256", "-verify", "pub.pem", "-signature", signature];
        args.extend(&options);
        args.push("message.bin");
        openssl_succeeds(path, &args)
    };
    assert!(verify("signature.bin"), "openssl verifies Gantry's signature");
    let mut flipped = blob[layout.signature.clone()].to_vec();
    flipped[10] ^= 1;
    std::fs::write(path.join("flipped.bin"), flipped).unwrap();
    assert!(!verify("flipped.bin"), "openssl refuses a changed signature");

    let mut args = vec!["dgst", "-sha256", "-sign", "pool.key", "-out", "by-openssl.bin"];
    args.extend(&options);
    args.push("message.bin");
    openssl(path, &args);
    let by_openssl = std::fs::read(path.join("by-openssl.bin")).unwrap();
    assert_ne!(by_openssl, &blob[layout.signature.clone()], "signatures are randomised");
    assert_eq!(open_blob(pool, &context, &with_signature(&blob, &by_openssl)).unwrap(), data);
}

#[test]
fn signatures_match_openssl_for_every_key_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    openssl(
        path,
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa-pkcs8.key",
            "-out",
            "rsa.csr",
            "-subj",
            "/CN=pool",
        ],
    );
    openssl(path, &["rsa", "-in", "rsa-pkcs8.key", "-traditional", "-out", "rsa-pkcs1.key"]);
    openssl(path, &["ecparam", "-name", "prime256v1", "-genkey", "-out", "ec-sec1.key"]);
    openssl(path, &["req", "-new", "-key", "ec-sec1.key", "-out", "ec.csr", "-subj", "/CN=p"]);
    openssl(path, &["pkcs8", "-topk8", "-nocrypt", "-in", "ec-sec1.key", "-out", "ec-pkcs8.key"]);
    for (key, csr, header) in [
        ("rsa-pkcs8.key", "rsa.csr", "BEGIN PRIVATE KEY"),
        ("rsa-pkcs1.key", "rsa.csr", "BEGIN RSA PRIVATE KEY"),
        ("ec-sec1.key", "ec.csr", "BEGIN EC PRIVATE KEY"),
        ("ec-pkcs8.key", "ec.csr", "BEGIN PRIVATE KEY"),
    ] {
        let key_pem = read(path, key);
        assert!(key_pem.contains(header), "{key}");
        assert_signature_matches_openssl(&pool(&key_pem, &read(path, csr)));
    }
    assert_signature_matches_openssl(p256()); // from `gantry keygen`
}

/// Unwraps a sealed blob's data key with `openssl pkeyutl` and opens its chunks with the
/// STREAM layer alone; then builds a whole envelope from parts made by openssl (the
/// wrapped key and the signature) and opens it with Gantry. Together they check
/// docs/encryption.md's header layout, OAEP parameters and label, header hash and
/// signed message against an independent implementation.
#[test]
fn the_rsa_envelope_layout_matches_openssl_pkeyutl_both_ways() {
    let pool = rsa_2048();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pool.key"), &pool.key_pem).unwrap();
    let context = context("01JRUNOPENSSL", Purpose::Plan);
    let data = plaintext(2500, 9);
    let blob = seal_in_pieces(pool, &context, 1024, &data, 8192);
    let layout = layout(&blob);
    let label = hex::encode(&blob[layout.context.clone()]);
    std::fs::write(dir.path().join("wrapped.bin"), &blob[layout.wrapped_key.clone()]).unwrap();
    openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            "pool.key",
            "-in",
            "wrapped.bin",
            "-out",
            "key.bin",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-pkeyopt",
            &format!("rsa_oaep_label:{label}"),
        ],
    );
    let data_key: [u8; 32] = std::fs::read(dir.path().join("key.bin")).unwrap().try_into().unwrap();
    let nonce_prefix: [u8; 7] = blob[layout.nonce_prefix.clone()].try_into().unwrap();
    // The chunks authenticate the header up to the nonce prefix: not the signature.
    let header_hash = sha256(&blob[..layout.signed_len]);
    let body = &blob[layout.header_len..];
    assert_eq!(
        open_chunks_with_key(&data_key, &nonce_prefix, &header_hash, 1024, body).unwrap(),
        data
    );

    // The other way: an envelope assembled from the documented fields, openssl's wrap
    // and openssl's signature.
    std::fs::write(dir.path().join("cert.pem"), pool.certificate.pem()).unwrap();
    openssl(dir.path(), &["x509", "-in", "cert.pem", "-pubkey", "-noout", "-out", "pub.pem"]);
    let data_key = [0x5a; 32];
    std::fs::write(dir.path().join("data-key.bin"), data_key).unwrap();
    let context_bytes = blob[layout.context.clone()].to_vec();
    openssl(
        dir.path(),
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-in",
            "data-key.bin",
            "-out",
            "wrapped-by-openssl.bin",
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-pkeyopt",
            &format!("rsa_oaep_label:{}", hex::encode(&context_bytes)),
        ],
    );
    let wrapped = std::fs::read(dir.path().join("wrapped-by-openssl.bin")).unwrap();
    let nonce_prefix = [1, 2, 3, 4, 5, 6, 7];
    let mut header = b"GNTRYENV\x01\x01".to_vec();
    header.extend_from_slice(&2048u32.to_be_bytes());
    header.extend_from_slice(&sha256(pool.certificate.spki_der()));
    header.extend_from_slice(&(context_bytes.len() as u16).to_be_bytes());
    header.extend_from_slice(&context_bytes);
    header.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
    header.extend_from_slice(&wrapped);
    header.extend_from_slice(&nonce_prefix);
    let body =
        seal_chunks_with_key(&data_key, &nonce_prefix, &sha256(&header), 2048, &data).unwrap();
    std::fs::write(dir.path().join("message.bin"), signature_message(&header)).unwrap();
    let mut args = vec!["dgst", "-sha256", "-sign", "pool.key", "-out", "signature.bin"];
    args.extend(dgst_options(pool.key.algorithm()));
    args.push("message.bin");
    openssl(dir.path(), &args);
    let signature = std::fs::read(dir.path().join("signature.bin")).unwrap();
    assert_eq!(signature.len(), 256);
    let signature_section = [&(signature.len() as u16).to_be_bytes()[..], &signature].concat();
    let assembled = [header.clone(), signature_section, body.clone()].concat();
    assert_eq!(open_blob(pool, &context, &assembled).unwrap(), data);
    // The same assembly without openssl's signature is the forgery the signature stops.
    let unsigned = [header, vec![0, 0], body].concat();
    assert_error(open_blob(pool, &context, &unsigned), |e| matches!(e, EnvelopeError::Forged));
}

// ---------------------------------------------------------------------------------------
// Committed test vectors (tests/vectors/README.md)

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// `name = value` lines; `#` starts a comment line.
fn fields(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect()
}

fn field(fields: &[(String, String)], name: &str) -> String {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap()
}

fn unhex(text: &str) -> Vec<u8> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    hex::decode(compact).unwrap()
}

#[test]
fn the_stream_layer_vector_matches_byte_for_byte() {
    let text = std::fs::read_to_string(vectors_dir().join("stream-v1.txt")).unwrap();
    let fields = fields(&text);
    let chunk_size: usize = field(&fields, "chunk_size").parse().unwrap();
    let data_key: [u8; 32] = unhex(&field(&fields, "data_key")).try_into().unwrap();
    let nonce_prefix: [u8; 7] = unhex(&field(&fields, "nonce_prefix")).try_into().unwrap();
    let header_hash: [u8; 32] = unhex(&field(&fields, "header_hash")).try_into().unwrap();
    let plaintext = unhex(&field(&fields, "plaintext"));
    let ciphertext = unhex(&field(&fields, "ciphertext"));
    assert_eq!(plaintext.len(), 1500);
    assert_eq!(plaintext, (0..1500).map(|i| i as u8).collect::<Vec<_>>());
    assert_eq!(ciphertext.len(), 1500 + 2 * 16, "two chunks");
    assert_eq!(
        seal_chunks_with_key(&data_key, &nonce_prefix, &header_hash, chunk_size, &plaintext)
            .unwrap(),
        ciphertext
    );
    assert_eq!(
        open_chunks_with_key(&data_key, &nonce_prefix, &header_hash, chunk_size, &ciphertext)
            .unwrap(),
        plaintext
    );
}

fn vector_context() -> EnvelopeContext {
    EnvelopeContext {
        pool_id: "01JTESTVECTORPOOL000000000".to_owned(),
        stack_id: "01JTESTVECTORSTACK00000000".to_owned(),
        run_id: "01JTESTVECTORRUN0000000000".to_owned(),
        purpose: Purpose::State,
    }
}

fn assert_envelope_vector_opens(name: &str, algorithm: WrapAlgorithm) {
    let dir = vectors_dir();
    let key = PoolPrivateKey::from_pem(&read(&dir, &format!("{name}-test-key.pem"))).unwrap();
    let blob = unhex(&read(&dir, &format!("{name}-envelope.hex")));
    let expected = std::fs::read(dir.join("envelope-plaintext.txt")).unwrap();
    let header = read_header(blob.as_slice()).unwrap();
    assert_eq!(header.algorithm, algorithm);
    assert_eq!(header.chunk_size, 1024);
    assert_eq!(header.recipient_fingerprint, key.recipient_fingerprint());
    let signature_len = layout(&blob).signature.len();
    match algorithm {
        WrapAlgorithm::RsaOaepSha256 => assert_eq!(signature_len, 256),
        WrapAlgorithm::HpkeP256 => assert!((8..=72).contains(&signature_len)),
    }
    assert_eq!(
        header.context,
        "gantry-envelope-v1\npool=01JTESTVECTORPOOL000000000\nstack=01JTESTVECTORSTACK00000000\nrun=01JTESTVECTORRUN0000000000\npurpose=state"
    );
    let mut opened = Vec::new();
    open(&key, &vector_context(), blob.as_slice(), &mut opened).unwrap();
    assert_eq!(opened, expected);
    assert!(expected.len() > 2 * 1024, "the vector spans three chunks");
    let flipped = altered(&blob, layout(&blob).signature.start + 3, |b| *b ^= 0x04);
    let error = open(&key, &vector_context(), flipped.as_slice(), &mut Vec::new()).unwrap_err();
    assert!(matches!(error, EnvelopeError::Forged), "{error:?}");
}

#[test]
fn the_committed_rsa_2048_envelope_opens() {
    assert_envelope_vector_opens("rsa2048", WrapAlgorithm::RsaOaepSha256);
}

#[test]
fn the_committed_p256_envelope_opens() {
    assert_envelope_vector_opens("p256", WrapAlgorithm::HpkeP256);
}

/// Rewrites the envelope vectors from the committed test keys (sealing is randomised, so
/// every run gives new bytes): `GANTRY_WRITE_VECTORS=1 cargo nextest run -p gantry-crypto
/// --run-ignored only regenerate_envelope_vectors`. The stream vector is written too.
#[test]
#[ignore = "writes tests/vectors: run on purpose only"]
fn regenerate_envelope_vectors() {
    assert_eq!(
        std::env::var("GANTRY_WRITE_VECTORS").as_deref(),
        Ok("1"),
        "set GANTRY_WRITE_VECTORS=1"
    );
    let dir = vectors_dir();
    let hex_lines = |bytes: &[u8]| {
        hex::encode(bytes)
            .as_bytes()
            .chunks(64)
            .map(|l| format!("{}\n", std::str::from_utf8(l).unwrap()))
            .collect::<String>()
    };
    let expected = std::fs::read(dir.join("envelope-plaintext.txt")).unwrap();
    for name in ["rsa2048", "p256"] {
        let work = tempfile::tempdir().unwrap();
        let key_file = dir.join(format!("{name}-test-key.pem"));
        openssl(
            work.path(),
            &[
                "req",
                "-new",
                "-key",
                key_file.to_str().unwrap(),
                "-out",
                "pool.csr",
                "-subj",
                "/CN=test",
            ],
        );
        let pool =
            pool(&read(&dir, &format!("{name}-test-key.pem")), &read(work.path(), "pool.csr"));
        let blob = seal_in_pieces(&pool, &vector_context(), 1024, &expected, 8192);
        std::fs::write(dir.join(format!("{name}-envelope.hex")), hex_lines(&blob)).unwrap();
    }

    let data_key: Vec<u8> = (0..32).collect();
    let nonce_prefix: Vec<u8> = (0xa0..0xa7).collect();
    let header_hash = sha256(b"gantry stream test vector");
    let plaintext: Vec<u8> = (0..1500).map(|i| i as u8).collect();
    let ciphertext = seal_chunks_with_key(
        &data_key.clone().try_into().unwrap(),
        &nonce_prefix.clone().try_into().unwrap(),
        &header_hash,
        1024,
        &plaintext,
    )
    .unwrap();
    let text = format!(
        "# The STREAM layer alone (docs/encryption.md, \"Test vectors\"): AES-256-GCM chunks of\n\
         # 1024 plaintext bytes, nonce = nonce_prefix ‖ index (4, BE) ‖ last flag (1), associated\n\
         # data = header_hash. header_hash is SHA-256(\"gantry stream test vector\"); plaintext is\n\
         # the bytes i mod 256 for i in 0..1500. Hex.\n\
         chunk_size = 1024\ndata_key = {}\nnonce_prefix = {}\nheader_hash = {}\nplaintext = {}\nciphertext = {}\n",
        hex::encode(&data_key),
        hex::encode(&nonce_prefix),
        hex::encode(header_hash),
        hex::encode(&plaintext),
        hex::encode(&ciphertext),
    );
    std::fs::write(dir.join("stream-v1.txt"), text).unwrap();
}
