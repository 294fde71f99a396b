//! Signature checks of every provider on recorded payloads: the right secret passes; a
//! wrong secret, a changed body, a missing or malformed header each fail with their own
//! error, whose message never shows the secret or the signature. And the delivery ids
//! that de-duplicate.

mod support;

use gantry_webhooks::{Headers, Provider, SignatureError, delivery_id, verify};
use support::{SECRET, fixture, hmac_hex, pairs, signature};

const WRONG_SECRET: &[u8] = b"not the webhook's secret";

/// A recorded body of each provider.
fn body(provider: Provider) -> Vec<u8> {
    fixture(match provider {
        Provider::GitHub => "github/push.json",
        Provider::GitLab => "gitlab/push.json",
        Provider::Gitea => "gitea/push.json",
        Provider::Bitbucket => "bitbucket/repo_push.json",
    })
}

fn check(
    provider: Provider,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), SignatureError> {
    verify(provider, &Headers(headers), body, SECRET)
}

#[test]
fn github_documents_this_signature() {
    // GitHub's worked example of X-Hub-Signature-256.
    let headers = pairs(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    assert_eq!(verify(Provider::GitHub, &Headers(&headers), b"Hello, World!", SECRET), Ok(()));
}

#[test]
fn the_right_secret_passes() {
    for provider in Provider::ALL {
        let body = body(provider);
        let headers = vec![signature(provider, &body, SECRET)];
        assert_eq!(check(provider, &headers, &body), Ok(()), "{provider}");
    }
}

#[test]
fn a_wrong_secret_is_a_mismatch_that_shows_no_secret() {
    for provider in Provider::ALL {
        let body = body(provider);
        let (name, value) = signature(provider, &body, WRONG_SECRET);
        let headers = vec![(name, value.clone())];
        let error = check(provider, &headers, &body).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Mismatch { header: provider.signature_header() },
            "{provider}"
        );
        let message = error.to_string();
        assert_eq!(
            message,
            format!(
                "the {} header does not match the repository's webhook secret",
                provider.signature_header()
            )
        );
        let secret = String::from_utf8(SECRET.to_vec()).unwrap();
        assert!(!message.contains(&secret) && !message.contains(&value));
    }
}

#[test]
fn a_body_changed_by_one_byte_after_signing_is_a_mismatch() {
    for provider in [Provider::GitHub, Provider::Gitea, Provider::Bitbucket] {
        let body = body(provider);
        let headers = vec![signature(provider, &body, SECRET)];
        let mut changed = body.clone();
        let middle = changed.len() / 2;
        changed[middle] ^= 0x01;
        assert_eq!(
            check(provider, &headers, &changed),
            Err(SignatureError::Mismatch { header: provider.signature_header() }),
            "{provider}"
        );
        let mut longer = body;
        longer.push(b'\n');
        assert!(check(provider, &headers, &longer).is_err(), "{provider}");
    }
}

#[test]
fn an_unsigned_delivery_is_missing_its_signature() {
    for provider in Provider::ALL {
        let body = body(provider);
        let headers = pairs(&[(provider.event_header(), "push")]);
        let error = check(provider, &headers, &body).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Missing { header: provider.signature_header() },
            "{provider}"
        );
        assert!(error.to_string().starts_with(&format!(
            "no {} header: the delivery is not signed",
            provider.signature_header()
        )));
    }
}

#[test]
fn gitea_without_a_secret_sends_empty_signatures_which_count_as_missing() {
    let body = body(Provider::Gitea);
    // What Gitea's delivery code writes when the webhook has no secret.
    let headers = pairs(&[
        ("X-Gitea-Signature", ""),
        ("X-Gogs-Signature", ""),
        ("X-Hub-Signature", "sha1="),
        ("X-Hub-Signature-256", "sha256="),
    ]);
    assert_eq!(
        check(Provider::Gitea, &headers, &body),
        Err(SignatureError::Missing { header: "X-Gitea-Signature" })
    );
}

#[test]
fn gitea_may_be_checked_by_its_github_style_signature() {
    let body = body(Provider::Gitea);
    let good = pairs(&[("X-Hub-Signature-256", &format!("sha256={}", hmac_hex(SECRET, &body)))]);
    assert_eq!(check(Provider::Gitea, &good, &body), Ok(()));
    let bad =
        pairs(&[("X-Hub-Signature-256", &format!("sha256={}", hmac_hex(WRONG_SECRET, &body)))]);
    assert_eq!(
        check(Provider::Gitea, &bad, &body),
        Err(SignatureError::Mismatch { header: "X-Hub-Signature-256" })
    );
}

#[test]
fn a_malformed_signature_says_what_was_expected() {
    let prefixed = "sha256= followed by the 64 hex digits of the body's HMAC-SHA256";
    let bare = "the 64 hex digits of the body's HMAC-SHA256";
    let digits = "ab".repeat(32);
    let cases = [
        (Provider::GitHub, "sha1=0123456789abcdef0123456789abcdef01234567".to_owned(), prefixed),
        (Provider::GitHub, format!("sha256={}", &digits[..62]), prefixed),
        (Provider::GitHub, format!("sha256={}", "zz".repeat(32)), prefixed),
        (Provider::GitHub, digits.clone(), prefixed),
        (Provider::Bitbucket, format!("sha512={digits}{digits}"), prefixed),
        (Provider::Bitbucket, format!("sha256={digits}00"), prefixed),
        (Provider::Gitea, format!("sha256={digits}"), bare),
        (Provider::Gitea, "g".repeat(64), bare),
        (Provider::GitLab, "to\u{0}ken".to_owned(), "the secret token as printable text"),
    ];
    for (provider, value, expected) in cases {
        let body = body(provider);
        let headers = pairs(&[(provider.signature_header(), &value)]);
        let error = check(provider, &headers, &body).unwrap_err();
        assert_eq!(
            error,
            SignatureError::Malformed { header: provider.signature_header(), expected },
            "{provider} {value:?}"
        );
        let message = error.to_string();
        assert_eq!(
            message,
            format!("the {} header is malformed: expected {expected}", provider.signature_header())
        );
        assert!(!message.contains(&value));
    }
}

#[test]
fn a_signature_given_twice_is_malformed() {
    for provider in Provider::ALL {
        let body = body(provider);
        let good = signature(provider, &body, SECRET);
        let other = signature(provider, &body, WRONG_SECRET);
        let headers = vec![good, other];
        assert_eq!(
            check(provider, &headers, &body),
            Err(SignatureError::Malformed {
                header: provider.signature_header(),
                expected: "one such header, not several"
            }),
            "{provider}"
        );
    }
}

#[test]
fn header_names_and_hex_digits_are_read_in_any_case() {
    let body = body(Provider::GitHub);
    let value = format!("SHA256={}", hmac_hex(SECRET, &body).to_uppercase());
    let headers = pairs(&[("x-hub-signature-256", &value)]);
    assert_eq!(check(Provider::GitHub, &headers, &body), Ok(()));
}

#[test]
fn an_empty_secret_matches_nothing() {
    for provider in Provider::ALL {
        let body = body(provider);
        let (name, _) = signature(provider, &body, SECRET);
        let value = match provider {
            Provider::GitLab => "x".to_owned(),
            Provider::Gitea => hmac_hex(b"", &body),
            _ => format!("sha256={}", hmac_hex(b"", &body)),
        };
        let headers = vec![(name, value)];
        assert!(
            matches!(
                verify(provider, &Headers(&headers), &body, b""),
                Err(SignatureError::Mismatch { .. })
            ),
            "{provider}"
        );
    }
}

#[test]
fn a_gitlab_token_of_another_length_is_a_mismatch() {
    let body = body(Provider::GitLab);
    for token in
        ["It's a Secret", "It's a Secret to Everybody, really", "it's a secret to everybody"]
    {
        let headers = pairs(&[("X-Gitlab-Token", token)]);
        assert_eq!(
            check(Provider::GitLab, &headers, &body),
            Err(SignatureError::Mismatch { header: "X-Gitlab-Token" }),
            "{token}"
        );
    }
}

#[test]
fn delivery_ids_come_from_each_providers_header() {
    let cases = [
        (
            Provider::GitHub,
            vec![("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")],
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ),
        // GitLab 17.11 sends both; the idempotency key survives a resend.
        (
            Provider::GitLab,
            vec![
                ("X-Gitlab-Event-UUID", "0f490e30-2db8-4091-91a1-52fe67960342"),
                ("Idempotency-Key", "9db5a20d-3bbb-416d-a265-c095052a9348"),
                ("X-Gitlab-Webhook-UUID", "c764a944-82c2-4044-9213-ec5b89d12778"),
            ],
            Some("9db5a20d-3bbb-416d-a265-c095052a9348"),
        ),
        (
            Provider::GitLab,
            vec![("X-Gitlab-Event-UUID", "0f490e30-2db8-4091-91a1-52fe67960342")],
            Some("0f490e30-2db8-4091-91a1-52fe67960342"),
        ),
        (
            Provider::Gitea,
            vec![("X-Gitea-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")],
            Some("f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ),
        (
            Provider::Gitea,
            vec![("X-Gogs-Delivery", "f6266f16-1bf3-46a5-9ea4-602e06ead473")],
            Some("f6266f16-1bf3-46a5-9ea4-602e06ead473"),
        ),
        (
            Provider::Bitbucket,
            vec![
                ("X-Hook-UUID", "{8d3e1f0c-7f0e-4c3a-9d6c-5f1d2a7b9c10}"),
                ("X-Request-UUID", "b1a3c2e4-5d6f-4a7b-8c9d-0e1f2a3b4c5d"),
                ("X-Attempt-Number", "1"),
            ],
            Some("b1a3c2e4-5d6f-4a7b-8c9d-0e1f2a3b4c5d"),
        ),
        // The webhook's id is the same for all its deliveries: it identifies none.
        (
            Provider::Bitbucket,
            vec![("X-Hook-UUID", "{8d3e1f0c-7f0e-4c3a-9d6c-5f1d2a7b9c10}")],
            None,
        ),
        (Provider::GitHub, vec![("X-GitHub-Delivery", "  ")], None),
    ];
    for (provider, headers, expected) in cases {
        let headers = pairs(&headers);
        assert_eq!(
            delivery_id(provider, &Headers(&headers)),
            expected.map(str::to_owned),
            "{provider} {headers:?}"
        );
    }
}
