//! `cargo bench -p gantry-bench --bench envelope`: sealing and opening a 256 MiB stream on
//! one thread, and the median of 50 data-key wraps and unwraps, for RSA-4096 and P-256.

fn main() -> anyhow::Result<()> {
    let measures = gantry_bench::envelope(256, 50)?;
    print!("{}", gantry_bench::envelope_report(256, 50, &measures));
    Ok(())
}
