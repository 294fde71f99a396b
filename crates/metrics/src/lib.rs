//! Serving Prometheus metrics: a plain-HTTP listener whose `/metrics` answers with what
//! a render function produces at scrape time, in the OpenMetrics text format that
//! Prometheus reads. Values that live in a database (runs pending, workers) are read
//! when scraped rather than mirrored in memory, so they can never drift.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The media type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// A bound metrics listener, not yet serving: binding early lets a busy port fail the
/// start with a clear error instead of a log line later.
#[derive(Debug)]
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
}

impl MetricsListener {
    pub async fn bind(address: SocketAddr) -> io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self { listener, local_addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `GET /metrics` with `render`'s text until `shutdown` is cancelled. A render
    /// error answers 503 with the error, which Prometheus shows as the scrape's failure.
    pub async fn serve<F, Fut>(self, render: F, shutdown: CancellationToken)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let render = Arc::new(render);
        let app = Router::new()
            .route(
                "/metrics",
                get(move || {
                    let render = Arc::clone(&render);
                    async move { respond(render().await) }
                }),
            )
            .fallback(|| async {
                (StatusCode::NOT_FOUND, "Gantry serves its metrics at /metrics\n")
            });
        let address = self.local_addr;
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%address, %error, "the metrics listener stopped");
        }
    }
}

fn respond(rendered: Result<String, String>) -> Response {
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("the metrics cannot be read now: {error}\n"))
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    async fn scrape(address: SocketAddr, path: &str) -> (StatusCode, String, String) {
        let response = reqwest::get(format!("http://{address}{path}")).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    #[tokio::test]
    async fn metrics_are_rendered_at_each_scrape() {
        let counter = Counter::<u64>::default();
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr();
        let shutdown = CancellationToken::new();
        let served = {
            let counter = counter.clone();
            tokio::spawn(listener.serve(
                move || {
                    let counter = counter.clone();
                    async move {
                        let mut registry = Registry::default();
                        registry.register("scrapes", "Scrapes so far", counter);
                        Ok(encode(&registry))
                    }
                },
                shutdown.clone(),
            ))
        };

        counter.inc();
        let (status, content_type, body) = scrape(address, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, CONTENT_TYPE);
        assert!(body.contains("scrapes_total 1\n"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        counter.inc();
        assert!(scrape(address, "/metrics").await.2.contains("scrapes_total 2\n"));

        let (status, _, body) = scrape(address, "/").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("/metrics"));

        shutdown.cancel();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn a_render_error_is_a_503_that_says_why() {
        let listener = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr();
        let shutdown = CancellationToken::new();
        tokio::spawn(
            listener.serve(|| async { Err("the database is locked".to_owned()) }, shutdown.clone()),
        );
        let (status, _, body) = scrape(address, "/metrics").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("the database is locked"), "{body}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_busy_port_is_an_error_at_bind_time() {
        let first = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(MetricsListener::bind(first.local_addr()).await.is_err());
    }
}
