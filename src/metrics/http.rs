//! `GET /metrics` on its own port (axum over HTTP/1), so a firewall or a
//! scrape-only network can treat it apart from the gRPC port.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Metrics, MetricsError, Result, Sampler};

/// The content type of the Prometheus text format the registry writes.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Scrape {
    metrics: Arc<Metrics>,
    sampler: Arc<dyn Sampler>,
}

/// Binds the metrics port; done at start, so a taken port fails the start.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    sampler: Arc<dyn Sampler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening on http");
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape { metrics, sampler });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

async fn scrape(State(s): State<Scrape>) -> impl IntoResponse {
    let sampler = s.sampler.clone();
    // The store's size reads the disk: off the async threads.
    let sample = tokio::task::spawn_blocking(move || sampler.sample())
        .await
        .ok();
    match s.metrics.render(sample) {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            e.to_string(),
        ),
    }
}
