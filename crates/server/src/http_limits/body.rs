//! Request bodies a handler did not read to the end. A client that is still sending
//! when the answer comes (a 401, a 413) would, if the connection closed under it, get a
//! reset instead of the answer; reading what is left, up to a bound, lets it read the
//! answer, and keeps the connection usable.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use futures_util::{Stream, StreamExt};

/// The most of an unread body read and thrown away before answering.
pub(crate) const DRAIN_LIMIT: u64 = 128 * 1024 * 1024;

/// Where a body returns when its reader drops it before its end.
pub(crate) type Leftover = Arc<Mutex<Option<BodyDataStream>>>;

/// `body` with at most `frame_timeout` between its pieces, and what is left of it when
/// its reader drops it early.
pub(crate) fn returning(body: Body, frame_timeout: Duration) -> (Body, Leftover) {
    let timed = Body::new(tower_http::timeout::TimeoutBody::new(frame_timeout, body));
    let leftover = Leftover::default();
    let body = Returning {
        stream: Some(timed.into_data_stream()),
        ended: false,
        leftover: Arc::clone(&leftover),
    };
    (Body::from_stream(body), leftover)
}

struct Returning {
    stream: Option<BodyDataStream>,
    ended: bool,
    leftover: Leftover,
}

impl Stream for Returning {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(stream) = self.stream.as_mut() else { return Poll::Ready(None) };
        let next = stream.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        next
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take()
            && !self.ended
        {
            *self.leftover.lock().unwrap_or_else(PoisonError::into_inner) = Some(stream);
        }
    }
}

/// Reads and discards `stream` to its end; `false` if it was longer than `limit`, broke
/// off, or took longer than `deadline`.
pub(crate) async fn drain(mut stream: BodyDataStream, limit: u64, deadline: Duration) -> bool {
    let reading = async {
        let mut read = 0u64;
        while let Some(piece) = stream.next().await {
            let Ok(piece) = piece else { return false };
            read += piece.len() as u64;
            if read > limit {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(deadline, reading).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(count: usize) -> Body {
        let stream = futures_util::stream::iter(
            (0..count).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789"))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn what_a_reader_leaves_comes_back_and_a_body_read_to_its_end_does_not() {
        let (body, leftover) = returning(pieces(5), Duration::from_secs(5));
        let mut stream = body.into_data_stream();
        stream.next().await.unwrap().unwrap();
        drop(stream);
        let rest = leftover.lock().unwrap().take().expect("the rest came back");
        assert!(drain(rest, 40, Duration::from_secs(5)).await);

        let (body, leftover) = returning(pieces(5), Duration::from_secs(5));
        axum::body::to_bytes(body, 1000).await.unwrap();
        assert!(leftover.lock().unwrap().is_none());
    }

    #[tokio::test]
    async fn draining_stops_at_its_limit() {
        let (body, _) = returning(pieces(5), Duration::from_secs(5));
        assert!(!drain(body.into_data_stream(), 49, Duration::from_secs(5)).await);
    }
}
