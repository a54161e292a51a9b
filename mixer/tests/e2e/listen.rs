//! `GET /listen/ROOM` played by Debian's ffmpeg and probed by ffprobe, as any player would: the
//! stream is Ogg/Opus, carries the room's talkers, keeps time through the room's silences, and
//! respects the server's tokens.

use std::process::Stdio;
use std::time::Duration;

use mixer_protocol::{Mode, Role};
use tokio::io::AsyncWriteExt;

use super::TestServer;
use crate::common::tone_db;

/// Runs `program` with `args` for at most `timeout`; returns its standard output.
///
/// # Panics
///
/// If the program is not installed (with how to install it), or fails.
pub(super) async fn run(program: &str, args: &[&str], timeout: Duration) -> Vec<u8> {
    let child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("these tests need {program} ({e}); install it with `bash .ci/setup`")
        });
    let pid = child.id();
    let waited = tokio::time::timeout(
        timeout,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let Ok(output) = waited else {
        // Ended by its own PID, as every process a test starts.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("{program} did not finish within {timeout:?}");
    };
    let output = output.expect("join").expect("wait for the program");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Decodes `seconds` of the room's listen stream with ffmpeg, as 48 kHz mono floats.
pub(super) async fn decode_with_ffmpeg(url: &str, seconds: u32) -> Vec<f32> {
    let seconds = seconds.to_string();
    let raw = run(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            url,
            "-t",
            &seconds,
            "-f",
            "f32le",
            "-ac",
            "1",
            "-ar",
            "48000",
            "pipe:1",
        ],
        Duration::from_secs(30),
    )
    .await;
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// ffprobe's view of a stream or file (`target`, a URL or a path): format, codec, channels,
/// sample rate and duration, one `key=value` a line.
pub(super) async fn probe(target: &str) -> String {
    let out = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "stream=codec_name,channels,sample_rate:format=format_name,duration",
            "-of",
            "default=noprint_wrappers=1",
            target,
        ],
        Duration::from_secs(20),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The response head of a plain GET (the stream is left unread).
async fn head_of(server: &TestServer, target: &str) -> String {
    super::response_head(
        server.addr,
        &format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_the_room_and_ffprobe_sees_ogg_opus() {
    let server = TestServer::start(&[]).await;
    let url = format!("http://{}/listen/radio", server.addr);
    // Two talkers for the whole test; the stream must carry both.
    let (first, _) = super::join(&server, "radio", "first", Mode::Talk).await;
    let (second, _) = super::join(&server, "radio", "second", Mode::Talk).await;
    let talking = Duration::from_secs(12);
    let talkers = tokio::spawn(async move {
        tokio::join!(
            super::run_client(first, Some(650.0), talking),
            super::run_client(second, Some(1000.0), talking),
        )
    });
    let head = head_of(&server, "/listen/radio").await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("content-type: audio/ogg"), "{head}");
    assert!(lower.contains("icy-name: radio"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");

    let probe = probe(&url).await;
    for expected in [
        "codec_name=opus",
        "sample_rate=48000",
        "channels=1",
        "format_name=ogg",
    ] {
        assert!(probe.contains(expected), "ffprobe said:\n{probe}");
    }

    let pcm = decode_with_ffmpeg(&url, 5).await;
    assert!(
        pcm.len() >= 48_000 * 9 / 2,
        "ffmpeg decoded {} samples",
        pcm.len()
    );
    let settled = &pcm[pcm.len() / 2..];
    for tone in [650.0, 1000.0] {
        assert!(
            tone_db(settled, tone) > -22.0,
            "{tone} Hz at {} dB",
            tone_db(settled, tone)
        );
    }
    assert!(tone_db(settled, 1500.0) < -50.0, "a tone nobody sent");
    drop(talkers.await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_room_streams_silence_in_real_time_instead_of_stalling() {
    let server = TestServer::start(&[]).await;
    // One listener keeps the room alive, and nobody talks: the room sends nothing (its mix is
    // settled silence), and the stream must still run at real time.
    let (_member, _) = super::join(&server, "quiet", "member", Mode::Listen).await;
    let url = format!("http://{}/listen/quiet", server.addr);
    let started = std::time::Instant::now();
    let pcm = decode_with_ffmpeg(&url, 3).await;
    // 3 s of audio, decoded as it arrived: it took about 3 s (the stream kept time), and is
    // silence.
    assert!(pcm.len() >= 48_000 * 3 - 960 * 4, "{} samples", pcm.len());
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "3 s of stream arrived in {:?}: faster than real time",
        started.elapsed()
    );
    let peak = pcm.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(peak < 0.01, "silence peaks at {peak}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_keys_wants_a_listener_token_for_the_room() {
    let server = super::access::secured(&[]).await;
    let token = |room: &str| super::access::token("radio-fan", Role::Listener, room);
    let head = head_of(&server, "/listen/radio").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let head = head_of(
        &server,
        &format!("/listen/radio?access_token={}", token("other")),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let head = head_of(&server, "/listen/no%20such").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let head = head_of(
        &server,
        &format!("/listen/radio?access_token={}", token("radio")),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_stops_reading_is_dropped_like_a_slow_client_and_nobody_else_notices() {
    use futures_util::StreamExt;
    use mixer_protocol::{LeaveReason, ServerMessage, parse_server_message};
    use tokio_tungstenite::tungstenite::Message;

    let server = TestServer::start(super::SLOW_CLIENT_FLAGS).await;
    let (mut watcher, _) = super::join(&server, "busy", "watcher", Mode::Listen).await;
    let (talker, _) = super::join(&server, "busy", "talker", Mode::Talk).await;
    let talking = tokio::spawn(super::run_client(
        talker,
        Some(1000.0),
        Duration::from_secs(8),
    ));
    // The player: a tiny receive buffer, asks for the stream, never reads it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut player = socket.connect(server.addr).await.expect("connect");
    player
        .write_all(b"GET /listen/busy HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut player_id = None;
    let mut frames = 0usize;
    let mut heard = crate::common::Listener::default();
    let left = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match watcher.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    frames += 1;
                    heard.receive_wire(&bytes);
                }
                Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
                    Ok(ServerMessage::ParticipantJoined { participant })
                        if participant.name == "HTTP listener" =>
                    {
                        player_id = Some(participant.id);
                    }
                    Ok(ServerMessage::ParticipantLeft {
                        participant_id,
                        reason,
                    }) if Some(participant_id) == player_id => return reason,
                    _ => {}
                },
                Some(Ok(_)) => {}
                other => panic!("the watcher lost its connection: {other:?}"),
            }
        }
    })
    .await
    .expect("the stalled player is dropped within 15 s");
    assert_eq!(left, LeaveReason::SlowConsumer);
    // Meanwhile the watcher missed nothing.
    assert!(frames > 20, "the watcher got {frames} frames");
    assert_eq!(heard.sequence_gaps, 0);
    drop(player);
    drop(talking.await);
    server.shutdown().await;
}
