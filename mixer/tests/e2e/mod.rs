//! End-to-end tests against the real server on a loopback port, with real WebSocket clients:
//! the harness (a server on port 0, clients, message helpers) here, the tests by topic below.

mod access;
mod browser;
mod cluster;
mod edge;
mod edge_fleet;
mod edge_measure;
mod fleet_cluster;
mod fleet_loadgen;
mod fleet_measure;
mod fleet_nodes;
mod flood;
mod listen;
mod low_latency;
mod mixing;
mod recording;
mod robustness;
mod service;
mod source;
mod tls;
mod voice_rooms;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{self, Listener, Talker, tone_db};
use futures_util::{SinkExt, StreamExt};
use mixer::cli::{Cli, Command};
use mixer::server::ServerConfig;
use mixer_protocol::{
    AudioFormat, AudioFrame, ClientMessage, ErrorCode, JoinRequest, LeaveReason, Mode, Role,
    ServerMessage, parse_server_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server that gives up on a client that stops reading within about a second: a high mix
/// bitrate fills the stalled client's socket buffers in a second or two, a short send queue
/// then overflows, and the slow-client timeout is short.
const SLOW_CLIENT_FLAGS: &[&str] = &[
    "--opus-bitrate",
    "510000",
    "--send-queue-ms",
    "100",
    "--slow-client-timeout-ms",
    "1000",
];

struct TestServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    async fn start(extra: &[&str]) -> TestServer {
        let mut args = vec!["mixer", "serve", "--mixer-threads", "2"];
        args.extend_from_slice(extra);
        let Command::Serve(serve) = <Cli as clap::Parser>::parse_from(args).command else {
            unreachable!("parsed as serve")
        };
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
    http_exchange(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"),
    )
    .await
}

/// Writes a whole HTTP request (head, no body) on `stream`, reads the response to the end of
/// the stream (the server closes after answering) and returns (status line, body).
async fn http_exchange<S>(stream: &mut S, request: &str) -> (String, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Sends `request` and reads only the response's head, leaving the rest unread (a stream, or an
/// accepted WebSocket upgrade, keeps the connection open).
async fn response_head(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("a response in time")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
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
    Message::text(ClientMessage::Join(join_request_as(room, name, mode, role)).to_json())
}

/// A plain Opus join (no token, no resume).
fn join_request_as(room: &str, name: &str, mode: Mode, role: Role) -> JoinRequest {
    JoinRequest {
        room: room.into(),
        name: name.into(),
        token: None,
        mode: Some(mode),
        resume: None,
        role: Some(role),
        format: AudioFormat::opus_48k_mono_20ms(),
    }
}

/// Reads until a control message arrives (skipping audio and talking indicators, which come
/// whenever someone speaks), with a timeout.
async fn next_control<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> ServerMessage {
    loop {
        match next_message(ws).await {
            ServerMessage::TalkingStarted { .. } | ServerMessage::TalkingStopped { .. } => {}
            other => return other,
        }
    }
}

/// Reads until any control message arrives (skipping audio), with a timeout.
async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> ServerMessage {
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
    join_in(server, room, name, mode, AudioFormat::opus_48k_mono_20ms()).await
}

/// [`join`] in `format`, which `joined` must confirm.
async fn join_in(
    server: &TestServer,
    room: &str,
    name: &str,
    mode: Mode,
    format: AudioFormat,
) -> (Client, u32) {
    let mut ws = connect(server).await;
    let request = JoinRequest {
        format: format.clone(),
        ..join_request_as(room, name, mode, Role::Speaker)
    };
    ws.send(Message::text(ClientMessage::Join(request).to_json()))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined {
            participant_id,
            room: joined_room,
            format: joined_format,
            ..
        } => {
            assert_eq!(joined_room, room);
            assert_eq!(joined_format, format);
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
/// and decodes everything it receives (over plain TCP or TLS).
async fn run_client<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    tone: Option<f32>,
    duration: Duration,
) -> Heard {
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
