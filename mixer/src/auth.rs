//! Access tokens: what a client may do, signed by whoever the operator trusts.
//!
//! A token is a JWT (RFC 7519) whose claims say who the holder is and what it may do (see
//! [`Claims`]). The server holds a key (`--auth-key-file`) and accepts only tokens that key
//! verifies: either an HMAC secret (HS256), shared by the server and the app backend that mints
//! tokens, or an Ed25519 public key (EdDSA), so that token issuers keep the private key and the
//! server holds nothing that can mint a token. The algorithm is fixed by the kind of key, never
//! taken from the token's header, so a token cannot pick a weaker algorithm than the key's.
//!
//! `mixer token create` mints tokens with the same file (the secret, or the Ed25519 private
//! key); any JWT library can do the same from the claims documented in `protocol/README.md`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
pub use mixer_protocol::AccessClaims as Claims;
use mixer_protocol::{ErrorCode, JoinRequest, Role, normalise_name};

/// Shortest HMAC secret accepted, in bytes: HS256's own strength.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest identity (`sub`) accepted, in bytes.
pub const MAX_IDENTITY_LEN: usize = 128;
/// Clock skew allowed between the token's issuer and this server when checking `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(5);

/// A verified token: what its holder may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The identity (`sub`).
    pub identity: String,
    /// The display name, normalised (see [`normalise_name`]).
    pub name: String,
    /// The highest role.
    pub role: Role,
    /// Rooms it may join.
    pub rooms: Vec<RoomPattern>,
    /// May create rooms among `rooms`.
    pub can_create_rooms: bool,
    /// May list rooms.
    pub can_list_rooms: bool,
    /// May use the admin API.
    pub admin: bool,
}

/// A room a token grants: one name, or every name with a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomPattern {
    /// Exactly this room.
    Exact(String),
    /// Every room whose name starts with this (possibly empty) prefix.
    Prefix(String),
}

impl RoomPattern {
    /// Parses `name` or `prefix*`; the name or prefix must be a valid room name (or empty, for
    /// `*`).
    pub fn parse(pattern: &str) -> Result<RoomPattern, String> {
        let (body, prefix) = match pattern.strip_suffix('*') {
            Some(body) => (body, true),
            None => (pattern, false),
        };
        if !(prefix && body.is_empty()) {
            JoinRequest::validate_room_name(body)
                .map_err(|e| format!("room pattern {pattern:?}: {e}"))?;
        }
        Ok(if prefix {
            RoomPattern::Prefix(body.to_owned())
        } else {
            RoomPattern::Exact(body.to_owned())
        })
    }

    /// Whether this pattern grants `room`.
    pub fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Exact(name) => name == room,
            RoomPattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

impl Grant {
    /// Whether the token grants `room`.
    pub fn allows_room(&self, room: &str) -> bool {
        self.rooms.iter().any(|pattern| pattern.matches(room))
    }

    /// Checks a join of `room` asking for `role` (`None`: the token's role); returns the role
    /// to join with.
    pub fn admit(&self, room: &str, role: Option<Role>) -> Result<Role, AuthError> {
        if !self.allows_room(room) {
            return Err(AuthError::WrongRoom {
                room: room.to_owned(),
            });
        }
        let role = role.unwrap_or(self.role);
        if !self.role.covers(role) {
            return Err(AuthError::Insufficient(format!(
                "the token grants role {}, not {}",
                self.role.as_str(),
                role.as_str()
            )));
        }
        Ok(role)
    }

    /// Checks a `create_room` of `room`.
    pub fn may_create(&self, room: &str) -> Result<(), AuthError> {
        if !self.can_create_rooms {
            return Err(AuthError::Insufficient(
                "the token does not grant creating rooms (can_create_rooms)".to_owned(),
            ));
        }
        if !self.allows_room(room) {
            return Err(AuthError::WrongRoom {
                room: room.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks a `list_rooms`.
    pub fn may_list(&self) -> Result<(), AuthError> {
        if self.can_list_rooms {
            Ok(())
        } else {
            Err(AuthError::Insufficient(
                "the token does not grant listing rooms (can_list_rooms)".to_owned(),
            ))
        }
    }
}

/// Why a token was not accepted. The messages never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was given and the server requires one.
    #[error(
        "this server requires an access token: send it as \"token\" in join, or as ?access_token= in the connection's URL"
    )]
    Missing,
    /// Not a JWT, a bad signature, another algorithm than the key's, or claims of the wrong
    /// shape.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// Past its `exp` (or before its `nbf`).
    #[error("the access token has expired or is not valid yet; get a new one")]
    Expired,
    /// The token does not grant this room.
    #[error("the access token does not grant room {room:?}")]
    WrongRoom {
        /// The room asked for.
        room: String,
    },
    /// The token does not grant what was asked.
    #[error("the access token is insufficient: {0}")]
    Insufficient(String),
}

impl AuthError {
    /// The protocol error code for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Missing => ErrorCode::TokenRequired,
            AuthError::Invalid(_) => ErrorCode::InvalidToken,
            AuthError::Expired => ErrorCode::TokenExpired,
            AuthError::WrongRoom { .. } => ErrorCode::TokenWrongRoom,
            AuthError::Insufficient(_) => ErrorCode::TokenInsufficient,
        }
    }
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("reading key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file that is not an Ed25519 key of the kind needed.
    #[error("key file {path}: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// An HMAC secret that is too short.
    #[error(
        "key file {path}: an HMAC secret must be at least {MIN_SECRET_BYTES} bytes (got {len}); make one with: head -c 32 /dev/urandom | base64 > {path}"
    )]
    ShortSecret {
        /// The file.
        path: String,
        /// Its length.
        len: usize,
    },
}

/// What a key file holds, decided by its contents.
enum KeyMaterial {
    /// An HMAC secret: the file's bytes without trailing whitespace.
    Secret(Vec<u8>),
    /// An Ed25519 public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    PublicPem(Vec<u8>),
    /// An Ed25519 private key, PEM (`-----BEGIN PRIVATE KEY-----`, PKCS#8).
    PrivatePem(Vec<u8>),
}

fn read_key(path: &Path) -> Result<KeyMaterial, KeyError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let start = text.trim_start();
    if start.starts_with("-----BEGIN PUBLIC KEY-----") {
        return Ok(KeyMaterial::PublicPem(bytes));
    }
    if start.starts_with("-----BEGIN PRIVATE KEY-----") {
        return Ok(KeyMaterial::PrivatePem(bytes));
    }
    if start.starts_with("-----BEGIN") {
        return Err(KeyError::Pem {
            path: shown,
            detail: "only Ed25519 keys in PKCS#8/SPKI PEM (BEGIN PRIVATE KEY / BEGIN PUBLIC KEY) are supported; make one with: openssl genpkey -algorithm ed25519".to_owned(),
        });
    }
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let secret = bytes[..end].to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(KeyError::ShortSecret {
            path: shown,
            len: secret.len(),
        });
    }
    Ok(KeyMaterial::Secret(secret))
}

/// Reads an HMAC secret (at least [`MIN_SECRET_BYTES`], trailing whitespace dropped): the
/// fleet's node key, which signs and checks the tokens of node-to-node links.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    match read_key(path)? {
        KeyMaterial::Secret(secret) => Ok(secret),
        KeyMaterial::PublicPem(_) | KeyMaterial::PrivatePem(_) => Err(KeyError::Pem {
            path: path.display().to_string(),
            detail: "a node key is a shared secret, not a PEM key; make one with: head -c 32 /dev/urandom | base64".to_owned(),
        }),
    }
}

/// Checks tokens: the server's side of a key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    /// `HMAC` or `Ed25519`, for the log.
    kind: &'static str,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Verifier")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Verifier {
    /// Loads the server's key: an HMAC secret or an Ed25519 public key. A private key is refused:
    /// the server should hold only what verifies.
    pub fn from_file(path: &Path) -> Result<Verifier, KeyError> {
        match read_key(path)? {
            KeyMaterial::Secret(secret) => Ok(Verifier::hmac(&secret)),
            KeyMaterial::PublicPem(pem) => {
                let key = DecodingKey::from_ed_pem(&pem).map_err(|e| KeyError::Pem {
                    path: path.display().to_string(),
                    detail: format!("not an Ed25519 public key: {e}"),
                })?;
                Ok(Verifier::with(key, Algorithm::EdDSA, "Ed25519"))
            }
            KeyMaterial::PrivatePem(_) => Err(KeyError::Pem {
                path: path.display().to_string(),
                detail: "this is a private key; give the server the public key (openssl pkey -in private.pem -pubout -out public.pem) and keep the private key with the token issuer".to_owned(),
            }),
        }
    }

    /// A verifier for HS256 tokens signed with `secret`.
    pub fn hmac(secret: &[u8]) -> Verifier {
        Verifier::with(DecodingKey::from_secret(secret), Algorithm::HS256, "HMAC")
    }

    fn with(key: DecodingKey, algorithm: Algorithm, kind: &'static str) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key,
            validation,
            kind,
        }
    }

    /// `HMAC` or `Ed25519`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Verifies `token` and its claims; returns what it grants.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        if token.len() > mixer_protocol::MAX_TOKEN_LEN {
            return Err(AuthError::Invalid(format!(
                "{} bytes, the maximum is {}",
                token.len(),
                mixer_protocol::MAX_TOKEN_LEN
            )));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => {
                    AuthError::Invalid("signature does not verify with this server's key".into())
                }
                ErrorKind::InvalidAlgorithm => AuthError::Invalid(format!(
                    "signed with another algorithm than this server's key ({})",
                    self.kind
                )),
                ErrorKind::MissingRequiredClaim(claim) => {
                    AuthError::Invalid(format!("missing claim {claim:?}"))
                }
                ErrorKind::Json(error) => AuthError::Invalid(format!("claims: {error}")),
                _ => AuthError::Invalid(format!("not a valid JWT ({error})")),
            },
        )?;
        grant(data.claims)
    }
}

/// Checks claims that verified; returns the grant.
fn grant(claims: Claims) -> Result<Grant, AuthError> {
    let invalid = |detail: String| Err(AuthError::Invalid(detail));
    if claims.sub.is_empty() || claims.sub.len() > MAX_IDENTITY_LEN {
        return invalid(format!("sub must be 1 to {MAX_IDENTITY_LEN} bytes"));
    }
    if claims.sub.chars().any(char::is_control) {
        return invalid("sub contains a control character".to_owned());
    }
    let name = normalise_name(claims.name.as_deref().unwrap_or(&claims.sub))
        .map_err(|e| AuthError::Invalid(format!("the token's name: {e}")))?;
    let rooms = claims
        .rooms
        .iter()
        .map(|pattern| RoomPattern::parse(pattern))
        .collect::<Result<Vec<_>, _>>()
        .map_err(AuthError::Invalid)?;
    Ok(Grant {
        identity: claims.sub,
        name,
        role: claims.role,
        rooms,
        can_create_rooms: claims.can_create_rooms,
        can_list_rooms: claims.can_list_rooms,
        admin: claims.admin,
    })
}

/// Signs tokens: the issuer's side of a key (`mixer token create`, and tests).
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl Signer {
    /// Loads an HMAC secret or an Ed25519 private key (a public key cannot sign).
    pub fn from_file(path: &Path) -> Result<Signer, KeyError> {
        match read_key(path)? {
            KeyMaterial::Secret(secret) => Ok(Signer::hmac(&secret)),
            KeyMaterial::PrivatePem(pem) => {
                let key = EncodingKey::from_ed_pem(&pem).map_err(|e| KeyError::Pem {
                    path: path.display().to_string(),
                    detail: format!("not an Ed25519 private key: {e}"),
                })?;
                Ok(Signer {
                    key,
                    algorithm: Algorithm::EdDSA,
                })
            }
            KeyMaterial::PublicPem(_) => Err(KeyError::Pem {
                path: path.display().to_string(),
                detail: "a public key cannot sign tokens; use the private key".to_owned(),
            }),
        }
    }

    /// A signer of HS256 tokens with `secret`.
    pub fn hmac(secret: &[u8]) -> Signer {
        Signer {
            key: EncodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
        }
    }

    /// Signs `claims` into a token.
    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses a duration such as `90s`, `30m`, `1h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    if number == 0 {
        return Err("the time to live must be positive".to_owned());
    }
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims() -> Claims {
        Claims {
            sub: "alice".into(),
            name: Some("Alice".into()),
            role: Role::Speaker,
            rooms: vec!["standup".into(), "team-*".into()],
            can_create_rooms: false,
            can_list_rooms: false,
            admin: false,
            exp: unix_now() + 600,
            nbf: None,
            iat: Some(unix_now()),
        }
    }

    fn sign(claims: &Claims) -> String {
        Signer::hmac(SECRET).sign(claims).expect("sign")
    }

    #[test]
    fn a_signed_token_grants_its_rooms_and_role_ceiling() {
        let grant = Verifier::hmac(SECRET)
            .verify(&sign(&claims()))
            .expect("valid");
        assert_eq!(grant.identity, "alice");
        assert_eq!(grant.name, "Alice");
        assert_eq!(grant.admit("standup", None), Ok(Role::Speaker));
        assert_eq!(
            grant.admit("team-blue", Some(Role::Listener)),
            Ok(Role::Listener)
        );
        assert_eq!(
            grant.admit("other", None).map_err(|e| e.code()),
            Err(ErrorCode::TokenWrongRoom)
        );
        // "standup-2" is not "standup": exact names are exact.
        assert!(!grant.allows_room("standup-2"));
        assert_eq!(
            grant
                .admit("standup", Some(Role::Moderator))
                .map_err(|e| e.code()),
            Err(ErrorCode::TokenInsufficient)
        );
        assert_eq!(
            grant.may_create("team-x").map_err(|e| e.code()),
            Err(ErrorCode::TokenInsufficient)
        );
        assert_eq!(
            grant.may_list().map_err(|e| e.code()),
            Err(ErrorCode::TokenInsufficient)
        );
    }

    #[test]
    fn every_kind_of_bad_token_has_its_own_error() {
        let verifier = Verifier::hmac(SECRET);
        let code = |token: &str| verifier.verify(token).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code("not a token"), Err(ErrorCode::InvalidToken));
        // Signed with another secret.
        let forged = Signer::hmac(b"another secret, also 32 bytes long")
            .sign(&claims())
            .expect("sign");
        assert_eq!(code(&forged), Err(ErrorCode::InvalidToken));
        // Expired beyond the leeway.
        let expired = Claims {
            exp: unix_now() - 60,
            ..claims()
        };
        assert_eq!(code(&sign(&expired)), Err(ErrorCode::TokenExpired));
        let early = Claims {
            nbf: Some(unix_now() + 600),
            ..claims()
        };
        assert_eq!(code(&sign(&early)), Err(ErrorCode::TokenExpired));
        // A token whose name would be refused in a join is refused too.
        let spoof = Claims {
            name: Some("[server] admin".into()),
            ..claims()
        };
        assert_eq!(code(&sign(&spoof)), Err(ErrorCode::InvalidToken));
        let bad_room = Claims {
            rooms: vec!["no spaces".into()],
            ..claims()
        };
        assert_eq!(code(&sign(&bad_room)), Err(ErrorCode::InvalidToken));
        // The signature covers the claims: editing them breaks it.
        let token = sign(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let moderator = Claims {
            role: Role::Moderator,
            ..claims()
        };
        let other = sign(&moderator);
        parts[1] = other.split('.').nth(1).expect("payload");
        assert_eq!(code(&parts.join(".")), Err(ErrorCode::InvalidToken));
        // alg "none" is never accepted.
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
        assert_eq!(code(&unsigned), Err(ErrorCode::InvalidToken));
    }

    #[test]
    fn room_patterns_are_names_or_prefixes() {
        assert!(RoomPattern::parse("*").expect("all").matches("anything"));
        assert!(RoomPattern::parse("a-*").expect("prefix").matches("a-b"));
        assert!(!RoomPattern::parse("a-*").expect("prefix").matches("b"));
        assert!(RoomPattern::parse("a*b").is_err());
        assert!(RoomPattern::parse("").is_err());
    }

    #[test]
    fn ttls_read_like_people_write_them() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
