//! Registry credentials for pulling runner images (`GANTRY_DOCKER_CONFIG_DIR`): the
//! `auths` of a Docker client configuration (`config.json`, as `docker login` writes
//! it), matched to an image by its registry. Credential helpers are not run.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

pub const DOCKER_CONFIG_DIR: &str = "GANTRY_DOCKER_CONFIG_DIR";

/// Docker Hub's key in `auths`.
const DOCKER_HUB: &str = "https://index.docker.io/v1/";

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{DOCKER_CONFIG_DIR}={dir}: {problem}")]
pub struct RegistryAuthError {
    pub dir: String,
    pub problem: String,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// Credentials per registry host.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    /// Registry host (`docker.io` for Docker Hub) → user, password or identity token.
    registries: BTreeMap<String, Login>,
}

#[derive(Clone, PartialEq, Eq)]
struct Login {
    address: String,
    username: Option<String>,
    password: Option<String>,
    identity_token: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registries", &self.registries.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RegistryAuth {
    /// Reads `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self, RegistryAuthError> {
        let error = |problem: String| RegistryAuthError { dir: dir.display().to_string(), problem };
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
        let config: ConfigFile = serde_json::from_str(&text).map_err(|e| {
            error(format!("{} is not a Docker client configuration: {e}", path.display()))
        })?;
        let mut registries = BTreeMap::new();
        for (address, entry) in config.auths {
            let (username, password) = match (&entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|bytes| String::from_utf8(bytes).ok())
                        .and_then(|pair| {
                            pair.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))
                        })
                        .ok_or_else(|| {
                            error(format!("the auth of {address} is not base64 of user:password"))
                        })?;
                    (Some(decoded.0), Some(decoded.1))
                }
                (None, username, password) => (username, password),
            };
            registries.insert(
                host_of(&address),
                Login { address, username, password, identity_token: entry.identitytoken },
            );
        }
        Ok(Self { registries })
    }

    /// The credentials for pulling `image`, if its registry has any.
    pub fn for_image(&self, image: &str) -> Option<DockerCredentials> {
        let login = self.registries.get(&registry_of(image))?;
        Some(DockerCredentials {
            username: login.username.clone(),
            password: login.password.clone(),
            identitytoken: login.identity_token.clone(),
            serveraddress: Some(login.address.clone()),
            ..DockerCredentials::default()
        })
    }
}

/// The registry host an image is pulled from: its first path component when that names
/// a host (has a dot or a port, or is `localhost`), else Docker Hub.
fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// The host an `auths` key names: `https://registry.example.com/v1/` → `registry.example.com`.
fn host_of(address: &str) -> String {
    if address == DOCKER_HUB || address == "docker.io" || address == "index.docker.io" {
        return "docker.io".to_owned();
    }
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<RegistryAuth, RegistryAuthError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        RegistryAuth::load(dir.path())
    }

    #[test]
    fn images_get_the_credentials_of_their_registry() {
        let user_pass = base64::engine::general_purpose::STANDARD.encode("robot:s3cret");
        let auth = load(&format!(
            r#"{{"auths": {{
                "registry.example.com:5000": {{"auth": "{user_pass}"}},
                "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}
            }}}}"#
        ))
        .unwrap();
        let private = auth.for_image("registry.example.com:5000/team/runner:1").unwrap();
        assert_eq!(private.username.as_deref(), Some("robot"));
        assert_eq!(private.password.as_deref(), Some("s3cret"));
        assert_eq!(private.serveraddress.as_deref(), Some("registry.example.com:5000"));
        let hub = auth.for_image("library/alpine:3").unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert_eq!(auth.for_image("alpine").unwrap().username.as_deref(), Some("hub"));
        assert!(auth.for_image("ghcr.io/org/image:1").is_none());
        assert!(!format!("{auth:?}").contains("s3cret"), "no secret in debug output");
    }

    #[test]
    fn a_configuration_that_cannot_be_read_is_refused_with_the_reason() {
        let error = load("{not json").unwrap_err();
        assert!(error.problem.contains("is not a Docker client configuration"), "{error}");
        let error = load(r#"{"auths": {"r.example.com": {"auth": "%%%"}}}"#).unwrap_err();
        assert!(error.problem.contains("not base64 of user:password"), "{error}");
        let missing = RegistryAuth::load(Path::new("/nonexistent/docker")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("GANTRY_DOCKER_CONFIG_DIR=/nonexistent/docker: cannot read")
        );
        assert_eq!(load("{}").unwrap(), RegistryAuth::default());
    }
}
