//! The node-to-node link: how an edge node carries its local members of a room to the node that
//! mixes it (see "Node-to-node link" in the crate's README).
//!
//! An edge keeps **one** link per room to its upstream (the room's owner, or another edge in a
//! tree of mixers) and multiplexes every local member over it as a numbered *session*. Every
//! link message is a binary WebSocket message: a [`LINK_HEADER_LEN`]-byte header (the
//! [`LinkKind`] and the session, big-endian) and a body whose form the kind fixes. The header
//! is fixed-size so a relay reads it without parsing the body: the audio and the JSON it
//! forwards go on as the same bytes.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::control::{AudioFormat, LeaveReason, Mode, Role};

/// The path prefix of a link's WebSocket upgrade: `GET /link/ROOM`.
pub const LINK_PATH_PREFIX: &str = "/link/";

/// The `aud` claim of a link token: a client's access token is never a link token.
pub const LINK_AUDIENCE: &str = "mixer-link";

/// The most links between an edge and the room's owner (the depth of a tree of mixers). A link
/// token says how deep its sender is; deeper links are refused, so a misconfigured ring of edges
/// ends instead of looping.
pub const MAX_LINK_HOPS: u8 = 8;

/// Bytes before every link message's body: the kind (1) and the session (4, big-endian).
pub const LINK_HEADER_LEN: usize = 5;

/// What a link message is. Kinds below `0x80` travel up (edge to upstream), the others down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LinkKind {
    /// Up: seat a new session (body: [`LinkAttach`] as JSON).
    Attach = 0x01,
    /// Up: a session leaves or is suspended (body: [`LinkDetach`] as JSON).
    Detach = 0x02,
    /// Up: a session's room request (body: the client's control message, JSON).
    Request = 0x03,
    /// Up: a session's audio frame (body: the frame as the client sent it, header and payload).
    Audio = 0x04,
    /// Down: a server message for one session (body: JSON).
    Send = 0x81,
    /// Down: a server message for every session of the link but the header's session (0: all).
    Broadcast = 0x82,
    /// Down: close one session's connection (body: close code, u16 big-endian, then the reason).
    Close = 0x83,
    /// Down: the room's shared frame of this tick, sent once per link for all the sessions that
    /// hear the shared stream (session 0; body: the audio frame, marker bit clear).
    Shared = 0x84,
    /// Down: one session's own frame (its mix-minus, a replay, or PCM; body: the audio frame).
    Own = 0x85,
    /// Down: whether a session hears the shared frames from now on (body: one byte, 1 or 0).
    Stream = 0x86,
}

impl LinkKind {
    /// Every kind, in wire order.
    pub const ALL: [LinkKind; 10] = [
        LinkKind::Attach,
        LinkKind::Detach,
        LinkKind::Request,
        LinkKind::Audio,
        LinkKind::Send,
        LinkKind::Broadcast,
        LinkKind::Close,
        LinkKind::Shared,
        LinkKind::Own,
        LinkKind::Stream,
    ];

    /// The kind a header byte names.
    pub fn from_byte(byte: u8) -> Option<LinkKind> {
        LinkKind::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// Whether this kind travels from an edge to its upstream.
    pub fn is_up(self) -> bool {
        (self as u8) < 0x80
    }
}

/// Why a link message cannot be read. The link that sent it is closed: links are between nodes
/// of one fleet, so a malformed message is a bug or an impostor, not a client to humour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Shorter than the header.
    #[error("a link message of {0} bytes is shorter than its {LINK_HEADER_LEN}-byte header")]
    Short(usize),
    /// The kind byte names no kind.
    #[error("unknown link message kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The body does not have the form its kind needs.
    #[error("malformed {kind:?} body: {reason}")]
    Body {
        /// The message's kind.
        kind: LinkKind,
        /// What is wrong.
        reason: String,
    },
}

/// The header of a link message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    /// What the message is.
    pub kind: LinkKind,
    /// Which session it is about (0 when none; for [`LinkKind::Broadcast`], the one left out).
    pub session: u32,
}

impl LinkHeader {
    /// Reads the header of `message`; the body is `&message[LINK_HEADER_LEN..]`.
    ///
    /// # Errors
    ///
    /// [`LinkError::Short`] or [`LinkError::UnknownKind`].
    pub fn parse(message: &[u8]) -> Result<LinkHeader, LinkError> {
        let Some(header) = message.get(..LINK_HEADER_LEN) else {
            return Err(LinkError::Short(message.len()));
        };
        let kind = LinkKind::from_byte(header[0]).ok_or(LinkError::UnknownKind(header[0]))?;
        let session = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        Ok(LinkHeader { kind, session })
    }

    /// The header's wire form.
    pub fn to_bytes(self) -> [u8; LINK_HEADER_LEN] {
        let s = self.session.to_be_bytes();
        [self.kind as u8, s[0], s[1], s[2], s[3]]
    }

    /// A whole message: this header followed by `body`.
    pub fn message(self, body: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(LINK_HEADER_LEN + body.len());
        message.extend_from_slice(&self.to_bytes());
        message.extend_from_slice(body);
        message
    }
}

/// Who a session is, as the edge verified it: the owner seats it as it would a client of its
/// own, trusting the edge (an authenticated node of the fleet) for what the client proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum LinkIdentity {
    /// Verified by an access token at the edge: its `sub`.
    Token(String),
    /// On a fleet without tokens: the display name's key ([`crate::name_key`]).
    Name(String),
}

/// The body of [`LinkKind::Attach`]: everything the owner needs to seat a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAttach {
    /// Who it is.
    pub identity: LinkIdentity,
    /// Its display name (normalised at the edge).
    pub name: String,
    /// Its role (from its token, or asked for on an open fleet).
    pub role: Role,
    /// The mode it asked for; absent: the room's default for its role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Its audio format (validated at the edge).
    pub format: AudioFormat,
    /// The client's address, for bans and the admin API.
    pub address: IpAddr,
    /// A resume token: take back this participant instead of seating a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// With `resume`: if there is nothing to resume, seat it afresh rather than refuse (an edge
    /// re-attaching its sessions after its link dropped, to an owner that may not know them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejoin: bool,
}

/// The body of [`LinkKind::Detach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDetach {
    /// Why it goes (told to the room).
    pub reason: LeaveReason,
    /// Keep its seat for the resume window (its connection dropped and it may come back, on
    /// any node, with its resume token) instead of leaving now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// The claims of a link token: a JWT signed with the fleet's node key (HS256), sent by the
/// linking node as `Authorization: Bearer` on the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The linking node's id.
    pub iss: String,
    /// Always [`LINK_AUDIENCE`].
    pub aud: String,
    /// The room the link is for: a token opens no other room's link.
    pub room: String,
    /// Links between the sender and the clients it carries (1 for an edge whose members are
    /// its own clients); the receiver refuses more than [`MAX_LINK_HOPS`].
    pub hops: u8,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Expires at (seconds since the Unix epoch); a minute after `iat`.
    pub exp: u64,
}

fn body_error(kind: LinkKind, reason: impl Into<String>) -> LinkError {
    LinkError::Body {
        kind,
        reason: reason.into(),
    }
}

/// Reads an [`LinkKind::Attach`] body.
///
/// # Errors
///
/// [`LinkError::Body`] if it is not the JSON of a [`LinkAttach`].
pub fn parse_attach(body: &[u8]) -> Result<LinkAttach, LinkError> {
    serde_json::from_slice(body).map_err(|e| body_error(LinkKind::Attach, e.to_string()))
}

/// Reads a [`LinkKind::Detach`] body.
///
/// # Errors
///
/// [`LinkError::Body`] if it is not the JSON of a [`LinkDetach`].
pub fn parse_detach(body: &[u8]) -> Result<LinkDetach, LinkError> {
    serde_json::from_slice(body).map_err(|e| body_error(LinkKind::Detach, e.to_string()))
}

/// The body of a [`LinkKind::Close`]: the close code and the reason.
pub fn close_body(code: u16, reason: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(2 + reason.len());
    body.extend_from_slice(&code.to_be_bytes());
    body.extend_from_slice(reason.as_bytes());
    body
}

/// Reads a [`LinkKind::Close`] body.
///
/// # Errors
///
/// [`LinkError::Body`] if it is shorter than the code or the reason is not UTF-8.
pub fn parse_close(body: &[u8]) -> Result<(u16, &str), LinkError> {
    let [a, b, reason @ ..] = body else {
        return Err(body_error(LinkKind::Close, "shorter than its close code"));
    };
    let reason = std::str::from_utf8(reason)
        .map_err(|_| body_error(LinkKind::Close, "the reason is not UTF-8"))?;
    Ok((u16::from_be_bytes([*a, *b]), reason))
}

/// Reads a [`LinkKind::Stream`] body: whether the session hears the shared frames.
///
/// # Errors
///
/// [`LinkError::Body`] unless it is the one byte 0 or 1.
pub fn parse_stream(body: &[u8]) -> Result<bool, LinkError> {
    match body {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(body_error(LinkKind::Stream, "not the one byte 0 or 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_header_byte() {
        for kind in LinkKind::ALL {
            let header = LinkHeader {
                kind,
                session: 0x0102_0304,
            };
            let message = header.message(b"body");
            assert_eq!(LinkHeader::parse(&message), Ok(header));
            assert_eq!(&message[LINK_HEADER_LEN..], b"body");
            assert_eq!(kind.is_up(), (kind as u8) < 0x80);
        }
        assert_eq!(LinkHeader::parse(&[0x01, 0, 0]), Err(LinkError::Short(3)));
        assert_eq!(
            LinkHeader::parse(&[0x7f, 0, 0, 0, 1]),
            Err(LinkError::UnknownKind(0x7f))
        );
    }

    #[test]
    fn bodies_parse_what_they_encode_and_refuse_the_rest() {
        assert_eq!(
            parse_close(&close_body(4307, "redirect")),
            Ok((4307, "redirect"))
        );
        assert!(parse_close(&[1]).is_err());
        assert!(parse_close(&[0x10, 0x00, 0xff]).is_err());
        assert_eq!(parse_stream(&[1]), Ok(true));
        assert_eq!(parse_stream(&[0]), Ok(false));
        assert!(parse_stream(&[2]).is_err());
        assert!(parse_stream(&[]).is_err());
        let attach = LinkAttach {
            identity: LinkIdentity::Name("alice".into()),
            name: "Alice".into(),
            role: Role::Speaker,
            mode: Some(Mode::Listen),
            format: AudioFormat::opus_48k_mono_20ms(),
            address: "192.0.2.7".parse().expect("an address"),
            resume: None,
            rejoin: false,
        };
        let json = serde_json::to_vec(&attach).expect("serialises");
        assert_eq!(parse_attach(&json), Ok(attach));
        assert!(parse_attach(b"{}").is_err());
        let detach = LinkDetach {
            reason: LeaveReason::Disconnected,
            suspend: true,
        };
        let json = serde_json::to_vec(&detach).expect("serialises");
        assert_eq!(parse_detach(&json), Ok(detach));
        assert!(parse_detach(b"{\"reason\":\"nope\"}").is_err());
    }
}
