//! Identity and access on a real socket: a server with a key admits only valid tokens, every
//! role can do exactly what its table says, one identity holds one seat, names cannot be
//! spoofed, and the admin API works and is closed to everyone else.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mixer::auth::{Claims, Signer, unix_now};
use mixer_protocol::{
    AudioFormat, ClientMessage, ErrorCode, FloorPolicy, JoinRequest, LeaveReason, Mode, Role,
    RoomSettings, ServerMessage,
};

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{
    Client, TestServer, connect, expect_error, expect_left, http_exchange, http_get,
    join_message_as, metric, next_control, run_client, send_expect_error,
};
use crate::common::tone_db;

const SECRET: &[u8] = b"test secret: at least thirty-two bytes long";

/// A fresh directory for one test's files.
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mixer-access-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A server that requires tokens signed with [`SECRET`], and its key file.
pub(super) async fn secured(extra: &[&str]) -> TestServer {
    let key = scratch().join("secret.key");
    std::fs::write(&key, SECRET).expect("write key");
    let key = key.to_str().expect("utf-8 path").to_owned();
    let mut args = vec!["--auth-key-file", key.as_str()];
    args.extend_from_slice(extra);
    TestServer::start(&args).await
}

fn claims(identity: &str, role: Role, rooms: &[&str]) -> Claims {
    Claims {
        sub: identity.to_owned(),
        name: None,
        role,
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        can_create_rooms: false,
        can_list_rooms: false,
        admin: false,
        exp: unix_now() + 600,
        nbf: None,
        iat: None,
    }
}

fn sign(claims: &Claims) -> String {
    Signer::hmac(SECRET).sign(claims).expect("sign")
}

pub(super) fn token(identity: &str, role: Role, room: &str) -> String {
    sign(&claims(identity, role, &[room]))
}

fn join_with(room: &str, token: Option<String>, role: Option<Role>, mode: Option<Mode>) -> Message {
    Message::text(
        ClientMessage::Join(JoinRequest {
            room: room.into(),
            name: String::new(),
            token,
            mode,
            resume: None,
            role,
            format: AudioFormat::opus_48k_mono_20ms(),
        })
        .to_json(),
    )
}

/// Joins `room` with `token` (and `role`, `mode` if given); returns the client, its id and
/// the roster it was given.
async fn join_token(
    server: &TestServer,
    room: &str,
    token: String,
    role: Option<Role>,
    mode: Option<Mode>,
) -> (Client, u32, Vec<(u32, String, Role)>) {
    let mut ws = connect(server).await;
    ws.send(join_with(room, Some(token), role, mode))
        .await
        .expect("send join");
    match next_control(&mut ws).await {
        ServerMessage::Joined {
            participant_id,
            participants,
            ..
        } => {
            let roster = participants
                .into_iter()
                .map(|p| (p.id, p.name, p.role))
                .collect();
            (ws, participant_id, roster)
        }
        other => panic!("expected joined, got {other:?}"),
    }
}

/// Joins `room` as `identity` with a token granting `role` in it, in the token's role and
/// the room's default mode.
async fn join_as(
    server: &TestServer,
    room: &str,
    identity: &str,
    role: Role,
) -> (Client, u32, Vec<(u32, String, Role)>) {
    join_token(server, room, token(identity, role, room), None, None).await
}

/// Sends `message` and returns the next control message but news of someone joining (which
/// may arrive at any time).
async fn ask(ws: &mut Client, message: ClientMessage) -> ServerMessage {
    ws.send(Message::text(message.to_json()))
        .await
        .expect("send");
    loop {
        match next_control(ws).await {
            ServerMessage::ParticipantJoined { .. } => {}
            other => return other,
        }
    }
}

/// A join of `room` as `identity` on a new connection is refused as `banned`.
async fn expect_banned(server: &TestServer, room: &str, identity: &str) {
    let mut again = connect(server).await;
    send_expect_error(
        &mut again,
        join_with(room, Some(token(identity, Role::Speaker, room)), None, None),
        ErrorCode::Banned,
    )
    .await;
}

/// Whether `reply` is an `error` with `code`.
fn is_error(reply: &ServerMessage, code: ErrorCode) -> bool {
    matches!(reply, ServerMessage::Error { code: got, .. } if *got == code)
}

/// The close code the server ends `ws` with (skipping whatever comes before).
async fn close_code(ws: &mut Client) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(_) => return None,
            Err(_) => panic!("the server did not close the connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_key_no_join_succeeds_without_a_valid_token() {
    let server = secured(&[]).await;
    let mut ws = connect(&server).await;
    // The open server's join (a name and a claimed role) is not enough.
    let cases: Vec<(Message, ErrorCode)> = vec![
        (
            join_message_as("standup", "Mallory", Mode::Talk, Role::Moderator),
            ErrorCode::TokenRequired,
        ),
        (
            join_with("standup", Some("not.a.jwt".into()), None, None),
            ErrorCode::InvalidToken,
        ),
        (
            join_with(
                "standup",
                Some(
                    Signer::hmac(b"someone else's secret, 32 bytes+")
                        .sign(&claims("mallory", Role::Moderator, &["*"]))
                        .expect("sign"),
                ),
                None,
                None,
            ),
            ErrorCode::InvalidToken,
        ),
        (
            join_with(
                "standup",
                Some(sign(&Claims {
                    exp: unix_now() - 60,
                    ..claims("alice", Role::Speaker, &["standup"])
                })),
                None,
                None,
            ),
            ErrorCode::TokenExpired,
        ),
        (
            join_with(
                "standup",
                Some(token("alice", Role::Speaker, "other-room")),
                None,
                None,
            ),
            ErrorCode::TokenWrongRoom,
        ),
        // A speaker's token claiming moderator.
        (
            join_with(
                "standup",
                Some(token("alice", Role::Speaker, "standup")),
                Some(Role::Moderator),
                None,
            ),
            ErrorCode::TokenInsufficient,
        ),
        // A listener's token claiming speaker.
        (
            join_with(
                "standup",
                Some(token("lee", Role::Listener, "standup")),
                Some(Role::Speaker),
                Some(Mode::Talk),
            ),
            ErrorCode::TokenInsufficient,
        ),
    ];
    for (message, code) in cases {
        send_expect_error(&mut ws, message, code).await;
    }
    // Room lookups need a token too.
    for message in [
        ClientMessage::ListRooms,
        ClientMessage::RoomInfo {
            room: "standup".into(),
        },
        ClientMessage::CreateRoom(RoomSettings {
            room: "new".into(),
            ..RoomSettings::default()
        }),
    ] {
        let reply = ask(&mut ws, message.clone()).await;
        assert!(
            is_error(&reply, ErrorCode::TokenRequired),
            "{message:?}: {reply:?}"
        );
    }
    // Nobody got in: no room exists.
    let (_, body) = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&body, "mixer_rooms", ""), 0.0);
    assert_eq!(
        metric(
            &body,
            "mixer_auth_failures_total",
            "code=\"token_required\""
        ),
        4.0
    );
    assert_eq!(
        metric(&body, "mixer_auth_failures_total", "code=\"invalid_token\""),
        2.0
    );
    // A valid token gets in, with the token's name and role whatever the join says.
    let alice = sign(&Claims {
        name: Some("Alice".into()),
        ..claims("alice", Role::Moderator, &["standup"])
    });
    let mut ws = connect(&server).await;
    ws.send(Message::text(
        ClientMessage::Join(JoinRequest {
            room: "standup".into(),
            name: "Bob the Impostor".into(),
            token: Some(alice),
            mode: None,
            resume: None,
            role: None,
            format: AudioFormat::opus_48k_mono_20ms(),
        })
        .to_json(),
    ))
    .await
    .expect("send");
    assert!(matches!(
        next_control(&mut ws).await,
        ServerMessage::Joined { .. }
    ));
    let (_, _, roster) = join_as(&server, "standup", "bob", Role::Speaker).await;
    assert_eq!(
        roster,
        [(1, "Alice".to_owned(), Role::Moderator)],
        "the name and role come from the token"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_authenticates_the_connection_and_scopes_listing() {
    let server = secured(&[]).await;
    let lister = sign(&Claims {
        can_list_rooms: true,
        can_create_rooms: true,
        ..claims("lobby", Role::Listener, &["team-*"])
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/?access_token={lister}", server.addr))
            .await
            .expect("connect");
    for room in ["team-a", "team-b"] {
        let reply = ask(
            &mut ws,
            ClientMessage::CreateRoom(RoomSettings {
                room: room.into(),
                ..RoomSettings::default()
            }),
        )
        .await;
        assert!(matches!(reply, ServerMessage::RoomInfo(_)), "{reply:?}");
    }
    // A room outside the token's pattern cannot be created or looked at.
    let reply = ask(
        &mut ws,
        ClientMessage::CreateRoom(RoomSettings {
            room: "secret".into(),
            ..RoomSettings::default()
        }),
    )
    .await;
    assert!(is_error(&reply, ErrorCode::TokenWrongRoom), "{reply:?}");
    // Someone else's room exists...
    let (_other, _, _) = join_as(&server, "secret", "spy-target", Role::Speaker).await;
    let reply = ask(
        &mut ws,
        ClientMessage::RoomInfo {
            room: "secret".into(),
        },
    )
    .await;
    assert!(is_error(&reply, ErrorCode::TokenWrongRoom), "{reply:?}");
    // ... and is not listed to a token for team-*.
    let ServerMessage::Rooms { rooms, .. } = ask(&mut ws, ClientMessage::ListRooms).await else {
        panic!("expected rooms");
    };
    let names: Vec<&str> = rooms.iter().map(|r| r.settings.room.as_str()).collect();
    assert_eq!(names, ["team-a", "team-b"]);
    // A token without can_list_rooms cannot list.
    let (mut plain, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/?access_token={}",
        server.addr,
        token("x", Role::Speaker, "*")
    ))
    .await
    .expect("connect");
    let reply = ask(&mut plain, ClientMessage::ListRooms).await;
    assert!(is_error(&reply, ErrorCode::TokenInsufficient), "{reply:?}");
    server.shutdown().await;
}

/// What each role may do, on a real socket: the table of the protocol's "Roles".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_exactly_what_its_role_allows() {
    let server = secured(&[]).await;
    let room = "roles";
    // The victim, a speaker every action is aimed at.
    let (mut victim, victim_id, _) = join_as(&server, room, "victim", Role::Speaker).await;
    for role in [Role::Listener, Role::Speaker, Role::Moderator] {
        let identity = format!("actor-{}", role.as_str());
        let (mut actor, actor_id, _) = join_token(
            &server,
            room,
            token(&identity, role, room),
            None,
            Some(if role == Role::Listener {
                Mode::Listen
            } else {
                Mode::Talk
            }),
        )
        .await;
        // The victim hears the actor join.
        assert!(matches!(
            next_control(&mut victim).await,
            ServerMessage::ParticipantJoined { .. }
        ));
        let moderator = role == Role::Moderator;
        let actions = [
            ClientMessage::Mute {
                participant_id: Some(victim_id),
                muted: true,
            },
            ClientMessage::SetGain {
                participant_id: victim_id,
                gain_db: -20,
            },
            ClientMessage::MuteRoom { muted: true },
            ClientMessage::SetMode { mode: Mode::Talk },
        ];
        for action in actions {
            let reply = ask(&mut actor, action.clone()).await;
            let expected_ok = match action {
                // A listener may never talk.
                ClientMessage::SetMode { .. } => role != Role::Listener,
                _ => moderator,
            };
            match (&reply, expected_ok) {
                (ServerMessage::Error { code, .. }, false) => assert!(
                    matches!(code, ErrorCode::Forbidden | ErrorCode::ModeNotAllowed),
                    "{role:?} {action:?}: {reply:?}"
                ),
                (ServerMessage::Error { .. }, true) => {
                    panic!("{role:?} may {action:?}, got {reply:?}")
                }
                (_, false) => panic!("{role:?} may not {action:?}, got {reply:?}"),
                (_, true) => {}
            }
        }
        if moderator {
            // Undo, so the next actor starts from the same room.
            for undo in [
                ClientMessage::MuteRoom { muted: false },
                ClientMessage::SetGain {
                    participant_id: victim_id,
                    gain_db: 0,
                },
            ] {
                let _ = ask(&mut actor, undo).await;
            }
        }
        // Removal last: only a moderator's works, and the victim is gone then.
        let reply = ask(
            &mut actor,
            ClientMessage::Remove {
                participant_id: victim_id,
            },
        )
        .await;
        if moderator {
            assert!(
                matches!(reply, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Removed } if participant_id == victim_id),
                "{reply:?}"
            );
            assert_eq!(close_code(&mut victim).await, Some(1008));
            // Removed is banned: the same identity cannot come back while the room exists.
            expect_banned(&server, room, "victim").await;
        } else {
            assert!(
                is_error(&reply, ErrorCode::Forbidden),
                "{role:?} remove: {reply:?}"
            );
            // Drain what the victim saw of this actor, then let the actor go.
            let _ = actor.close(None).await;
            loop {
                if let ServerMessage::ParticipantLeft { participant_id, .. } =
                    next_control(&mut victim).await
                    && participant_id == actor_id
                {
                    break;
                }
            }
        }
    }
    server.shutdown().await;
}

/// In a single-floor room: open mic and preempting the floor are a moderator's; a listener's
/// audio is never heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_rights_follow_the_token_and_a_listener_is_never_heard() {
    let server = secured(&[]).await;
    let room = "ptt";
    let creator = sign(&Claims {
        can_create_rooms: true,
        ..claims("creator", Role::Moderator, &[room])
    });
    let (mut lobby, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/?access_token={creator}", server.addr))
            .await
            .expect("connect");
    let reply = ask(
        &mut lobby,
        ClientMessage::CreateRoom(RoomSettings {
            room: room.into(),
            floor_policy: Some(FloorPolicy::Single),
            ..RoomSettings::default()
        }),
    )
    .await;
    assert!(matches!(reply, ServerMessage::RoomInfo(_)), "{reply:?}");
    // A speaker may not take an open mic in a single-floor room, nor preempt.
    let mut ws = connect(&server).await;
    send_expect_error(
        &mut ws,
        join_with(
            room,
            Some(token("s", Role::Speaker, room)),
            None,
            Some(Mode::Talk),
        ),
        ErrorCode::ModeNotAllowed,
    )
    .await;
    let (mut speaker, _, _) = join_as(&server, room, "s", Role::Speaker).await;
    let (mut holder, holder_id, _) = join_as(&server, room, "h", Role::Speaker).await;
    let reply = ask(&mut holder, ClientMessage::FloorRequest { preempt: false }).await;
    assert!(
        matches!(reply, ServerMessage::FloorGranted { participant_id, .. } if participant_id == holder_id),
        "{reply:?}"
    );
    // The room's news: the holder joined, then took the floor.
    while !matches!(
        next_control(&mut speaker).await,
        ServerMessage::FloorGranted { .. }
    ) {}
    let reply = ask(&mut speaker, ClientMessage::FloorRequest { preempt: true }).await;
    assert!(is_error(&reply, ErrorCode::Forbidden), "{reply:?}");
    // A moderator may do both.
    let (_moderator, _, _) = join_token(
        &server,
        room,
        token("m", Role::Moderator, room),
        None,
        Some(Mode::Talk),
    )
    .await;
    drop((speaker, holder));
    // A listener's audio: refused and unheard by an open-mic moderator listening in.
    let lroom = "listen-only";
    let (listener_ws, _, _) = join_as(&server, lroom, "l", Role::Listener).await;
    let (audience, _, _) = join_token(
        &server,
        lroom,
        token("a", Role::Moderator, lroom),
        None,
        Some(Mode::Listen),
    )
    .await;
    let sender = tokio::spawn(run_client(listener_ws, Some(700.0), Duration::from_secs(2)));
    let receiver = tokio::spawn(run_client(audience, None, Duration::from_secs(2)));
    let sent = sender.await.expect("listener");
    let heard = receiver.await.expect("audience");
    assert!(
        sent.roster
            .iter()
            .any(|m| is_error(m, ErrorCode::ListenOnly)),
        "the listener is told its audio is ignored"
    );
    let level = tone_db(&heard.listener.pcm, 700.0);
    assert!(
        level < -70.0,
        "a listener's audio reached the room at {level:.1} dB"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_holds_one_seat_and_a_new_connection_replaces_the_old() {
    let server = secured(&["--resume-window-ms", "30000"]).await;
    let room = "seats";
    let (mut watcher, _, _) = join_as(&server, room, "watcher", Role::Speaker).await;
    let (mut first, first_id, _) = join_as(&server, room, "alice", Role::Speaker).await;
    assert!(matches!(
        next_control(&mut watcher).await,
        ServerMessage::ParticipantJoined { .. }
    ));
    // The same identity on a new connection takes the seat: the old one is told and closed.
    let (_second, second_id, roster) = join_as(&server, room, "alice", Role::Speaker).await;
    assert_ne!(first_id, second_id);
    assert!(
        roster.iter().all(|(id, _, _)| *id != first_id),
        "the new seat's roster does not hold the old one: {roster:?}"
    );
    expect_error(&mut first, ErrorCode::Replaced).await;
    assert_eq!(close_code(&mut first).await, Some(1008));
    let (left, reason) = expect_left(&mut watcher).await;
    assert_eq!((left, reason), (first_id, LeaveReason::Replaced));
    assert!(matches!(
        next_control(&mut watcher).await,
        ServerMessage::ParticipantJoined { participant } if participant.id == second_id
    ));
    // A dropped connection leaves a ghost, kept for resuming; the identity rejoining frees it
    // at once instead of the room holding both for the resume window.
    let (dropping, dropped_id, _) = join_as(&server, room, "bob", Role::Speaker).await;
    assert!(matches!(
        next_control(&mut watcher).await,
        ServerMessage::ParticipantJoined { .. }
    ));
    reset(dropping).await;
    let info = |server: &TestServer| {
        let addr = server.addr;
        async move {
            let (_, body) = http_get(addr, "/metrics").await;
            metric(&body, "mixer_participants", "")
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        info(&server).await,
        3.0,
        "the watcher, alice's new seat (not her old one) and bob's ghost"
    );
    let (_back, _, _) = join_as(&server, room, "bob", Role::Speaker).await;
    let (left, reason) = expect_left(&mut watcher).await;
    assert_eq!((left, reason), (dropped_id, LeaveReason::Replaced));
    assert_eq!(info(&server).await, 3.0, "bob's ghost gave its seat to bob");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_is_bound_to_its_identity() {
    let server = secured(&["--resume-window-ms", "30000"]).await;
    let room = "resume";
    let mut ws = connect(&server).await;
    ws.send(join_with(
        room,
        Some(token("alice", Role::Moderator, room)),
        None,
        None,
    ))
    .await
    .expect("send");
    let ServerMessage::Joined {
        resume_token: Some(resume),
        participant_id,
        ..
    } = next_control(&mut ws).await
    else {
        panic!("expected joined with a resume token");
    };
    reset(ws).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resume_as = |identity: &str| {
        Message::text(
            ClientMessage::Join(JoinRequest {
                room: room.into(),
                name: String::new(),
                token: Some(token(identity, Role::Moderator, room)),
                mode: None,
                resume: Some(resume.clone()),
                role: None,
                format: AudioFormat::opus_48k_mono_20ms(),
            })
            .to_json(),
        )
    };
    // Mallory has the leaked resume token and a token of her own: not enough.
    let mut thief = connect(&server).await;
    send_expect_error(&mut thief, resume_as("mallory"), ErrorCode::ResumeFailed).await;
    // Alice, with a token for herself, takes her seat back.
    let mut back = connect(&server).await;
    back.send(resume_as("alice")).await.expect("send");
    match next_control(&mut back).await {
        ServerMessage::Joined {
            participant_id: id,
            resumed: true,
            ..
        } => assert_eq!(id, participant_id),
        other => panic!("expected a resumed joined, got {other:?}"),
    }
    server.shutdown().await;
}

/// Drops a connection without a close handshake, as a dead network does: the server keeps
/// the participant for resuming.
async fn reset(ws: Client) {
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_refuses_look_alike_and_reserved_names() {
    let server = TestServer::start(&[]).await;
    let (_alice, _) = super::join(&server, "names", "Alice", Mode::Talk).await;
    let mut ws = connect(&server).await;
    for (name, code) in [
        ("Alice", ErrorCode::NameTaken),
        ("alice", ErrorCode::NameTaken),
        // All Cyrillic: one script, but its confusable skeleton is "alice".
        (
            "\u{0410}\u{04CF}\u{0456}\u{0441}\u{0435}",
            ErrorCode::NameTaken,
        ),
        // A Cyrillic A in a Latin word.
        ("\u{0410}lice", ErrorCode::InvalidName),
        ("Al\u{200B}ice", ErrorCode::InvalidName),
        ("\u{202E}ecilA", ErrorCode::InvalidName),
        ("[server] moderator", ErrorCode::InvalidName),
    ] {
        send_expect_error(
            &mut ws,
            join_message_as("names", name, Mode::Talk, Role::Speaker),
            code,
        )
        .await;
    }
    // NFC: a decomposed name is stored composed, and shown so to the room.
    let (_zoe, _) = super::join(&server, "names", "Zoe\u{0308}", Mode::Talk).await;
    let (mut third, _) = super::join(&server, "names", "Third", Mode::Talk).await;
    let _ = third.close(None).await;
    let mut ws = connect(&server).await;
    ws.send(join_message_as(
        "names",
        "Fourth",
        Mode::Talk,
        Role::Speaker,
    ))
    .await
    .expect("send");
    let ServerMessage::Joined { participants, .. } = next_control(&mut ws).await else {
        panic!("expected joined");
    };
    assert!(
        participants.iter().any(|p| p.name == "Zo\u{00EB}"),
        "{participants:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_on_a_public_address_says_so() {
    // The flag is what matters for the config; the test still binds loopback.
    let server = TestServer::start(&["--listen", "0.0.0.0:0", "--insecure-no-auth"]).await;
    let (status, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("INSECURE"), "{body}");
    server.shutdown().await;
    let server = secured(&[]).await;
    let (_, body) = http_get(server.addr, "/healthz").await;
    assert_eq!(body, "ok\n");
    server.shutdown().await;
}

/// Sends one admin request; returns (status code, JSON body).
async fn admin(
    server: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let (status_line, body) = http_exchange(
        &mut stream,
        &format!("{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\n\r\n"),
    )
    .await;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_lists_mutes_bans_closes_and_drains() {
    // Frames keep coming while the mix is silent, so silence after the mute is measured.
    let server = secured(&["--send-silence"]).await;
    let room = "ops";
    let operator = sign(&Claims {
        admin: true,
        ..claims("ops-team", Role::Listener, &[])
    });
    let not_admin = sign(&claims("alice", Role::Moderator, &["*"]));
    // Closed to everyone but an admin token.
    assert_eq!(admin(&server, "GET", "/admin/rooms", None).await.0, 401);
    assert_eq!(
        admin(&server, "GET", "/admin/rooms", Some("garbage"))
            .await
            .0,
        401
    );
    assert_eq!(
        admin(&server, "GET", "/admin/rooms", Some(&not_admin))
            .await
            .0,
        403
    );

    let (talker, talker_id, _) = join_as(&server, room, "talker", Role::Speaker).await;
    let (mut audience, _, _) = join_as(&server, room, "audience", Role::Listener).await;
    let (status, body) = admin(&server, "GET", "/admin/rooms", Some(&operator)).await;
    assert_eq!(status, 200, "{body}");
    let members = &body["rooms"][0]["members"];
    assert_eq!(body["rooms"][0]["room"], room);
    assert_eq!(members[0]["identity"], "talker");
    assert_eq!(members[1]["role"], "listener");
    // Mute: the room is told (by 0), and the talker's tone stops reaching the audience.
    let talking = tokio::spawn(run_client(talker, Some(600.0), Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let path = format!("/admin/rooms/{room}/participants/{talker_id}/mute");
    assert_eq!(admin(&server, "POST", &path, Some(&operator)).await.0, 200);
    let mut muted_at = None;
    let mut listener = crate::common::Listener::default();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1800) {
        match tokio::time::timeout(Duration::from_millis(200), audience.next()).await {
            Ok(Some(Ok(Message::Binary(bytes)))) => listener.receive_wire(&bytes),
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Ok(ServerMessage::ParticipantMuted {
                    participant_id,
                    muted: true,
                    by,
                }) = mixer_protocol::parse_server_message(text.as_str())
                {
                    assert_eq!((participant_id, by), (talker_id, Some(0)));
                    muted_at = Some(listener.pcm.len());
                }
            }
            _ => {}
        }
    }
    let muted_at = muted_at.expect("the room heard of the operator's mute");
    assert!(
        tone_db(&listener.pcm[..muted_at], 600.0) > -30.0,
        "the talker was heard before the mute"
    );
    let after = &listener.pcm[(muted_at + 48_000 / 5).min(listener.pcm.len())..];
    assert!(after.len() > 24_000, "audio kept flowing after the mute");
    assert!(
        tone_db(after, 600.0) < -60.0,
        "the muted talker is still heard at {:.1} dB",
        tone_db(after, 600.0)
    );
    let _ = talking.await;
    // Remove with a ban: the identity cannot come back while the room exists.
    let (mut victim, victim_id, _) = join_as(&server, room, "victim", Role::Speaker).await;
    let path = format!("/admin/rooms/{room}/participants/{victim_id}/remove");
    assert_eq!(admin(&server, "POST", &path, Some(&operator)).await.0, 200);
    expect_error(&mut victim, ErrorCode::Removed).await;
    assert_eq!(close_code(&mut victim).await, Some(1008));
    expect_banned(&server, room, "victim").await;
    assert_eq!(
        admin(
            &server,
            "POST",
            "/admin/rooms/ops/participants/999/remove",
            Some(&operator)
        )
        .await
        .0,
        404
    );
    assert_eq!(
        admin(&server, "GET", "/admin/rooms/nowhere", Some(&operator))
            .await
            .0,
        404
    );
    assert_eq!(
        admin(&server, "GET", "/admin/drain", Some(&operator))
            .await
            .0,
        405
    );
    // Drain: existing rooms go on, new ones are refused, and /healthz tells load balancers.
    assert_eq!(
        admin(&server, "POST", "/admin/drain", Some(&operator))
            .await
            .0,
        200
    );
    let (status, _) = http_get(server.addr, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    let mut newcomer = connect(&server).await;
    send_expect_error(
        &mut newcomer,
        join_with(
            "fresh",
            Some(token("n", Role::Speaker, "fresh")),
            None,
            None,
        ),
        ErrorCode::Draining,
    )
    .await;
    let (_late, _, _) = join_as(&server, room, "late", Role::Speaker).await;
    assert_eq!(
        admin(&server, "POST", "/admin/undrain", Some(&operator))
            .await
            .0,
        200
    );
    // Close: everyone in the room is told and disconnected.
    assert_eq!(
        admin(
            &server,
            "POST",
            &format!("/admin/rooms/{room}/close"),
            Some(&operator)
        )
        .await
        .0,
        200
    );
    loop {
        // The room's news since (the talker leaving, the late joiner) comes first.
        match next_control(&mut audience).await {
            ServerMessage::Error { code, .. } => {
                assert_eq!(code, ErrorCode::Removed);
                break;
            }
            ServerMessage::ParticipantLeft { .. }
            | ServerMessage::ParticipantJoined { .. }
            | ServerMessage::ParticipantMuted { .. } => {}
            other => panic!("expected removed, got {other:?}"),
        }
    }
    assert_eq!(close_code(&mut audience).await, Some(1008));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = admin(&server, "GET", "/admin/rooms", Some(&operator)).await;
    assert_eq!(body["rooms"].as_array().map(Vec::len), Some(0), "{body}");
    // Closing is not a ban: the audience may come back to a new room of that name.
    let (_back, _, _) = join_as(&server, room, "audience", Role::Listener).await;
    server.shutdown().await;
}

/// `mixer token create` mints tokens the server accepts: HMAC, and Ed25519 with the server
/// holding only the public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_the_cli_are_accepted_with_hmac_and_ed25519_keys() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let secret = scratch().join("secret.key");
    std::fs::write(&secret, SECRET).expect("write key");
    for (signing, verifying) in [
        (secret.clone(), secret.clone()),
        (
            fixtures.join("ed25519-private.pem"),
            fixtures.join("ed25519-public.pem"),
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_mixer"))
            .args(["token", "create", "--room", "cli-*", "--identity", "carol"])
            .args(["--name", "Carol", "--role", "moderator", "--ttl", "10m"])
            .arg("--key-file")
            .arg(&signing)
            .output()
            .expect("run mixer token create");
        assert!(output.status.success(), "{output:?}");
        let minted = String::from_utf8(output.stdout).expect("utf-8");
        let server =
            TestServer::start(&["--auth-key-file", verifying.to_str().expect("utf-8 path")]).await;
        let (_ws, _, _) = join_token(
            &server,
            "cli-room",
            minted.trim().to_owned(),
            Some(Role::Moderator),
            None,
        )
        .await;
        server.shutdown().await;
    }
    // The server refuses to start on a private key, or on a short secret.
    for (key, message) in [
        (fixtures.join("ed25519-private.pem"), "private key"),
        (
            {
                let short = scratch().join("short.key");
                std::fs::write(&short, "too short").expect("write");
                short
            },
            "at least 32 bytes",
        ),
    ] {
        let args = [
            "mixer",
            "serve",
            "--auth-key-file",
            key.to_str().expect("utf-8"),
        ];
        let mixer::cli::Command::Serve(serve) =
            <mixer::cli::Cli as clap::Parser>::parse_from(args).command
        else {
            unreachable!("parsed as serve")
        };
        let error = serve.to_config().expect_err("refused");
        assert!(error.to_string().contains(message), "{error}");
    }
}

/// A moderator removing someone whose connection dropped (kept for resuming) gives its seat
/// back at once and bans it, as for someone connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_participant_waiting_to_resume_frees_its_seat_and_bans_it() {
    let server = secured(&["--resume-window-ms", "30000"]).await;
    let room = "away";
    let (mut moderator, _, _) = join_as(&server, room, "mod", Role::Moderator).await;
    let (gone, gone_id, _) = join_as(&server, room, "gone", Role::Speaker).await;
    assert!(matches!(
        next_control(&mut moderator).await,
        ServerMessage::ParticipantJoined { .. }
    ));
    reset(gone).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let participants = |reply: ServerMessage| match reply {
        ServerMessage::RoomInfo(summary) => summary.participants,
        other => panic!("expected room_info, got {other:?}"),
    };
    let info = ClientMessage::RoomInfo { room: room.into() };
    assert_eq!(
        participants(ask(&mut moderator, info.clone()).await),
        2,
        "the dropped participant is kept for resuming"
    );
    let reply = ask(
        &mut moderator,
        ClientMessage::Remove {
            participant_id: gone_id,
        },
    )
    .await;
    assert!(
        matches!(reply, ServerMessage::ParticipantLeft { participant_id, reason: LeaveReason::Removed } if participant_id == gone_id),
        "{reply:?}"
    );
    assert_eq!(
        participants(ask(&mut moderator, info).await),
        1,
        "its seat is given back at once, not after its resume window"
    );
    expect_banned(&server, room, "gone").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_starts_and_stops_a_recording_that_the_room_is_told_of() {
    let dir = scratch().join("recordings");
    let server = secured(&["--record-dir", dir.to_str().expect("utf-8")]).await;
    let operator = sign(&Claims {
        admin: true,
        ..claims("ops-team", Role::Listener, &[])
    });
    let record = |path: &'static str| admin(&server, "POST", path, Some(&operator));
    let (mut member, _, _) = join_as(&server, "ops", "member", Role::Listener).await;
    let (status, body) = record("/admin/rooms/ops/record/start").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"], "ops");
    assert_eq!(body["already"], false);
    let file = body["file"].as_str().expect("a file name").to_owned();
    let told = next_recording(&mut member).await;
    assert_eq!(
        told,
        ServerMessage::Recording {
            recording: true,
            file: file.clone(),
            by: None,
            reason: None,
        }
    );
    assert!(dir.join(&file).exists());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = record("/admin/rooms/ops/record/stop").await;
    assert_eq!((status, body["file"].as_str()), (200, Some(file.as_str())));
    let told = next_recording(&mut member).await;
    assert_eq!(
        told,
        ServerMessage::Recording {
            recording: false,
            file,
            by: None,
            reason: Some(mixer_protocol::RecordingEnd::Stopped),
        }
    );
    // Nothing to stop; no such room; and only for admins.
    let (status, body) = record("/admin/rooms/ops/record/stop").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("recording_unavailable"))
    );
    let (status, body) = record("/admin/rooms/nowhere/record/start").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_room"))
    );
    let member_token = token("member", Role::Moderator, "ops");
    assert_eq!(
        admin(
            &server,
            "POST",
            "/admin/rooms/ops/record/start",
            Some(&member_token)
        )
        .await
        .0,
        403
    );
    server.shutdown().await;
}

/// Reads control messages until a `recording` arrives.
async fn next_recording(ws: &mut super::Client) -> ServerMessage {
    loop {
        if let message @ ServerMessage::Recording { .. } = super::next_control(ws).await {
            return message;
        }
    }
}
