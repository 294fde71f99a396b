//! The web UI in a real headless Chromium, driven over WebDriver (chromedriver, plain
//! HTTP on loopback), through the whole of a pool's and a run's life: sign in, create a
//! pool from a CSR, start a launcher with the token the page shows, see its worker IDLE,
//! trigger a run, watch its log stream in, confirm it, see the worker BUSY and the run
//! FINISHED without a reload, drain the worker, sign out; and the dark theme. With
//! `GANTRY_UPDATE_SCREENSHOTS=1` the same sessions also rewrite the README's screenshots in
//! `docs/images/`.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`. Under `CI=true`
//! a missing one fails the test; elsewhere the test says why it skips.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use gantry_testkit::{GitRepository, KeyKind, OpensslKey};

use crate::harness::{Cluster, Launcher, base64_of, free_port, slow_config};

/// How long the page may take to show what the test waits for.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// The window the screenshots are taken at.
const WINDOW_SIZE: &str = "1280,800";

/// Finds `name` in `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Chromium and chromedriver, or the reason the test cannot run (a failure under CI).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = on_path("chromium");
    let chromedriver = on_path("chromedriver");
    if let (Some(chromium), Some(chromedriver)) = (chromium.clone(), chromedriver.clone()) {
        return Some((chromium, chromedriver));
    }
    let missing: Vec<&str> = [(chromium.is_none(), "chromium (Debian package chromium)")]
        .into_iter()
        .chain([(chromedriver.is_none(), "chromedriver (Debian package chromium-driver)")])
        .filter_map(|(absent, what)| absent.then_some(what))
        .collect();
    let reason = format!("the browser test needs {} on PATH", missing.join(" and "));
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
    eprintln!("skipping: {reason}");
    None
}

/// chromedriver on a free loopback port, killed on drop.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(program: &Path) -> Self {
        let port = free_port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Which colour scheme the browser asks pages for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Light,
    Dark,
}

/// A headless Chromium session with a profile of its own.
async fn open_browser(
    driver: &ChromeDriver,
    chromium: &Path,
    profile: &Path,
    scheme: Scheme,
) -> Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        // Only here: the test server's certificate comes from its own throwaway CA.
        "--ignore-certificate-errors".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={WINDOW_SIZE}"),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-first-run".to_owned(),
    ];
    if scheme == Scheme::Dark {
        // Makes `prefers-color-scheme: dark` match, as a system set to dark does.
        args.push("--force-dark-mode".to_owned());
    }
    if running_as_root() {
        // Chromium refuses to start its sandbox as root.
        args.push("--no-sandbox".to_owned());
    }
    let capabilities = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    ClientBuilder::new(hyper_connector())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("chromedriver opens a Chromium session")
}

/// chromedriver speaks plain HTTP on loopback: no TLS stack for the driver's connection.
fn hyper_connector() -> HttpConnector {
    HttpConnector::new()
}

/// Whether Chromium abandoned the page's load because a network interface changed: the
/// Docker tests running beside this one add and remove interfaces, which no user of the
/// UI meets. Such a load is tried again; any other error page is left for the test to see.
async fn network_changed(client: &Client) -> bool {
    client.source().await.is_ok_and(|source| source.contains("ERR_NETWORK_CHANGED"))
}

/// Opens `url`, again while Chromium abandons the load for a network change.
async fn goto(client: &Client, url: &str) {
    for _ in 0..5 {
        client.goto(url).await.unwrap();
        if !network_changed(client).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("Chromium abandoned every load of {url} for a network change");
}

/// Waits until the element at `selector` reads `text`; returns how long it took.
async fn wait_for_text(client: &Client, selector: &str, text: &str) -> Duration {
    let start = Instant::now();
    loop {
        let found = match client.find(Locator::Css(selector)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if found.trim() == text {
            return start.elapsed();
        }
        if found.is_empty() && network_changed(client).await {
            client.refresh().await.unwrap();
        }
        if start.elapsed() > PAGE_TIMEOUT {
            let source = client.source().await.unwrap_or_default();
            panic!("{selector} never read {text:?} (last {found:?}); the page:\n{source}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Where the README's screenshots go, when asked to regenerate them.
fn screenshot_dir() -> Option<PathBuf> {
    (std::env::var("GANTRY_UPDATE_SCREENSHOTS").as_deref() == Ok("1"))
        .then(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images"))
}

async fn screenshot(client: &Client, name: &str) {
    let Some(dir) = screenshot_dir() else { return };
    let png = client.screenshot().await.expect("the browser takes a screenshot");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Outputs, a resource to plan, and an apply slow enough to see its worker BUSY.
fn stack_config() -> String {
    format!(
        r#"
resource "terraform_data" "example" {{
  input = "created in the browser test"
}}

output "message" {{
  value = terraform_data.example.output
}}

output "secret" {{
  value     = "s3cr3t-marker-7f3a9c"
  sensitive = true
}}
{}"#,
        slow_config("3")
    )
}

async fn click(client: &Client, selector: &str) {
    client.find(Locator::Css(selector)).await.unwrap().click().await.unwrap();
}

async fn type_into(client: &Client, selector: &str, text: &str) {
    let field = client.find(Locator::Css(selector)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

/// Waits until the element at `selector` contains `text`.
async fn wait_for_text_in(client: &Client, selector: &str, text: &str) {
    let start = Instant::now();
    loop {
        let found = match client.find(Locator::Css(selector)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if found.contains(text) {
            return;
        }
        if start.elapsed() > PAGE_TIMEOUT {
            panic!("{selector} never contained {text:?}; it read:\n{found}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Marks the page with a value a reload would lose.
async fn mark_page(client: &Client) {
    client.execute("window.gantryNoReload = 'still here'", vec![]).await.unwrap();
}

async fn assert_not_reloaded(client: &Client) {
    let kept = client.execute("return window.gantryNoReload", vec![]).await.unwrap();
    assert_eq!(kept, json!("still here"), "the page reloaded instead of updating live");
}

#[test]
fn a_pool_and_a_run_from_sign_in_to_drain_in_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    // The repository's path shows on the stack's page: a name that says what it is.
    let dir = tempfile::Builder::new().prefix("gantry-example-").tempdir().unwrap();
    let cluster = Cluster::start();
    let admin_key = cluster.server.admin_key.clone().expect("a first start prints the admin key");
    let key = OpensslKey::generate(dir.path(), "builders", KeyKind::P256);
    let repository =
        GitRepository::create(&dir.path().join("repo"), &[("infra/main.tf", &stack_config())]);
    let driver = ChromeDriver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut launcher = None;
    runtime.block_on(async {
        let client = open_browser(&driver, &chromium, profile.path(), Scheme::Light).await;
        let ui = format!("{}/ui", cluster.server.url);

        goto(&client, &ui).await;
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        screenshot(&client, "ui-sign-in.png").await;
        type_into(&client, "#api-key", &admin_key).await;
        click(&client, "form.sign-in button").await;

        // A new pool: the form filled in, then a refused CSR, then the real one.
        client.wait().for_element(Locator::Css("#new-pool-link")).await.unwrap();
        assert!(client.current_url().await.unwrap().path().ends_with("/ui/pools"));
        click(&client, "#new-pool-link").await;
        client.wait().for_element(Locator::Css("#csr")).await.unwrap();
        type_into(&client, "#name", "builders").await;
        type_into(&client, "#description", "The build machines").await;
        type_into(&client, "#labels", "team=infra, region=eu").await;
        type_into(&client, "#csr", &key.csr_pem).await;
        client
            .execute("document.activeElement.blur(); window.scrollTo(0, 0)", vec![])
            .await
            .unwrap();
        screenshot(&client, "ui-new-pool.png").await;
        type_into(&client, "#csr", "not a CSR").await;
        click(&client, "#create-pool").await;
        wait_for_text_in(&client, "#csr-error", "expected PEM text").await;
        let kept = client.find(Locator::Css("#name")).await.unwrap().prop("value").await.unwrap();
        assert_eq!(kept.as_deref(), Some("builders"), "a refused form keeps what was typed");
        type_into(&client, "#csr", &key.csr_pem).await;
        click(&client, "#create-pool").await;
        wait_for_text_in(&client, "h1", "Pool builders created").await;
        screenshot(&client, "ui-pool-created.png").await;
        let token = client.find(Locator::Css("#token")).await.unwrap().text().await.unwrap();
        let command =
            client.find(Locator::Css("#launcher-command")).await.unwrap().text().await.unwrap();
        assert!(command.contains(&format!("GANTRY_TOKEN='{}'", token.trim())), "{command}");
        assert!(command.contains("gantry-launcher"), "{command}");

        // The launcher the page told us to start.
        launcher = Some(Launcher::start(&cluster, token.trim(), &base64_of(&key.key_pem), &[]));
        goto(&client, &format!("{ui}/pools")).await;
        client.wait().for_element(Locator::LinkText("builders")).await.unwrap();
        screenshot(&client, "ui-pools.png").await;
        client.find(Locator::LinkText("builders")).await.unwrap().click().await.unwrap();
        wait_for_text(&client, "#workers tbody td.status .badge", "IDLE").await;
        screenshot(&client, "ui-pool-workers.png").await;
        let pool_page = client.current_url().await.unwrap();

        // A stack (made with the CLI: the UI does not create stacks), and a tracked run.
        let url = repository.url();
        cluster.gantry.ok(&[
            "stack",
            "create",
            "--name",
            "network",
            "--repository",
            &url,
            "--project-root",
            "infra",
            "--pool",
            "builders",
            "--managed-state",
            "--env",
            "TF_VAR_zone=eu-1",
            "--secret-env",
            "TF_VAR_api_token=never-shown",
            "--label",
            "team=infra",
            "--description",
            "The network the build machines share",
        ]);
        goto(&client, &format!("{ui}/stacks")).await;
        client.find(Locator::LinkText("network")).await.unwrap().click().await.unwrap();
        client.wait().for_element(Locator::Css("#trigger-tracked")).await.unwrap();
        click(&client, "#trigger-tracked").await;
        client.wait().for_element(Locator::Css("#log")).await.unwrap();
        mark_page(&client).await;
        wait_for_text_in(&client, "#log", "Plan: 2 to add").await;
        wait_for_text(&client, "#run-panel .state .badge", "UNCONFIRMED").await;
        assert_not_reloaded(&client).await;
        let coloured = client.find(Locator::Css("#log span[class^='ansi-']")).await;
        assert!(coloured.is_ok(), "terraform's colours are rendered as classes");

        // The pool's workers in a second window, while the run is confirmed in the first.
        let run_window = client.window().await.unwrap();
        let pool_window = client.new_window(false).await.unwrap().handle;
        client.switch_to_window(pool_window.clone()).await.unwrap();
        goto(&client, pool_page.as_str()).await;
        wait_for_text(&client, "#workers tbody td.status .badge", "IDLE").await;
        mark_page(&client).await;
        client.switch_to_window(run_window.clone()).await.unwrap();
        click(&client, "#confirm").await;
        client.switch_to_window(pool_window.clone()).await.unwrap();
        // From the click: scheduling, the launcher's acknowledgement and this loop's poll.
        let took = wait_for_text(&client, "#workers tbody td.status .badge", "BUSY").await;
        assert!(took < Duration::from_secs(2), "the worker showed BUSY after {took:?}");
        assert_not_reloaded(&client).await;

        client.switch_to_window(run_window).await.unwrap();
        wait_for_text(&client, "#run-panel .state .badge", "FINISHED").await;
        wait_for_text_in(&client, "#log", "Apply complete!").await;
        assert_not_reloaded(&client).await;
        wait_for_text_in(&client, "#outputs", "created in the browser test").await;
        let outputs = client.find(Locator::Css("#outputs")).await.unwrap().text().await.unwrap();
        assert!(outputs.contains("sensitive, hidden"), "{outputs}");
        assert!(!outputs.contains("s3cr3t-marker"), "{outputs}");
        assert!(client.find(Locator::Css("#run-panel button")).await.is_err(), "no action left");
        screenshot(&client, "ui-run.png").await;
        let run_page = client.current_url().await.unwrap();
        client.find(Locator::LinkText("network")).await.unwrap().click().await.unwrap();
        wait_for_text(&client, "#runs tbody td.status .badge", "FINISHED").await;
        screenshot(&client, "ui-stack.png").await;

        // Drain in the pool's window: the worker is idle again, and turns DRAINED live.
        client.switch_to_window(pool_window).await.unwrap();
        wait_for_text(&client, "#workers tbody td.status .badge", "IDLE").await;
        click(&client, "#workers button[id^='drain-']").await;
        let took = wait_for_text(&client, "#workers tbody td.status .badge", "DRAINED").await;
        assert!(took < Duration::from_secs(2), "the drain showed after {took:?}");
        assert_not_reloaded(&client).await;
        wait_for_text(&client, "#workers button[id^='undrain-']", "Undrain").await;

        dark_theme(&driver, &chromium, &ui, &admin_key, run_page.as_str()).await;

        click(&client, "form.sign-out button").await;
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        goto(&client, &format!("{ui}/pools")).await;
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        client.close().await.unwrap();
    });
    drop(launcher);
}

/// The same pages in a browser set to dark: the dark palette applies.
async fn dark_theme(driver: &ChromeDriver, chromium: &Path, ui: &str, key: &str, run_page: &str) {
    let profile = tempfile::tempdir().unwrap();
    let client = open_browser(driver, chromium, profile.path(), Scheme::Dark).await;
    goto(&client, ui).await;
    client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
    type_into(&client, "#api-key", key).await;
    click(&client, "form.sign-in button").await;
    client.wait().for_element(Locator::Css("#new-pool-link")).await.unwrap();
    let background = client
        .execute("return getComputedStyle(document.body).backgroundColor", vec![])
        .await
        .unwrap();
    assert_eq!(background, json!("rgb(13, 17, 23)"), "the dark palette applies");
    screenshot(&client, "ui-pools-dark.png").await;
    goto(&client, run_page).await;
    wait_for_text(&client, "#run-panel .state .badge", "FINISHED").await;
    screenshot(&client, "ui-run-dark.png").await;
    client.close().await.unwrap();
}
