//! End-to-end tests against the real server on a loopback port, with real WebSocket clients.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Listener, Talker, tone_db};
use futures_util::{SinkExt, StreamExt};
use mixer::cli::{Cli, Command};
use mixer::server::ServerConfig;
use mixer_protocol::{
    AudioFormat, ClientMessage, ErrorCode, JoinRequest, LeaveReason, Mode, ServerMessage,
    parse_server_message,
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
    Message::text(
        ClientMessage::Join(JoinRequest {
            room: room.into(),
            name: name.into(),
            token: None,
            mode,
            format: AudioFormat::opus_48k_mono_20ms(),
        })
        .to_json(),
    )
}

/// Reads until a control message arrives (skipping audio), with a timeout.
async fn next_control(ws: &mut Client) -> ServerMessage {
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
    let server = TestServer::start(&[]).await;
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
    let server =
        TestServer::start(&["--ping-interval-ms", "200", "--ping-timeout-ms", "600"]).await;
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
    let server = TestServer::start(&["--max-participants", "2", "--max-rooms", "1"]).await;
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
