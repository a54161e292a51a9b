//! Icecast-style sources, pushed by Debian's ffmpeg exactly as it pushes to Icecast
//! (`icecast://source:PASSWORD@host:port/ROOM`): a generated sine becomes a talker the room hears
//! at its level without gaps; a wrong password, a second source for the room and a server that
//! takes no sources are refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::SinkExt;
use mixer_protocol::{ClientMessage, Mode, Role, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::TestServer;
use crate::common::tone_db;

const PASSWORD: &str = "hackme-source-pw";

/// A server taking sources with [`PASSWORD`].
async fn server() -> (TestServer, std::path::PathBuf) {
    let file = std::env::temp_dir().join(format!(
        "mixer-source-{}-{:?}.pw",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write password");
    let server =
        TestServer::start(&["--source-password-file", file.to_str().expect("utf-8")]).await;
    (server, file)
}

/// ffmpeg pushing `seconds` of a `freq` Hz sine (amplitude 1/8, 44.1 kHz stereo, as Opus in
/// Ogg) in real time to `room`.
fn ffmpeg_source(
    server: &TestServer,
    room: &str,
    freq: u32,
    seconds: u32,
    password: &str,
) -> Child {
    Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "sine=frequency={freq}:sample_rate=44100:duration={seconds}"
        ))
        .args(["-ac", "2", "-c:a", "libopus", "-b:a", "96k", "-f", "ogg"])
        .arg(format!(
            "icecast://source:{password}@{}/{room}",
            server.addr
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("these tests need ffmpeg ({e}); install it with `bash .ci/setup`")
        })
}

/// The status line a raw source request gets.
async fn source_status(server: &TestServer, room: &str, password: &str) -> String {
    let credentials = base64(&format!("source:{password}"));
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(
            format!(
                "PUT /{room} HTTP/1.1\r\nHost: test\r\nAuthorization: Basic {credentials}\r\n\
                 Content-Type: audio/ogg\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut response = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut response))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_a_sine_that_the_room_hears_at_its_level_without_gaps() {
    let (server, file) = server().await;
    let (member, _) = super::join(&server, "music", "fan", Mode::Listen).await;
    let listening = tokio::spawn(super::run_client(member, None, Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ffmpeg = ffmpeg_source(&server, "music", 700, 6, PASSWORD);
    // ffmpeg sends its request with its first buffered output (a second or more after it
    // starts); from then on the room has its source, and only one.
    let mut ws = super::connect(&server).await;
    let seated = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let info = super::ask(
                &mut ws,
                ClientMessage::RoomInfo {
                    room: "music".into(),
                },
            )
            .await;
            if matches!(info, ServerMessage::RoomInfo(ref summary) if summary.participants == 2) {
                break;
            }
            // Within the control budget (room_info costs 2, 20 a second refill).
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    seated.await.expect("the source joins the room");
    let second = source_status(&server, "music", PASSWORD).await;
    assert!(second.contains("403"), "a second source: {second}");
    let status = tokio::task::spawn_blocking(move || ffmpeg.wait_with_output())
        .await
        .expect("join")
        .expect("ffmpeg ran");
    assert!(
        status.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let heard = listening.await.expect("listener").listener;
    // The tone in every 100 ms from its first to its last, and for about the 6 s it was sent.
    let windows: Vec<f32> = heard.pcm.chunks(4800).map(|w| tone_db(w, 700.0)).collect();
    let present: Vec<usize> = (0..windows.len()).filter(|&i| windows[i] > -30.0).collect();
    let (first, last) = (present[0], *present.last().expect("heard"));
    let gaps: Vec<usize> = (first..=last).filter(|i| windows[*i] <= -30.0).collect();
    assert!(
        gaps.is_empty(),
        "100 ms windows without the tone: {gaps:?} of {first}..={last}"
    );
    assert!(
        (55..=62).contains(&(last - first + 1)),
        "heard for {} windows",
        last - first + 1
    );
    // At its level: the sine's amplitude is 1/8 (-18 dB), and ffmpeg's upmix to stereo puts
    // it in each channel 3 dB down (its centre-mix level), -21 dB, which the downmix to mono
    // (the channels' mean) keeps.
    let steady = &heard.pcm[(first + 10) * 4800..(last - 5) * 4800];
    let level = tone_db(steady, 700.0);
    assert!(
        (-22.5..=-19.5).contains(&level),
        "the source is heard at {level} dB"
    );
    assert_eq!(heard.sequence_gaps, 0);
    server.shutdown().await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_without_the_password_or_on_a_server_without_one_are_refused() {
    let (server, file) = server().await;
    assert!(
        source_status(&server, "music", "wrong-password")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        source_status(&server, "bad%20room", PASSWORD)
            .await
            .starts_with("HTTP/1.1 400")
    );
    server.shutdown().await;
    let _ = std::fs::remove_file(file);
    let open = TestServer::start(&[]).await;
    assert!(
        source_status(&open, "music", PASSWORD)
            .await
            .starts_with("HTTP/1.1 403")
    );
    open.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_removes_a_source_and_its_connection_is_closed() {
    let (server, file) = server().await;
    let (mut moderator, _) =
        super::join_as(&server, "music", "mod", Mode::Listen, Role::Moderator).await;
    let mut ffmpeg = ffmpeg_source(&server, "music", 700, 30, PASSWORD);
    let source_id = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let ServerMessage::ParticipantJoined { participant } =
                super::next_control(&mut moderator).await
                && participant.name == "[source]"
            {
                return participant.id;
            }
        }
    })
    .await
    .expect("the source joins");
    moderator
        .send(Message::text(
            ClientMessage::Remove {
                participant_id: source_id,
            }
            .to_json(),
        ))
        .await
        .expect("send");
    // ffmpeg would stream for 30 s; the server hangs up on it, and it gives up.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Some(status) = ffmpeg.try_wait().expect("wait") {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if ended.is_err() {
        let _ = ffmpeg.kill();
        panic!("ffmpeg still streaming 15 s after its source was removed");
    }
    let _ = ffmpeg.wait();
    server.shutdown().await;
    let _ = std::fs::remove_file(file);
}
