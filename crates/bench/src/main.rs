//! `gantry-bench`: Gantry's benchmarks through real components. Build in release mode:
//! `cargo build --release --workspace --bins && target/release/gantry-bench dispatch`
//! (or `envelope`, `fleet`, `pod-spec`).

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
        /// Run each worker in a container (the docker executor) instead of a child process
        #[arg(long)]
        docker: bool,
        /// The runner image with --docker; by default one assembled and imported here
        /// from busybox-static, the host's terraform and the worker's libraries
        #[arg(long, requires = "docker")]
        image: Option<String>,
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
    /// Building a run pod as the Kubernetes operator does: the Pod and Secret from an
    /// assignment and a WorkerPool, alone and serialized to JSON, on one thread
    PodSpec {
        /// Batches to time (the table shows the batches' per-pod means)
        #[arg(long, default_value_t = 200)]
        batches: usize,
        /// Pods built per batch
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
    },
    /// Dispatch at scale: `gantry server` processes (next to this binary) on SQLite or
    /// PostgreSQL, a fleet of simulated launchers in long-poll, no-op runs; latency,
    /// throughput, CPU, memory
    Fleet {
        /// The servers' store: SQLite in the server's data directory, or a durable
        /// PostgreSQL cluster started for the benchmark (initdb and pg_ctl on PATH)
        #[arg(long, value_enum, default_value_t = gantry_bench::FleetDatabase::Sqlite)]
        database: gantry_bench::FleetDatabase,
        /// Server replicas on the one database (more than one needs --database
        /// postgres): launchers are spread over them in turn, and so are triggers
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Simulated launchers, each with its own session and HTTPS connection
        #[arg(long, default_value_t = 100)]
        launchers: usize,
        /// Worker slots per launcher (1 to 64)
        #[arg(long, default_value_t = 10)]
        slots: usize,
        /// Runs timed one at a time with the fleet idle
        #[arg(long, default_value_t = 500)]
        latency_runs: usize,
        /// Runs triggered as fast as the API accepts them
        #[arg(long, default_value_t = 2000)]
        throughput_runs: usize,
        /// Stacks the runs are spread over
        #[arg(long, default_value_t = 10)]
        stacks: usize,
        /// Concurrent tasks triggering runs in the throughput phase: enough to find the
        /// server's capacity, as triggers from many users and webhooks would
        #[arg(long, default_value_t = 32)]
        triggering_tasks: usize,
        /// Keep the server's data directory and log (set GANTRY_LOG for its log filter)
        #[arg(long)]
        keep_server_data: bool,
        /// Load pg_stat_statements into the PostgreSQL cluster and time its WAL flushes:
        /// list each phase's statements by execution time (--database postgres)
        #[arg(long)]
        database_stats: bool,
    },
    /// Worker scale-out as the Kubernetes operator does it: an Ed25519 identity per
    /// worker and registration with a server on loopback (goal: 1,000 workers a second)
    Workers {
        /// Workers per scale-out
        #[arg(long, default_value_t = 1000)]
        workers: usize,
        /// Scale-outs to time (all on one pool)
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().benchmark {
        Benchmark::Dispatch { runs, docker, image } => {
            anyhow::ensure!(runs > 0, "--runs must be at least 1");
            let executor = match docker {
                true => gantry_bench::DispatchExecutor::Docker { image },
                false => gantry_bench::DispatchExecutor::Process,
            };
            // Only the dispatch benchmark needs a runtime; the envelope one runs on this
            // thread alone.
            let runtime = tokio::runtime::Runtime::new()?;
            let latencies = runtime.block_on(gantry_bench::dispatch(runs, &executor))?;
            print!("{}", gantry_bench::report(&latencies));
        }
        Benchmark::Envelope { size_mib, samples } => {
            anyhow::ensure!(size_mib > 0, "--size-mib must be at least 1");
            anyhow::ensure!(samples > 0, "--samples must be at least 1");
            let measures = gantry_bench::envelope(size_mib, samples)?;
            print!("{}", gantry_bench::envelope_report(size_mib, samples, &measures));
        }
        Benchmark::Workers { workers, rounds } => {
            anyhow::ensure!(workers > 0 && rounds > 0, "--workers and --rounds must be at least 1");
            let runtime = tokio::runtime::Runtime::new()?;
            let measures = runtime.block_on(gantry_bench::workers(workers, rounds))?;
            print!("{}", gantry_bench::workers_report(workers, &measures));
        }
        Benchmark::Fleet {
            database,
            replicas,
            launchers,
            slots,
            latency_runs,
            throughput_runs,
            stacks,
            triggering_tasks,
            keep_server_data,
            database_stats,
        } => {
            let options = gantry_bench::FleetOptions {
                database,
                replicas,
                launchers,
                slots,
                latency_runs,
                throughput_runs,
                stacks,
                triggering_tasks,
                keep_server_data,
                database_stats,
            };
            options.validate()?;
            let runtime = tokio::runtime::Runtime::new()?;
            let measures = runtime.block_on(gantry_bench::fleet(&options))?;
            print!("{}", gantry_bench::fleet_report(&measures));
        }
        Benchmark::PodSpec { batches, batch_size } => {
            anyhow::ensure!(
                batches > 0 && batch_size > 0,
                "--batches and --batch-size must be at least 1"
            );
            let measures = gantry_bench::pod_spec(batches, batch_size)?;
            print!("{}", gantry_bench::pod_spec_report(batches, batch_size, &measures));
        }
    }
    Ok(())
}
