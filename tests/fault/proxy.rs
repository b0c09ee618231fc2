//! A small TCP proxy between phygate and the broker that misbehaves on command, the way store
//! WANs do: it can blackhole traffic (stop moving bytes, no RST, no FIN), delay it, refuse
//! connections (accept, then close), or cut a connection in the middle of a packet.
//!
//! It runs on its own tokio runtime thread; the test drives it through [`Proxy`]'s methods and
//! reads back when each connection attempt arrived, to check reconnect spacing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways (after the configured delay).
    Pass,
    /// Move no byte either way and read none (the peers' windows fill), close nothing: a
    /// partition. Connections already open stay open; new ones are accepted and hang.
    Blackhole,
    /// Accept each connection and close it at once: a broker host whose broker is down.
    Refuse,
}

struct Control {
    mode: watch::Sender<Mode>,
    /// Added before each chunk is forwarded, both ways.
    delay: Mutex<Duration>,
    /// Cut the next phygate → broker chunk of at least this many bytes after half of it.
    cut_next: Mutex<Option<usize>>,
    cuts: AtomicUsize,
    /// When each connection attempt was accepted.
    accepts: Mutex<Vec<Instant>>,
    /// When each connection attempt was accepted, with the MQTT client id its CONNECT named
    /// (phygate opens two sessions, the uplink's and the downlink's, each with its own backoff).
    connects: Mutex<Vec<(Instant, String)>>,
    /// Bytes forwarded phygate → broker.
    upstream_bytes: AtomicU64,
    /// Bumped to sever every open connection.
    generation: watch::Sender<u64>,
}

pub struct Proxy {
    pub port: u16,
    control: Arc<Control>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let control = Arc::new(Control {
            mode: watch::channel(Mode::Pass).0,
            delay: Mutex::new(Duration::ZERO),
            cut_next: Mutex::new(None),
            cuts: AtomicUsize::new(0),
            accepts: Mutex::new(Vec::new()),
            connects: Mutex::new(Vec::new()),
            upstream_bytes: AtomicU64::new(0),
            generation: watch::channel(0).0,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let c = control.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let upstream: SocketAddr = ([127, 0, 0, 1], upstream).into();
                    tokio::select! {
                        _ = accept_loop(listener, upstream, c) => {}
                        _ = stopped => {}
                    }
                });
            })
            .unwrap();
        Proxy {
            port,
            control,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.control.delay.lock().unwrap() = delay;
    }

    /// Arms a cut: the next phygate → broker chunk of `min_len` bytes or more is forwarded only
    /// up to its middle, then both connections are closed.
    pub fn cut_next_chunk(&self, min_len: usize) {
        *self.control.cut_next.lock().unwrap() = Some(min_len);
    }

    /// How many cuts happened.
    pub fn cuts(&self) -> usize {
        self.control.cuts.load(Ordering::SeqCst)
    }

    /// Closes every open connection (FIN both ways).
    pub fn sever_all(&self) {
        self.control.generation.send_modify(|g| *g += 1);
    }

    /// When each connection attempt arrived, in order.
    pub fn accepts(&self) -> Vec<Instant> {
        self.control.accepts.lock().unwrap().clone()
    }

    /// When each attempt of the client whose id `keep` accepts was accepted (see `connects`).
    pub fn accepts_of(&self, keep: impl Fn(&str) -> bool) -> Vec<Instant> {
        let connects = self.control.connects.lock().unwrap();
        let mut times: Vec<Instant> = connects
            .iter()
            .filter(|(_, id)| keep(id))
            .map(|(t, _)| *t)
            .collect();
        times.sort();
        times
    }

    pub fn upstream_bytes(&self) -> u64 {
        self.control.upstream_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, c: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let accepted = Instant::now();
        c.accepts.lock().unwrap().push(accepted);
        if *c.mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        let c = c.clone();
        tokio::spawn(async move {
            let mut client = client;
            // The client speaks first (CONNECT): read it to learn who is calling, then forward
            // it ahead of everything else.
            let mut first = vec![0u8; 1024];
            let first_len =
                match tokio::time::timeout(Duration::from_secs(5), client.read(&mut first)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => return,
                };
            first.truncate(first_len);
            let id = mqtt_client_id(&first).unwrap_or_default();
            c.connects.lock().unwrap().push((accepted, id));
            let mut severed = c.generation.subscribe();
            severed.borrow_and_update();
            // In a blackhole the connection attempt itself hangs, as SYNs into a dead route do.
            let mut mode = c.mode.subscribe();
            if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(upstream).await else {
                return; // the broker is down: the client sees the connection close
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, mut sw) = server.into_split();
            c.upstream_bytes
                .fetch_add(first.len() as u64, Ordering::SeqCst);
            if sw.write_all(&first).await.is_err() {
                return;
            }
            tokio::select! {
                _ = pump(cr, sw, c.clone(), true) => {}
                _ = pump(sr, cw, c.clone(), false) => {}
                _ = severed.changed() => {}
            }
            // Dropping both halves of both sockets closes them.
        });
    }
}

/// The client id of an MQTT 3.1.1 / 5 CONNECT packet at the start of `bytes`.
fn mqtt_client_id(bytes: &[u8]) -> Option<String> {
    if bytes.first()? >> 4 != 1 {
        return None;
    }
    // Remaining length: a varint of up to four bytes.
    let mut at = 1;
    while bytes.get(at)? & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let name_len = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize;
    at += 2 + name_len;
    let level = *bytes.get(at)?;
    at += 1 + 1 + 2; // level, flags, keep-alive
    if level == 5 {
        // MQTT 5: properties, their length a varint.
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = *bytes.get(at)?;
            at += 1;
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        at += len;
    }
    let id_len = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]) as usize;
    let id = bytes.get(at + 2..at + 2 + id_len)?;
    Some(String::from_utf8_lossy(id).into_owned())
}

/// Moves bytes one way until EOF, an error, or a cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    c: Arc<Control>,
    upstream: bool,
) {
    let mut mode = c.mode.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A blackhole reads nothing, so the sender's socket buffers fill as on a dead route.
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = *c.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Bytes read just before a blackhole began are held until it ends, as a network would
        // retransmit them.
        if mode.wait_for(|m| *m != Mode::Blackhole).await.is_err() {
            return;
        }
        if upstream {
            let cut = {
                let mut armed = c.cut_next.lock().unwrap();
                match *armed {
                    Some(min) if n >= min => {
                        *armed = None;
                        true
                    }
                    _ => false,
                }
            };
            if cut {
                let _ = to.write_all(&buf[..n / 2]).await;
                let _ = to.flush().await;
                c.upstream_bytes.fetch_add((n / 2) as u64, Ordering::SeqCst);
                c.cuts.fetch_add(1, Ordering::SeqCst);
                // Returning drops this half; the select in the connection task drops the rest.
                return;
            }
            c.upstream_bytes.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
