//! The web UI in a real headless Chromium, driven over WebDriver (chromedriver, plain
//! HTTP on loopback): sign in, open a pool, watch a launcher's worker turn from IDLE to
//! DRAINED without a reload, sign out. With `GANTRY_UPDATE_SCREENSHOTS=1` the same session
//! also rewrites the README's screenshots in `docs/images/`.
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

use crate::harness::{Cluster, Launcher, free_port};

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

/// A headless Chromium session with a profile of its own.
async fn open_browser(driver: &ChromeDriver, chromium: &Path, profile: &Path) -> Client {
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

#[test]
fn sign_in_see_a_worker_drain_it_live_and_sign_out_in_chromium() {
    let Some((chromium, chromedriver)) = browser_tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start();
    let pool = cluster.private_pool(dir.path(), "builders");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    let admin_key = cluster.server.admin_key.clone().expect("a first start prints the admin key");
    let driver = ChromeDriver::start(&chromedriver);
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = open_browser(&driver, &chromium, profile.path()).await;
        let ui = format!("{}/ui", cluster.server.url);

        client.goto(&ui).await.unwrap();
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        screenshot(&client, "ui-sign-in.png").await;
        client.find(Locator::Css("#api-key")).await.unwrap().send_keys(&admin_key).await.unwrap();
        client.find(Locator::Css("form.sign-in button")).await.unwrap().click().await.unwrap();

        client.wait().for_element(Locator::LinkText("builders")).await.unwrap();
        assert!(client.current_url().await.unwrap().path().ends_with("/ui/pools"));
        screenshot(&client, "ui-pools.png").await;
        client.find(Locator::LinkText("builders")).await.unwrap().click().await.unwrap();

        wait_for_text(&client, "#workers tbody td.status .badge", "IDLE").await;
        screenshot(&client, "ui-pool-workers.png").await;
        // A value a reload would lose: it must survive the drain.
        client.execute("window.gantryNoReload = 'still here'", vec![]).await.unwrap();
        client
            .find(Locator::Css("#workers button[id^='drain-']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let took = wait_for_text(&client, "#workers tbody td.status .badge", "DRAINED").await;
        assert!(took < Duration::from_secs(2), "the drain showed after {took:?}");
        let kept = client.execute("return window.gantryNoReload", vec![]).await.unwrap();
        assert_eq!(kept, json!("still here"), "the page reloaded instead of updating live");
        wait_for_text(&client, "#workers button[id^='undrain-']", "Undrain").await;

        client.find(Locator::Css("form.sign-out button")).await.unwrap().click().await.unwrap();
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        client.goto(&format!("{ui}/pools")).await.unwrap();
        client.wait().for_element(Locator::Css("#api-key")).await.unwrap();
        client.close().await.unwrap();
    });
}
