//! The run log on its way to the launcher: text is handed over without waiting, a pump
//! task posts it in order, and `flush` waits until everything handed over so far was
//! delivered, which every report does first ("logs complete before state changes").
//!
//! Batching is natural: while one post is in flight, new text waits in the channel;
//! when the post returns, everything waiting goes out as the next post. The first
//! output therefore leaves at once, and a chatty tool costs few requests.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::WorkerError;
use crate::client::LauncherClient;

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
    let mut flushes = Vec::new();
    while let Some(first) = commands.recv().await {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                LogCommand::Text(text) => batch.push_str(&text),
                LogCommand::Flush(done) => flushes.push(done),
            }
            next = commands.try_recv().ok();
        }
        if !batch.is_empty() {
            client.log(std::mem::take(&mut batch)).await?;
        }
        // Every flush in this batch came after text that is now delivered.
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    Ok(())
}
