//! `cargo bench -p gantry-bench --bench pod`: building a run pod's Pod and Secret from an
//! assignment, for a minimal WorkerPool and one using every `spec.pod` option.

fn main() -> anyhow::Result<()> {
    let measures = gantry_bench::pod_spec(200, 100)?;
    print!("{}", gantry_bench::pod_spec_report(200, 100, &measures));
    Ok(())
}
