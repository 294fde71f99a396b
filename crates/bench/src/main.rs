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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().benchmark {
        Benchmark::Dispatch { runs } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let latencies = gantry_bench::dispatch(runs).await?;
            print!("{}", gantry_bench::report(&latencies));
        }
    }
    Ok(())
}
