//! Accepting connections: at most so many open per source address, and each closed once
//! it has had no request in flight for the idle timeout, whatever bytes trickle in (an
//! HTTP/2 client holding a connection open with pings or a frame sent a byte at a time).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower::Layer;

use super::failures::Address;

/// Open connections per source address.
#[derive(Debug)]
pub(crate) struct ConnectionCounts {
    per_address: u32,
    open: Mutex<HashMap<Address, u32>>,
}

impl ConnectionCounts {
    pub(crate) fn new(per_address: u32) -> Arc<Self> {
        Arc::new(Self { per_address, open: Mutex::default() })
    }

    /// A permit for one more connection from `ip`, or `None` when it holds its share.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let address = Address::from(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(address).or_default();
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(Permit { counts: Arc::clone(self), address })
    }
}

/// One open connection, counted until it is dropped.
#[derive(Debug)]
struct Permit {
    counts: Arc<ConnectionCounts>,
    address: Address,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

/// Whether a connection is serving a request, and since when it is not. Requests hold
/// an [`InFlight`] until their response body is sent or dropped.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Requests in flight, and when the last one ended (or the connection opened).
    state: Mutex<(usize, Instant)>,
}

impl Activity {
    fn new() -> Self {
        Self { state: Mutex::new((0, Instant::now())) }
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        InFlight(Arc::clone(self))
    }

    /// `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        let (in_flight, since) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (in_flight == 0).then_some(since)
    }
}

/// A request being served on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= 1;
        if state.0 == 0 {
            state.1 = Instant::now();
        }
    }
}

/// Wraps the TLS acceptor: refuses a connection over its address's share before the
/// handshake, and gives every request the connection's [`Activity`] (as an extension).
#[derive(Debug, Clone)]
pub(crate) struct GuardedAcceptor<A> {
    inner: A,
    counts: Arc<ConnectionCounts>,
    idle_timeout: Duration,
}

impl<A> GuardedAcceptor<A> {
    pub(crate) fn new(inner: A, counts: Arc<ConnectionCounts>, idle_timeout: Duration) -> Self {
        Self { inner, counts, idle_timeout }
    }
}

type Accepted<T, S> = Pin<Box<dyn Future<Output = io::Result<(IdleStream<T>, S)>> + Send>>;

impl<A, S> Accept<TcpStream, S> for GuardedAcceptor<A>
where
    A: Accept<TcpStream, AddExtension<S, Arc<Activity>>>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = IdleStream<A::Stream>;
    type Service = A::Service;
    type Future = Accepted<A::Stream, A::Service>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(error) => return Box::pin(std::future::ready(Err(error))),
        };
        let Some(permit) = self.counts.admit(peer.ip()) else {
            tracing::debug!(%peer, "connection refused: its address holds its share of connections");
            let error = io::Error::other(format!(
                "{} already holds {} connections",
                peer.ip(),
                self.counts.per_address
            ));
            return Box::pin(std::future::ready(Err(error)));
        };
        let activity = Arc::new(Activity::new());
        let accepting = self.inner.accept(stream, Extension(Arc::clone(&activity)).layer(service));
        let idle_timeout = self.idle_timeout;
        Box::pin(async move {
            let (stream, service) = accepting.await?;
            let idle = IdleStream {
                inner: stream,
                timer: Box::pin(tokio::time::sleep(idle_timeout)),
                activity,
                idle_timeout,
                _permit: permit,
            };
            Ok((idle, service))
        })
    }
}

/// A connection that reads as closed once it has been idle for the timeout: hyper then
/// ends it, whichever protocol it speaks.
#[derive(Debug)]
pub(crate) struct IdleStream<T> {
    inner: T,
    timer: Pin<Box<Sleep>>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    _permit: Permit,
}

impl<T> IdleStream<T> {
    /// Whether the connection has been idle too long; otherwise arms the timer for the
    /// next moment it could be.
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = match self.activity.idle_since() {
                Some(since) => since + self.idle_timeout,
                None => now + self.idle_timeout,
            };
            if deadline <= now {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.idled_out(cx) => {
                tracing::debug!("closing a connection idle for {:?}", this.idle_timeout);
                // Nothing read: end of stream.
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_its_share_and_gets_it_back_as_connections_close() {
        let counts = ConnectionCounts::new(2);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.admit(one).unwrap();
        let _second = counts.admit(one).unwrap();
        assert!(counts.admit(one).is_none());
        assert!(counts.admit(other).is_some(), "another address has its own share");
        drop(first);
        assert!(counts.admit(one).is_some());
    }

    #[tokio::test]
    async fn a_connection_reads_as_closed_only_after_the_timeout_with_no_request_in_flight() {
        use tokio::io::AsyncReadExt;
        let counts = ConnectionCounts::new(1);
        let permit = counts.admit("192.0.2.1".parse().unwrap()).unwrap();
        let (_client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_millis(200);
        let mut stream = IdleStream {
            inner: server,
            timer: Box::pin(tokio::time::sleep(timeout)),
            activity: Arc::clone(&activity),
            idle_timeout: timeout,
            _permit: permit,
        };
        let request = activity.begin();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(timeout * 4, stream.read(&mut buf)).await;
        assert!(read.is_err(), "a request in flight keeps the connection open");
        drop(request);
        let started = Instant::now();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0, "idle: it reads as closed");
        assert!(started.elapsed() >= timeout, "closed after {:?}", started.elapsed());
        drop(stream);
        assert!(counts.admit("192.0.2.1".parse().unwrap()).is_some(), "the permit went back");
    }
}
