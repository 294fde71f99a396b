//! The envelope benchmark: how fast one thread seals and opens a large blob (the streaming
//! AES-256-GCM dominates), and what the per-blob key operations cost for each pool key
//! type: starting a blob (wrap a data key and sign the header) and opening one (verify
//! the signature and unwrap), with the signature and its verification also timed alone.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gantry_crypto::{
    Certificate, CertificateAuthority, EnvelopeContext, OpeningReader, PoolPrivateKey, Purpose,
    SealingWriter, generate_pool_key, open, seal,
};
use gantry_testkit::{KeyKind, OpensslKey};

/// One pool key type's measurements.
#[derive(Debug, Clone)]
pub struct EnvelopeMeasures {
    pub key: &'static str,
    pub seal_mb_per_s: f64,
    pub open_mb_per_s: f64,
    pub writer_mb_per_s: f64,
    pub reader_mb_per_s: f64,
    /// `SealingWriter::new`: wrap a data key and sign the header.
    pub wrap_median: Duration,
    /// `OpeningReader::new`: verify the header's signature and unwrap the data key.
    pub unwrap_median: Duration,
    /// One envelope-sized signature with the pool key alone.
    pub sign_median: Duration,
    /// One verification of that signature alone.
    pub verify_median: Duration,
}

struct Pool {
    name: &'static str,
    key: PoolPrivateKey,
    /// For timing a verification alone: it checks with the same function, and the same
    /// raw public key, as opening does with the pool key's own public half.
    certificate: Certificate,
}

fn pools() -> anyhow::Result<Vec<Pool>> {
    let authority = CertificateAuthority::generate("bench CA")?;
    let dir = tempfile::tempdir()?;
    let rsa = OpensslKey::generate(dir.path(), "rsa", KeyKind::Rsa4096);
    let p256 = generate_pool_key("bench")?;
    [
        ("RSA-4096 (RSA-OAEP-SHA256)", rsa.key_pem, rsa.csr_pem),
        ("EC P-256 (HPKE)", p256.private_key_pem, p256.csr_pem),
    ]
    .into_iter()
    .map(|(name, key_pem, csr_pem)| {
        let issued = authority.issue_pool_certificate(&csr_pem, "bench")?;
        Ok(Pool { name, key: PoolPrivateKey::from_pem(&key_pem)?, certificate: issued.certificate })
    })
    .collect()
}

fn context() -> EnvelopeContext {
    EnvelopeContext {
        pool_id: "01JBENCHPOOL00000000000000".to_owned(),
        stack_id: "01JBENCHSTACK0000000000000".to_owned(),
        run_id: "01JBENCHRUN000000000000000".to_owned(),
        purpose: Purpose::Workspace,
    }
}

/// Plaintext made as it is read, from one 64 KiB block whose first bytes count the
/// blocks: the benchmark never holds the stream, and generating costs one memcpy.
struct Generated {
    remaining: u64,
    block: Vec<u8>,
    block_pos: usize,
    block_index: u64,
}

impl Generated {
    fn new(len: u64) -> Self {
        let block =
            (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
        Self { remaining: len, block, block_pos: 64 * 1024, block_index: 0 }
    }
}

impl Read for Generated {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buffer.is_empty() {
            return Ok(0);
        }
        if self.block_pos == self.block.len() {
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

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// How many times each stream is timed: one pass over 256 MiB takes tens of
/// milliseconds, so a single pass is at the mercy of the scheduler and CPU frequency.
const STREAM_REPEATS: usize = 5;

/// The median throughput of [`STREAM_REPEATS`] passes of `pass`, which returns how many
/// plaintext bytes it processed.
fn throughput(mut pass: impl FnMut() -> anyhow::Result<u64>) -> anyhow::Result<f64> {
    let mut rates = Vec::with_capacity(STREAM_REPEATS);
    for _ in 0..STREAM_REPEATS {
        let started = Instant::now();
        let bytes = pass()?;
        rates.push(mb_per_s(bytes, started.elapsed()));
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

fn measure(pool: &Pool, stream_len: u64, samples: usize) -> anyhow::Result<EnvelopeMeasures> {
    let context = context();
    let seal_mb_per_s =
        throughput(|| Ok(seal(&pool.key, &context, Generated::new(stream_len), io::sink())?))?;
    let writer_mb_per_s = throughput(|| {
        let mut writer = SealingWriter::new(&pool.key, &context, io::sink())?;
        let len = io::copy(&mut Generated::new(stream_len), &mut writer)?;
        writer.finish()?;
        Ok(len)
    })?;

    // Opening needs a real envelope: the sealed stream is kept, once, as the input.
    let mut blob = Vec::with_capacity(usize::try_from(stream_len)? + 8 * 1024 * 1024);
    seal(&pool.key, &context, Generated::new(stream_len), &mut blob)?;
    let open_mb_per_s = throughput(|| {
        let len = open(&pool.key, &context, blob.as_slice(), io::sink())?;
        anyhow::ensure!(len == stream_len, "opened {len} bytes of {stream_len}");
        Ok(len)
    })?;
    let reader_mb_per_s = throughput(|| {
        let mut reader = OpeningReader::new(&pool.key, &context, blob.as_slice())?;
        Ok(io::copy(&mut reader, &mut io::sink())?)
    })?;
    drop(blob);

    let mut small = Vec::new();
    let mut wraps = Vec::with_capacity(samples);
    for _ in 0..samples {
        small.clear();
        let started = Instant::now();
        let writer = SealingWriter::new(&pool.key, &context, &mut small)?;
        wraps.push(started.elapsed());
        writer.finish()?.flush()?;
    }
    let mut unwraps = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let reader = OpeningReader::new(&pool.key, &context, small.as_slice())?;
        unwraps.push(started.elapsed());
        drop(reader);
    }

    // What an envelope signs: a 29-byte domain separator and a 32-byte header hash (the
    // content does not change the cost).
    let message = [&b"gantry-envelope-signature-v1\n"[..], &[0x5a; 32]].concat();
    let mut signs = Vec::with_capacity(samples);
    let mut signature = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        signature = pool.key.sign(&message)?;
        signs.push(started.elapsed());
    }
    let mut verifies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        pool.certificate.verify(&message, &signature)?;
        verifies.push(started.elapsed());
    }

    Ok(EnvelopeMeasures {
        key: pool.name,
        seal_mb_per_s,
        open_mb_per_s,
        writer_mb_per_s,
        reader_mb_per_s,
        wrap_median: median(wraps),
        unwrap_median: median(unwraps),
        sign_median: median(signs),
        verify_median: median(verifies),
    })
}

/// Measures both pool key types on this thread.
pub fn envelope(stream_mib: u64, samples: usize) -> anyhow::Result<Vec<EnvelopeMeasures>> {
    anyhow::ensure!(stream_mib > 0 && samples > 0, "the stream and the samples must not be empty");
    let stream_len = stream_mib * 1024 * 1024;
    pools()
        .context("could not make the benchmark's pool keys")?
        .iter()
        .map(|pool| measure(pool, stream_len, samples))
        .collect()
}

/// How one row of the report shows a measure.
type Cell = fn(&EnvelopeMeasures) -> String;

/// The report as a Markdown table, one column per key type.
pub fn envelope_report(stream_mib: u64, samples: usize, measures: &[EnvelopeMeasures]) -> String {
    let mut text = format!(
        "Envelope format v1, one thread, a {stream_mib} MiB stream generated on the fly into \
         `std::io::sink` (opening reads it back from memory), 64 KiB chunks; MB/s = 10^6 \
         bytes of plaintext per second, median of {STREAM_REPEATS} passes; key operations: \
         median of {samples}\n\n| measure |"
    );
    for measure in measures {
        text.push_str(&format!(" {} |", measure.key));
    }
    text.push_str(&format!("\n|---|{}\n", "---|".repeat(measures.len())));
    let rows: [(&str, Cell); 8] = [
        ("seal (`seal`: reads into the chunk buffer), MB/s", |m| format!("{:.0}", m.seal_mb_per_s)),
        ("open (`open`: writes each verified chunk), MB/s", |m| format!("{:.0}", m.open_mb_per_s)),
        ("seal through `SealingWriter` (`io::copy`), MB/s", |m| {
            format!("{:.0}", m.writer_mb_per_s)
        }),
        ("open through `OpeningReader` (`io::copy`), MB/s", |m| {
            format!("{:.0}", m.reader_mb_per_s)
        }),
        ("start a blob: wrap a data key, sign the header (`SealingWriter::new`)", |m| {
            format_duration(m.wrap_median)
        }),
        ("open a blob: verify the signature, unwrap the data key (`OpeningReader::new`)", |m| {
            format_duration(m.unwrap_median)
        }),
        ("sign a header alone (`PoolPrivateKey::sign`)", |m| format_duration(m.sign_median)),
        ("verify a header signature alone", |m| format_duration(m.verify_median)),
    ];
    for (name, value) in rows {
        text.push_str(&format!("| {name} |"));
        for measure in measures {
            text.push_str(&format!(" {} |", value(measure)));
        }
        text.push('\n');
    }
    text
}

fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros >= 1000.0 { format!("{:.2} ms", micros / 1000.0) } else { format!("{micros:.0} µs") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_plaintext_has_the_asked_length_and_varies_by_block() {
        let mut data = Vec::new();
        Generated::new(200_000).read_to_end(&mut data).unwrap();
        assert_eq!(data.len(), 200_000);
        assert_ne!(data[..65_536], data[65_536..131_072]);
    }

    #[test]
    fn the_report_has_one_column_per_key_type() {
        let measure = EnvelopeMeasures {
            key: "K",
            seal_mb_per_s: 1500.4,
            open_mb_per_s: 1400.0,
            writer_mb_per_s: 1000.0,
            reader_mb_per_s: 900.0,
            wrap_median: Duration::from_micros(40),
            unwrap_median: Duration::from_micros(2500),
            sign_median: Duration::from_micros(1200),
            verify_median: Duration::from_micros(30),
        };
        let report = envelope_report(256, 50, &[measure.clone(), measure]);
        assert!(report.contains("| measure | K | K |\n|---|---|---|\n"), "{report}");
        assert!(
            report.contains("| seal (`seal`: reads into the chunk buffer), MB/s | 1500 | 1500 |")
        );
        assert!(report.contains(
            "| open a blob: verify the signature, unwrap the data key (`OpeningReader::new`) | 2.50 ms | 2.50 ms |"
        ));
        assert!(report.contains(
            "| start a blob: wrap a data key, sign the header (`SealingWriter::new`) | 40 µs | 40 µs |"
        ));
        assert!(
            report.contains("| sign a header alone (`PoolPrivateKey::sign`) | 1.20 ms | 1.20 ms |")
        );
        assert!(report.contains("| verify a header signature alone | 30 µs | 30 µs |"));
    }
}
