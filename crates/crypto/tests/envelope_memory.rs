//! Memory stays bounded however large the blob: 64 MiB stream through `SealingWriter`,
//! an OS pipe and `OpeningReader`, generated on the fly and never held, while the
//! process's peak resident memory is watched. Its own test binary, so that no other test
//! shares the process whose peak is measured.

use std::io::{self, Read, Write};

use gantry_crypto::{
    EnvelopeContext, OpeningReader, PoolPrivateKey, Purpose, SealingWriter, generate_pool_key,
};

const STREAM_LEN: u64 = 64 * 1024 * 1024;

/// Deterministic bytes made as they are read: 4 KiB blocks of a fixed pseudo-random table,
/// each starting with its block number so that no two blocks are equal.
struct Generated {
    remaining: u64,
    block_index: u64,
    block: [u8; 4096],
    block_pos: usize,
    table: [u8; 4096],
}

impl Generated {
    fn new(len: u64) -> Self {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let table = std::array::from_fn(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        });
        Self { remaining: len, block_index: 0, block: [0; 4096], block_pos: 4096, table }
    }
}

impl Read for Generated {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buffer.is_empty() {
            return Ok(0);
        }
        if self.block_pos == self.block.len() {
            self.block = self.table;
            self.block[..8].copy_from_slice(&self.block_index.to_le_bytes());
            self.block_index += 1;
            self.block_pos = 0;
        }
        let len = buffer
            .len()
            .min(self.block.len() - self.block_pos)
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        buffer[..len].copy_from_slice(&self.block[self.block_pos..self.block_pos + len]);
        self.block_pos += len;
        self.remaining -= len as u64;
        Ok(len)
    }
}

/// SHA-256 and length of everything read through it.
struct Digesting<R> {
    inner: R,
    context: aws_lc_rs::digest::Context,
    len: u64,
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buffer)?;
        self.context.update(&buffer[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

fn digesting<R: Read>(inner: R) -> Digesting<R> {
    Digesting {
        inner,
        context: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        len: 0,
    }
}

/// The process's peak resident set so far (Linux `VmHWM`), in KiB.
fn peak_resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_64_mib_stream_seals_and_opens_in_bounded_memory() {
    let generated = generate_pool_key("pool").unwrap();
    // The launcher's one key seals (on one side of the pipe) and opens (on the other).
    let key = std::sync::Arc::new(PoolPrivateKey::from_pem(&generated.private_key_pem).unwrap());
    let sealer_key = std::sync::Arc::clone(&key);
    let context = EnvelopeContext {
        pool_id: "01JPOOL".to_owned(),
        stack_id: "01JSTACK".to_owned(),
        run_id: "01JRUNBIG".to_owned(),
        purpose: Purpose::Workspace,
    };
    let baseline_kib = peak_resident_kib();

    let (pipe_reader, pipe_writer) = io::pipe().unwrap();
    let sealing_context = context.clone();
    let sealer = std::thread::spawn(move || {
        let mut source = digesting(Generated::new(STREAM_LEN));
        let mut writer = SealingWriter::new(&sealer_key, &sealing_context, pipe_writer).unwrap();
        io::copy(&mut source, &mut writer).unwrap();
        writer.finish().unwrap().flush().unwrap();
        (source.len, source.context.finish().as_ref().to_vec())
    });

    let reader = OpeningReader::new(&key, &context, pipe_reader).unwrap();
    let mut opened = digesting(reader);
    io::copy(&mut opened, &mut io::sink()).unwrap();
    let (sealed_len, sealed_digest) = sealer.join().unwrap();

    assert_eq!(sealed_len, STREAM_LEN);
    assert_eq!(opened.len, STREAM_LEN);
    assert_eq!(opened.context.finish().as_ref(), sealed_digest.as_slice());
    let growth_kib = peak_resident_kib().saturating_sub(baseline_kib);
    assert!(
        growth_kib < 8 * 1024,
        "peak resident memory grew by {growth_kib} KiB for a 64 MiB stream"
    );
}
