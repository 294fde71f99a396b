//! `cargo bench -p gantry-bench --bench fleet`: 100 simulated launchers × 10 slots against
//! one `gantry server` process, 500 runs timed one at a time, 2,000 pushed through at once
//! (needs the release binaries: `cargo build --release --workspace --bins`).

fn main() -> anyhow::Result<()> {
    let options = gantry_bench::FleetOptions::default();
    let runtime = tokio::runtime::Runtime::new()?;
    let measures = runtime.block_on(gantry_bench::fleet(&options))?;
    print!("{}", gantry_bench::fleet_report(&measures));
    Ok(())
}
