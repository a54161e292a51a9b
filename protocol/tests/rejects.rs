//! Text frames that are not acceptable messages, and the error each gets.

use mixer_protocol::{
    ClientMessage, ControlError, ErrorCode, MAX_CONTROL_MESSAGE, parse_client_message,
    parse_server_message,
};

use crate::support::{FORMAT_JSON, bad_client};

#[test]
fn too_large() {
    let pad = " ".repeat(MAX_CONTROL_MESSAGE - r#"{"type":"leave"}"#.len());
    let at_limit = format!(r#"{{"type":"leave"}}{pad}"#);
    assert_eq!(at_limit.len(), MAX_CONTROL_MESSAGE);
    assert_eq!(parse_client_message(&at_limit), Ok(ClientMessage::Leave));
    let over = format!("{at_limit} ");
    let err = parse_client_message(&over).expect_err("over the limit");
    assert_eq!(err, ControlError::TooLarge { len: 4097 });
    assert_eq!(err.code(), ErrorCode::MessageTooLarge);
    assert_eq!(
        err.to_string(),
        "control message of 4097 bytes exceeds the maximum of 4096"
    );
}

#[test]
fn not_json() {
    for text in ["", "{", "join", "{\"type\":\"leave\"} x", "\u{0}"] {
        let err = parse_client_message(text).expect_err(text);
        assert!(matches!(err, ControlError::NotJson { .. }), "{text}: {err}");
        assert_eq!(err.code(), ErrorCode::BadMessage);
    }
    let err = parse_client_message(r#"[{"type":"leave"}]"#).expect_err("array");
    assert_eq!(
        err.to_string(),
        "control message is not a JSON object: found an array"
    );
}

#[test]
fn unknown_type() {
    let cases = [
        (r#"{}"#, None, "control message has no \"type\" field"),
        (
            r#"{"type":"shout"}"#,
            Some("shout"),
            "unknown control message type \"shout\"",
        ),
        (
            r#"{"type":"joined"}"#,
            Some("joined"),
            "unknown control message type \"joined\"",
        ),
        (
            r#"{"type":"floor_granted","participant_id":1}"#,
            Some("floor_granted"),
            "unknown control message type \"floor_granted\"",
        ),
        (
            r#"{"type":5}"#,
            Some("5"),
            "unknown control message type \"5\"",
        ),
        (
            r#"{"type":"Join"}"#,
            Some("Join"),
            "unknown control message type \"Join\"",
        ),
        (
            r#"{"type":"setMode","mode":"ptt"}"#,
            Some("setMode"),
            "unknown control message type \"setMode\"",
        ),
    ];
    for (text, found, message) in cases {
        let err = parse_client_message(text).expect_err(text);
        assert_eq!(
            err,
            ControlError::UnknownType {
                found: found.map(str::to_owned)
            }
        );
        assert_eq!(err.code(), ErrorCode::UnknownType);
        assert_eq!(err.to_string(), message);
    }
    let long = format!(r#"{{"type":"{}"}}"#, "é".repeat(100));
    let Err(ControlError::UnknownType { found: Some(found) }) = parse_client_message(&long) else {
        panic!("expected unknown type");
    };
    assert_eq!(found, "é".repeat(32));
    for text in [r#"{"type":"ping"}"#, r#"{"type":"floor_request"}"#] {
        assert!(matches!(
            parse_server_message(text),
            Err(ControlError::UnknownType { .. })
        ));
    }
}

#[test]
fn invalid_fields() {
    let err = bad_client(r#"{"type":"join","room":"a","name":"b"}"#);
    assert_eq!(
        err.to_string(),
        "invalid join message: missing field `format`"
    );
    let err = bad_client(r#"{"type":"ping","id":-1}"#);
    assert!(matches!(
        err,
        ControlError::Invalid {
            message_type: "ping",
            ..
        }
    ));
    let err = bad_client(&format!(
        r#"{{"type":"join","room":"a","name":"b","mode":"shout","format":{FORMAT_JSON}}}"#
    ));
    assert!(err.to_string().contains("shout"), "{err}");
    let err = bad_client(&format!(
        r#"{{"type":"join","room":"a","name":"b","role":"admin","format":{FORMAT_JSON}}}"#
    ));
    assert!(err.to_string().contains("admin"), "{err}");
    let err = parse_server_message(r#"{"type":"error","code":"nope","message":""}"#)
        .expect_err("unknown code");
    assert!(matches!(
        err,
        ControlError::Invalid {
            message_type: "error",
            ..
        }
    ));
}

#[test]
fn invalid_new_client_messages() {
    let cases = [
        (r#"{"type":"set_mode"}"#, "missing field `mode`"),
        (r#"{"type":"set_mode","mode":"shout"}"#, "shout"),
        (r#"{"type":"set_mode","mode":"PTT"}"#, "PTT"),
        (r#"{"type":"set_mode","mode":1}"#, "invalid type"),
        (r#"{"type":"mute"}"#, "missing field `muted`"),
        (
            r#"{"type":"mute","participant_id":2}"#,
            "missing field `muted`",
        ),
        (r#"{"type":"mute","muted":"yes"}"#, "invalid type"),
        (r#"{"type":"mute","muted":1}"#, "invalid type"),
        (r#"{"type":"mute","participant_id":-1,"muted":true}"#, "-1"),
        (
            r#"{"type":"mute","participant_id":4294967296,"muted":true}"#,
            "4294967296",
        ),
        (r#"{"type":"mute_room"}"#, "missing field `muted`"),
        (r#"{"type":"mute_room","muted":null}"#, "invalid type"),
        (r#"{"type":"floor_request","preempt":1}"#, "invalid type"),
        (
            r#"{"type":"floor_request","preempt":"true"}"#,
            "invalid type",
        ),
        (r#"{"type":"remove"}"#, "missing field `participant_id`"),
        (r#"{"type":"remove","participant_id":"3"}"#, "invalid type"),
        (
            r#"{"type":"set_gain","participant_id":1}"#,
            "missing field `gain_db`",
        ),
        (
            r#"{"type":"set_gain","gain_db":3}"#,
            "missing field `participant_id`",
        ),
        (
            r#"{"type":"set_gain","participant_id":1,"gain_db":2.5}"#,
            "2.5",
        ),
        (
            r#"{"type":"set_gain","participant_id":1,"gain_db":3000000000}"#,
            "3000000000",
        ),
        (
            r#"{"type":"set_gain","participant_id":1,"gain_db":null}"#,
            "invalid type",
        ),
    ];
    for (json, detail) in cases {
        let err = bad_client(json);
        assert!(matches!(err, ControlError::Invalid { .. }), "{json}: {err}");
        assert!(err.to_string().contains(detail), "{json}: {err}");
    }
    assert_eq!(
        bad_client(r#"{"type":"set_gain","participant_id":1}"#).to_string(),
        "invalid set_gain message: missing field `gain_db`"
    );
}

#[test]
fn invalid_new_server_messages() {
    let cases = [
        (r#"{"type":"floor_denied"}"#, "floor_denied"),
        (
            r#"{"type":"floor_released","participant_id":1}"#,
            "floor_released",
        ),
        (
            r#"{"type":"floor_released","participant_id":1,"reason":"bored"}"#,
            "floor_released",
        ),
        (
            r#"{"type":"gain_changed","participant_id":1,"gain_db":3}"#,
            "gain_changed",
        ),
        (
            r#"{"type":"participant_muted","participant_id":1}"#,
            "participant_muted",
        ),
        (r#"{"type":"room_muted","muted":true,"by":1}"#, "room_muted"),
        (
            r#"{"type":"room_muted","muted":true,"participant_ids":[2]}"#,
            "room_muted",
        ),
        (
            r#"{"type":"room_muted","muted":true,"by":1,"participant_ids":null}"#,
            "room_muted",
        ),
        (
            r#"{"type":"room_muted","muted":true,"by":1,"participant_ids":[-1]}"#,
            "room_muted",
        ),
        (
            r#"{"type":"mode_changed","participant_id":1,"mode":"shout"}"#,
            "mode_changed",
        ),
        (r#"{"type":"talking_started"}"#, "talking_started"),
        (
            r#"{"type":"participant_left","participant_id":1,"reason":"kicked"}"#,
            "participant_left",
        ),
    ];
    for (json, message_type) in cases {
        let err = parse_server_message(json).expect_err(json);
        assert_eq!(err.code(), ErrorCode::BadMessage, "{json}");
        assert!(
            matches!(err, ControlError::Invalid { message_type: t, .. } if t == message_type),
            "{json}: {err}"
        );
    }
    let err = parse_server_message(&format!(
        r#"{{"type":"joined","participant_id":2,"room":"a","participants":[],"format":{FORMAT_JSON},"floor":{{"policy":"queue"}}}}"#
    ))
    .expect_err("unknown policy");
    assert!(err.to_string().contains("queue"), "{err}");
}

#[test]
fn invalid_room_and_chat_messages() {
    let cases = [
        (r#"{"type":"chat"}"#, "missing field `text`"),
        (r#"{"type":"chat","text":null}"#, "invalid type"),
        (r#"{"type":"chat","text":5}"#, "invalid type"),
        (r#"{"type":"chat","text":["a"]}"#, "invalid type"),
        (r#"{"type":"room_info"}"#, "missing field `room`"),
        (r#"{"type":"room_info","room":null}"#, "invalid type"),
        (r#"{"type":"create_room"}"#, "missing field `room`"),
        (
            r#"{"type":"create_room","floor_policy":"single"}"#,
            "missing field `room`",
        ),
        (r#"{"type":"create_room","room":7}"#, "invalid type"),
        (
            r#"{"type":"create_room","room":"a","floor_policy":"queue"}"#,
            "queue",
        ),
        (
            r#"{"type":"create_room","room":"a","max_participants":-1}"#,
            "-1",
        ),
        (
            r#"{"type":"create_room","room":"a","max_talkers":4294967296}"#,
            "4294967296",
        ),
        (
            r#"{"type":"create_room","room":"a","max_talk_ms":1.5}"#,
            "1.5",
        ),
        (
            r#"{"type":"create_room","room":"a","normalise":"yes"}"#,
            "invalid type",
        ),
    ];
    for (json, detail) in cases {
        let err = bad_client(json);
        assert!(matches!(err, ControlError::Invalid { .. }), "{json}: {err}");
        assert!(err.to_string().contains(detail), "{json}: {err}");
    }
    assert_eq!(
        bad_client(r#"{"type":"chat"}"#).to_string(),
        "invalid chat message: missing field `text`"
    );
    assert_eq!(
        bad_client(r#"{"type":"room_info"}"#).to_string(),
        "invalid room_info message: missing field `room`"
    );
    // `list_rooms` has no fields: any extra is ignored.
    assert_eq!(
        parse_client_message(r#"{"type":"list_rooms","room":"a"}"#),
        Ok(ClientMessage::ListRooms)
    );
    // Server messages are not client messages.
    assert_eq!(
        parse_client_message(r#"{"type":"rooms","rooms":[]}"#).map_err(|e| e.code()),
        Err(ErrorCode::UnknownType)
    );
    for text in [
        r#"{"type":"list_rooms"}"#,
        r#"{"type":"create_room","room":"a"}"#,
    ] {
        assert_eq!(
            parse_server_message(text).map_err(|e| e.code()),
            Err(ErrorCode::UnknownType)
        );
    }
}

#[test]
fn invalid_room_and_chat_server_messages() {
    let cases = [
        (r#"{"type":"chat","text":"x"}"#, "chat"),
        (
            r#"{"type":"chat","id":1,"from":2,"name":"a","text":"x"}"#,
            "chat",
        ),
        (
            r#"{"type":"chat","id":-1,"from":2,"name":"a","text":"x","ts_ms":0}"#,
            "chat",
        ),
        (r#"{"type":"room_info","room":"a"}"#, "room_info"),
        (r#"{"type":"room_info","participants":1}"#, "room_info"),
        (
            r#"{"type":"room_info","room":"a","participants":1,"floor_policy":"queue"}"#,
            "room_info",
        ),
        (r#"{"type":"rooms"}"#, "rooms"),
        (r#"{"type":"rooms","rooms":[{"room":"a"}]}"#, "rooms"),
        (r#"{"type":"rooms","rooms":[],"truncated":1}"#, "rooms"),
    ];
    for (json, message_type) in cases {
        let err = parse_server_message(json).expect_err(json);
        assert_eq!(err.code(), ErrorCode::BadMessage, "{json}");
        assert!(
            matches!(err, ControlError::Invalid { message_type: t, .. } if t == message_type),
            "{json}: {err}"
        );
    }
}
