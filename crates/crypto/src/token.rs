//! The pool token: base64url of a JSON document carrying the server endpoint, the CA to
//! trust for it, the pool id and the pool's certificate. It holds no secret: without the
//! pool private key it grants nothing.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use crate::{Certificate, Error};

const FORMAT_VERSION: u32 = 1;

/// What a launcher needs to find and authenticate to its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolToken {
    #[serde(rename = "v")]
    pub version: u32,
    /// `https://host:port` of the server's agent plane.
    pub endpoint: String,
    /// PEM of the CA that signed the server's TLS certificate, when it is not publicly
    /// trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca: Option<String>,
    pub pool_id: String,
    /// PEM of the pool's client certificate.
    pub certificate: String,
}

impl PoolToken {
    pub fn new(
        endpoint: String,
        server_ca: Option<String>,
        pool_id: String,
        certificate: String,
    ) -> Self {
        Self { version: FORMAT_VERSION, endpoint, server_ca, pool_id, certificate }
    }

    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("a token serializes"))
    }

    /// Parses a token as `gantry pool create` printed it (whitespace and either base64
    /// alphabet tolerated) and checks that what it carries is usable.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        if compact.is_empty() {
            return Err(Error::MalformedToken("it is empty".to_owned()));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(compact.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(&compact))
            .map_err(|_| Error::MalformedToken("it is not base64".to_owned()))?;
        let token: Self = serde_json::from_slice(&bytes).map_err(|e| {
            Error::MalformedToken(format!("its JSON does not match the token format ({e})"))
        })?;
        if token.version != FORMAT_VERSION {
            return Err(Error::MalformedToken(format!(
                "format version {} is not supported (expected {FORMAT_VERSION}): use a launcher as new as the server",
                token.version
            )));
        }
        if !token.endpoint.starts_with("https://") {
            return Err(Error::MalformedToken(format!(
                "its endpoint {:?} is not an https:// address",
                token.endpoint
            )));
        }
        token.pool_certificate()?;
        if let Some(ca) = &token.server_ca {
            Certificate::from_pem(ca).map_err(|e| {
                Error::MalformedToken(format!("its server CA does not parse ({e})"))
            })?;
        }
        Ok(token)
    }

    pub fn pool_certificate(&self) -> Result<Certificate, Error> {
        Certificate::from_pem(&self.certificate).map_err(|e| {
            Error::MalformedToken(format!("its pool certificate does not parse ({e})"))
        })
    }
}
