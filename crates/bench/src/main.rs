//! `gantry-bench`: Gantry's benchmarks through real components. Build in release mode:
//! `cargo build --release --workspace --bins && target/release/gantry-bench dispatch`.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gantry-bench",
    about = "Benchmarks Gantry through a real server, launcher and worker"
)]
struct Cli {
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// Trigger-to-first-log-line latency with the process executor, over HTTPS on loopback
    Dispatch {
        /// How many runs to time, one after another
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Envelope sealing and opening throughput on one thread, and the per-blob key
    /// operations (wrap and sign, verify and unwrap), for RSA-4096 and P-256 pool keys
    Envelope {
        /// Size of the stream to seal and open, in MiB
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// How many of each key operation to time (the table shows the median)
        #[arg(long, default_value_t = 50)]
        samples: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().benchmark {
        Benchmark::Dispatch { runs } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            // Only the dispatch benchmark needs a runtime; the envelope one runs on this
            // thread alone.
            let runtime = tokio::runtime::Runtime::new()?;
            let latencies = runtime.block_on(gantry_bench::dispatch(runs))?;
            print!("{}", gantry_bench::report(&latencies));
        }
        Benchmark::Envelope { size_mib, samples } => {
            anyhow::ensure!(size_mib > 0, "--size-mib must be at least 1");
            anyhow::ensure!(samples > 0, "--samples must be at least 1");
            let measures = gantry_bench::envelope(size_mib, samples)?;
            print!("{}", gantry_bench::envelope_report(size_mib, samples, &measures));
        }
    }
    Ok(())
}
