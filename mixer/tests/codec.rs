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

/// Runs a four-tone mix (the shape of a busy room) through an encoder setting and returns the
/// worst level, relative to the weakest tone, of eight frequencies absent from the mix: the
/// codec's noise floor where a listener's own voice would be, i.e. the mix-minus isolation the
/// codec allows. Also returns the mean packet size.
fn isolation_db(settings: mixer::engine::codec::EncoderSettings) -> (f32, f32) {
    let tones = [
        (400.0f32, 0.2f32),
        (650.0, 0.2),
        (1000.0, 0.2),
        (1500.0, 0.2),
    ];
    let absent = [
        300.0f32, 530.0, 820.0, 1250.0, 1800.0, 2300.0, 3100.0, 4400.0,
    ];
    let mut sources: Vec<common::Tone> = tones
        .iter()
        .map(|(f, a)| common::Tone::new(*f, *a))
        .collect();
    let mut encoder = settings.build().expect("encoder");
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let (mut packet, mut out) = (vec![0u8; 1275], vec![0f32; 960]);
    let (mut decoded, mut bytes) = (Vec::new(), 0usize);
    for _ in 0..150 {
        let mut frame = vec![0f32; 960];
        for source in &mut sources {
            for (x, s) in frame.iter_mut().zip(source.frame(true)) {
                *x += s;
            }
        }
        let n = encoder.encode_float(&frame, &mut packet).expect("encode");
        bytes += n;
        decoder
            .decode_float(&packet[..n], &mut out, false)
            .expect("decode");
        decoded.extend_from_slice(&out);
    }
    let window = &decoded[48_000..];
    let weakest = tones
        .iter()
        .map(|(f, _)| common::tone_db(window, *f))
        .fold(f32::MAX, f32::min);
    let noise = absent
        .iter()
        .map(|f| common::tone_db(window, *f))
        .fold(f32::MIN, f32::max);
    (weakest - noise, bytes as f32 / 150.0)
}

#[test]
fn the_default_encoder_keeps_an_absent_voice_40_db_down_in_a_busy_mix() {
    let (isolation, _) = isolation_db(mixer::engine::codec::EncoderSettings::default());
    assert!(
        isolation > 40.0,
        "default encoder isolation only {isolation:.1} dB"
    );
}

#[test]
#[ignore = "prints the encoder trade-off table; run on purpose"]
fn print_encoder_tradeoffs() {
    use mixer::engine::codec::{EncoderSettings, OpusApplication::*};
    println!("| setting | isolation dB | bytes/packet |");
    for (application, bitrate, complexity) in [
        (Voip, 32_000, 9),
        (Voip, 32_000, 5),
        (Voip, 32_000, 0),
        (LowDelay, 32_000, 5),
        (LowDelay, 48_000, 0),
        (LowDelay, 48_000, 5),
        (LowDelay, 48_000, 7),
        (LowDelay, 48_000, 8),
        (LowDelay, 48_000, 10),
        (LowDelay, 64_000, 5),
        (LowDelay, 64_000, 10),
        (LowDelay, 96_000, 5),
    ] {
        let (isolation, bytes) = isolation_db(EncoderSettings {
            application,
            bitrate,
            complexity,
        });
        println!(
            "| {application} {} kb/s c{complexity} | {isolation:.1} | {bytes:.0} |",
            bitrate / 1000
        );
    }
}
