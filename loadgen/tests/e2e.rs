//! loadgen as a library against a real mixer on loopback, and against deliberately broken
//! servers, to prove the checker passes good audio and fails bad audio with a clear message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use loadgen::{Args, Report, Scenario};
use mixer::cli::{Cli, Command};
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, AudioLevel, ClientMessage, FRAME_SAMPLES, Flags,
    ServerMessage, parse_client_message,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A real mixer on 127.0.0.1:0, stopped when dropped.
struct Mixer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start_mixer() -> Mixer {
    start_mixer_with(&[]).await
}

async fn start_mixer_with(extra: &[&str]) -> Mixer {
    let mut args = vec!["mixer", "serve", "--mixer-threads", "2"];
    args.extend_from_slice(extra);
    let Command::Serve(serve) = Cli::parse_from(args).command else {
        unreachable!("parsed as serve")
    };
    let config = serve.to_config().expect("valid config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(mixer::server::run(config, listener, async move {
        let _ = stopped.await;
    }));
    Mixer { addr, _stop: stop }
}

fn scenario(addr: SocketAddr, extra: &[&str]) -> Scenario {
    let url = format!("ws://{addr}/");
    let mut args = vec![
        "loadgen",
        "--url",
        &url,
        "--verify",
        "100",
        "--require-verified",
        "--max-loss",
        "1",
        "--max-errors",
        "0",
        "--min-rx-rate",
        "90",
        "--max-p99-delay",
        "400",
    ];
    args.extend_from_slice(extra);
    for (flag, default) in [
        ("--rooms", "2"),
        ("--duration", "4"),
        ("--participants", "4"),
        ("--talkers", "2"),
    ] {
        if !extra.contains(&flag) {
            args.extend_from_slice(&[flag, default]);
        }
    }
    Args::try_parse_from(args)
        .expect("flags parse")
        .to_scenario()
        .expect("valid scenario")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_run_against_the_real_mixer_passes_every_gate() {
    let mixer = start_mixer().await;
    let scenario = scenario(mixer.addr, &[]);
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(
        report.violations(&scenario.gates).is_empty(),
        "violations: {:?}\n{table}",
        report.violations(&scenario.gates)
    );
    assert!(report.passed, "{table}");
    assert_eq!(report.joined, 8, "{table}");
    assert_eq!(
        report.verification.receivers, 8,
        "every receiver verified\n{table}"
    );
    assert_eq!(report.verification.passed, 8, "{table}");
    // Every verified receiver measured onsets of every talker it should hear.
    assert!(report.delay_ms.count >= 8 * 2, "{table}");
    assert!(
        report.delay_ms.p50 > 5.0 && report.delay_ms.p50 < 200.0,
        "implausible mouth-to-ear delay\n{table}"
    );
    assert!(report.rx_rate.mean > 48.0, "{table}");
    let own = report
        .verification
        .details
        .iter()
        .filter_map(|d| d.own_db)
        .fold(f64::MIN, f64::max);
    assert!(
        own < -60.0,
        "own voice must be inaudible, loudest {own:.0} dB\n{table}"
    );
    // The JSON report serializes.
    let json = serde_json::to_string(&report).expect("json");
    assert!(json.contains("\"verification\""));
    // The sampler scraped the mixer's /metrics on its public port, and verification placed
    // its delays in time: the HTML report has something to chart.
    let timeline = &report.timeline;
    assert!(
        timeline.samples.iter().any(|s| s
            .servers
            .first()
            .is_some_and(|m| m.up && m.participants.is_some())),
        "{:?}",
        timeline.samples
    );
    assert!(!timeline.delay.is_empty() && !timeline.delay_distribution.is_empty());
    assert!(loadgen::html::render(&report).contains("<span class=\"verdict\">PASS</span>"));
}

/// Two load generators running the same scenario at once, each against a mixer of its own (as
/// two machines would), give reports that merge into one: counts summed, percentiles those of
/// every sample, and the gates judged on the whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_of_two_load_generators_merge_into_one() {
    let (one, two) = (start_mixer().await, start_mixer().await);
    let (a, b) = (scenario(one.addr, &[]), scenario(two.addr, &[]));
    let (ra, rb) = tokio::join!(loadgen::run(&a), loadgen::run(&b));
    let (ra, rb) = (ra.expect("run one"), rb.expect("run two"));
    for report in [&ra, &rb] {
        // The histograms hold exactly the samples the percentiles were computed from.
        let h = &report.histograms;
        assert_eq!(h.delay_us.len(), report.delay_ms.count);
        assert_eq!(h.join_us.len(), report.join_ms.count);
        assert_eq!(h.jitter_us.len(), report.jitter_ms.count);
        assert!(report.delay_ms.count > 0 && report.join_ms.count == 8);
    }
    // As `loadgen merge` gets them: written as JSON, read back.
    let read_back = |report: &Report| -> Report {
        serde_json::from_str(&serde_json::to_string(report).expect("json")).expect("parses")
    };
    let merged = loadgen::merge(&[read_back(&ra), read_back(&rb)]).expect("mergeable");
    let table = merged.render();
    assert!(merged.passed, "{table}");
    assert_eq!((merged.clients, merged.joined), (16, 16), "{table}");
    assert_eq!(merged.verification.receivers, 16, "{table}");
    assert_eq!(
        merged.frames_received,
        ra.frames_received + rb.frames_received
    );
    let mut delays = ra.histograms.delay_us.to_histogram().expect("fits");
    rb.histograms.delay_us.add_to(&mut delays).expect("fits");
    assert_eq!(
        merged.delay_ms,
        loadgen::report::Percentiles::from_micros(&delays)
    );
    assert_eq!(merged.delay_ms.count, ra.delay_ms.count + rb.delay_ms.count);
    assert_eq!(merged.scenario, a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooders_sending_every_control_type_cost_the_rooms_nothing() {
    // Flooders and real clients share 127.0.0.1 here; the per-address limits (joins among
    // them) would hold the real clients back with the flooders, as they would behind one NAT.
    // What this test checks is the per-connection defence, so the per-address one is off, as
    // for every load test from one machine.
    let mixer = start_mixer_with(&["--max-connections-per-address", "0"]).await;
    // Two runs: flooders at full speed (cut off, back, cut off again...), then at 300 messages
    // a second (under the cut-off, mostly dropped by their budgets).
    let mut scenario = scenario(mixer.addr, &["--flooders", "2"]);
    let paced = scenario.clone();
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(report.passed, "{table}");
    let flood = report.flood.as_ref().expect("a flood report");
    assert!(
        flood.disconnects.keys().any(|k| k.contains("1008")),
        "the full-speed flooders were cut off\n{table}"
    );
    scenario = paced;
    scenario.flood_rate = Some(300);
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    // Every gate still holds for the real clients: no loss, full rate, every receiver hears
    // the right talkers and not itself, no disconnect and no error.
    assert!(report.passed, "{table}");
    assert_eq!(report.verification.passed, 8, "{table}");
    let flood = report.flood.as_ref().expect("a flood report");
    assert_eq!(flood.clients, 2, "{table}");
    assert!(flood.sent >= 1_000, "{table}");
    assert!(
        flood.replies.contains_key("error:control_rate_limited"),
        "the budget refused the flood\n{table}"
    );
    assert!(
        flood.disconnects.is_empty(),
        "paced flooders stay connected\n{table}"
    );
    assert!(table.contains("flooders"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impaired_spurts_still_verify() {
    let mixer = start_mixer().await;
    let scenario = scenario(
        mixer.addr,
        &[
            "--rooms",
            "1",
            "--talk",
            "spurts",
            "--talk-on-ms",
            "1500",
            "--talk-off-ms",
            "500",
            "--jitter-ms",
            "30",
            "--loss",
            "3",
            "--loss-burst",
            "30",
            "--reorder",
            "2",
            "--duration",
            "5",
        ],
    );
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(
        report.passed,
        "{:?}\n{table}",
        report.violations(&scenario.gates)
    );
    assert!(report.packets_impaired > 0, "{table}");
}

/// Rooms of one talker and two listeners: the talker's mix (everyone but itself) is silent, so
/// the server pauses its stream (downlink DTX) after a few frames; listeners' streams pause in
/// each tone period's 300 ms of silence. Pauses are neither loss nor choppiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_paused_in_silence_verify_with_no_loss() {
    let mixer = start_mixer().await;
    let one_talker = ["--participants", "3", "--talkers", "1"];
    let paused = scenario(mixer.addr, &one_talker);
    let report = loadgen::run(&paused).await.expect("run");
    let table = report.render();
    assert!(
        report.passed,
        "{:?}\n{table}",
        report.violations(&paused.gates)
    );
    assert_eq!(report.verification.passed, 6, "{table}");
    assert_eq!(report.frames_lost, 0, "{table}");
    // Each talker's stream is paused nearly all the run (about 4 s of its 4.x s).
    assert!(report.frames_paused > 2 * 150, "{table}");
    assert!(table.contains("paused (silence)"), "{table}");
    let json = serde_json::to_string(&report).expect("json");
    assert!(json.contains("\"frames_paused\""), "{json}");

    // The same run against a server that sends its silence: nothing paused, as many frames.
    let sending = start_mixer_with(&["--send-silence"]).await;
    let sent = scenario(sending.addr, &one_talker);
    let full = loadgen::run(&sent).await.expect("run");
    let table = full.render();
    assert!(full.passed, "{:?}\n{table}", full.violations(&sent.gates));
    assert_eq!(full.frames_paused, 0, "{table}");
    assert_eq!(full.frames_lost, 0, "{table}");
    assert!(
        full.frames_received > report.frames_received + 2 * 150,
        "{table}"
    );
}

/// How the fake server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Broken {
    /// Sends each client its own audio back (no mix, no mix-minus).
    Echo,
    /// Forwards only the first talker of each room to the others; the second is dropped.
    DropSecondTalker,
}

type Members = Arc<Mutex<HashMap<String, Vec<(String, mpsc::Sender<Bytes>)>>>>;

/// A tiny WebSocket server that speaks the protocol but mixes wrongly.
async fn start_broken(mode: Broken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let members: Members = Arc::default();
    tokio::spawn(async move {
        let mut next_id = 1u32;
        while let Ok((tcp, _)) = listener.accept().await {
            let members = members.clone();
            let id = next_id;
            next_id += 1;
            tokio::spawn(serve_broken(tcp, id, mode, members));
        }
    });
    addr
}

async fn serve_broken(tcp: tokio::net::TcpStream, id: u32, mode: Broken, members: Members) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let mut joined: Option<(String, String)> = None;
    // The writer re-stamps whatever it forwards as this connection's own stream.
    let (control_tx, mut control_rx) = mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let (mut sequence, mut timestamp) = (0u16, 0u32);
        loop {
            tokio::select! {
                Some(text) = control_rx.recv() => {
                    if sink.send(Message::text(text)).await.is_err() { return; }
                }
                Some(payload) = rx.recv() => {
                    let header = AudioHeader {
                        flags: Flags::default().with_marker(sequence == 0),
                        sequence,
                        timestamp,
                        level: AudioLevel::new(true, 20),
                    };
                    sequence = sequence.wrapping_add(1);
                    timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
                    let frame = AudioFrame { header, payload: &payload }.to_vec();
                    if sink.send(Message::binary(frame)).await.is_err() { return; }
                }
                else => return,
            }
        }
    });
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                if let Ok(ClientMessage::Join(join)) = parse_client_message(text.as_str()) {
                    let reply = ServerMessage::Joined {
                        participant_id: id,
                        room: join.room.clone(),
                        participants: Vec::new(),
                        format: AudioFormat::opus_48k_mono_20ms(),
                        floor: Default::default(),
                        resume_token: None,
                        resumed: false,
                        replay_ms: None,
                    };
                    let _ = control_tx.send(reply.to_json()).await;
                    if let Ok(mut m) = members.lock() {
                        m.entry(join.room.clone())
                            .or_default()
                            .push((join.name.clone(), tx.clone()));
                    }
                    joined = Some((join.room, join.name));
                }
            }
            Message::Binary(bytes) => {
                let Some((room, name)) = &joined else {
                    continue;
                };
                let Ok(frame) = AudioFrame::parse(&bytes) else {
                    continue;
                };
                let payload = bytes.slice(bytes.len() - frame.payload.len()..);
                match mode {
                    Broken::Echo => {
                        let _ = tx.try_send(payload);
                    }
                    Broken::DropSecondTalker => {
                        // loadgen names clients lg-<room>-<slot>; slot 0 is the first talker.
                        if !name.ends_with("-0") {
                            continue;
                        }
                        let targets: Vec<mpsc::Sender<Bytes>> = members
                            .lock()
                            .map(|m| {
                                m.get(room)
                                    .map(|list| {
                                        list.iter()
                                            .filter(|(n, _)| n != name)
                                            .map(|(_, t)| t.clone())
                                            .collect()
                                    })
                                    .unwrap_or_default()
                            })
                            .unwrap_or_default();
                        for target in targets {
                            let _ = target.try_send(payload.clone());
                        }
                    }
                }
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
}

fn failures(report: &Report) -> String {
    report.verification.failures.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_server_fails_verification_naming_own_tone_and_missing_talkers() {
    let addr = start_broken(Broken::Echo).await;
    let scenario = scenario(addr, &["--rooms", "1"]);
    let report = loadgen::run(&scenario).await.expect("run");
    let all = failures(&report);
    assert!(!report.passed, "{}", report.render());
    assert_eq!(report.verification.passed, 0, "{all}");
    assert!(
        all.contains("room 0, receiver 0 (talker): own tone") && all.contains("heard at"),
        "{all}"
    );
    assert!(
        all.contains("talker 1 (") && all.contains("not heard"),
        "{all}"
    );
    let violations = report.violations(&scenario.gates).join("\n");
    assert!(
        violations.contains("verified receivers failed"),
        "{violations}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dropping_a_talker_fails_verification_naming_it() {
    let addr = start_broken(Broken::DropSecondTalker).await;
    let scenario = scenario(addr, &["--rooms", "1"]);
    let report = loadgen::run(&scenario).await.expect("run");
    let all = failures(&report);
    assert!(!report.passed, "{}", report.render());
    // The listeners hear talker 0 but not talker 1.
    assert!(
        all.contains("room 0, receiver 2 (listener): talker 1 (") && all.contains("not heard"),
        "{all}"
    );
    assert!(!all.contains("receiver 2 (listener): talker 0"), "{all}");
    // Talker 1 hears talker 0 fine.
    assert!(!all.contains("receiver 1 (talker)"), "{all}");
}

/// Against a server that requires access tokens, loadgen mints one per client from the key:
/// every client joins as its own identity and every receiver verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_bring_their_own_tokens_to_a_server_with_a_key() {
    let dir = std::env::temp_dir().join(format!("loadgen-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("secret.key");
    std::fs::write(&key, "a load-test secret of at least 32 bytes\n").expect("key");
    let key = key.to_str().expect("utf-8 path");
    let mixer = start_mixer_with(&["--auth-key-file", key]).await;
    // Without tokens nobody gets in.
    let report = loadgen::run(&scenario(mixer.addr, &["--rooms", "1"]))
        .await
        .expect("run");
    assert!(!report.passed, "{}", report.render());
    assert!(
        report.render().contains("token_required"),
        "{}",
        report.render()
    );
    let report = loadgen::run(&scenario(mixer.addr, &["--auth-key-file", key]))
        .await
        .expect("run");
    let table = report.render();
    assert!(report.passed, "{table}");
    assert_eq!(report.verification.passed, 8, "{table}");
}

/// A stand-in for a fleet node that mixes nothing: it answers every `join` with a `redirect`
/// to `target` and closes with 4307, as a node that does not own the room does.
async fn redirector(target: String) -> SocketAddr {
    use mixer_protocol::{ClientMessage, RedirectReason, parse_client_message};
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let target = if target.is_empty() {
        format!("ws://{addr}/")
    } else {
        target
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(ClientMessage::Join(join)) = parse_client_message(text.as_str()) else {
                        continue;
                    };
                    let redirect = ServerMessage::Redirect {
                        room: join.room,
                        url: target.clone(),
                        reason: RedirectReason::OtherNode,
                        resume_token: None,
                    };
                    let _ = ws.send(Message::text(redirect.to_json())).await;
                    let _ = ws
                        .send(Message::Close(Some(CloseFrame {
                            code: 4307.into(),
                            reason: "redirect".into(),
                        })))
                        .await;
                    break;
                }
            });
        }
    });
    addr
}

/// Clients sent to another node follow the redirect, join there and verify; the report counts
/// the redirects. A redirect loop ends in a clear failure instead of going on forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_redirects_to_the_node_that_mixes_their_room() {
    let mixer = start_mixer_with(&["--max-connections-per-address", "0"]).await;
    let front = redirector(format!("ws://{}/", mixer.addr)).await;
    let report = loadgen::run(&scenario(front, &[])).await.expect("run");
    let table = report.render();
    assert!(report.passed, "{table}");
    assert_eq!(report.verification.passed, 8, "{table}");
    assert_eq!(report.redirects, 8, "{table}");
    assert!(table.contains("redirects      8 followed"), "{table}");

    let looping = redirector(String::new()).await;
    let report = loadgen::run(&scenario(looping, &["--rooms", "1"]))
        .await
        .expect("run");
    assert!(!report.passed);
    assert!(
        report
            .join_failures
            .keys()
            .any(|f| f.contains("more than 3 redirects")),
        "{}",
        report.render()
    );
}

/// What a stand-in node in front of a real mixer does to each session it relays, a while after
/// the session joined.
#[derive(Clone, Copy, PartialEq)]
enum Break {
    /// Closes its side of the session at the mixer (which keeps the participant for a resume),
    /// then sends the client a `redirect` (`moved`) to the mixer itself, with the resume token
    /// the mixer gave, and closes (4307): a draining fleet node that handed its room on.
    Move,
    /// Drops both connections without a close frame: a node killed.
    Drop,
}

/// A stand-in fleet node: relays every session to the real mixer at `mixer` and breaks it as
/// `action` says, `after` its join. Returns its address and the resume tokens it handed out.
async fn stand_in(
    mixer: SocketAddr,
    action: Break,
    after: std::time::Duration,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handed_out = Arc::new(Mutex::new(Vec::new()));
    let tokens = handed_out.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(relay(tcp, mixer, action, after, tokens.clone()));
        }
    });
    (addr, handed_out)
}

async fn relay(
    tcp: tokio::net::TcpStream,
    mixer: SocketAddr,
    action: Break,
    after: std::time::Duration,
    tokens: Arc<Mutex<Vec<String>>>,
) {
    use mixer_protocol::{RedirectReason, parse_server_message};
    use tokio::time::Instant;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let Ok(client) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(format!("ws://{mixer}/")).await else {
        return;
    };
    let (mut to_client, mut from_client) = client.split();
    let (mut to_mixer, mut from_mixer) = upstream.split();
    let mut joined: Option<(String, Option<String>)> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        let due = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = from_client.next() => match message {
                Some(Ok(message)) => {
                    if to_mixer.send(message).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            message = from_mixer.next() => match message {
                Some(Ok(message)) => {
                    if let Message::Text(text) = &message
                        && let Ok(ServerMessage::Joined { room, resume_token, .. }) =
                            parse_server_message(text.as_str())
                    {
                        joined = Some((room, resume_token));
                        deadline = Some(Instant::now() + after);
                    }
                    if to_client.send(message).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            () = due => break,
        }
    }
    if action == Break::Drop {
        // Both sockets dropped, no close frame either way.
        return;
    }
    // The handoff first: the mixer must hold the participant for a resume before the client
    // comes back with the token. It does for a connection lost (a close frame would be a
    // leave), and notices the loss on loopback at once.
    drop((to_mixer, from_mixer));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (room, token) = joined.expect("joined before the break");
    let token = token.expect("the mixer gives resume tokens");
    if let Ok(mut tokens) = tokens.lock() {
        tokens.push(token.clone());
    }
    let redirect = ServerMessage::Redirect {
        room,
        url: format!("ws://{mixer}/"),
        reason: RedirectReason::Moved,
        resume_token: Some(token),
    };
    let _ = to_client.send(Message::text(redirect.to_json())).await;
    let _ = to_client
        .send(Message::Close(Some(CloseFrame {
            code: 4307.into(),
            reason: "redirect".into(),
        })))
        .await;
}

/// A node hands its room on mid-session (`redirect`, `moved`, with a resume token): every
/// client resumes at the new node as the same participant, with the token it was given, keeps
/// hearing the right audio on both connections, and the report shows each reconnection and its
/// gap, not loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_moved_mid_session_resume_at_the_new_node_with_their_token() {
    let mixer = start_mixer_with(&["--max-connections-per-address", "0"]).await;
    let (front, tokens) = stand_in(
        mixer.addr,
        Break::Move,
        std::time::Duration::from_millis(3500),
    )
    .await;
    let scenario = scenario(front, &["--rooms", "1", "--duration", "6"]);
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(
        report.passed,
        "{:?}\n{table}\n{:#?}",
        report.violations(&scenario.gates),
        report.reconnections.per_client
    );
    let rc = &report.reconnections;
    assert_eq!((rc.total, rc.moved, rc.clients), (4, 4, 4), "{table}");
    // The mixer resumes only with the token it issued: every client sent the one it was given.
    assert_eq!(rc.resumed, 4, "{:#?}\n{table}", rc.per_client);
    assert_eq!(tokens.lock().map(|t| t.len()).unwrap_or(0), 4);
    let target = format!("ws://{}/", mixer.addr);
    for client in &rc.per_client {
        let r = &client.reconnections[0];
        assert_eq!(r.url.as_deref(), Some(target.as_str()), "{r:?}");
        assert!(r.reason.contains("moved"), "{r:?}");
    }
    assert_eq!(report.redirects, 4, "the mid-session redirects\n{table}");
    assert_eq!(report.reconnect_gap_ms.count, 4, "{table}");
    assert!(report.reconnect_gap_ms.max < 2000.0, "{table}");
    assert_eq!(report.frames_lost, 0, "a new stream is not loss\n{table}");
    // Both connections of every receiver were checked on their own.
    assert!(
        report
            .verification
            .details
            .iter()
            .all(|d| d.connections == 2),
        "{:?}",
        report.verification.details
    );
    assert!(
        table.contains("reconnections  4 by 4 clients (moved 4"),
        "{table}"
    );
    let json = serde_json::to_string(&report).expect("json");
    assert!(json.contains("\"reconnect_gap_ms\""), "{json}");
}

/// A node drops its clients (killed): each rejoins at the next `--url`, as itself with its
/// resume token (the mixer behind both URLs still holds its seat), and verifies there, while the
/// rooms on the other node see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_whose_node_drops_them_rejoin_at_the_next_url() {
    let mixer = start_mixer_with(&["--max-connections-per-address", "0"]).await;
    let (dropper, _) = stand_in(
        mixer.addr,
        Break::Drop,
        std::time::Duration::from_millis(3500),
    )
    .await;
    let direct = format!("ws://{}/", mixer.addr);
    let urls = format!("ws://{dropper}/,{direct}");
    // Room 0 goes through the node that drops, room 1 straight to the mixer.
    let mut scenario = scenario(mixer.addr, &["--duration", "6"]);
    scenario.urls = urls.split(',').map(str::to_owned).collect();
    // A dropped connection is an error even when the client gets back.
    scenario.gates.max_errors = Some(4);
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(
        report.passed,
        "{:?}\n{table}",
        report.violations(&scenario.gates)
    );
    let rc = &report.reconnections;
    assert_eq!((rc.total, rc.dropped, rc.clients), (4, 4, 4), "{table}");
    assert_eq!((rc.resumed, rc.gave_up), (4, 0), "{table}");
    assert_eq!(report.errors(), 4, "{table}");
    for client in &rc.per_client {
        assert_eq!(client.room, 0);
        let r = &client.reconnections[0];
        assert_eq!(r.url.as_deref(), Some(direct.as_str()), "{r:?}");
    }
    assert_eq!(report.verification.passed, 8, "{table}");
    assert!(report.disconnects.is_empty(), "{table}");
}

/// A reconnect storm: half the clients have their connections cut at once (no close frame) and
/// come straight back with their resume tokens. Each is resumed as itself, hears audio again
/// within the gate, and every receiver still verifies; the cuts are not errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_is_resumed_and_everyone_hears_audio_again() {
    let mixer = start_mixer().await;
    let scenario = scenario(
        mixer.addr,
        &[
            "--duration",
            "6",
            "--storm-at",
            "2.5",
            "--storm-fraction",
            "50",
            "--max-storm-recovery",
            "2000",
        ],
    );
    let storm = scenario.storm.expect("a storm");
    let cut = (0..scenario.clients()).filter(|&i| storm.takes(i)).count() as u64;
    assert!(
        (2..=6).contains(&cut),
        "the 50 % spread over 8 clients cut {cut}"
    );
    let report = loadgen::run(&scenario).await.expect("run");
    let table = report.render();
    assert!(
        report.passed,
        "{:?}\n{table}",
        report.violations(&scenario.gates)
    );
    let s = report.storm.as_ref().expect("the storm's report");
    assert_eq!(s.clients, cut, "{table}");
    assert_eq!(
        (s.rejoined, s.resumed, s.heard_again, s.never_heard_again),
        (cut, cut, cut, 0),
        "{table}"
    );
    assert!(s.recovery_ms.max < 2000.0, "{table}");
    let rc = &report.reconnections;
    assert_eq!((rc.storm, rc.dropped, rc.total), (cut, 0, cut), "{table}");
    assert_eq!(report.errors(), 0, "{table}");
    assert_eq!(report.verification.passed, 8, "{table}");
    assert!(
        table.contains(&format!("storm          {cut} clients cut")),
        "{table}"
    );
    let json = serde_json::to_string(&report).expect("json");
    assert!(json.contains("\"all_heard_again_ms\""), "{json}");
}

/// Runs the worked scenario file `name` (loadgen/scenarios/) at `scale` against a real mixer
/// that admits any number of connections from one address, as the README tells load testers
/// to run it.
async fn run_worked_scenario(name: &str, scale: &str) -> Report {
    use clap::{CommandFactory, FromArgMatches};
    let mixer = start_mixer_with(&["--max-connections-per-address", "0"]).await;
    let path = format!("{}/scenarios/{name}", env!("CARGO_MANIFEST_DIR"));
    let url = format!("ws://{}/", mixer.addr);
    let argv = [
        "loadgen",
        "--scenario",
        &path,
        "--url",
        &url,
        "--scale",
        scale,
    ];
    let matches = Args::command()
        .try_get_matches_from(argv)
        .expect("flags parse");
    let args = Args::from_arg_matches(&matches).expect("flags parse");
    let groups = loadgen::scenario_file::load(std::path::Path::new(&path), &args, |id| {
        loadgen::config::given(&matches, id)
    })
    .expect("the worked scenario is valid");
    let report = loadgen::run_scenario(&groups).await.expect("run");
    assert!(
        report.passed,
        "{name}: {:?}\n{}",
        report.violations(&groups[0].gates),
        report.render()
    );
    report
}

/// The README's conversation rooms, small: people leave and come back while the load holds,
/// each as a new participant heard again, and the stages ramp everyone out at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_scenario_conversation_rooms_with_churn() {
    let report = run_worked_scenario("conversation.toml", "0.2").await;
    let table = report.render();
    // 4 conversation rooms of 5, one panel room of 5, one room of 4 PCM devices.
    assert_eq!((report.clients, report.groups.len()), (29, 3), "{table}");
    let pcm = &report.groups[2];
    assert_eq!(pcm.scenario.pcm_rate, Some(16_000), "{table}");
    assert_eq!(pcm.verification.passed, 4, "{table}");
    let moderation = report.groups[1]
        .moderation
        .clone()
        .expect("the panel's moderators");
    assert!(moderation.mutes >= 3, "{table}");
    // Every mute and unmute carried out and heard by its talker, but perhaps the last, sent as
    // the run ended.
    assert!(
        moderation.confirmed + 1 >= moderation.mutes + moderation.unmutes,
        "{table}"
    );
    assert!(moderation.talkers_muted + 1 >= moderation.mutes, "{table}");
    let rc = &report.reconnections;
    // Scaled to a fifth, the file's leave a second becomes 0.2 a second: about 8 over the
    // 40 s hold, fewer those that would end after it (this seed gives 3).
    assert!(rc.churn >= 2, "{table}");
    assert_eq!((rc.dropped, rc.gave_up), (0, 0), "{table}");
    assert_eq!(report.verification.failed, 0, "{table}");
    assert!(report.verification.passed >= 10, "{table}");
    assert!(table.contains(", churn "), "{table}");
}

/// The README's town hall, small: half the listeners cut at once come back resumed, and every
/// one of them hears the stage again within the file's gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_scenario_town_hall_with_a_reconnect_storm() {
    let report = run_worked_scenario("townhall.toml", "0.2").await;
    let table = report.render();
    assert_eq!(report.clients, 50, "{table}");
    let storm = report.storm.as_ref().expect("the storm's report");
    assert!(storm.clients >= 15, "{table}");
    assert_eq!(
        (storm.resumed, storm.heard_again, storm.never_heard_again),
        (storm.clients, storm.clients, 0),
        "{table}"
    );
    assert_eq!(report.verification.failed, 0, "{table}");
}

/// The README's push-to-talk fleet, small: in the single-floor channel presses while someone
/// talks are denied, in the open channels every press is granted, and every receiver hears
/// the talkers that held the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worked_scenario_push_to_talk_fleet() {
    let report = run_worked_scenario("ptt-fleet.toml", "0.2").await;
    let table = report.render();
    assert_eq!(report.groups.len(), 2, "{table}");
    let floor = |group: &Report| group.ptt.clone().expect("a push-to-talk group");
    let (dispatch, crew) = (floor(&report.groups[0]), floor(&report.groups[1]));
    assert!(dispatch.granted > 0 && dispatch.denied > 0, "{table}");
    assert!(crew.granted > 0, "{table}");
    assert_eq!(crew.denied, 0, "{table}");
    assert_eq!(report.verification.failed, 0, "{table}");
    assert!(report.verification.passed >= 10, "{table}");
}
