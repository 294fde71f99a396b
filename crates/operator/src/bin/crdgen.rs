//! Prints the operator's CustomResourceDefinitions as YAML, or writes them to each file
//! given as an argument: `deploy/crds/workers.gantry.dev.yaml` and the Helm chart's copy,
//! `deploy/helm/gantry-operator/files/workers.gantry.dev.yaml`, are made so.

fn main() -> anyhow::Result<()> {
    let yaml = gantry_operator::crd::definitions_yaml();
    let paths = std::env::args_os().skip(1).collect::<Vec<_>>();
    if paths.is_empty() {
        print!("{yaml}");
    }
    for path in paths {
        std::fs::write(&path, &yaml).map_err(|error| {
            anyhow::anyhow!("cannot write {}: {error}", std::path::Path::new(&path).display())
        })?;
    }
    Ok(())
}
