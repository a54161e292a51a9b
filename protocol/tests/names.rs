//! Wire names: of the enumerations, the error codes and the message types, each checked against
//! what serde writes; and which error codes close the connection.

use std::collections::BTreeSet;

use mixer_protocol::{
    ClientMessage, ErrorCode, FloorEndReason, FloorPolicy, LeaveReason, Mode, Role, ServerMessage,
    close_code, parse_client_message, parse_server_message,
};

use crate::support::{client_samples, server_samples};

#[test]
fn enum_names() {
    for (mode, name) in [
        (Mode::Talk, "talk"),
        (Mode::Ptt, "ptt"),
        (Mode::Listen, "listen"),
    ] {
        assert_eq!(mode.as_str(), name);
        assert_eq!(
            serde_json::to_string(&mode).ok(),
            Some(format!("\"{name}\""))
        );
    }
    for (role, name) in [
        (Role::Speaker, "speaker"),
        (Role::Listener, "listener"),
        (Role::Moderator, "moderator"),
    ] {
        assert_eq!(role.as_str(), name);
        assert_eq!(
            serde_json::to_string(&role).ok(),
            Some(format!("\"{name}\""))
        );
    }
    // The reasons' names (metric labels too) are what serde writes, and ALL lists every one.
    assert_eq!(LeaveReason::ALL.len(), 9);
    for &reason in LeaveReason::ALL {
        assert_eq!(
            serde_json::to_string(&reason).ok(),
            Some(format!("\"{}\"", reason.as_str()))
        );
    }
    assert_eq!(FloorEndReason::ALL.len(), 5);
    for &reason in FloorEndReason::ALL {
        assert_eq!(
            serde_json::to_string(&reason).ok(),
            Some(format!("\"{}\"", reason.as_str()))
        );
    }
    assert_eq!(LeaveReason::SlowConsumer.as_str(), "slow_consumer");
    assert_eq!(FloorEndReason::MaxTalkTime.as_str(), "max_talk_time");
    assert_eq!(Mode::default(), Mode::Talk);
    assert_eq!(Role::default(), Role::Speaker);
    assert_eq!(FloorPolicy::default(), FloorPolicy::Open);
    assert!(Mode::Talk.sends_audio() && Mode::Ptt.sends_audio());
    assert!(!Mode::Listen.sends_audio());
}

/// The declaration index of every error code; a new code fails to compile here until it is
/// added, and the test below then checks that [`ErrorCode::ALL`] (strum's `VariantArray`) lists
/// every code in declaration order.
fn declaration_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadMessage => 0,
        ErrorCode::UnknownType => 1,
        ErrorCode::MessageTooLarge => 2,
        ErrorCode::UnsupportedFormat => 3,
        ErrorCode::InvalidRoom => 4,
        ErrorCode::InvalidName => 5,
        ErrorCode::InvalidToken => 6,
        ErrorCode::NotJoined => 7,
        ErrorCode::AlreadyJoined => 8,
        ErrorCode::RoomFull => 9,
        ErrorCode::ServerFull => 10,
        ErrorCode::BadAudioHeader => 11,
        ErrorCode::UnsupportedVersion => 12,
        ErrorCode::InvalidOpus => 13,
        ErrorCode::FrameTooLarge => 14,
        ErrorCode::ListenOnly => 15,
        ErrorCode::RateLimited => 16,
        ErrorCode::SlowConsumer => 17,
        ErrorCode::PingTimeout => 18,
        ErrorCode::ShuttingDown => 19,
        ErrorCode::Internal => 20,
        ErrorCode::Forbidden => 21,
        ErrorCode::ModeNotAllowed => 22,
        ErrorCode::NotPtt => 23,
        ErrorCode::NoFloor => 24,
        ErrorCode::UnknownParticipant => 25,
        ErrorCode::InvalidGain => 26,
        ErrorCode::Removed => 27,
        ErrorCode::InvalidChat => 28,
        ErrorCode::InvalidSettings => 29,
        ErrorCode::RoomExists => 30,
        ErrorCode::UnknownRoom => 31,
        ErrorCode::ChatRateLimited => 32,
        ErrorCode::ResumeFailed => 33,
        ErrorCode::ControlRateLimited => 34,
        ErrorCode::ServerBusy => 35,
        ErrorCode::JoinTimeout => 36,
        ErrorCode::TokenRequired => 37,
        ErrorCode::TokenExpired => 38,
        ErrorCode::TokenWrongRoom => 39,
        ErrorCode::TokenInsufficient => 40,
        ErrorCode::NameTaken => 41,
        ErrorCode::Banned => 42,
        ErrorCode::Replaced => 43,
        ErrorCode::Draining => 44,
        ErrorCode::FleetUnavailable => 45,
        ErrorCode::RecordingUnavailable => 46,
    }
}

#[test]
fn error_code_all_is_complete_and_in_order() {
    let indices: Vec<usize> = ErrorCode::ALL
        .iter()
        .copied()
        .map(declaration_index)
        .collect();
    assert_eq!(indices, (0..=46).collect::<Vec<_>>());
}

#[test]
fn error_code_names() {
    for &code in ErrorCode::ALL {
        let json = serde_json::to_string(&code).expect("serialize code");
        assert_eq!(json, format!("\"{}\"", code.as_str()));
        assert_eq!(code.to_string(), code.as_str());
        let back: ErrorCode = serde_json::from_str(&json).expect("parse code");
        assert_eq!(back, code);
    }
    let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), ErrorCode::ALL.len());
    let new = [
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::ModeNotAllowed, "mode_not_allowed"),
        (ErrorCode::NotPtt, "not_ptt"),
        (ErrorCode::NoFloor, "no_floor"),
        (ErrorCode::UnknownParticipant, "unknown_participant"),
        (ErrorCode::InvalidGain, "invalid_gain"),
        (ErrorCode::Removed, "removed"),
        (ErrorCode::InvalidChat, "invalid_chat"),
        (ErrorCode::InvalidSettings, "invalid_settings"),
        (ErrorCode::RoomExists, "room_exists"),
        (ErrorCode::UnknownRoom, "unknown_room"),
        (ErrorCode::ChatRateLimited, "chat_rate_limited"),
        (ErrorCode::ResumeFailed, "resume_failed"),
        (ErrorCode::ControlRateLimited, "control_rate_limited"),
        (ErrorCode::ServerBusy, "server_busy"),
        (ErrorCode::JoinTimeout, "join_timeout"),
        (ErrorCode::TokenRequired, "token_required"),
        (ErrorCode::TokenExpired, "token_expired"),
        (ErrorCode::TokenWrongRoom, "token_wrong_room"),
        (ErrorCode::TokenInsufficient, "token_insufficient"),
        (ErrorCode::NameTaken, "name_taken"),
        (ErrorCode::Banned, "banned"),
        (ErrorCode::Replaced, "replaced"),
        (ErrorCode::Draining, "draining"),
        (ErrorCode::RecordingUnavailable, "recording_unavailable"),
    ];
    for (code, name) in new {
        assert_eq!(code.as_str(), name);
    }
}

#[test]
fn close_codes() {
    let closing: Vec<_> = ErrorCode::ALL
        .iter()
        .copied()
        .filter_map(|c| c.close_code().map(|cc| (c, cc)))
        .collect();
    assert_eq!(
        closing,
        [
            (ErrorCode::MessageTooLarge, 1009),
            (ErrorCode::SlowConsumer, 1008),
            (ErrorCode::PingTimeout, 1008),
            (ErrorCode::ShuttingDown, 1001),
            (ErrorCode::Removed, 1008),
            (ErrorCode::JoinTimeout, 1008),
            (ErrorCode::Replaced, 1008),
        ]
    );
    assert_eq!(
        ErrorCode::Removed.close_code(),
        Some(close_code::POLICY_VIOLATION)
    );
}

#[test]
fn type_names_match_serialization() {
    let clients = client_samples();
    assert_eq!(clients.len(), ClientMessage::TYPES.len());
    for (msg, name) in clients.iter().zip(ClientMessage::TYPES.iter().copied()) {
        assert_eq!(msg.type_name(), name);
        assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
        assert_eq!(parse_client_message(&msg.to_json()), Ok(msg.clone()));
    }
    let servers = server_samples();
    assert_eq!(servers.len(), ServerMessage::TYPES.len());
    for (msg, name) in servers.iter().zip(ServerMessage::TYPES.iter().copied()) {
        assert_eq!(msg.type_name(), name);
        assert!(msg.to_json().starts_with(&format!(r#"{{"type":"{name}""#)));
        assert_eq!(parse_server_message(&msg.to_json()), Ok(msg.clone()));
    }
    let distinct: BTreeSet<_> = ClientMessage::TYPES.iter().collect();
    assert_eq!(distinct.len(), ClientMessage::TYPES.len());
    let distinct: BTreeSet<_> = ServerMessage::TYPES.iter().collect();
    assert_eq!(distinct.len(), ServerMessage::TYPES.len());
}
