//! The web UI over real HTTPS: signing in, CSRF and origin checks, each page's HTML
//! (snapshots with ids, times and tokens made stable) and the live panel's events.

use std::time::Duration;

use futures_util::StreamExt;
use gantry_testkit::{GitRepository, KeyKind};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::json;

use super::Api;

/// A browser without JavaScript: it keeps no cookies and follows no redirects by itself,
/// so every test says exactly what it sends.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: Vec<String>,
}

impl Browser {
    fn new(api: &Api) -> Self {
        let ca = reqwest::Certificate::from_pem(api.server.ca_pem.as_bytes()).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { base: api.server.url.clone(), http, cookies: Vec::new() }
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(SET_COOKIE) {
            let pair = value.to_str().unwrap().split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|kept| !kept.starts_with(&format!("{name}=")));
            if !pair.ends_with('=') {
                self.cookies.push(pair);
            }
        }
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookies.join("; "))
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        (response.status(), response.text().await.unwrap())
    }

    /// Posts a form from one of the server's pages (or from `origin`).
    async fn post(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookies.join("; "))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            // Every value a test sends is URL-safe already (tokens, keys, base64url).
            .body(fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        self.keep_cookies(&response);
        response
    }

    async fn sign_in(&mut self, key: &str) -> reqwest::Response {
        let (_, page) = self.get("/ui/sign-in").await;
        let origin = self.base.clone();
        self.post("/ui/sign-in", &[("csrf", &csrf(&page)), ("api_key", key)], Some(&origin)).await
    }
}

fn csrf(page: &str) -> String {
    let start = page.find(r#"name="csrf" value=""#).expect("the page has a form token") + 19;
    page[start..start + 64].to_owned()
}

fn location(response: &reqwest::Response) -> &str {
    response.headers()[LOCATION].to_str().unwrap()
}

/// Snapshots with what changes from run to run replaced by placeholders.
macro_rules! assert_page {
    ($name:expr, $html:expr) => {
        insta::with_settings!({
            filters => vec![
                (r"[0-9A-HJKMNP-TV-Z]{26}", "[ULID]"),
                (r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\dZ?", "[TIME]"),
                (r"[0-9a-f]{64}", "[TOKEN]"),
                (r"\b[0-9a-f]{16}\b", "[KEY ID]"),
            ],
            prepend_module_to_snapshot => false,
        }, {
            insta::assert_snapshot!($name, $html.replace('>', ">\n"));
        });
    };
}

#[tokio::test]
async fn signing_in_takes_a_valid_key_from_this_origin_and_sets_a_strict_cookie() {
    let api = Api::start().await;
    let mut browser = Browser::new(&api);

    let response = browser.http.get(format!("{}/", browser.base)).send().await.unwrap();
    assert_eq!(location(&response), "/ui");
    let (status, _) = browser.get("/ui/pools").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "signed out, pages send to the sign-in form");

    let (status, page) = browser.get("/ui/sign-in").await;
    assert_eq!(status, StatusCode::OK);
    assert_page!("sign_in", page);

    let wrong = "gak_not-a-key-anybody-has";
    let response = browser.sign_in(wrong).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let page = response.text().await.unwrap();
    assert!(page.contains("That API key is not valid."), "{page}");
    assert!(!page.contains(wrong), "the page never repeats the key");

    let (_, page) = browser.get("/ui/sign-in").await;
    let fields = [("csrf", csrf(&page)), ("api_key", api.server.admin_key.clone())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post("/ui/sign-in", &fields, Some("https://elsewhere.example")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "another origin is refused");
    let response = browser.post("/ui/sign-in", &fields, None).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "so is a post naming no origin");

    let response = browser.sign_in(&api.server.admin_key).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/ui/pools");
    let session = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|value| value.to_str().unwrap())
        .find(|value| value.starts_with("__Host-gantry-session="))
        .unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains(&api.server.admin_key), "the cookie does not carry the key");
    let (status, _) = browser.get("/ui/pools").await;
    assert_eq!(status, StatusCode::OK);

    let mut forged = Browser::new(&api);
    let tampered = browser.cookies.iter().find(|c| c.contains("session")).unwrap().clone();
    forged.cookies.push(tampered.replacen('.', "0.", 1));
    let (status, _) = forged.get("/ui/pools").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "an altered cookie is no session");

    let (_, page) = browser.get("/ui/pools").await;
    let origin = browser.base.clone();
    let response =
        browser.post("/ui/sign-out", &[("csrf", "0".repeat(64).as_str())], Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "sign-out needs the session's token");
    let response = browser.post("/ui/sign-out", &[("csrf", &csrf(&page))], Some(&origin)).await;
    assert_eq!(location(&response), "/ui/sign-in");
    let (status, _) = browser.get("/ui/pools").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "signed out");
}

#[tokio::test]
async fn pool_pages_show_workers_queue_and_stacks_and_their_forms_need_the_token() {
    let api = Api::start().await;
    let (key, token) = api.create_pool("builders", KeyKind::P256).await;
    api.register_worker(&key, &token, json!({"zone": "eu-1"})).await;
    let (_, workers) = api.get("/pools/builders/workers").await;
    let worker = workers["workers"][0]["id"].as_str().unwrap().to_owned();
    api.post("/pools/builders/drain", json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let repository = GitRepository::create(&dir.path().join("net"), &[("main.tf", "")]);
    let body = json!({"name": "network", "repository": repository.url(), "pool": "builders"});
    assert_eq!(api.post("/stacks", body).await.0, StatusCode::CREATED);
    let (_, run) = api.post("/stacks/network/runs", json!({})).await;
    let run_id = run["id"].as_str().unwrap().to_owned();
    wait_until(|| async {
        let (_, run) = api.get(&format!("/runs/{run_id}")).await;
        run["waiting_reason"].as_str().is_some_and(|reason| reason.contains("drained"))
    })
    .await;

    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let (status, page) = browser.get("/ui/pools").await;
    assert_eq!(status, StatusCode::OK);
    assert_page!("pools", page);
    let (_, page) = browser.get("/ui/pools/builders").await;
    assert_page!("pool_workers", page);
    let (_, page) = browser.get("/ui/pools/builders/queue").await;
    assert_page!("pool_queue", page);
    let (_, page) = browser.get("/ui/pools/builders/stacks").await;
    assert_page!("pool_used_by", page);
    let (_, page) = browser.get("/ui/pools/shared").await;
    assert!(page.contains("are not listed"), "{page}");
    let (status, page) = browser.get("/ui/pools/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("pool &quot;nowhere&quot; does not exist"), "{page}");

    let origin = browser.base.clone();
    let undrain = format!("/ui/workers/{worker}/undrain");
    let response = browser.post(&undrain, &[("csrf", &"0".repeat(64))], Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (_, page) = browser.get("/ui/pools/builders").await;
    let response =
        browser.post(&undrain, &[("csrf", &csrf(&page))], Some("https://evil.example")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (_, workers) = api.get("/pools/builders/workers").await;
    assert_eq!(workers["workers"][0]["status"], "DRAINED", "refused forms change nothing");

    let response = browser.post(&undrain, &[("csrf", &csrf(&page))], Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), format!("/ui/pools/{}", token.pool_id));
    let (_, workers) = api.get("/pools/builders/workers").await;
    assert_ne!(workers["workers"][0]["status"], "DRAINED");
}

#[tokio::test]
async fn the_live_workers_panel_shows_a_drain_within_a_second() {
    let api = Api::start().await;
    let (key, token) = api.create_pool("live", KeyKind::P256).await;
    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let response = browser
        .http
        .get(format!("{}/ui/pools/{}/live/workers", browser.base, token.pool_id))
        .header(COOKIE, browser.cookies.join("; "))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream();
    let mut received = String::new();
    let mut next_event = async || loop {
        let chunk = tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .expect("an event within a second")
            .unwrap()
            .unwrap();
        received.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(end) = received.find("\n\n") {
            let event: String = received.drain(..end + 2).collect();
            if event.starts_with("event: panel") {
                return event;
            }
        }
    };
    assert!(next_event().await.contains("No worker is connected"));
    api.register_worker(&key, &token, json!({})).await;
    assert!(next_event().await.contains(">IDLE<"));
    api.post("/pools/live/drain", json!({})).await;
    assert!(next_event().await.contains(">DRAINED<"));
}

async fn wait_until<F: Future<Output = bool>>(mut probe: impl FnMut() -> F) {
    for _ in 0..100 {
        if probe().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the condition never held");
}
