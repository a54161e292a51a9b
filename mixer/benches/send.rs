//! What sending a tick's shared frame to N listeners costs, per tick, in-process.
//!
//! Run it with `cargo bench -p mixer --bench send` (about a minute and a half). Each iteration is one tick
//! of a town hall's send path: the shared frame is framed once and pushed into N listeners'
//! outboxes (what the mixer thread does), and N writer tasks on a current-thread tokio runtime
//! are woken, drain their outbox and write the frame into a sink that counts bytes (what the
//! network threads do). The iteration ends when every writer has written its frame. No socket
//! is involved, so the system call per listener per tick (the same in both variants) is left
//! out: this is the user-space cost around it.
//!
//! - `send_path/raw/N`: the server's writer ([`write_loop`]): the frame's WebSocket bytes are
//!   built once per tick and each writer writes those shared bytes as they are.
//! - `send_path/tungstenite/N`: the writer as it was before (kept here to compare in the same
//!   run): each writer feeds the frame to its tungstenite sink (split from the stream, behind a
//!   `BiLock`), which frames it and copies it into its own buffer, then flushes.
//!
//! - `send_socket/writer/N`: the server's writer over N real loopback TCP connections, with the
//!   system calls. Each tick also reads every frame on the client side, so the kernel's loopback
//!   delivery and the client's reads are in the figure too.
//!
//! criterion's `thrpt` counts listeners: `1 / thrpt` is the cost per listener per tick.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use mixer::server::outbox::{Outbox, Outgoing};
use mixer::server::ws_writer::{WireFrame, write_loop};
use tokio::io::AsyncWrite;
use tokio::runtime::Runtime;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A 48 kb/s Opus frame (120 bytes) behind the 12-byte audio header.
const FRAME: [u8; 132] = [0x5a; 132];

/// Listener counts measured.
const LISTENERS: [usize; 3] = [100, 1_000, 3_000];

/// A socket stand-in that only counts what is written to it.
struct Counting(Arc<AtomicU64>);

impl AsyncWrite for Counting {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncRead for Counting {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Pending
    }
}

/// The writer loop before the send path was rewritten (tungstenite's sink, one message each).
async fn tungstenite_writer(outbox: Arc<Outbox>, written: Arc<AtomicU64>) {
    let ws = WebSocketStream::from_raw_socket(Counting(written), Role::Server, None).await;
    let (mut sink, _stream) = ws.split();
    let mut batch = Vec::new();
    loop {
        outbox.wait().await;
        let closed = outbox.drain(&mut batch);
        for item in batch.drain(..) {
            let message = match item {
                Outgoing::Audio(frame) => Message::Binary(frame.frame_bytes()),
                Outgoing::Control(text) => Message::Text(text),
                Outgoing::Raw(_) => continue,
            };
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if closed.is_some() || sink.flush().await.is_err() {
            return;
        }
    }
}

/// N listeners with running writers, and the bytes they have written in all.
struct TownHall {
    outboxes: Vec<Arc<Outbox>>,
    written: Arc<AtomicU64>,
    block: BytesMut,
}

impl TownHall {
    fn new(runtime: &Runtime, listeners: usize, tungstenite: bool) -> TownHall {
        let written = Arc::new(AtomicU64::new(0));
        let outboxes: Vec<_> = (0..listeners)
            .map(|_| Arc::new(Outbox::new(10, 250)))
            .collect();
        for outbox in &outboxes {
            let (outbox, written) = (outbox.clone(), written.clone());
            if tungstenite {
                runtime.spawn(tungstenite_writer(outbox, written));
            } else {
                let sink = Counting(written);
                runtime.spawn(write_loop(sink, outbox, Duration::from_secs(3600)));
            }
        }
        TownHall {
            outboxes,
            written,
            block: BytesMut::new(),
        }
    }

    /// One tick: the shared frame framed once, pushed to every listener, and written by every
    /// writer.
    async fn tick(&mut self) {
        let target =
            self.written.load(Ordering::Relaxed) + (self.outboxes.len() * (FRAME.len() + 4)) as u64;
        if self.block.capacity() < 256 {
            self.block.reserve(16 * 1024);
        }
        let frame = WireFrame::build(&mut self.block, &[&FRAME[..12], &FRAME[12..]]);
        for outbox in &self.outboxes {
            outbox.push_audio(frame.clone());
        }
        while self.written.load(Ordering::Relaxed) < target {
            tokio::task::yield_now().await;
        }
    }
}

/// N listeners on loopback TCP connections, and the client ends that read what they get.
struct SocketHall {
    outboxes: Vec<Arc<Outbox>>,
    clients: Vec<std::net::TcpStream>,
    block: BytesMut,
    buffer: Vec<u8>,
}

impl SocketHall {
    fn new(runtime: &Runtime, listeners: usize) -> SocketHall {
        let mut outboxes = Vec::with_capacity(listeners);
        let mut clients = Vec::with_capacity(listeners);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        for _ in 0..listeners {
            let client = std::net::TcpStream::connect(address).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            client.set_nonblocking(true).expect("non-blocking client");
            server.set_nonblocking(true).expect("non-blocking server");
            server.set_nodelay(true).expect("nodelay");
            let outbox = Arc::new(Outbox::new(10, 250));
            let server = runtime
                .block_on(async { tokio::net::TcpStream::from_std(server).expect("register") });
            runtime.spawn(write_loop(
                server,
                outbox.clone(),
                Duration::from_secs(3600),
            ));
            outboxes.push(outbox);
            clients.push(client);
        }
        SocketHall {
            outboxes,
            clients,
            block: BytesMut::new(),
            buffer: vec![0; 64 * 1024],
        }
    }

    /// One tick: the frame pushed to every listener, and read by every client.
    async fn tick(&mut self) {
        use std::io::Read;
        if self.block.capacity() < 256 {
            self.block.reserve(16 * 1024);
        }
        let frame = WireFrame::build(&mut self.block, &[&FRAME[..12], &FRAME[12..]]);
        let expected = frame.websocket().len();
        for outbox in &self.outboxes {
            outbox.push_audio(frame.clone());
        }
        for client in &mut self.clients {
            let mut got = 0;
            while got < expected {
                match client.read(&mut self.buffer[..expected - got]) {
                    Ok(0) => panic!("the server side closed"),
                    Ok(n) => got += n,
                    // Not there yet: let the writers run.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }
}

/// How long `ticks` calls of `tick` take on `runtime` (for criterion's `iter_custom`).
fn timed(runtime: &tokio::runtime::Runtime, ticks: u64, mut tick: impl AsyncFnMut()) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..ticks {
            tick().await;
        }
        start.elapsed()
    })
}

/// Closes every outbox, so their writer tasks end before the runtime is dropped.
fn close_all(outboxes: &[Arc<Outbox>]) {
    for outbox in outboxes {
        outbox.close(mixer::server::outbox::Closed::SlowConsumer);
    }
}

fn bench_send_socket(c: &mut Criterion) {
    let mut group = c.benchmark_group("send_socket");
    group.measurement_time(Duration::from_secs(4));
    let listeners = 1_000;
    group.throughput(Throughput::Elements(listeners as u64));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let mut hall = SocketHall::new(&runtime, listeners);
    group.bench_function(BenchmarkId::new("writer", listeners), |b| {
        b.iter_custom(|ticks| timed(&runtime, ticks, async || hall.tick().await))
    });
    close_all(&hall.outboxes);
    drop(runtime);
    group.finish();
}

fn bench_send_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("send_path");
    group.measurement_time(Duration::from_secs(4));
    for listeners in LISTENERS {
        group.throughput(Throughput::Elements(listeners as u64));
        for (name, tungstenite) in [("raw", false), ("tungstenite", true)] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime");
            let mut hall = TownHall::new(&runtime, listeners, tungstenite);
            // Let every writer start and wait on its outbox.
            runtime.block_on(async {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            });
            group.bench_function(BenchmarkId::new(name, listeners), |b| {
                b.iter_custom(|ticks| timed(&runtime, ticks, async || hall.tick().await))
            });
            close_all(&hall.outboxes);
            drop(runtime);
        }
    }
    group.finish();
}

criterion_group!(benches, bench_send_path, bench_send_socket);
criterion_main!(benches);
