//! A TCP proxy that cuts every connection through it at a fixed interval: a network
//! that keeps failing, for proving that retries lose and duplicate nothing. It forwards
//! bytes only, so TLS runs end to end through it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct FlakyProxy {
    pub address: SocketAddr,
    cuts: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FlakyProxy {
    /// Forwards connections to `target`, cutting all of them every `interval`.
    pub fn start(target: SocketAddr, interval: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("the proxy's address");
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let cuts = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));

        let (accepted, stopping) = (Arc::clone(&open), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = accepted.lock().unwrap();
                    for stream in [&client, &server] {
                        if let Ok(clone) = stream.try_clone() {
                            open.push(clone);
                        }
                    }
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });

        let (cutting, counted, stopping) = (open, Arc::clone(&cuts), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(interval);
                let streams: Vec<TcpStream> = std::mem::take(&mut *cutting.lock().unwrap());
                if !streams.is_empty() {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                for stream in streams {
                    let _ = stream.shutdown(Shutdown::Both);
                }
            }
        });
        Self { address, cuts, stop }
    }

    /// How many times connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::Relaxed)
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if to.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock the accept loop.
        let _ = TcpStream::connect(self.address);
    }
}
