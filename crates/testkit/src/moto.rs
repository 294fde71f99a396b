//! A real S3-compatible server for tests: moto's server (`python3 -m moto.server`) on a
//! free loopback port, in its own temporary directory, killed when dropped. Moto keeps
//! everything in memory and accepts any credentials.
//!
//! Without moto installed, `MotoServer::start` fails the test under `CI=true` (CI must run
//! everything) and otherwise skips it with the reason printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long moto may take to answer: it imports boto and Flask first (~2-4 s here).
const START_TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL_HINT: &str = "install it with: pip install 'moto[server]' (scripts/test.sh does)";

/// A running moto server; dropping it kills the process.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    address: SocketAddr,
    /// Moto's working directory and log; removed after the process is killed.
    _dir: tempfile::TempDir,
}

impl MotoServer {
    /// Credentials any request may carry; moto checks none.
    pub const ACCESS_KEY_ID: &str = "gantry-test-key";
    pub const SECRET_ACCESS_KEY: &str = "gantry-test-secret-5e1f";
    pub const REGION: &str = "us-east-1";

    /// Starts moto and waits until it answers. `None` when moto is not installed and the
    /// tests do not run under CI (the reason is printed); under `CI=true` that panics.
    pub fn start() -> Option<Self> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_start() {
                Ok(server) => return Some(server),
                Err(StartFailure::Missing(reason)) => {
                    let message = format!("moto is not available ({reason}): {INSTALL_HINT}");
                    if std::env::var("CI").is_ok_and(|value| value == "true") {
                        panic!("{message}; CI runs every test");
                    }
                    eprintln!("skipping this test: {message}");
                    return None;
                }
                // Another process took the port between our probe and moto's bind.
                Err(StartFailure::PortTaken) if tries < 5 => continue,
                Err(StartFailure::PortTaken) => panic!("moto found no free port in 5 tries"),
                Err(StartFailure::Other(log)) => panic!("moto did not start:\n{log}"),
            }
        }
    }

    fn try_start() -> Result<Self, StartFailure> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let log_path = dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).expect("moto's log file");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("moto's log file"))
            .stderr(log)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StartFailure::Missing("python3 is not on PATH".to_owned()));
            }
            Err(error) => panic!("cannot start python3: {error}"),
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(if log.contains("No module named") {
                    StartFailure::Missing(log.lines().last().unwrap_or_default().to_owned())
                } else if log.contains("Address already in use") {
                    StartFailure::PortTaken
                } else {
                    StartFailure::Other(log)
                });
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(Self { child, address, _dir: dir });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(StartFailure::Other(format!(
                    "no answer on {address} within {START_TIMEOUT:?}; its log:\n{log}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Creates a bucket with a name no other call in this process gets, and returns it.
    pub fn create_bucket(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name =
            format!("gantry-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let (status, body) = self.request("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "creating bucket {name}: {}", String::from_utf8_lossy(&body));
        name
    }

    /// The object's bytes, or `None` when moto answers 404.
    pub fn object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        match self.request("GET", &format!("/{bucket}/{key}")) {
            (200, body) => Some(body),
            (404, _) => None,
            (status, body) => {
                panic!("GET {bucket}/{key}: {status} {}", String::from_utf8_lossy(&body))
            }
        }
    }

    /// The keys of the bucket's objects (the first thousand).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.list_keys(&format!("/{bucket}?list-type=2"))
    }

    /// The keys of the bucket's multipart uploads that were neither completed nor aborted.
    pub fn open_multipart_uploads(&self, bucket: &str) -> Vec<String> {
        self.list_keys(&format!("/{bucket}?uploads"))
    }

    /// The `<Key>` values of a listing.
    fn list_keys(&self, path: &str) -> Vec<String> {
        let (status, body) = self.request("GET", path);
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "GET {path}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>"))
            .map(|(key, _)| key.to_owned())
            .collect()
    }

    /// One HTTP/1.0 request; the status and body. Moto checks no signature, but treats a
    /// request without any as anonymous and refuses it objects of private buckets.
    fn request(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        let mut stream = TcpStream::connect(self.address).expect("moto answers");
        write!(
            stream,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\nAuthorization: AWS4-HMAC-SHA256 Credential={}/20260101/{}/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\r\n",
            self.address,
            Self::ACCESS_KEY_ID,
            Self::REGION
        )
        .expect("the request is sent");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("moto answers");
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
        let head = String::from_utf8_lossy(&answer[..split]);
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("an HTTP status line: {head}"));
        (status, answer[split + 4..].to_vec())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartFailure {
    Missing(String),
    PortTaken,
    Other(String),
}
