use super::*;
use proptest::prelude::*;

fn gate_poll() -> Request {
    Request::read_holding(1, 0, GATE_REGISTER_COUNT).unwrap()
}

fn unlock() -> Request {
    Request::write_single_coil(1, 0, true).unwrap()
}

// Expected bytes computed independently (python3, bitwise CRC-16/MODBUS).
const POLL: [u8; 8] = [0x01, 0x03, 0x00, 0x00, 0x00, 0x05, 0x85, 0xC9];
const UNLOCK: [u8; 8] = [0x01, 0x05, 0x00, 0x00, 0xFF, 0x00, 0x8C, 0x3A];
const POLL_ANSWER: [u8; 15] = [
    0x01, 0x03, 0x0A, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01, 0x11, 0xB6,
];
const EXCEPTION_02: [u8; 5] = [0x01, 0x83, 0x02, 0xC0, 0xF1];

#[test]
fn crc_known_answers() {
    assert_eq!(crc16(&POLL[..6]), 0xC985);
    assert_eq!(crc16(b"123456789"), 0x4B37); // the catalogue check value
    assert_eq!(gate_poll().encode(), POLL);
    assert_eq!(unlock().encode(), UNLOCK);
}

#[test]
fn parses_gate_poll_answer() {
    let r = parse_response(&gate_poll(), &POLL_ANSWER).unwrap();
    let Response::ReadHolding { registers } = r else {
        panic!()
    };
    assert_eq!(registers, [0, 5, 0, 2, 1]);
    let g = GateRegisters::from_holding(&registers).unwrap();
    let want = GateRegisters {
        pass_in: 5,
        pass_out: 2,
        passage_in_progress: true,
        alarm: false,
    };
    assert_eq!(g, want);
    assert_eq!(
        encode_response(1, &Response::ReadHolding { registers }).unwrap(),
        POLL_ANSWER
    );
}

#[test]
fn response_error_paths() {
    use ModbusError::*;
    let req = gate_poll();
    assert_eq!(
        parse_response(&req, &EXCEPTION_02),
        Err(Exception { code: 2 })
    );
    assert_eq!(exception_response(1, 3, 2), EXCEPTION_02);
    let mut bad = POLL_ANSWER;
    bad[4] ^= 1;
    assert!(matches!(
        parse_response(&req, &bad),
        Err(CrcMismatch { .. })
    ));
    assert_eq!(
        parse_response(&req, &[0x01]),
        Err(Truncated { got: 1, needed: 4 })
    );
    assert_eq!(
        parse_response(&req, &with_crc(vec![1])),
        Err(Truncated { got: 3, needed: 5 })
    );
    let other_unit = with_crc(vec![2, 3, 2, 0, 0]);
    assert_eq!(
        parse_response(&req, &other_unit),
        Err(WrongUnit {
            expected: 1,
            got: 2
        })
    );
    let other_fn = with_crc(vec![1, 4, 2, 0, 0]);
    assert_eq!(
        parse_response(&req, &other_fn),
        Err(WrongFunction {
            expected: 3,
            got: 4
        })
    );
    let short = with_crc(vec![1, 3, 2, 0, 0]);
    assert_eq!(parse_response(&req, &short), Err(LengthMismatch));
    let lying_count = with_crc([&[1, 3, 12][..], &[0; 10]].concat());
    assert_eq!(parse_response(&req, &lying_count), Err(LengthMismatch));
    let long_exception = with_crc(vec![1, 0x83, 2, 0]);
    assert_eq!(parse_response(&req, &long_exception), Err(LengthMismatch));
    let no_count = with_crc(vec![1, 3]);
    assert_eq!(parse_response(&req, &no_count), Err(LengthMismatch));
}

#[test]
fn write_coil_response_must_echo() {
    let req = unlock();
    let ok = Response::WriteSingleCoil {
        address: 0,
        on: true,
    };
    assert_eq!(parse_response(&req, &UNLOCK), Ok(ok));
    let off = Request::write_single_coil(1, 0, false).unwrap().encode();
    assert_eq!(parse_response(&req, &off), Err(ModbusError::EchoMismatch));
    let short = with_crc(vec![1, 5, 0, 0, 0xFF]);
    assert_eq!(
        parse_response(&req, &short),
        Err(ModbusError::LengthMismatch)
    );
}

#[test]
fn builders_reject_invalid_parameters() {
    assert!(Request::read_holding(0, 0, 5).is_err());
    assert!(Request::read_holding(248, 0, 5).is_err());
    assert!(Request::read_holding(1, 0, 0).is_err());
    assert!(Request::read_holding(1, 0, 126).is_err());
    assert!(Request::write_single_coil(0, 0, true).is_err());
    let too_many = Response::ReadHolding {
        registers: vec![0; 126],
    };
    assert!(encode_response(1, &too_many).is_err());
}

#[test]
fn reader_knows_lengths_and_skips_noise() {
    let mut r = ResponseReader::new(gate_poll());
    assert_eq!(r.push(&[0x00, 0xFF]), None); // RS-485 turnaround noise
    assert_eq!(r.push(&POLL_ANSWER[..3]), None);
    assert_eq!(r.expected_len(), Ok(Some(15)));
    assert!(matches!(
        r.push(&POLL_ANSWER[3..]),
        Some(Ok(Response::ReadHolding { .. }))
    ));
    assert_eq!(r.skipped(), 2);
    assert_eq!(r.push(&POLL_ANSWER), None, "one outcome per request");

    let mut r = ResponseReader::new(gate_poll());
    assert_eq!(
        r.push(&EXCEPTION_02),
        Some(Err(ModbusError::Exception { code: 2 }))
    );

    let mut r = ResponseReader::new(unlock());
    assert_eq!(r.push(&UNLOCK[..7]), None);
    assert_eq!(r.timed_out(), ModbusError::Truncated { got: 7, needed: 8 });
    assert!(matches!(r.push(&UNLOCK[7..]), Some(Ok(_))));

    let mut r = ResponseReader::new(unlock());
    assert_eq!(r.timed_out(), ModbusError::NoResponse);
    let wrong = Some(Err(ModbusError::WrongFunction {
        expected: 5,
        got: 6,
    }));
    assert_eq!(r.push(&[1, 6, 0]), wrong);
    assert_eq!(
        r.timed_out(),
        ModbusError::WrongFunction {
            expected: 5,
            got: 6
        }
    );

    let mut r = ResponseReader::new(gate_poll());
    r.push(&[1]);
    assert_eq!(r.timed_out(), ModbusError::Truncated { got: 1, needed: 5 });
}

#[test]
fn device_side_requests() {
    use ModbusError::Unsupported;
    assert_eq!(parse_request(&POLL), Ok(gate_poll()));
    assert_eq!(parse_request(&UNLOCK), Ok(unlock()));
    let bad_coil = with_crc(vec![1, 5, 0, 0, 0x12, 0x34]);
    let e = Unsupported {
        unit: 1,
        function: 5,
        exception: EXC_ILLEGAL_DATA_VALUE,
    };
    assert_eq!(parse_request(&bad_coil), Err(e));
    let zero_qty = with_crc(vec![1, 3, 0, 0, 0, 0]);
    let e = Unsupported {
        unit: 1,
        function: 3,
        exception: EXC_ILLEGAL_DATA_VALUE,
    };
    assert_eq!(parse_request(&zero_qty), Err(e));
    let fn4 = with_crc(vec![1, 4, 0, 0, 0, 1]);
    let e = Unsupported {
        unit: 1,
        function: 4,
        exception: EXC_ILLEGAL_FUNCTION,
    };
    assert_eq!(parse_request(&fn4), Err(e));
    assert!(matches!(
        parse_request(&POLL[..7]),
        Err(ModbusError::CrcMismatch { .. })
    ));

    let mut rr = RequestReader::new();
    rr.push(&[1, 0x10]); // fn 16: length unknown without timing
    let e = Unsupported {
        unit: 1,
        function: 0x10,
        exception: EXC_ILLEGAL_FUNCTION,
    };
    assert_eq!(rr.next(), Some(Err(e)));
    rr.push(&[0x42]);
    rr.reset();
    rr.push(&[&POLL[..], &UNLOCK[..4]].concat());
    rr.push(&UNLOCK[4..]);
    assert_eq!(rr.next(), Some(Ok(gate_poll())));
    assert_eq!(rr.next(), Some(Ok(unlock())));
    assert_eq!(rr.next(), None);
}

#[test]
fn pass_counter_rules() {
    let mut c = PassCounter::default();
    assert_eq!(c.update(500), CountOutcome::Baseline);
    assert_eq!(c.update(500), CountOutcome::Unchanged);
    assert_eq!(c.update(503), CountOutcome::Passed { count: 3 });
    assert_eq!(c.update(1503), CountOutcome::Passed { count: 1000 });
    assert_eq!(
        c.update(2),
        CountOutcome::Reset {
            previous: 1503,
            count: 2
        }
    );
    assert_eq!(c.last(), Some(2));

    let mut wrap = PassCounter::new(Some(u32::MAX - 1), DEFAULT_MAX_PLAUSIBLE);
    assert_eq!(wrap.update(3), CountOutcome::Passed { count: 5 });
    let mut jump = PassCounter::new(Some(10), DEFAULT_MAX_PLAUSIBLE);
    assert_eq!(
        jump.update(1011),
        CountOutcome::Reset {
            previous: 10,
            count: 1011
        }
    );
}

#[test]
fn registers_and_alarm_edges() {
    let g = GateRegisters::from_holding(&[0x1234, 0x5678, 0xFFFF, 0x0001, 0b10]).unwrap();
    assert_eq!((g.pass_in, g.pass_out), (0x1234_5678, 0xFFFF_0001));
    assert!(g.alarm && !g.passage_in_progress);
    assert_eq!(g.to_holding(), [0x1234, 0x5678, 0xFFFF, 0x0001, 0b10]);
    let short = GateRegisters::from_holding(&[0; 4]);
    assert_eq!(
        short,
        Err(ModbusError::TooFewRegisters { got: 4, needed: 5 })
    );

    let mut a = AlarmTracker::default();
    assert_eq!(a.update(false), None);
    assert_eq!(a.update(true), Some(Edge::Rising));
    assert_eq!(a.update(true), None);
    assert_eq!(a.update(false), Some(Edge::Falling));
}

fn arb_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (1u8..=247, any::<u16>(), 1u16..=125)
            .prop_map(|(u, s, q)| Request::read_holding(u, s, q).unwrap()),
        (1u8..=247, any::<u16>(), any::<bool>())
            .prop_map(|(u, a, on)| Request::write_single_coil(u, a, on).unwrap()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(req in arb_request(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_response(&req, &bytes);
        let _ = parse_request(&bytes);
        let mut r = ResponseReader::new(req);
        let _ = r.push(&bytes);
        let _ = r.timed_out();
        let mut rr = RequestReader::new();
        rr.push(&bytes);
        while rr.next().is_some() {}
        let _ = GateRegisters::from_holding(&bytes.iter().map(|b| u16::from(*b)).collect::<Vec<_>>());
    }

    #[test]
    fn requests_round_trip(req in arb_request()) {
        prop_assert_eq!(parse_request(&req.encode()), Ok(req));
    }

    #[test]
    fn responses_round_trip_after_noise(req in arb_request(), noise in proptest::collection::vec(any::<u8>(), 0..20),
                                        regs in proptest::collection::vec(any::<u16>(), 125), split in 0usize..300) {
        // Noise without the unit byte is skipped; the response after it must parse.
        let noise: Vec<u8> = noise.into_iter().filter(|b| *b != req.unit()).collect();
        let resp = match req {
            Request::ReadHolding { quantity, .. } => Response::ReadHolding { registers: regs[..usize::from(quantity)].to_vec() },
            Request::WriteSingleCoil { address, on, .. } => Response::WriteSingleCoil { address, on },
        };
        let wire = [noise.clone(), encode_response(req.unit(), &resp).unwrap()].concat();
        let at = split.min(wire.len());
        let mut r = ResponseReader::new(req);
        let first = r.push(&wire[..at]);
        let got = first.or_else(|| r.push(&wire[at..]));
        prop_assert_eq!(got, Some(Ok(resp)));
        prop_assert_eq!(r.skipped(), noise.len());
    }

    #[test]
    fn plausible_deltas_count_exactly(last in any::<u32>(), d in 1u32..=1000) {
        let mut c = PassCounter::new(Some(last), DEFAULT_MAX_PLAUSIBLE);
        prop_assert_eq!(c.update(last.wrapping_add(d)), CountOutcome::Passed { count: d });
    }

    #[test]
    fn gate_registers_round_trip(pi in any::<u32>(), po in any::<u32>(), p in any::<bool>(), a in any::<bool>()) {
        let g = GateRegisters { pass_in: pi, pass_out: po, passage_in_progress: p, alarm: a };
        prop_assert_eq!(GateRegisters::from_holding(&g.to_holding()), Ok(g));
    }
}
