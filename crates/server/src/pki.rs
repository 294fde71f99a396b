//! The server's certificate authority (created at first start and kept in the store, so
//! every replica shares it) and the TLS configuration of the listener.

use std::path::Path;
use std::sync::Arc;

use gantry_crypto::CertificateAuthority;
use gantry_domain::Timestamp;
use gantry_store::Store;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::StartError;
use crate::config::{TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE, TlsSource};
use crate::master_key::ServerSecrets;

const CA_SECRET: &str = "certificate-authority";

#[derive(Serialize, Deserialize)]
struct StoredAuthority {
    certificate_pem: String,
    private_key_pem: String,
}

/// The authority and what the listener presents.
pub(crate) struct Pki {
    pub ca: CertificateAuthority,
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA launchers must trust for the server's TLS certificate; copied into tokens.
    pub token_server_ca: Option<String>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("ca", &self.ca).finish_non_exhaustive()
    }
}

/// Loads the authority from the store (creating it at first start) and builds the TLS
/// configuration for `hostnames`.
pub(crate) async fn load(
    store: &dyn Store,
    secrets: &ServerSecrets,
    tls: &TlsSource,
    hostnames: &[String],
    now: Timestamp,
) -> Result<Pki, StartError> {
    let candidate =
        CertificateAuthority::generate("Gantry server CA").map_err(StartError::Crypto)?;
    let stored = StoredAuthority {
        certificate_pem: candidate.certificate().pem().to_owned(),
        private_key_pem: candidate.private_key_pem(),
    };
    let bytes = serde_json::to_vec(&stored).map_err(|e| StartError::Internal(e.to_string()))?;
    let kept = secrets.get_or_insert(store, CA_SECRET, &bytes, now).await?;
    let kept: StoredAuthority = serde_json::from_slice(&kept).map_err(|e| {
        StartError::Internal(format!("the stored certificate authority does not parse: {e}"))
    })?;
    let ca = CertificateAuthority::from_pem(&kept.certificate_pem, &kept.private_key_pem)
        .map_err(StartError::Crypto)?;

    let (chain_pem, key_pem, token_server_ca) = match tls {
        TlsSource::Generated { .. } => {
            let identity = ca.issue_server_certificate(hostnames).map_err(StartError::Crypto)?;
            (
                identity.certificate_chain_pem,
                identity.private_key_pem,
                Some(ca.certificate().pem().to_owned()),
            )
        }
        TlsSource::Files { cert_file, key_file, ca_file } => {
            let chain = read(TLS_CERT_FILE, cert_file)?;
            let key = read(TLS_KEY_FILE, key_file)?;
            let token_ca = ca_file.as_deref().map(|path| read(TLS_CA_FILE, path)).transpose()?;
            (chain, key, token_ca)
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            StartError::Tls(format!("{TLS_CERT_FILE}: the certificate chain does not parse: {e}"))
        })?;
    if chain.is_empty() {
        return Err(StartError::Tls(format!("{TLS_CERT_FILE}: no CERTIFICATE block found")));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| StartError::Tls(format!("{TLS_KEY_FILE}: no usable private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            StartError::Tls(format!("the TLS certificate and key do not work together: {e}"))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki { ca, tls: Arc::new(config), token_server_ca })
}

fn read(variable: &str, path: &Path) -> Result<String, StartError> {
    std::fs::read_to_string(path).map_err(|e| {
        StartError::Tls(format!("{variable}={}: cannot read the file: {e}", path.display()))
    })
}
