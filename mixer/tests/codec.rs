//! Checks of the engine's Opus helpers against libopus itself.

use crate::common;

use mixer::engine::jitter::opus_has_lbrr;

/// `opus_has_lbrr` reads the LBRR flag straight from the packet bytes (RFC 6716 §4.2.3). Check
/// it against what libopus does: a packet has in-band FEC exactly when decoding it with
/// `fec = true` produces something other than plain concealment.
#[test]
fn lbrr_detection_agrees_with_libopus_fec_decoding() {
    let mut flagged_total = 0;
    for (freq, bitrate) in [
        (650.0f32, 32_000),
        (650.0, 64_000),
        (200.0, 24_000),
        (3000.0, 16_000),
    ] {
        let mut talker = common::Talker::new(freq, 0.2);
        talker
            .encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .expect("bitrate");
        let packets: Vec<Vec<u8>> = (0..150)
            .map(|_| talker.next_frame(true)[9..].to_vec())
            .collect();
        for i in 10..packets.len() - 1 {
            let mut plc = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
            let mut fec = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
            let (mut a, mut b) = (vec![0f32; 960], vec![0f32; 960]);
            for p in &packets[..i] {
                plc.decode_float(p, &mut a, false).expect("decode");
                fec.decode_float(p, &mut b, false).expect("decode");
            }
            plc.decode_float(&[], &mut a, false).expect("plc");
            fec.decode_float(&packets[i + 1], &mut b, true)
                .expect("fec");
            let used_fec = a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-6);
            let flagged = opus_has_lbrr(&packets[i + 1]);
            assert_eq!(flagged, used_fec, "packet {i} at {freq} Hz / {bitrate} b/s");
            flagged_total += usize::from(flagged);
        }
    }
    assert!(
        flagged_total > 20,
        "too few FEC packets to prove anything: {flagged_total}"
    );
}

#[test]
fn celt_and_garbage_never_claim_lbrr() {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::LowDelay).expect("enc");
    let mut out = vec![0u8; 1275];
    let pcm = common::Tone::new(440.0, 0.3).frame(true);
    let n = encoder.encode_float(&pcm, &mut out).expect("encode");
    assert!(!opus_has_lbrr(&out[..n]));
    assert!(!opus_has_lbrr(&[]));
    assert!(!opus_has_lbrr(&[0x08]));
}

#[test]
fn the_default_encoder_keeps_an_absent_voice_40_db_down_in_a_busy_mix() {
    let (isolation, _) = common::isolation_db(mixer::engine::codec::EncoderSettings::default());
    assert!(
        isolation > 40.0,
        "default encoder isolation only {isolation:.1} dB"
    );
}
