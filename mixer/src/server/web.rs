//! The browser client, embedded in the binary: `GET /` is its page and `GET /app/FILE` its
//! script, styles and audio worklets (the files of `mixer/web/`, compiled in, so the server
//! serves them offline, with no CDN and nothing on disk to deploy).
//!
//! The page speaks the protocol of `protocol/README.md` to the WebSocket on the same origin
//! (`ws://` or `wss://` as the page was loaded). Every response forbids loading anything from
//! elsewhere (`Content-Security-Policy`) and content sniffing, and asks browsers to revalidate,
//! so an upgraded server's page is never mixed with an old script.

use std::io;

use tokio::io::AsyncWrite;

/// The page's file name: what `GET /` serves.
pub const INDEX: &str = "index.html";

/// One embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// Its name under `/app/`.
    pub name: &'static str,
    /// Its `content-type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

/// Every file of the client. A name not here is `404`: nothing is ever read from disk.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: INDEX,
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../web/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "worklet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../web/worklet.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../web/icon.svg"),
    },
];

/// Same origin only. `connect-src` names `ws:` and `wss:` besides `'self'` because browsers
/// before CSP level 3 did not count the page's own WebSocket as `'self'`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self' ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The embedded file called `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|asset| asset.name == name)
}

/// Answers `GET /` or `GET /app/FILE` and closes the write side.
pub async fn serve<S: AsyncWrite + Unpin>(stream: &mut S, name: &str) -> io::Result<()> {
    let (status, content_type, body) = match asset(name) {
        Some(asset) => ("200 OK", asset.content_type, asset.body),
        None => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            &b"not found: the browser client's files are /, /app/app.js, /app/style.css, ...\n"[..],
        ),
    };
    let headers = format!(
        "cache-control: no-cache\r\nx-content-type-options: nosniff\r\n\
         content-security-policy: {CONTENT_SECURITY_POLICY}\r\nreferrer-policy: no-referrer\r\n"
    );
    super::http::respond_with_headers(stream, status, content_type, &headers, body).await
}

#[cfg(test)]
mod tests {
    use mixer_protocol::{ErrorCode, close_code};
    use tokio::io::AsyncReadExt;

    use super::*;

    fn text(name: &str) -> &'static str {
        std::str::from_utf8(asset(name).expect("embedded").body).expect("UTF-8")
    }

    #[test]
    fn the_page_loads_only_embedded_files() {
        let page = text(INDEX);
        for reference in ["/app/app.js", "/app/style.css", "/app/icon.svg"] {
            assert!(page.contains(reference), "{reference} not used by the page");
        }
        // Everything the page and its script name under /app/ is embedded.
        for source in [page, text("app.js")] {
            for (at, _) in source.match_indices("/app/") {
                let name: String = source[at + 5..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
                    .collect();
                assert!(asset(&name).is_some(), "/app/{name} is not embedded");
            }
        }
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn every_error_code_and_close_code_has_a_message_for_people() {
        // The script's table of messages is keyed by the wire names: one source of truth is
        // the protocol crate, and this keeps the page in step with it.
        let script = text("app.js");
        for code in ErrorCode::ALL {
            let key = format!("  {}: ", code.as_str());
            assert!(script.contains(&key), "app.js has no message for {code}");
        }
        for code in [
            close_code::GOING_AWAY,
            close_code::PROTOCOL_ERROR,
            close_code::INVALID_PAYLOAD,
            close_code::POLICY_VIOLATION,
            close_code::MESSAGE_TOO_BIG,
            close_code::INTERNAL_ERROR,
            close_code::REDIRECT,
        ] {
            assert!(
                script.contains(&format!("  {code}: ")),
                "app.js has no message for close code {code}"
            );
        }
    }

    #[tokio::test]
    async fn serves_files_with_their_type_and_a_strict_policy() {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        serve(&mut server, "app.js").await.expect("serve");
        let mut response = Vec::new();
        client.read_to_end(&mut response).await.expect("read");
        let response = String::from_utf8(response).expect("UTF-8");
        let (head, body) = response.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("content-type: text/javascript; charset=utf-8"));
        assert!(head.contains("x-content-type-options: nosniff"));
        assert!(head.contains("cache-control: no-cache"));
        assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(body, text("app.js"));

        let (mut client, mut server) = tokio::io::duplex(4096);
        serve(&mut server, "../Cargo.toml").await.expect("serve");
        let mut response = String::new();
        client.read_to_string(&mut response).await.expect("read");
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
    }
}
