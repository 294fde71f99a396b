//! Whether a delivery comes from the holder of the repository's webhook secret, checked
//! the provider's way and in constant time, so that the time a refusal takes tells an
//! attacker nothing about the secret.

use aws_lc_rs::{constant_time, digest, hmac};

use crate::provider::{Headers, Provider};

/// Why a delivery's signature does not prove it was sent with the repository's secret.
/// Neither the secret nor the signature is ever part of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "no {header} header: the delivery is not signed, so the webhook has no secret; \
         give it the repository's webhook secret"
    )]
    Missing { header: &'static str },
    #[error("the {header} header is malformed: expected {expected}")]
    Malformed { header: &'static str, expected: &'static str },
    #[error("the {header} header does not match the repository's webhook secret")]
    Mismatch { header: &'static str },
}

const HUB_SIGNATURE_256: &str = "X-Hub-Signature-256";
const GITLAB_TOKEN: &str = "X-Gitlab-Token";
const GITEA_SIGNATURE: &str = "X-Gitea-Signature";
const BITBUCKET_SIGNATURE: &str = "X-Hub-Signature";

const PREFIXED_HEX: &str = "sha256= followed by the 64 hex digits of the body's HMAC-SHA256";
const BARE_HEX: &str = "the 64 hex digits of the body's HMAC-SHA256";
const ONE_HEADER: &str = "one such header, not several";
const PRINTABLE_TOKEN: &str = "the secret token as printable text";

/// Checks the delivery was sent by the holder of `secret`, the provider's way, in
/// constant time: GitHub `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of body>`; Gitea
/// `X-Gitea-Signature: <hex>` (or `X-Hub-Signature-256`, which it sends too); GitLab
/// `X-Gitlab-Token: <secret>`; Bitbucket Cloud `X-Hub-Signature: sha256=<hex>`. An empty
/// secret matches nothing: a signature made with it proves nothing.
pub fn verify(
    provider: Provider,
    headers: &Headers<'_>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    match provider {
        Provider::GitHub => verify_hmac(headers, HUB_SIGNATURE_256, Some("sha256="), body, secret),
        Provider::Bitbucket => {
            verify_hmac(headers, BITBUCKET_SIGNATURE, Some("sha256="), body, secret)
        }
        Provider::Gitea => {
            // Without a secret Gitea still sends its signature headers, empty ("sha256=" for
            // the GitHub-style one): both count as missing.
            let has_own = headers.non_blank(GITEA_SIGNATURE).is_some();
            let has_hub =
                headers.non_blank(HUB_SIGNATURE_256).is_some_and(|value| value != "sha256=");
            if !has_own && has_hub {
                verify_hmac(headers, HUB_SIGNATURE_256, Some("sha256="), body, secret)
            } else {
                verify_hmac(headers, GITEA_SIGNATURE, None, body, secret)
            }
        }
        Provider::GitLab => verify_token(headers, secret),
    }
}

/// The one value of `header`, refusing a request that carries it several times: which of
/// them a proxy in front of the server would have used is anybody's guess.
fn single<'a>(headers: &Headers<'a>, header: &'static str) -> Result<&'a str, SignatureError> {
    let mut values = headers.all(header).filter(|value| !value.trim().is_empty());
    let value = values.next().ok_or(SignatureError::Missing { header })?;
    if values.next().is_some() {
        return Err(SignatureError::Malformed { header, expected: ONE_HEADER });
    }
    Ok(value)
}

fn verify_hmac(
    headers: &Headers<'_>,
    header: &'static str,
    prefix: Option<&str>,
    body: &[u8],
    secret: &[u8],
) -> Result<(), SignatureError> {
    let value = single(headers, header)?.trim();
    let expected = if prefix.is_some() { PREFIXED_HEX } else { BARE_HEX };
    let malformed = SignatureError::Malformed { header, expected };
    let digits = match prefix {
        Some(prefix) => strip_prefix_ignore_case(value, prefix).ok_or(malformed.clone())?,
        None => value,
    };
    if digits.is_empty() && prefix.is_some() {
        return Err(SignatureError::Missing { header });
    }
    let mut tag = [0u8; 32];
    hex::decode_to_slice(digits, &mut tag).map_err(|_| malformed)?;
    if secret.is_empty() {
        return Err(SignatureError::Mismatch { header });
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, body, &tag).map_err(|_| SignatureError::Mismatch { header })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &value[prefix.len()..])
}

fn verify_token(headers: &Headers<'_>, secret: &[u8]) -> Result<(), SignatureError> {
    let header = GITLAB_TOKEN;
    let token = single(headers, header)?;
    if token.chars().any(char::is_control) {
        return Err(SignatureError::Malformed { header, expected: PRINTABLE_TOKEN });
    }
    if secret.is_empty() {
        return Err(SignatureError::Mismatch { header });
    }
    // Comparing digests rather than the strings keeps the comparison's time independent of
    // the secret's length too: equal-length inputs are all `verify_slices_are_equal` takes
    // in constant time.
    let given = digest::digest(&digest::SHA256, token.as_bytes());
    let wanted = digest::digest(&digest::SHA256, secret);
    constant_time::verify_slices_are_equal(given.as_ref(), wanted.as_ref())
        .map_err(|_| SignatureError::Mismatch { header })
}
