//! Bad, slow, silent and greedy clients: typed errors, limits, and a room that never notices.

use super::*;

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
    // A message over a size limit is the one thing that closes the connection (1009): a binary
    // frame over the WebSocket limit, or a text frame over the 4096-byte control limit (as the
    // protocol says; it used to stay open).
    bad.send(Message::binary(vec![0u8; 70_000]))
        .await
        .expect("send");
    expect_error(&mut bad, ErrorCode::MessageTooLarge).await;
    assert_eq!(close_code_of(&mut bad).await, Some(1009));
    let mut wordy = connect(&server).await;
    send_expect_error(
        &mut wordy,
        Message::text(format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000))),
        ErrorCode::MessageTooLarge,
    )
    .await;
    assert_eq!(close_code_of(&mut wordy).await, Some(1009));

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
async fn a_client_that_stops_reading_is_cut_off_without_hurting_the_room() {
    let server = TestServer::start(SLOW_CLIENT_FLAGS).await;
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
async fn one_address_cannot_fill_the_server_with_created_rooms_even_by_reconnecting() {
    let server = TestServer::start(&[]).await;
    let mut lobby = connect(&server).await;
    // One connection cannot fill the server with empty rooms: after a burst it is refused,
    // and the refused room does not exist. (The requests are paced so the control budget,
    // which refills 10 tokens, one create_room, per half second, is not what refuses them.)
    let mut refused = None;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
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
    // Reconnecting does not reset the limit: it is per address, not per connection.
    let mut again = connect(&server).await;
    match ask(
        &mut again,
        ClientMessage::CreateRoom(mixer_protocol::RoomSettings {
            room: "after-reconnecting".into(),
            ..Default::default()
        }),
    )
    .await
    {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::RateLimited),
        other => panic!("expected rate_limited, got {other:?}"),
    }
    // Another address still can (127.0.0.2 is this machine too, but another address).
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("address"))
        .expect("bind 127.0.0.2");
    let stream = socket.connect(server.addr).await.expect("connect");
    let (mut other, _) =
        tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
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

/// Reads until the server's close frame; its code (`None` if the stream ended without one).
async fn close_code_of(ws: &mut Client) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_control_budget_can_still_leave() {
    let server = TestServer::start(&["--resume-window-ms", "0"]).await;
    let (mut stays, _) = join(&server, "exit", "stays", Mode::Listen).await;
    let (mut spender, spender_id) = join(&server, "exit", "spender", Mode::Listen).await;
    let _ = next_control(&mut stays).await; // spender joined
    // Spend the budget (list_rooms costs 5): the last ones are dropped.
    for _ in 0..20 {
        spender
            .send(Message::text(ClientMessage::ListRooms.to_json()))
            .await
            .expect("send");
    }
    spender
        .send(Message::text(ClientMessage::Leave.to_json()))
        .await
        .expect("send leave");
    let replies = drain_control(&mut spender, Duration::from_millis(500)).await;
    assert!(
        replies.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::ControlRateLimited,
                ..
            }
        )),
        "the budget ran out: {replies:?}"
    );
    // The leave went through all the same.
    assert_eq!(
        expect_left(&mut stays).await,
        (spender_id, LeaveReason::Left)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let server = TestServer::start(&["--max-connections-per-address", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    // The fourth from the same address is refused before the WebSocket handshake.
    let refused = tokio_tungstenite::connect_async(server.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| "a connection")),
    }
    // A place comes back when a connection ends.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok((ws, _)) => {
                held.push(ws);
                break;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("no place came back: {error}"),
        }
    }
    assert_eq!(held.len(), 3);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_kept_for_resuming_count_against_their_address_limit() {
    let server = TestServer::start(&[
        "--max-connections-per-address",
        "3",
        "--resume-window-ms",
        "1500",
    ])
    .await;
    // Three clients join and vanish without a close: each is kept for resuming (a ghost).
    for n in 0..3 {
        let (ghost, _) = join(&server, "ghosts", &format!("ghost-{n}"), Mode::Listen).await;
        drop(ghost);
    }
    // The ghosts hold their connections' places (a dropped connection's place passes straight
    // to its ghost): a fourth connection from the address is refused, so one address cannot
    // pile up ghosts past its limit.
    match tokio_tungstenite::connect_async(server.url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| "a connection")),
    }
    assert_eq!(
        http_get(server.addr, "/healthz").await.0,
        "HTTP/1.1 503 Service Unavailable"
    );
    // When their window ends the ghosts leave and give the places back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_tungstenite::connect_async(server.url()).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the places never came back: {error}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_resume_tokens_is_limited_per_address() {
    let server = TestServer::start(&[]).await;
    let mut guesser = connect(&server).await;
    let guess = |n: u32| {
        Message::text(
            ClientMessage::Join(JoinRequest {
                resume: Some(format!("{n:032x}")),
                ..JoinRequest {
                    room: "lobby".into(),
                    name: "guesser".into(),
                    token: None,
                    mode: None,
                    resume: None,
                    role: Some(Role::Speaker),
                    format: AudioFormat::opus_48k_mono_20ms(),
                }
            })
            .to_json(),
        )
    };
    for n in 0..10 {
        send_expect_error(&mut guesser, guess(n), ErrorCode::ResumeFailed).await;
    }
    // The eleventh is refused before the token is even looked at, from any connection of the
    // address.
    send_expect_error(&mut guesser, guess(10), ErrorCode::RateLimited).await;
    let mut another = connect(&server).await;
    send_expect_error(&mut another, guess(11), ErrorCode::RateLimited).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_joins_is_closed_and_a_joined_one_is_not() {
    let server = TestServer::start(&["--unjoined-timeout-ms", "300"]).await;
    let mut idle = connect(&server).await;
    let (mut joined, _) = join(&server, "kept", "stays", Mode::Listen).await;
    expect_error(&mut idle, ErrorCode::JoinTimeout).await;
    assert_eq!(close_code_of(&mut idle).await, Some(1008));
    // The joined connection is still served, well past the timeout.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        ask(&mut joined, ClientMessage::Ping { id: Some(7) }).await,
        ServerMessage::Pong { id: Some(7) }
    );
    // Once it leaves, it is unjoined again and the timer runs again.
    joined
        .send(Message::text(ClientMessage::Leave.to_json()))
        .await
        .expect("leave");
    expect_error(&mut joined, ErrorCode::JoinTimeout).await;
    server.shutdown().await;
}
