//! `cargo bench -p gantry-bench --bench dispatch`: the dispatch benchmark with 20 runs,
//! with the process executor and then the docker executor (needs the release binaries,
//! `cargo build --release --workspace --bins`, and a Docker daemon).

use gantry_bench::DispatchExecutor;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    for (name, executor) in [
        ("process", DispatchExecutor::Process),
        ("docker", DispatchExecutor::Docker { image: None }),
    ] {
        let latencies = runtime.block_on(gantry_bench::dispatch(20, &executor))?;
        println!("executor: {name}\n");
        print!("{}", gantry_bench::report(&latencies));
    }
    Ok(())
}
