//! The checks a server makes on a well-formed message: `join`, `chat` and `create_room`.

use mixer_protocol::{
    AudioFormat, ClientMessage, ControlError, ErrorCode, FloorPolicy, FrameSize, JoinRequest,
    MAX_CHAT_CHARS, MAX_CONTROL_MESSAGE, MAX_ROOM_LEN, MAX_TOKEN_LEN, Mode, PCM_RATES, Role,
    RoomSettings, name_key, normalise_name, parse_client_message, validate_chat,
};

use crate::support::{join, settings};

#[test]
fn validate_accepts() {
    let ok = [
        join("a", "b"),
        join(&"x".repeat(64), &"é".repeat(64)),
        join("Room_1.test-2", "Ada Lovelace 👩‍💻"),
        JoinRequest {
            token: Some("t".repeat(MAX_TOKEN_LEN)),
            ..join("a", " b ")
        },
        JoinRequest {
            mode: Some(Mode::Ptt),
            role: Some(Role::Moderator),
            ..join("a", "b")
        },
    ];
    for req in ok {
        assert_eq!(req.validate(), Ok(()), "{req:?}");
    }
}

#[test]
fn validate_room() {
    let cases = [
        ("", "invalid room: room name is empty"),
        (
            "has space",
            "invalid room: room name \"has space\" contains ' '; only A-Z a-z 0-9 _ . - are \
             allowed",
        ),
        (
            "café",
            "invalid room: room name \"café\" contains 'é'; only A-Z a-z 0-9 _ . - are \
             allowed",
        ),
    ];
    for (room, message) in cases {
        let err = join(room, "n").validate().expect_err(room);
        assert_eq!(err.code(), ErrorCode::InvalidRoom);
        assert_eq!(err.to_string(), message);
    }
    let err = join(&"r".repeat(65), "n").validate().expect_err("long");
    assert_eq!(
        err.to_string(),
        format!(
            "invalid room: room name \"{}...\" is 65 bytes, the maximum is 64",
            "r".repeat(64)
        )
    );
}

#[test]
fn validate_name() {
    let cases = [
        ("", "invalid name: name is empty"),
        (
            " \t ",
            "invalid name: name \" \\t \" contains control character '\\t'",
        ),
        ("   ", "invalid name: name \"   \" is only whitespace"),
        (
            "\u{3000}",
            "invalid name: name \"\\u{3000}\" is only whitespace",
        ),
        (
            "a\nb",
            "invalid name: name \"a\\nb\" contains control character '\\n'",
        ),
    ];
    for (name, message) in cases {
        let err = normalise_name(name).expect_err(name);
        assert_eq!(err.code(), ErrorCode::InvalidName);
        assert_eq!(err.to_string(), message);
    }
    // Invisible formatting: zero-width characters and bidi overrides hide or reorder what
    // others read ("Al\u{200B}ice" shows as "Alice"; an RLO turns "evil" around).
    for (name, code) in [
        ("Al\u{200B}ice", 0x200B),
        ("Al\u{200D}ice", 0x200D),
        ("\u{200D}👩", 0x200D),
        ("\u{202E}live", 0x202E),
        ("a\u{2066}b\u{2069}", 0x2066),
        ("soft\u{00AD}hyphen", 0x00AD),
        ("tag\u{E0041}", 0xE0041),
        ("\u{FEFF}bom", 0xFEFF),
    ] {
        let err = normalise_name(name).expect_err(name);
        assert_eq!(err.code(), ErrorCode::InvalidName);
        assert!(
            err.to_string()
                .contains(&format!("invisible formatting character U+{code:04X}")),
            "{err}"
        );
    }
    // Letters of any script, emoji and combining marks are fine.
    for name in [
        "Zoë",
        "Ωμέγα",
        "李小龙",
        "🎙️ Ada",
        "e\u{301}",
        "👩\u{200D}💻",
        "می\u{200C}خواهم",
    ] {
        normalise_name(name).expect(name);
    }
    let err = normalise_name(&"é".repeat(65)).expect_err("long");
    assert!(
        err.to_string()
            .ends_with("...\" is 65 characters, the maximum is 64"),
        "{err}"
    );
    // Look-alike letters from another alphabet inside a word ("\u{0410}lice" with a Cyrillic A),
    // and labels apps show for the server, are refused.
    for (name, detail) in [
        ("\u{0410}lice", "mixes scripts"),
        ("Bob p\u{0430}ypal", "mixes scripts"),
        ("[server] moderator", "starts with '['"),
        ("  [mod]", "starts with '['"),
    ] {
        let err = normalise_name(name).expect_err(name);
        assert_eq!(err.code(), ErrorCode::InvalidName);
        assert!(err.to_string().contains(detail), "{name:?}: {err}");
    }
    // Words of different scripts side by side are fine; so are Japanese's several scripts.
    for name in [
        "Ivan \u{0418}\u{0432}\u{0430}\u{043D}",
        "\u{5C71}\u{7530}\u{305F}\u{308D}\u{3046}",
    ] {
        normalise_name(name).expect(name);
    }
    // NFC: a decomposed e + combining acute is stored as the single character; surrounding
    // whitespace goes.
    assert_eq!(normalise_name(" Zoe\u{0308} ").as_deref(), Ok("Zo\u{00EB}"));
    // Names that look alike share a key, so a room cannot hold both.
    let key = name_key("Alice");
    for same in [
        "alice",
        "ALICE",
        "Al\u{0131}ce",
        "A l i c e".replace(' ', "").as_str(),
        "Alice  ",
    ] {
        assert_eq!(name_key(same), key, "{same:?}");
    }
    // An all-Cyrillic look-alike is one script, so it passes the rules; its key catches it.
    let cyrillic = "\u{0410}\u{04CF}\u{0456}\u{0441}\u{0435}";
    normalise_name(cyrillic).expect("one script");
    assert_eq!(name_key(cyrillic), key);
    assert_ne!(name_key("Alicia"), key);
    assert_eq!(name_key("rn"), name_key("m"));
}

#[test]
fn validate_token() {
    let req = JoinRequest {
        token: Some("t".repeat(MAX_TOKEN_LEN + 1)),
        ..join("r", "n")
    };
    let err = req.validate().expect_err("long token");
    assert_eq!(err.code(), ErrorCode::InvalidToken);
    assert_eq!(
        err.to_string(),
        "invalid token: token is 4097 bytes, the maximum is 4096"
    );
}

#[test]
fn validate_format() {
    assert_eq!(AudioFormat::opus_48k_mono_20ms().validate(), Ok(()));
    let req = JoinRequest {
        format: AudioFormat {
            codec: "pcm".to_owned(),
            sample_rate: 44_100,
            channels: 2,
            frame_ms: 10,
        },
        ..join("r", "n")
    };
    let err = req.validate().expect_err("pcm");
    assert_eq!(err.code(), ErrorCode::UnsupportedFormat);
    assert_eq!(
        err.to_string(),
        "unsupported audio format: format pcm/44100/2/10 is not supported; use opus/48000/1/F \
         with F one of 20, 10 or 5 (the room's frame_ms), or pcm16/R/1/20 with R one of \
         [8000, 16000, 22050, 44100, 48000]"
    );
    for frame in FrameSize::ALL {
        assert_eq!(AudioFormat::opus_48k_mono(frame).validate(), Ok(()));
        assert_eq!(AudioFormat::opus_48k_mono(frame).frame_size(), Some(frame));
    }
    for frame_ms in [0, 2, 15, 40, 60] {
        let opus = AudioFormat {
            frame_ms,
            ..AudioFormat::opus_48k_mono_20ms()
        };
        assert_eq!(
            opus.validate().map_err(|e| e.code()),
            Err(ErrorCode::UnsupportedFormat)
        );
    }
    // PCM clients have 20 ms frames only.
    let pcm_10ms = AudioFormat {
        frame_ms: 10,
        ..AudioFormat::pcm16(48_000)
    };
    assert_eq!(
        pcm_10ms.validate().map_err(|e| e.code()),
        Err(ErrorCode::UnsupportedFormat)
    );
    for rate in PCM_RATES {
        assert_eq!(AudioFormat::pcm16(rate).validate(), Ok(()));
        assert_eq!(AudioFormat::pcm16(rate).pcm_rate(), Some(rate));
    }
    assert_eq!(AudioFormat::opus_48k_mono_20ms().pcm_rate(), None);
    for bad in [
        AudioFormat::pcm16(11_025),
        AudioFormat {
            channels: 2,
            ..AudioFormat::pcm16(16_000)
        },
        AudioFormat {
            frame_ms: 10,
            ..AudioFormat::pcm16(16_000)
        },
    ] {
        assert_eq!(
            bad.validate().map_err(|e| e.code()),
            Err(ErrorCode::UnsupportedFormat),
            "{bad}"
        );
    }
    let upper = AudioFormat {
        codec: "OPUS".to_owned(),
        ..AudioFormat::opus_48k_mono_20ms()
    };
    assert!(upper.validate().is_err());
}

#[test]
fn validate_reports_room_before_format() {
    let req = JoinRequest {
        format: AudioFormat {
            channels: 2,
            ..AudioFormat::opus_48k_mono_20ms()
        },
        ..join("", "")
    };
    assert_eq!(
        req.validate().map_err(|e| e.code()),
        Err(ErrorCode::InvalidRoom)
    );
}

#[test]
fn validate_chat_accepts() {
    let ok = [
        "hi".to_owned(),
        "line 1\nline 2".to_owned(),
        "\tindented".to_owned(),
        "👋🏽 café ünïcödé 中文".to_owned(),
        " padded ".to_owned(),
        "x".repeat(MAX_CHAT_CHARS),
        "😀".repeat(MAX_CHAT_CHARS),
    ];
    for text in ok {
        assert_eq!(validate_chat(&text), Ok(()), "{text:?}");
    }
}

#[test]
fn validate_chat_rejects() {
    let cases = [
        (String::new(), "invalid chat message: the text is empty"),
        (
            " \n\t ".to_owned(),
            "invalid chat message: the text is only whitespace",
        ),
        (
            "\u{3000}".to_owned(),
            "invalid chat message: the text is only whitespace",
        ),
        (
            "x".repeat(MAX_CHAT_CHARS + 1),
            "invalid chat message: the text is 1001 characters, the maximum is 1000",
        ),
        (
            "é".repeat(MAX_CHAT_CHARS + 1),
            "invalid chat message: the text is 1001 characters, the maximum is 1000",
        ),
        (
            "\u{0007}".to_owned(),
            "invalid chat message: the text contains the control character '\\u{7}'",
        ),
        (
            "a\rb".to_owned(),
            "invalid chat message: the text contains the control character '\\r'",
        ),
        (
            "a\u{0}b".to_owned(),
            "invalid chat message: the text contains the control character '\\0'",
        ),
        (
            "a\u{85}b".to_owned(),
            "invalid chat message: the text contains the control character '\\u{85}'",
        ),
    ];
    for (text, message) in cases {
        let err = validate_chat(&text).expect_err(&text);
        assert_eq!(err.code(), ErrorCode::InvalidChat, "{text:?}");
        assert!(matches!(err, ControlError::InvalidChat { .. }));
        assert_eq!(err.to_string(), message, "{text:?}");
    }
}

/// A chat text the server accepts always fits in a control message when serialized without
/// `\uXXXX` escapes: at most 4 bytes a character, and the escapes JSON needs (`\"`, `\\`,
/// `\n`, `\t`) are 2 bytes for a 1-byte character.
#[test]
fn largest_valid_chat_fits_a_control_message() {
    for text in [
        "😀".repeat(MAX_CHAT_CHARS),
        "\"".repeat(MAX_CHAT_CHARS),
        "\n".repeat(MAX_CHAT_CHARS - 1) + "x",
    ] {
        assert_eq!(validate_chat(&text), Ok(()));
        let msg = ClientMessage::Chat { text };
        let json = msg.to_json();
        assert!(json.len() <= MAX_CONTROL_MESSAGE, "{} bytes", json.len());
        assert_eq!(parse_client_message(&json), Ok(msg));
    }
    // Too long but within the frame limit: parsed, then refused by `validate_chat` (the
    // connection stays open)...
    let json = ClientMessage::Chat {
        text: "x".repeat(MAX_CHAT_CHARS + 1),
    }
    .to_json();
    let Ok(ClientMessage::Chat { text }) = parse_client_message(&json) else {
        panic!("expected a chat");
    };
    assert_eq!(
        validate_chat(&text).map_err(|e| e.code()),
        Err(ErrorCode::InvalidChat)
    );
    // ... but over the frame limit: `message_too_large`, which closes the connection.
    let json = ClientMessage::Chat {
        text: "😀".repeat(MAX_CHAT_CHARS + 100),
    }
    .to_json();
    assert_eq!(
        parse_client_message(&json).map_err(|e| e.code()),
        Err(ErrorCode::MessageTooLarge)
    );
}

#[test]
fn validate_room_settings_accepts() {
    let ok = [
        settings("ch1"),
        RoomSettings {
            floor_policy: Some(FloorPolicy::Single),
            max_participants: Some(1),
            max_talkers: Some(1),
            normalise: Some(true),
            max_talk_ms: Some(1_000),
            ..settings("a")
        },
        RoomSettings {
            floor_policy: Some(FloorPolicy::Open),
            max_participants: Some(256),
            max_talkers: Some(16),
            normalise: Some(false),
            max_talk_ms: Some(3_600_000),
            ..settings(&"x".repeat(MAX_ROOM_LEN))
        },
        // `max_talkers` may exceed `max_participants`; the room just never reaches it.
        RoomSettings {
            max_participants: Some(2),
            max_talkers: Some(16),
            ..settings("a")
        },
    ];
    for room in ok {
        assert_eq!(room.validate(256, 16), Ok(()), "{room:?}");
    }
}

#[test]
fn validate_room_settings_rejects() {
    let cases = [
        (
            RoomSettings {
                max_participants: Some(0),
                ..settings("a")
            },
            "invalid room settings: max_participants 0 is outside 1..=256",
        ),
        (
            RoomSettings {
                max_participants: Some(257),
                ..settings("a")
            },
            "invalid room settings: max_participants 257 is outside 1..=256",
        ),
        (
            RoomSettings {
                max_participants: Some(u32::MAX),
                ..settings("a")
            },
            "invalid room settings: max_participants 4294967295 is outside 1..=256",
        ),
        (
            RoomSettings {
                max_talkers: Some(0),
                ..settings("a")
            },
            "invalid room settings: max_talkers 0 is outside 1..=16",
        ),
        (
            RoomSettings {
                max_talkers: Some(17),
                ..settings("a")
            },
            "invalid room settings: max_talkers 17 is outside 1..=16",
        ),
        (
            RoomSettings {
                max_talk_ms: Some(999),
                ..settings("a")
            },
            "invalid room settings: max_talk_ms 999 is outside 1000..=3600000",
        ),
        (
            RoomSettings {
                max_talk_ms: Some(3_600_001),
                ..settings("a")
            },
            "invalid room settings: max_talk_ms 3600001 is outside 1000..=3600000",
        ),
        (
            RoomSettings {
                max_talk_ms: Some(0),
                ..settings("a")
            },
            "invalid room settings: max_talk_ms 0 is outside 1000..=3600000",
        ),
    ];
    for (room, message) in cases {
        let err = room.validate(256, 16).expect_err(message);
        assert_eq!(err.code(), ErrorCode::InvalidSettings, "{room:?}");
        assert_eq!(err.to_string(), message);
    }
    // The room name is checked first, as in `join`.
    for name in ["", "has space", "café", &"r".repeat(MAX_ROOM_LEN + 1)] {
        let room = RoomSettings {
            max_talkers: Some(0),
            ..settings(name)
        };
        let err = room.validate(256, 16).expect_err(name);
        assert_eq!(err.code(), ErrorCode::InvalidRoom, "{name:?}");
        assert_eq!(
            Err(err),
            JoinRequest::validate_room_name(name),
            "same check as join"
        );
    }
    assert_eq!(JoinRequest::validate_room_name("Room_1.test-2"), Ok(()));
}
