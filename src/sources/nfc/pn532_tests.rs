use super::*;
use proptest::prelude::*;

fn decode_all(bytes: &[u8]) -> Vec<Result<Pn532Frame, FrameError>> {
    let mut d = FrameDecoder::new();
    d.push(bytes);
    std::iter::from_fn(|| d.next()).collect()
}

fn info(tfi: u8, pd: &[u8]) -> Pn532Frame {
    Pn532Frame::Info {
        tfi,
        pd: pd.to_vec(),
    }
}

fn response(pd: &[u8]) -> Pn532Frame {
    info(TFI_DEVICE, pd)
}

#[test]
fn known_command_frames() {
    let fw = [0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00];
    assert_eq!(get_firmware_version(), fw);
    let sam = [
        0, 0, 0xFF, 0x05, 0xFB, 0xD4, 0x14, 0x01, 0x14, 0x01, 0x02, 0x00,
    ];
    assert_eq!(sam_configuration(), sam);
    let rf = [
        0, 0, 0xFF, 0x06, 0xFA, 0xD4, 0x32, 0x05, 0xFF, 0x01, 0x02, 0xF3, 0x00,
    ];
    assert_eq!(rf_configuration_max_retries(0xFF, 0x01, 0x02), rf);
    let ilpt = [0, 0, 0xFF, 0x04, 0xFC, 0xD4, 0x4A, 0x01, 0x00, 0xE1, 0x00];
    assert_eq!(in_list_passive_target(), ilpt);
    let rel = [0, 0, 0xFF, 0x03, 0xFD, 0xD4, 0x52, 0x00, 0xDA, 0x00];
    assert_eq!(in_release(0), rel);
}

#[test]
fn constants_decode_to_their_meaning() {
    assert_eq!(decode_all(&ACK), vec![Ok(Pn532Frame::Ack)]);
    assert_eq!(decode_all(&NACK), vec![Ok(Pn532Frame::Nack)]);
    assert_eq!(decode_all(&APP_ERROR), vec![Ok(Pn532Frame::AppError)]);
    assert_eq!(WAKEUP.len(), 16);
}

#[test]
fn firmware_version_response_known_answer() {
    // Widely published answer of a PN532 v1.6.
    let wire = [
        0, 0, 0xFF, 0x06, 0xFA, 0xD5, 0x03, 0x32, 0x01, 0x06, 0x07, 0xE8, 0x00,
    ];
    let fw = FirmwareVersion {
        ic: 0x32,
        ver: 1,
        rev: 6,
        support: 7,
    };
    assert_eq!(firmware_version_response(&fw), wire);
    let frames = decode_all(&wire);
    let Some(Ok(f)) = frames.first() else {
        panic!("{frames:?}")
    };
    assert_eq!(parse_firmware_version(f), Ok(fw));
    assert!(fw.is_pn532());
}

#[test]
fn ack_then_response_in_one_read_and_split_reads() {
    let wire = [
        &ACK[..],
        &[0, 0, 0xFF, 0x03, 0xFD, 0xD5, 0x4B, 0x00, 0xE0, 0x00][..],
    ]
    .concat();
    let want = vec![Ok(Pn532Frame::Ack), Ok(response(&[0x4B, 0x00]))];
    assert_eq!(decode_all(&wire), want);
    let mut d = FrameDecoder::new();
    let mut got = Vec::new();
    for b in &wire {
        d.push(&[*b]);
        got.extend(std::iter::from_fn(|| d.next()));
    }
    assert_eq!(got, want);
    assert_eq!(d.discarded(), 0);
}

#[test]
fn target_with_7_byte_uid_known_answer() {
    let wire = [
        0, 0, 0xFF, 0x0F, 0xF1, 0xD5, 0x4B, 0x01, 0x01, 0x00, 0x44, 0x00, 0x07, 0x04, 0x11, 0x22,
        0x33, 0x44, 0x55, 0x66, 0x2A, 0x00,
    ];
    let t = Target::new(
        [0x00, 0x44],
        0x00,
        vec![4, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66],
        None,
    );
    assert_eq!(
        in_list_passive_target_response(Some(&t)).as_deref(),
        Ok(&wire[..])
    );
    let frames = decode_all(&wire);
    let Some(Ok(f)) = frames.first() else {
        panic!("{frames:?}")
    };
    let got = parse_in_list_passive_target(f).unwrap().unwrap();
    assert_eq!(got, t);
    assert_eq!(got.card_type, CardType::UltralightNtag);
    assert!(!got.is_random_uid());
}

#[test]
fn target_with_ats_and_random_uid() {
    let ats = vec![0x05, 0x78, 0x80, 0x70, 0x02];
    let pd = [
        &[0x4B, 0x01, 0x01, 0x00, 0x04, 0x20, 0x04, 0x08, 1, 2, 3][..],
        &ats,
    ]
    .concat();
    let t = parse_in_list_passive_target(&response(&pd))
        .unwrap()
        .unwrap();
    assert_eq!(t.ats, Some(ats));
    assert_eq!(t.card_type, CardType::Iso14443_4);
    assert!(t.is_random_uid());
    assert_eq!(
        parse_in_list_passive_target(&response(&[0x4B, 0x00])),
        Ok(None)
    );
}

#[test]
fn card_types_from_sel_res() {
    assert_eq!(CardType::from_sel_res(0x08), CardType::MifareClassic1k);
    assert_eq!(CardType::from_sel_res(0x18), CardType::MifareClassic4k);
    assert_eq!(CardType::from_sel_res(0x28), CardType::Unknown(0x28));
    assert_eq!(CardType::Unknown(0x28).as_str(), "unknown");
}

#[test]
fn in_list_passive_target_error_paths() {
    use PayloadError::*;
    let p = |pd: &[u8]| parse_in_list_passive_target(&response(pd));
    assert_eq!(p(&[0x4B]), Err(Truncated));
    assert_eq!(p(&[0x4B, 0x00, 0x01]), Err(Trailing(1)));
    assert_eq!(p(&[0x4B, 0x02]), Err(TargetCount(2)));
    assert_eq!(p(&[0x4B, 0x01, 0x01, 0x00, 0x04]), Err(Truncated));
    assert_eq!(
        p(&[0x4B, 1, 1, 0, 4, 8, 5, 1, 2, 3, 4, 5]),
        Err(UidLength(5))
    );
    assert_eq!(p(&[0x4B, 1, 1, 0, 4, 8, 4, 1, 2, 3]), Err(Truncated));
    assert_eq!(
        p(&[0x4B, 1, 1, 0, 4, 0x20, 4, 1, 2, 3, 4, 0]),
        Err(AtsLength(0))
    );
    assert_eq!(
        p(&[0x4B, 1, 1, 0, 4, 0x20, 4, 1, 2, 3, 4, 3, 9]),
        Err(Truncated)
    );
    assert_eq!(
        p(&[0x4B, 1, 1, 0, 4, 0x20, 4, 1, 2, 3, 4, 1, 9]),
        Err(Trailing(1))
    );
    let expected = UnexpectedCode {
        expected: 0x4B,
        got: Some(0x03),
    };
    assert_eq!(p(&[0x03, 0x00]), Err(expected));
    assert_eq!(
        p(&[]),
        Err(UnexpectedCode {
            expected: 0x4B,
            got: None
        })
    );
    let from_host = info(TFI_HOST, &[0x4B, 0x00]);
    assert_eq!(
        parse_in_list_passive_target(&from_host),
        Err(WrongDirection(TFI_HOST))
    );
    let err = parse_in_list_passive_target(&Pn532Frame::AppError);
    assert_eq!(err, Err(NotInfo("application error")));
}

#[test]
fn other_response_error_paths() {
    use PayloadError::*;
    assert_eq!(
        parse_firmware_version(&response(&[0x03, 0x32])),
        Err(Truncated)
    );
    let long = response(&[0x03, 0x32, 1, 6, 7, 0]);
    assert_eq!(parse_firmware_version(&long), Err(Trailing(1)));
    assert_eq!(
        parse_firmware_version(&Pn532Frame::Ack),
        Err(NotInfo("ACK"))
    );
    assert_eq!(
        parse_empty_response(&response(&[0x15]), CMD_SAM_CONFIGURATION),
        Ok(())
    );
    let rf = response(&[0x33, 0x00]);
    assert_eq!(
        parse_empty_response(&rf, CMD_RF_CONFIGURATION),
        Err(Trailing(1))
    );
    assert_eq!(parse_in_release(&response(&[0x53, 0x00])), Ok(()));
    assert_eq!(parse_in_release(&response(&[0x53, 0x40])), Ok(()));
    assert_eq!(
        parse_in_release(&response(&[0x53, 0x27])),
        Err(Status(0x27))
    );
    assert_eq!(parse_in_release(&response(&[0x53])), Err(Truncated));
    assert_eq!(parse_in_release(&response(&[0x53, 0, 0])), Err(Trailing(1)));
}

#[test]
fn decoder_error_paths_and_recovery() {
    let good = encode_frame(TFI_DEVICE, &[0x15]).unwrap();
    let mut bad_dcs = good.clone();
    bad_dcs[6] ^= 0x01;
    let got = decode_all(&[&bad_dcs[..], &good].concat());
    assert_eq!(
        got,
        vec![Err(FrameError::DataChecksum), Ok(response(&[0x15]))]
    );

    let bad_lcs = [0, 0, 0xFF, 0x02, 0x00];
    let got = decode_all(&[&bad_lcs[..], &good].concat());
    assert_eq!(
        got,
        vec![Err(FrameError::LengthChecksum), Ok(response(&[0x15]))]
    );
    assert!(FrameError::LengthChecksum.is_checksum_error());

    let bad_ext_lcs = [0, 0, 0xFF, 0xFF, 0xFF, 0x01, 0x00, 0x00];
    assert_eq!(
        decode_all(&bad_ext_lcs),
        vec![Err(FrameError::LengthChecksum)]
    );
    let too_long = [0, 0, 0xFF, 0xFF, 0xFF, 0x02, 0x00, 0xFE];
    assert_eq!(decode_all(&too_long), vec![Err(FrameError::BadLength(512))]);
    let empty_ext = [0, 0, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00];
    assert_eq!(decode_all(&empty_ext), vec![Err(FrameError::BadLength(0))]);
    let odd_tfi = [0, 0, 0xFF, 0x01, 0xFF, 0xAA, 0x56, 0x00];
    assert_eq!(
        decode_all(&odd_tfi),
        vec![Err(FrameError::UnknownTfi(0xAA))]
    );
    assert_eq!(
        encode_frame(TFI_HOST, &[0; MAX_PD_LEN + 1]),
        Err(FrameError::PayloadTooLong(MAX_PD_LEN + 1))
    );
}

#[test]
fn garbage_is_counted_and_reset_drops_partial_frames() {
    let mut d = FrameDecoder::new();
    d.push(&[0x55, 0x13, 0x00]);
    assert_eq!(d.next(), None);
    assert_eq!(d.discarded(), 2);
    d.push(&[0x00, 0xFF, 0x05]); // partial header
    assert_eq!(d.next(), None);
    d.reset();
    d.push(&ACK);
    assert_eq!(d.next(), Some(Ok(Pn532Frame::Ack)));
    assert_eq!(d.discarded(), 6);
}

#[test]
fn missing_postamble_still_yields_the_frame() {
    let mut wire = encode_frame(TFI_DEVICE, &[0x15]).unwrap();
    *wire.last_mut().unwrap() = 0x42;
    assert_eq!(decode_all(&wire), vec![Ok(response(&[0x15]))]);
}

#[test]
fn device_side_parses_host_commands() {
    let parse = |wire: Vec<u8>| match decode_all(&wire).as_slice() {
        [Ok(f)] => parse_host_command(f),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        parse(get_firmware_version()),
        Ok(HostCommand::GetFirmwareVersion)
    );
    assert_eq!(
        parse(sam_configuration()),
        Ok(HostCommand::SamConfiguration {
            params: vec![1, 0x14, 1]
        })
    );
    assert_eq!(
        parse(rf_configuration_max_retries(0xFF, 1, 2)),
        Ok(HostCommand::RfConfiguration {
            item: 5,
            data: vec![0xFF, 1, 2]
        })
    );
    assert_eq!(
        parse(in_list_passive_target()),
        Ok(HostCommand::InListPassiveTarget {
            max_tg: 1,
            brty: 0,
            initiator_data: vec![]
        })
    );
    assert_eq!(parse(in_release(0)), Ok(HostCommand::InRelease { tg: 0 }));
    let other = encode_frame(TFI_HOST, &[0x40, 0x01]).unwrap();
    assert_eq!(
        parse(other),
        Ok(HostCommand::Other {
            code: 0x40,
            params: vec![1]
        })
    );
    assert_eq!(
        parse(encode_frame(TFI_HOST, &[]).unwrap()),
        Err(PayloadError::Truncated)
    );
    let from_device = encode_response(CMD_IN_RELEASE, &[0]).unwrap();
    assert_eq!(
        parse(from_device),
        Err(PayloadError::WrongDirection(TFI_DEVICE))
    );
    assert_eq!(parse(NACK.to_vec()), Err(PayloadError::NotInfo("NACK")));
}

#[test]
fn tap_rule() {
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    let mut taps = TapTracker::default();
    let a: &[u8] = &[1, 2, 3, 4];
    let b: &[u8] = &[5, 6, 7, 8];
    assert!(taps.observe(a, ms(0)));
    // Card left on the reader, polled every 100 ms for 5 s: one tap.
    assert!((1..50).all(|i| !taps.observe(a, ms(i * 100))));
    assert!(
        taps.observe(b, ms(5_000)),
        "a different card is a new tap at once"
    );
    // a last seen at 4900; unseen polls until 5400 keep it the same tap.
    assert!(!taps.observe(a, ms(5_400)));
    assert!(taps.observe(a, ms(5_901)), "gone for more than 500 ms");
    assert!(
        !taps.observe(a, ms(5_000)),
        "a clock stepping back is never a new tap"
    );
}

#[test]
fn tap_tracker_memory_is_bounded() {
    let t0 = Instant::now();
    let mut taps = TapTracker::default();
    for i in 0..1000u32 {
        assert!(taps.observe(&i.to_be_bytes(), t0));
    }
    assert!(taps.seen.len() <= MAX_TRACKED);
}

fn arb_target() -> impl Strategy<Value = Target> {
    let uid = prop_oneof![Just(4usize), Just(7), Just(10)]
        .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n));
    let ats = proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40).prop_map(
        |mut v| {
            v.insert(0, (v.len() + 1) as u8);
            v
        },
    ));
    (any::<[u8; 2]>(), any::<u8>(), uid, ats)
        .prop_map(|(s, sel, uid, ats)| Target::new(s, sel, uid, ats))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut d = FrameDecoder::new();
        for c in &chunks {
            d.push(c);
            while let Some(item) = d.next() {
                if let Ok(f) = item {
                    let _ = parse_in_list_passive_target(&f);
                    let _ = parse_host_command(&f);
                }
            }
        }
    }

    #[test]
    fn spliced_frame_pieces_never_panic(pieces in proptest::collection::vec(prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..8),
        Just(ACK.to_vec()), Just(NACK.to_vec()), Just(APP_ERROR.to_vec()), Just(START.to_vec()),
        Just(vec![0, 0, 0xFF, 0xFF, 0xFF]),
        (proptest::collection::vec(any::<u8>(), 0..300), any::<proptest::sample::Index>()).prop_map(|(pd, cut)| {
            let f = encode_frame(TFI_DEVICE, &pd[..pd.len().min(MAX_PD_LEN)]).unwrap();
            f[..cut.index(f.len() + 1)].to_vec()
        }),
    ], 0..24)) {
        let mut d = FrameDecoder::new();
        d.push(&pieces.concat());
        let mut n = 0;
        while let Some(item) = d.next() {
            n += 1;
            prop_assert!(n <= pieces.concat().len(), "every item consumes input");
            if let Ok(f) = item {
                let _ = parse_in_list_passive_target(&f);
                let _ = parse_firmware_version(&f);
            }
        }
    }

    #[test]
    fn payloads_round_trip(tfi in prop_oneof![Just(TFI_HOST), Just(TFI_DEVICE)],
                           pd in proptest::collection::vec(any::<u8>(), 0..=MAX_PD_LEN),
                           extended in any::<bool>()) {
        let wire = if extended { encode_extended_frame(tfi, &pd) } else { encode_frame(tfi, &pd) };
        let wire = wire.unwrap();
        prop_assert_eq!(wire[3] == 0xFF && wire[4] == 0xFF, extended || pd.len() >= 255);
        prop_assert_eq!(decode_all(&wire), vec![Ok(info(tfi, &pd))]);
    }

    #[test]
    fn resyncs_after_garbage(garbage in proptest::collection::vec(1u8..=255, 0..300),
                             pd in proptest::collection::vec(any::<u8>(), 0..300),
                             split in any::<proptest::sample::Index>()) {
        // Garbage without 0x00 cannot contain a start code, so the frame after it must decode.
        let pd = &pd[..pd.len().min(MAX_PD_LEN)];
        let wire = [&garbage[..], &encode_frame(TFI_DEVICE, pd).unwrap(), &ACK].concat();
        let at = split.index(wire.len());
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for part in [&wire[..at], &wire[at..]] {
            d.push(part);
            got.extend(std::iter::from_fn(|| d.next()));
        }
        prop_assert_eq!(got, vec![Ok(info(TFI_DEVICE, pd)), Ok(Pn532Frame::Ack)]);
        prop_assert_eq!(d.discarded(), garbage.len() as u64);
    }

    #[test]
    fn targets_round_trip(t in arb_target()) {
        let wire = in_list_passive_target_response(Some(&t)).unwrap();
        let frames = decode_all(&wire);
        let Some(Ok(f)) = frames.first() else { panic!("{frames:?}") };
        prop_assert_eq!(parse_in_list_passive_target(f), Ok(Some(t)));
    }
}
