//! The service around the rooms: plain HTTP routes, metrics and shutdown.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_unknown_paths_over_plain_http() {
    let server = TestServer::start(&[]).await;
    // `/` without a WebSocket upgrade is the browser client's page.
    for (path, status) in [
        ("/healthz", "200"),
        ("/nope", "404"),
        ("/", "200"),
        ("/app/nope.js", "404"),
    ] {
        let (status_line, body) = http_get(server.addr, path).await;
        assert!(
            status_line.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {status_line}"
        );
        match path {
            "/healthz" => assert_eq!(body, "ok\n"),
            "/" => assert!(body.contains("<!doctype html>"), "{body}"),
            _ => {}
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
        <Cli as clap::Parser>::parse_from(["mixer", "serve", "--mixer-threads", "1"]).command
    else {
        unreachable!("parsed as serve")
    };
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
