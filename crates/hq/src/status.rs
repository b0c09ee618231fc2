//! The status endpoint: `/metrics` (Prometheus text), `/healthz` and `/stores` (the fleet at a
//! glance, [`crate::fleet`]), on `[status] listen`.

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
    fleet: crate::fleet::Source,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let metrics_fleet = fleet.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let mut text = render(&stats.lock().unwrap_or_else(|p| p.into_inner()).clone());
                let fleet = metrics_fleet.clone();
                async move {
                    text.push_str(&fleet_series(&fleet).await);
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/stores",
            get(move || {
                let fleet = fleet.clone();
                async move { stores_page(&fleet).await }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "status endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await
}

/// Each store's series from the broker's retained statuses (not the journey store: a scrape
/// stays light); none without an MQTT broker to read.
async fn fleet_series(fleet: &crate::fleet::Source) -> String {
    if fleet.broker.is_none() {
        return String::new();
    }
    let statuses_only = crate::fleet::Source {
        broker: fleet.broker.clone(),
        security: fleet.security.clone(),
        store_path: None,
    };
    match crate::fleet::view(&statuses_only).await {
        Ok(rows) => crate::fleet_metrics::render(Some(&rows)),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the fleet's statuses could not be read for /metrics");
            crate::fleet_metrics::render(None)
        }
    }
}

/// The fleet page; a broker or journey store that cannot be read is a 503 that says why.
async fn stores_page(fleet: &crate::fleet::Source) -> axum::response::Response {
    use axum::http::StatusCode;
    match crate::fleet::view(fleet).await {
        Ok(rows) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            crate::fleet::html(&rows),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the fleet view is unavailable: {e:#}\n"),
        )
            .into_response(),
    }
}
