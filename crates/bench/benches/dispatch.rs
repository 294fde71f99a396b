//! `cargo bench -p gantry-bench`: the dispatch benchmark with 20 runs (needs the release
//! binaries: `cargo build --release --workspace --bins`).

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let latencies = runtime.block_on(gantry_bench::dispatch(20))?;
    print!("{}", gantry_bench::report(&latencies));
    Ok(())
}
