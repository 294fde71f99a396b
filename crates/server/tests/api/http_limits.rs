//! The HTTP layer against hostile clients: slow senders, oversized bodies, key guessing.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_testkit::TestServer;
use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn start(settings: &[(&str, &str)]) -> TestServer {
    TestServer::start_in(Arc::new(tempfile::tempdir().unwrap()), settings).await
}

/// A client of `server` whose connections come from `source` (any 127.0.0.0/8 address
/// reaches a server listening on 127.0.0.1).
fn client_from(server: &TestServer, source: Ipv4Addr) -> reqwest::ClientBuilder {
    let ca = reqwest::Certificate::from_pem(server.ca_pem.as_bytes()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).local_address(IpAddr::V4(source))
}

fn host_port(server: &TestServer) -> String {
    server.url.trim_start_matches("https://").to_owned()
}

/// Room for both ends of many connections in this one process.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(4096), hard).unwrap();
    }
}

/// A TLS connection to `server` speaking HTTP/1.1, as a browser or curl opens one.
async fn tls_connection(
    server: &TestServer,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(host_port(server)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_hold_the_server_and_are_closed_after_the_header_timeout() {
    raise_open_file_limit();
    let header_timeout = Duration::from_secs(3);
    let server = start(&[("GANTRY_SERVER_HEADER_READ_TIMEOUT", "3s")]).await;

    // 500 connections sending a request's headers one byte a second, each noting when
    // the server closed it.
    let request = b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n\r\n";
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut stream = tls_connection(&server).await;
        slow.push(tokio::spawn(async move {
            let opened = Instant::now();
            let mut sent = 0;
            let mut buffer = [0u8; 1024];
            loop {
                tokio::select! {
                    read = stream.read(&mut buffer) => match read {
                        Ok(0) | Err(_) => return (opened.elapsed(), sent),
                        Ok(_) => panic!("the server answered headers that never ended"),
                    },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if sent < request.len() && stream.write_all(&request[sent..=sent]).await.is_err() {
                            return (opened.elapsed(), sent);
                        }
                        sent += 1;
                    }
                }
            }
        }));
    }

    // Meanwhile the health endpoint answers as usual.
    let http = server.http();
    http.get(format!("{}/api/v1/health", server.url)).send().await.unwrap();
    let mut timings = Vec::new();
    for _ in 0..9 {
        let started = Instant::now();
        let response = http.get(format!("{}/api/v1/health", server.url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        timings.push(started.elapsed());
    }
    timings.sort();
    // The median: one late answer on a busy two-core machine is scheduling, not the server.
    assert!(timings[4] < Duration::from_millis(100), "health answered in {timings:?}");

    for connection in slow {
        let (open_for, sent) = connection.await.unwrap();
        assert!(sent < request.len(), "the slow client sent its whole request");
        assert!(
            open_for >= header_timeout - Duration::from_millis(500),
            "a slow client was closed after {open_for:?}, before the header timeout"
        );
        assert!(
            open_for < header_timeout + Duration::from_secs(10),
            "a slow client was still open after {open_for:?}"
        );
    }
}

async fn assert_too_large(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = response.json().await.expect("the 413 carries the JSON error body");
    assert_eq!(body["error"]["code"], "too_large", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("too large")
            || body["error"]["message"].as_str().unwrap().contains("more than"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mb_body_is_answered_413_with_the_json_error_body() {
    let server = start(&[]).await;
    let body = vec![b' '; 64 * 1024 * 1024];
    let url = format!("{}/api/v1/stacks", server.url);
    let http2 = server.http();
    let http1 = client_from(&server, Ipv4Addr::LOCALHOST).http1_only().build().unwrap();
    for http in [&http1, &http2] {
        // With its length announced: refused before the handler runs.
        let response = http
            .post(&url)
            .bearer_auth(&server.admin_key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .expect("the server answers instead of cutting the connection");
        assert_too_large(response).await;
        // Streamed without a length: refused once it passes the limit.
        let pieces = body.chunks(1024 * 1024).map(|piece| Ok::<_, std::io::Error>(piece.to_vec()));
        let response = http
            .post(&url)
            .bearer_auth(&server.admin_key)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces.collect::<Vec<_>>(),
            )))
            .send()
            .await
            .expect("the server answers instead of cutting the connection");
        assert_too_large(response).await;
        // Without credentials, still an answer rather than a reset.
        let response = http.post(&url).body(body.clone()).send().await.unwrap();
        assert!(response.status().is_client_error(), "{}", response.status());
        response.json::<Value>().await.expect("a JSON error body");
    }
    // The connections stay usable.
    let response = http1.get(format!("{}/api/v1/health", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // A client that sends its whole body before it reads: had the server closed the
    // connection while the body was still coming, its writes would fail and the
    // answer be lost with the reset.
    for authorization in [format!("Authorization: Bearer {}\r\n", server.admin_key), String::new()]
    {
        let mut stream = tls_connection(&server).await;
        let head = format!(
            "POST /api/v1/stacks HTTP/1.1\r\nHost: localhost\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.expect("the server reads the body it refuses");
        stream.flush().await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_keys_from_one_address_is_answered_429_and_other_addresses_are_not_locked_out() {
    let server = start(&[]).await;
    let limit = 30; // GANTRY_SERVER_AUTH_FAILURES_PER_MINUTE's default
    let attacker = client_from(&server, Ipv4Addr::LOCALHOST).build().unwrap();
    let url = format!("{}/api/v1/pools", server.url);

    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut last = None;
    for n in 0..1000 {
        let response =
            attacker.get(&url).bearer_auth(format!("gak_guess{n:04}")).send().await.unwrap();
        statuses.push(response.status());
        last = Some(response);
    }
    let elapsed = started.elapsed();
    assert!(statuses[..limit].iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    let let_through = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert_eq!(refused + let_through, 1000, "{statuses:?}");
    // The bucket drains by half a failure a second while the guesses go on.
    let drained = (elapsed.as_secs_f64() * limit as f64 / 60.0).ceil() as usize;
    assert!(let_through <= limit + drained, "{let_through} guesses checked in {elapsed:?}");
    let last = last.unwrap();
    assert_eq!(last.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = last.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = last.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");

    // The right key from another address works at once; from the guessing address it
    // waits like any other attempt.
    let other = client_from(&server, Ipv4Addr::new(127, 0, 0, 2)).build().unwrap();
    let response = other.get(&url).bearer_auth(&server.admin_key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = attacker.get(&url).bearer_auth(&server.admin_key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // Unauthenticated endpoints stay open to it.
    let response = attacker.get(format!("{}/api/v1/health", server.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Every guess that was checked is in the audit log, under its address, and no
    // guessed key is: what was refused unchecked (429) is counted by the limiter only.
    let audit = format!("{}/api/v1/audit?actor=unauthenticated", server.url);
    let response = other.get(&audit).bearer_auth(&server.admin_key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let audit = response.text().await.unwrap();
    let entries: Value = serde_json::from_str(&audit).unwrap();
    let from_attacker = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["source"] == "127.0.0.1"
                && entry["outcome"].as_str().unwrap().starts_with("denied")
        })
        .count();
    // The attacker's last, right, key counts as a failure only if it was checked.
    assert!(
        (let_through..=let_through + 1).contains(&from_attacker),
        "{from_attacker} entries for {let_through} checked guesses: {audit:.2000}"
    );
    assert!(!audit.contains("gak_guess"), "a guessed key reached the audit log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_session_proofs_are_limited_per_address_and_per_pool() {
    let server = start(&[
        ("GANTRY_SERVER_AUTH_FAILURES_PER_MINUTE", "5"),
        ("GANTRY_SERVER_POOL_AUTH_FAILURES_PER_MINUTE", "8"),
    ])
    .await;
    let pool = server.create_pool("guarded").await;
    let pool_id = gantry_crypto::PoolToken::decode(&pool.token).unwrap().pool_id;
    let other_pool = server.create_pool("other").await;
    let other_pool_id = gantry_crypto::PoolToken::decode(&other_pool.token).unwrap().pool_id;
    let forged = |pool_id: &str| {
        json!({
            "pool_id": pool_id,
            "challenge": "forged.0.challenge.mac",
            "signature": "AAAA",
            "launcher": {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "version": "test", "hostname": "h", "protocol_version": 1}
        })
    };
    let open = |http: &reqwest::Client, pool_id: &str| {
        http.post(format!("{}/agent/v1/session", server.url)).json(&forged(pool_id)).send()
    };

    let first = client_from(&server, Ipv4Addr::new(127, 0, 0, 1)).build().unwrap();
    for _ in 0..5 {
        assert_eq!(open(&first, &pool_id).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let refused = open(&first, &pool_id).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key(RETRY_AFTER));
    // The refused address may not ask for challenges either, for any pool.
    let challenge = first
        .post(format!("{}/agent/v1/session/challenge", server.url))
        .json(&json!({"pool_id": other_pool_id}))
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), StatusCode::TOO_MANY_REQUESTS);
    // API keys from that address are counted apart: a launcher with the wrong key does
    // not lock out the admins of its machine.
    let response = first
        .get(format!("{}/api/v1/pools", server.url))
        .bearer_auth(&server.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // From other addresses the pool's failures add up to its own limit.
    let second = client_from(&server, Ipv4Addr::new(127, 0, 0, 2)).build().unwrap();
    for _ in 0..3 {
        assert_eq!(open(&second, &pool_id).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let third = client_from(&server, Ipv4Addr::new(127, 0, 0, 3)).build().unwrap();
    let refused = open(&third, &pool_id).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains(&pool_id), "{body}");
    // Another pool is not affected.
    assert_eq!(open(&third, &other_pool_id).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stalls_is_answered_after_the_request_timeout() {
    let server = start(&[("GANTRY_SERVER_REQUEST_TIMEOUT", "2s")]).await;
    let mut stream = tls_connection(&server).await;
    let head = format!(
        "POST /api/v1/stacks HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        server.admin_key
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let waited = started.elapsed();
    assert!(read.is_ok(), "no answer to a stalled body after {waited:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(waited >= Duration::from_millis(1500), "answered after {waited:?}");
}
