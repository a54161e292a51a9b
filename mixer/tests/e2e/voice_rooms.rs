//! Voice-room features over real sockets: push-to-talk, moderation, rooms and chat, resume, replay.

use super::*;

/// A push-to-talk client's last frames and its `floor_release` leave in one write, as a
/// walkie-talkie's do when the button goes up: the frames are the holder's and are mixed, and
/// nothing is refused as sent without the floor. (The server takes audio in just before each
/// tick and requests at once, so the release used to overtake the frames queued for the tick.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_frames_before_a_floor_release_keep_the_floor() {
    let server = TestServer::start(&["--floor-policy", "single"]).await;
    let (mut ws, id) = join_as(&server, "channel-9", "alpha", Mode::Ptt, Role::Speaker).await;
    let mut talker = Talker::new(TONES[0], 0.2);
    for _ in 0..5 {
        let granted = ask(&mut ws, ClientMessage::FloorRequest { preempt: false }).await;
        assert!(
            matches!(granted, ServerMessage::FloorGranted { participant_id, .. } if participant_id == id),
            "{granted:?}"
        );
        for _ in 0..3 {
            ws.feed(Message::binary(talker.next_frame(true)))
                .await
                .expect("feed audio");
        }
        ws.feed(Message::text(ClientMessage::FloorRelease.to_json()))
            .await
            .expect("feed release");
        ws.flush().await.expect("flush");
        let seen = drain_control(&mut ws, Duration::from_millis(150)).await;
        assert!(
            seen.iter()
                .all(|m| !matches!(m, ServerMessage::Error { .. })),
            "{seen:?}"
        );
        assert!(
            seen.contains(&ServerMessage::FloorReleased {
                participant_id: id,
                reason: mixer_protocol::FloorEndReason::Released,
                by: None
            }),
            "{seen:?}"
        );
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
                role: Some(Role::Speaker),
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
async fn mute_room_is_one_message_to_the_room_and_a_mode_change_that_changes_nothing_is_not_broadcast()
 {
    let server = TestServer::start(&[]).await;
    let (mut moderator, moderator_id) =
        join_as(&server, "quiet", "chair", Mode::Listen, Role::Moderator).await;
    let mut speakers = Vec::new();
    for n in 0..4 {
        let (ws, id) = join_as(
            &server,
            "quiet",
            &format!("s{n}"),
            Mode::Talk,
            Role::Speaker,
        )
        .await;
        speakers.push((ws, id));
    }
    // Everyone has seen everyone join.
    drain_control(&mut moderator, Duration::from_millis(300)).await;
    for (ws, _) in &mut speakers {
        drain_control(ws, Duration::from_millis(100)).await;
    }
    let mut expected: Vec<u32> = speakers.iter().map(|(_, id)| *id).collect();
    expected.sort_unstable();

    let reply = ask(&mut moderator, ClientMessage::MuteRoom { muted: true }).await;
    let room_muted = ServerMessage::RoomMuted {
        muted: true,
        by: moderator_id,
        participant_ids: expected.clone(),
    };
    assert_eq!(reply, room_muted);
    for (ws, _) in &mut speakers {
        assert_eq!(next_control(ws).await, room_muted);
    }
    // A speaker who asks for the mode it already has is answered; the room hears nothing.
    let (asker, asker_id) = &mut speakers[0];
    let asker_id = *asker_id;
    let reply = ask(asker, ClientMessage::SetMode { mode: Mode::Talk }).await;
    assert_eq!(
        reply,
        ServerMessage::ModeChanged {
            participant_id: asker_id,
            mode: Mode::Talk
        }
    );
    // Muting a room again changes nobody: only the moderator is answered.
    let reply = ask(&mut moderator, ClientMessage::MuteRoom { muted: true }).await;
    assert_eq!(
        reply,
        ServerMessage::RoomMuted {
            muted: true,
            by: moderator_id,
            participant_ids: Vec::new(),
        }
    );
    let reply = ask(&mut moderator, ClientMessage::MuteRoom { muted: false }).await;
    let room_unmuted = ServerMessage::RoomMuted {
        muted: false,
        by: moderator_id,
        participant_ids: expected,
    };
    assert_eq!(reply, room_unmuted);
    for (n, (ws, _)) in speakers.iter_mut().enumerate() {
        // Neither no-op reached the others: what follows the first room_muted is the unmute.
        assert_eq!(next_control(ws).await, room_unmuted, "speaker {n}");
    }
    server.shutdown().await;
}
