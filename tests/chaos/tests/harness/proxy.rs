//! The agent plane's network: a TCP proxy between the launchers and the server replicas
//! that forwards each connection to the next replica that answers (a TLS-passthrough load
//! balancer), and that a fault can partition: dropping every connection (and refusing new
//! ones) or stalling them (bytes held, nothing forwarded) until it heals.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The state of the network between launchers and servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Partition {
    Healed,
    Dropping,
    Stalling,
}

#[derive(Default)]
struct Shared {
    partition: Mutex<Option<Partition>>,
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn partition(&self) -> Partition {
        self.partition.lock().unwrap().unwrap_or(Partition::Healed)
    }

    /// Waits while stalled; false when the connection must go (dropping or stopping).
    fn wait_while_stalled(&self) -> bool {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            match self.partition() {
                Partition::Healed => return true,
                Partition::Dropping => return false,
                Partition::Stalling => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// A running proxy; dropping it stops it.
pub(crate) struct AgentProxy {
    pub(crate) address: SocketAddr,
    shared: Arc<Shared>,
}

impl AgentProxy {
    pub(crate) fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the agent proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            let next = AtomicUsize::new(0);
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let start = next.fetch_add(1, Ordering::Relaxed);
                let (shared, backends) = (Arc::clone(&accepting), backends.clone());
                std::thread::spawn(move || connect(&shared, client, &backends, start));
            }
        });
        Self { address, shared }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    pub(crate) fn set(&self, partition: Partition) {
        *self.shared.partition.lock().unwrap() = Some(partition);
        if partition == Partition::Dropping {
            for stream in std::mem::take(&mut *self.shared.open.lock().unwrap()) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn connect(shared: &Arc<Shared>, client: TcpStream, backends: &[SocketAddr], start: usize) {
    if !shared.wait_while_stalled() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let server = (0..backends.len()).find_map(|attempt| {
        let backend = backends[(start + attempt) % backends.len()];
        TcpStream::connect_timeout(&backend, Duration::from_secs(2)).ok()
    });
    let Some(server) = server else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    {
        let mut open = shared.open.lock().unwrap();
        open.retain(|stream| stream.peer_addr().is_ok());
        for stream in [&client, &server] {
            if let Ok(clone) = stream.try_clone() {
                open.push(clone);
            }
        }
    }
    pipe(shared, &client, &server);
    pipe(shared, &server, &client);
}

fn pipe(shared: &Arc<Shared>, from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if !shared.wait_while_stalled() || to.write_all(&buffer[..read]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.address);
    }
}
