//! Rooms of 10 and 5 ms frames over real sockets: who hears whom, the frame size every frame
//! has, the errors of a client of another size, and (ignored) the mouth-to-ear delay.

use super::*;
use crate::common::onsets;
use mixer_protocol::{FrameSize, RoomSettings};

/// Runs a client of a room of `frame`-long frames for `duration`: sends its tone (if any)
/// every frame, in spurts of `spurt` on and `spurt` off (or all the time without), and decodes
/// everything it receives. Returns what it heard, the send times of its spurts' first frames
/// (since `start`), and for every frame it received, the index in the decoded audio of its
/// first sample and its arrival time (since `start`).
async fn run_framed(
    mut ws: Client,
    frame: FrameSize,
    tone: Option<f32>,
    spurt: Option<Duration>,
    start: tokio::time::Instant,
    duration: Duration,
) -> (Listener, Vec<Duration>, Vec<(usize, Duration)>) {
    let mut talker = tone.map(|f| Talker::with_frame(f, 0.2, frame));
    let mut listener = Listener::for_frame(frame);
    let mut onsets_sent = Vec::new();
    let mut arrivals = Vec::new();
    let mut ticker = tokio::time::interval_at(start, frame.duration());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    let mut was_on = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = start.elapsed();
                if now >= duration {
                    break;
                }
                let Some(talker) = talker.as_mut() else { continue };
                let on = spurt.is_none_or(|s| {
                    let frames = u64::from(frame.frames_in(s));
                    sent % (2 * frames) < frames
                });
                sent += 1;
                if on {
                    if !was_on {
                        onsets_sent.push(now);
                    }
                    ws.send(Message::binary(talker.next_frame(true))).await.expect("send audio");
                } else {
                    talker.pause(1);
                }
                was_on = on;
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    listener.receive_wire(&bytes);
                    arrivals.push((listener.pcm.len() - frame.samples(), start.elapsed()));
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ServerMessage::Error { code, message, .. }) = parse_server_message(text.as_str()) {
                        panic!("{frame} client got an error: {code:?} {message}");
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended early: {other:?}"),
            },
        }
    }
    let _ = ws.close(None).await;
    (listener, onsets_sent, arrivals)
}

/// Joins `room` as a talker with `frame`-long frames, checking that `joined` confirms them.
async fn join_framed(server: &TestServer, room: &str, name: &str, frame: FrameSize) -> Client {
    let format = AudioFormat::opus_48k_mono(frame);
    join_in(server, room, name, Mode::Talk, format).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_5_ms_frames_mixes_its_talkers_in_5_ms_frames_and_turns_away_other_sizes() {
    let server = TestServer::start(&[]).await;
    let frame = FrameSize::Ms5;
    let mut clients = Vec::new();
    for name in ["ann", "ben", "cat"] {
        clients.push(join_framed(&server, "jam", name, frame).await);
    }
    // A client of 20 ms frames is told the room's size.
    let mut late = connect(&server).await;
    let refusal = send_expect_error(
        &mut late,
        join_message("jam", "dan", Mode::Talk),
        ErrorCode::UnsupportedFormat,
    )
    .await;
    assert!(refusal.contains("frame_ms 5"), "{refusal}");
    // create_room sets a room's frame size, and room_info tells it.
    let create = |room: &str, frame_ms: u32| {
        ClientMessage::CreateRoom(RoomSettings {
            room: room.into(),
            frame_ms: Some(frame_ms),
            ..RoomSettings::default()
        })
    };
    let created = ask(&mut late, create("band", 10)).await;
    assert!(
        matches!(&created, ServerMessage::RoomInfo(s) if s.settings.frame_ms == Some(10)),
        "{created:?}"
    );
    let refused = ask(&mut late, create("odd", 15)).await;
    assert!(
        matches!(
            refused,
            ServerMessage::Error {
                code: ErrorCode::InvalidSettings,
                ..
            }
        ),
        "{refused:?}"
    );
    // A packet of the wrong duration in a 5 ms room is refused as such.
    let mut wrong = join_framed(&server, "jam", "eve", frame).await;
    let mut twenty = Talker::new(3000.0, 0.2);
    let error = send_expect_error(
        &mut wrong,
        Message::binary(twenty.next_frame(true)),
        ErrorCode::InvalidOpus,
    )
    .await;
    assert!(error.contains("5 ms frames (240 samples)"), "{error}");
    drop(wrong);
    // Three talkers in 5 ms frames: each hears the other two and not itself (every frame it
    // receives is 5 ms: the listener checks each one's duration).
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let runs: Vec<_> = clients
        .into_iter()
        .zip(TONES)
        .map(|(ws, tone)| {
            tokio::spawn(run_framed(
                ws,
                frame,
                Some(tone),
                None,
                start,
                Duration::from_secs(3),
            ))
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let (heard, _, _) = run.await.expect("client");
        assert!(heard.frames > 300, "{} frames", heard.frames);
        assert_eq!(heard.sequence_gaps, 0);
        let pcm = &heard.pcm[heard.pcm.len() / 3..];
        let others: Vec<f32> = TONES[..3]
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, f)| *f)
            .collect();
        assert_hears_tones(pcm, &others, &[TONES[i]]);
    }
    server.shutdown().await;
}

/// Mouth-to-ear delays over loopback, from the send of a spurt's first frame by `ann` to its
/// onset in what `ben` decodes (placed by the arrival of the frame it is in), in a room of
/// `frame`.
async fn loopback_delays(server: &TestServer, frame: FrameSize, seconds: u64) -> Vec<Duration> {
    let room = format!("measure-{}", frame.ms());
    let ann = join_framed(server, &room, "ann", frame).await;
    let ben = join_framed(server, &room, "ben", frame).await;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let duration = Duration::from_secs(seconds);
    let spurt = Some(Duration::from_millis(300));
    let talker = tokio::spawn(run_framed(
        ann,
        frame,
        Some(TONES[0]),
        spurt,
        start,
        duration,
    ));
    let (heard, _, arrivals) = run_framed(ben, frame, None, None, start, duration).await;
    let (_, sent, _) = talker.await.expect("talker");
    onsets(&heard.pcm, TONES[0], 0.2 * 0.3)
        .into_iter()
        .filter_map(|sample| {
            // The received frame holding the onset: the last one that starts at or before it
            // (pauses in silence are filled by the listener, never holding an onset).
            let (first, at) = arrivals.iter().rev().find(|(first, _)| *first <= sample)?;
            let at = *at + Duration::from_secs_f64((sample - first) as f64 / 48_000.0);
            let sent_at = sent.iter().rev().find(|s| **s <= at)?;
            Some(at - *sent_at)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about 40 s); run with --release --ignored --nocapture"]
async fn mouth_to_ear_delay_over_loopback_by_frame_size() {
    let server = TestServer::start(&[]).await;
    for frame in FrameSize::ALL {
        let mut delays = loopback_delays(&server, frame, 12).await;
        delays.sort_unstable();
        assert!(delays.len() > 10, "{frame}: {} onsets", delays.len());
        let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
        println!(
            "{frame} frames: mouth-to-ear over loopback p50 {:.1} ms, p99 {:.1} ms ({} onsets)",
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            delays.len()
        );
    }
    server.shutdown().await;
}
