//! Worker scale-out as the Kubernetes operator does it: an Ed25519 identity per worker,
//! then registration with a real server (in this process, HTTPS on loopback, SQLite) in
//! the operator's batches. The goal is 1,000 workers a second, identity included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gantry_crypto::{PoolPrivateKey, PoolToken};
use gantry_domain::LauncherId;
use gantry_launcher::AgentClient;
use gantry_operator::identity::{IDENTITY_METADATA, WorkerIdentity};
use gantry_proto::agent::{LauncherInfo, PROTOCOL_VERSION, WorkerRegistration};

/// The operator registers at most this many workers per request (the server's limit).
const BATCH: usize = 256;

/// One scale-out of `workers` workers.
#[derive(Debug, Clone, Copy)]
pub struct ScaleOut {
    pub identities: Duration,
    pub registration: Duration,
}

impl ScaleOut {
    fn total(&self) -> Duration {
        self.identities + self.registration
    }
}

/// `rounds` scale-outs of `workers` each, on one pool of a fresh server.
pub async fn workers(workers: usize, rounds: usize) -> anyhow::Result<Vec<ScaleOut>> {
    let server = gantry_testkit::TestServer::start().await;
    let created = server.create_pool("bench").await;
    let token = PoolToken::decode(&created.token).context("the pool's token")?;
    let private_key = Arc::new(PoolPrivateKey::from_pem(&created.private_key_pem)?);
    let info = LauncherInfo {
        id: LauncherId::generate(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: "bench".to_owned(),
        protocol_version: PROTOCOL_VERSION,
    };
    let client = AgentClient::for_pool(&token, private_key, info)?;
    client.connect().await?;
    let mut measures = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let identities =
            (0..workers).map(|_| WorkerIdentity::generate()).collect::<Result<Vec<_>, _>>()?;
        let generated = started.elapsed();
        let registering = Instant::now();
        for batch in identities.chunks(BATCH) {
            let registrations = batch
                .iter()
                .map(|identity| WorkerRegistration {
                    previous_id: None,
                    metadata: BTreeMap::from([(
                        IDENTITY_METADATA.to_owned(),
                        identity.fingerprint.clone(),
                    )]),
                })
                .collect();
            let registered = client.register_workers(registrations).await?;
            anyhow::ensure!(registered.worker_ids.len() == batch.len(), "workers went missing");
        }
        measures.push(ScaleOut { identities: generated, registration: registering.elapsed() });
    }
    server.stop().await;
    Ok(measures)
}

pub fn workers_report(workers: usize, measures: &[ScaleOut]) -> String {
    let mut text = format!(
        "Scale-out of {workers} workers: Ed25519 identities, then registration in batches of {BATCH}\n"
    );
    text.push_str("round  identities  registration  total     workers/s\n");
    for (round, measure) in measures.iter().enumerate() {
        let rate = workers as f64 / measure.total().as_secs_f64();
        text.push_str(&format!(
            "{:>5}  {:>8.1}ms  {:>10.1}ms  {:>7.1}ms  {:>9.0}\n",
            round + 1,
            measure.identities.as_secs_f64() * 1e3,
            measure.registration.as_secs_f64() * 1e3,
            measure.total().as_secs_f64() * 1e3,
            rate
        ));
    }
    text
}
