//! The claims of an access token: the JSON payload of a JWT that the server's key verifies
//! (HS256 with an HMAC secret, or EdDSA with an Ed25519 key). An app backend mints these in any
//! language; `protocol/README.md` ("Access tokens") shows how.

use serde::{Deserialize, Serialize};

use super::vocab::Role;

/// The claims of an access token.
///
/// Field names are the JSON names; everything but `sub`, `exp` and `rooms` may be omitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The holder's identity: unique per person or device in the issuer's system (1 to 128
    /// bytes, no control characters). One identity has at most one seat per room: a second
    /// join with it takes the first one's place.
    pub sub: String,
    /// Display name shown to the others; omitted: `sub`. The same rules as a `join` name apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The highest role the holder may join with; omitted: `speaker`.
    #[serde(default)]
    pub role: Role,
    /// Rooms the holder may join (and see with `room_info`): exact names, or a prefix ending in
    /// `*` (`team-*`; `*` alone is every room).
    pub rooms: Vec<String>,
    /// May create rooms (with `create_room`) among `rooms`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_create_rooms: bool,
    /// May list the server's rooms (`list_rooms`; only rooms among `rooms` are listed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub can_list_rooms: bool,
    /// May use the admin API (an operator's token).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Expiry, in seconds since the Unix epoch. A participant already in a room stays when its
    /// token expires; the token is checked when it is presented.
    pub exp: u64,
    /// Not valid before, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, in seconds since the Unix epoch (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}
