//! The write side of a client's WebSocket, without tungstenite: frames are written as bytes.
//!
//! A server's WebSocket frames are not masked, so the frame carrying a tick's shared mix is the
//! same bytes for every listener. The mixer thread builds it once ([`WireFrame`]: frame head,
//! audio header, Opus) and every listener's writer writes those shared bytes as they are: one
//! `write` system call per listener per tick, no per-listener copy, serialisation or lock
//! other than its outbox's.
//!
//! tungstenite still reads the connection (and parses what clients send); what it writes by
//! itself (the pong answering a ping, the close answering a close) goes through a [`Duplex`]
//! into the connection's outbox, already framed, and the writer sends it in order with the rest.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use mixer_protocol::{ErrorCode, ServerMessage, close_code};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

use super::outbox::{Closed, Outbox, Outgoing};
use super::room_fanout::wire;

/// WebSocket opcodes with the FIN bit set (RFC 6455 §5.2): every frame here is a whole message.
const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;

/// The longest frame head a server writes: opcode, 127, a 64-bit length (no mask).
pub const MAX_HEAD: usize = 10;

/// Writes the head of an unmasked, final frame of `len` payload bytes into `into`.
pub fn put_head(into: &mut impl BufMut, opcode: u8, len: usize) {
    into.put_u8(opcode);
    if len < 126 {
        into.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        into.put_u8(126);
        into.put_u16(len);
    } else {
        into.put_u8(127);
        into.put_u64(len as u64);
    }
}

/// An audio frame (header and payload) as a binary WebSocket frame: built once, shared by
/// every connection that sends it (cloning is a reference count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    /// The whole WebSocket frame.
    bytes: Bytes,
    /// Where the audio frame starts in it (after the WebSocket head).
    head: u8,
}

impl WireFrame {
    /// Builds the WebSocket frame of the audio frame `parts` (concatenated) in `into`'s spare
    /// capacity and splits it off, so a block of `into` holds many frames without allocating.
    pub fn build(into: &mut BytesMut, parts: &[&[u8]]) -> WireFrame {
        let len = parts.iter().map(|p| p.len()).sum();
        let start = into.len();
        put_head(into, BINARY, len);
        let head = (into.len() - start) as u8;
        for part in parts {
            into.put_slice(part);
        }
        WireFrame {
            bytes: into.split().freeze(),
            head,
        }
    }

    /// The WebSocket frame of `frame` (for frames that arrive one at a time: tests, an edge's
    /// frame from its upstream link, which it builds once for all its listeners).
    pub fn of(frame: &[u8]) -> WireFrame {
        let mut into = BytesMut::with_capacity(MAX_HEAD + frame.len());
        WireFrame::build(&mut into, &[frame])
    }

    /// The audio frame: header and payload, without the WebSocket head.
    pub fn frame(&self) -> &[u8] {
        &self.bytes[usize::from(self.head)..]
    }

    /// The audio frame as shared bytes (no copy).
    pub fn frame_bytes(&self) -> Bytes {
        self.bytes.slice(usize::from(self.head)..)
    }

    /// The whole WebSocket frame, as it goes on the wire.
    pub fn websocket(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole WebSocket frame as shared bytes.
    pub fn websocket_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Length of the audio frame (what the metrics count as audio bytes out).
    pub fn len(&self) -> usize {
        self.bytes.len() - usize::from(self.head)
    }

    /// Whether the audio frame is empty (never, for a frame the mixer sends).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What tungstenite reads from and writes to: the socket's read half, and for writes the socket
/// during the handshake, then (once [`Duplex::hand_over`] has given the socket's write half to
/// the writer) the connection's outbox.
pub struct Duplex<S> {
    read: ReadHalf<S>,
    write: Replies<S>,
}

enum Replies<S> {
    /// The handshake's response goes straight to the socket.
    Socket(WriteHalf<S>),
    /// Pongs and close replies go to the writer, in order with everything else.
    Outbox(Arc<Outbox>),
}

impl<S: AsyncRead + AsyncWrite> Duplex<S> {
    /// A stream split into its two halves, both used by tungstenite until the handshake is done.
    pub fn new(stream: S) -> Duplex<S> {
        let (read, write) = tokio::io::split(stream);
        Duplex {
            read,
            write: Replies::Socket(write),
        }
    }

    /// Returns the socket's write half (for [`write_loop`]); from now on what tungstenite
    /// writes is queued in `outbox`. `None` if it was handed over already.
    pub fn hand_over(&mut self, outbox: Arc<Outbox>) -> Option<WriteHalf<S>> {
        match std::mem::replace(&mut self.write, Replies::Outbox(outbox)) {
            Replies::Socket(half) => Some(half),
            Replies::Outbox(_) => None,
        }
    }
}

impl<S: AsyncRead> AsyncRead for Duplex<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Duplex<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.write {
            Replies::Socket(half) => Pin::new(half).poll_write(cx, buf),
            // tungstenite writes whole frames from its buffer, so each write is whole frames
            // and queuing it as one item keeps them intact and in order.
            Replies::Outbox(outbox) => {
                Poll::Ready(if outbox.push_raw(Bytes::copy_from_slice(buf)) {
                    Ok(buf.len())
                } else {
                    Err(io::ErrorKind::BrokenPipe.into())
                })
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.write {
            Replies::Socket(half) => Pin::new(half).poll_flush(cx),
            Replies::Outbox(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.write {
            Replies::Socket(half) => Pin::new(half).poll_shutdown(cx),
            // The writer ends the connection (with its own close frame if none was sent).
            Replies::Outbox(_) => Poll::Ready(Ok(())),
        }
    }
}

/// Appends `item`'s WebSocket frame to `into` (audio and tungstenite's replies are framed
/// already; a control message gets its head here). Returns whether it was a close frame.
fn append(into: &mut Vec<u8>, item: &Outgoing) -> bool {
    match item {
        Outgoing::Audio(frame) => into.extend_from_slice(frame.websocket()),
        Outgoing::Control(text) => {
            put_head(into, TEXT, text.len());
            into.extend_from_slice(text.as_bytes());
        }
        Outgoing::Raw(bytes) => {
            into.extend_from_slice(bytes);
            return bytes.first() == Some(&CLOSE);
        }
    }
    false
}

/// Appends a close frame with `code` and `reason` to `into`.
fn append_close(into: &mut Vec<u8>, code: u16, reason: &str) {
    put_head(into, CLOSE, 2 + reason.len());
    into.extend_from_slice(&code.to_be_bytes());
    into.extend_from_slice(reason.as_bytes());
}

/// Drains `outbox` into `sink` until the outbox closes or the socket fails, with a ping every
/// `ping_interval`. Each wake-up is one write: a lone audio frame (the usual case, one per
/// tick) is written from the shared bytes themselves; several items are gathered first.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    mut sink: W,
    outbox: Arc<Outbox>,
    ping_interval: Duration,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut batch = Vec::new();
    let mut gathered = Vec::new();
    let mut close_sent = false;
    loop {
        let mut send_ping = false;
        tokio::select! {
            _ = outbox.wait() => {}
            _ = ping.tick() => send_ping = true,
        }
        let closed = outbox.drain(&mut batch);
        if send_ping {
            put_head(&mut gathered, PING, 0);
        }
        let written = match (batch.as_slice(), gathered.is_empty() && closed.is_none()) {
            ([Outgoing::Audio(frame)], true) => sink.write_all(frame.websocket()).await,
            _ => {
                for item in &batch {
                    close_sent |= append(&mut gathered, item);
                }
                if let Some(why) = closed
                    && !close_sent
                {
                    let (code, reason) = match why {
                        Closed::SlowConsumer => {
                            let message = ServerMessage::error(
                                ErrorCode::SlowConsumer,
                                "you read audio too slowly and fell behind; disconnecting",
                            );
                            append(&mut gathered, &Outgoing::Control(wire(&message)));
                            (close_code::POLICY_VIOLATION, "slow consumer")
                        }
                        Closed::Close { code, reason } => (code, reason),
                    };
                    append_close(&mut gathered, code, reason);
                }
                sink.write_all(&gathered).await
            }
        };
        batch.clear();
        gathered.clear();
        if written.is_err() || sink.flush().await.is_err() || closed.is_some() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_heads_use_the_shortest_length_encoding() {
        for (len, head) in [
            (0, vec![BINARY, 0]),
            (125, vec![BINARY, 125]),
            (126, vec![BINARY, 126, 0, 126]),
            (65_535, vec![BINARY, 126, 0xff, 0xff]),
            (65_536, vec![BINARY, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut into = Vec::new();
            put_head(&mut into, BINARY, len);
            assert_eq!(into, head, "length {len}");
        }
    }

    #[test]
    fn a_wire_frame_is_the_head_then_the_frame_and_slices_back_to_it() {
        let mut block = BytesMut::with_capacity(4096);
        let header = [1u8; 12];
        let payload = [7u8; 200];
        let frame = WireFrame::build(&mut block, &[&header, &payload]);
        assert_eq!(&frame.websocket()[..4], &[BINARY, 126, 0, 212]);
        assert_eq!(frame.len(), 212);
        assert_eq!(&frame.frame()[..12], &header);
        assert_eq!(frame.frame_bytes().as_ref(), frame.frame());
        // The block's next frame starts where this one ended, in the same allocation.
        let next = WireFrame::of(&[9]);
        assert_eq!(next.websocket(), &[BINARY, 1, 9]);
    }

    /// What the writer sends parses back, frame by frame, with tungstenite (a client's parser).
    #[tokio::test]
    async fn the_writer_s_bytes_are_websocket_frames_a_client_reads() {
        use futures_util::StreamExt;
        use tokio_tungstenite::WebSocketStream;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::Role;

        let (server, client) = tokio::io::duplex(1 << 16);
        let outbox = Arc::new(Outbox::new(8, 100));
        let writer = tokio::spawn(write_loop(server, outbox.clone(), Duration::from_secs(60)));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        async fn next(client: &mut WebSocketStream<tokio::io::DuplexStream>) -> Message {
            client
                .next()
                .await
                .expect("a message")
                .expect("a valid frame")
        }
        let frame = WireFrame::of(&[1, 2, 3]);
        outbox.push_audio(frame.clone());
        assert_eq!(
            next(&mut client).await,
            Message::Binary(Bytes::from_static(&[1, 2, 3]))
        );
        assert!(outbox.push_control("hello".into()));
        outbox.push_audio(WireFrame::of(&[4; 300]));
        assert_eq!(next(&mut client).await, Message::Text("hello".into()));
        assert_eq!(
            next(&mut client).await,
            Message::Binary(Bytes::from(vec![4; 300]))
        );
        outbox.close(Closed::SlowConsumer);
        let Message::Text(error) = next(&mut client).await else {
            panic!("expected the slow_consumer error");
        };
        assert!(error.contains("slow_consumer"), "{error}");
        let Message::Close(Some(close)) = next(&mut client).await else {
            panic!("expected a close frame");
        };
        assert_eq!(u16::from(close.code), close_code::POLICY_VIOLATION);
        writer.await.expect("the writer ends cleanly");
    }
}
