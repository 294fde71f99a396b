//! The web UI over real HTTPS: signing in, CSRF and origin checks, each page's HTML
//! (snapshots with ids, times, durations and tokens made stable), creating a pool, a run
//! driven through the agent plane as a launcher would, and the live streams' events.

use std::time::Duration;

use futures_util::StreamExt;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey, ScriptedLauncher};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SET_COOKIE};
use serde_json::json;

use super::Api;

/// A browser without JavaScript: it keeps no cookies and follows no redirects by itself,
/// so every test says exactly what it sends.
pub(crate) struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: Vec<String>,
}

impl Browser {
    pub(crate) fn new(api: &Api) -> Self {
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

    pub(crate) async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let response = self.get_response(path).await;
        (response.status(), response.text().await.unwrap())
    }

    async fn get_response(&mut self, path: &str) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookies.join("; "))
            .send()
            .await
            .unwrap();
        self.keep_cookies(&response);
        response
    }

    /// Follows the server-sent events at `path`; each must come within `patience`.
    async fn events(&mut self, path: &str, patience: Duration) -> Events {
        let response = self.get_response(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let stream = response.bytes_stream().map(|chunk| chunk.map(|bytes| bytes.to_vec()));
        Events { stream: stream.boxed(), received: String::new(), patience }
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
            .body(
                fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        let response = request.send().await.unwrap();
        self.keep_cookies(&response);
        response
    }

    pub(crate) async fn sign_in(&mut self, key: &str) -> reqwest::Response {
        let (_, page) = self.get("/ui/sign-in").await;
        let origin = self.base.clone();
        self.post("/ui/sign-in", &[("csrf", &csrf(&page)), ("api_key", key)], Some(&origin)).await
    }
}

/// `application/x-www-form-urlencoded`, as a browser encodes a field's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
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
                (r"[A-Za-z0-9_-]{200,}", "[POOL TOKEN]"),
                (r"\b[0-9a-f]{40}\b", "[COMMIT]"),
                (r"(?m)^\d\d:\d\d:\d\d</time>", "[CLOCK]</time>"),
                (r#"file://[^<"]*"#, "[REPOSITORY]"),
                (r"(?m)^[0-9a-f]{8}</code>", "[SHORT COMMIT]</code>"),
                (r#"class="duration">[^<]*"#, r#"class="duration">[DURATION]"#),
                (r"(?s)-----BEGIN CERTIFICATE REQUEST-----.*?-----END CERTIFICATE REQUEST-----", "[CSR]"),
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
    let path = format!("/ui/pools/{}/live/workers", token.pool_id);
    let mut events = browser.events(&path, Duration::from_secs(1)).await;
    assert!(events.next_named("panel").await.contains("No worker is connected"));
    api.register_worker(&key, &token, json!({})).await;
    assert!(events.next_named("panel").await.contains(">IDLE<"));
    api.post("/pools/live/drain", json!({})).await;
    assert!(events.next_named("panel").await.contains(">DRAINED<"));
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

#[tokio::test]
async fn a_new_pool_shows_its_token_once_and_a_refused_form_keeps_its_values() {
    let api = Api::start().await;
    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let origin = browser.base.clone();
    let (status, page) = browser.get("/ui/pools/new").await;
    assert_eq!(status, StatusCode::OK);
    assert_page!("pool_new", page);

    let bad = [
        ("csrf", csrf(&page)),
        ("name", "edge".to_owned()),
        ("description", "Edge <machines>".to_owned()),
        ("labels", "team=net, region=eu".to_owned()),
        ("csr", "not a csr".to_owned()),
    ];
    let fields: Vec<(&str, &str)> = bad.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post("/ui/pools", &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let page = response.text().await.unwrap();
    assert_page!("pool_new_bad_csr", page);
    let reason = "not a certificate signing request: expected PEM text starting with \
                  -----BEGIN CERTIFICATE REQUEST-----";
    assert!(page.contains(reason), "{page}");
    assert!(page.contains(r#"id="csr-error""#) && page.contains(r#"aria-invalid="true""#));
    assert!(page.contains(r#"value="Edge &lt;machines&gt;""#), "typed values are kept");
    assert_eq!(api.get("/pools/edge").await.0, StatusCode::NOT_FOUND);

    let dir = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(dir.path(), "edge", KeyKind::P256);
    let mut good = bad.clone();
    good[1].1 = "bad name!".to_owned();
    good[4].1 = key.csr_pem.clone();
    let fields: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post("/ui/pools", &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"id="name-error""#), "the name is named as the problem: {page}");
    assert!(page.contains("-----BEGIN CERTIFICATE REQUEST-----"), "the CSR is kept");

    good[1].1 = "edge".to_owned();
    let fields: Vec<(&str, &str)> = good.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post("/ui/pools", &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["cache-control"], "no-store", "the token page is never cached");
    let page = response.text().await.unwrap();
    assert_page!("pool_created", page);
    let start = page.find("GANTRY_TOKEN='").unwrap() + 14;
    let token = &page[start..start + page[start..].find('\'').unwrap()];
    let token = gantry_crypto::PoolToken::decode(token).expect("the page shows a working token");
    let (status, pool) = api.get("/pools/edge").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pool["id"].as_str(), Some(token.pool_id.as_str()));
    assert_eq!(pool["labels"], json!(["team=net", "region=eu"]));
    assert_eq!(pool["description"], "Edge <machines>");

    let (_, page) = browser.get(&format!("/ui/pools/{}", token.pool_id)).await;
    assert!(!page.contains(&token.encode()), "the token is shown only once");
    let response = browser.post("/ui/pools", &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY, "the name is taken now");
    assert!(response.text().await.unwrap().contains("already exists"));
}

#[tokio::test]
async fn stack_and_run_pages_follow_a_run_from_trigger_to_confirmation_to_its_end() {
    let api = Api::start().await;
    let (key, token) = api.create_pool("builders", KeyKind::P256).await;
    let launcher =
        ScriptedLauncher::connect(&api.server, &token.pool_id, &key.key_pem, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let repository = GitRepository::create(&dir.path().join("net"), &[("main.tf", "")]);
    let body = json!({
        "name": "network", "repository": repository.url(), "pool": "builders",
        "labels": ["team=net"],
        "environment": [
            {"name": "TF_VAR_region", "value": "eu-1"},
            {"name": "TF_VAR_password", "value": "hunter2-never-shown", "secret": true}
        ]
    });
    let (status, stack) = api.post("/stacks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    let stack_id = stack["id"].as_str().unwrap().to_owned();

    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let (_, page) = browser.get(&format!("/ui/stacks/{stack_id}")).await;
    assert!(page.contains("No run yet."), "{page}");
    assert!(!page.contains("hunter2"), "secret values never reach the page");
    let origin = browser.base.clone();
    let fields = [("csrf", csrf(&page)), ("type", "TRACKED".to_owned())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let trigger = format!("/ui/stacks/{stack_id}/runs");
    let response = browser.post(&trigger, &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let run_page = location(&response).to_owned();
    let run = run_page.trim_start_matches("/ui/runs/").to_owned();
    let bad_type = [("csrf", fields[0].1), ("type", "TASK")];
    let response = browser.post(&trigger, &bad_type, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "a task needs a command: not here");

    let stack_live = format!("/ui/stacks/{stack_id}/live");
    let mut history = browser.events(&stack_live, Duration::from_secs(5)).await;
    assert!(history.next_named("panel").await.contains(&run), "the stack's runs are live");

    launcher.take(&run, "plan").await;
    launcher.report(&run, json!({"kind": "commit_resolved", "sha": repository.head(), "message": "Add the network\n\nbody"})).await;
    launcher.report(&run, json!({"kind": "phase_started", "phase": "INITIALIZING"})).await;
    launcher.log(&run, 0, "\u{1b}[0m\u{1b}[1mInitializing the backend...\u{1b}[0m\n").await;
    let mut live = browser.events(&format!("{run_page}/live?from=0"), Duration::from_secs(5)).await;
    let first = live.next_named("log").await;
    assert!(
        first.contains(r#"<span class="ansi-bold">Initializing the backend...</span>"#),
        "{first}"
    );
    launcher.report(&run, json!({"kind": "phase_started", "phase": "PLANNING"})).await;
    launcher.log(&run, 1, "  \u{1b}[32m+\u{1b}[0m resource \"terraform_data\" \"x\" <new>\n").await;
    let next = live.next_named("log").await;
    assert!(next.contains(r#"<span class="ansi-fg-2">+</span> resource &quot;terraform_data&quot; &quot;x&quot; &lt;new&gt;"#), "{next}");
    let directive = launcher.report(&run, json!({"kind": "planned", "has_changes": true})).await;
    assert_eq!(directive["directive"], "upload_workspace");
    let stored = launcher.store_workspace(&run).await;
    launcher.report(&run, stored).await;
    let panel = live.next_containing("UNCONFIRMED").await;
    assert!(panel.contains(r#"id="confirm""#) && !panel.contains(r#"id="stop""#), "{panel}");

    let (_, page) = browser.get(&run_page).await;
    assert_page!("run_unconfirmed", page);
    let (_, page) = browser.get(&format!("/ui/stacks/{stack_id}")).await;
    assert_page!("stack", page);
    let (_, page) = browser.get("/ui/stacks").await;
    assert_page!("stacks", page);

    let (_, page) = browser.get(&run_page).await;
    let response =
        browser.post(&format!("{run_page}/stop"), &[("csrf", &csrf(&page))], Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "an unconfirmed run is not stopped");
    let response = browser
        .post(&format!("{run_page}/confirm"), &[("csrf", &csrf(&page))], Some(&origin))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), run_page);

    launcher.take(&run, "apply").await;
    launcher.report(&run, json!({"kind": "phase_started", "phase": "APPLYING"})).await;
    let panel = live.next_containing("APPLYING").await;
    assert!(panel.contains(r#"id="stop""#) && !panel.contains(r#"id="confirm""#), "{panel}");
    launcher
        .log(&run, 2, "\u{1b}[1m\u{1b}[32mApply complete!\u{1b}[0m Resources: 1 added.\n")
        .await;
    // A colour that runs on from one chunk into the next.
    launcher.log(&run, 3, "\u{1b}[33mWarning: ").await;
    launcher.log(&run, 4, "deprecated\u{1b}[0m\n").await;
    let outputs = json!({"kind": "outputs", "outputs": [
        {"name": "message", "value": "hello from gantry", "sensitive": false},
        {"name": "secret", "value": gantry_testkit::MARKER_OUTPUT, "sensitive": true}
    ]});
    launcher.report(&run, outputs).await;
    launcher.report(&run, json!({"kind": "applied"})).await;
    let panel = live.next_containing("FINISHED").await;
    assert!(!panel.contains("<button"), "an ended run offers no action: {panel}");
    live.next_named("end").await;
    history.next_containing(">FINISHED<").await;

    let mut resumed =
        browser.events(&format!("{run_page}/live?from=4"), Duration::from_secs(5)).await;
    let rest = resumed.next_named("log").await;
    assert!(rest.contains(r#"<span class="ansi-fg-3">deprecated</span>"#), "{rest}");
    assert!(rest.contains("id: 5"), "a reconnecting browser resumes after it: {rest}");

    let (_, page) = browser.get(&run_page).await;
    assert!(!page.contains(gantry_testkit::MARKER_OUTPUT), "sensitive outputs stay hidden");
    assert_page!("run_finished", page);
}

/// A server-sent event stream, read event by event.
struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    received: String,
    patience: Duration,
}

impl Events {
    async fn next_event(&mut self) -> String {
        loop {
            if let Some(end) = self.received.find("\n\n") {
                return self.received.drain(..end + 2).collect();
            }
            let chunk = tokio::time::timeout(self.patience, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no event within {:?}", self.patience))
                .expect("the stream goes on")
                .unwrap();
            self.received.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The data of the next event named `name`, skipping others.
    async fn next_named(&mut self, name: &str) -> String {
        loop {
            let event = self.next_event().await;
            if event.lines().any(|line| line == format!("event: {name}")) {
                return event;
            }
        }
    }

    /// The next event whose data contains `text`.
    async fn next_containing(&mut self, text: &str) -> String {
        loop {
            let event = self.next_event().await;
            if event.contains(text) {
                return event;
            }
        }
    }
}

#[tokio::test]
async fn a_stack_page_lists_state_versions_and_rolls_back_with_the_sessions_token() {
    let stack = super::state_versions::ManagedStack::start(None).await;
    let first = stack.store_state("sealed state 1").await;
    stack.store_state("sealed state 2, a little longer").await;
    let mut browser = Browser::new(&stack.api);
    browser.sign_in(&stack.api.server.admin_key).await;
    let page_path = format!("/ui/stacks/{}", stack.stack_id);
    let (status, page) = browser.get(&page_path).await;
    assert_eq!(status, StatusCode::OK);
    assert_page!("stack_state_versions", page);
    assert!(page.contains(r#"id="rollback-1""#), "an earlier version can be restored");
    assert!(!page.contains(r#"id="rollback-2""#), "the current one cannot");

    let origin = browser.base.clone();
    let rollback = format!("{page_path}/state/rollback");
    let forged = [("csrf", "0".repeat(64)), ("to", "1".to_owned())];
    let forged: Vec<(&str, &str)> = forged.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post(&rollback, &forged, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "the session's token is needed");
    let fields = [("csrf", csrf(&page)), ("to", "1".to_owned())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post(&rollback, &fields, Some("https://evil.example")).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "and this server's origin");
    let (_, list) = stack.api.get("/stacks/db/state/versions").await;
    assert_eq!(list["versions"].as_array().unwrap().len(), 2, "refused forms change nothing");

    let response = browser.post(&rollback, &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), page_path);
    let (_, list) = stack.api.get("/stacks/db/state/versions").await;
    let current = &list["versions"][0];
    assert_eq!((&current["version"], &current["run_id"]), (&json!(3), &json!(first)));
    assert_eq!(current["rolled_back_by"], "admin", "recorded by the key's name");
    let (_, page) = browser.get(&page_path).await;
    assert!(page.contains("rollback to version 1 by admin"), "{page}");

    let fields = [("csrf", csrf(&page)), ("to", "7".to_owned())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = browser.post(&rollback, &fields, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let page = response.text().await.unwrap();
    assert!(page.contains("stack db has no state version 7: it keeps versions 1 to 3"), "{page}");
}

#[tokio::test]
async fn a_stack_page_marks_orphaned_state_versions_and_adopts_them() {
    let stack = super::state_versions::ManagedStack::start(None).await;
    stack.store_state("sealed state 1").await;
    // A task whose run ended before its state arrived: the state is kept, orphaned.
    let run = stack.trigger_task().await;
    stack.launcher.take(&run, "plan").await;
    stack.launcher.report(&run, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
    stack.launcher.report(&run, json!({"kind": "failed", "message": "interrupted"})).await;
    let (status, stored) = stack.launcher.put_blob(&run, "state", b"sealed state 2").await;
    assert_eq!((status, &stored["orphaned"]), (202, &json!(true)), "{stored}");

    let mut browser = Browser::new(&stack.api);
    browser.sign_in(&stack.api.server.admin_key).await;
    let page_path = format!("/ui/stacks/{}", stack.stack_id);
    let (_, page) = browser.get(&page_path).await;
    assert!(page.contains(r#"<span class="badge">orphaned</span>"#), "{page}");
    assert!(page.contains(r#"id="adopt-2""#), "an orphaned version can be adopted");
    assert!(!page.contains(r#"id="rollback-2""#), "not rolled back to");
    assert!(!page.contains(r#"id="adopt-1""#), "only orphaned versions are adopted");

    let fields = [("csrf", csrf(&page)), ("version", "2".to_owned())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let adopt = format!("{page_path}/state/adopt");
    let response = browser.post(&adopt, &fields, Some(&browser.base.clone())).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let (_, list) = stack.api.get("/stacks/db/state/versions").await;
    let current = &list["versions"][0];
    assert_eq!(
        (&current["version"], &current["run_id"], &current["adopted_from"]),
        (&json!(3), &json!(run), &json!(2))
    );
    let (_, page) = browser.get(&page_path).await;
    assert!(page.contains("adopts orphaned version 2 by admin"), "{page}");
}

#[tokio::test]
async fn guessing_keys_at_the_sign_in_form_is_answered_429_with_retry_after() {
    let data_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let settings = [("GANTRY_SERVER_AUTH_FAILURES_PER_MINUTE", "3")];
    let server = gantry_testkit::TestServer::start_in(data_dir, &settings).await;
    let http = server.http();
    let api = Api { server, http };
    let mut browser = Browser::new(&api);
    for n in 0..3 {
        let response = browser.sign_in(&format!("gak_guess{n}")).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = browser.sign_in(&api.server.admin_key).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "even the right key waits");
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After: {retry_after}");
    let page = response.text().await.unwrap();
    assert!(page.contains("too many failed authentications"), "{page}");
}

#[tokio::test]
async fn a_revoked_key_ends_its_ui_sessions_and_api_calls_at_once_and_signing_out_ends_the_session_on_the_server()
 {
    let api = Api::start().await;
    let (status, created) = api.post("/keys", json!({"name": "viewer", "role": "reader"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let as_viewer = |path: &str| {
        api.http.get(format!("{}/api/v1{path}", api.server.url)).bearer_auth(&secret).send()
    };
    assert_eq!(as_viewer("/pools").await.unwrap().status(), StatusCode::OK);

    // Signing out ends the session on the server: a copy of the cookie opens nothing.
    let mut browser = Browser::new(&api);
    assert_eq!(location(&browser.sign_in(&secret).await), "/ui/pools");
    let copy = browser.cookies.clone();
    let (status, page) = browser.get("/ui/pools").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("viewer") && !page.contains(r#"href="/ui/keys""#), "{page}");
    let origin = browser.base.clone();
    browser.post("/ui/sign-out", &[("csrf", &csrf(&page))], Some(&origin)).await;
    let mut replay = Browser::new(&api);
    replay.cookies = copy;
    assert_eq!(replay.get("/ui/pools").await.0, StatusCode::SEE_OTHER, "the copy is signed out");

    // Revoking the key ends its session and its API calls on their next request.
    let mut browser = Browser::new(&api);
    browser.sign_in(&secret).await;
    assert_eq!(browser.get("/ui/pools").await.0, StatusCode::OK);
    let (status, revoked) = api.call(reqwest::Method::DELETE, "/keys/viewer", None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(browser.get("/ui/pools").await.0, StatusCode::SEE_OTHER, "the session ended");
    assert_eq!(as_viewer("/pools").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Nor can it sign in again.
    let response = Browser::new(&api).sign_in(&secret).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_stack_page_lists_its_schedules_with_their_next_firing() {
    let stack = super::state_versions::ManagedStack::start(None).await;
    let request = json!({"kind": "drift", "cron": "0 3 * * *", "time_zone": "Europe/Berlin", "reconcile": true});
    let (status, created) = stack.api.post("/stacks/db/schedules", request).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let mut browser = Browser::new(&stack.api);
    browser.sign_in(&stack.api.server.admin_key).await;
    let (status, page) = browser.get(&format!("/ui/stacks/{}", stack.stack_id)).await;
    assert_eq!(status, StatusCode::OK);
    let table = page.split(r#"<table id="schedules">"#).nth(1).expect("a schedules table");
    let row = table.split("</tr>").nth(1).unwrap();
    for shown in ["drift", "(reconciles)", "0 3 * * *", "Europe/Berlin", "not yet"] {
        assert!(row.contains(shown), "{shown:?} in {row}");
    }
    let next = created["next_fire_at"].as_str().unwrap();
    assert!(row.contains(&next[..16]), "the next firing {next} in {row}");
}

#[tokio::test]
async fn an_admin_registers_and_deletes_a_webhook_with_the_sessions_token() {
    let api = Api::start().await;
    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let (_, page) = browser.get("/ui/webhooks").await;
    let origin = browser.base.clone();
    let repository = "https://github.com/acme/infra.git";
    let token = csrf(&page);
    let forged = "0".repeat(64);
    let refused = [("csrf", forged.as_str()), ("provider", "github"), ("repository", repository)];
    let response = browser.post("/ui/webhooks", &refused, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN, "the session's token is needed");

    let wrong = [("csrf", token.as_str()), ("provider", "svn"), ("repository", repository)];
    let response = browser.post("/ui/webhooks", &wrong, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"role="alert""#) && page.contains("svn"), "{page}");
    assert_eq!(api.get("/webhooks").await.1["webhooks"], json!([]), "nothing registered");

    let right = [("csrf", token.as_str()), ("provider", "github"), ("repository", repository)];
    let response = browser.post("/ui/webhooks", &right, Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let page = response.text().await.unwrap();
    let (_, listed) = api.get("/webhooks").await;
    let id = listed["webhooks"][0]["id"].as_str().unwrap().to_owned();
    let (_, secret) = api.get(&format!("/webhooks/{id}/secret")).await;
    assert!(page.contains(secret["secret"].as_str().unwrap()), "the secret is shown: {page}");
    assert!(page.contains("/api/v1/webhooks/github"), "and the payload URL: {page}");

    let (_, page) = browser.get("/ui/webhooks").await;
    assert!(page.contains(repository), "{page}");
    let token = csrf(&page);
    let path = format!("/ui/webhooks/{id}/delete");
    let response = browser.post(&path, &[("csrf", token.as_str())], Some(&origin)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/ui/webhooks");
    assert_eq!(api.get("/webhooks").await.1["webhooks"], json!([]));
}
