//! Status: what staff and technicians see, and what systemd is told.
//!
//! - [`board`]: each device's last word, posted by the link for every reading.
//! - [`health`]: the monitor that checks the outbox answers and the link drains (systemd's
//!   watchdog follows it) and keeps the `STATUS=` line current.
//! - [`report`]: the facts the page shows, gathered per request; [`verdict`]: the one pure
//!   judgement of them (ok / degraded / down, with reasons) that the banner, `/healthz`,
//!   `phygate status` and `STATUS=` all say.
//! - the listener (`[status] listen`, loopback by default): `/` the staff page ([`page`]),
//!   `/status.json` (what `phygate status` prints, [`cli`]), `/metrics` ([`prom`]), `/healthz`.
//! - [`notify`]: `READY=1`, `STATUS=`, `WATCHDOG=1`, `RELOADING=1`, `STOPPING=1`.
//! - [`log`]: the logger and its live filter. Reloads (`daemon::reload`) belong to the wiring,
//!   which alone knows the whole config; [`Ops::start`] hands them the live settings.
//!
//! A status listener that cannot bind is logged and retried, but never stops the gateway:
//! events matter more than the page about them.

pub mod board;
pub mod cli;
pub mod facts;
pub mod health;
pub mod log;
pub mod notify;
pub mod page;
pub mod pipeline;
pub mod prom;
pub mod report;
pub mod rfc3339;
pub mod settings;
pub mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

pub use board::Board;
pub use pipeline::{hq_link_failed, hq_publish_accepted, hq_publish_refused};
pub use settings::{LogConfig, OpsSettings, StatusConfig};

use self::health::Monitor;
use self::notify::Notifier;
use self::pipeline::Health;
use self::report::Reporter;
use self::verdict::Level;
use crate::outbox::OutboxHandle;
use crate::shutdown::Shutdown;
use crate::sources::Reading;

/// Wait before trying again to bind a status address that was taken.
const REBIND_EVERY: Duration = Duration::from_secs(30);

/// The running status side: monitor, listener, reloader; they stop at the shutdown signal.
pub struct Ops {
    tasks: Vec<JoinHandle<()>>,
    notifier: Notifier,
}

/// What the status side watches.
pub struct Watched {
    pub board: Board,
    pub outbox: OutboxHandle,
    /// The link's queue, to see it drain (weak: it must not keep the link running).
    pub readings: mpsc::WeakSender<Reading>,
}

/// What a config reloader is handed: the live settings it may change, systemd's notifier (it
/// says `RELOADING=1`) and the shutdown signal, at which it stops with the status side.
pub struct Live {
    pub status: watch::Sender<StatusConfig>,
    pub notifier: Notifier,
    pub shutdown: Shutdown,
}

impl Ops {
    /// Starts the monitor, the listener and the reloader (`reloader`, from the wiring), which
    /// all run until `shutdown`, and tells systemd `READY=1`.
    pub fn start(
        settings: OpsSettings,
        watched: Watched,
        reloader: impl FnOnce(Live) -> JoinHandle<()>,
        shutdown: Shutdown,
    ) -> Ops {
        let notifier = Notifier::from_env();
        log::apply(&settings.log);
        let (status_tx, status_rx) = watch::channel(settings.status);
        let shared = Arc::new(Reporter::new(
            settings.report,
            watched.board,
            Health::default(),
            status_rx.clone(),
        ));
        let monitor = Monitor::new(
            shared.clone(),
            watched.outbox,
            watched.readings,
            notifier.clone(),
        );
        let tasks = vec![
            tokio::spawn(monitor.run(shutdown.clone())),
            tokio::spawn(serve(shared, status_rx, shutdown.clone())),
            reloader(Live {
                status: status_tx,
                notifier: notifier.clone(),
                shutdown,
            }),
        ];
        if let Some(w) = notifier.watchdog {
            info!(watchdog = ?w, "systemd watchdog on");
        }
        notifier.ready("running");
        Ops { tasks, notifier }
    }

    /// Tells systemd `STOPPING=1`: call as the shutdown begins.
    pub fn stopping(&self) {
        self.notifier.stopping();
    }

    /// Waits for the status tasks, which end at the shutdown signal.
    pub async fn stopped(self) {
        for t in self.tasks {
            // A status task that panicked has nothing left to hand on: shutdown goes on.
            let _ = t.await;
        }
    }
}

/// Serves on `[status] listen` until `stop`; moves to a new address when a reload changes it
/// (bound before the old one is let go, so a bad address keeps the page where it was).
async fn serve(shared: Arc<Reporter>, mut status: watch::Receiver<StatusConfig>, stop: Shutdown) {
    let router = Router::new()
        .route("/", get(page))
        .route("/status.json", get(json))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared);
    let mut listener = loop {
        let addr = status.borrow_and_update().listen;
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                error!(%addr, error = %e, retry_in = ?REBIND_EVERY, "the status page cannot listen; the gateway runs on without it");
                tokio::select! {
                    _ = tokio::time::sleep(REBIND_EVERY) => {}
                    _ = status.changed() => {}
                    _ = stop.stopped() => return,
                }
            }
        }
    };
    loop {
        let addr = listener.local_addr().ok();
        if let Some(addr) = addr {
            info!("status page on http://{addr}/");
        }
        let server = axum::serve(listener, router.clone());
        tokio::select! {
            r = server => {
                // axum's serve only returns on a fatal accept-loop error.
                if let Err(e) = r {
                    error!(error = %e, "the status listener stopped");
                }
                return;
            }
            next = next_listener(&mut status, addr) => listener = next,
            _ = stop.stopped() => return,
        }
    }
}

/// The listener for the next `[status] listen` a reload asks for; a failed bind is logged and
/// the current one stays.
async fn next_listener(
    status: &mut watch::Receiver<StatusConfig>,
    current: Option<SocketAddr>,
) -> TcpListener {
    loop {
        if status.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let want = status.borrow_and_update().listen;
        if Some(want) == current {
            continue;
        }
        match TcpListener::bind(want).await {
            Ok(l) => {
                info!(from = ?current, to = %want, "status page moves");
                return l;
            }
            Err(e) => {
                error!(addr = %want, error = %e, "the status page cannot move there; it stays where it is")
            }
        }
    }
}

async fn page(State(s): State<Arc<Reporter>>) -> Response {
    let html = page::render(&s.report());
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

async fn json(State(s): State<Arc<Reporter>>) -> Response {
    let body = serde_json::to_string_pretty(&s.report()).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<Reporter>>) -> Response {
    let body = prom::render(&s.board.devices(SystemTime::now()), &s.health.get());
    ([(header::CONTENT_TYPE, prom::CONTENT_TYPE)], body).into_response()
}

/// The verdict for probes: the level on the first line (`ok`, `degraded`, `down`), then one
/// reason per line.
///
/// `200` for ok and degraded, `503` for down. A monitoring probe (an uptime checker, a
/// Prometheus blackbox probe, a load balancer) reads any non-2xx as "this service is failing"
/// and pages or restarts. A degraded gateway is still doing its job, taking every reading and
/// keeping it in the outbox, through an HQ outage or a device someone tripped over; paging or
/// restarting for that would cry wolf and could not fix it. Down means events are being lost
/// or not taken, which is worth a page. (systemd does not poll this: its watchdog follows the
/// monitor's own liveness check, see [`health`].) A probe that wants degraded too matches the
/// body's first line.
async fn healthz(State(s): State<Arc<Reporter>>) -> Response {
    let verdict = s.report().verdict;
    let code = match verdict.level {
        Level::Ok | Level::Degraded => StatusCode::OK,
        Level::Down => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = format!("{}\n", verdict.level);
    for text in verdict.texts() {
        body.push_str(text);
        body.push('\n');
    }
    (code, [(header::CACHE_CONTROL, "no-store")], body).into_response()
}
