//! The sinks against local HTTP servers that answer as Braze's and Amplitude's documentation
//! says (429 with a reset header, 201 with partial errors, 400 with event indexes, 5xx, and a
//! connection cut after the request arrived), over a real SQLite journey store in a temp dir.
//! Each server counts every event it took by the event's identity, so "forwarded twice" is
//! counted where it happens, and compared with what the runner announced as ambiguous.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use phygate_hq::metrics::{Shared, SinkFigures, Stats};
use phygate_hq::sink::config::{Secret, SinkConfig, SinkKind};
use phygate_hq::sink::mapping::Mapping;
use phygate_hq::sink::runner::SinkRunner;
use phygate_hq::store::sqlite::{SqliteStore, Synchronous};
use phygate_hq::store::{Group, JourneyStore, SinkLedger};
use serde_json::{json, Value};
use tokio::sync::watch;

/// How the fake engine answers one request.
#[derive(Debug, Clone)]
enum Act {
    Ok,
    /// 429 with `X-RateLimit-Reset` this many seconds ahead (epoch seconds).
    Throttle(u64),
    Status500,
    /// Braze: 201 with `errors` for these event indexes.
    Partial(Vec<usize>),
    /// Amplitude: 400 naming these indexes in `events_with_invalid_fields`.
    Invalid(Vec<usize>),
    /// Takes the events, then drops the connection without an answer.
    Cut,
    /// Takes the events and never answers (the test kills the runner meanwhile).
    Hold,
}

#[derive(Default)]
struct Engine {
    script: Mutex<VecDeque<Act>>,
    /// Event identity → times the engine took it.
    taken: Mutex<BTreeMap<String, u32>>,
    /// Each request: when it arrived, and its events' identities.
    requests: Mutex<Vec<(SystemTime, Vec<String>)>>,
}

impl Engine {
    fn taken(&self) -> BTreeMap<String, u32> {
        self.taken.lock().unwrap().clone()
    }
    fn twice(&self) -> u32 {
        self.taken().values().map(|c| c - 1).sum()
    }
}

/// Braze has no event id: the tests give every event its own `time`, which identifies it.
fn braze_keys(v: &Value) -> Vec<String> {
    let events = v["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| e["time"].as_str().unwrap().to_owned())
        .collect()
}

fn amplitude_keys(v: &Value) -> Vec<String> {
    let events = v["events"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| e["insert_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn answer(engine: &Engine, keys: Vec<String>, braze: bool) -> Response {
    let act = engine.script.lock().unwrap().pop_front().unwrap_or(Act::Ok);
    engine
        .requests
        .lock()
        .unwrap()
        .push((SystemTime::now(), keys.clone()));
    let take = |skip: &[usize]| {
        let mut t = engine.taken.lock().unwrap();
        for (i, k) in keys.iter().enumerate() {
            if !skip.contains(&i) {
                *t.entry(k.clone()).or_default() += 1;
            }
        }
    };
    match act {
        Act::Ok => {
            take(&[]);
            if braze {
                (StatusCode::CREATED, r#"{"message":"success"}"#).into_response()
            } else {
                (StatusCode::OK, r#"{"code":200}"#).into_response()
            }
        }
        Act::Throttle(ahead) => {
            let reset = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + ahead;
            let mut h = HeaderMap::new();
            h.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
            (
                StatusCode::TOO_MANY_REQUESTS,
                h,
                r#"{"message":"rate limited"}"#,
            )
                .into_response()
        }
        Act::Status500 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
        Act::Partial(bad) => {
            take(&bad);
            let errors: Vec<Value> = bad
                .iter()
                .map(|i| json!({"type": "'time' must be a time", "input_array": "events", "index": i}))
                .collect();
            (
                StatusCode::CREATED,
                json!({"message": "success", "errors": errors}).to_string(),
            )
                .into_response()
        }
        Act::Invalid(bad) => (
            StatusCode::BAD_REQUEST,
            json!({"code": 400, "error": "Request missing required field",
                   "events_with_invalid_fields": {"time": bad}})
            .to_string(),
        )
            .into_response(),
        Act::Cut => {
            take(&[]);
            // Unwinding the handler ends the connection's task: the socket closes with no
            // answer. `resume_unwind` skips the panic hook, so nothing is printed.
            std::panic::resume_unwind(Box::new("cut"))
        }
        Act::Hold => {
            take(&[]);
            std::future::pending().await
        }
    }
}

async fn serve(engine: Arc<Engine>) -> SocketAddr {
    let app = Router::new()
        .route(
            "/users/track",
            post(
                |State(e): State<Arc<Engine>>, headers: HeaderMap, body: Bytes| async move {
                    assert_eq!(headers["authorization"], "Bearer braze-key");
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    let events = v["events"].as_array().unwrap();
                    assert!(events.len() <= 75, "Braze takes at most 75 events");
                    assert!(
                        events.iter().all(|e| e["external_id"].is_string()),
                        "anonymous event sent to Braze"
                    );
                    answer(&e, braze_keys(&v), true).await
                },
            ),
        )
        .route(
            "/2/httpapi",
            post(|State(e): State<Arc<Engine>>, body: Bytes| async move {
                assert!(body.len() < 1_000_000);
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["api_key"], "amp-key");
                answer(&e, amplitude_keys(&v), false).await
            }),
        )
        .with_state(engine);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `count` events from store s1, committed in one group; event `i` has the time
/// 05:00:00 + `first + i` ms (its identity at the Braze server) and is anonymous when
/// `anonymous(i)`.
fn commit_events(path: &Path, first: u64, count: u64, anonymous: impl Fn(u64) -> bool) {
    let mut store = SqliteStore::open(path, Synchronous::Normal).unwrap();
    let items: Vec<Value> = (first..first + count)
        .map(|i| {
            let mut e = json!({
                "specversion": "1.0", "id": id(i), "source": "/stores/s1/stations/k",
                "type": "store.skin.diagnosed", "time": time(i),
                "datacontenttype": "application/json", "storeid": "s1", "stationid": "k",
                "gatewayid": "gw1", "seq": i + 1, "idsource": "session", "stage": "engage",
                "clocksync": true,
                "data": {"model": "AX", "measures": {"moisture": i}, "skin_type": "dry"}
            });
            if !anonymous(i) {
                e["userid"] = json!(format!("u-{i}"));
            }
            e
        })
        .collect();
    let payload = serde_json::to_vec(&items).unwrap();
    let topic = phygate_proto::topic::events("acme", "s1");
    let accepted: Vec<_> = phygate_hq::ingest::read_batch(&topic, &payload)
        .into_iter()
        .map(|r| r.expect("a valid event"))
        .collect();
    store
        .commit(&Group {
            accepted: &accepted,
            parked: &[],
            reports: &[],
            gateways: vec![],
            now_ms: 0,
        })
        .unwrap();
}

fn id(i: u64) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

fn time(i: u64) -> String {
    format!(
        "2026-11-23T05:{:02}:{:02}.{:03}Z",
        i / 60_000,
        i / 1000 % 60,
        i % 1000
    )
}

fn sink(name: &str, kind: SinkKind, addr: SocketAddr) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind,
        url: format!("http://{addr}"),
        api_key: Secret(match kind {
            SinkKind::Braze => "braze-key".into(),
            _ => "amp-key".into(),
        }),
        batch: usize::MAX,
        timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        poll: Duration::from_millis(20),
        anonymous: false,
        mapping: Mapping::default(),
    }
}

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: &SinkConfig, path: &Path, stats: &Shared) -> Running {
    let ledger = SqliteStore::open(path, Synchronous::Normal).unwrap();
    let (stop, stopped) = watch::channel(false);
    let runner = SinkRunner::new(config, Box::new(ledger), stats.clone(), stopped).unwrap();
    let task = tokio::spawn(async move { runner.run().await.unwrap() });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

fn figures(stats: &Shared, sink: &str) -> SinkFigures {
    stats
        .lock()
        .unwrap()
        .sinks
        .get(sink)
        .copied()
        .unwrap_or_default()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn new_stats() -> Shared {
    Arc::new(Mutex::new(Stats::default()))
}

fn parked(path: &Path, sink: &str) -> Vec<String> {
    let mut store = SqliteStore::open(path, Synchronous::Normal).unwrap();
    store
        .sink_parked(sink)
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braze_429_waits_for_the_reset_header_and_sends_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    commit_events(&db, 0, 200, |_| false);
    let engine = Arc::new(Engine::default());
    engine
        .script
        .lock()
        .unwrap()
        .extend([Act::Ok, Act::Throttle(1)]);
    let addr = serve(engine.clone()).await;
    let stats = new_stats();
    let run = start(&sink("braze", SinkKind::Braze, addr), &db, &stats);
    wait_for("200 events at Braze", || engine.taken().len() == 200).await;
    wait_for("the cursor at the end", || {
        figures(&stats, "braze").cursor == 200
    })
    .await;
    run.stop().await;

    assert!(
        engine.taken().values().all(|c| *c == 1),
        "an event forwarded twice"
    );
    let requests = engine.requests.lock().unwrap().clone();
    assert_eq!(
        requests.iter().map(|r| r.1.len()).collect::<Vec<_>>(),
        vec![75, 75, 75, 50]
    );
    // The throttled request is sent again, unchanged, no earlier than the reset second.
    assert_eq!(requests[1].1, requests[2].1);
    let reset = requests[1].0.duration_since(UNIX_EPOCH).unwrap().as_secs() + 1;
    assert!(requests[2].0.duration_since(UNIX_EPOCH).unwrap().as_secs() >= reset);
    let f = figures(&stats, "braze");
    assert_eq!(
        (f.forwarded, f.throttled, f.ambiguous, f.lag),
        (200, 1, 0, 0),
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braze_partial_errors_are_parked_and_a_500_is_retried_without_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    commit_events(&db, 0, 150, |_| false);
    let engine = Arc::new(Engine::default());
    engine
        .script
        .lock()
        .unwrap()
        .extend([Act::Partial(vec![3, 10]), Act::Status500, Act::Ok]);
    let addr = serve(engine.clone()).await;
    let stats = new_stats();
    let run = start(&sink("braze", SinkKind::Braze, addr), &db, &stats);
    wait_for("the cursor at the end", || {
        figures(&stats, "braze").cursor == 150
    })
    .await;
    run.stop().await;

    let taken = engine.taken();
    assert_eq!(taken.len(), 148, "all but the two refused");
    assert!(taken.values().all(|c| *c == 1));
    assert!(!taken.contains_key(&time(3)) && !taken.contains_key(&time(10)));
    assert_eq!(parked(&db, "braze"), vec![id(3), id(10)]);
    let f = figures(&stats, "braze");
    assert_eq!(
        (f.forwarded, f.parked, f.retries, f.ambiguous),
        (148, 2, 1, 0),
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_the_request_arrived_is_repeated_once_and_counted_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    commit_events(&db, 0, 100, |_| false);
    let engine = Arc::new(Engine::default());
    engine.script.lock().unwrap().extend([Act::Cut]);
    let addr = serve(engine.clone()).await;
    let stats = new_stats();
    let run = start(&sink("braze", SinkKind::Braze, addr), &db, &stats);
    wait_for("the cursor at the end", || {
        figures(&stats, "braze").cursor == 100
    })
    .await;
    run.stop().await;

    let taken = engine.taken();
    assert_eq!(taken.len(), 100, "nothing skipped");
    let f = figures(&stats, "braze");
    assert_eq!((f.ambiguous, f.ambiguous_events), (1, 75), "{f:?}");
    assert_eq!(
        engine.twice() as u64,
        f.ambiguous_events,
        "every repeat announced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_forwards_nothing_twice_and_a_killed_one_announces_its_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    commit_events(&db, 0, 100, |_| false);
    let engine = Arc::new(Engine::default());
    let addr = serve(engine.clone()).await;
    let config = sink("braze", SinkKind::Braze, addr);

    // A clean stop and a start: the second run begins after the first one's last batch.
    let stats = new_stats();
    let run = start(&config, &db, &stats);
    wait_for("the first 100", || figures(&stats, "braze").cursor == 100).await;
    run.stop().await;
    commit_events(&db, 100, 100, |_| false);
    let stats = new_stats();
    let run = start(&config, &db, &stats);
    wait_for("the next 100", || figures(&stats, "braze").cursor == 200).await;
    run.stop().await;
    assert_eq!(engine.taken().len(), 200);
    assert_eq!(engine.twice(), 0, "a restart sent an event again");

    // Killed while a request is out (the engine took it and has not answered): the next
    // start repeats that request, and says so.
    commit_events(&db, 200, 50, |_| false);
    engine.script.lock().unwrap().extend([Act::Hold]);
    let stats = new_stats();
    let run = start(&config, &db, &stats);
    wait_for("the held request", || engine.taken().len() == 250).await;
    run.task.abort();
    let _ = run.task.await;
    let stats = new_stats();
    let run = start(&config, &db, &stats);
    wait_for("the cursor at the end", || {
        figures(&stats, "braze").cursor == 250
    })
    .await;
    run.stop().await;
    let f = figures(&stats, "braze");
    assert_eq!((f.ambiguous, f.ambiguous_events), (1, 50), "{f:?}");
    assert_eq!(engine.twice() as u64, f.ambiguous_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_events_go_to_amplitude_only_and_its_invalid_events_are_parked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hq.db");
    // Every third event anonymous.
    commit_events(&db, 0, 90, |i| i % 3 == 0);
    let braze = Arc::new(Engine::default());
    let amplitude = Arc::new(Engine::default());
    amplitude
        .script
        .lock()
        .unwrap()
        .extend([Act::Throttle(0), Act::Invalid(vec![0, 5]), Act::Ok]);
    let (b, a) = (serve(braze.clone()).await, serve(amplitude.clone()).await);
    let stats = new_stats();
    let runs = [
        start(&sink("braze", SinkKind::Braze, b), &db, &stats),
        start(&sink("amplitude", SinkKind::Amplitude, a), &db, &stats),
    ];
    wait_for("both cursors at the end", || {
        figures(&stats, "braze").cursor == 90 && figures(&stats, "amplitude").cursor == 90
    })
    .await;
    for r in runs {
        r.stop().await;
    }

    let f = figures(&stats, "braze");
    assert_eq!((f.forwarded, f.skipped), (60, 30), "{f:?}");
    let identified: Vec<String> = (0..90).filter(|i| i % 3 != 0).map(time).collect();
    assert_eq!(braze.taken().into_keys().collect::<Vec<_>>(), identified);
    let f = figures(&stats, "amplitude");
    assert_eq!((f.forwarded, f.parked, f.throttled), (88, 2, 1), "{f:?}");
    let taken = amplitude.taken();
    assert_eq!(taken.len(), 88);
    assert!(taken.values().all(|c| *c == 1));
    assert_eq!(parked(&db, "amplitude"), vec![id(0), id(5)]);
    // The request after the 400 is the same one without the refused events.
    let requests = amplitude.requests.lock().unwrap().clone();
    assert_eq!(requests[2].1.len(), 88);
    assert!(!requests[2].1.contains(&id(0)));
}
