use super::*;
use crate::sources::DeviceState::*;

const MAX: u32 = 1000;

fn regs(pass_in: u32, pass_out: u32, alarm: bool) -> GateRegisters {
    GateRegisters {
        pass_in,
        pass_out,
        passage_in_progress: false,
        alarm,
    }
}

fn c(pass_in: u32, pass_out: u32) -> Counters {
    Counters { pass_in, pass_out }
}

/// A compact view of observations: ("status", state, reason) / ("passed", dir, count, counters).
#[derive(Debug, PartialEq)]
enum O {
    S(DeviceState, String),
    P(Direction, u32, Counters),
    B(Counters),
}

fn view(obs: Vec<Observation>) -> Vec<O> {
    obs.into_iter()
        .map(|o| match o {
            Observation::Status(s) => O::S(s.state, s.reason),
            Observation::GatePassed {
                direction,
                count,
                counters,
            } => O::P(direction, count, counters),
            Observation::GateBaseline(b) => O::B(b),
            other => panic!("a gate makes no {other:?}"),
        })
        .collect()
}

fn s(state: DeviceState, reason: &str) -> O {
    O::S(state, reason.into())
}

#[test]
fn first_read_without_baseline_only_sets_it() {
    let t0 = Instant::now();
    let mut t = GateTracker::new(None, MAX, None, t0);
    assert_eq!(
        view(t.polled(&regs(100, 50, false), t0)),
        [s(Up, "responding"), O::B(c(100, 50))]
    );
    assert_eq!(t.counters(), Some(c(100, 50)));
    assert_eq!(view(t.polled(&regs(100, 50, false), t0)), []);
}

#[test]
fn each_pass_carries_the_baseline_as_of_counting_it() {
    let t0 = Instant::now();
    let mut t = GateTracker::new(Some(c(100, 50)), MAX, None, t0);
    assert_eq!(
        view(t.polled(&regs(103, 51, false), t0)),
        [
            s(Up, "responding"),
            O::P(Direction::In, 3, c(103, 50)),
            O::P(Direction::Out, 1, c(103, 51)),
        ]
    );
    assert_eq!(
        view(t.polled(&regs(103, 53, false), t0)),
        [O::P(Direction::Out, 2, c(103, 53))]
    );
}

#[test]
fn wrap_at_2_pow_32_is_counted_not_reset() {
    let t0 = Instant::now();
    let mut t = GateTracker::new(Some(c(u32::MAX - 1, 0)), MAX, None, t0);
    let v = view(t.polled(&regs(3, 0, false), t0));
    assert_eq!(v[1..], [O::P(Direction::In, 5, c(3, 0))]);
}

#[test]
fn reset_is_reported_and_the_new_value_counted() {
    let t0 = Instant::now();
    let mut t = GateTracker::new(Some(c(5000, 4000)), MAX, None, t0);
    t.polled(&regs(5000, 4000, false), t0);
    // Both counters restart; two people came in since, nobody went out.
    assert_eq!(
        view(t.polled(&regs(2, 0, false), t0)),
        [
            s(Error, "counter_reset"),
            O::P(Direction::In, 2, c(2, 4000)),
            // `out` restarted at 0: no event carries it, so it is persisted alone.
            O::B(c(2, 0)),
        ]
    );
    assert_eq!(
        view(t.polled(&regs(2, 1, false), t0)),
        [O::P(Direction::Out, 1, c(2, 1))]
    );
}

#[test]
fn three_failures_in_a_row_are_down_until_a_poll_succeeds() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut t = GateTracker::new(Some(c(0, 0)), MAX, None, t0);
    t.polled(&regs(0, 0, false), t0);
    // Two failures, then a success: the count starts over.
    assert_eq!(
        view(t.failed(&ModbusError::NoResponse, ms(0))),
        [O::S(Error, "no_response".into())]
    );
    assert_eq!(view(t.failed(&ModbusError::NoResponse, ms(250))), []);
    assert_eq!(view(t.polled(&regs(0, 0, false), ms(500))), []);
    assert_eq!(view(t.failed(&ModbusError::NoResponse, ms(750))), []);
    assert_eq!(
        view(t.failed(&ModbusError::NoResponse, ms(1000))),
        [s(Error, "no_response")]
    );
    let third = view(t.failed(&ModbusError::NoResponse, ms(1250)));
    assert!(
        matches!(&third[..], [O::S(Down, r)] if r.starts_with("3 failed polls in a row")),
        "{third:?}"
    );
    // A module that never answers: the reason says what to check.
    assert!(
        matches!(&third[..], [O::S(Down, r)] if r.ends_with("(last: no response): check unit address, baud, parity, wiring")),
        "{third:?}"
    );
    assert_eq!(
        view(t.failed(&ModbusError::NoResponse, ms(1500))),
        [],
        "down once"
    );
    assert_eq!(
        view(t.polled(&regs(0, 0, false), ms(1750))),
        [s(Up, "answering again")]
    );
}

#[test]
fn errors_are_throttled_with_a_count() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut t = GateTracker::new(None, MAX, None, t0);
    let crc = ModbusError::CrcMismatch {
        computed: 1,
        received: 2,
    };
    assert_eq!(view(t.failed(&crc, ms(0))), [s(Error, "crc_mismatch")]);
    t.polled(&regs(0, 0, false), ms(10));
    assert_eq!(
        view(t.failed(&ModbusError::Exception { code: 2 }, ms(300))),
        []
    );
    assert_eq!(view(t.tick(ms(600))), []);
    let due = t.tick(ms(1000));
    assert!(matches!(
        &due[..],
        [Observation::Status(DeviceStatus { state: Error, reason, count: Some(1), .. })]
            if reason == "exception_illegal_data_address"
    ));
}

#[test]
fn alarm_edges_and_silence() {
    let t0 = Instant::now();
    let secs = |n| t0 + Duration::from_secs(n);
    let mut t = GateTracker::new(Some(c(0, 0)), MAX, Some(Duration::from_secs(60)), t0);
    assert_eq!(
        view(t.polled(&regs(0, 0, true), t0)),
        [s(Up, "responding"), s(Error, "alarm")]
    );
    assert_eq!(view(t.polled(&regs(0, 0, true), t0)), []);
    assert_eq!(
        view(t.polled(&regs(0, 0, false), t0)),
        [s(Up, "alarm cleared")]
    );
    assert_eq!(view(t.tick(secs(59))), []);
    assert_eq!(view(t.tick(secs(60))), [s(Silent, "no passage for 1 min")]);
    assert_eq!(view(t.tick(secs(61))), [], "silent once");
    assert_eq!(
        view(t.polled(&regs(1, 0, false), secs(62))),
        [s(Up, "passing again"), O::P(Direction::In, 1, c(1, 0))]
    );
}

#[test]
fn port_loss_is_down_once_per_outage() {
    let t0 = Instant::now();
    let mut t = GateTracker::new(None, MAX, None, t0);
    assert!(t.down("cannot open".into()).is_some());
    assert!(t.down("cannot open".into()).is_none());
    assert_eq!(
        view(t.polled(&regs(0, 0, false), t0)),
        [s(Up, "answering again"), O::B(c(0, 0))]
    );
    assert!(t.down("port lost".into()).is_some());
}

#[test]
fn poll_errors_have_stable_reasons() {
    assert_eq!(reason_of(&ModbusError::NoResponse), "no_response");
    assert_eq!(
        reason_of(&ModbusError::Truncated { got: 3, needed: 15 }),
        "truncated"
    );
    assert_eq!(
        reason_of(&ModbusError::Exception { code: 4 }),
        "exception_device_failure"
    );
    assert_eq!(reason_of(&ModbusError::LengthMismatch), "bad_frame");
}
