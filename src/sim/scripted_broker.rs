//! A scripted MQTT broker (3.1.1 and 5) for the faults no real test broker shows on demand: a
//! refused subscription (mosquitto 2.0 grants a SUBSCRIBE its ACL denies and filters the
//! deliveries instead; nats-server refuses while the stream behind its MQTT sessions has no
//! leader, which a test cannot time), and a connection that answers keep-alives but never
//! acknowledges the events (a clustered broker's stuck stream).
//!
//! Hand-written because no broker crate lets a test script these answers. It speaks the
//! protocol's real bytes for what clients send here (CONNECT → CONNACK, SUBSCRIBE → SUBACK,
//! QoS 1 PUBLISH → PUBACK, PINGREQ → PINGRESP) and records what came. It routes no messages.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What the broker does, and what it saw. Shared with the test through [`Scripted::script`].
#[derive(Debug, Default)]
pub struct Script {
    /// SUBSCRIBEs refused (every filter of each) before the broker grants them.
    pub refusals: u32,
    /// Hold every PUBACK for events on the first connection that publishes events.
    pub hold_first_events: bool,
    /// The connection whose events are held, once one published.
    pub holding: Option<usize>,
    /// Each SUBSCRIBE: which connection, its filters, and when.
    pub subscribes: Vec<(usize, Vec<String>, Instant)>,
    /// Each PUBLISH to an `…/events` topic: which connection, and its payload.
    pub events: Vec<(usize, String)>,
}

pub struct Scripted {
    pub port: u16,
    pub script: Arc<Mutex<Script>>,
}

impl Scripted {
    /// Listens on a free loopback port; each connection is served on a thread of its own.
    pub fn start(script: Script) -> std::io::Result<Scripted> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let script = Arc::new(Mutex::new(script));
        let shared = script.clone();
        std::thread::spawn(move || {
            for (conn, s) in listener.incoming().flatten().enumerate() {
                let script = shared.clone();
                std::thread::spawn(move || serve(s, conn, &script));
            }
        });
        Ok(Scripted { port, script })
    }

    /// Every SUBSCRIBE so far.
    pub fn subscribes(&self) -> Vec<(usize, Vec<String>, Instant)> {
        self.script.lock().unwrap().subscribes.clone()
    }
}

/// Reads one packet: its first byte and its body.
fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let len = read_varint(&mut |b| s.read_exact(b))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((first[0], body))
}

/// An MQTT variable byte integer, one byte at a time from `next`.
fn read_varint(next: &mut impl FnMut(&mut [u8]) -> std::io::Result<()>) -> std::io::Result<usize> {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        next(&mut b)?;
        value |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 || shift > 21 {
            return Ok(value);
        }
    }
}

/// The variable byte integer at the start of `bytes`: its value and its length.
fn varint_at(bytes: &[u8]) -> (usize, usize) {
    let mut at = 0;
    let value = read_varint(&mut |b| {
        b[0] = *bytes.get(at).unwrap_or(&0);
        at += 1;
        Ok(())
    })
    .unwrap_or(0);
    (value, at)
}

/// A length-prefixed string at `at`, and the offset after it.
fn string_at(body: &[u8], at: usize) -> (String, usize) {
    let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    let s = String::from_utf8_lossy(&body[at + 2..at + 2 + len]).into_owned();
    (s, at + 2 + len)
}

fn serve(mut s: TcpStream, conn: usize, script: &Mutex<Script>) {
    let mut v5 = false;
    while let Ok((first, body)) = read_packet(&mut s) {
        let reply: Vec<u8> = match first >> 4 {
            // CONNECT: "MQTT", then the protocol level (4: 3.1.1, 5: MQTT 5).
            1 => {
                v5 = body.get(6) == Some(&5);
                if v5 {
                    vec![0x20, 0x03, 0x00, 0x00, 0x00]
                } else {
                    vec![0x20, 0x02, 0x00, 0x00]
                }
            }
            // PUBLISH at QoS 1: the packet id follows the topic; v5 properties after it.
            3 if first & 0x06 == 0x02 => {
                let (topic, at) = string_at(&body, 0);
                let pkid = [body[at], body[at + 1]];
                let mut payload_at = at + 2;
                if v5 {
                    let (props, n) = varint_at(&body[payload_at..]);
                    payload_at += n + props;
                }
                let mut sc = script.lock().unwrap();
                if topic.ends_with("/events") {
                    let payload = String::from_utf8_lossy(&body[payload_at..]).into_owned();
                    sc.events.push((conn, payload));
                    if sc.hold_first_events && *sc.holding.get_or_insert(conn) == conn {
                        continue;
                    }
                }
                vec![0x40, 0x02, pkid[0], pkid[1]]
            }
            // SUBSCRIBE: packet id, (v5: properties), then filters, each with its options byte.
            8 => {
                let mut at = 2;
                if v5 {
                    let (props, n) = varint_at(&body[at..]);
                    at += n + props;
                }
                let mut filters = Vec::new();
                while at < body.len() {
                    let (filter, next) = string_at(&body, at);
                    filters.push(filter);
                    at = next + 1;
                }
                let mut sc = script.lock().unwrap();
                let n = filters.len();
                sc.subscribes.push((conn, filters, Instant::now()));
                let code = match (sc.refusals > 0, v5) {
                    (true, false) => 0x80,
                    // Not authorized.
                    (true, true) => 0x87,
                    (false, _) => 0x01,
                };
                sc.refusals = sc.refusals.saturating_sub(1);
                let mut r = vec![0x90, (2 + v5 as usize + n) as u8, body[0], body[1]];
                if v5 {
                    r.push(0x00);
                }
                r.extend(std::iter::repeat_n(code, n));
                r
            }
            12 => vec![0xd0, 0x00],
            14 => return,
            _ => continue,
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}
