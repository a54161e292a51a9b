//! TLS on the public port: wss:// audio, https:// routes, plain clients turned away, and the
//! certificate swapped on reload (in process, and by SIGHUP to the real binary) while open
//! connections carry on. Certificates come from test CAs made with rcgen in a scratch folder.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;

use loadgen::connect::{ConnectError, Connector, Ws};
use mixer::server::tls::TlsReloader;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_tungstenite::tungstenite;

use super::*;

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    /// A server certificate for localhost and 127.0.0.1: (certificate PEM, key PEM).
    fn server_certificate(&self) -> (String, String) {
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "mixer test server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

/// A scratch folder for one test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mixer-e2e-tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn cert(&self) -> PathBuf {
        self.0.join("server.crt")
    }

    fn key(&self) -> PathBuf {
        self.0.join("server.key")
    }

    /// Writes a fresh certificate from `ca` (and its key) over the server's files.
    fn install(&self, ca: &Ca) {
        let (cert, key) = ca.server_certificate();
        std::fs::write(self.cert(), cert).expect("write cert");
        std::fs::write(self.key(), key).expect("write key");
    }

    /// Writes `ca`'s certificate to a file of its own, for clients to trust.
    fn ca_file(&self, ca: &Ca, name: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, ca.issuer.pem()).expect("write CA");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TLS server with the scratch folder's certificate; also returns its reload handle.
async fn start_tls(scratch: &Scratch, extra: &[&str]) -> (TestServer, TlsReloader) {
    let (cert, key) = (scratch.cert(), scratch.key());
    let mut args = vec![
        "mixer",
        "serve",
        "--mixer-threads",
        "2",
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    let Command::Serve(serve) = <Cli as clap::Parser>::parse_from(args).command else {
        unreachable!("parsed as serve")
    };
    let config = serve.to_config().expect("valid config");
    let reloader = config.tls.clone().expect("TLS configured");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(mixer::server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    let server = TestServer {
        addr,
        stop: Some(stop),
        task,
    };
    (server, reloader)
}

fn wss_url(addr: SocketAddr) -> String {
    format!("wss://127.0.0.1:{}/", addr.port())
}

async fn connect_wss(addr: SocketAddr, ca_file: &Path) -> Result<Ws, ConnectError> {
    let connector = Connector::tls(Some(ca_file)).expect("connector");
    connector
        .websocket(&wss_url(addr), None)
        .await
        .map(|(ws, _)| ws)
}

async fn join_wss(addr: SocketAddr, ca_file: &Path, room: &str, name: &str, mode: Mode) -> Ws {
    let mut ws = connect_wss(addr, ca_file).await.expect("wss connect");
    ws.send(join_message(room, name, mode))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined { .. } => ws,
        other => panic!("expected joined, got {other:?}"),
    }
}

/// `GET path` over https://localhost (the DNS name in the certificate): (status line, body).
async fn https_get(addr: SocketAddr, ca_file: &Path, path: &str) -> (String, String) {
    let connector = Connector::tls(Some(ca_file)).expect("connector");
    let url = format!("https://localhost:{}{path}", addr.port());
    let (mut stream, _) = connector.open(&url).await.expect("https connect");
    // The server ends its reply with a TLS close_notify: a clean end of stream, not an error.
    http_exchange(
        &mut stream,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
}

/// Sends a ping with `id` and returns the next control message in reply, other than news of
/// who joined or left the room.
async fn ping(ws: &mut Ws, id: u64) -> ServerMessage {
    let message = ClientMessage::Ping { id: Some(id) };
    ws.send(Message::text(message.to_json()))
        .await
        .expect("send ping");
    loop {
        match next_control(ws).await {
            ServerMessage::ParticipantJoined { .. } | ServerMessage::ParticipantLeft { .. } => {}
            other => return other,
        }
    }
}

fn window(heard: &Heard) -> Vec<f32> {
    heard
        .listener
        .window(Duration::from_millis(800), Duration::from_millis(2400))
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_talkers_over_wss_hear_each_other_not_themselves() {
    let scratch = Scratch::new("audio");
    let ca = Ca::new("test CA");
    scratch.install(&ca);
    let trust = scratch.ca_file(&ca, "ca.pem");
    let (server, _) = start_tls(&scratch, &[]).await;
    let a = join_wss(server.addr, &trust, "secure", "a", Mode::Talk).await;
    let b = join_wss(server.addr, &trust, "secure", "b", Mode::Talk).await;
    let duration = Duration::from_millis(2600);
    let a = tokio::spawn(run_client(a, Some(TONES[0]), duration));
    let b = tokio::spawn(run_client(b, Some(TONES[1]), duration));
    let (a, b) = (a.await.expect("a"), b.await.expect("b"));
    assert_hears_tones(&window(&a), &[TONES[1]], &[TONES[0]]);
    assert_hears_tones(&window(&b), &[TONES[0]], &[TONES[1]]);
    assert_eq!(a.listener.sequence_gaps, 0, "a lost frames");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_port_serves_https_and_turns_away_plain_and_stalled_clients() {
    let scratch = Scratch::new("routes");
    let ca = Ca::new("test CA");
    scratch.install(&ca);
    let trust = scratch.ca_file(&ca, "ca.pem");
    let stranger = scratch.ca_file(&Ca::new("someone else"), "other-ca.pem");
    let (server, _) = start_tls(&scratch, &["--handshake-timeout-ms", "2000"]).await;

    // A client that connects and never says anything holds up nobody (its handshake waits in
    // its own task, not in the accept loop), and is cut off at the handshake timeout.
    let mut stalled = TcpStream::connect(server.addr).await.expect("connect");
    let (status, body) = tokio::time::timeout(
        Duration::from_millis(1000),
        https_get(server.addr, &trust, "/healthz"),
    )
    .await
    .expect("served while another client stalls its handshake");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(body, "ok\n");
    let (status, body) = https_get(server.addr, &trust, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("mixer_connections_total"), "{body}");

    // Plain HTTP and plain WebSocket on the TLS port: a clear 400, in plain HTTP.
    let (status, body) = http_get(server.addr, "/healthz").await;
    assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    assert!(body.contains("wss://"), "{body}");
    match tokio_tungstenite::connect_async(format!("ws://{}/", server.addr)).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("a plain WebSocket client must get a 400, got {other:?}"),
    }
    // A client that does not trust the server's CA fails its handshake.
    match connect_wss(server.addr, &stranger).await {
        Err(ConnectError::Tls { error, .. }) => {
            assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        }
        Err(other) => panic!("expected a certificate error, got {other}"),
        Ok(_) => panic!("a client trusting another CA connected"),
    }

    // None of that hurt the server: a wss client still joins and is answered.
    let mut ws = join_wss(server.addr, &trust, "after", "fine", Mode::Listen).await;
    let reply = ping(&mut ws, 7).await;
    assert!(
        matches!(reply, ServerMessage::Pong { id: Some(7) }),
        "{reply:?}"
    );

    // The silent client is closed at its handshake timeout.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(4), stalled.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection is still open: {read:?}"
    );
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tls_server_refuses_with_a_503_the_client_can_read() {
    let scratch = Scratch::new("full");
    let ca = Ca::new("test CA");
    scratch.install(&ca);
    let trust = scratch.ca_file(&ca, "ca.pem");
    let (server, _) = start_tls(&scratch, &["--max-connections", "1"]).await;
    let first = join_wss(server.addr, &trust, "full", "first", Mode::Listen).await;
    match connect_wss(server.addr, &trust).await {
        Err(ConnectError::WebSocket(error)) => match *error {
            tungstenite::Error::Http(response) => assert_eq!(response.status(), 503),
            other => panic!("expected HTTP 503, got {other}"),
        },
        Err(other) => panic!("expected HTTP 503, got {other}"),
        Ok(_) => panic!("a second connection was let in past --max-connections 1"),
    }
    drop(first);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_serves_the_new_certificate_to_new_clients_and_keeps_open_ones() {
    let scratch = Scratch::new("reload");
    let (ca_a, ca_b) = (Ca::new("CA A"), Ca::new("CA B"));
    scratch.install(&ca_a);
    let (trust_a, trust_b) = (
        scratch.ca_file(&ca_a, "a.pem"),
        scratch.ca_file(&ca_b, "b.pem"),
    );
    let (server, tls) = start_tls(&scratch, &[]).await;
    // Connected under certificate A.
    let talker = join_wss(server.addr, &trust_a, "reload", "talker", Mode::Talk).await;
    let old = join_wss(server.addr, &trust_a, "reload", "old", Mode::Listen).await;
    assert!(
        connect_wss(server.addr, &trust_b).await.is_err(),
        "B before the reload"
    );

    scratch.install(&ca_b);
    tls.reload().expect("reload to B");

    // New handshakes get certificate B.
    let new = join_wss(server.addr, &trust_b, "reload", "new", Mode::Listen).await;
    match connect_wss(server.addr, &trust_a).await {
        Err(ConnectError::Tls { error, .. }) => {
            assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        }
        Err(other) => panic!("expected a certificate error, got {other}"),
        Ok(_) => panic!("a client trusting only CA A connected after the reload"),
    }
    // Those from before keep their sessions: the talker's audio reaches both listeners.
    let duration = Duration::from_millis(2600);
    let talking = tokio::spawn(run_client(talker, Some(TONES[2]), duration));
    let old = tokio::spawn(run_client(old, None, duration));
    let new = tokio::spawn(run_client(new, None, duration));
    let (_, old, new) = (
        talking.await.expect("talker"),
        old.await.expect("old listener"),
        new.await.expect("new listener"),
    );
    assert_hears_tones(&window(&old), &[TONES[2]], &[]);
    assert_hears_tones(&window(&new), &[TONES[2]], &[]);

    // A broken reload changes nothing: certificate B is still served.
    std::fs::write(scratch.cert(), "-----BEGIN CERTIFICATE-----\nnot base64").expect("write");
    assert!(tls.reload().is_err());
    let mut ws = join_wss(server.addr, &trust_b, "reload", "later", Mode::Listen).await;
    let reply = ping(&mut ws, 1).await;
    assert!(matches!(reply, ServerMessage::Pong { .. }), "{reply:?}");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_verifies_audio_over_wss() {
    let scratch = Scratch::new("loadgen");
    let ca = Ca::new("test CA");
    scratch.install(&ca);
    let trust = scratch.ca_file(&ca, "ca.pem");
    let (server, _) = start_tls(&scratch, &[]).await;
    let url = wss_url(server.addr);
    let args = [
        "loadgen",
        "--url",
        &url,
        "--ca-file",
        trust.to_str().expect("utf-8 path"),
        "--rooms",
        "2",
        "--participants",
        "3",
        "--talkers",
        "2",
        "--duration",
        "3",
        "--verify",
        "100",
        "--require-verified",
        "--max-errors",
        "0",
        "--max-loss",
        "1",
    ];
    let scenario = <loadgen::Args as clap::Parser>::try_parse_from(args)
        .expect("flags")
        .to_scenario()
        .expect("scenario");
    let report = loadgen::run(&scenario).await.expect("run");
    assert!(report.passed, "{}", report.render());
    assert_eq!(
        report.join_failures.values().sum::<u64>(),
        0,
        "{}",
        report.render()
    );
    server.shutdown().await;
}

/// The real `mixer` binary, killed if a test fails before stopping it.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
}

impl Binary {
    fn start(args: &[&str]) -> Binary {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mixer"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(["--mixer-threads", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the mixer binary");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Anything that is not a JSON log line (an error before logging starts).
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Binary { child, lines }
    }

    /// The next log line whose message contains `text`, within 10 s.
    fn wait_for(&self, text: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(why) => panic!("no log line with {text:?} ({why}); the mixer said: {seen:#?}"),
            };
            if line["message"].as_str().is_some_and(|m| m.contains(text)) {
                return line;
            }
            seen.push(line);
        }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_real_binary_reload_its_certificate() {
    let scratch = Scratch::new("sighup");
    let (ca_a, ca_b) = (Ca::new("CA A"), Ca::new("CA B"));
    scratch.install(&ca_a);
    let (trust_a, trust_b) = (
        scratch.ca_file(&ca_a, "a.pem"),
        scratch.ca_file(&ca_b, "b.pem"),
    );
    let (cert, key) = (scratch.cert(), scratch.key());
    let mut mixer = Binary::start(&[
        "--tls-cert",
        cert.to_str().expect("utf-8"),
        "--tls-key",
        key.to_str().expect("utf-8"),
    ]);
    let listening = mixer.wait_for("mixer listening");
    let addr: SocketAddr = listening["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("socket address");
    assert_eq!(listening["tls"], serde_json::json!(true));
    let mut old = join_wss(addr, &trust_a, "hup", "old", Mode::Listen).await;

    scratch.install(&ca_b);
    mixer.signal("HUP");
    let reloaded = mixer.wait_for("TLS certificate reloaded");
    assert!(
        reloaded["not_after"]
            .as_str()
            .is_some_and(|t| t.ends_with("UTC"))
    );

    let mut new = join_wss(addr, &trust_b, "hup", "new", Mode::Listen).await;
    assert!(
        matches!(
            connect_wss(addr, &trust_a).await,
            Err(ConnectError::Tls { .. })
        ),
        "a client trusting only CA A connected after SIGHUP"
    );
    // The connection from before the reload is still up and answered.
    let reply = ping(&mut old, 3).await;
    assert!(
        matches!(reply, ServerMessage::Pong { id: Some(3) }),
        "{reply:?}"
    );
    let reply = ping(&mut new, 4).await;
    assert!(
        matches!(reply, ServerMessage::Pong { id: Some(4) }),
        "{reply:?}"
    );

    // A SIGHUP with broken files is logged and survived.
    std::fs::write(&key, "not a key").expect("write");
    mixer.signal("HUP");
    mixer.wait_for("TLS reload failed");
    drop(join_wss(addr, &trust_b, "hup", "later", Mode::Listen).await);

    mixer.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let status = mixer.child.wait();
        (mixer, status)
    })
    .await
    .expect("wait");
    assert!(status.1.expect("exit status").success());
}

#[test]
fn a_bad_certificate_path_stops_the_binary_with_a_clear_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mixer"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "/nonexistent/mixer.crt"])
        .args(["--tls-key", "/nonexistent/mixer.key"])
        .stdin(Stdio::null())
        .output()
        .expect("run the mixer binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/mixer.crt") && stderr.contains("No such file"),
        "{stderr}"
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mixer"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-key", "k.pem"])
        .stdin(Stdio::null())
        .output()
        .expect("run the mixer binary");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-key needs --tls-cert"), "{stderr}");
}
