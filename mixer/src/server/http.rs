//! The tiny bit of HTTP the server speaks before a WebSocket upgrade.
//!
//! One port serves both the WebSocket endpoint and plain `GET /healthz`. The connection's request
//! head is read first; plain requests are answered here, upgrades are handed to tungstenite with
//! the bytes already read replayed in front of the socket ([`Prefixed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD: usize = 8 * 1024;

/// What the request head asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A WebSocket upgrade on `/`.
    WebSocket,
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// Anything under `/admin/` (the admin API, which checks method and path itself).
    Admin,
    /// `GET /listen/ROOM`: the room's mix as an Ogg/Opus stream (the room name as given; it is
    /// validated by the listen handler).
    Listen(String),
    /// `GET /link/ROOM` with a WebSocket upgrade: a node-to-node link from an edge (the room
    /// name as given; the link handler validates it).
    Link(String),
    /// `PUT /ROOM` or `SOURCE /ROOM` (Icecast's methods): a source streaming into the room.
    Source(String),
    /// The browser client: `GET /` without an upgrade is its page (`index.html`), `GET
    /// /app/FILE` one of its files (the file name as given; [`super::web`] serves it or `404`).
    App(String),
    /// A path this server does not serve.
    NotFound,
    /// Not a parseable HTTP/1.x request.
    BadRequest,
}

/// Headers a request head may have (a browser sends about 15 with an upgrade).
const MAX_HEADERS: usize = 64;

/// Reads the request head; returns the bytes read (head and anything after it) and the route.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Vec<u8>, Route)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        // Decided on the bytes alone: checking the limit against however much the last read
        // brought accepted a head of up to MAX_HEAD + 1023 bytes when it came in large reads and
        // refused it when it trickled in (found by the `http_head` fuzz target's property).
        if let Some(route) = parse_head(&buf) {
            return Ok((buf, route));
        }
    }
}

/// The access token a request head carries, if any: the `access_token` query parameter (what a
/// browser's WebSocket can send) or an `Authorization: Bearer` header. A JWT is URL-safe as it
/// is, so the query value is taken without percent-decoding.
pub fn access_token(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    let from_query = request.path.and_then(|target| {
        let (_, query) = target.split_once('?')?;
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("access_token="))
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    });
    from_query.or_else(|| bearer(request.headers))
}

/// The token of a request head's `Authorization: Bearer` header, if any (not the query's).
pub fn bearer_of(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    bearer(request.headers)
}

/// The query string of a request head's target (after `?`), if it has one.
pub fn query(head: &[u8]) -> Option<String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    let (_, query) = request.path?.split_once('?')?;
    Some(query.to_owned()).filter(|q| !q.is_empty())
}

/// The user and password of an `Authorization: Basic` header.
pub fn basic_auth(head: &[u8]) -> Option<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    request.parse(head).ok()?;
    let value = request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("authorization"))?
        .value;
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Standard base64 (with or without padding); `None` for anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &[httparse::Header<'_>]) -> Option<String> {
    headers.iter().find_map(|header| {
        if !header.name.eq_ignore_ascii_case("authorization") {
            return None;
        }
        let value = std::str::from_utf8(header.value).ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
            .filter(|t| !t.is_empty())
    })
}

/// Decides the route from the bytes read so far; `None` while the head is incomplete. A head
/// that has not ended within [`MAX_HEAD`] bytes is a bad request.
///
/// Only the first [`MAX_HEAD`] bytes are looked at, so the answer for a stream of bytes is the
/// same however the network split it into reads: once it is `Some`, more bytes do not change it.
pub fn parse_head(bytes: &[u8]) -> Option<Route> {
    let window = &bytes[..bytes.len().min(MAX_HEAD)];
    match route(window) {
        None if bytes.len() >= MAX_HEAD => Some(Route::BadRequest),
        decided => decided,
    }
}

/// Decides the route of a complete head; `None` while the head is incomplete.
pub fn route(head: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Partial) => return None,
        Ok(httparse::Status::Complete(_)) => {}
        Err(_) => return Some(Route::BadRequest),
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Some(Route::BadRequest);
    };
    let path = target.split('?').next().unwrap_or_default();
    let upgrade = request.headers.iter().any(|header| {
        header.name.eq_ignore_ascii_case("upgrade")
            && std::str::from_utf8(header.value)
                .is_ok_and(|value| value.trim().eq_ignore_ascii_case("websocket"))
    });
    Some(match (method, path, upgrade) {
        ("GET", "/", true) => Route::WebSocket,
        ("GET", "/", false) => Route::App(super::web::INDEX.to_owned()),
        ("GET", path, false) if path.starts_with("/app/") => {
            Route::App(path["/app/".len()..].to_owned())
        }
        ("GET", path, true) if path.starts_with(mixer_protocol::link::LINK_PATH_PREFIX) => {
            Route::Link(path[mixer_protocol::link::LINK_PATH_PREFIX.len()..].to_owned())
        }
        ("GET", "/healthz", _) => Route::Health,
        ("GET", "/metrics", _) => Route::Metrics,
        (_, path, false) if path.starts_with("/admin/") => Route::Admin,
        ("GET", path, false) if path.starts_with("/listen/") => {
            Route::Listen(path["/listen/".len()..].to_owned())
        }
        ("PUT" | "SOURCE", path, false) if path.len() > 1 && !path[1..].contains('/') => {
            Route::Source(path[1..].to_owned())
        }
        _ => Route::NotFound,
    })
}

/// Content type of the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a complete plain-text HTTP response and closes the write side.
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
) -> io::Result<()> {
    respond_with(stream, status, "text/plain; charset=utf-8", body).await
}

/// Writes a complete HTTP response with the given content type and closes the write side.
pub async fn respond_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    respond_with_headers(stream, status, content_type, "", body.as_bytes()).await
}

/// Writes a complete HTTP response with the given content type, further header lines
/// (`extra_headers`: each ending in CRLF) and body, and closes the write side.
pub async fn respond_with_headers<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         {extra_headers}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// A stream that first yields bytes already read from it, then reads on.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    position: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            position: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.position < self.prefix.len() {
            let rest = &self.prefix[self.position..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.position += n;
            if self.position == self.prefix.len() {
                self.prefix = Vec::new();
                self.position = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        let ws = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert_eq!(route(ws), Some(Route::WebSocket));
        assert_eq!(
            route(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Health)
        );
        assert_eq!(
            route(b"GET /healthz?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Health)
        );
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::NotFound)
        );
        assert_eq!(
            route(b"POST /healthz HTTP/1.1\r\n\r\n"),
            Some(Route::NotFound)
        );
        assert_eq!(route(b"hello\r\n\r\n"), Some(Route::BadRequest));
        assert_eq!(route(b"\xff\xfe\r\n\r\n"), Some(Route::BadRequest));
        // Incomplete heads wait for more bytes.
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(route(b"GE"), None);
    }

    #[test]
    fn routes_the_browser_client() {
        // The same path is the page for a browser and the WebSocket for a client that upgrades.
        assert_eq!(
            route(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::App("index.html".into()))
        );
        assert_eq!(
            route(b"GET /?room=lobby&join=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::App("index.html".into()))
        );
        assert_eq!(
            route(b"GET /app/app.js?v=2 HTTP/1.1\r\n\r\n"),
            Some(Route::App("app.js".into()))
        );
        assert_eq!(
            route(b"GET /app/../secret HTTP/1.1\r\n\r\n"),
            Some(Route::App("../secret".into())),
            "looked up in the embedded table, never on disk"
        );
        assert_eq!(route(b"GET /app HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"GET /favicon.ico HTTP/1.1\r\n\r\n"),
            Some(Route::NotFound)
        );
        let upgrade = b"GET /app/app.js HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
        assert_eq!(route(upgrade), Some(Route::NotFound));
    }

    #[test]
    fn the_head_limit_is_decided_on_the_bytes_not_the_reads() {
        // A head ending a little past MAX_HEAD: refused however it arrives (it used to be
        // accepted when read 1024 bytes at a time and refused when read 42 at a time).
        let mut long = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
        long.resize(MAX_HEAD + 400, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        for end in [MAX_HEAD, MAX_HEAD + 1, MAX_HEAD + 42, long.len()] {
            assert_eq!(
                parse_head(&long[..end]),
                Some(Route::BadRequest),
                "{end} bytes"
            );
        }
        assert_eq!(parse_head(&long[..MAX_HEAD - 1]), None);
        // A head of exactly MAX_HEAD bytes is served, with or without bytes after it.
        let mut exact = b"GET /healthz HTTP/1.1\r\nX-Pad: ".to_vec();
        exact.resize(MAX_HEAD - 4, b'a');
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_head(&exact), Some(Route::Health));
        exact.extend_from_slice(b"more");
        assert_eq!(parse_head(&exact), Some(Route::Health));
        // And read_head agrees, whatever the read sizes (the fuzz target's property).
        let mut input = vec![1u8]; // 42 bytes a read in the second run
        input.extend_from_slice(&long);
        crate::fuzzing::http_head(&input);
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.expect("write");
        drop(a);
        let mut s = Prefixed::new(b"hello ".to_vec(), b);
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }

    #[tokio::test]
    async fn read_head_keeps_bytes_after_the_head() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"GET /healthz HTTP/1.1\r\n\r\nextra")
            .await
            .expect("write");
        let (bytes, route) = read_head(&mut b).await.expect("head");
        assert_eq!(route, Route::Health);
        assert!(bytes.ends_with(b"extra"));
    }

    #[test]
    fn basic_auth_decodes_what_ffmpeg_sends() {
        // ffmpeg's icecast:// sends `Authorization: Basic base64("source:SECRET")`.
        let head = b"PUT /lobby HTTP/1.1\r\nAuthorization: Basic c291cmNlOlNFQ1JFVA==\r\n\r\n";
        assert_eq!(
            basic_auth(head),
            Some(("source".to_owned(), "SECRET".to_owned()))
        );
        // Unpadded, and a password holding a colon.
        assert_eq!(base64_decode("YTpiOmM").as_deref(), Some(&b"a:b:c"[..]));
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        // Not base64, a lone trailing character, another scheme, no colon.
        assert_eq!(base64_decode("a$b="), None);
        assert_eq!(base64_decode("YWJjZ"), None);
        assert_eq!(
            basic_auth(b"PUT /x HTTP/1.1\r\nAuthorization: Bearer abc\r\n\r\n"),
            None
        );
        assert_eq!(
            basic_auth(b"PUT /x HTTP/1.1\r\nAuthorization: Basic bm9jb2xvbg==\r\n\r\n"),
            None
        );
        assert_eq!(
            route(b"SOURCE /lobby HTTP/1.0\r\n\r\n"),
            Some(Route::Source("lobby".to_owned()))
        );
        assert_eq!(route(b"PUT /a/b HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
    }
}
