//! Fetching a mixer's `/metrics` over plain HTTP/1.1: one `GET` per scrape on a fresh
//! connection (`Connection: close`), the response read to its end.
//!
//! The mixer answers every request with `content-length` and closes the connection, never
//! chunked (`mixer/src/server/http.rs`), so a chunked response is refused rather than decoded.
//! A client that asks once a second needs no connection reuse.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest one scrape may take, connecting included: under the sampler's 1 s period, so a
/// silent server delays no sample.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// Largest response read. The mixer's exposition is about 30 KiB; this bounds what a wrong
/// target can make loadgen hold.
pub const MAX_RESPONSE_BYTES: u64 = 8 << 20;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// The target is not `http://host[:port]/path`.
    #[error("{0:?} is not an http://host:port/path URL")]
    Url(String),
    /// Connecting to the target failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The error.
        source: io::Error,
    },
    /// Sending the request or reading the response failed.
    #[error("reading the response: {0}")]
    Io(#[from] io::Error),
    /// No complete response within [`SCRAPE_TIMEOUT`].
    #[error("no response within {} ms", SCRAPE_TIMEOUT.as_millis())]
    Timeout,
    /// The response was larger than [`MAX_RESPONSE_BYTES`].
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The response head is not valid HTTP/1.x.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// The connection closed before the head, or before `content-length` bytes of body.
    #[error("response cut short")]
    Truncated,
    /// A status other than 200 (a mixer with `--metrics-listen` answers 404 on its public port).
    #[error("status {0}")]
    Status(u16),
    /// A chunked body, which the mixer never sends.
    #[error("chunked responses are not supported")]
    Chunked,
    /// The body is not UTF-8 text.
    #[error("body is not UTF-8")]
    NotUtf8,
    /// The body is not a valid Prometheus exposition.
    #[error("body: {0}")]
    Metrics(#[from] super::prometheus::ParseError),
}

/// An `http://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Host name or address (an IPv6 address without its brackets).
    pub host: String,
    /// Port (80 if not given).
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Path and query, `/` if empty.
    pub path: String,
}

impl HttpTarget {
    /// Takes `http://host[:port][/path]` apart; anything else (https, user info, a bad port)
    /// is refused.
    pub fn parse(url: &str) -> Result<HttpTarget, ScrapeError> {
        let bad = || ScrapeError::Url(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = path.split('#').next().unwrap_or_default();
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port.parse().map_err(|_| bad())?,
            None => 80,
        };
        if host.is_empty() || host.contains(['[', ']']) {
            return Err(bad());
        }
        Ok(HttpTarget {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: match path {
                "" => "/".to_owned(),
                p if p.starts_with('?') => format!("/{p}"),
                p => p.to_owned(),
            },
        })
    }
}

/// GETs `url` (`http://` only) and returns the body of a 200 response, within
/// [`SCRAPE_TIMEOUT`].
pub async fn fetch(url: &str) -> Result<String, ScrapeError> {
    let target = HttpTarget::parse(url)?;
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch_from(&target))
        .await
        .map_err(|_| ScrapeError::Timeout)?
}

async fn fetch_from(target: &HttpTarget) -> Result<String, ScrapeError> {
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|source| ScrapeError::Connect {
            addr: target.authority.clone(),
            source,
        })?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadgen\r\nAccept: text/plain\r\n\
         Connection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE_BYTES + 1)
        .read_to_end(&mut response)
        .await?;
    if response.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(ScrapeError::TooLarge);
    }
    body_of(&response)
}

/// The body of a complete HTTP/1.x response, which must be `200` and not chunked; a
/// `content-length` cuts the body (and must be met).
pub fn body_of(response: &[u8]) -> Result<String, ScrapeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(response) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(ScrapeError::Truncated),
        Err(e) => return Err(ScrapeError::Malformed(e.to_string())),
    };
    let status = head.code.unwrap_or(0);
    if status != 200 {
        return Err(ScrapeError::Status(status));
    }
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return Err(ScrapeError::Chunked);
    }
    let mut body = &response[head_len..];
    if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| ScrapeError::Malformed(format!("content-length {length:?}")))?;
        body = body.get(..length).ok_or(ScrapeError::Truncated)?;
    }
    String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn http_urls_are_taken_apart_and_others_refused() {
        let t = HttpTarget::parse("http://127.0.0.1:8080/metrics").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/metrics")
        );
        let t = HttpTarget::parse("http://[::1]:9/m?x=1#frag").expect("valid");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 9, "/m?x=1")
        );
        assert_eq!(t.authority, "[::1]:9");
        let t = HttpTarget::parse("http://example.org").expect("valid");
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        for bad in [
            "https://h/metrics",
            "ws://h:1/",
            "http://",
            "http://h:99999/",
            "http://u@h/",
            "http://[::1/",
            "http://:80/",
        ] {
            assert!(
                matches!(HttpTarget::parse(bad), Err(ScrapeError::Url(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_a_complete_200_response_gives_its_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
                   connection: close\r\n\r\nhello";
        assert_eq!(body_of(ok).expect("ok"), "hello");
        // No content-length: the body runs to the end of the connection.
        assert_eq!(
            body_of(b"HTTP/1.0 200 OK\r\n\r\nall of it").expect("ok"),
            "all of it"
        );
        /// Whether an error is the one expected.
        type Expected = fn(&ScrapeError) -> bool;
        let cases: [(&[u8], Expected); 5] = [
            (
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                |e| matches!(e, ScrapeError::Status(404)),
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-len", |e| {
                matches!(e, ScrapeError::Truncated)
            }),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhalf", |e| {
                matches!(e, ScrapeError::Truncated)
            }),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                |e| matches!(e, ScrapeError::Chunked),
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", |e| {
                matches!(e, ScrapeError::Malformed(_))
            }),
        ];
        for (response, expected) in cases {
            let err = body_of(response).expect_err("refused");
            assert!(
                expected(&err),
                "{:?}: {err}",
                String::from_utf8_lossy(response)
            );
        }
    }

    /// Against the mixer's own response writer on a real socket: the request is a GET of the
    /// path, and the body comes back whole.
    #[tokio::test]
    async fn a_scrape_gets_the_body_the_mixer_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.expect("request");
                head.push(byte[0]);
            }
            let body = "mixer_participants{mode=\"talk\"} 2\n".repeat(2000);
            mixer::server::http::respond_with(
                &mut stream,
                "200 OK",
                mixer::server::http::METRICS_CONTENT_TYPE,
                &body,
            )
            .await
            .expect("respond");
            String::from_utf8(head).expect("ascii")
        });
        let body = fetch(&format!("http://{addr}/metrics"))
            .await
            .expect("scrape");
        assert_eq!(body.lines().count(), 2000);
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /metrics HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("Connection: close\r\n"), "{request}");
    }

    #[tokio::test]
    async fn a_closed_port_fails_to_connect() {
        // Bind then drop: the port is (almost certainly) closed for a moment.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let err = fetch(&format!("http://{addr}/metrics"))
            .await
            .expect_err("nothing listens");
        assert!(
            matches!(err, ScrapeError::Connect { .. } | ScrapeError::Timeout),
            "{err}"
        );
    }
}
