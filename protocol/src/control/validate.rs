//! Limits, and the rules a server applies to a well-formed message before acting on it.
//!
//! Parsing checks only shape (size, JSON, `"type"`, field types); these checks come after, when
//! the server handles the message, so that each failure gets its own error code.

use super::client::{JoinRequest, RoomSettings};
use super::error::{ControlError, quote};
use crate::audio::FrameSize;

/// Largest text frame the server accepts, in bytes.
pub const MAX_CONTROL_MESSAGE: usize = 4096;
/// Largest room name, in bytes.
pub const MAX_ROOM_LEN: usize = 64;
/// Largest participant name, in characters (Unicode scalar values).
pub const MAX_NAME_CHARS: usize = 64;
/// Largest `token`, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest `resume` token accepted, in bytes (the server issues 32 hex digits).
pub const MAX_RESUME_TOKEN_LEN: usize = 64;
/// Largest chat message, in characters (Unicode scalar values).
pub const MAX_CHAT_CHARS: usize = 1000;

impl JoinRequest {
    /// Checks a room name as `join` does (for messages that name a room).
    pub fn validate_room_name(room: &str) -> Result<(), ControlError> {
        validate_room(room)
    }

    /// Checks the room, the name (when given: a server with access tokens takes the name from
    /// the token), the token's size, the resume token and the format, in that order, reporting
    /// the first problem. A server without tokens also requires the name, with
    /// [`normalise_name`].
    pub fn validate(&self) -> Result<(), ControlError> {
        validate_room(&self.room)?;
        if !self.name.is_empty() {
            normalise_name(&self.name)?;
        }
        if let Some(token) = &self.token
            && token.len() > MAX_TOKEN_LEN
        {
            return Err(ControlError::InvalidToken {
                detail: format!(
                    "token is {} bytes, the maximum is {MAX_TOKEN_LEN}",
                    token.len()
                ),
            });
        }
        if let Some(resume) = &self.resume
            && (resume.is_empty()
                || resume.len() > MAX_RESUME_TOKEN_LEN
                || !resume.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(ControlError::InvalidToken {
                detail: format!(
                    "resume token must be 1 to {MAX_RESUME_TOKEN_LEN} hex digits, as sent in joined"
                ),
            });
        }
        self.format.validate()
    }
}

/// Checks a chat text: 1 to [`MAX_CHAT_CHARS`] characters, not blank, no control characters
/// other than newline and tab.
pub fn validate_chat(text: &str) -> Result<(), ControlError> {
    let invalid = |detail: String| Err(ControlError::InvalidChat { detail });
    if text.is_empty() {
        return invalid("the text is empty".to_owned());
    }
    if text.trim().is_empty() {
        return invalid("the text is only whitespace".to_owned());
    }
    let chars = text.chars().count();
    if chars > MAX_CHAT_CHARS {
        return invalid(format!(
            "the text is {chars} characters, the maximum is {MAX_CHAT_CHARS}"
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        return invalid(format!("the text contains the control character {bad:?}"));
    }
    Ok(())
}

impl RoomSettings {
    /// Checks the room name and that every given setting is in range; `max_participants` and
    /// `max_talkers` may not exceed the server's limits given here.
    pub fn validate(
        &self,
        server_participants: u32,
        server_talkers: u32,
    ) -> Result<(), ControlError> {
        validate_room(&self.room)?;
        let out_of_range = |name: &str, value: u64, low: u64, high: u64| {
            if value < low || value > high {
                Err(ControlError::InvalidSettings {
                    detail: format!("{name} {value} is outside {low}..={high}"),
                })
            } else {
                Ok(())
            }
        };
        if let Some(n) = self.max_participants {
            out_of_range("max_participants", n.into(), 1, server_participants.into())?;
        }
        if let Some(n) = self.max_talkers {
            out_of_range("max_talkers", n.into(), 1, server_talkers.into())?;
        }
        if let Some(ms) = self.max_talk_ms {
            out_of_range("max_talk_ms", ms, 1_000, 3_600_000)?;
        }
        if let Some(ms) = self.frame_ms
            && FrameSize::from_ms(ms).is_none()
        {
            return Err(ControlError::InvalidSettings {
                detail: format!("frame_ms {ms} is not one of 20, 10 or 5"),
            });
        }
        Ok(())
    }
}

fn validate_room(room: &str) -> Result<(), ControlError> {
    let invalid = |detail: String| Err(ControlError::InvalidRoom { detail });
    if room.is_empty() {
        return invalid("room name is empty".to_owned());
    }
    if room.len() > MAX_ROOM_LEN {
        return invalid(format!(
            "room name {} is {} bytes, the maximum is {MAX_ROOM_LEN}",
            quote(room),
            room.len()
        ));
    }
    if let Some(bad) = room
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return invalid(format!(
            "room name {} contains {bad:?}; only A-Z a-z 0-9 _ . - are allowed",
            quote(room)
        ));
    }
    Ok(())
}

/// Checks a display name and returns it as it will be shown: in Unicode normal form C, without
/// surrounding whitespace.
///
/// Refused: an empty or blank name; more than [`MAX_NAME_CHARS`] characters; control characters;
/// invisible formatting characters (zero-width, bidi overrides and isolates; see
/// [`FORMAT_CHARACTERS`]); a leading `[`, which apps use for labels such as `[server]`; and a
/// word (a run between spaces) that mixes scripts, such as Latin with a Cyrillic look-alike
/// ("\u{0410}lice"), by Unicode's mixed-script detection (UTS #39). Names unlike each other
/// but still confusable as wholes are caught by comparing [`name_key`]s within a room.
pub fn normalise_name(name: &str) -> Result<String, ControlError> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_security::MixedScript;

    let invalid = |detail: String| Err(ControlError::InvalidName { detail });
    let normal: String = name.nfc().collect();
    let trimmed = normal.trim();
    if name.is_empty() {
        return invalid("name is empty".to_owned());
    }
    let chars = trimmed.chars().count();
    if chars > MAX_NAME_CHARS {
        return invalid(format!(
            "name {} is {chars} characters, the maximum is {MAX_NAME_CHARS}",
            quote(name)
        ));
    }
    if let Some(bad) = normal.chars().find(|c| c.is_control()) {
        return invalid(format!(
            "name {} contains control character {bad:?}",
            quote(name)
        ));
    }
    if let Some(bad) = invisible_formatting(&normal) {
        return invalid(format!(
            "name {} contains invisible formatting character U+{:04X} (zero-width, bidi \
             override or similar)",
            quote(name),
            u32::from(bad)
        ));
    }
    if trimmed.is_empty() {
        return invalid(format!("name {} is only whitespace", quote(name)));
    }
    if trimmed.starts_with('[') {
        return invalid(format!(
            "name {} starts with '[', which is kept for labels such as [server]",
            quote(name)
        ));
    }
    if let Some(word) = trimmed
        .split_whitespace()
        .find(|word| !word.is_single_script())
    {
        return invalid(format!(
            "name {} mixes scripts in the word {} (look-alike letters from another alphabet)",
            quote(name),
            quote(word)
        ));
    }
    Ok(trimmed.to_owned())
}

/// The key under which a room compares names for uniqueness: the lower-cased name's confusable
/// skeleton (UTS #39), with runs of whitespace as one space. "Alice", "alice", "ALICE" and
/// "A\u{0406}ice" (a Cyrillic I for the l, as a whole word in one script it passes
/// [`normalise_name`]) share a key; so do "rn" and "m".
pub fn name_key(name: &str) -> String {
    let lower = name.to_lowercase();
    let skeleton: String = unicode_security::skeleton(&lower).collect();
    // The skeleton may map to capitals (e.g. a Cyrillic letter to a Latin capital): fold again.
    let folded: String = unicode_security::skeleton(&skeleton.to_lowercase()).collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Unicode's format characters (general category Cf, Unicode 15): invisible characters that
/// change how text around them is shown (zero-width joiners and spaces, bidi overrides and
/// isolates, the soft hyphen, tags). In a display name they hide or reorder what others read,
/// so a name with one is refused.
const FORMAT_CHARACTERS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// The first format character in `name` that is not part of a script or an emoji sequence:
/// zero-width joiners and non-joiners (U+200C, U+200D) are allowed between two non-ASCII,
/// visible characters (emoji sequences such as 👩‍💻; Persian and Indic spelling), and refused
/// elsewhere ("Al\u{200D}ice" shows as "Alice").
fn invisible_formatting(name: &str) -> Option<char> {
    let chars: Vec<char> = name.chars().collect();
    let visible_non_ascii =
        |c: Option<&char>| c.is_some_and(|c| !c.is_ascii() && !c.is_whitespace() && !is_format(*c));
    chars.iter().enumerate().find_map(|(i, &c)| {
        let joiner = matches!(c, '\u{200C}' | '\u{200D}');
        let joins =
            i > 0 && visible_non_ascii(chars.get(i - 1)) && visible_non_ascii(chars.get(i + 1));
        (is_format(c) && !(joiner && joins)).then_some(c)
    })
}

/// Whether `c` is a format character (see [`FORMAT_CHARACTERS`]).
fn is_format(c: char) -> bool {
    let c = u32::from(c);
    FORMAT_CHARACTERS
        .iter()
        .any(|(first, last)| (*first..=*last).contains(&c))
}
