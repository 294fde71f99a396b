//! A WorkerPool's pool credentials: the token and private key from the Secrets its spec
//! names, or, with `spec.registration`, a pool the operator creates on the server itself
//! (key generated here, token and key stored in a Secret it owns). Problems are named
//! precisely, never with a secret's value.

use std::collections::BTreeMap;
use std::sync::Arc;

use gantry_crypto::{PoolPrivateKey, PoolToken, generate_pool_key, sha256_hex};
use gantry_proto::api::{CreatePool, PoolCreated};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, SecretKeySelector};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};

use crate::crd::{Registration, WorkerPool};
use crate::pod::{
    CREDENTIALS_PRIVATE_KEY_KEY as PRIVATE_KEY_KEY, CREDENTIALS_TOKEN_KEY as TOKEN_KEY,
};

/// What a session needs, checked to belong together.
#[derive(Clone)]
pub struct PoolCredentials {
    pub token: PoolToken,
    pub key: Arc<PoolPrivateKey>,
    /// Changes whenever the token or key does: a rotation starts a new session.
    pub fingerprint: String,
    /// Where run pods read them from.
    pub token_ref: SecretKeySelector,
    pub private_key_ref: SecretKeySelector,
}

impl std::fmt::Debug for PoolCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolCredentials")
            .field("pool_id", &self.token.pool_id)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Why a WorkerPool cannot join its pool. `reason` is the status condition's and the
/// event's reason; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CredentialProblem {
    pub reason: &'static str,
    pub message: String,
}

impl CredentialProblem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }
}

/// The credentials of the pool, creating the pool first when the spec asks for it.
pub async fn resolve(
    client: &kube::Client,
    pool: &WorkerPool,
) -> Result<PoolCredentials, CredentialProblem> {
    let namespace = pool.namespace().unwrap_or_else(|| "default".to_owned());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    match (&pool.spec.token, &pool.spec.private_key, &pool.spec.registration) {
        (Some(token), Some(key), _) => load(&secrets, token.clone(), key.clone()).await,
        (None, None, Some(registration)) => {
            let name = crate::pod::credentials_secret_name(pool);
            let token_ref = selector(&name, TOKEN_KEY);
            let key_ref = selector(&name, PRIVATE_KEY_KEY);
            match secrets.get_opt(&name).await.map_err(|e| unreachable_api(&name, &e))? {
                Some(_) => load(&secrets, token_ref, key_ref).await,
                None => {
                    register(&secrets, pool, registration, &name).await?;
                    load(&secrets, token_ref, key_ref).await
                }
            }
        }
        _ => Err(CredentialProblem::new(
            "InvalidSpec",
            "spec.token and spec.privateKey are given together, or neither with spec.registration",
        )),
    }
}

fn selector(name: &str, key: &str) -> SecretKeySelector {
    SecretKeySelector { name: name.to_owned(), key: key.to_owned(), optional: None }
}

async fn load(
    secrets: &Api<Secret>,
    token_ref: SecretKeySelector,
    key_ref: SecretKeySelector,
) -> Result<PoolCredentials, CredentialProblem> {
    let token_text = secret_value(secrets, &token_ref, "spec.token").await?;
    let key_text = secret_value(secrets, &key_ref, "spec.privateKey").await?;
    let token = PoolToken::decode(token_text.trim()).map_err(|e| {
        CredentialProblem::new(
            "InvalidToken",
            format!(
                "the token in Secret {}, key {} is not a Gantry pool token ({e})",
                token_ref.name, token_ref.key
            ),
        )
    })?;
    let certificate = token.pool_certificate().map_err(|e| {
        CredentialProblem::new(
            "InvalidToken",
            format!("the token in Secret {} carries no valid certificate ({e})", token_ref.name),
        )
    })?;
    let key = PoolPrivateKey::from_config_value(&key_text).map_err(|e| {
        CredentialProblem::new(
            "InvalidPrivateKey",
            format!(
                "Secret {}, key {} does not hold a pool private key in PEM, or base64 of one ({e})",
                key_ref.name, key_ref.key
            ),
        )
    })?;
    if !key.matches(&certificate) {
        return Err(CredentialProblem::new(
            "KeyMismatch",
            format!(
                "the private key in Secret {} is not the key pool {}'s certificate was issued for",
                key_ref.name, token.pool_id
            ),
        ));
    }
    let fingerprint = sha256_hex(
        format!("{}\n{}", token_text.as_str(), sha256_hex(key_text.as_bytes())).as_bytes(),
    );
    Ok(PoolCredentials {
        token,
        key: Arc::new(key),
        fingerprint,
        token_ref,
        private_key_ref: key_ref,
    })
}

async fn secret_value(
    secrets: &Api<Secret>,
    selector: &SecretKeySelector,
    field: &str,
) -> Result<zeroize::Zeroizing<String>, CredentialProblem> {
    let secret = secrets
        .get_opt(&selector.name)
        .await
        .map_err(|e| unreachable_api(&selector.name, &e))?
        .ok_or_else(|| {
            CredentialProblem::new(
                "SecretNotFound",
                format!("{field} names Secret {}, which does not exist", selector.name),
            )
        })?;
    let bytes = secret.data.as_ref().and_then(|data| data.get(&selector.key)).ok_or_else(|| {
        CredentialProblem::new(
            "SecretKeyNotFound",
            format!("Secret {} has no key {} ({field})", selector.name, selector.key),
        )
    })?;
    String::from_utf8(bytes.0.clone()).map(zeroize::Zeroizing::new).map_err(|_| {
        CredentialProblem::new(
            "InvalidSecret",
            format!("Secret {}, key {} is not text ({field})", selector.name, selector.key),
        )
    })
}

fn unreachable_api(name: &str, error: &kube::Error) -> CredentialProblem {
    CredentialProblem::new(
        "SecretUnreadable",
        format!("cannot read Secret {name} from the Kubernetes API: {error}"),
    )
}

/// Where pools are created on the server of `endpoint`. The API key travels with the
/// request, so it goes over TLS, or in clear only to this machine's loopback address.
fn pools_url(endpoint: &str) -> Result<String, CredentialProblem> {
    let refuse = |why: &str| {
        CredentialProblem::new(
            "InsecureEndpoint",
            format!("spec.registration.endpoint {endpoint:?} {why}"),
        )
    };
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| refuse(&format!("is not a URL ({e}): expected https://HOST[:PORT]")))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(refuse(
                "is plain http:// to another machine: the operator's API key would cross the network in clear; use https://",
            ));
        }
        _ => return Err(refuse("is not an https:// URL")),
    }
    Ok(format!("{}/api/v1/pools", endpoint.trim_end_matches('/')))
}

/// Creates the pool on the server with a key generated here, and stores the token and
/// key in the Secret `name` before anything else can be lost.
async fn register(
    secrets: &Api<Secret>,
    pool: &WorkerPool,
    registration: &Registration,
    name: &str,
) -> Result<(), CredentialProblem> {
    // Refused before the API key is even read.
    pools_url(&registration.endpoint)?;
    let api_key = secret_value(secrets, &registration.api_key, "spec.registration.apiKey").await?;
    let server_ca = match &registration.server_ca {
        Some(selector) => {
            Some(secret_value(secrets, selector, "spec.registration.serverCa").await?)
        }
        None => None,
    };
    let pool_name = registration.pool_name.clone().unwrap_or_else(|| {
        format!("{}-{}", pool.namespace().unwrap_or_else(|| "default".to_owned()), pool.name_any())
    });
    let generated = generate_pool_key(&pool_name)
        .map_err(|e| CredentialProblem::new("KeyGenerationFailed", e.to_string()))?;
    let created = create_pool(
        registration,
        server_ca.as_deref().map(String::as_str),
        &api_key,
        CreatePool {
            name: pool_name.clone(),
            csr: generated.csr_pem,
            description: format!(
                "Kubernetes WorkerPool {}/{}",
                pool.namespace().unwrap_or_default(),
                pool.name_any()
            ),
            labels: vec!["kubernetes".to_owned()],
        },
    )
    .await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                crate::crd::LABEL_WORKER_POOL.to_owned(),
                pool.name_any(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (TOKEN_KEY.to_owned(), ByteString(created.token.into_bytes())),
            (PRIVATE_KEY_KEY.to_owned(), ByteString(generated.private_key_pem.into_bytes())),
        ])),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &secret).await.map_err(|e| {
        CredentialProblem::new(
            "CredentialsNotStored",
            format!(
                "pool {pool_name} was created on the server but its credentials could not be stored in Secret {name}: {e}; reset the pool (gantry pool reset) and delete the Secret to retry"
            ),
        )
    })?;
    tracing::info!(workerpool = %pool.name_any(), pool = %pool_name, secret = %name, "registered the pool on the server");
    Ok(())
}

async fn create_pool(
    registration: &Registration,
    server_ca: Option<&str>,
    api_key: &str,
    request: CreatePool,
) -> Result<PoolCreated, CredentialProblem> {
    let mut builder =
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(ca) = server_ca {
        let certificate = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| {
            CredentialProblem::new(
                "InvalidServerCa",
                format!("spec.registration.serverCa is not a PEM certificate: {e}"),
            )
        })?;
        builder = builder.tls_certs_only([certificate]);
    }
    let http =
        builder.build().map_err(|e| CredentialProblem::new("RegistrationFailed", e.to_string()))?;
    let url = pools_url(&registration.endpoint)?;
    let response = http
        .post(&url)
        .bearer_auth(api_key)
        .json(&request)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| {
            CredentialProblem::new("ServerUnreachable", format!("cannot reach {url}: {e}"))
        })?;
    let status = response.status();
    if status.is_success() {
        return response.json().await.map_err(|e| {
            CredentialProblem::new(
                "RegistrationFailed",
                format!("{url} answered something else than a created pool: {e}"),
            )
        });
    }
    let detail = response
        .json::<gantry_proto::api::ErrorResponse>()
        .await
        .map(|error| error.error.message)
        .unwrap_or_default();
    let reason = match status.as_u16() {
        401 | 403 => "RegistrationRefused",
        409 => "PoolNameTaken",
        _ => "RegistrationFailed",
    };
    Err(CredentialProblem::new(
        reason,
        format!("creating pool {} at {url} failed ({status}): {detail}", request.name),
    ))
}

#[cfg(test)]
mod tests {
    use super::pools_url;

    #[test]
    fn registration_sends_its_key_over_tls_or_to_this_machine_only() {
        for (endpoint, pools) in [
            ("https://gantry.example.com", "https://gantry.example.com/api/v1/pools"),
            ("https://gantry.example.com:8443/", "https://gantry.example.com:8443/api/v1/pools"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/api/v1/pools"),
            ("http://localhost:8080", "http://localhost:8080/api/v1/pools"),
            ("http://[::1]:8080", "http://[::1]:8080/api/v1/pools"),
        ] {
            assert_eq!(pools_url(endpoint).unwrap(), pools, "{endpoint}");
        }
        for (endpoint, why) in [
            ("http://gantry.example.com", "plain http:// to another machine"),
            ("http://10.0.0.5:8080", "plain http:// to another machine"),
            ("http://127.0.0.1.example.com", "plain http:// to another machine"),
            ("ftp://gantry.example.com", "is not an https:// URL"),
            ("gantry.example.com", "is not a URL"),
        ] {
            let problem = pools_url(endpoint).unwrap_err();
            assert_eq!(problem.reason, "InsecureEndpoint", "{endpoint}");
            assert!(problem.message.contains(why), "{endpoint}: {}", problem.message);
        }
    }
}
