//! The run log on its way to the launcher: text is handed over without waiting, a pump
//! task posts it in order, and `flush` waits until everything handed over so far was
//! delivered, which every report does first ("logs complete before state changes").
//!
//! Batching is natural: while one post is in flight, new text waits in the channel;
//! when the post returns, what waits goes out as the next post. The first output
//! therefore leaves at once, and a chatty tool costs few requests. A post carries at
//! most `MAX_POST_BYTES` of text, whatever the tool printed meanwhile; one the launcher
//! still finds too large (413) is sent again in halves.

use hyper::StatusCode;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::WorkerError;
use crate::client::LauncherClient;

/// The most text one post carries. JSON escaping at most sextuples text (`\u001b`), so a
/// post stays under the launcher's 2 MiB body limit whatever the tool prints.
const MAX_POST_BYTES: usize = 256 * 1024;
/// A piece the launcher refuses as too large is not split below this.
const MIN_POST_BYTES: usize = 1024;

enum LogCommand {
    Text(String),
    /// Answered once every text sent before it was delivered.
    Flush(oneshot::Sender<()>),
}

/// The sending side of the run log.
pub(crate) struct LogSink {
    commands: mpsc::UnboundedSender<LogCommand>,
    /// The pump; taken when it stopped, to learn why.
    pump: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl LogSink {
    pub(crate) fn start(client: LauncherClient) -> Self {
        let (commands, receiver) = mpsc::unbounded_channel();
        let pump = tokio::spawn(pump(client, receiver));
        Self { commands, pump: Some(pump) }
    }

    /// Queues text for the log. A delivery failure surfaces at the next [`Self::flush`].
    pub(crate) fn write(&self, text: impl Into<String>) {
        let text = text.into();
        if !text.is_empty() {
            // Fails only when the pump stopped, which `flush` reports.
            let _ = self.commands.send(LogCommand::Text(text));
        }
    }

    /// Waits until every text written so far was delivered to the launcher.
    pub(crate) async fn flush(&mut self) -> Result<(), WorkerError> {
        let (done, delivered) = oneshot::channel();
        if self.commands.send(LogCommand::Flush(done)).is_ok() && delivered.await.is_ok() {
            return Ok(());
        }
        // The pump stopped, and only a failed delivery stops it while `self` lives.
        match self.pump.take() {
            Some(pump) => match pump.await {
                Ok(Err(error)) => Err(error),
                Ok(Ok(())) | Err(_) => Err(WorkerError::LogsUndeliverable),
            },
            None => Err(WorkerError::LogsUndeliverable),
        }
    }
}

async fn pump(
    client: LauncherClient,
    mut commands: mpsc::UnboundedReceiver<LogCommand>,
) -> Result<(), WorkerError> {
    let mut batch = String::new();
    while let Some(first) = commands.recv().await {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                LogCommand::Text(text) => batch.push_str(&text),
                // Everything written before the flush goes first.
                LogCommand::Flush(done) => {
                    deliver(&client, &std::mem::take(&mut batch)).await?;
                    let _ = done.send(());
                }
            }
            // What waits beyond one post's worth stays in the channel for the next post.
            next = if batch.len() < MAX_POST_BYTES { commands.try_recv().ok() } else { None };
        }
        deliver(&client, &std::mem::take(&mut batch)).await?;
    }
    Ok(())
}

/// Posts `text` in order, in pieces of at most `MAX_POST_BYTES`; a piece the launcher
/// refuses as too large goes again in halves.
async fn deliver(client: &LauncherClient, text: &str) -> Result<(), WorkerError> {
    // The pieces still to send, the next one last.
    let mut pieces: Vec<&str> = split_at_char_boundaries(text, MAX_POST_BYTES);
    pieces.reverse();
    while let Some(piece) = pieces.pop() {
        match client.log(piece.to_owned()).await {
            Ok(()) => {}
            Err(WorkerError::Refused { status: StatusCode::PAYLOAD_TOO_LARGE, .. })
                if piece.len() > MIN_POST_BYTES =>
            {
                let halves = split_at_char_boundaries(piece, piece.len().div_ceil(2));
                pieces.extend(halves.into_iter().rev());
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Pieces of at most `max` bytes (at least one character each), never splitting a
/// character; none for empty text.
fn split_at_char_boundaries(text: &str, max: usize) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = max.min(rest.len());
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        pieces.push(&rest[..end]);
        rest = &rest[end..];
    }
    pieces
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn text_is_split_into_bounded_pieces_without_breaking_characters() {
        let text = "é".repeat(10);
        let pieces = split_at_char_boundaries(&text, 5);
        assert_eq!(pieces.concat(), text);
        assert!(pieces.iter().all(|piece| piece.len() <= 5 && !piece.is_empty()));
        assert_eq!(split_at_char_boundaries("short", 64), vec!["short"]);
        assert!(split_at_char_boundaries("", 64).is_empty());
        assert_eq!(split_at_char_boundaries("éé", 1), vec!["é", "é"], "a character is never cut");
    }

    /// A launcher's log endpoint on a unix socket that refuses bodies over `limit` bytes
    /// with 413, as axum's body limit does, and keeps the text of the others.
    async fn launcher(
        socket: std::path::PathBuf,
        limit: usize,
    ) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
        let received = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let kept = Arc::clone(&received);
        let server = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                let (head_end, length) = loop {
                    let read = stream.read(&mut buffer).await.unwrap();
                    request.extend_from_slice(&buffer[..read]);
                    let text = String::from_utf8_lossy(&request);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|line| {
                                line.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|value| value.trim().parse::<usize>().unwrap())
                            })
                            .unwrap();
                        break (end + 4, length);
                    }
                };
                let answer = if length > limit {
                    "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n"
                } else {
                    while request.len() < head_end + length {
                        let read = stream.read(&mut buffer).await.unwrap();
                        request.extend_from_slice(&buffer[..read]);
                    }
                    let log: gantry_proto::local::WorkerLog =
                        serde_json::from_slice(&request[head_end..]).unwrap();
                    kept.lock().unwrap().push(log.text);
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
                };
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (received, server)
    }

    #[tokio::test]
    async fn a_burst_goes_in_bounded_posts_and_refused_ones_in_halves() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("worker.sock");
        // Smaller than one full post: every full post is refused once, then halved.
        let (received, server) = launcher(socket.clone(), 100 * 1024).await;
        let client = LauncherClient::for_socket(&socket);
        let mut sink = LogSink::start(client);
        let lines: Vec<String> = (0..40_000).map(|i| format!("line {i:06}\n")).collect();
        for line in &lines {
            sink.write(line.clone());
        }
        sink.flush().await.unwrap();
        let received = received.lock().unwrap().clone();
        assert_eq!(received.concat(), lines.concat(), "every line, in order, once");
        assert!(received.iter().all(|post| post.len() <= MAX_POST_BYTES / 2), "halved");
        assert!(received.len() > 1);
        server.abort();
    }
}
