//! Access tokens for load against a server with a key: loadgen holds the signing side (the
//! HMAC secret, or the Ed25519 private key) and mints one token per client, each its own
//! identity (a room holds one seat per identity, so clients sharing a token would replace each
//! other).

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mixer_protocol::{AccessClaims, Role};

/// Mints tokens with one key.
pub struct TokenMint {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for TokenMint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TokenMint")
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

/// How long minted tokens are valid: longer than any run.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

impl TokenMint {
    /// Loads an HMAC secret (the file's bytes, trailing whitespace removed) or an Ed25519
    /// private key in PEM, as `mixer token create` does.
    pub fn from_file(path: &Path) -> anyhow::Result<TokenMint> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading key file {}: {e}", path.display()))?;
        if String::from_utf8_lossy(&bytes)
            .trim_start()
            .starts_with("-----BEGIN PRIVATE KEY-----")
        {
            let key = EncodingKey::from_ed_pem(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not an Ed25519 private key: {e}", path.display())
            })?;
            return Ok(TokenMint {
                key,
                algorithm: Algorithm::EdDSA,
            });
        }
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        Ok(TokenMint {
            key: EncodingKey::from_secret(&bytes[..end]),
            algorithm: Algorithm::HS256,
        })
    }

    /// A token for `identity` in the rooms matching `rooms` (names or `prefix*`) with `role`,
    /// allowed to create and list rooms (what a flooder tries).
    pub fn mint(&self, identity: &str, rooms: &[&str], role: Role) -> anyhow::Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = AccessClaims {
            sub: identity.to_owned(),
            name: None,
            role,
            rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
            can_create_rooms: true,
            can_list_rooms: true,
            admin: false,
            exp: now + TOKEN_LIFETIME_SECS,
            nbf: None,
            iat: Some(now),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(self.algorithm),
            &claims,
            &self.key,
        )?)
    }
}

/// `url` with `token` as its `access_token` query parameter (a JWT is URL-safe as it is).
pub fn with_token(url: &str, token: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}access_token={token}")
}
