//! `gantry server`: the control plane. Configuration from a TOML file, `GANTRY_SERVER_*`
//! variables and flags (flags win), validated before the port is bound.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use gantry_server::config::{
    BLOB_STORE, DATA_DIR, DATABASE, LISTEN, MASTER_KEY_FILE, METRICS_LISTEN, PUBLIC_URL,
    S3_ALLOW_HTTP, S3_ENDPOINT, S3_REGION,
};
use gantry_server::{CA_FILE, Server, ServerConfig};

use super::signals::{StopSignals, init_tracing};
use super::{Outcome, UsageError};

const AFTER_HELP: &str = "\
Every setting can also come from a GANTRY_SERVER_* variable or the TOML file; see
docs/configuration.md. At first start the server creates its certificate authority and
prints an admin API key once: store it. Clients trust <data dir>/server-ca.pem. The
server's secrets are sealed in the database with a master key kept outside it:
GANTRY_SERVER_MASTER_KEY_FILE (or GANTRY_SERVER_MASTER_KEY, base64), else <data
dir>/master.key, generated at first start. Rotate it with gantry server rotate-master-key.

Examples:
  gantry server --data-dir /var/lib/gantry --listen 0.0.0.0:8443 \\
                --public-url https://gantry.example.com:8443
  GANTRY_SERVER_LISTEN=0.0.0.0:8443 gantry server --config /etc/gantry/gantry.toml
  gantry server --metrics-listen 127.0.0.1:9464
  PGPASSWORD=... gantry server --database postgres://gantry@db.internal/gantry \
                --blob-store s3://gantry-blobs/prod   # one of several replicas
  AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \\
    gantry server --blob-store s3://gantry-blobs/prod --s3-region eu-west-1

Stop with SIGTERM or Ctrl-C: requests in flight may finish; a second signal exits now.";

#[derive(Debug, Default, Args)]
#[command(after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Address and port to listen on [env: GANTRY_SERVER_LISTEN] [default: 127.0.0.1:8443]
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// The https:// address launchers and users reach, written into pool tokens
    /// [env: GANTRY_SERVER_PUBLIC_URL] [default: https://<listen address>]
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Serve Prometheus metrics over plain HTTP at http://<ADDRESS>/metrics
    /// [env: GANTRY_SERVER_METRICS_LISTEN] [default: no metrics listener]
    #[arg(long, value_name = "ADDRESS")]
    pub metrics_listen: Option<String>,
    /// Where encrypted workspaces and state are kept: a directory, file:///dir or
    /// s3://bucket[/prefix] (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)
    /// [env: GANTRY_SERVER_BLOB_STORE] [default: <data dir>/blobs]
    #[arg(long, value_name = "LOCATION")]
    pub blob_store: Option<String>,
    /// An S3-compatible service's address (MinIO, Ceph, ...)
    /// [env: GANTRY_SERVER_S3_ENDPOINT] [default: AWS S3]
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The bucket's region [env: GANTRY_SERVER_S3_REGION] [default: us-east-1]
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Accept a plain http:// S3 endpoint [env: GANTRY_SERVER_S3_ALLOW_HTTP]
    #[arg(long)]
    pub s3_allow_http: bool,
}

/// Maintenance of a server's data, run where its configuration is.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Reseal every server secret in the database with a new master key, in one
    /// transaction
    #[command(after_help = ROTATE_AFTER_HELP)]
    RotateMasterKey(RotateMasterKeyArgs),
}

const ROTATE_AFTER_HELP: &str = "\
The current key comes from GANTRY_SERVER_MASTER_KEY_FILE or GANTRY_SERVER_MASTER_KEY (or
<data dir>/master.key), as for the server. Without --new-key-file a new key is generated
and replaces the current key's file. Servers already running keep working; restart every
replica with the new key (docs/security.md, \"Rotating the master key\").

Examples:
  gantry server rotate-master-key --data-dir /var/lib/gantry
  GANTRY_SERVER_MASTER_KEY_FILE=/etc/gantry/master.key \\
    gantry server rotate-master-key --database postgres://gantry@db/gantry \\
    --new-key-file /etc/gantry/master.key.2";

/// Where the server's configuration and data are: for the server and its maintenance.
#[derive(Debug, Default, Clone, Args)]
pub struct DataArgs {
    /// A TOML configuration file
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the server keeps its database [env: GANTRY_SERVER_DATA_DIR] [default: .gantry]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The database: postgres://user@host[:port]/db for several replicas (put a password
    /// in PGPASSWORD or GANTRY_SERVER_DATABASE, not on the command line), or
    /// sqlite:///path/gantry.db [env: GANTRY_SERVER_DATABASE] [default: <data dir>/gantry.db]
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct RotateMasterKeyArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Take the new key from this file (base64), or generate it into this file (mode
    /// 0600) if it does not exist [default: generate, and replace the current key's file]
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

/// Reseals the server secrets with a new master key and says where the key is.
async fn rotate_master_key(args: &RotateMasterKeyArgs) -> anyhow::Result<Outcome> {
    let config = resolve_config(&ServerArgs { data: args.data.clone(), ..ServerArgs::default() })?;
    let rotation = gantry_server::rotate_master_key(&config, args.new_key_file.as_deref()).await?;
    println!(
        "Resealed {} server secrets with the master key {} (was {}).",
        rotation.resealed, rotation.new_key_id, rotation.old_key_id
    );
    println!(
        "The new key is in {}: give it to every replica ({MASTER_KEY_FILE}) before it restarts; the old key opens nothing in this database any more.",
        rotation.key_file.display()
    );
    Ok(Outcome::Success)
}

/// The server configuration from the file, the environment and the flags.
fn resolve_config(args: &ServerArgs) -> anyhow::Result<ServerConfig> {
    let mut env: gantry_domain::options::Env = std::env::vars().collect();
    for (name, value) in [
        (DATA_DIR, args.data.data_dir.as_ref().map(|dir| dir.display().to_string())),
        (DATABASE, args.data.database.clone()),
        (LISTEN, args.listen.clone()),
        (PUBLIC_URL, args.public_url.clone()),
        (METRICS_LISTEN, args.metrics_listen.clone()),
        (BLOB_STORE, args.blob_store.clone()),
        (S3_ENDPOINT, args.s3_endpoint.clone()),
        (S3_REGION, args.s3_region.clone()),
        (S3_ALLOW_HTTP, args.s3_allow_http.then(|| "true".to_owned())),
    ] {
        if let Some(value) = value {
            env.insert(name.to_owned(), value);
        }
    }
    let file = match &args.data.config {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!("cannot read the configuration file {}: {e}", path.display()))
            })?,
        )),
        None => None,
    };
    ServerConfig::resolve(file.as_ref().map(|(path, text)| (path.as_str(), text.as_str())), &env)
        .map_err(|e| UsageError(e.to_string()).into())
}

pub async fn run(args: &ServerArgs) -> anyhow::Result<Outcome> {
    if let Some(ServerCommand::RotateMasterKey(rotate)) = &args.command {
        return rotate_master_key(rotate).await;
    }
    init_tracing("info");
    let config = resolve_config(args)?;
    let data_dir = config.data_dir.clone();
    let stop = StopSignals::listen()?;
    let mut server = Server::start(config).await?;
    println!("Gantry server listening on {}", server.public_url());
    println!("Clients trust the CA in {}", data_dir.join(CA_FILE).display());
    if let Some(path) = server.generated_master_key() {
        println!("{}", generated_master_key_notice(path));
    }
    if let Some(key) = server.take_initial_admin_key() {
        println!("Admin API key (shown only this once; store it now): {key}");
    }
    if let Some(address) = server.metrics_addr() {
        println!("Prometheus metrics at http://{address}/metrics");
    }
    let immediate = stop.immediate.clone();
    tokio::select! {
        served = server.serve(stop.graceful.cancelled_owned()) => served?,
        () = immediate.cancelled() => eprintln!("gantry: stopped at once"),
    }
    Ok(Outcome::Success)
}

/// What `gantry server` and `gantry up` say when a start generated the master key.
pub(crate) fn generated_master_key_notice(path: &std::path::Path) -> String {
    format!(
        "Generated the server's master key into {}: back it up apart from the database (which it unlocks); every replica needs it ({MASTER_KEY_FILE})",
        path.display()
    )
}
