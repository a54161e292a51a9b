//! Builders and samples the test modules share, and the golden-test assertions.

use mixer_protocol::{
    AudioFormat, ClientMessage, ControlError, ErrorCode, FloorEndReason, FloorInfo, FloorPolicy,
    JoinRequest, LeaveReason, Mode, ParticipantInfo, RedirectReason, Role, RoomSettings,
    RoomSummary, ServerMessage, parse_client_message, parse_server_message,
};

pub const FORMAT_JSON: &str = r#"{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}"#;

pub fn join(room: &str, name: &str) -> JoinRequest {
    JoinRequest {
        room: room.to_owned(),
        name: name.to_owned(),
        token: None,
        mode: None,
        resume: None,
        role: None,
        format: AudioFormat::opus_48k_mono_20ms(),
    }
}

pub fn participant(id: u32, name: &str, mode: Mode, role: Role) -> ParticipantInfo {
    ParticipantInfo {
        id,
        name: name.to_owned(),
        mode,
        role,
        muted: false,
    }
}

pub fn joined(participants: Vec<ParticipantInfo>, floor: FloorInfo) -> ServerMessage {
    ServerMessage::Joined {
        participant_id: 2,
        room: "lobby".to_owned(),
        participants,
        format: AudioFormat::opus_48k_mono_20ms(),
        floor,
        resume_token: None,
        resumed: false,
        replay_ms: None,
    }
}

/// `create_room` settings naming only the room.
pub fn settings(room: &str) -> RoomSettings {
    RoomSettings {
        room: room.to_owned(),
        ..RoomSettings::default()
    }
}

/// A room as the server describes it: every setting present.
pub fn summary(room: &str, participants: u32) -> RoomSummary {
    RoomSummary {
        settings: RoomSettings {
            room: room.to_owned(),
            floor_policy: Some(FloorPolicy::Single),
            max_participants: Some(256),
            max_talkers: Some(4),
            normalise: Some(false),
            max_talk_ms: Some(60_000),
            frame_ms: Some(20),
        },
        participants,
    }
}

/// Asserts that `json` parses to `msg` and that `msg` serializes to exactly `json`.
pub fn golden_client(json: &str, msg: ClientMessage) {
    assert_eq!(parse_client_message(json), Ok(msg.clone()), "parse {json}");
    assert_eq!(msg.to_json(), json);
}

pub fn golden_server(json: &str, msg: ServerMessage) {
    assert_eq!(parse_server_message(json), Ok(msg.clone()), "parse {json}");
    assert_eq!(msg.to_json(), json);
}

/// The error a client message is rejected with, checking that its code is `bad_message`
/// and that it names the message type.
pub fn bad_client(json: &str) -> ControlError {
    let err = parse_client_message(json).expect_err(json);
    assert_eq!(err.code(), ErrorCode::BadMessage, "{json}: {err}");
    let type_name = serde_json::from_str::<serde_json::Value>(json).expect(json)["type"]
        .as_str()
        .map(str::to_owned);
    if let Some(type_name) = type_name {
        assert!(
            err.to_string()
                .starts_with(&format!("invalid {type_name} message: ")),
            "{json}: {err}"
        );
    }
    err
}

/// One message of every client type, in [`ClientMessage::TYPES`] order.
pub fn client_samples() -> Vec<ClientMessage> {
    vec![
        ClientMessage::Join(join("a", "b")),
        ClientMessage::Leave,
        ClientMessage::Ping { id: None },
        ClientMessage::SetMode { mode: Mode::Ptt },
        ClientMessage::Mute {
            participant_id: None,
            muted: true,
        },
        ClientMessage::MuteRoom { muted: true },
        ClientMessage::FloorRequest { preempt: false },
        ClientMessage::FloorRelease,
        ClientMessage::Remove { participant_id: 1 },
        ClientMessage::SetGain {
            participant_id: 1,
            gain_db: -6,
        },
        ClientMessage::Chat {
            text: "hi".to_owned(),
        },
        ClientMessage::CreateRoom(settings("ch1")),
        ClientMessage::RoomInfo {
            room: "ch1".to_owned(),
        },
        ClientMessage::ListRooms,
        ClientMessage::Record { recording: true },
    ]
}

/// One message of every server type, in [`ServerMessage::TYPES`] order.
pub fn server_samples() -> Vec<ServerMessage> {
    vec![
        joined(vec![], FloorInfo::default()),
        ServerMessage::ParticipantJoined {
            participant: participant(0, "b", Mode::Talk, Role::Speaker),
        },
        ServerMessage::ParticipantLeft {
            participant_id: 0,
            reason: LeaveReason::Left,
        },
        ServerMessage::error(ErrorCode::Internal, "x"),
        ServerMessage::Pong { id: None },
        ServerMessage::ModeChanged {
            participant_id: 0,
            mode: Mode::Ptt,
        },
        ServerMessage::ParticipantMuted {
            participant_id: 0,
            muted: true,
            by: None,
        },
        ServerMessage::RoomMuted {
            muted: true,
            by: 1,
            participant_ids: vec![0, 2],
        },
        ServerMessage::FloorGranted {
            participant_id: 0,
            max_talk_ms: Some(60_000),
        },
        ServerMessage::FloorDenied { holder: 1 },
        ServerMessage::FloorReleased {
            participant_id: 0,
            reason: FloorEndReason::Released,
            by: None,
        },
        ServerMessage::TalkingStarted { participant_id: 0 },
        ServerMessage::TalkingStopped { participant_id: 0 },
        ServerMessage::CaughtUp,
        ServerMessage::GainChanged {
            participant_id: 0,
            gain_db: 3,
            by: 1,
        },
        ServerMessage::Chat {
            id: 1,
            from: 0,
            name: "b".to_owned(),
            text: "hi".to_owned(),
            ts_ms: 0,
        },
        ServerMessage::RoomInfo(summary("ch1", 0)),
        ServerMessage::Rooms {
            rooms: vec![summary("ch1", 0)],
            truncated: false,
        },
        ServerMessage::Redirect {
            room: "ch1".into(),
            url: "ws://node-2/".into(),
            reason: RedirectReason::OtherNode,
            resume_token: None,
        },
        ServerMessage::Recording {
            recording: true,
            file: "ch1-20261202T061500Z.opus".into(),
            by: Some(1),
            reason: None,
        },
    ]
}
