//! Brokers that misbehave in ways no test broker does on demand, scripted: a refused downlink
//! subscription (mosquitto 2.0 grants a SUBSCRIBE its ACL denies and filters the deliveries
//! instead; nats-server refuses while the stream behind its MQTT sessions has no leader, which a
//! test cannot time), and a connection that answers keep-alives but never acknowledges the
//! events (a clustered broker's stuck stream). The scripted MQTT 3.1.1 broker speaks the
//! protocol's real bytes (CONNACK, SUBACK with 0x80, PUBACK, PINGRESP) and records what came.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// What the scripted broker does, and what it saw.
#[derive(Default)]
struct Script {
    /// SUBSCRIBEs refused (SUBACK 0x80) before the broker grants them.
    refusals: u32,
    /// Hold every PUBACK for events on the first connection that publishes events.
    hold_first_events: bool,
    /// The connection whose events are held, once one published.
    holding: Option<usize>,
    /// Each SUBSCRIBE: which connection, and when.
    subscribes: Vec<(usize, Instant)>,
    /// Each PUBLISH to an events topic: which connection, and its payload.
    events: Vec<(usize, String)>,
}

type Shared = Arc<Mutex<Script>>;

/// Reads one MQTT packet: its first byte and its body.
fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok((first[0], body))
}

/// Serves one connection as `script` says.
fn serve(mut s: TcpStream, conn: usize, script: Shared) {
    while let Ok((first, body)) = read_packet(&mut s) {
        let reply: Vec<u8> = match first >> 4 {
            1 => vec![0x20, 0x02, 0x00, 0x00],
            // PUBLISH at QoS 1: the packet id follows the topic.
            3 if first & 0x06 == 0x02 => {
                let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                let pkid = [body[2 + topic_len], body[3 + topic_len]];
                let mut sc = script.lock().unwrap();
                if topic.ends_with("/events") {
                    let payload = String::from_utf8_lossy(&body[4 + topic_len..]).into_owned();
                    sc.events.push((conn, payload));
                    if sc.hold_first_events && *sc.holding.get_or_insert(conn) == conn {
                        continue;
                    }
                }
                vec![0x40, 0x02, pkid[0], pkid[1]]
            }
            8 => {
                let mut sc = script.lock().unwrap();
                sc.subscribes.push((conn, Instant::now()));
                // Count the filters: each is a length-prefixed string and a QoS byte.
                let mut at = 2;
                let mut filters = 0;
                while at < body.len() {
                    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize + 1;
                    filters += 1;
                }
                let code = if sc.refusals > 0 {
                    sc.refusals -= 1;
                    0x80
                } else {
                    0x01
                };
                let mut r = vec![0x90, 2 + filters as u8, body[0], body[1]];
                r.extend(std::iter::repeat_n(code, filters));
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

/// Starts the scripted broker; its port.
fn start(script: &Shared) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = script.clone();
    std::thread::spawn(move || {
        for (conn, s) in listener.incoming().flatten().enumerate() {
            let script = script.clone();
            std::thread::spawn(move || serve(s, conn, script));
        }
    });
    port
}

/// Points the rig's gateway at the scripted broker on `port`.
fn use_scripted_broker(rig: &Rig, port: u16) {
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        &format!("port = {}\n", rig.broker.port),
        &format!("port = {port}\n"),
    );
    std::fs::write(&rig.config, text).unwrap();
}

#[test]
fn a_refused_downlink_subscription_is_asked_again_on_the_same_connection() {
    let script: Shared = Arc::new(Mutex::new(Script {
        refusals: 1,
        ..Default::default()
    }));
    let port = start(&script);
    let rig = Rig::new();
    use_scripted_broker(&rig, port);
    let gw = rig.start_gateway();

    eventually(Duration::from_secs(60), "a second SUBSCRIBE", || {
        script.lock().unwrap().subscribes.len() >= 2
    });
    let got = script.lock().unwrap().subscribes.clone();
    assert_eq!(
        got[0].0, got[1].0,
        "asked again on the same connection: {got:?}"
    );
    assert!(
        got[1].1 - got[0].1 >= Duration::from_secs(4),
        "the retry waits (5 s after the first refusal): {got:?}"
    );
    let log = gw.log();
    assert!(
        log.contains("the broker refused a downlink subscription"),
        "{log}"
    );
    assert!(
        log.contains("subscribing again to the downlink topics"),
        "{log}"
    );
    // Granted: no more asks.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(script.lock().unwrap().subscribes.len(), 2, "{}", gw.log());
}

#[test]
fn a_connection_whose_events_are_never_acknowledged_is_dropped_and_they_go_again_on_a_new_one() {
    let script: Shared = Arc::new(Mutex::new(Script {
        hold_first_events: true,
        ..Default::default()
    }));
    let port = start(&script);
    let rig = Rig::new();
    rig.write_config(
        "\n[uplink]\nack_timeout = \"3s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n",
    );
    use_scripted_broker(&rig, port);
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    scanner.scan("HELD-1").unwrap();

    eventually(
        Duration::from_secs(60),
        "the event sent again on a new connection",
        || {
            let sc = script.lock().unwrap();
            sc.events
                .iter()
                .any(|(conn, p)| p.contains("HELD-1") && Some(*conn) != sc.holding)
        },
    );
    let sc = script.lock().unwrap();
    assert!(
        sc.events
            .iter()
            .any(|(conn, p)| p.contains("HELD-1") && Some(*conn) == sc.holding),
        "first sent on the connection that held it"
    );
    let log = gw.log();
    assert!(
        log.contains("the broker acknowledged no publish for 3s while batches were in flight"),
        "{log}"
    );
}
