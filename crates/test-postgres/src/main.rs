//! `gantry-test-postgres start DIR` starts a throwaway cluster in DIR and prints its URL;
//! `gantry-test-postgres stop DIR` stops it. The test command brackets the tests with them.

use std::path::Path;
use std::process::ExitCode;

use gantry_test_postgres::{Cluster, Durability, stop_cluster};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["start", dir] => Cluster::start(Path::new(dir), Durability::Throwaway).map(|cluster| {
            println!("{}", cluster.url());
            // The cluster outlives this process: `stop` ends it.
            std::mem::forget(cluster);
        }),
        ["stop", dir] => stop_cluster(Path::new(dir)),
        _ => {
            eprintln!("usage: gantry-test-postgres start DIR | stop DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
