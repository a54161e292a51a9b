//! Golden tests: exact JSON for each message, parsed and serialized, including defaults,
//! `null` and unknown fields; and the exact bytes of the node-to-node link's messages.

use mixer_protocol::link::{
    LINK_AUDIENCE, LINK_HEADER_LEN, LinkAttach, LinkClaims, LinkDetach, LinkHeader, LinkIdentity,
    LinkKind, close_body, parse_attach, parse_close, parse_detach, parse_stream,
};
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, AudioLevel, ClientMessage, ErrorCode, Flags,
    FloorEndReason, FloorInfo, FloorPolicy, JoinRequest, LeaveReason, Mode, ParticipantInfo, Role,
    RoomSettings, RoomSummary, ServerMessage, control::MAX_RESUME_TOKEN_LEN, parse_client_message,
    parse_server_message,
};

use crate::support::{
    FORMAT_JSON, golden_client, golden_server, join, joined, participant, settings, summary,
};

#[test]
fn golden_resume() {
    golden_client(
        &format!(
            r#"{{"type":"join","room":"lobby","name":"Ada","resume":"00ff","format":{FORMAT_JSON}}}"#
        ),
        ClientMessage::Join(JoinRequest {
            resume: Some("00ff".to_owned()),
            ..join("lobby", "Ada")
        }),
    );
    let ServerMessage::Joined { floor, .. } = joined(vec![], FloorInfo::default()) else {
        unreachable!()
    };
    golden_server(
        &format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"open"}},"resume_token":"ab12","resumed":true}}"#
        ),
        ServerMessage::Joined {
            participant_id: 2,
            room: "lobby".to_owned(),
            participants: vec![],
            format: AudioFormat::opus_48k_mono_20ms(),
            floor,
            resume_token: Some("ab12".to_owned()),
            resumed: true,
            replay_ms: None,
        },
    );
    for bad in ["", "xyz", &"a".repeat(MAX_RESUME_TOKEN_LEN + 1)] {
        let request = JoinRequest {
            resume: Some(bad.to_owned()),
            ..join("lobby", "Ada")
        };
        assert_eq!(
            request.validate().map_err(|e| e.code()),
            Err(ErrorCode::InvalidToken),
            "{bad:?}"
        );
    }
}

#[test]
fn golden_join() {
    golden_client(
        &format!(
            r#"{{"type":"join","room":"lobby","name":"Ada","mode":"talk","format":{FORMAT_JSON}}}"#
        ),
        ClientMessage::Join(JoinRequest {
            mode: Some(Mode::Talk),
            ..join("lobby", "Ada")
        }),
    );
    golden_client(
        &format!(r#"{{"type":"join","room":"lobby","name":"Ada","format":{FORMAT_JSON}}}"#),
        ClientMessage::Join(join("lobby", "Ada")),
    );
    golden_client(
        &format!(
            r#"{{"type":"join","room":"r-1","name":"Bob","token":"t0k","mode":"listen","role":"listener","format":{FORMAT_JSON}}}"#
        ),
        ClientMessage::Join(JoinRequest {
            token: Some("t0k".to_owned()),
            mode: Some(Mode::Listen),
            role: Some(Role::Listener),
            ..join("r-1", "Bob")
        }),
    );
    golden_client(
        &format!(
            r#"{{"type":"join","room":"ops","name":"Cy","mode":"ptt","role":"moderator","format":{FORMAT_JSON}}}"#
        ),
        ClientMessage::Join(JoinRequest {
            mode: Some(Mode::Ptt),
            role: Some(Role::Moderator),
            ..join("ops", "Cy")
        }),
    );
}

#[test]
fn join_defaults_and_unknown_fields() {
    let json = r#"{"type":"join","room":"lobby","name":"Ada","future":[1,2],
        "format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20,"x":true}}"#;
    let Ok(ClientMessage::Join(req)) = parse_client_message(json) else {
        panic!("expected a join");
    };
    assert_eq!(req.mode, None);
    assert_eq!(req.mode_or_default(FloorPolicy::Open), Mode::Talk);
    assert_eq!(req.mode_or_default(FloorPolicy::Single), Mode::Ptt);
    assert_eq!(req.role, None);
    let listener = JoinRequest {
        role: Some(Role::Listener),
        ..req.clone()
    };
    assert_eq!(listener.mode_or_default(FloorPolicy::Open), Mode::Listen);
    let moderator = JoinRequest {
        role: Some(Role::Moderator),
        ..req.clone()
    };
    assert_eq!(moderator.mode_or_default(FloorPolicy::Single), Mode::Talk);
    let explicit = JoinRequest {
        mode: Some(Mode::Listen),
        ..req.clone()
    };
    assert_eq!(explicit.mode_or_default(FloorPolicy::Single), Mode::Listen);
    assert_eq!(req, join("lobby", "Ada"));
    let json =
        format!(r#"{{"type":"join","room":"a","name":"b","token":null,"format":{FORMAT_JSON}}}"#);
    assert_eq!(
        parse_client_message(&json),
        Ok(ClientMessage::Join(join("a", "b")))
    );
}

/// "Optional fields may be omitted or `null`": `null` reads as the default everywhere.
#[test]
fn null_optional_fields_mean_default() {
    let json = format!(
        r#"{{"type":"join","room":"a","name":"b","token":null,"mode":null,"role":null,"format":{FORMAT_JSON}}}"#
    );
    assert_eq!(
        parse_client_message(&json),
        Ok(ClientMessage::Join(join("a", "b")))
    );
    assert_eq!(
        parse_client_message(r#"{"type":"floor_request","preempt":null}"#),
        Ok(ClientMessage::FloorRequest { preempt: false })
    );
    let json = format!(
        r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk","role":null,"muted":null}}],"format":{FORMAT_JSON},"floor":null}}"#
    );
    assert_eq!(
        parse_server_message(&json),
        Ok(joined(
            vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
            FloorInfo::default()
        ))
    );
    for json in [
        r#"{"type":"participant_muted","participant_id":2,"muted":true,"by":null}"#,
        r#"{"type":"floor_granted","participant_id":2,"max_talk_ms":null}"#,
        r#"{"type":"floor_released","participant_id":2,"reason":"released","by":null}"#,
    ] {
        let msg = parse_server_message(json).expect(json);
        assert_eq!(
            msg.to_json(),
            json.replace(r#","by":null"#, "")
                .replace(r#","max_talk_ms":null"#, "")
        );
    }
}

#[test]
fn golden_leave_and_ping() {
    golden_client(r#"{"type":"leave"}"#, ClientMessage::Leave);
    golden_client(r#"{"type":"ping"}"#, ClientMessage::Ping { id: None });
    golden_client(
        r#"{"type":"ping","id":18446744073709551615}"#,
        ClientMessage::Ping { id: Some(u64::MAX) },
    );
    assert_eq!(
        parse_client_message(r#"{"type":"ping","id":null}"#),
        Ok(ClientMessage::Ping { id: None })
    );
}

#[test]
fn golden_set_mode() {
    for mode in [Mode::Talk, Mode::Ptt, Mode::Listen] {
        golden_client(
            &format!(r#"{{"type":"set_mode","mode":"{}"}}"#, mode.as_str()),
            ClientMessage::SetMode { mode },
        );
    }
}

#[test]
fn golden_mute_and_mute_room() {
    golden_client(
        r#"{"type":"mute","muted":true}"#,
        ClientMessage::Mute {
            participant_id: None,
            muted: true,
        },
    );
    golden_client(
        r#"{"type":"mute","participant_id":3,"muted":false}"#,
        ClientMessage::Mute {
            participant_id: Some(3),
            muted: false,
        },
    );
    assert_eq!(
        parse_client_message(r#"{"type":"mute","participant_id":null,"muted":true}"#),
        Ok(ClientMessage::Mute {
            participant_id: None,
            muted: true
        })
    );
    golden_client(
        r#"{"type":"mute_room","muted":true}"#,
        ClientMessage::MuteRoom { muted: true },
    );
    golden_client(
        r#"{"type":"mute_room","muted":false}"#,
        ClientMessage::MuteRoom { muted: false },
    );
}

#[test]
fn golden_floor_request_and_release() {
    golden_client(
        r#"{"type":"floor_request"}"#,
        ClientMessage::FloorRequest { preempt: false },
    );
    golden_client(
        r#"{"type":"floor_request","preempt":true}"#,
        ClientMessage::FloorRequest { preempt: true },
    );
    // An explicit `false` is accepted, and left out when serialized.
    assert_eq!(
        parse_client_message(r#"{"type":"floor_request","preempt":false}"#),
        Ok(ClientMessage::FloorRequest { preempt: false })
    );
    golden_client(r#"{"type":"floor_release"}"#, ClientMessage::FloorRelease);
}

#[test]
fn golden_remove_and_set_gain() {
    golden_client(
        r#"{"type":"remove","participant_id":3}"#,
        ClientMessage::Remove { participant_id: 3 },
    );
    golden_client(
        r#"{"type":"set_gain","participant_id":3,"gain_db":-6}"#,
        ClientMessage::SetGain {
            participant_id: 3,
            gain_db: -6,
        },
    );
    golden_client(
        r#"{"type":"set_gain","participant_id":4294967295,"gain_db":20}"#,
        ClientMessage::SetGain {
            participant_id: u32::MAX,
            gain_db: 20,
        },
    );
    // The range (-20..=20) is the server's to check, with `invalid_gain`: any i32 parses.
    assert_eq!(
        parse_client_message(r#"{"type":"set_gain","participant_id":3,"gain_db":-100}"#),
        Ok(ClientMessage::SetGain {
            participant_id: 3,
            gain_db: -100
        })
    );
}

#[test]
fn golden_joined() {
    golden_server(
        &format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk","role":"speaker"}}],"format":{FORMAT_JSON},"floor":{{"policy":"open"}}}}"#
        ),
        joined(
            vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
            FloorInfo::default(),
        ),
    );
    golden_server(
        &format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"ptt","role":"moderator"}},{{"id":3,"name":"Cy","mode":"ptt","role":"speaker","muted":true}}],"format":{FORMAT_JSON},"floor":{{"policy":"single","holder":1}}}}"#
        ),
        joined(
            vec![
                participant(1, "Ada", Mode::Ptt, Role::Moderator),
                ParticipantInfo {
                    muted: true,
                    ..participant(3, "Cy", Mode::Ptt, Role::Speaker)
                },
            ],
            FloorInfo {
                policy: FloorPolicy::Single,
                holder: Some(1),
            },
        ),
    );
    golden_server(
        &format!(
            r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"single"}}}}"#
        ),
        joined(
            vec![],
            FloorInfo {
                policy: FloorPolicy::Single,
                holder: None,
            },
        ),
    );
}

/// A `joined` from a server that predates floors, and participants without `role` or `muted`.
#[test]
fn joined_defaults() {
    let json = format!(
        r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[{{"id":1,"name":"Ada","mode":"talk"}}],"format":{FORMAT_JSON}}}"#
    );
    let msg = parse_server_message(&json).expect("old joined");
    assert_eq!(
        msg,
        joined(
            vec![participant(1, "Ada", Mode::Talk, Role::Speaker)],
            FloorInfo {
                policy: FloorPolicy::Open,
                holder: None
            },
        )
    );
    let ServerMessage::Joined {
        participants,
        floor,
        ..
    } = msg
    else {
        unreachable!();
    };
    assert_eq!(participants[0].role, Role::Speaker);
    assert!(!participants[0].muted);
    assert_eq!(floor.policy, FloorPolicy::Open);
    assert_eq!(floor.holder, None);
    let with_null_holder = format!(
        r#"{{"type":"joined","participant_id":2,"room":"lobby","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"single","holder":null,"x":1}}}}"#
    );
    assert_eq!(
        parse_server_message(&with_null_holder),
        Ok(joined(
            vec![],
            FloorInfo {
                policy: FloorPolicy::Single,
                holder: None
            }
        ))
    );
}

#[test]
fn golden_participant_events() {
    golden_server(
        r#"{"type":"participant_joined","participant":{"id":3,"name":"Cy","mode":"listen","role":"listener"}}"#,
        ServerMessage::ParticipantJoined {
            participant: participant(3, "Cy", Mode::Listen, Role::Listener),
        },
    );
    golden_server(
        r#"{"type":"participant_joined","participant":{"id":4,"name":"Di","mode":"ptt","role":"moderator","muted":true}}"#,
        ServerMessage::ParticipantJoined {
            participant: ParticipantInfo {
                muted: true,
                ..participant(4, "Di", Mode::Ptt, Role::Moderator)
            },
        },
    );
    let reasons = [
        (LeaveReason::Left, "left"),
        (LeaveReason::Disconnected, "disconnected"),
        (LeaveReason::TimedOut, "timed_out"),
        (LeaveReason::SlowConsumer, "slow_consumer"),
        (LeaveReason::ServerShutdown, "server_shutdown"),
        (LeaveReason::Removed, "removed"),
    ];
    for (reason, name) in reasons {
        golden_server(
            &format!(r#"{{"type":"participant_left","participant_id":3,"reason":"{name}"}}"#),
            ServerMessage::ParticipantLeft {
                participant_id: 3,
                reason,
            },
        );
    }
}

#[test]
fn golden_error_and_pong() {
    golden_server(
        r#"{"type":"error","code":"room_full","message":"room \"lobby\" is full"}"#,
        ServerMessage::error(ErrorCode::RoomFull, "room \"lobby\" is full"),
    );
    golden_server(
        r#"{"type":"error","code":"removed","message":"removed from the room by moderator 1"}"#,
        ServerMessage::error(ErrorCode::Removed, "removed from the room by moderator 1"),
    );
    golden_server(
        r#"{"type":"error","code":"control_rate_limited","message":"control messages over budget; dropped set_mode"}"#,
        ServerMessage::error(
            ErrorCode::ControlRateLimited,
            "control messages over budget; dropped set_mode",
        ),
    );
    golden_server(
        r#"{"type":"error","code":"server_busy","message":"room \"lobby\" is busy; mute not applied"}"#,
        ServerMessage::error(
            ErrorCode::ServerBusy,
            "room \"lobby\" is busy; mute not applied",
        ),
    );
    // Both keep the connection open.
    assert_eq!(ErrorCode::ControlRateLimited.close_code(), None);
    assert_eq!(ErrorCode::ServerBusy.close_code(), None);
    golden_server(r#"{"type":"pong"}"#, ServerMessage::Pong { id: None });
    golden_server(
        r#"{"type":"pong","id":7}"#,
        ServerMessage::Pong { id: Some(7) },
    );
}

#[test]
fn golden_mode_changed_and_participant_muted() {
    for mode in [Mode::Talk, Mode::Ptt, Mode::Listen] {
        golden_server(
            &format!(
                r#"{{"type":"mode_changed","participant_id":2,"mode":"{}"}}"#,
                mode.as_str()
            ),
            ServerMessage::ModeChanged {
                participant_id: 2,
                mode,
            },
        );
    }
    golden_server(
        r#"{"type":"participant_muted","participant_id":2,"muted":true}"#,
        ServerMessage::ParticipantMuted {
            participant_id: 2,
            muted: true,
            by: None,
        },
    );
    golden_server(
        r#"{"type":"participant_muted","participant_id":2,"muted":false,"by":1}"#,
        ServerMessage::ParticipantMuted {
            participant_id: 2,
            muted: false,
            by: Some(1),
        },
    );
}

#[test]
fn golden_room_muted() {
    golden_server(
        r#"{"type":"room_muted","muted":true,"by":7,"participant_ids":[1,2,3]}"#,
        ServerMessage::RoomMuted {
            muted: true,
            by: 7,
            participant_ids: vec![1, 2, 3],
        },
    );
    golden_server(
        r#"{"type":"room_muted","muted":false,"by":1,"participant_ids":[4294967295]}"#,
        ServerMessage::RoomMuted {
            muted: false,
            by: 1,
            participant_ids: vec![u32::MAX],
        },
    );
    // Nobody's state changed: the room still hears of the request, with an empty list.
    golden_server(
        r#"{"type":"room_muted","muted":true,"by":7,"participant_ids":[]}"#,
        ServerMessage::RoomMuted {
            muted: true,
            by: 7,
            participant_ids: vec![],
        },
    );
    // Not a client message: a client sends `mute_room`.
    assert_eq!(
        parse_client_message(r#"{"type":"room_muted","muted":true,"by":7,"participant_ids":[]}"#)
            .map_err(|e| e.code()),
        Err(ErrorCode::UnknownType)
    );
}

#[test]
fn golden_floor_events() {
    golden_server(
        r#"{"type":"floor_granted","participant_id":2,"max_talk_ms":60000}"#,
        ServerMessage::FloorGranted {
            participant_id: 2,
            max_talk_ms: Some(60_000),
        },
    );
    golden_server(
        r#"{"type":"floor_granted","participant_id":2}"#,
        ServerMessage::FloorGranted {
            participant_id: 2,
            max_talk_ms: None,
        },
    );
    golden_server(
        r#"{"type":"floor_denied","holder":1}"#,
        ServerMessage::FloorDenied { holder: 1 },
    );
    let reasons = [
        (FloorEndReason::Released, "released"),
        (FloorEndReason::MaxTalkTime, "max_talk_time"),
        (FloorEndReason::Silence, "silence"),
        (FloorEndReason::Left, "left"),
    ];
    for (reason, name) in reasons {
        golden_server(
            &format!(r#"{{"type":"floor_released","participant_id":2,"reason":"{name}"}}"#),
            ServerMessage::FloorReleased {
                participant_id: 2,
                reason,
                by: None,
            },
        );
    }
    golden_server(
        r#"{"type":"floor_released","participant_id":2,"reason":"preempted","by":1}"#,
        ServerMessage::FloorReleased {
            participant_id: 2,
            reason: FloorEndReason::Preempted,
            by: Some(1),
        },
    );
}

#[test]
fn golden_talking_and_gain_events() {
    golden_server(
        r#"{"type":"talking_started","participant_id":2}"#,
        ServerMessage::TalkingStarted { participant_id: 2 },
    );
    golden_server(
        r#"{"type":"talking_stopped","participant_id":2}"#,
        ServerMessage::TalkingStopped { participant_id: 2 },
    );
    golden_server(r#"{"type":"caught_up"}"#, ServerMessage::CaughtUp);
    golden_server(
        r#"{"type":"gain_changed","participant_id":2,"gain_db":-6,"by":1}"#,
        ServerMessage::GainChanged {
            participant_id: 2,
            gain_db: -6,
            by: 1,
        },
    );
}

#[test]
fn golden_chat() {
    golden_client(
        r#"{"type":"chat","text":"hello"}"#,
        ClientMessage::Chat {
            text: "hello".to_owned(),
        },
    );
    // Newline and tab travel as JSON escapes; other characters as they are.
    golden_client(
        r#"{"type":"chat","text":"line 1\nline\t2 👋 \"quoted\""}"#,
        ClientMessage::Chat {
            text: "line 1\nline\t2 👋 \"quoted\"".to_owned(),
        },
    );
    golden_server(
        r#"{"type":"chat","id":1,"from":2,"name":"Ada","text":"hello","ts_ms":1700000000000}"#,
        ServerMessage::Chat {
            id: 1,
            from: 2,
            name: "Ada".to_owned(),
            text: "hello".to_owned(),
            ts_ms: 1_700_000_000_000,
        },
    );
    golden_server(
        r#"{"type":"chat","id":18446744073709551615,"from":4294967295,"name":"Bob 🎧","text":"a\nb","ts_ms":0}"#,
        ServerMessage::Chat {
            id: u64::MAX,
            from: u32::MAX,
            name: "Bob 🎧".to_owned(),
            text: "a\nb".to_owned(),
            ts_ms: 0,
        },
    );
    // A client's `chat` never parses as the server's: it lacks `id`, `from`, ...
    assert_eq!(
        parse_server_message(r#"{"type":"chat","text":"hello"}"#).map_err(|e| e.code()),
        Err(ErrorCode::BadMessage)
    );
}

#[test]
fn golden_create_room() {
    golden_client(
        r#"{"type":"create_room","room":"ch1"}"#,
        ClientMessage::CreateRoom(settings("ch1")),
    );
    golden_client(
        r#"{"type":"create_room","room":"ch1","floor_policy":"single","max_talkers":4}"#,
        ClientMessage::CreateRoom(RoomSettings {
            floor_policy: Some(FloorPolicy::Single),
            max_talkers: Some(4),
            ..settings("ch1")
        }),
    );
    golden_client(
        r#"{"type":"create_room","room":"ops","floor_policy":"open","max_participants":10,"max_talkers":2,"normalise":true,"max_talk_ms":30000,"frame_ms":5}"#,
        ClientMessage::CreateRoom(RoomSettings {
            room: "ops".to_owned(),
            floor_policy: Some(FloorPolicy::Open),
            max_participants: Some(10),
            max_talkers: Some(2),
            normalise: Some(true),
            max_talk_ms: Some(30_000),
            frame_ms: Some(5),
        }),
    );
    // `null` and unknown fields, as everywhere.
    assert_eq!(
        parse_client_message(
            r#"{"type":"create_room","room":"ch1","floor_policy":null,"max_participants":null,"max_talkers":null,"normalise":null,"max_talk_ms":null,"frame_ms":null,"colour":"red"}"#
        ),
        Ok(ClientMessage::CreateRoom(settings("ch1")))
    );
}

#[test]
fn golden_room_info_and_list_rooms() {
    golden_client(
        r#"{"type":"room_info","room":"ch1"}"#,
        ClientMessage::RoomInfo {
            room: "ch1".to_owned(),
        },
    );
    golden_client(r#"{"type":"list_rooms"}"#, ClientMessage::ListRooms);
    golden_client(
        r#"{"type":"record","recording":true}"#,
        ClientMessage::Record { recording: true },
    );
    golden_server(
        r#"{"type":"recording","recording":false,"file":"ch1-20261202T061500Z.opus","reason":"room_empty"}"#,
        ServerMessage::Recording {
            recording: false,
            file: "ch1-20261202T061500Z.opus".into(),
            by: None,
            reason: Some(mixer_protocol::RecordingEnd::RoomEmpty),
        },
    );
    // The summary's settings are flattened into the message, next to `participants`.
    golden_server(
        r#"{"type":"room_info","room":"ch1","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"frame_ms":20,"participants":3}"#,
        ServerMessage::RoomInfo(summary("ch1", 3)),
    );
    golden_server(
        r#"{"type":"rooms","rooms":[]}"#,
        ServerMessage::Rooms {
            rooms: vec![],
            truncated: false,
        },
    );
    golden_server(
        r#"{"type":"rooms","rooms":[{"room":"a","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"frame_ms":20,"participants":0},{"room":"b","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"frame_ms":20,"participants":2}]}"#,
        ServerMessage::Rooms {
            rooms: vec![summary("a", 0), summary("b", 2)],
            truncated: false,
        },
    );
    golden_server(
        r#"{"type":"rooms","rooms":[{"room":"a","floor_policy":"single","max_participants":256,"max_talkers":4,"normalise":false,"max_talk_ms":60000,"frame_ms":20,"participants":0}],"truncated":true}"#,
        ServerMessage::Rooms {
            rooms: vec![summary("a", 0)],
            truncated: true,
        },
    );
    for json in [
        r#"{"type":"rooms","rooms":[],"truncated":false}"#,
        r#"{"type":"rooms","rooms":[],"truncated":null}"#,
    ] {
        assert_eq!(
            parse_server_message(json),
            Ok(ServerMessage::Rooms {
                rooms: vec![],
                truncated: false
            }),
            "{json}"
        );
    }
    // A summary from a server that leaves settings out, with fields this crate does not
    // know: it still parses.
    assert_eq!(
        parse_server_message(
            r#"{"type":"room_info","room":"ch1","participants":1,"topic":"x","max_talkers":null}"#
        ),
        Ok(ServerMessage::RoomInfo(RoomSummary {
            settings: settings("ch1"),
            participants: 1
        }))
    );
    // A client's `room_info` never parses as the server's: it lacks `participants`.
    assert_eq!(
        parse_server_message(r#"{"type":"room_info","room":"ch1"}"#).map_err(|e| e.code()),
        Err(ErrorCode::BadMessage)
    );
}

/// Every link kind's header: the kind's byte, then the session, big-endian.
#[test]
fn golden_link_headers() {
    let cases: [(LinkKind, u32, [u8; LINK_HEADER_LEN]); 10] = [
        (LinkKind::Attach, 1, [0x01, 0x00, 0x00, 0x00, 0x01]),
        (
            LinkKind::Detach,
            0x0102_0304,
            [0x02, 0x01, 0x02, 0x03, 0x04],
        ),
        (
            LinkKind::Request,
            0x00ff_0000,
            [0x03, 0x00, 0xff, 0x00, 0x00],
        ),
        (LinkKind::Audio, u32::MAX, [0x04, 0xff, 0xff, 0xff, 0xff]),
        (LinkKind::Send, 7, [0x81, 0x00, 0x00, 0x00, 0x07]),
        (LinkKind::Broadcast, 0, [0x82, 0x00, 0x00, 0x00, 0x00]),
        (LinkKind::Close, 2, [0x83, 0x00, 0x00, 0x00, 0x02]),
        (LinkKind::Shared, 0, [0x84, 0x00, 0x00, 0x00, 0x00]),
        (LinkKind::Own, 0x8000_0000, [0x85, 0x80, 0x00, 0x00, 0x00]),
        (LinkKind::Stream, 0x0100, [0x86, 0x00, 0x00, 0x01, 0x00]),
    ];
    for (kind, session, bytes) in cases {
        let header = LinkHeader { kind, session };
        assert_eq!(header.to_bytes(), bytes, "{header:?}");
        assert_eq!(LinkHeader::parse(&bytes), Ok(header));
        assert_eq!(header.message(&[]), bytes);
    }
    let kinds: Vec<LinkKind> = cases.iter().map(|&(kind, ..)| kind).collect();
    assert_eq!(kinds, LinkKind::ALL, "a case for every kind, in wire order");
    assert_eq!(
        LinkHeader::parse(&[0x01, 0x00, 0x00]).map_err(|e| e.to_string()),
        Err("a link message of 3 bytes is shorter than its 5-byte header".to_owned())
    );
    assert_eq!(
        LinkHeader::parse(&[0x80, 0x00, 0x00, 0x00, 0x01]).map_err(|e| e.to_string()),
        Err("unknown link message kind 0x80".to_owned())
    );
}

/// An Attach body as serde writes it: every field, then the optional ones left out.
#[test]
fn golden_link_attach() {
    let full = LinkAttach {
        identity: LinkIdentity::Token("alice".to_owned()),
        name: "Alice".to_owned(),
        role: Role::Moderator,
        mode: Some(Mode::Talk),
        format: AudioFormat::opus_48k_mono_20ms(),
        address: "192.0.2.7".parse().expect("an IPv4 address"),
        resume: Some("3f9c0a5e1b7d4c2a8e6f0b1d2c3a4e5f".to_owned()),
        rejoin: true,
    };
    let json = format!(
        r#"{{"identity":{{"kind":"token","value":"alice"}},"name":"Alice","role":"moderator","mode":"talk","format":{FORMAT_JSON},"address":"192.0.2.7","resume":"3f9c0a5e1b7d4c2a8e6f0b1d2c3a4e5f","rejoin":true}}"#
    );
    assert_eq!(serde_json::to_string(&full).expect("serializes"), json);
    assert_eq!(parse_attach(json.as_bytes()), Ok(full));

    let minimal = LinkAttach {
        identity: LinkIdentity::Name("bob".to_owned()),
        name: "Bob".to_owned(),
        role: Role::Speaker,
        mode: None,
        format: AudioFormat::pcm16(16_000),
        address: "2001:db8::7".parse().expect("an IPv6 address"),
        resume: None,
        rejoin: false,
    };
    let json = r#"{"identity":{"kind":"name","value":"bob"},"name":"Bob","role":"speaker","format":{"codec":"pcm16","sample_rate":16000,"channels":1,"frame_ms":20},"address":"2001:db8::7"}"#;
    assert_eq!(serde_json::to_string(&minimal).expect("serializes"), json);
    assert_eq!(parse_attach(json.as_bytes()), Ok(minimal.clone()));
    // Optional fields may be `null` or `false`, and unknown fields are ignored.
    let explicit = r#"{"identity":{"kind":"name","value":"bob"},"name":"Bob","role":"speaker","mode":null,"format":{"codec":"pcm16","sample_rate":16000,"channels":1,"frame_ms":20},"address":"2001:db8::7","resume":null,"rejoin":false,"future":1}"#;
    assert_eq!(parse_attach(explicit.as_bytes()), Ok(minimal));

    let missing = parse_attach(br#"{"name":"Bob"}"#).map_err(|e| e.to_string());
    assert!(
        missing
            .as_ref()
            .is_err_and(|e| e.starts_with("malformed Attach body: missing field `identity`")),
        "{missing:?}"
    );
}

/// A Detach body: the reason, and `suspend` only when it is set.
#[test]
fn golden_link_detach() {
    let suspended = LinkDetach {
        reason: LeaveReason::Disconnected,
        suspend: true,
    };
    let json = r#"{"reason":"disconnected","suspend":true}"#;
    assert_eq!(serde_json::to_string(&suspended).expect("serializes"), json);
    assert_eq!(parse_detach(json.as_bytes()), Ok(suspended));

    let left = LinkDetach {
        reason: LeaveReason::Left,
        suspend: false,
    };
    assert_eq!(
        serde_json::to_string(&left).expect("serializes"),
        r#"{"reason":"left"}"#
    );
    assert_eq!(
        parse_detach(br#"{"reason":"left","suspend":false}"#),
        Ok(left)
    );
    assert!(parse_detach(br#"{"reason":"gone"}"#).is_err());
}

/// A Close message (the spec's example: session 2, 1008 "removed") and the Stream bodies.
#[test]
fn golden_link_close_and_stream() {
    let close = LinkHeader {
        kind: LinkKind::Close,
        session: 2,
    };
    let message = close.message(&close_body(1008, "removed"));
    assert_eq!(
        message,
        [
            0x83, 0x00, 0x00, 0x00, 0x02, 0x03, 0xf0, 0x72, 0x65, 0x6d, 0x6f, 0x76, 0x65, 0x64
        ]
    );
    assert_eq!(
        parse_close(&message[LINK_HEADER_LEN..]),
        Ok((1008, "removed"))
    );
    // An empty reason is two bytes of code.
    assert_eq!(close_body(4307, ""), [0x10, 0xd3]);
    assert_eq!(parse_close(&[0x10, 0xd3]), Ok((4307, "")));

    let stream = LinkHeader {
        kind: LinkKind::Stream,
        session: 2,
    };
    assert_eq!(stream.message(&[0]), [0x86, 0x00, 0x00, 0x00, 0x02, 0x00]);
    assert_eq!(parse_stream(&[0]), Ok(false));
    assert_eq!(parse_stream(&[1]), Ok(true));
    for bad in [&[][..], &[2], &[0, 0], &[0x31]] {
        assert!(parse_stream(bad).is_err(), "{bad:?}");
    }
}

/// A Shared message (the spec's example): the header, then a whole audio frame, marker clear.
#[test]
fn golden_link_shared() {
    let frame = AudioFrame {
        header: AudioHeader {
            flags: Flags::default(),
            sequence: 1024,
            timestamp: 0x000f_0000,
            level: AudioLevel::new(true, 30),
        },
        payload: &[0xf8, 0xff, 0xfe],
    };
    let header = LinkHeader {
        kind: LinkKind::Shared,
        session: 0,
    };
    let message = header.message(&frame.to_vec());
    assert_eq!(
        message,
        [
            0x84, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x9e,
            0xf8, 0xff, 0xfe
        ]
    );
    assert_eq!(AudioFrame::parse(&message[LINK_HEADER_LEN..]), Ok(frame));
}

/// A link token's claims as serde writes them.
#[test]
fn golden_link_claims() {
    let claims = LinkClaims {
        iss: "mixer-2".to_owned(),
        aud: LINK_AUDIENCE.to_owned(),
        room: "standup".to_owned(),
        hops: 1,
        iat: 1_767_225_600,
        exp: 1_767_225_660,
    };
    let json = r#"{"iss":"mixer-2","aud":"mixer-link","room":"standup","hops":1,"iat":1767225600,"exp":1767225660}"#;
    assert_eq!(serde_json::to_string(&claims).expect("serializes"), json);
    assert_eq!(serde_json::from_str::<LinkClaims>(json).ok(), Some(claims));
}
