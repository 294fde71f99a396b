//! Crypto against real `openssl` output: every key and CSR format users will bring.

use std::process::Command;

use base64::Engine;
use gantry_crypto::{
    CertificateAuthority, Error, KeyAlgorithm, PoolPrivateKey, PoolToken, generate_pool_key,
    session_message, verify_session_signature,
};

mod support;

use support::{openssl, read};

fn ca() -> CertificateAuthority {
    CertificateAuthority::generate("test CA").unwrap()
}

/// Issues a certificate for `csr`, loads `key`, and checks that the pair works end to end.
fn assert_pool_round_trip(ca: &CertificateAuthority, key_pem: &str, csr_pem: &str) -> KeyAlgorithm {
    let issued = ca.issue_pool_certificate(csr_pem, "01J0000000000000000000POOL").unwrap();
    ca.verify_issued(&issued.certificate).unwrap();
    let key = PoolPrivateKey::from_pem(key_pem).unwrap();
    key.ensure_matches(&issued.certificate).unwrap();
    let signature = key.sign(&session_message("challenge")).unwrap();
    verify_session_signature(&issued.certificate, "challenge", &signature).unwrap();
    assert!(matches!(
        verify_session_signature(&issued.certificate, "another challenge", &signature),
        Err(Error::BadSignature)
    ));
    issued.key_algorithm
}

#[test]
fn the_reference_openssl_rsa_4096_flow_works() {
    let dir = tempfile::tempdir().unwrap();
    openssl(
        dir.path(),
        &[
            "req", "-new", "-newkey", "rsa:4096", "-nodes", "-keyout", "pool.key", "-out",
            "pool.csr", "-subj", "/CN=pool",
        ],
    );
    let key = read(dir.path(), "pool.key");
    assert!(key.contains("BEGIN PRIVATE KEY"), "openssl 3 writes PKCS#8");
    let algorithm = assert_pool_round_trip(&ca(), &key, &read(dir.path(), "pool.csr"));
    assert_eq!(algorithm, KeyAlgorithm::Rsa { bits: 4096 });
}

#[test]
fn an_openssl_p256_csr_works_with_its_pkcs8_and_sec1_key() {
    let dir = tempfile::tempdir().unwrap();
    openssl(dir.path(), &["ecparam", "-name", "prime256v1", "-genkey", "-out", "sec1.key"]);
    openssl(
        dir.path(),
        &["req", "-new", "-key", "sec1.key", "-out", "pool.csr", "-subj", "/CN=pool"],
    );
    openssl(dir.path(), &["pkcs8", "-topk8", "-nocrypt", "-in", "sec1.key", "-out", "pkcs8.key"]);
    let sec1 = read(dir.path(), "sec1.key");
    assert!(sec1.contains("EC PARAMETERS") && sec1.contains("EC PRIVATE KEY"));
    let ca = ca();
    let csr = read(dir.path(), "pool.csr");
    assert_eq!(assert_pool_round_trip(&ca, &sec1, &csr), KeyAlgorithm::P256);
    assert_eq!(
        assert_pool_round_trip(&ca, &read(dir.path(), "pkcs8.key"), &csr),
        KeyAlgorithm::P256
    );
}

#[test]
fn pkcs1_rsa_keys_of_every_common_size_load() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    for bits in ["2048", "3072"] {
        let key_file = format!("rsa{bits}.key");
        openssl(dir.path(), &["genrsa", "-traditional", "-out", &key_file, bits]);
        openssl(
            dir.path(),
            &["req", "-new", "-key", &key_file, "-out", "pool.csr", "-subj", "/CN=pool"],
        );
        let key = read(dir.path(), &key_file);
        assert!(key.contains("BEGIN RSA PRIVATE KEY"));
        let algorithm = assert_pool_round_trip(&ca, &key, &read(dir.path(), "pool.csr"));
        assert_eq!(algorithm, KeyAlgorithm::Rsa { bits: bits.parse().unwrap() });
    }
}

#[test]
fn gantry_keygen_output_round_trips() {
    let generated = generate_pool_key("pool").unwrap();
    assert!(generated.private_key_pem.contains("BEGIN PRIVATE KEY"));
    assert!(!format!("{generated:?}").contains("PRIVATE KEY"), "Debug hides the key");
    let algorithm = assert_pool_round_trip(&ca(), &generated.private_key_pem, &generated.csr_pem);
    assert_eq!(algorithm, KeyAlgorithm::P256);
}

#[test]
fn the_launcher_variable_accepts_pem_and_base64_in_every_shape() {
    let generated = generate_pool_key("pool").unwrap();
    let pem = generated.private_key_pem.as_str();
    let one_line = base64::engine::general_purpose::STANDARD.encode(pem);
    let wrapped: String = one_line
        .as_bytes()
        .chunks(76)
        .map(|line| format!("{}\n", std::str::from_utf8(line).unwrap()))
        .collect();
    for value in [pem.to_owned(), one_line, wrapped, format!("  {pem}\n")] {
        PoolPrivateKey::from_config_value(&value).unwrap();
    }
    for bad in ["", "not base64 at all!", "aGVsbG8gd29ybGQ="] {
        assert!(
            matches!(PoolPrivateKey::from_config_value(bad), Err(Error::NotBase64Pem)),
            "{bad:?}"
        );
    }
}

#[test]
fn unusable_keys_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    openssl(dir.path(), &["genpkey", "-algorithm", "ed25519", "-out", "ed.key"]);
    openssl(
        dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            "enc.key",
        ],
    );
    assert!(matches!(
        PoolPrivateKey::from_pem(&read(dir.path(), "ed.key")),
        Err(Error::UnsupportedKey(_))
    ));
    assert!(matches!(
        PoolPrivateKey::from_pem(&read(dir.path(), "enc.key")),
        Err(Error::EncryptedKey)
    ));
    assert!(matches!(
        PoolPrivateKey::from_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        Err(Error::NoPrivateKey)
    ));
}

#[test]
fn a_key_for_another_certificate_does_not_match() {
    let ca = ca();
    let first = generate_pool_key("a").unwrap();
    let second = generate_pool_key("b").unwrap();
    let issued = ca.issue_pool_certificate(&first.csr_pem, "pool").unwrap();
    let other_key = PoolPrivateKey::from_pem(&second.private_key_pem).unwrap();
    assert!(matches!(other_key.ensure_matches(&issued.certificate), Err(Error::KeyMismatch)));
}

#[test]
fn bad_csrs_are_refused_and_a_requested_ca_flag_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    assert!(matches!(ca.issue_pool_certificate("garbage", "p"), Err(Error::MalformedCsr(_))));
    assert!(matches!(
        ca.issue_pool_certificate(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "p"
        ),
        Err(Error::MalformedCsr(_))
    ));

    // A CSR whose signature no longer matches its content.
    let generated = generate_pool_key("pool").unwrap();
    let der = rustls_pki_types_der(&generated.csr_pem);
    let mut tampered = der.clone();
    let last = tampered.len() - 5;
    tampered[last] ^= 0x01;
    let tampered_pem = pem("CERTIFICATE REQUEST", &tampered);
    assert!(matches!(ca.issue_pool_certificate(&tampered_pem, "p"), Err(Error::CsrSignature)));

    // Keys Gantry cannot use.
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            "p384.key",
            "-out",
            "p384.csr",
            "-subj",
            "/CN=pool",
        ],
    );
    let refused = ca.issue_pool_certificate(&read(dir.path(), "p384.csr"), "p").unwrap_err();
    assert!(refused.to_string().contains("expected EC P-256"), "{refused}");
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "small.key",
            "-out",
            "small.csr",
            "-subj",
            "/CN=pool",
        ],
    );
    let refused = ca.issue_pool_certificate(&read(dir.path(), "small.csr"), "p").unwrap_err();
    assert!(refused.to_string().contains("RSA-1024"), "{refused}");

    // A CSR asking to be a CA gets a plain client certificate.
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.csr",
            "-subj",
            "/CN=pool",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    let issued = ca.issue_pool_certificate(&read(dir.path(), "ca.csr"), "p").unwrap();
    std::fs::write(dir.path().join("issued.pem"), issued.certificate.pem()).unwrap();
    let text = Command::new("openssl")
        .args(["x509", "-in", "issued.pem", "-noout", "-text"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
}

#[test]
fn certificates_from_another_authority_are_not_trusted() {
    let generated = generate_pool_key("pool").unwrap();
    let issued = ca().issue_pool_certificate(&generated.csr_pem, "p").unwrap();
    assert!(matches!(ca().verify_issued(&issued.certificate), Err(Error::UntrustedCertificate)));
}

#[test]
fn the_authority_survives_storage_and_issues_server_certificates() {
    let original = ca();
    let stored =
        CertificateAuthority::from_pem(original.certificate().pem(), &original.private_key_pem())
            .unwrap();
    assert_eq!(stored.certificate().fingerprint(), original.certificate().fingerprint());
    let identity =
        stored.issue_server_certificate(&["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chain.pem"), &identity.certificate_chain_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), original.certificate().pem()).unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", "ca.pem", "-purpose", "sslserver", "chain.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let text = Command::new("openssl")
        .args(["x509", "-in", "chain.pem", "-noout", "-ext", "subjectAltName"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"), "{text}");
}

#[test]
fn tokens_round_trip_and_malformed_ones_say_why() {
    let ca = ca();
    let generated = generate_pool_key("pool").unwrap();
    let issued = ca.issue_pool_certificate(&generated.csr_pem, "p").unwrap();
    let token = PoolToken::new(
        "https://127.0.0.1:8443".to_owned(),
        Some(ca.certificate().pem().to_owned()),
        "p".to_owned(),
        issued.certificate.pem().to_owned(),
    );
    let encoded = token.encode();
    assert_eq!(PoolToken::decode(&encoded).unwrap(), token);
    assert_eq!(PoolToken::decode(&format!(" {encoded}\n")).unwrap(), token);

    let cases =
        [("", "it is empty"), ("%%%", "it is not base64"), ("aGVsbG8", "its JSON does not match")];
    for (text, expected) in cases {
        let error = PoolToken::decode(text).unwrap_err().to_string();
        assert!(
            error.starts_with("not a Gantry pool token") && error.contains(expected),
            "{text}: {error}"
        );
    }
    let mut plain_http = token.clone();
    plain_http.endpoint = "http://example".to_owned();
    assert!(PoolToken::decode(&plain_http.encode()).unwrap_err().to_string().contains("https://"));
}

fn rustls_pki_types_der(pem_text: &str) -> Vec<u8> {
    let body: String = pem_text.lines().filter(|line| !line.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}
