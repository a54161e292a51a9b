//! Recording a room's mix to an Ogg/Opus file (`--record-dir`): started and stopped by a
//! moderator or the admin API, the room told each time; the file is valid per ffprobe, holds
//! the talker at its level for as long as it was recorded, and is closed cleanly when the
//! server shuts down.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::SinkExt;
use mixer_protocol::{ClientMessage, ErrorCode, Mode, RecordingEnd, Role, ServerMessage};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::listen::{decode_with_ffmpeg, probe};
use super::{Client, TestServer};
use crate::common::tone_db;

/// A server recording into a fresh directory for `test`, and in its `room` a talker sending
/// `tone` for `talking` and a moderator listening: (the directory, the server, the talker's
/// task, the moderator and its id).
async fn recorded_room(
    test: &str,
    room: &str,
    tone: f32,
    talking: Duration,
) -> (PathBuf, TestServer, JoinHandle<super::Heard>, Client, u32) {
    let dir = std::env::temp_dir().join(format!("mixer-rec-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = TestServer::start(&["--record-dir", dir.to_str().expect("utf-8")]).await;
    let (talker, _) = super::join(&server, room, "talker", Mode::Talk).await;
    let talking = tokio::spawn(super::run_client(talker, Some(tone), talking));
    let (moderator, moderator_id) =
        super::join_as(&server, room, "mod", Mode::Listen, Role::Moderator).await;
    (dir, server, talking, moderator, moderator_id)
}

/// Reads control messages until a `recording` arrives: (recording, file, by, reason).
async fn next_recording(ws: &mut Client) -> (bool, String, Option<u32>, Option<RecordingEnd>) {
    loop {
        if let ServerMessage::Recording {
            recording,
            file,
            by,
            reason,
        } = super::next_control(ws).await
        {
            return (recording, file, by, reason);
        }
    }
}

async fn send(ws: &mut Client, message: ClientMessage) {
    ws.send(Message::text(message.to_json()))
        .await
        .expect("send");
}

fn duration_of(probe: &str) -> f64 {
    probe
        .lines()
        .find_map(|l| l.strip_prefix("duration="))
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {probe}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_records_the_mix_and_the_file_holds_the_talker_for_as_long_as_recorded() {
    let (dir, server, talking, mut moderator, moderator_id) =
        recorded_room("moderator", "rec", 500.0, Duration::from_secs(7)).await;
    let (mut speaker, _) = super::join(&server, "rec", "speaker", Mode::Listen).await;

    // Only moderators record.
    send(&mut speaker, ClientMessage::Record { recording: true }).await;
    super::expect_error(&mut speaker, ErrorCode::Forbidden).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut moderator, ClientMessage::Record { recording: true }).await;
    let (recording, file, by, _) = next_recording(&mut moderator).await;
    assert!(recording);
    assert_eq!(by, Some(moderator_id));
    assert!(
        file.starts_with("rec-") && file.ends_with("Z.opus"),
        "{file}"
    );
    // Everyone is told, with the same file.
    assert_eq!(next_recording(&mut speaker).await.1, file);
    // Asking again changes nothing.
    send(&mut moderator, ClientMessage::Record { recording: true }).await;
    assert_eq!(
        next_recording(&mut moderator).await,
        (true, file.clone(), None, None)
    );

    tokio::time::sleep(Duration::from_secs(4)).await;
    send(&mut moderator, ClientMessage::Record { recording: false }).await;
    let stopped = next_recording(&mut moderator).await;
    assert_eq!(
        stopped,
        (
            false,
            file.clone(),
            Some(moderator_id),
            Some(RecordingEnd::Stopped)
        )
    );
    // The recorder left the room; stopping again is an error.
    assert!(matches!(
        super::next_control(&mut moderator).await,
        ServerMessage::ParticipantLeft { .. }
    ));
    send(&mut moderator, ClientMessage::Record { recording: false }).await;
    super::expect_error(&mut moderator, ErrorCode::RecordingUnavailable).await;

    let path = dir.join(&file);
    let probed = probe(path.to_str().expect("utf-8")).await;
    for expected in [
        "format_name=ogg",
        "codec_name=opus",
        "channels=1",
        "sample_rate=48000",
    ] {
        assert!(probed.contains(expected), "{expected} not in {probed}");
    }
    // About the four seconds between start and stop.
    let seconds = duration_of(&probed);
    assert!((3.5..=5.0).contains(&seconds), "{seconds} s recorded");
    // The talker's tone, at the level a listener hears it, from start to end (100 ms windows).
    let pcm = decode_with_ffmpeg(path.to_str().expect("utf-8"), 10).await;
    let windows: Vec<f32> = pcm.chunks(4800).map(|w| tone_db(w, 500.0)).collect();
    let quiet: Vec<usize> = (1..windows.len() - 1)
        .filter(|&i| windows[i] < -30.0)
        .collect();
    assert!(
        quiet.is_empty(),
        "windows without the talker: {quiet:?} of {}",
        windows.len()
    );
    let level = tone_db(&pcm[4800..pcm.len() - 4800], 500.0);
    talking.await.expect("the talker ran");
    // The talker sends amplitude 0.2: -14 dB.
    assert!((-15.5..=-12.5).contains(&level), "recorded at {level} dB");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_is_closed_cleanly_at_shutdown_and_refused_without_a_record_dir() {
    let (dir, server, talking, mut moderator, _) =
        recorded_room("shutdown", "live", 800.0, Duration::from_secs(3)).await;
    send(&mut moderator, ClientMessage::Record { recording: true }).await;
    let (_, file, _, _) = next_recording(&mut moderator).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.shutdown().await;
    let _ = talking.await;
    let probed = probe(dir.join(&file).to_str().expect("utf-8")).await;
    assert!(probed.contains("codec_name=opus"), "{probed}");
    let seconds = duration_of(&probed);
    assert!((1.5..=3.5).contains(&seconds), "{seconds} s recorded");
    // The stream's last page is flagged end-of-stream (byte 5 of the page header, bit 2).
    let bytes = std::fs::read(dir.join(&file)).expect("read");
    let last_page = bytes
        .windows(4)
        .rposition(|w| w == b"OggS")
        .expect("an Ogg page");
    assert_eq!(
        bytes[last_page + 5] & 4,
        4,
        "end-of-stream flag on the last page"
    );
    let _ = std::fs::remove_dir_all(&dir);

    let plain = TestServer::start(&[]).await;
    let (mut moderator, _) =
        super::join_as(&plain, "live", "mod", Mode::Listen, Role::Moderator).await;
    send(&mut moderator, ClientMessage::Record { recording: true }).await;
    let message = super::expect_error(&mut moderator, ErrorCode::RecordingUnavailable).await;
    assert!(message.contains("--record-dir"), "{message}");
    plain.shutdown().await;
}
