//! A broker that refuses the downlink's subscription, then grants it: the gateway asks again on
//! the same connection. Neither test broker refuses by itself (mosquitto 2.0 grants a SUBSCRIBE
//! its ACL denies and filters the deliveries instead; nats-server refuses while the stream
//! behind its MQTT sessions has no leader, which a test cannot time), so a scripted MQTT 3.1.1
//! broker answers here: it speaks the protocol's real bytes (CONNACK, SUBACK with 0x80, PUBACK,
//! PINGRESP) and records each SUBSCRIBE.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Each SUBSCRIBE the broker got: which connection, and when.
type Subscribes = Arc<Mutex<Vec<(usize, Instant)>>>;

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

/// Serves one connection: refuses SUBSCRIBEs while `refusals` lasts, grants them after.
fn serve(mut s: TcpStream, conn: usize, refusals: Arc<Mutex<u32>>, subscribes: Subscribes) {
    while let Ok((first, body)) = read_packet(&mut s) {
        let reply: Vec<u8> = match first >> 4 {
            1 => vec![0x20, 0x02, 0x00, 0x00],
            // PUBLISH at QoS 1: the packet id follows the topic.
            3 if first & 0x06 == 0x02 => {
                let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
                vec![0x40, 0x02, body[2 + topic_len], body[3 + topic_len]]
            }
            8 => {
                subscribes.lock().unwrap().push((conn, Instant::now()));
                // Count the filters: each is a length-prefixed string and a QoS byte.
                let mut at = 2;
                let mut filters = 0;
                while at < body.len() {
                    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize + 1;
                    filters += 1;
                }
                let mut left = refusals.lock().unwrap();
                let code = if *left > 0 {
                    *left -= 1;
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

#[test]
fn a_refused_downlink_subscription_is_asked_again_on_the_same_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let subscribes: Subscribes = Default::default();
    let refusals = Arc::new(Mutex::new(1));
    {
        let subscribes = subscribes.clone();
        std::thread::spawn(move || {
            for (conn, s) in listener.incoming().flatten().enumerate() {
                let (refusals, subscribes) = (refusals.clone(), subscribes.clone());
                std::thread::spawn(move || serve(s, conn, refusals, subscribes));
            }
        });
    }
    let rig = Rig::new();
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        &format!("port = {}\n", rig.broker.port),
        &format!("port = {port}\n"),
    );
    std::fs::write(&rig.config, text).unwrap();
    let gw = rig.start_gateway();

    eventually(Duration::from_secs(60), "a second SUBSCRIBE", || {
        subscribes.lock().unwrap().len() >= 2
    });
    let got = subscribes.lock().unwrap().clone();
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
    assert_eq!(subscribes.lock().unwrap().len(), 2, "{}", gw.log());
}
