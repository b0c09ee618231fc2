//! The status endpoint: `/metrics` (Prometheus text) and `/healthz`, on `[status] listen`.

use std::net::SocketAddr;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::metrics::{render, Shared};

/// Serves until `shutdown` changes. An address that cannot be bound is an error: the operator
/// asked for the endpoint.
pub async fn serve(
    listen: SocketAddr,
    stats: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = render(&stats.lock().unwrap_or_else(|p| p.into_inner()).clone());
                async move {
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "status endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}
