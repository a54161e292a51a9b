//! Who hears whom: mix-minus across rooms and formats, over real sockets.

use super::*;

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
async fn a_pcm_client_and_an_opus_client_hear_each_other_over_real_sockets() {
    let server = TestServer::start(&[]).await;
    let mut pcm = connect(&server).await;
    let pcm_join = ClientMessage::Join(JoinRequest {
        room: "mcu".into(),
        name: "sensor".into(),
        token: None,
        mode: Some(Mode::Talk),
        resume: None,
        role: Some(Role::Speaker),
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
async fn audio_sent_right_after_join_is_mixed_and_joined_comes_before_any_audio() {
    let server = TestServer::start(&[]).await;
    let (ear, _) = join(&server, "eager", "ear", Mode::Listen).await;
    let listening = tokio::spawn(run_client(ear, None, Duration::from_millis(2000)));
    // The talker does not wait for `joined`: its join and first frames leave together.
    let mut eager = connect(&server).await;
    let mut talker = Talker::new(TONES[1], 0.2);
    eager
        .feed(join_message("eager", "talker", Mode::Talk))
        .await
        .expect("join");
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut first = None;
    for _ in 0..80 {
        ticker.tick().await;
        eager
            .send(Message::binary(talker.next_frame(true)))
            .await
            .expect("audio");
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(1), eager.next()).await
        {
            first.get_or_insert(message);
        }
    }
    match first {
        Some(Message::Text(text)) => assert!(
            matches!(
                parse_server_message(text.as_str()),
                Ok(ServerMessage::Joined { .. })
            ),
            "first message: {text}"
        ),
        other => panic!("the first message must be joined, got {other:?}"),
    }
    let heard = listening.await.expect("listener");
    // Heard from the start: the first frames, sent before `joined` came back, were mixed too.
    // (The listener's stream starts with the talker's first frame heard; 80 were sent.)
    let with_tone = heard
        .listener
        .pcm
        .chunks(960)
        .filter(|frame| tone_db(frame, TONES[1]) > -30.0)
        .count();
    assert!(with_tone >= 76, "{with_tone} frames of 80 heard");
    server.shutdown().await;
}
