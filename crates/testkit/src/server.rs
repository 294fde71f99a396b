//! A real Gantry server for tests: its own data directory, a loopback port chosen by the
//! kernel, TLS from its own CA, and the first admin key.

use std::sync::Arc;

use gantry_server::{Server, ServerConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A pool [`TestServer::create_pool`] made: its token and its private key (PEM).
#[derive(Debug, Clone)]
pub struct CreatedPool {
    pub token: String,
    pub private_key_pem: String,
}

/// A running server; dropping it stops the server.
#[derive(Debug)]
pub struct TestServer {
    pub url: String,
    pub admin_key: String,
    pub ca_pem: String,
    pub data_dir: Arc<tempfile::TempDir>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with fast liveness timings and a fresh data directory.
    pub async fn start() -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().expect("a temporary directory")), &[]).await
    }

    /// Starts a server on `data_dir` with extra `GANTRY_SERVER_*` settings.
    pub async fn start_in(data_dir: Arc<tempfile::TempDir>, settings: &[(&str, &str)]) -> Self {
        crate::install_crypto_provider();
        let mut env: gantry_domain::options::Env =
            settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.insert("GANTRY_SERVER_DATA_DIR".into(), data_dir.path().display().to_string());
        env.entry("GANTRY_SERVER_LISTEN".into()).or_insert_with(|| "127.0.0.1:0".into());
        let config = ServerConfig::resolve(None, &env).expect("test settings are valid");
        let mut server = Server::start(config).await.expect("the test server starts");
        let admin_key = server.take_initial_admin_key().unwrap_or_default();
        let url = server.public_url().to_owned();
        let ca_pem = server.ca_certificate_pem().to_owned();
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            server.serve(signal.cancelled_owned()).await.expect("the test server serves");
        });
        Self { url, admin_key, ca_pem, data_dir, stop, task: Some(task) }
    }

    /// An HTTPS client that trusts the server's CA.
    pub fn http(&self) -> reqwest::Client {
        let ca =
            reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("the server CA parses");
        reqwest::Client::builder().tls_certs_only([ca]).build().expect("the client builds")
    }

    /// Creates a private pool named `name` from a freshly generated P-256 key, through
    /// the REST API as an admin would.
    pub async fn create_pool(&self, name: &str) -> CreatedPool {
        let key = gantry_crypto::generate_pool_key(name).expect("a pool key");
        let created: serde_json::Value = self
            .http()
            .post(format!("{}/api/v1/pools", self.url))
            .bearer_auth(&self.admin_key)
            .json(&serde_json::json!({ "name": name, "csr": key.csr_pem }))
            .send()
            .await
            .expect("the server answers")
            .error_for_status()
            .expect("the pool is created")
            .json()
            .await
            .expect("the answer is JSON");
        CreatedPool {
            token: created["token"].as_str().expect("a token").to_owned(),
            private_key_pem: key.private_key_pem,
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
