//! Property tests: JSON round trips of every message type, and parsing and validation never
//! panic on arbitrary or mutated input; the same for the node-to-node link's messages.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, TestRunner};
use strum::VariantArray;

use mixer_protocol::link::{
    LINK_HEADER_LEN, LinkAttach, LinkClaims, LinkDetach, LinkError, LinkHeader, LinkIdentity,
    LinkKind, close_body, parse_attach, parse_close, parse_detach, parse_stream,
};
use mixer_protocol::{
    AudioFormat, ClientMessage, ControlError, ErrorCode, FloorEndReason, FloorInfo, FloorPolicy,
    JoinRequest, LeaveReason, MAX_CHAT_CHARS, MAX_CONTROL_MESSAGE, MAX_ROOM_LEN, Mode,
    ParticipantInfo, Role, RoomSettings, RoomSummary, ServerMessage, parse_client_message,
    parse_server_message, validate_chat,
};

use crate::support::{client_samples, join};

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Talk), Just(Mode::Ptt), Just(Mode::Listen)]
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Speaker),
        Just(Role::Listener),
        Just(Role::Moderator)
    ]
}

fn arb_floor() -> impl Strategy<Value = FloorInfo> {
    (arb_floor_policy(), any::<Option<u32>>())
        .prop_map(|(policy, holder)| FloorInfo { policy, holder })
}

fn arb_floor_end() -> impl Strategy<Value = FloorEndReason> {
    prop_oneof![
        Just(FloorEndReason::Released),
        Just(FloorEndReason::MaxTalkTime),
        Just(FloorEndReason::Silence),
        Just(FloorEndReason::Left),
        Just(FloorEndReason::Preempted),
    ]
}

fn arb_format() -> impl Strategy<Value = AudioFormat> {
    (any::<String>(), any::<u32>(), any::<u8>(), any::<u32>()).prop_map(
        |(codec, sample_rate, channels, frame_ms)| AudioFormat {
            codec,
            sample_rate,
            channels,
            frame_ms,
        },
    )
}

fn arb_participant() -> impl Strategy<Value = ParticipantInfo> {
    (
        any::<u32>(),
        any::<String>(),
        arb_mode(),
        arb_role(),
        any::<bool>(),
    )
        .prop_map(|(id, name, mode, role, muted)| ParticipantInfo {
            id,
            name,
            mode,
            role,
            muted,
        })
}

fn arb_floor_policy() -> impl Strategy<Value = FloorPolicy> {
    prop_oneof![Just(FloorPolicy::Open), Just(FloorPolicy::Single)]
}

/// Settings with each field present or not, and the room name and numbers anything.
fn arb_room_settings() -> impl Strategy<Value = RoomSettings> {
    (
        any::<String>(),
        proptest::option::of(arb_floor_policy()),
        any::<Option<u32>>(),
        any::<Option<u32>>(),
        any::<Option<bool>>(),
        any::<Option<u64>>(),
        any::<Option<u32>>(),
    )
        .prop_map(
            |(
                room,
                floor_policy,
                max_participants,
                max_talkers,
                normalise,
                max_talk_ms,
                frame_ms,
            )| {
                RoomSettings {
                    room,
                    floor_policy,
                    max_participants,
                    max_talkers,
                    normalise,
                    max_talk_ms,
                    frame_ms,
                }
            },
        )
}

fn arb_room_summary() -> impl Strategy<Value = RoomSummary> {
    (arb_room_settings(), any::<u32>()).prop_map(|(settings, participants)| RoomSummary {
        settings,
        participants,
    })
}

fn arb_client() -> impl Strategy<Value = ClientMessage> {
    let join = (
        any::<String>(),
        any::<String>(),
        any::<Option<String>>(),
        proptest::option::of(arb_mode()),
        any::<Option<String>>(),
        proptest::option::of(arb_role()),
        arb_format(),
    )
        .prop_map(|(room, name, token, mode, resume, role, format)| {
            ClientMessage::Join(JoinRequest {
                room,
                name,
                token,
                mode,
                resume,
                role,
                format,
            })
        });
    prop_oneof![
        join,
        Just(ClientMessage::Leave),
        any::<Option<u64>>().prop_map(|id| ClientMessage::Ping { id }),
        arb_mode().prop_map(|mode| ClientMessage::SetMode { mode }),
        (any::<Option<u32>>(), any::<bool>()).prop_map(|(participant_id, muted)| {
            ClientMessage::Mute {
                participant_id,
                muted,
            }
        }),
        any::<bool>().prop_map(|muted| ClientMessage::MuteRoom { muted }),
        any::<bool>().prop_map(|preempt| ClientMessage::FloorRequest { preempt }),
        Just(ClientMessage::FloorRelease),
        any::<u32>().prop_map(|participant_id| ClientMessage::Remove { participant_id }),
        (any::<u32>(), any::<i32>()).prop_map(|(participant_id, gain_db)| {
            ClientMessage::SetGain {
                participant_id,
                gain_db,
            }
        }),
        any::<String>().prop_map(|text| ClientMessage::Chat { text }),
        arb_room_settings().prop_map(ClientMessage::CreateRoom),
        any::<String>().prop_map(|room| ClientMessage::RoomInfo { room }),
        Just(ClientMessage::ListRooms),
        any::<bool>().prop_map(|recording| ClientMessage::Record { recording }),
    ]
}

fn arb_reason() -> impl Strategy<Value = LeaveReason> {
    prop_oneof![
        Just(LeaveReason::Left),
        Just(LeaveReason::Disconnected),
        Just(LeaveReason::TimedOut),
        Just(LeaveReason::SlowConsumer),
        Just(LeaveReason::ServerShutdown),
        Just(LeaveReason::Removed),
    ]
}

fn arb_link_kind() -> impl Strategy<Value = LinkKind> {
    prop::sample::select(LinkKind::ALL.as_slice())
}

fn arb_link_attach() -> impl Strategy<Value = LinkAttach> {
    let identity = prop_oneof![
        any::<String>().prop_map(LinkIdentity::Token),
        any::<String>().prop_map(LinkIdentity::Name),
    ];
    (
        (
            identity,
            any::<String>(),
            arb_role(),
            proptest::option::of(arb_mode()),
        ),
        (
            arb_format(),
            any::<IpAddr>(),
            any::<Option<String>>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((identity, name, role, mode), (format, address, resume, rejoin))| LinkAttach {
                identity,
                name,
                role,
                mode,
                format,
                address,
                resume,
                rejoin,
            },
        )
}

fn arb_link_detach() -> impl Strategy<Value = LinkDetach> {
    (prop::sample::select(LeaveReason::VARIANTS), any::<bool>())
        .prop_map(|(reason, suspend)| LinkDetach { reason, suspend })
}

/// Runs every link parser on `bytes`, as a whole message and as a body, checking each answer
/// against what the spec allows.
fn parse_link(bytes: &[u8]) -> Result<(), TestCaseError> {
    match LinkHeader::parse(bytes) {
        Ok(header) => {
            prop_assert!(bytes.len() >= LINK_HEADER_LEN);
            prop_assert_eq!(&header.to_bytes()[..], &bytes[..LINK_HEADER_LEN]);
        }
        Err(LinkError::Short(len)) => {
            prop_assert!(len < LINK_HEADER_LEN);
            prop_assert_eq!(len, bytes.len());
        }
        Err(LinkError::UnknownKind(byte)) => {
            prop_assert_eq!(Some(&byte), bytes.first());
            prop_assert_eq!(LinkKind::from_byte(byte), None);
        }
        Err(err) => prop_assert!(false, "a header is never a body error: {}", err),
    }
    for body in [bytes, bytes.get(LINK_HEADER_LEN..).unwrap_or_default()] {
        let errors = [
            parse_attach(body).err(),
            parse_detach(body).err(),
            parse_close(body).err(),
            parse_stream(body).err(),
        ];
        for err in errors.into_iter().flatten() {
            prop_assert!(matches!(err, LinkError::Body { .. }), "{:?}", err);
            prop_assert!(!err.to_string().is_empty());
        }
        match parse_close(body) {
            Ok((code, reason)) => {
                prop_assert_eq!(close_body(code, reason), body);
            }
            Err(_) => prop_assert!(body.len() < 2 || std::str::from_utf8(&body[2..]).is_err()),
        }
        prop_assert_eq!(parse_stream(body).is_ok(), body == [0] || body == [1]);
    }
    Ok(())
}

fn arb_server() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (
            any::<u32>(),
            any::<String>(),
            proptest::collection::vec(arb_participant(), 0..5),
            arb_format(),
            arb_floor(),
            any::<Option<String>>(),
            any::<bool>(),
            any::<Option<u64>>(),
        )
            .prop_map(
                |(
                    participant_id,
                    room,
                    participants,
                    format,
                    floor,
                    resume_token,
                    resumed,
                    replay_ms,
                )| {
                    ServerMessage::Joined {
                        participant_id,
                        room,
                        participants,
                        format,
                        floor,
                        resume_token,
                        resumed,
                        replay_ms,
                    }
                },
            ),
        arb_participant().prop_map(|participant| ServerMessage::ParticipantJoined { participant }),
        (any::<u32>(), arb_reason()).prop_map(|(participant_id, reason)| {
            ServerMessage::ParticipantLeft {
                participant_id,
                reason,
            }
        }),
        (
            proptest::sample::select(ErrorCode::ALL.to_vec()),
            any::<String>()
        )
            .prop_map(|(code, message)| ServerMessage::error(code, message)),
        any::<Option<u64>>().prop_map(|id| ServerMessage::Pong { id }),
        (any::<u32>(), arb_mode()).prop_map(|(participant_id, mode)| {
            ServerMessage::ModeChanged {
                participant_id,
                mode,
            }
        }),
        (any::<u32>(), any::<bool>(), any::<Option<u32>>()).prop_map(
            |(participant_id, muted, by)| ServerMessage::ParticipantMuted {
                participant_id,
                muted,
                by,
            }
        ),
        (
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(any::<u32>(), 0..5)
        )
            .prop_map(|(muted, by, participant_ids)| ServerMessage::RoomMuted {
                muted,
                by,
                participant_ids,
            }),
        (any::<u32>(), any::<Option<u64>>()).prop_map(|(participant_id, max_talk_ms)| {
            ServerMessage::FloorGranted {
                participant_id,
                max_talk_ms,
            }
        }),
        any::<u32>().prop_map(|holder| ServerMessage::FloorDenied { holder }),
        (any::<u32>(), arb_floor_end(), any::<Option<u32>>()).prop_map(
            |(participant_id, reason, by)| ServerMessage::FloorReleased {
                participant_id,
                reason,
                by,
            }
        ),
        any::<u32>().prop_map(|participant_id| ServerMessage::TalkingStarted { participant_id }),
        any::<u32>().prop_map(|participant_id| ServerMessage::TalkingStopped { participant_id }),
        Just(ServerMessage::CaughtUp),
        (any::<u32>(), any::<i32>(), any::<u32>()).prop_map(|(participant_id, gain_db, by)| {
            ServerMessage::GainChanged {
                participant_id,
                gain_db,
                by,
            }
        }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<String>(),
            any::<String>(),
            any::<u64>()
        )
            .prop_map(|(id, from, name, text, ts_ms)| ServerMessage::Chat {
                id,
                from,
                name,
                text,
                ts_ms,
            }),
        arb_room_summary().prop_map(ServerMessage::RoomInfo),
        (
            proptest::collection::vec(arb_room_summary(), 0..4),
            any::<bool>()
        )
            .prop_map(|(rooms, truncated)| ServerMessage::Rooms { rooms, truncated }),
        (
            ".*",
            ".*",
            prop_oneof![
                Just(mixer_protocol::RedirectReason::OtherNode),
                Just(mixer_protocol::RedirectReason::Moved),
                Just(mixer_protocol::RedirectReason::LeaseLost)
            ],
            proptest::option::of("[0-9a-f]{32}")
        )
            .prop_map(
                |(room, url, reason, resume_token)| ServerMessage::Redirect {
                    room,
                    url,
                    reason,
                    resume_token,
                }
            ),
        (
            any::<bool>(),
            "[a-z0-9-]{1,20}\\.opus",
            proptest::option::of(any::<u32>()),
            proptest::option::of(proptest::sample::select(
                <mixer_protocol::RecordingEnd as strum::VariantArray>::VARIANTS
            ))
        )
            .prop_map(|(recording, file, by, reason)| ServerMessage::Recording {
                recording,
                file,
                by,
                reason,
            }),
    ]
}

/// Runs the checks the server makes on a parsed message, which must not panic either.
fn validate_client(msg: &ClientMessage) {
    let result = match msg {
        ClientMessage::Join(req) => req.validate(),
        ClientMessage::Chat { text } => validate_chat(text),
        ClientMessage::CreateRoom(settings) => settings.validate(256, 16),
        ClientMessage::RoomInfo { room } => JoinRequest::validate_room_name(room),
        _ => Ok(()),
    };
    if let Err(err) = result {
        let _ = (err.code(), err.to_string());
    }
}

/// The `"type"`s `strategy` produces in 2000 deterministic draws.
fn drawn_types<T: fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    type_name: impl Fn(&T) -> &'static str,
) -> BTreeSet<&'static str> {
    let mut runner = TestRunner::deterministic();
    (0..2000)
        .map(|_| {
            let value = strategy.new_tree(&mut runner).expect("draw").current();
            type_name(&value)
        })
        .collect()
}

/// The round-trip properties below see every message type.
#[test]
fn strategies_cover_every_type() {
    assert_eq!(
        drawn_types(arb_client(), ClientMessage::type_name),
        ClientMessage::TYPES.iter().copied().collect()
    );
    assert_eq!(
        drawn_types(arb_server(), ServerMessage::type_name),
        ServerMessage::TYPES.iter().copied().collect()
    );
}

proptest! {
    // Proptest's default looks for `lib.rs` or `main.rs` above the test's source to find a
    // `proptest-regressions/` folder, finds neither above `tests/`, and falls back with a warning;
    // so say where: next to this file, as `properties.txt`.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("txt"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn client_json_round_trip(msg in arb_client()) {
        let json = msg.to_json();
        prop_assert!(ClientMessage::TYPES.contains(&msg.type_name()));
        // A message over the size limit is rejected; all others parse back unchanged.
        if json.len() <= MAX_CONTROL_MESSAGE {
            prop_assert_eq!(parse_client_message(&json), Ok(msg));
        } else {
            prop_assert_eq!(
                parse_client_message(&json),
                Err(ControlError::TooLarge { len: json.len() })
            );
        }
    }

    #[test]
    fn server_json_round_trip(msg in arb_server()) {
        prop_assert!(ServerMessage::TYPES.contains(&msg.type_name()));
        prop_assert_eq!(parse_server_message(&msg.to_json()), Ok(msg));
    }

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        if let Err(err) = parse_client_message(&text) {
            let _ = (err.code(), err.to_string());
        }
        if let Err(err) = parse_server_message(&text) {
            let _ = (err.code(), err.to_string());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_client_message(&text);
        let _ = parse_server_message(&text);
    }

    #[test]
    fn json_like_text_never_panics(
        text in concat!(
            r#"\{("(type|id|room|name|format|mode|role|token|code|participant_id|muted|"#,
            r#"preempt|gain_db|holder|by|reason|floor|policy|max_talk_ms|text|from|ts_ms|"#,
            r#"floor_policy|max_participants|max_talkers|normalise|participants|rooms|"#,
            r#"truncated|participant_ids)":"#,
            r#"("[a-z_]{0,13}"|-?[0-9]{1,22}|null|true|false|\[\]|\{\}),?){0,6}\}"#,
        ),
    ) {
        match parse_client_message(&text) {
            Ok(msg) => validate_client(&msg),
            Err(err) => { let _ = (err.code(), err.to_string()); }
        }
        let _ = parse_server_message(&text);
    }

    #[test]
    fn mutated_valid_message_never_panics(
        which in any::<prop::sample::Index>(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let samples = client_samples();
        let mut bytes = which.get(&samples).to_json().into_bytes();
        let i = index.index(bytes.len());
        bytes[i] = byte;
        let text = String::from_utf8_lossy(&bytes);
        match parse_client_message(&text) {
            Ok(msg) => validate_client(&msg),
            Err(err) => { let _ = (err.code(), err.to_string()); }
        }
    }

    /// `validate_chat` accepts exactly the texts the spec describes.
    #[test]
    fn validate_chat_agrees_with_spec(
        text in prop_oneof![
            any::<String>(),
            "[ a\n\t\r\u{7}\u{85}\u{3000}é😀]{0,8}",
            "[a😀]{995,1005}",
        ],
    ) {
        let spec_ok = !text.trim().is_empty()
            && text.chars().count() <= MAX_CHAT_CHARS
            && text.chars().all(|c| !c.is_control() || c == '\n' || c == '\t');
        match validate_chat(&text) {
            Ok(()) => prop_assert!(spec_ok, "{:?}", text),
            Err(err) => {
                prop_assert!(!spec_ok, "{:?}: {}", text, err);
                prop_assert_eq!(err.code(), ErrorCode::InvalidChat);
                // The message never quotes the text, which could be long.
                prop_assert!(err.to_string().len() < 128, "{}", err);
            }
        }
    }

    /// `RoomSettings::validate` accepts exactly the ranges the spec gives.
    #[test]
    fn validate_room_settings_agrees_with_spec(
        room in arb_room_settings(),
        server_participants in 1..300u32,
        server_talkers in 1..20u32,
        small in (
            proptest::option::of(0..300u32),
            proptest::option::of(0..20u32),
            proptest::option::of(0..4_000_000u64),
        ),
    ) {
        // Half the draws have a valid name and numbers near the bounds.
        let (participants, talkers, talk_ms) = small;
        let room = if room.room.len() % 2 == 0 {
            RoomSettings {
                room: "ch1".to_owned(),
                max_participants: participants,
                max_talkers: talkers,
                max_talk_ms: talk_ms,
                ..room
            }
        } else {
            room
        };
        let name_ok = JoinRequest::validate_room_name(&room.room).is_ok();
        let in_range = |value: Option<u64>, high: u64, low: u64| {
            value.is_none_or(|v| (low..=high).contains(&v))
        };
        let settings_ok = in_range(
            room.max_participants.map(u64::from),
            server_participants.into(),
            1,
        ) && in_range(room.max_talkers.map(u64::from), server_talkers.into(), 1)
            && in_range(room.max_talk_ms, 3_600_000, 1_000)
            && room.frame_ms.is_none_or(|ms| [20, 10, 5].contains(&ms));
        let expected = match (name_ok, settings_ok) {
            (false, _) => Err(ErrorCode::InvalidRoom),
            (true, false) => Err(ErrorCode::InvalidSettings),
            (true, true) => Ok(()),
        };
        prop_assert_eq!(
            room.validate(server_participants, server_talkers).map_err(|e| e.code()),
            expected
        );
    }

    #[test]
    fn validate_never_panics(room in any::<String>(), name in any::<String>()) {
        match join(&room, &name).validate() {
            Ok(()) => {
                prop_assert!(!room.is_empty() && room.len() <= MAX_ROOM_LEN);
                // An empty name is the token's business (a server with keys takes the name from
                // the token; an open one refuses it when it normalises the name); any other
                // name must normalise to something non-empty.
                prop_assert!(name.is_empty() || !name.trim().is_empty());
            }
            Err(err) => prop_assert!(err.to_string().len() < 512, "{}", err),
        }
    }

    // The node-to-node link.

    #[test]
    fn link_header_round_trips(
        kind in arb_link_kind(),
        session in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let header = LinkHeader { kind, session };
        let message = header.message(&body);
        prop_assert_eq!(message.len(), LINK_HEADER_LEN + body.len());
        prop_assert_eq!(message[0], kind as u8);
        prop_assert_eq!(&message[1..LINK_HEADER_LEN], &session.to_be_bytes()[..]);
        prop_assert_eq!(LinkHeader::parse(&message), Ok(header));
        prop_assert_eq!(&message[LINK_HEADER_LEN..], &body[..]);
        prop_assert_eq!(kind.is_up(), (kind as u8) < 0x80);
        prop_assert_eq!(LinkKind::from_byte(kind as u8), Some(kind));
    }

    #[test]
    fn link_parsers_never_panic(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            // A known kind's byte first, so the header parses and the rest is a body.
            (arb_link_kind(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(
                |(kind, mut rest)| { rest.insert(0, kind as u8); rest }
            ),
        ],
    ) {
        parse_link(&bytes)?;
    }

    #[test]
    fn link_json_like_bodies_never_panic(
        text in concat!(
            r#"\{("(identity|kind|value|name|role|mode|format|codec|sample_rate|channels|"#,
            r#"frame_ms|address|resume|rejoin|reason|suspend)":"#,
            r#"("[a-z0-9:._]{0,12}"|-?[0-9]{1,12}|null|true|false|\[\]|\{\}),?){0,8}\}"#,
        ),
    ) {
        parse_link(text.as_bytes())?;
    }

    #[test]
    fn mutated_link_message_never_panics(
        attach in arb_link_attach(),
        detach in arb_link_detach(),
        which in any::<prop::sample::Index>(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let bodies = [
            serde_json::to_vec(&attach).expect("serializes"),
            serde_json::to_vec(&detach).expect("serializes"),
            close_body(1008, "removed"),
            vec![1],
        ];
        let mut body = which.get(&bodies).clone();
        let i = index.index(body.len());
        body[i] = byte;
        parse_link(&body)?;
    }

    #[test]
    fn link_attach_round_trips(attach in arb_link_attach()) {
        let json = serde_json::to_vec(&attach).expect("serializes");
        prop_assert_eq!(parse_attach(&json), Ok(attach));
    }

    #[test]
    fn link_detach_round_trips(detach in arb_link_detach()) {
        let json = serde_json::to_vec(&detach).expect("serializes");
        prop_assert_eq!(parse_detach(&json), Ok(detach));
    }

    #[test]
    fn link_close_round_trips(code in any::<u16>(), reason in any::<String>()) {
        let body = close_body(code, &reason);
        prop_assert_eq!(&body[..2], &code.to_be_bytes()[..]);
        prop_assert_eq!(parse_close(&body), Ok((code, reason.as_str())));
    }

    #[test]
    fn link_claims_round_trip(
        (iss, aud, room) in (any::<String>(), any::<String>(), any::<String>()),
        hops in any::<u8>(),
        (iat, exp) in (any::<u64>(), any::<u64>()),
    ) {
        let claims = LinkClaims { iss, aud, room, hops, iat, exp };
        let json = serde_json::to_string(&claims).expect("serializes");
        prop_assert_eq!(serde_json::from_str::<LinkClaims>(&json).ok(), Some(claims));
    }
}
