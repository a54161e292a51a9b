//! Property checks on arbitrary bytes for the server's own parsers, shared by the `cargo fuzz`
//! targets in `fuzz/` and by the test that replays their corpora on the stable toolchain
//! (`tests/fuzz_corpus.rs`). The protocol's parsers have theirs in `mixer_protocol::fuzzing`.
//!
//! Each check takes any input and panics, naming the property, if the code under test breaks
//! one. Not part of the server's API (hidden from the docs).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::server::http::{self, Route};

/// The HTTP head reader: the route [`http::read_head`] decides depends only on the bytes, not on
/// how the network split them into reads; it is the route of the bytes as a whole; and the
/// routes that lead somewhere are only given to the requests they are for.
///
/// The first input byte picks the size of the reads in the second run (the first reads as much
/// as `read_head` asks for each time, like a loopback socket); the rest is the stream.
pub fn http_head(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    // 1..=10456 bytes a read: trickles, reads that straddle the head's end, and reads larger
    // than the reader's buffer.
    let step = 1 + usize::from(seed) * 41;
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => panic!("no tokio runtime for the check: {error}"),
    };
    let read = |step: usize| {
        runtime.block_on(async {
            let mut reader = Trickle { rest: stream, step };
            match http::read_head(&mut reader).await {
                Ok((bytes, route)) => {
                    assert!(
                        stream.starts_with(&bytes),
                        "read_head returned bytes not read"
                    );
                    Some(route)
                }
                Err(error) => {
                    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
                    None
                }
            }
        })
    };
    let whole = read(usize::MAX);
    let trickled = read(step);
    assert_eq!(
        whole, trickled,
        "the route depends on how the head was split into reads ({step} bytes a read)"
    );
    assert_eq!(
        whole,
        http::parse_head(stream),
        "read_head and parse_head disagree"
    );
    if let Some(route) = &whole {
        check_route(route, stream);
    }
}

/// A route that serves something was asked for by the request line itself.
fn check_route(route: &Route, stream: &[u8]) {
    // HTTP lets empty lines come before the request line (RFC 9112, 2.2), and httparse skips
    // them.
    let request_line = stream
        .split(|&b| b == b'\n')
        .find(|line| !line.is_empty() && *line != b"\r")
        .unwrap_or_default();
    let target_is = |path: &[u8]| {
        request_line.strip_prefix(b"GET ").is_some_and(|rest| {
            rest.strip_prefix(path)
                .is_some_and(|after| after.starts_with(b" ") || after.starts_with(b"?"))
        })
    };
    match route {
        Route::WebSocket => assert!(target_is(b"/"), "WebSocket route for another request"),
        Route::Health => assert!(target_is(b"/healthz"), "health route for another request"),
        Route::Metrics => assert!(target_is(b"/metrics"), "metrics route for another request"),
        Route::Admin => assert!(
            request_line
                .split(|&b| b == b' ')
                .nth(1)
                .is_some_and(|target| target.starts_with(b"/admin/")),
            "admin route for another request"
        ),
        Route::Listen(room) => {
            let mut expected = b"/listen/".to_vec();
            expected.extend_from_slice(room.as_bytes());
            assert!(target_is(&expected), "listen route for another request");
        }
        Route::Link(room) => {
            let mut expected = mixer_protocol::link::LINK_PATH_PREFIX.as_bytes().to_vec();
            expected.extend_from_slice(room.as_bytes());
            assert!(target_is(&expected), "link route for another request");
        }
        Route::Source(room) => {
            let target = request_line
                .split(|&b| b == b' ')
                .nth(1)
                .unwrap_or_default();
            let path = target.split(|&b| b == b'?').next().unwrap_or_default();
            assert!(
                (request_line.starts_with(b"PUT ") || request_line.starts_with(b"SOURCE "))
                    && path.strip_prefix(b"/") == Some(room.as_bytes()),
                "source route for another request"
            );
        }
        Route::App(file) => {
            let mut expected = b"/app/".to_vec();
            expected.extend_from_slice(file.as_bytes());
            assert!(
                target_is(&expected) || (file == crate::server::web::INDEX && target_is(b"/")),
                "app route for another request"
            );
        }
        Route::NotFound | Route::BadRequest => {}
    }
}

/// A reader that hands out at most `step` bytes a read, as a network may.
struct Trickle<'a> {
    rest: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.step.min(self.rest.len()).min(buf.remaining());
        let (now, later) = self.rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        Poll::Ready(Ok(()))
    }
}
