//! The browser client (`GET /`) in a real browser: Debian's Chromium, headless, driven over the
//! DevTools protocol by a minimal client written here (a WebSocket and JSON), with a fake
//! microphone that plays a WAV file of a tone. A Rust client in the same room talks with
//! another tone; the tests decode both ends: the Rust client must hear the page's tone, and the
//! page must play the Rust client's tone and not its own. Both audio paths are tested: Opus
//! through WebCodecs, and `pcm16` through AudioWorklets.
//!
//! The page is opened with `test=1`, which makes it record what it captures and what reaches
//! its speakers and expose `window.mixerTest` (see the README's browser section). Set
//! `MIXER_SCREENSHOT=PATH.png` to save a screenshot of the page (the README's picture).

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{ClientMessage, Mode, SAMPLE_RATE, ServerMessage, parse_server_message};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::cluster::RedisCut;
use super::{Client, TestServer};
use crate::common::{Listener, Talker, onsets, tone_db};

/// A tone is heard above this level (dB, 0 = a full-scale sine). Chromium's noise suppression
/// takes a steady tone for noise and pulls the page's 1 kHz (-10 dB in the WAV file) down to
/// about -30 dB within seconds; a tone that is absent measures below -50 dB.
const HEARD_DB: f32 = -40.0;

/// The Rust client's tone, and the page's (its fake microphone's WAV file).
const RUST_TONE: f32 = 650.0;
const PAGE_TONE: f32 = 1000.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_and_rust_client_hear_each_other_over_webcodecs_opus() {
    hear_each_other("webcodecs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_and_rust_client_hear_each_other_over_pcm_worklets() {
    hear_each_other("pcm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_page_and_its_files_are_served_with_a_strict_policy() {
    let server = TestServer::start(&[]).await;
    let (status, body) = super::http_get(server.addr, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("<script src=\"/app/app.js\""), "{body}");
    for path in [
        "/app/app.js",
        "/app/worklet.js",
        "/app/style.css",
        "/app/icon.svg",
    ] {
        let (status, _) = super::http_get(server.addr, path).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
    }
    let (status, _) = super::http_get(server.addr, "/app/nothing.js").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // The WebSocket endpoint is the same path: an upgrade still gets the protocol.
    let (ws, _) = super::join(&server, "lobby", "ada", Mode::Listen).await;
    drop(ws);
    server.shutdown().await;
}

/// A page joins a room where a Rust client talks; each must hear the other and the page must
/// not hear itself.
async fn hear_each_other(path: &str) {
    let server = TestServer::start(&[]).await;
    let room = format!("studio-{path}");
    let (ws, _) = super::join(&server, &room, "rust", Mode::Talk).await;
    let (say, said) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel();
    // The page reaches the server through a relay that the test cuts, to drop its connection.
    let relay = RedisCut::start(server.addr.port()).await;
    let mut browser = Chromium::launch(&tone_wav(PAGE_TONE, 0.3, None)).await;
    let state = browser.join(relay.port(), &room, path).await;
    // Talking from now on, so that the page sees it start (`joined` says who is in the room,
    // not who is talking).
    let peer = tokio::spawn(run_peer(ws, RUST_TONE, |_| true, said, stopped));
    assert_eq!(state["audioPath"], path, "{state}");
    assert_eq!(state["roster"], json!(["rust"]), "{state}");
    // Heard within a few seconds; then two more seconds of both talking.
    browser
        .wait_for(
            &format!("mixerTest.toneDb('played', {RUST_TONE}, 1) > {HEARD_DB}"),
            "the page to play the Rust client's tone",
        )
        .await;
    say.send(ClientMessage::Chat {
        text: "Hello from the Rust client".into(),
    })
    .expect("peer running");
    browser
        .eval(
            "document.getElementById('chat-text').value = 'I can hear you: 650 Hz';\
             document.getElementById('chat-form').requestSubmit(); true",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let played_rust = browser.tone_db("played", RUST_TONE, 2.0).await;
    let played_own = browser.tone_db("played", PAGE_TONE, 2.0).await;
    let captured_own = browser.tone_db("captured", PAGE_TONE, 2.0).await;
    let state = browser.eval("mixerTest.state()").await;
    if let Ok(shot) = std::env::var("MIXER_SCREENSHOT")
        && path == "webcodecs"
    {
        browser.screenshot(Path::new(&shot)).await;
    }
    // A dropped connection (no close frame): the page rejoins with its resume token as the
    // same participant, and both directions carry on.
    let cut_at = epoch_ms();
    relay.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.heal();
    let resumed = browser
        .wait_for(
            "(() => { const s = mixerTest.state(); return s.resumes === 1 && s.joined ? s : null; })()",
            "the page to resume after its connection dropped",
        )
        .await;
    assert_eq!(
        resumed["participantId"], state["participantId"],
        "{resumed}"
    );
    browser
        .wait_for(
            &format!("mixerTest.toneDb('played', {RUST_TONE}, 0.5) > {HEARD_DB}"),
            "the page to play the Rust client's tone again",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let played_after = browser.tone_db("played", RUST_TONE, 0.5).await;
    let played_own_after = browser.tone_db("played", PAGE_TONE, 0.5).await;
    stop.send(()).expect("peer running");
    let peer = peer.await.expect("peer task");
    let heard = &peer.listener;
    let after = &heard.pcm[heard.pcm.len().saturating_sub(SAMPLE_RATE as usize / 2)..];
    assert!(
        tone_db(after, PAGE_TONE) > HEARD_DB && played_after > HEARD_DB && played_own_after < -50.0,
        "after resuming: the Rust client heard the page at {:.1} dB, the page played it at \
         {played_after:.1} dB and itself at {played_own_after:.1} dB",
        tone_db(after, PAGE_TONE)
    );
    assert!(
        !peer
            .roster
            .iter()
            .any(|m| matches!(m, ServerMessage::ParticipantLeft { .. })),
        "the room saw the page leave: {:?}",
        peer.roster
    );
    // The two seconds before the drop.
    let cut = heard.pcm.len().min(
        peer.arrivals[peer
            .arrivals
            .partition_point(|&(_, at)| at < cut_at)
            .saturating_sub(1)]
        .0,
    );
    let last = &heard.pcm[cut.saturating_sub(2 * SAMPLE_RATE as usize)..cut];
    let rust_heard_page = tone_db(last, PAGE_TONE);
    let rust_heard_itself = tone_db(last, RUST_TONE);
    eprintln!(
        "{path}: page played the Rust tone at {played_rust:.1} dB and its own at {played_own:.1} dB \
         (captured {captured_own:.1} dB); the Rust client heard the page at {rust_heard_page:.1} dB \
         and itself at {rust_heard_itself:.1} dB; page state {state}"
    );
    assert!(captured_own > HEARD_DB, "the fake microphone: {state}");
    assert!(
        played_rust > HEARD_DB,
        "the page does not play the Rust client: {state}"
    );
    assert!(played_own < -50.0, "the page plays its own voice: {state}");
    assert!(
        rust_heard_page > HEARD_DB,
        "the Rust client does not hear the page: {state}"
    );
    assert!(rust_heard_itself < -50.0, "the Rust client hears itself");
    assert_eq!(state["errors"], json!([]), "{state}");
    drop(browser);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about two minutes); run with --ignored --nocapture"]
async fn browser_measure_mouth_to_ear_delay() {
    for path in ["webcodecs", "pcm"] {
        measure_mouth_to_ear(path).await;
    }
}

/// The Rust client sends tone bursts and notes when each left; the page notes when each onset
/// reached its speakers (the output timestamp of the audio context). The page's microphone
/// plays bursts of another tone, timed where its capture worklet hands them to the page, and
/// the Rust client notes when it receives them. One machine, one clock.
async fn measure_mouth_to_ear(path: &str) {
    let server = TestServer::start(&[]).await;
    let room = format!("measure-{path}");
    let (ws, _) = super::join(&server, &room, "rust", Mode::Talk).await;
    let (_say, said) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel();
    // 160 ms of tone every 600 ms.
    let peer = tokio::spawn(run_peer(
        ws,
        RUST_TONE,
        |frame| frame % 30 < 8,
        said,
        stopped,
    ));
    let mut browser = Chromium::launch(&tone_wav(PAGE_TONE, 0.3, Some((0.16, 0.6)))).await;
    browser.join(server.addr.port(), &room, path).await;
    // The first seconds are the page warming up (Chromium still starting its audio under load):
    // bursts from then on are measured.
    let settled = epoch_ms() + 3000.0;
    tokio::time::sleep(Duration::from_secs(40)).await;
    // Half the level of each tone as it arrives: the Talker's 0.2, and whatever the browser's
    // capture made of the WAV's 0.3 (its automatic gain control moves it).
    let played = browser
        .eval(&format!("mixerTest.onsets('played', {RUST_TONE}, 0.1)"))
        .await;
    let captured_db = browser.tone_db("captured", PAGE_TONE, 0.6).await;
    let captured_amplitude = 10f64.powf(f64::from(captured_db) / 20.0) * 0.6 / 0.16;
    let captured = browser
        .eval(&format!(
            "mixerTest.onsets('captured', {PAGE_TONE}, {})",
            captured_amplitude / 2.0
        ))
        .await;
    let state = browser.eval("mixerTest.state()").await;
    stop.send(()).expect("peer running");
    let peer = peer.await.expect("peer task");
    let epochs = |value: &Value| -> Vec<f64> {
        value
            .as_array()
            .expect("an array")
            .iter()
            .filter_map(Value::as_f64)
            .collect()
    };
    let heard_at: Vec<f64> = onsets(&peer.listener.pcm, PAGE_TONE, 0.05)
        .into_iter()
        .map(|sample| peer.arrival_of(sample))
        .collect();
    let after =
        |times: Vec<f64>| -> Vec<f64> { times.into_iter().filter(|&t| t >= settled).collect() };
    let forward = delays(&after(peer.burst_sent_at.clone()), &epochs(&played));
    let backward = delays(&after(epochs(&captured)), &heard_at);
    eprintln!("{path}: page state {state}");
    report(
        &format!("{path}: Rust client -> server -> page's speakers"),
        forward,
    );
    report(
        &format!("{path}: page's capture worklet -> server -> Rust client (no playout buffer)"),
        backward,
    );
    drop(browser);
    server.shutdown().await;
}

/// For each onset sent, the delay to the first onset received within a second after it.
fn delays(sent: &[f64], received: &[f64]) -> Vec<f64> {
    sent.iter()
        .filter_map(|&at| {
            received
                .iter()
                .find(|&&r| r >= at && r < at + 1000.0)
                .map(|r| r - at)
        })
        .collect()
}

fn report(what: &str, mut delays: Vec<f64>) {
    assert!(
        delays.len() >= 10,
        "{what}: only {} onsets matched",
        delays.len()
    );
    delays.sort_by(f64::total_cmp);
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}: {} bursts, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        delays.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
}

/// Milliseconds since the Unix epoch, the clock the page reports in too.
fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
        * 1000.0
}

/// What the Rust client did and heard.
struct Peer {
    listener: Listener,
    /// When each burst's first frame was sent.
    burst_sent_at: Vec<f64>,
    /// For each received frame: where it starts in `listener.pcm`, and when it arrived.
    arrivals: Vec<(usize, f64)>,
    /// The control messages it received.
    roster: Vec<ServerMessage>,
}

impl Peer {
    /// When the sample at `position` of the decoded audio arrived, if it was played at once.
    fn arrival_of(&self, position: usize) -> f64 {
        let index = self
            .arrivals
            .partition_point(|&(start, _)| start <= position)
            .saturating_sub(1);
        let (start, at) = self.arrivals[index];
        at + (position as f64 - start as f64) * 1000.0 / f64::from(SAMPLE_RATE)
    }
}

/// Runs the Rust client until `stop`: every 20 ms it sends a frame of its tone (on while
/// `on(frame)`), sends what comes on `say`, and decodes what it receives.
async fn run_peer(
    mut ws: Client,
    tone: f32,
    on: fn(u64) -> bool,
    mut say: mpsc::UnboundedReceiver<ClientMessage>,
    mut stop: oneshot::Receiver<()>,
) -> Peer {
    let mut talker = Talker::new(tone, 0.2);
    let mut peer = Peer {
        listener: Listener::default(),
        burst_sent_at: Vec::new(),
        arrivals: Vec::new(),
        roster: Vec::new(),
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut frame = 0u64;
    let mut was_on = false;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                let now_on = on(frame);
                let bytes = talker.next_frame(now_on);
                if now_on && !was_on {
                    peer.burst_sent_at.push(epoch_ms());
                }
                was_on = now_on;
                frame += 1;
                ws.send(Message::binary(bytes)).await.expect("send audio");
            }
            Some(message) = say.recv() => {
                ws.send(Message::text(message.to_json())).await.expect("send");
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let start = peer.listener.pcm.len();
                    peer.listener.receive_wire(&bytes);
                    // A pause in silence is filled in before the frame: it starts at the end.
                    let start = start.max(peer.listener.pcm.len() - crate::common::FS as usize / 50);
                    peer.arrivals.push((start, epoch_ms()));
                }
                Some(Ok(Message::Text(text))) => {
                    peer.roster.push(parse_server_message(text.as_str()).expect("server JSON"));
                }
                Some(Ok(_)) => {}
                other => panic!("the Rust client's connection ended: {other:?}"),
            },
        }
    }
    let _ = ws.close(None).await;
    peer
}

/// A WAV file (48 kHz, mono, 16 bits) of 2.4 s of `freq` at `amplitude`, continuous or in
/// bursts of (on, period) seconds. Chromium loops it; 2.4 s holds whole periods of the tones
/// and bursts used here, so the loop has no seam.
fn tone_wav(freq: f32, amplitude: f32, bursts: Option<(f32, f32)>) -> Vec<u8> {
    let rate = SAMPLE_RATE;
    let samples: Vec<i16> = (0..rate * 24 / 10)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let gain = match bursts {
                // A 5 ms ramp at both ends, so a burst does not click.
                Some((on, period)) => {
                    let phase = t % period;
                    (phase / 0.005).min((on - phase) / 0.005).clamp(0.0, 1.0)
                }
                None => 1.0,
            };
            let value = amplitude * gain * (2.0 * std::f32::consts::PI * freq * t).sin();
            (value * 32767.0) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

/// How long the tests wait for something the page should do within a few seconds (generous:
/// a loaded two-core CI machine starts Chromium slowly).
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Headless Chromium with a fake microphone, on a fresh profile in a temporary directory,
/// attached to one page over the DevTools protocol. Dropping it ends the browser by its PID and
/// removes the directory, also when a test panics.
struct Chromium {
    child: Child,
    dir: PathBuf,
    /// The browser's DevTools WebSocket, once it is open.
    devtools: Option<Client>,
    /// The page's session on it, once attached.
    session: String,
    next_id: u64,
}

impl Chromium {
    /// Starts Chromium with `wav` as its microphone and opens a blank page.
    ///
    /// # Panics
    ///
    /// If Chromium is not installed (with how to install it), or does not start.
    async fn launch(wav: &[u8]) -> Chromium {
        let dir = std::env::temp_dir().join(format!(
            "mixer-browser-{}-{}",
            std::process::id(),
            epoch_ms() as u64
        ));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let microphone = dir.join("microphone.wav");
        std::fs::write(&microphone, wav).expect("write the WAV file");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("log file");
        let child = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox", // it runs as root in CI
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--mute-audio",
                "--window-size=1000,760",
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!(
                "--use-file-for-fake-audio-capture={}",
                microphone.display()
            ))
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests need chromium ({e}); install it with `bash .ci/setup`")
            });
        // Owned from here: a panic below still ends it.
        let mut browser = Chromium {
            child,
            dir,
            devtools: None,
            session: String::new(),
            next_id: 0,
        };
        let port_file = browser.dir.join("profile").join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            if let Ok(Some(status)) = browser.child.try_wait() {
                panic!("chromium exited ({status}): {}", browser.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium did not open its DevTools port: {}",
                browser.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (devtools, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .expect("connect to the DevTools endpoint");
        browser.devtools = Some(devtools);
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("targetId").to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": 1000, "height": 760, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await;
        browser
    }

    /// Sends one DevTools command (to the page, once attached) and returns its result.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        let devtools = self.devtools.as_mut().expect("connected");
        devtools
            .send(Message::text(command.to_string()))
            .await
            .expect("send a DevTools command");
        loop {
            let message = tokio::time::timeout(PAGE_TIMEOUT, devtools.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools connection open")
                .expect("DevTools message");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if reply["id"] != json!(id) {
                continue; // an event
            }
            if let Some(error) = reply.get("error") {
                panic!("{method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Opens the server's page on a link that joins `room` as "page" on the audio `path`, in
    /// test mode; returns the page's state once joined.
    async fn join(&mut self, port: u16, room: &str, path: &str) -> Value {
        let url =
            format!("http://127.0.0.1:{port}/?room={room}&name=page&join=1&audio={path}&test=1");
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "(() => { const s = window.mixerTest && mixerTest.state(); return s && s.joined ? s : null; })()",
            "the page to join the room",
        )
        .await
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy; returns its value.
    async fn wait_for(&mut self, expression: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PAGE_TIMEOUT;
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()");
        loop {
            let value = self.eval(&guarded).await;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let state = self
                    .eval("window.mixerTest ? mixerTest.state() : document.body.innerText")
                    .await;
                panic!("timed out waiting for {what}; page: {state}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The level (dB, 0 = a full-scale sine) of `freq` in the last `seconds` the page played or
    /// captured.
    async fn tone_db(&mut self, source: &str, freq: f32, seconds: f64) -> f32 {
        let value = self
            .eval(&format!("mixerTest.toneDb('{source}', {freq}, {seconds})"))
            .await;
        value.as_f64().expect("a number") as f32
    }

    /// What Chromium wrote on its standard error.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromium.log")).unwrap_or_default()
    }

    /// Saves a PNG of the page.
    async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64_decode(shot["data"].as_str().expect("data"));
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // Asked to quit by its own PID (it then ends its renderer and helper processes), killed
        // if it has not within a few seconds.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Standard base64 (what DevTools sends screenshots in), without a dependency for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            other => panic!("not base64: {other}"),
        }
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let bits = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &c)| acc | value(c) << (18 - 6 * i));
        let produced = chunk.len() * 6 / 8;
        out.extend_from_slice(&bits.to_be_bytes()[1..=produced]);
    }
    out
}
