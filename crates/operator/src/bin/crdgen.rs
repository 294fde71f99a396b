//! Prints the operator's CustomResourceDefinitions as YAML, or writes them to the file
//! given as the only argument (`deploy/crds/workers.gantry.dev.yaml` is made so).

fn main() -> anyhow::Result<()> {
    let yaml = gantry_operator::crd::definitions_yaml();
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(&path, yaml).map_err(|error| {
            anyhow::anyhow!("cannot write {}: {error}", std::path::Path::new(&path).display())
        }),
        None => {
            print!("{yaml}");
            Ok(())
        }
    }
}
