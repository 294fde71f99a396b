//! The four providers, the request headers as the server hands them over, and each
//! provider's header names: which one says the event, which one signs, which one names
//! the delivery.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
    /// Bitbucket Cloud (bitbucket.org). Bitbucket Data Center sends other payloads.
    Bitbucket,
}

impl Provider {
    pub const ALL: [Provider; 4] =
        [Provider::GitHub, Provider::GitLab, Provider::Gitea, Provider::Bitbucket];

    /// The provider's name in configuration and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
        }
    }

    /// The provider's name as people write it, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Provider::GitHub => "GitHub",
            Provider::GitLab => "GitLab",
            Provider::Gitea => "Gitea",
            Provider::Bitbucket => "Bitbucket Cloud",
        }
    }

    /// The header that names the event a delivery carries.
    pub fn event_header(self) -> &'static str {
        match self {
            Provider::GitHub => "X-GitHub-Event",
            Provider::GitLab => "X-Gitlab-Event",
            Provider::Gitea => "X-Gitea-Event",
            Provider::Bitbucket => "X-Event-Key",
        }
    }

    /// The header that [`crate::verify`] reads first: the signature, or GitLab's token.
    pub fn signature_header(self) -> &'static str {
        match self {
            Provider::GitHub => "X-Hub-Signature-256",
            Provider::GitLab => "X-Gitlab-Token",
            Provider::Gitea => "X-Gitea-Signature",
            Provider::Bitbucket => "X-Hub-Signature",
        }
    }

    /// The headers that name a delivery, the preferred first.
    fn delivery_headers(self) -> &'static [&'static str] {
        match self {
            Provider::GitHub => &["X-GitHub-Delivery"],
            // `Idempotency-Key` (GitLab 17.4 and later) stays the same when a delivery is
            // sent again, while `X-Gitlab-Event-UUID` is made anew for each request that
            // triggers hooks, a resend from the webhook's page included: only the first
            // de-duplicates a resent delivery.
            Provider::GitLab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
            // Gitea writes the same id under its own name and Gogs' name.
            Provider::Gitea => &["X-Gitea-Delivery", "X-Gogs-Delivery"],
            // Not `X-Hook-UUID`: that names the webhook, the same for all its deliveries.
            Provider::Bitbucket => &["X-Request-UUID"],
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a VCS provider: expected github, gitlab, gitea or bitbucket")]
pub struct UnknownProvider(pub String);

impl FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(value: &str) -> Result<Self, UnknownProvider> {
        let name = value.trim();
        Self::ALL
            .into_iter()
            .find(|provider| provider.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownProvider(value.to_owned()))
    }
}

/// A delivery's request headers. Header names are matched case-insensitively; the server
/// passes (name, value) pairs.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(pub &'a [(String, String)]);

impl<'a> Headers<'a> {
    /// The value of the first header called `name`.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.all(name).next()
    }

    /// The value of every header called `name`, in order.
    pub fn all(&self, name: &str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The first header called `name` whose value is not blank, trimmed.
    pub(crate) fn non_blank(&self, name: &str) -> Option<&'a str> {
        self.all(name).map(str::trim).find(|value| !value.is_empty())
    }
}

/// The provider's id of this delivery, for de-duplication: GitHub `X-GitHub-Delivery`,
/// GitLab `Idempotency-Key` (else `X-Gitlab-Event-UUID`, before GitLab 17.4), Gitea
/// `X-Gitea-Delivery` (else `X-Gogs-Delivery`), Bitbucket Cloud `X-Request-UUID`. None
/// when the delivery carries none.
pub fn delivery_id(provider: Provider, headers: &Headers<'_>) -> Option<String> {
    provider.delivery_headers().iter().find_map(|name| headers.non_blank(name)).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_read_in_any_case() {
        for provider in Provider::ALL {
            assert_eq!(provider.as_str().parse::<Provider>(), Ok(provider));
            assert_eq!(provider.to_string(), provider.as_str());
        }
        assert_eq!("GitHub".parse::<Provider>(), Ok(Provider::GitHub));
        assert_eq!(" gitlab ".parse::<Provider>(), Ok(Provider::GitLab));
    }

    #[test]
    fn an_unknown_provider_is_named_with_the_known_ones() {
        let error = "gogs".parse::<Provider>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "\"gogs\" is not a VCS provider: expected github, gitlab, gitea or bitbucket"
        );
    }

    #[test]
    fn headers_are_found_in_any_case() {
        let pairs = vec![
            ("x-github-event".to_owned(), "push".to_owned()),
            ("X-GITHUB-DELIVERY".to_owned(), " 72d3162e ".to_owned()),
        ];
        let headers = Headers(&pairs);
        assert_eq!(headers.get("X-GitHub-Event"), Some("push"));
        assert_eq!(headers.get("X-Hub-Signature-256"), None);
        assert_eq!(delivery_id(Provider::GitHub, &headers), Some("72d3162e".to_owned()));
    }
}
