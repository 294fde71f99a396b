//! `gantry worker list|drain|undrain`: the worker slots of every pool, or of one, and
//! draining one.

use clap::Subcommand;
use gantry_domain::WorkerId;

use super::pool::pool_names;
use super::{Context, Outcome};
use crate::output::{self, print_json};

#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// List workers: status, current run, metadata tags, launcher version, last contact
    #[command(after_help = "\
A worker is one slot of a launcher: it processes one run at a time. IDLE workers wait for
runs, BUSY ones run one, DRAINED ones accept no new run. Tags come from the launcher's
GANTRY_METADATA_* variables.

Examples:
  gantry worker list
  gantry worker list --pool build --output json")]
    List {
        /// Only the workers of this pool (name or id)
        #[arg(long)]
        pool: Option<String>,
    },
    /// Drain a worker: it finishes its run and takes no new one
    Drain {
        /// Worker id
        worker: WorkerId,
    },
    /// Undrain a worker: it takes runs again, at once
    Undrain {
        /// Worker id
        worker: WorkerId,
    },
}

pub async fn run(context: &Context, command: &WorkerCommand) -> anyhow::Result<Outcome> {
    match command {
        WorkerCommand::List { pool } => list(context, pool.as_deref()).await,
        WorkerCommand::Drain { worker } => drain(context, *worker, true).await,
        WorkerCommand::Undrain { worker } => drain(context, *worker, false).await,
    }
}

async fn drain(context: &Context, worker: WorkerId, drained: bool) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let result = client.drain_worker(worker, drained).await?;
    if context.is_json() {
        print_json(&result)?;
    } else {
        for worker in &result.workers {
            println!("Worker {} is {}.", worker.id, worker.status);
        }
    }
    Ok(Outcome::Success)
}

async fn list(context: &Context, pool: Option<&str>) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let workers = match pool {
        Some(pool) => client.list_pool_workers(pool).await?,
        None => client.list_workers().await?,
    };
    if context.is_json() {
        print_json(&workers)?;
        return Ok(Outcome::Success);
    }
    // Workers only carry their pool's id; people know pools by name.
    let names = pool_names(&client.list_pools().await?.pools);
    print!("{}", output::workers_table(&workers.workers, &names, output::now()));
    Ok(Outcome::Success)
}
