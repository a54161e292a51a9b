//! End-to-end tests against the real server on a loopback port, with real WebSocket clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Listener, Talker, tone_db};
use futures_util::{SinkExt, StreamExt};
use mixer::cli::{Cli, Command};
use mixer::server::ServerConfig;
use mixer_protocol::{
    AudioFormat, AudioFrame, ClientMessage, ErrorCode, JoinRequest, LeaveReason, Mode, Role,
    ServerMessage, parse_server_message,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start(extra: &[&str]) -> TestServer {
        let mut args = vec!["mixer", "serve", "--mixer-threads", "2"];
        args.extend_from_slice(extra);
        let Command::Serve(serve) = <Cli as clap::Parser>::parse_from(args).command;
        let config: ServerConfig = serve.to_config().expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(mixer::server::run(config, listener, async move {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server result");
    }
}

async fn connect(server: &TestServer) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .expect("connect");
    ws
}

/// Fetches a plain HTTP path and returns (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Sum of every sample of `name` whose labels contain `labels` (e.g. `mode="talk"`, or "").
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, series_labels) = match series.split_once('{') {
                Some((n, l)) => (n, l),
                None => (series, ""),
            };
            (metric_name == name && series_labels.contains(labels))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn join_message(room: &str, name: &str, mode: Mode) -> Message {
    join_message_as(room, name, mode, Role::Speaker)
}

fn join_message_as(room: &str, name: &str, mode: Mode, role: Role) -> Message {
    Message::text(
        ClientMessage::Join(JoinRequest {
            room: room.into(),
            name: name.into(),
            token: None,
            mode: Some(mode),
            resume: None,
            role,
            format: AudioFormat::opus_48k_mono_20ms(),
        })
        .to_json(),
    )
}

/// Reads until a control message arrives (skipping audio and talking indicators, which come
/// whenever someone speaks), with a timeout.
async fn next_control(ws: &mut Client) -> ServerMessage {
    loop {
        match next_message(ws).await {
            ServerMessage::TalkingStarted { .. } | ServerMessage::TalkingStopped { .. } => {}
            other => return other,
        }
    }
}

/// Reads until any control message arrives (skipping audio), with a timeout.
async fn next_message(ws: &mut Client) -> ServerMessage {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, ws.next())
            .await
            .expect("a control message within 5 s")
            .expect("stream open")
            .expect("no error");
        if let Message::Text(text) = message {
            return parse_server_message(text.as_str()).expect("server JSON parses");
        }
    }
}

/// Sends `message` and expects the error `code` in reply; returns the error's text.
async fn send_expect_error(ws: &mut Client, message: Message, code: ErrorCode) -> String {
    ws.send(message).await.expect("send");
    expect_error(ws, code).await
}

async fn expect_error(ws: &mut Client, code: ErrorCode) -> String {
    match next_control(ws).await {
        ServerMessage::Error { code: got, message } => {
            assert_eq!(got, code, "message: {message}");
            message
        }
        other => panic!("expected error {code}, got {other:?}"),
    }
}

/// The next control message, which must be `participant_left`: (who, why).
async fn expect_left(ws: &mut Client) -> (u32, LeaveReason) {
    match next_control(ws).await {
        ServerMessage::ParticipantLeft {
            participant_id,
            reason,
        } => (participant_id, reason),
        other => panic!("expected participant_left, got {other:?}"),
    }
}

async fn join(server: &TestServer, room: &str, name: &str, mode: Mode) -> (Client, u32) {
    let mut ws = connect(server).await;
    ws.send(join_message(room, name, mode))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined {
            participant_id,
            room: joined_room,
            format,
            ..
        } => {
            assert_eq!(joined_room, room);
            assert_eq!(format, AudioFormat::opus_48k_mono_20ms());
            (ws, participant_id)
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// What one client heard.
struct Heard {
    listener: Listener,
    roster: Vec<ServerMessage>,
}

/// Runs one client for `duration`: sends its tone (if any) every 20 ms on an absolute schedule
/// and decodes everything it receives.
async fn run_client(mut ws: Client, tone: Option<f32>, duration: Duration) -> Heard {
    let mut talker = tone.map(|f| Talker::new(f, 0.2));
    let mut heard = Heard {
        listener: Listener::default(),
        roster: Vec::new(),
    };
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if start.elapsed() >= duration {
                    break;
                }
                if let Some(t) = talker.as_mut() {
                    ws.send(Message::binary(t.next_frame(true))).await.expect("send audio");
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => heard.listener.receive_wire(&bytes),
                Some(Ok(Message::Text(text))) => {
                    heard.roster.push(parse_server_message(text.as_str()).expect("json"));
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended early: {other:?}"),
            },
        }
    }
    let _ = ws.close(None).await;
    heard
}

const TONES: [f32; 4] = [400.0, 650.0, 1000.0, 1500.0];
const OTHER_ROOM_TONE: f32 = 2200.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_talkers_hear_each_other_not_themselves_listener_hears_all_rooms_isolated() {
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for (i, _) in TONES.iter().enumerate() {
        clients.push(
            join(&server, "choir", &format!("singer{i}"), Mode::Talk)
                .await
                .0,
        );
    }
    let (listener, _) = join(&server, "choir", "audience", Mode::Listen).await;
    let (other_talker, _) = join(&server, "elsewhere", "solo", Mode::Talk).await;
    let (other_listener, _) = join(&server, "elsewhere", "fan", Mode::Listen).await;

    let duration = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for (ws, tone) in clients.into_iter().zip(TONES) {
        tasks.push(tokio::spawn(run_client(ws, Some(tone), duration)));
    }
    let listener_task = tokio::spawn(run_client(listener, None, duration));
    let other_talker_task = tokio::spawn(run_client(other_talker, Some(OTHER_ROOM_TONE), duration));
    let other_listener_task = tokio::spawn(run_client(other_listener, None, duration));

    let mut heard = Vec::new();
    for task in tasks {
        heard.push(task.await.expect("client"));
    }
    let audience = listener_task.await.expect("listener");
    let solo = other_talker_task.await.expect("other talker");
    let fan = other_listener_task.await.expect("other listener");

    let window = |h: &Heard| {
        h.listener
            .window(Duration::from_millis(1500), Duration::from_millis(3800))
            .to_vec()
    };
    for (i, h) in heard.iter().enumerate() {
        let pcm = window(h);
        assert!(
            pcm.len() > 48_000,
            "client {i} received only {} frames",
            h.listener.frames
        );
        let own = tone_db(&pcm, TONES[i]);
        let others: Vec<f32> = TONES
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, f)| tone_db(&pcm, *f))
            .collect();
        let weakest = others.iter().copied().fold(f32::MAX, f32::min);
        assert!(
            weakest > -22.0,
            "client {i} hears the others too quietly: {others:?}"
        );
        assert!(
            own < weakest - 40.0,
            "client {i} hears itself at {own:.1} dB vs others {others:?}"
        );
        assert!(
            tone_db(&pcm, OTHER_ROOM_TONE) < weakest - 40.0,
            "client {i} hears the other room"
        );
        assert_eq!(h.listener.sequence_gaps, 0, "client {i} lost server frames");
    }
    let pcm = window(&audience);
    for f in TONES {
        assert!(
            tone_db(&pcm, f) > -22.0,
            "listener misses {f} Hz: {:.1} dB",
            tone_db(&pcm, f)
        );
    }
    assert!(tone_db(&pcm, OTHER_ROOM_TONE) < -70.0);
    // The second room: its listener hears its talker only; its talker hears nothing at all.
    let fan_pcm = window(&fan);
    assert!(tone_db(&fan_pcm, OTHER_ROOM_TONE) > -22.0);
    for f in TONES {
        assert!(
            tone_db(&fan_pcm, f) < -70.0,
            "room leak: {f} Hz at {:.1} dB",
            tone_db(&fan_pcm, f)
        );
    }
    let solo_pcm = window(&solo);
    let solo_peak = solo_pcm.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(
        solo_peak < 0.001,
        "alone in a room, the talker must hear silence, got peak {solo_peak}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roster_messages_and_abrupt_disconnect() {
    let server = TestServer::start(&["--resume-window-ms", "0"]).await;
    let (mut alice, alice_id) = join(&server, "ops", "alice", Mode::Talk).await;
    let mut bob = connect(&server).await;
    bob.send(join_message("ops", "bob", Mode::Listen))
        .await
        .expect("send");
    let bob_id = match next_control(&mut bob).await {
        ServerMessage::Joined {
            participant_id,
            participants,
            ..
        } => {
            assert_eq!(participants.len(), 1);
            assert_eq!(participants[0].id, alice_id);
            assert_eq!(participants[0].name, "alice");
            assert_eq!(participants[0].mode, Mode::Talk);
            participant_id
        }
        other => panic!("{other:?}"),
    };
    match next_control(&mut alice).await {
        ServerMessage::ParticipantJoined { participant } => {
            assert_eq!(
                (participant.id, participant.name.as_str(), participant.mode),
                (bob_id, "bob", Mode::Listen)
            );
        }
        other => panic!("{other:?}"),
    }
    // Bob vanishes without a close handshake: the TCP connection is simply dropped.
    drop(bob);
    let started = Instant::now();
    match next_control(&mut alice).await {
        ServerMessage::ParticipantLeft {
            participant_id,
            reason,
        } => {
            assert_eq!(participant_id, bob_id);
            assert_eq!(reason, LeaveReason::Disconnected);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // Closing the WebSocket cleanly counts as leaving.
    let (mut dave, dave_id) = join(&server, "ops", "dave", Mode::Listen).await;
    let _ = next_control(&mut alice).await; // dave joined
    dave.close(None).await.expect("close");
    assert_eq!(expect_left(&mut alice).await, (dave_id, LeaveReason::Left));
    // So does an explicit leave.
    let (mut carol, carol_id) = join(&server, "ops", "carol", Mode::Listen).await;
    let _ = next_control(&mut alice).await; // carol joined
    carol
        .send(Message::text(r#"{"type":"leave"}"#))
        .await
        .expect("send");
    assert_eq!(expect_left(&mut alice).await, (carol_id, LeaveReason::Left));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_dropped_by_ping_timeout_and_room_is_told() {
    let server = TestServer::start(&[
        "--ping-interval-ms",
        "200",
        "--ping-timeout-ms",
        "600",
        "--resume-window-ms",
        "0",
    ])
    .await;
    let (mut alice, _) = join(&server, "r", "alice", Mode::Listen).await;
    let (silent, silent_id) = join(&server, "r", "zombie", Mode::Listen).await;
    let _ = next_control(&mut alice).await; // zombie joined
    // The zombie never reads again, so it never answers pings. Alice keeps reading (and so
    // answers pings automatically).
    let left = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let ServerMessage::ParticipantLeft {
                participant_id,
                reason,
            } = next_control(&mut alice).await
            {
                return (participant_id, reason);
            }
        }
    })
    .await
    .expect("zombie removed within 5 s");
    assert_eq!(left, (silent_id, LeaveReason::TimedOut));
    drop(silent);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors_and_never_disturbs_the_room() {
    let server = TestServer::start(&[]).await;
    // A well-behaved pair in the room whose audio must keep flowing throughout.
    let (bystander, _) = join(&server, "lobby", "bystander", Mode::Listen).await;
    let (talker, _) = join(&server, "lobby", "talker", Mode::Talk).await;
    let bystander_task = tokio::spawn(run_client(bystander, None, Duration::from_secs(3)));
    let talker_task = tokio::spawn(run_client(talker, Some(650.0), Duration::from_secs(3)));

    let mut bad = connect(&server).await;
    // Before join.
    send_expect_error(
        &mut bad,
        Message::binary(Talker::new(300.0, 0.2).next_frame(true)),
        ErrorCode::NotJoined,
    )
    .await;
    for (text, code) in [
        ("this is not json", ErrorCode::BadMessage),
        (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
        (
            r#"{"type":"join","room":"lobby","name":"x"}"#,
            ErrorCode::BadMessage,
        ),
    ] {
        send_expect_error(&mut bad, Message::text(text), code).await;
    }
    let message = send_expect_error(&mut bad, Message::text(r#"{"type":"join","room":"lobby","name":"x","format":{"codec":"pcm","sample_rate":44100,"channels":2,"frame_ms":10}}"#), ErrorCode::UnsupportedFormat).await;
    assert!(
        message.contains("pcm"),
        "the message names what was asked: {message}"
    );
    send_expect_error(&mut bad, Message::text(r#"{"type":"join","room":"no spaces!","name":"x","format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#), ErrorCode::InvalidRoom).await;
    send_expect_error(
        &mut bad,
        Message::text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000))),
        ErrorCode::MessageTooLarge,
    )
    .await;
    send_expect_error(
        &mut bad,
        Message::text(r#"{"type":"leave"}"#),
        ErrorCode::NotJoined,
    )
    .await;
    // Join properly, then send broken audio.
    bad.send(join_message("lobby", "mallory", Mode::Talk))
        .await
        .expect("send");
    assert!(matches!(
        next_control(&mut bad).await,
        ServerMessage::Joined { .. }
    ));
    bad.send(join_message("lobby", "mallory", Mode::Talk))
        .await
        .expect("send");
    expect_error(&mut bad, ErrorCode::AlreadyJoined).await;
    send_expect_error(
        &mut bad,
        Message::binary(vec![1u8, 0, 0]),
        ErrorCode::BadAudioHeader,
    )
    .await;
    send_expect_error(
        &mut bad,
        Message::binary(vec![7u8, 0, 0, 1, 0, 0, 0, 0, 0x7f, 0xf8]),
        ErrorCode::UnsupportedVersion,
    )
    .await;
    let mut garbage = vec![1u8, 0, 0, 2, 0, 0, 3, 192, 0x7f];
    garbage.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x00]);
    send_expect_error(&mut bad, Message::binary(garbage), ErrorCode::InvalidOpus).await;
    let mut too_big = vec![1u8, 0, 0, 3, 0, 0, 0, 0, 0x7f];
    too_big.extend(std::iter::repeat_n(0u8, 2000));
    send_expect_error(&mut bad, Message::binary(too_big), ErrorCode::FrameTooLarge).await;
    // Still connected and served after all of that.
    bad.send(Message::text(r#"{"type":"ping","id":42}"#))
        .await
        .expect("send");
    assert_eq!(
        next_control(&mut bad).await,
        ServerMessage::Pong { id: Some(42) }
    );
    // A message over the WebSocket limit is the one thing that closes the connection.
    bad.send(Message::binary(vec![0u8; 70_000]))
        .await
        .expect("send");
    expect_error(&mut bad, ErrorCode::MessageTooLarge).await;
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match bad.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(close, Some(1009));

    let heard = bystander_task.await.expect("bystander");
    let _ = talker_task.await.expect("talker");
    // The bystander kept receiving a continuous stream and heard the talker, not the garbage.
    assert!(
        heard.listener.frames >= 130,
        "only {} frames in 3 s",
        heard.listener.frames
    );
    assert_eq!(heard.listener.sequence_gaps, 0);
    let pcm = heard
        .listener
        .window(Duration::from_millis(1000), Duration::from_millis(2800));
    assert!(tone_db(pcm, 650.0) > -22.0);
    assert!(tone_db(pcm, 300.0) < -60.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_unknown_paths_over_plain_http() {
    let server = TestServer::start(&[]).await;
    for (path, status) in [("/healthz", "200"), ("/nope", "404"), ("/", "404")] {
        let (status_line, body) = http_get(server.addr, path).await;
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {status_line}"
        );
        if path == "/healthz" {
            assert_eq!(body, "ok\n");
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_clients_why() {
    let server = TestServer::start(&[]).await;
    let (mut alice, _) = join(&server, "r", "alice", Mode::Listen).await;
    let shutdown = tokio::spawn(server.shutdown());
    expect_error(&mut alice, ErrorCode::ShuttingDown).await;
    let close = loop {
        match alice.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(1001));
    shutdown.await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_without_hurting_the_room() {
    // A high mix bitrate fills the stalled client's socket buffers within a second or two.
    let server = TestServer::start(&[
        "--opus-bitrate",
        "510000",
        "--send-queue-ms",
        "100",
        "--slow-client-timeout-ms",
        "1000",
    ])
    .await;
    let (mut watcher, _) = join(&server, "busy", "watcher", Mode::Listen).await;
    // The stalled client: a tiny receive buffer, joins, then never reads again.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(server.addr).await.expect("connect");
    let (mut stalled, _) =
        tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    stalled
        .send(join_message("busy", "sleepy", Mode::Talk))
        .await
        .expect("join");
    let stalled_id = match next_control(&mut stalled).await {
        ServerMessage::Joined { participant_id, .. } => participant_id,
        other => panic!("{other:?}"),
    };
    let (talker, _) = join(&server, "busy", "talker", Mode::Talk).await;
    let talker_task = tokio::spawn(run_client(talker, Some(1000.0), Duration::from_secs(6)));
    // The stalled client keeps sending audio (so it is not a ping timeout) but reads nothing.
    let sender = tokio::spawn(async move {
        let mut t = Talker::new(300.0, 0.2);
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..300 {
            ticker.tick().await;
            if stalled
                .send(Message::binary(t.next_frame(true)))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut frames = 0usize;
    let mut gaps = Listener::default();
    let left = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match watcher.next().await {
                Some(Ok(Message::Binary(bytes))) => {
                    frames += 1;
                    gaps.receive_wire(&bytes);
                }
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ServerMessage::ParticipantLeft {
                        participant_id,
                        reason,
                    }) = parse_server_message(text.as_str())
                        && participant_id == stalled_id
                    {
                        return reason;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("watcher lost its connection: {other:?}"),
            }
        }
    })
    .await
    .expect("the stalled client is disconnected within 15 s");
    assert_eq!(left, LeaveReason::SlowConsumer);
    let (_, text) = http_get(server.addr, "/metrics").await;
    assert!(metric(&text, "mixer_send_queue_drops_total", "") > 0.0);
    assert_eq!(
        metric(&text, "mixer_slow_consumer_disconnects_total", ""),
        1.0
    );
    assert_eq!(
        metric(&text, "mixer_leaves_total", "reason=\"slow_consumer\""),
        1.0
    );
    // Meanwhile the watcher was served without a single missing frame.
    assert!(frames > 20, "watcher got {frames} frames");
    assert_eq!(gaps.sequence_gaps, 0);
    sender.abort();
    let _ = talker_task.await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_and_server_limits_are_enforced_and_freed() {
    let server = TestServer::start(&[
        "--max-participants",
        "2",
        "--max-rooms",
        "1",
        "--resume-window-ms",
        "0",
    ])
    .await;
    let (a, _) = join(&server, "small", "a", Mode::Listen).await;
    let (_b, _) = join(&server, "small", "b", Mode::Listen).await;
    let mut c = connect(&server).await;
    c.send(join_message("small", "c", Mode::Listen))
        .await
        .expect("send");
    let message = expect_error(&mut c, ErrorCode::RoomFull).await;
    assert!(message.contains("small"), "{message}");
    c.send(join_message("other", "c", Mode::Listen))
        .await
        .expect("send");
    expect_error(&mut c, ErrorCode::ServerFull).await;
    // When a seat frees up, the same connection can join.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        c.send(join_message("small", "c", Mode::Listen))
            .await
            .expect("send");
        match next_control(&mut c).await {
            ServerMessage::Joined { participants, .. } => {
                assert_eq!(participants.len(), 1);
                break;
            }
            ServerMessage::Error {
                code: ErrorCode::RoomFull,
                ..
            } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_traffic_loss_and_errors() {
    let server = TestServer::start(&[]).await;
    let (listener, _) = join(&server, "metered", "ear", Mode::Listen).await;
    let listener_task = tokio::spawn(run_client(listener, None, Duration::from_millis(4000)));
    let (mut talker_ws, _) = join(&server, "metered", "mouth", Mode::Talk).await;
    let mut talker = Talker::new(500.0, 0.2);
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for k in 0..100 {
        ticker.tick().await;
        let frame = talker.next_frame(true);
        // Frames 40 and 41 are lost on the way: the server must conceal them.
        if k != 40 && k != 41 {
            talker_ws.send(Message::binary(frame)).await.expect("send");
        }
    }
    talker_ws
        .send(Message::binary(vec![1u8, 2]))
        .await
        .expect("send");
    expect_error(&mut talker_ws, ErrorCode::BadAudioHeader).await;
    // Engine counters reach the metrics once a second per room.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, text) = http_get(server.addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(metric(&text, "mixer_rooms", ""), 1.0);
    assert_eq!(metric(&text, "mixer_participants", "mode=\"talk\""), 1.0);
    assert_eq!(metric(&text, "mixer_participants", "mode=\"listen\""), 1.0);
    assert_eq!(metric(&text, "mixer_joins_total", ""), 2.0);
    assert_eq!(metric(&text, "mixer_connections", ""), 2.0);
    assert_eq!(metric(&text, "mixer_audio_frames_in_total", ""), 98.0);
    assert!(metric(&text, "mixer_audio_bytes_in_total", "") > 98.0 * 10.0);
    assert_eq!(metric(&text, "mixer_packets_lost_total", ""), 2.0, "{text}");
    assert!(metric(&text, "mixer_frames_concealed_total", "") >= 2.0);
    assert_eq!(
        metric(
            &text,
            "mixer_audio_frames_rejected_total",
            "reason=\"bad_audio_header\""
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "mixer_errors_sent_total",
            "code=\"bad_audio_header\""
        ),
        1.0
    );
    // The listener hears the talker; the talker alone has a silent mix-minus, which is paused
    // (downlink DTX) once it settles, so its frames show up as paused rather than sent.
    let frames_out = metric(&text, "mixer_audio_frames_out_total", "");
    let frames_paused = metric(&text, "mixer_audio_frames_paused_total", "");
    assert!(frames_out > 90.0, "{frames_out}");
    assert!(frames_paused > 50.0, "{frames_paused}");
    assert!(frames_out + frames_paused > 150.0);
    assert!(metric(&text, "mixer_ticks_total", "") > 100.0);
    assert!(metric(&text, "mixer_tick_duration_seconds_count", "") > 100.0);
    assert!(metric(&text, "mixer_tick_phase_seconds_total", "phase=\"encode\"") > 0.0);
    assert!(metric(&text, "mixer_jitter_buffer_delay_seconds_count", "") >= 1.0);
    assert_eq!(metric(&text, "mixer_tick_deadline_misses_total", ""), 0.0);
    assert!(metric(&text, "process_resident_memory_bytes", "") > 0.0);
    let heard = listener_task.await.expect("listener");
    assert!(
        tone_db(
            heard
                .listener
                .window(Duration::from_millis(500), Duration::from_millis(2000)),
            500.0
        ) > -22.0
    );
    drop(talker_ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_kept_off_the_public_port() {
    let Command::Serve(serve) =
        <Cli as clap::Parser>::parse_from(["mixer", "serve", "--mixer-threads", "1"]).command;
    let config = serve.to_config().expect("config");
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let private = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (public_addr, private_addr) = (
        public.local_addr().expect("addr"),
        private.local_addr().expect("addr"),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(mixer::server::serve(
        config,
        public,
        Some(private),
        async move {
            let _ = stopped.await;
        },
    ));
    let (status, _) = http_get(public_addr, "/metrics").await;
    assert!(status.contains("404"), "{status}");
    let (status, body) = http_get(private_addr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("mixer_ticks_total"));
    let (status, _) = http_get(private_addr, "/healthz").await;
    assert!(status.contains("200"));
    let _ = stop.send(());
    task.await.expect("join").expect("server");
}

/// What a scripted client saw: decoded audio, and every control message with its arrival time
/// (since the start) — talking indicators included.
struct Scripted {
    listener: Listener,
    messages: Vec<(Duration, ServerMessage)>,
    /// The close code, if the server closed the connection.
    closed: Option<u16>,
}

impl Scripted {
    fn errors(&self) -> Vec<ErrorCode> {
        self.messages
            .iter()
            .filter_map(|(_, m)| match m {
                ServerMessage::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// The messages other than errors and talking indicators, in order.
    fn events(&self) -> Vec<ServerMessage> {
        self.messages
            .iter()
            .map(|(_, m)| m.clone())
            .filter(|m| !matches!(m, ServerMessage::Error { .. }))
            .collect()
    }
}

/// Runs a client for `duration`: sends `tone` every 20 ms while inside one of `talk` (time
/// windows since the start), sends each scripted control message at its time, and records what
/// comes back. A connection the server closes ends the run early.
async fn run_script(
    mut ws: Client,
    tone: Option<f32>,
    talk: &[(f64, f64)],
    script: Vec<(f64, ClientMessage)>,
    duration: Duration,
) -> Scripted {
    let mut talker = tone.map(|f| Talker::new(f, 0.2));
    let mut seen = Scripted {
        listener: Listener::default(),
        messages: Vec::new(),
        closed: None,
    };
    let mut script = script.into_iter().peekable();
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = start.elapsed();
                if now >= duration {
                    break;
                }
                while let Some((_, message)) = script.next_if(|(at, _)| now.as_secs_f64() >= *at) {
                    let _ = ws.send(Message::text(message.to_json())).await;
                }
                let t = now.as_secs_f64();
                if let Some(talker) = talker.as_mut() {
                    if talk.iter().any(|(from, to)| t >= *from && t < *to) {
                        let _ = ws.send(Message::binary(talker.next_frame(true))).await;
                    } else {
                        talker.pause(1);
                    }
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => seen.listener.receive_wire(&bytes),
                Some(Ok(Message::Text(text))) => seen.messages.push((
                    start.elapsed(),
                    parse_server_message(text.as_str()).expect("json"),
                )),
                Some(Ok(Message::Close(frame))) => {
                    seen.closed = frame.map(|f| u16::from(f.code));
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    let _ = ws.close(None).await;
    seen
}

async fn join_as(
    server: &TestServer,
    room: &str,
    name: &str,
    mode: Mode,
    role: Role,
) -> (Client, u32) {
    let mut ws = connect(server).await;
    ws.send(join_message_as(room, name, mode, role))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined { participant_id, .. } => (ws, participant_id),
        other => panic!("expected joined, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_to_talk_with_a_single_floor_over_real_sockets() {
    let server =
        TestServer::start(&["--floor-policy", "single", "--floor-silence-ms", "2000"]).await;
    // Open microphones are refused in a single-floor room, except for moderators.
    let mut open_mic = connect(&server).await;
    let refusal = send_expect_error(
        &mut open_mic,
        join_message("channel-1", "loud", Mode::Talk),
        ErrorCode::ModeNotAllowed,
    )
    .await;
    assert!(refusal.contains("ptt"), "{refusal}");
    // A speaker who leaves the mode out gets push-to-talk in a single-floor room.
    let mut ws = connect(&server).await;
    let join = r#"{"type":"join","room":"channel-1","name":"alpha","format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#;
    ws.send(Message::text(join)).await.expect("send join");
    let a_id = match next_control(&mut ws).await {
        ServerMessage::Joined {
            participant_id,
            floor,
            ..
        } => {
            assert_eq!(floor.policy, mixer_protocol::FloorPolicy::Single);
            participant_id
        }
        other => panic!("expected joined, got {other:?}"),
    };
    let a = ws;
    let (b, b_id) = join_as(&server, "channel-1", "bravo", Mode::Ptt, Role::Speaker).await;
    let (l, _) = join_as(&server, "channel-1", "ear", Mode::Listen, Role::Speaker).await;
    let run = Duration::from_millis(4200);
    let request = ClientMessage::FloorRequest { preempt: false };
    // Alpha holds the floor 0.2-2.1 s and talks through it; Bravo asks too early, transmits
    // anyway (dropped: no floor), asks again after Alpha released and is heard.
    let alpha = tokio::spawn(run_script(
        a,
        Some(TONES[0]),
        &[(0.3, 2.0)],
        vec![
            (0.2, request.clone()),
            (1.0, request.clone()),
            (2.1, ClientMessage::FloorRelease),
        ],
        run,
    ));
    let bravo = tokio::spawn(run_script(
        b,
        Some(TONES[1]),
        &[(0.6, 4.0)],
        vec![(0.5, request.clone()), (2.4, request.clone())],
        run,
    ));
    let ear = run_script(l, None, &[], vec![], run).await;
    let (alpha, bravo) = (alpha.await.expect("alpha"), bravo.await.expect("bravo"));
    let floor: Vec<ServerMessage> = ear
        .events()
        .into_iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::FloorGranted { .. } | ServerMessage::FloorReleased { .. }
            )
        })
        .collect();
    assert_eq!(
        floor,
        vec![
            ServerMessage::FloorGranted {
                participant_id: a_id,
                max_talk_ms: Some(60_000)
            },
            ServerMessage::FloorReleased {
                participant_id: a_id,
                reason: mixer_protocol::FloorEndReason::Released,
                by: None
            },
            ServerMessage::FloorGranted {
                participant_id: b_id,
                max_talk_ms: Some(60_000)
            },
        ]
    );
    assert!(
        bravo
            .events()
            .contains(&ServerMessage::FloorDenied { holder: a_id }),
        "{:?}",
        bravo.messages
    );
    assert!(bravo.errors().contains(&ErrorCode::NoFloor));
    assert!(alpha.errors().is_empty(), "{:?}", alpha.messages);
    // Asking again while holding the floor is granted again, to the asker alone.
    let grants = |seen: &Scripted| {
        seen.events()
            .iter()
            .filter(|m| matches!(m, ServerMessage::FloorGranted { participant_id, .. } if *participant_id == a_id))
            .count()
    };
    assert_eq!((grants(&alpha), grants(&ear)), (2, 1));
    // The listener's audio starts with Alpha's transmission (silence before it is not sent).
    let heard = &ear.listener;
    assert_hears_tones(
        heard.window(Duration::from_millis(200), Duration::from_millis(1400)),
        &[TONES[0]],
        &[TONES[1]],
    );
    assert_hears_tones(
        heard.window(Duration::from_millis(2400), Duration::from_millis(3300)),
        &[TONES[1]],
        &[TONES[0]],
    );
    // Talking indicators came with the transmissions.
    assert!(ear.messages.iter().any(|(_, m)| *m
        == ServerMessage::TalkingStarted {
            participant_id: a_id
        }));
    assert!(ear.messages.iter().any(|(_, m)| *m
        == ServerMessage::TalkingStarted {
            participant_id: b_id
        }));
    let (_, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(
        metric(&text, "mixer_floor_events_total", "event=\"granted\""),
        2.0
    );
    assert_eq!(
        metric(&text, "mixer_floor_events_total", "event=\"released\""),
        1.0
    );
    assert!(
        metric(
            &text,
            "mixer_audio_frames_rejected_total",
            "reason=\"no_floor\""
        ) > 10.0
    );
    server.shutdown().await;
}

fn assert_hears_tones(pcm: &[f32], present: &[f32], absent: &[f32]) {
    for f in present {
        assert!(
            tone_db(pcm, *f) > -22.0,
            "{f} Hz not heard: {} dB",
            tone_db(pcm, *f)
        );
    }
    for f in absent {
        assert!(
            tone_db(pcm, *f) < -50.0,
            "{f} Hz heard: {} dB",
            tone_db(pcm, *f)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_mute_set_gain_and_remove_and_modes_change_over_real_sockets() {
    let server = TestServer::start(&[]).await;
    let (m, m_id) = join_as(&server, "hall", "mod", Mode::Talk, Role::Moderator).await;
    let (s, s_id) = join_as(&server, "hall", "speaker", Mode::Talk, Role::Speaker).await;
    let (l, l_id) = join_as(&server, "hall", "ear", Mode::Listen, Role::Speaker).await;
    let (r, _) = join_as(&server, "hall", "audience", Mode::Listen, Role::Listener).await;
    let run = Duration::from_millis(4200);
    let moderator = tokio::spawn(run_script(
        m,
        None,
        &[],
        vec![
            (
                1.0,
                ClientMessage::Mute {
                    participant_id: Some(s_id),
                    muted: true,
                },
            ),
            (
                2.0,
                ClientMessage::SetGain {
                    participant_id: s_id,
                    gain_db: 6,
                },
            ),
            (
                2.1,
                ClientMessage::SetGain {
                    participant_id: s_id,
                    gain_db: 30,
                },
            ),
            (
                2.2,
                ClientMessage::SetGain {
                    participant_id: 9999,
                    gain_db: 3,
                },
            ),
            (
                2.4,
                ClientMessage::Mute {
                    participant_id: Some(s_id),
                    muted: false,
                },
            ),
            (
                3.6,
                ClientMessage::Remove {
                    participant_id: s_id,
                },
            ),
        ],
        run,
    ));
    let speaker = tokio::spawn(run_script(
        s,
        Some(TONES[1]),
        &[(0.0, 5.0)],
        vec![
            (
                1.4,
                ClientMessage::Mute {
                    participant_id: None,
                    muted: false,
                },
            ),
            (
                1.5,
                ClientMessage::Mute {
                    participant_id: Some(m_id),
                    muted: true,
                },
            ),
            (
                1.6,
                ClientMessage::Remove {
                    participant_id: m_id,
                },
            ),
        ],
        run,
    ));
    let audience = tokio::spawn(run_script(
        r,
        None,
        &[],
        vec![(0.5, ClientMessage::SetMode { mode: Mode::Talk })],
        run,
    ));
    let ear = run_script(
        l,
        None,
        &[],
        vec![(0.5, ClientMessage::SetMode { mode: Mode::Ptt })],
        run,
    )
    .await;
    let (moderator, speaker, audience) = (
        moderator.await.expect("moderator"),
        speaker.await.expect("speaker"),
        audience.await.expect("audience"),
    );
    // The speaker may not unmute itself after a moderator muted it, nor act on others.
    assert_eq!(
        speaker.errors()[..3],
        [ErrorCode::Forbidden; 3],
        "{:?}",
        speaker.messages
    );
    assert_eq!(speaker.errors().last(), Some(&ErrorCode::Removed));
    assert_eq!(speaker.closed, Some(1008));
    assert_eq!(
        moderator.errors(),
        vec![ErrorCode::InvalidGain, ErrorCode::UnknownParticipant]
    );
    assert_eq!(audience.errors(), vec![ErrorCode::ModeNotAllowed]);
    let expected = vec![
        ServerMessage::ModeChanged {
            participant_id: l_id,
            mode: Mode::Ptt,
        },
        ServerMessage::ParticipantMuted {
            participant_id: s_id,
            muted: true,
            by: Some(m_id),
        },
        ServerMessage::GainChanged {
            participant_id: s_id,
            gain_db: 6,
            by: m_id,
        },
        ServerMessage::ParticipantMuted {
            participant_id: s_id,
            muted: false,
            by: Some(m_id),
        },
        ServerMessage::ParticipantLeft {
            participant_id: s_id,
            reason: LeaveReason::Removed,
        },
    ];
    let seen: Vec<ServerMessage> = ear
        .events()
        .into_iter()
        .filter(|m| {
            // Leave out talking indicators, and the others joining and leaving at the ends.
            !matches!(
                m,
                ServerMessage::TalkingStarted { .. }
                    | ServerMessage::TalkingStopped { .. }
                    | ServerMessage::ParticipantJoined { .. }
                    | ServerMessage::ParticipantLeft {
                        reason: LeaveReason::Left | LeaveReason::Disconnected,
                        ..
                    }
            )
        })
        .collect();
    assert_eq!(seen, expected);
    // Talking indicators: the speaker starts, stops when muted, and starts again.
    let talking: Vec<bool> = ear
        .messages
        .iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::TalkingStarted { participant_id } if *participant_id == s_id => {
                Some(true)
            }
            ServerMessage::TalkingStopped { participant_id } if *participant_id == s_id => {
                Some(false)
            }
            _ => None,
        })
        .collect();
    assert_eq!(talking[..3], [true, false, true], "{talking:?}");
    // What the room heard: the speaker, nothing while muted, then the speaker 6 dB louder.
    let heard = &ear.listener;
    let before = tone_db(
        heard.window(Duration::from_millis(200), Duration::from_millis(900)),
        TONES[1],
    );
    let muted = tone_db(
        heard.window(Duration::from_millis(1300), Duration::from_millis(2300)),
        TONES[1],
    );
    let after = tone_db(
        heard.window(Duration::from_millis(2700), Duration::from_millis(3400)),
        TONES[1],
    );
    assert!(before > -22.0 && muted < -50.0, "{before} / {muted}");
    assert!(
        (after - before - 6.0).abs() < 1.5,
        "gain: {before} -> {after}"
    );
    server.shutdown().await;
}

/// Sends a control message and returns the next control message in reply.
async fn ask(ws: &mut Client, message: ClientMessage) -> ServerMessage {
    ws.send(Message::text(message.to_json()))
        .await
        .expect("send");
    next_control(ws).await
}

/// Every control message arriving within `wait` (skipping audio).
async fn drain_control(ws: &mut Client, wait: Duration) -> Vec<ServerMessage> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(text) = message {
            seen.push(parse_server_message(text.as_str()).expect("json"));
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_created_with_settings_and_chat_reaches_everyone_in_order() {
    let server = TestServer::start(&[]).await;
    let mut lobby = connect(&server).await;
    // Before anyone joins: no rooms; one is created with explicit settings.
    assert_eq!(
        ask(&mut lobby, ClientMessage::ListRooms).await,
        ServerMessage::Rooms {
            rooms: vec![],
            truncated: false
        }
    );
    let settings = mixer_protocol::RoomSettings {
        room: "ch-2".into(),
        floor_policy: Some(mixer_protocol::FloorPolicy::Single),
        max_participants: Some(3),
        max_talkers: Some(4),
        ..Default::default()
    };
    let ServerMessage::RoomInfo(created) =
        ask(&mut lobby, ClientMessage::CreateRoom(settings.clone())).await
    else {
        panic!("expected room_info");
    };
    assert_eq!(created.participants, 0);
    assert_eq!(created.settings.max_participants, Some(3));
    assert_eq!(
        created.settings.normalise,
        Some(false),
        "defaults fill the rest"
    );
    assert_eq!(created.settings.max_talk_ms, Some(60_000));
    for (message, code) in [
        (
            ClientMessage::CreateRoom(settings.clone()),
            ErrorCode::RoomExists,
        ),
        (
            ClientMessage::CreateRoom(mixer_protocol::RoomSettings {
                room: "ch-3".into(),
                max_talk_ms: Some(10),
                ..Default::default()
            }),
            ErrorCode::InvalidSettings,
        ),
        (
            ClientMessage::RoomInfo {
                room: "nope".into(),
            },
            ErrorCode::UnknownRoom,
        ),
        (
            ClientMessage::RoomInfo {
                room: "bad name!".into(),
            },
            ErrorCode::InvalidRoom,
        ),
        (
            ClientMessage::Chat {
                text: "early".into(),
            },
            ErrorCode::NotJoined,
        ),
    ] {
        send_expect_error(&mut lobby, Message::text(message.to_json()), code).await;
    }
    // Two people join the created room; a speaker who leaves the mode out gets push-to-talk.
    let mut a = connect(&server).await;
    a.send(Message::text(
        r#"{"type":"join","room":"ch-2","name":"ann","format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
    ))
    .await
    .expect("join");
    let ServerMessage::Joined {
        participant_id: a_id,
        floor,
        ..
    } = next_control(&mut a).await
    else {
        panic!("expected joined");
    };
    assert_eq!(floor.policy, mixer_protocol::FloorPolicy::Single);
    let (mut b, b_id) = join_as(&server, "ch-2", "ben", Mode::Ptt, Role::Speaker).await;
    let (_c, _) = join_as(&server, "ch-2", "cat", Mode::Listen, Role::Speaker).await;
    send_expect_error(
        &mut connect(&server).await,
        join_message("ch-2", "dan", Mode::Listen),
        ErrorCode::RoomFull,
    )
    .await;
    let ServerMessage::Rooms { rooms, .. } = ask(&mut lobby, ClientMessage::ListRooms).await else {
        panic!("expected rooms");
    };
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        (rooms[0].settings.room.as_str(), rooms[0].participants),
        ("ch-2", 3)
    );
    // Chat: both see every message, in one order, with sender and server time.
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    for text in ["hello", "second"] {
        a.send(Message::text(
            ClientMessage::Chat { text: text.into() }.to_json(),
        ))
        .await
        .expect("chat");
    }
    b.send(Message::text(
        ClientMessage::Chat {
            text: "hi\nthere 👋".into(),
        }
        .to_json(),
    ))
    .await
    .expect("chat");
    let chats = |seen: Vec<ServerMessage>| -> Vec<(u64, u32, String, String, u64)> {
        seen.into_iter()
            .filter_map(|m| match m {
                ServerMessage::Chat {
                    id,
                    from,
                    name,
                    text,
                    ts_ms,
                } => Some((id, from, name, text, ts_ms)),
                _ => None,
            })
            .collect()
    };
    let seen_a = chats(drain_control(&mut a, Duration::from_millis(500)).await);
    let seen_b = chats(drain_control(&mut b, Duration::from_millis(300)).await);
    assert_eq!(
        seen_a, seen_b,
        "everyone sees the same messages in the same order"
    );
    assert_eq!(seen_a.len(), 3);
    assert_eq!(
        seen_a.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let from_ann: Vec<&str> = seen_a
        .iter()
        .filter(|c| c.1 == a_id)
        .map(|c| c.3.as_str())
        .collect();
    assert_eq!(
        from_ann,
        vec!["hello", "second"],
        "one sender's messages keep their order"
    );
    assert!(
        seen_a
            .iter()
            .any(|c| c.1 == b_id && c.2 == "ben" && c.3 == "hi\nthere 👋")
    );
    assert!(
        seen_a
            .iter()
            .all(|c| c.4 >= before && c.4 < before + 60_000)
    );
    // Bad and flooding chat get typed errors and never reach the room.
    for text in ["   ", "\u{7}bell", &"x".repeat(1001)] {
        send_expect_error(
            &mut a,
            Message::text(ClientMessage::Chat { text: text.into() }.to_json()),
            ErrorCode::InvalidChat,
        )
        .await;
    }
    for k in 0..8 {
        a.send(Message::text(
            ClientMessage::Chat {
                text: format!("flood {k}"),
            }
            .to_json(),
        ))
        .await
        .expect("chat");
    }
    let replies = drain_control(&mut a, Duration::from_millis(500)).await;
    let limited = replies
        .iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::ChatRateLimited,
                    ..
                }
            )
        })
        .count();
    let delivered = chats(replies).len();
    assert!(
        limited >= 4 && delivered + limited == 8,
        "{delivered} delivered, {limited} limited"
    );
    let (_, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(
        metric(&text, "mixer_chat_messages_total", ""),
        (3 + delivered) as f64
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_resumes_as_the_same_participant_within_the_window() {
    let server = TestServer::start(&["--resume-window-ms", "1500"]).await;
    let mut ear = connect(&server).await;
    ear.send(join_message("radio", "ear", Mode::Listen))
        .await
        .expect("join");
    let ServerMessage::Joined {
        resume_token: Some(_),
        ..
    } = next_control(&mut ear).await
    else {
        panic!("joined carries a resume token");
    };
    let mut mouth = connect(&server).await;
    mouth
        .send(join_message_as(
            "radio",
            "mouth",
            Mode::Talk,
            Role::Moderator,
        ))
        .await
        .expect("join");
    let ServerMessage::Joined {
        participant_id,
        resume_token: Some(token),
        resumed: false,
        ..
    } = next_control(&mut mouth).await
    else {
        panic!("expected joined");
    };
    assert_eq!(token.len(), 32);
    assert!(matches!(
        next_control(&mut ear).await,
        ServerMessage::ParticipantJoined { .. }
    ));
    // The moderator mutes itself, then its connection drops without a close frame.
    mouth
        .send(Message::text(
            ClientMessage::Mute {
                participant_id: None,
                muted: true,
            }
            .to_json(),
        ))
        .await
        .expect("mute");
    assert!(matches!(
        next_control(&mut ear).await,
        ServerMessage::ParticipantMuted { muted: true, .. }
    ));
    drop(mouth);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A wrong token, or the right one for another room, resumes nothing.
    let resume = |room: &str, token: &str| {
        Message::text(
            ClientMessage::Join(JoinRequest {
                room: room.into(),
                name: "mouth".into(),
                token: None,
                mode: None,
                resume: Some(token.into()),
                role: Role::Speaker,
                format: AudioFormat::opus_48k_mono_20ms(),
            })
            .to_json(),
        )
    };
    let mut back = connect(&server).await;
    send_expect_error(
        &mut back,
        resume("radio", &"0".repeat(32)),
        ErrorCode::ResumeFailed,
    )
    .await;
    send_expect_error(&mut back, resume("other", &token), ErrorCode::ResumeFailed).await;
    send_expect_error(
        &mut back,
        resume("radio", "not-hex"),
        ErrorCode::InvalidToken,
    )
    .await;
    back.send(resume("radio", &token)).await.expect("resume");
    match next_control(&mut back).await {
        ServerMessage::Joined {
            participant_id: id,
            resumed: true,
            participants,
            ..
        } => {
            assert_eq!(id, participant_id, "the same participant");
            assert_eq!(participants.len(), 1, "the others, not itself");
        }
        other => panic!("expected a resumed joined, got {other:?}"),
    }
    // Still muted and still a moderator: unmuting itself is allowed, and the room hears it.
    back.send(Message::text(
        ClientMessage::Mute {
            participant_id: None,
            muted: false,
        }
        .to_json(),
    ))
    .await
    .expect("unmute");
    assert_eq!(
        next_control(&mut ear).await,
        ServerMessage::ParticipantMuted {
            participant_id,
            muted: false,
            by: None
        },
        "the room saw no leave, only the unmute"
    );
    // Its audio is heard again.
    let talk = tokio::spawn(run_client(
        back,
        Some(TONES[2]),
        Duration::from_millis(1500),
    ));
    let heard = run_client(ear, None, Duration::from_millis(1500)).await;
    talk.await.expect("talker");
    assert!(
        tone_db(
            heard
                .listener
                .window(Duration::from_millis(300), Duration::from_millis(1300)),
            TONES[2]
        ) > -22.0
    );
    // A client that does not come back is gone once the window is over.
    let (mut ear2, _) = join(&server, "radio2", "ear2", Mode::Listen).await;
    let (gone, gone_id) = join(&server, "radio2", "gone", Mode::Talk).await;
    let _ = next_control(&mut ear2).await;
    let dropped_at = tokio::time::Instant::now();
    drop(gone);
    assert_eq!(
        expect_left(&mut ear2).await,
        (gone_id, LeaveReason::Disconnected)
    );
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(1400),
        "left only after the window"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcm_client_and_an_opus_client_hear_each_other_over_real_sockets() {
    let server = TestServer::start(&[]).await;
    let mut pcm = connect(&server).await;
    let pcm_join = ClientMessage::Join(JoinRequest {
        room: "mcu".into(),
        name: "sensor".into(),
        token: None,
        mode: Some(Mode::Talk),
        resume: None,
        role: Role::Speaker,
        format: AudioFormat::pcm16(44_100),
    });
    pcm.send(Message::text(pcm_join.to_json()))
        .await
        .expect("join");
    match next_control(&mut pcm).await {
        ServerMessage::Joined { format, .. } => assert_eq!(format, AudioFormat::pcm16(44_100)),
        other => panic!("expected joined, got {other:?}"),
    }
    // A frame of the wrong size for the format is refused with a clear error.
    send_expect_error(
        &mut pcm,
        Message::binary(vec![1u8; 9 + 100]),
        ErrorCode::UnsupportedFormat,
    )
    .await;
    let (opus, _) = join(&server, "mcu", "phone", Mode::Talk).await;
    let opus_task = tokio::spawn(run_client(
        opus,
        Some(TONES[2]),
        Duration::from_millis(2500),
    ));
    // The PCM client: sends 500 Hz at 44.1 kHz, keeps what it receives (PCM at 44.1 kHz).
    let mut talker = common::PcmTalker::new(44_100, 500.0, 0.2);
    let mut heard: Vec<f32> = Vec::new();
    let start = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    while start.elapsed() < Duration::from_millis(2500) {
        tokio::select! {
            _ = ticker.tick() => {
                pcm.send(Message::binary(talker.next_frame())).await.expect("pcm audio");
            }
            message = pcm.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = AudioFrame::parse_pcm(&bytes).expect("pcm frame");
                    assert_eq!(frame.payload.len(), 882 * 2);
                    heard.extend(common::pcm_samples(frame.payload));
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            },
        }
    }
    let phone = opus_task.await.expect("opus client");
    let tail = &heard[heard.len().saturating_sub(44_100)..];
    assert!(tail.len() > 40_000, "{} samples", tail.len());
    assert!(
        common::tone_db_at(tail, TONES[2], 44_100) > -22.0,
        "the phone is heard"
    );
    assert!(
        common::tone_db_at(tail, 500.0, 44_100) < -50.0,
        "not its own tone"
    );
    let phone_tail = phone
        .listener
        .window(Duration::from_millis(1000), Duration::from_millis(2200));
    assert!(
        tone_db(phone_tail, 500.0) > -22.0,
        "the sensor is heard: {}",
        tone_db(phone_tail, 500.0)
    );
    assert!(tone_db(phone_tail, TONES[2]) < -40.0, "not its own tone");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_hears_the_transmission_from_its_start_over_real_sockets() {
    let server =
        TestServer::start(&["--floor-policy", "single", "--floor-silence-ms", "2000"]).await;
    let (a, a_id) = join_as(&server, "channel-9", "alpha", Mode::Ptt, Role::Speaker).await;
    let (early, _) = join_as(&server, "channel-9", "early", Mode::Listen, Role::Speaker).await;
    let run = Duration::from_millis(3000);
    // Alpha takes the floor at 0.1 s and says two things: 0.2-0.6 s, then 1.4-2.4 s.
    let alpha = tokio::spawn(run_script(
        a,
        Some(TONES[0]),
        &[(0.2, 0.6), (1.4, 2.4)],
        vec![
            (0.1, ClientMessage::FloorRequest { preempt: false }),
            (2.5, ClientMessage::FloorRelease),
        ],
        run,
    ));
    let early = tokio::spawn(run_script(early, None, &[], vec![], run));
    // Someone tunes in at 1.0 s, in the pause: live, the first thing said would be lost.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut late = connect(&server).await;
    late.send(join_message("channel-9", "late", Mode::Listen))
        .await
        .expect("send join");
    let replay_ms = match next_control(&mut late).await {
        ServerMessage::Joined {
            replay_ms, floor, ..
        } => {
            assert_eq!(floor.holder, Some(a_id));
            replay_ms.expect("joined during a transmission: replay_ms")
        }
        other => panic!("expected joined, got {other:?}"),
    };
    assert!(
        (600..=1100).contains(&replay_ms),
        "about 0.9 s behind, got {replay_ms} ms"
    );
    let late = run_script(late, None, &[], vec![], Duration::from_millis(2000)).await;
    let (alpha, early) = (alpha.await.expect("alpha"), early.await.expect("early"));
    assert!(alpha.errors().is_empty(), "{:?}", alpha.messages);
    // The late joiner hears the first thing said at once, though it was said before it came.
    let heard = &late.listener;
    assert!(
        tone_db(
            heard.window(Duration::ZERO, Duration::from_millis(300)),
            TONES[0]
        ) > -25.0,
        "the replay starts with the first words"
    );
    // It hears both things said: 0.4 s replayed at 1.5x, 1 s live. Live only, it would have
    // heard 1 s.
    let toned = |pcm: &[f32]| {
        pcm.chunks_exact(960)
            .filter(|block| tone_db(block, TONES[0]) > -30.0)
            .count()
    };
    let (late_blocks, early_blocks) = (toned(&heard.pcm), toned(&early.listener.pcm));
    assert!(
        (62..=85).contains(&early_blocks),
        "the early listener hears 1.4 s of tone, got {early_blocks} blocks"
    );
    // The replay plays the first 20 frames in about 14, so the late joiner misses ~6 blocks
    // of the early listener's; live only, it would miss 20.
    assert!(
        late_blocks + 12 >= early_blocks && late_blocks <= early_blocks + 2,
        "late {late_blocks} blocks of tone, early {early_blocks}"
    );
    // Told once that it is live again, during the pause, before the second thing said.
    let caught_up: Vec<Duration> = late
        .messages
        .iter()
        .filter(|(_, m)| *m == ServerMessage::CaughtUp)
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(caught_up.len(), 1, "{:?}", late.messages);
    assert!(caught_up[0] < Duration::from_millis(500), "{caught_up:?}");
    // Nobody else was replayed to.
    assert!(
        !early
            .messages
            .iter()
            .any(|(_, m)| *m == ServerMessage::CaughtUp)
    );
    let (_, text) = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&text, "mixer_replays_total", ""), 1.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_fill_the_server_with_created_rooms() {
    let server = TestServer::start(&[]).await;
    let mut lobby = connect(&server).await;
    // One connection cannot fill the server with empty rooms: after a burst it is refused,
    // and the refused room does not exist.
    let mut refused = None;
    for i in 0..6 {
        let room = format!("spam-{i}");
        let reply = ask(
            &mut lobby,
            ClientMessage::CreateRoom(mixer_protocol::RoomSettings {
                room: room.clone(),
                ..Default::default()
            }),
        )
        .await;
        if let ServerMessage::Error { code, .. } = reply {
            assert_eq!(code, ErrorCode::RateLimited);
            refused = Some(room);
            break;
        }
    }
    let refused = refused.expect("create_room is rate-limited");
    assert!(matches!(
        ask(&mut lobby, ClientMessage::RoomInfo { room: refused }).await,
        ServerMessage::Error {
            code: ErrorCode::UnknownRoom,
            ..
        }
    ));
    // Another connection still can.
    let mut other = connect(&server).await;
    assert!(matches!(
        ask(
            &mut other,
            ClientMessage::CreateRoom(mixer_protocol::RoomSettings {
                room: "mine".into(),
                ..Default::default()
            })
        )
        .await,
        ServerMessage::RoomInfo(_)
    ));
    server.shutdown().await;
}
