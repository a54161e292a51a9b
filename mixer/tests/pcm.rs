//! Non-Opus thin clients at the engine level: a 44.1 kHz 16-bit PCM talker and an Opus talker in
//! one room hear each other (and not themselves), checked on the audio each receives.

use std::time::Instant;

use crate::common::{PcmTalker, Talker, max_step, pcm_samples, tone_db, tone_db_at};
use mixer::engine::pcm::PcmRate;
use mixer::engine::{ClientCodec, EngineConfig, FRAME, ParticipantId, Room};
use mixer_protocol::{AudioFrame, Mode};

#[test]
fn a_pcm_client_at_44_1_khz_and_an_opus_client_hear_each_other() {
    let t0 = Instant::now();
    let mut room = Room::new(EngineConfig::default(), t0).expect("room");
    let (pcm_id, opus_id, ear) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
    room.add_participant_with(pcm_id, Mode::Talk, ClientCodec::Pcm(PcmRate::Hz44100))
        .expect("pcm");
    room.add_participant(opus_id, Mode::Talk).expect("opus");
    room.add_participant_with(ear, Mode::Listen, ClientCodec::Pcm(PcmRate::Hz16000))
        .expect("pcm listener");
    let mut pcm_talker = PcmTalker::new(44_100, 500.0, 0.2);
    let mut opus_talker = Talker::new(1000.0, 0.2);
    let mut decoder = opus::Decoder::new(48_000, opus::Channels::Mono).expect("decoder");
    let mut buf = vec![0.0f32; 960];
    let (mut pcm_heard, mut opus_heard, mut ear_heard) = (Vec::new(), Vec::new(), Vec::new());
    for tick in 0..150u32 {
        let now = t0 + FRAME * tick;
        let frame = pcm_talker.next_frame();
        room.handle_audio(pcm_id, AudioFrame::parse_pcm(&frame).expect("frame"), now)
            .expect("pcm audio");
        let frame = opus_talker.next_frame(true);
        room.handle_audio(opus_id, AudioFrame::parse(&frame).expect("frame"), now)
            .expect("opus audio");
        room.handle_timeout(now);
        while let Some(tx) = room.poll_transmit() {
            match tx.to {
                id if id == pcm_id => {
                    assert_eq!(tx.payload.len(), 882 * 2, "20 ms at 44.1 kHz");
                    pcm_heard.extend(pcm_samples(tx.payload));
                }
                id if id == ear => {
                    assert_eq!(tx.payload.len(), 320 * 2, "20 ms at 16 kHz");
                    ear_heard.extend(pcm_samples(tx.payload));
                }
                _ => {
                    let n = decoder
                        .decode_float(tx.payload, &mut buf, false)
                        .expect("opus");
                    opus_heard.extend_from_slice(&buf[..n]);
                }
            }
        }
        while room.poll_event().is_some() {}
    }
    // The last two seconds, well past the jitter buffers and resamplers settling.
    let tail = |v: &[f32], rate: usize| v[v.len() - 2 * rate..].to_vec();
    let pcm_tail = tail(&pcm_heard, 44_100);
    let opus_tail = tail(&opus_heard, 48_000);
    let ear_tail = tail(&ear_heard, 16_000);
    // The PCM client hears the Opus talker, not itself; and the other way round.
    assert!(
        tone_db_at(&pcm_tail, 1000.0, 44_100) > -20.0,
        "{}",
        tone_db_at(&pcm_tail, 1000.0, 44_100)
    );
    assert!(
        tone_db_at(&pcm_tail, 500.0, 44_100) < -55.0,
        "own tone {}",
        tone_db_at(&pcm_tail, 500.0, 44_100)
    );
    assert!(
        tone_db(&opus_tail, 500.0) > -20.0,
        "{}",
        tone_db(&opus_tail, 500.0)
    );
    assert!(
        tone_db(&opus_tail, 1000.0) < -45.0,
        "own tone {}",
        tone_db(&opus_tail, 1000.0)
    );
    // A 16 kHz PCM listener hears both.
    for f in [500.0, 1000.0] {
        assert!(
            tone_db_at(&ear_tail, f, 16_000) > -20.0,
            "{f}: {}",
            tone_db_at(&ear_tail, f, 16_000)
        );
    }
    // No clicks at frame boundaries in the resampled stream (a 1 kHz, 0.2 tone at 44.1 kHz
    // steps at most 2*pi*1000*0.2/44100 = 0.028 per sample).
    assert!(max_step(&pcm_tail) < 0.05, "click: {}", max_step(&pcm_tail));
}
