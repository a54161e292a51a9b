//! Property checks on arbitrary bytes, shared by the `cargo fuzz` targets in `fuzz/` and by the
//! test that replays their corpora on the stable toolchain (`tests/fuzz_corpus.rs`).
//!
//! Each check takes any input at all and panics, with the input's property named, if the parser
//! breaks one: a fuzzer counts a panic as a crash, and the replay test as a failure. Not part of
//! the wire API (hidden from the docs); it lives in the crate so the fuzz targets and `cargo
//! test` run the same code without a feature flag or a copy.

use std::path::Path;

use crate::audio::{
    AUDIO_HEADER_LEN, AudioError, AudioFrame, AudioHeader, MAX_OPUS_PACKET, MAX_PCM_PAYLOAD,
    PROTOCOL_VERSION,
};
use crate::control::{
    ClientMessage, ControlError, ErrorCode, MAX_CONTROL_MESSAGE, parse_client_message,
    parse_server_message, validate_chat,
};
use crate::{JoinRequest, ServerMessage};

/// The audio header: [`AudioFrame::parse`] and [`AudioFrame::parse_pcm`] accept exactly the
/// frames the spec allows, a parsed frame re-serialises to the same bytes, and a refusal is the
/// one error (and error code) the spec names for that input.
pub fn audio_frame(data: &[u8]) {
    for pcm in [false, true] {
        let (parse, max_payload) = if pcm {
            (parse_pcm as Parser, MAX_PCM_PAYLOAD)
        } else {
            (parse_opus as Parser, MAX_OPUS_PACKET)
        };
        let expected = expected_audio_error(data, max_payload);
        match parse(data) {
            Ok(frame) => {
                assert_eq!(expected, None, "accepted a frame the spec refuses");
                assert_eq!(frame.to_vec(), data, "re-serialised frame differs");
                assert_eq!(frame.encoded_len(), data.len());
                assert_eq!(
                    parse(&frame.to_vec()),
                    Ok(frame),
                    "round trip changed the frame"
                );
            }
            Err(error) => {
                assert_eq!(
                    Some(&error),
                    expected.as_ref(),
                    "wrong error for this frame"
                );
                assert_eq!(error.code(), audio_error_code(&error), "error code mapping");
                assert!(!error.to_string().is_empty());
            }
        }
    }
    // The header alone: every 9 bytes with the version byte decode, and encode back unchanged.
    if let Some(head) = data.first_chunk::<AUDIO_HEADER_LEN>() {
        match AudioHeader::from_bytes(*head) {
            Ok(header) => {
                assert_eq!(head[0], PROTOCOL_VERSION);
                assert_eq!(&header.to_bytes(), head, "header round trip");
                assert_eq!(header.level.to_byte(), head[8], "level byte round trip");
            }
            Err(error) => assert_eq!(
                error,
                AudioError::UnsupportedVersion { version: head[0] },
                "a header is refused for its version byte only"
            ),
        }
    }
}

/// [`AudioFrame::parse`] or [`AudioFrame::parse_pcm`].
type Parser = fn(&[u8]) -> Result<AudioFrame<'_>, AudioError>;

fn parse_opus(bytes: &[u8]) -> Result<AudioFrame<'_>, AudioError> {
    AudioFrame::parse(bytes)
}

fn parse_pcm(bytes: &[u8]) -> Result<AudioFrame<'_>, AudioError> {
    AudioFrame::parse_pcm(bytes)
}

/// The error the spec gives for `data` with payloads up to `max_payload`, or `None` if valid.
fn expected_audio_error(data: &[u8], max_payload: usize) -> Option<AudioError> {
    let payload = data.len().checked_sub(AUDIO_HEADER_LEN);
    match (data.first(), payload) {
        (_, None) => Some(AudioError::Truncated { len: data.len() }),
        (Some(&version), _) if version != PROTOCOL_VERSION => {
            Some(AudioError::UnsupportedVersion { version })
        }
        (_, Some(0)) => Some(AudioError::EmptyPayload),
        (_, Some(len)) if len > max_payload => Some(AudioError::PayloadTooLarge { len }),
        _ => None,
    }
}

/// The error code the spec's error table gives each audio error (written out again here, so a
/// change to [`AudioError::code`] has to change this too).
fn audio_error_code(error: &AudioError) -> ErrorCode {
    match error {
        AudioError::Truncated { .. } => ErrorCode::BadAudioHeader,
        AudioError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        AudioError::EmptyPayload => ErrorCode::InvalidOpus,
        AudioError::PayloadTooLarge { .. } => ErrorCode::FrameTooLarge,
    }
}

/// Control JSON: [`parse_client_message`] on any text, then the server's validation of whatever
/// parses; a parsed message serialises and parses back to itself; every refusal carries the
/// error code of its kind. The same for [`parse_server_message`], which clients run.
pub fn control_json(data: &[u8]) {
    // Text frames reach the parser only as UTF-8 (the WebSocket layer refuses others).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client_message(text) {
        Ok(message) => {
            assert!(
                text.len() <= MAX_CONTROL_MESSAGE,
                "parsed an oversized message"
            );
            let json = message.to_json();
            if json.len() > MAX_CONTROL_MESSAGE {
                // Serialising may escape what the input had raw (a form feed becomes
                // `\u000c`), so a message near the limit can come back longer than it: then
                // the parser must refuse it for its size, as it would from a client.
                assert!(
                    matches!(
                        parse_client_message(&json),
                        Err(ControlError::TooLarge { .. })
                    ),
                    "an oversized re-serialisation was not refused for its size: {json}"
                );
            } else {
                assert_eq!(
                    parse_client_message(&json).as_ref(),
                    Ok(&message),
                    "client message round trip through {json}"
                );
            }
            assert!(ClientMessage::TYPES.contains(&message.type_name()));
            assert!(message.budget_cost() >= 1, "every message costs something");
            validate_client_message(&message);
        }
        Err(error) => check_control_error(&error, text),
    }
    match parse_server_message(text) {
        Ok(message) => {
            let json = message.to_json();
            assert_eq!(
                parse_server_message(&json).as_ref(),
                Ok(&message),
                "server message round trip through {json}"
            );
            assert!(ServerMessage::TYPES.contains(&message.type_name()));
        }
        Err(error) => {
            assert!(
                !matches!(error, ControlError::TooLarge { .. }),
                "server messages have no size limit"
            );
            check_control_error(&error, text);
        }
    }
}

/// A display name's normal form is stable (normalising it again changes nothing), accepted,
/// within the limit, and has the same uniqueness key as the name it came from.
fn check_name(name: &str) {
    let Ok(normal) = crate::normalise_name(name) else {
        return;
    };
    assert_eq!(
        crate::normalise_name(&normal).as_deref(),
        Ok(normal.as_str()),
        "normalising twice changes {name:?}"
    );
    assert!(normal.chars().count() <= crate::MAX_NAME_CHARS);
    assert!(!normal.starts_with('['));
    let _ = crate::name_key(&normal);
}

/// Runs the checks the server applies to a parsed message, which must refuse with the code of
/// the check that failed and never panic.
fn validate_client_message(message: &ClientMessage) {
    let result = match message {
        ClientMessage::Join(join) => {
            let result = join.validate();
            if let Err(error) = &result {
                let code = error.code();
                assert!(
                    matches!(
                        code,
                        ErrorCode::InvalidRoom
                            | ErrorCode::InvalidName
                            | ErrorCode::InvalidToken
                            | ErrorCode::UnsupportedFormat
                    ),
                    "join refused with {code}"
                );
            } else {
                assert!(join.format.validate().is_ok());
                assert!(JoinRequest::validate_room_name(&join.room).is_ok());
            }
            check_name(&join.name);
            result
        }
        ClientMessage::CreateRoom(settings) => {
            let result = settings.validate(1_000, 64);
            if let Err(error) = &result {
                let code = error.code();
                assert!(
                    matches!(code, ErrorCode::InvalidRoom | ErrorCode::InvalidSettings),
                    "create_room refused with {code}"
                );
            }
            result
        }
        ClientMessage::RoomInfo { room } => JoinRequest::validate_room_name(room),
        ClientMessage::Chat { text } => {
            let result = validate_chat(text);
            if let Err(error) = &result {
                assert_eq!(error.code(), ErrorCode::InvalidChat);
            }
            result
        }
        _ => Ok(()),
    };
    if let Err(error) = result {
        assert!(!error.to_string().is_empty());
    }
}

/// A parse error's code is the one its kind maps to, and its message names the problem without
/// echoing an unbounded amount of the peer's input.
fn check_control_error(error: &ControlError, text: &str) {
    let code = match error {
        ControlError::TooLarge { len } => {
            assert_eq!(*len, text.len());
            ErrorCode::MessageTooLarge
        }
        ControlError::NotJson { .. } | ControlError::Invalid { .. } => ErrorCode::BadMessage,
        ControlError::UnknownType { .. } => ErrorCode::UnknownType,
        // Validation errors; parsing alone never returns them.
        other => panic!("parsing returned a validation error: {other:?}"),
    };
    assert_eq!(error.code(), code, "error code mapping for {error:?}");
    if let ControlError::UnknownType { found: Some(found) } = error {
        assert!(found.len() <= 64, "an unknown type is quoted cut short");
    }
    assert!(!error.to_string().is_empty());
}

/// Runs `check` on every input kept for `target` under the fuzz crate's folder `fuzz_dir`: its
/// corpus (`corpus/<target>/`) and saved crashes (`artifacts/<target>/`). Panics naming every
/// file that fails, or if there is no input at all (a mistyped folder would pass silently).
///
/// This is how `cargo test` replays what the fuzzers found, on stable and without cargo-fuzz.
pub fn replay(fuzz_dir: &Path, target: &str, check: fn(&[u8])) {
    let mut inputs = Vec::new();
    for folder in ["corpus", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir.join(folder).join(target)) else {
            continue;
        };
        inputs.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
    }
    inputs.sort();
    assert!(
        !inputs.is_empty(),
        "no inputs for {target} in {}",
        fuzz_dir.display()
    );
    let failed: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let bytes = std::fs::read(path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            std::panic::catch_unwind(|| check(&bytes)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "inputs that fail their check: {failed:?}"
    );
}
