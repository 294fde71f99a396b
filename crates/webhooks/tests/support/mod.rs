//! What the webhook test binaries share: the recorded payloads under tests/fixtures,
//! headers built from pairs, and bodies signed the way each provider signs them.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use aws_lc_rs::hmac;
use gantry_webhooks::Provider;

pub(crate) const SECRET: &[u8] = b"It's a Secret to Everybody";

/// A recorded payload, `provider/event.json` under tests/fixtures.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

pub(crate) fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub(crate) fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hex::encode(hmac::sign(&key, body).as_ref())
}

/// The header by which `provider` proves a delivery of `body` was sent with `secret`.
pub(crate) fn signature(provider: Provider, body: &[u8], secret: &[u8]) -> (String, String) {
    let (name, value) = match provider {
        Provider::GitHub => ("X-Hub-Signature-256", format!("sha256={}", hmac_hex(secret, body))),
        Provider::GitLab => ("X-Gitlab-Token", String::from_utf8(secret.to_vec()).unwrap()),
        Provider::Gitea => ("X-Gitea-Signature", hmac_hex(secret, body)),
        Provider::Bitbucket => ("X-Hub-Signature", format!("sha256={}", hmac_hex(secret, body))),
    };
    (name.to_owned(), value)
}

/// The headers of a delivery of `event`, signed with [`SECRET`].
pub(crate) fn delivery(provider: Provider, event: &str, body: &[u8]) -> Vec<(String, String)> {
    vec![(provider.event_header().to_owned(), event.to_owned()), signature(provider, body, SECRET)]
}
