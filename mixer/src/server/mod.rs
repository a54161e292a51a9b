//! The tokio shell around the engine: accepts connections, runs mixer threads, shuts down.
//!
//! ```text
//!  client ──ws──▶ connection (reader) ──budget──▶ membership ──Command──▶ mixer_thread
//!                   │ parse once, check          (audio: bounded per       │ RoomSlot per room
//!                   │                             participant; control:    │ (room_fanout):
//!                   ▼                             bounded per thread)      │ engine + members
//!                 pool ── directory (rooms, seats, placement)              │
//!  client ◀──ws── writer ◀── Outbox (bounded, drop-oldest audio) ◀─────────┘
//! ```
//!
//! Where things are:
//! - [`connection`]: one client's WebSocket session, its reader and writer tasks.
//! - [`budget`]: the per-connection control budget (what each message costs).
//! - [`address_limit`]: how many connections one client address may hold.
//! - [`pool`]: the façade connections use: join, resume, create and list rooms.
//! - [`directory`]: which rooms exist, their settings, seats and mixer thread (pure, no locks).
//! - [`membership`]: a connection's handle on its seat: audio, requests, leave, suspend.
//! - [`mixer_thread`]: the thread that runs the ticks, and the commands it takes.
//! - [`room_fanout`]: a room on its mixer thread, its members, and fan-out to their outboxes.
//! - [`requests`]: control requests (mode, mute, floor, moderation, chat) applied to a room.
//! - [`outbox`]: a client's bounded send queue.
//! - [`metrics`], [`http`]: Prometheus metrics and the plain-HTTP routes.
//! - [`fleet_rooms`]: in a fleet (`--redis-url`), where each room is mixed, the room leases
//!   this node holds and the gates that stop a room at its lease's deadline; drain handoffs.
//! - [`fleet_node`]: the fleet's clock: lease renewals, this node's registration, the drain.
//! - [`listen`]: `GET /listen/ROOM`, a room's mix as Ogg/Opus over HTTP for any player.
//! - [`source`]: Icecast-style sources (`PUT /ROOM`, `SOURCE /ROOM`): an Ogg/Opus stream, from
//!   ffmpeg say, becomes a talker in the room.
//! - [`recording`]: a room's mix recorded to an Ogg/Opus file under `--record-dir`.
//! - [`admin`]: the operators' JSON API (rooms, mute, remove with a ban, close, drain).
//! - [`tls`]: TLS on the public port (`wss://`, `https://`), its certificate reloaded on SIGHUP.
//!
//! Connections run on the tokio runtime; mixing runs on its own threads. The only links between
//! them are the command channel into a mixer thread and each client's outbox, and neither ever
//! makes the mixer wait.

pub mod address_limit;
pub mod admin;
pub mod budget;
pub mod connection;
pub mod directory;
pub mod edge;
pub mod fleet_node;
pub mod fleet_rooms;
pub mod http;
pub mod link;
pub mod link_hub;
pub mod listen;
pub mod membership;
pub mod metrics;
pub mod mixer_thread;
pub mod outbox;
pub mod pool;
pub mod recording;
pub mod requests;
pub mod room_fanout;
pub mod seat;
pub mod source;
pub mod tls;
pub mod web;
pub mod ws_writer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use self::address_limit::{AddressLimits, ConnectionPlaces};
use self::metrics::Metrics;
use self::pool::{MixerPool, PoolConfig};
use self::tls::TlsReloader;

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Audio frames a client's send queue holds before the oldest is dropped.
    pub send_queue_frames: usize,
    /// Audio frames dropped in a row (client not reading at all) before it is disconnected.
    pub slow_client_drops: u32,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client that sends nothing (not even a pong) for this long is disconnected.
    pub ping_timeout: Duration,
    /// Time allowed for the HTTP request and WebSocket handshake.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message or frame accepted.
    pub max_message_bytes: usize,
    /// Simultaneous connections at most.
    pub max_connections: usize,
    /// Simultaneous connections from one address (an IPv6 /64) at most; 0 for no limit.
    pub max_connections_per_address: usize,
    /// Kernel send buffer per client socket, in bytes (`None` leaves the OS default). Audio that
    /// sits in a kernel buffer is audio the drop-oldest queue cannot drop: a small buffer keeps a
    /// slow client's backlog, and so its latency, bounded.
    pub socket_send_buffer: Option<usize>,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// How long a participant whose connection dropped is kept for resuming (zero: not kept).
    pub resume_window: Duration,
    /// A connection that has not joined a room this long after connecting (or after leaving)
    /// is closed (zero: never), so idle sockets do not hold connection slots.
    pub unjoined_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            send_queue_frames: 10,
            slow_client_drops: 250,
            ping_interval: Duration::from_secs(10),
            ping_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_message_bytes: 64 * 1024,
            max_connections: 10_000,
            max_connections_per_address: 100,
            socket_send_buffer: Some(32 * 1024),
            shutdown_grace: Duration::from_secs(2),
            resume_window: Duration::from_secs(30),
            unjoined_timeout: Duration::from_secs(60),
        }
    }
}

/// Who may do what (see [`crate::auth`]).
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// The token verifier; `None`: no tokens (an open server).
    pub verifier: Option<crate::auth::Verifier>,
    /// Open on a non-loopback address, as `--insecure-no-auth` allowed: said in the log and in
    /// `/healthz`.
    pub insecure: bool,
    /// The password of Icecast-style sources on a server without tokens
    /// (`--source-password-file`); `None`: sources need a token, or are refused.
    pub source_password: Option<Arc<str>>,
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connection settings.
    pub settings: Settings,
    /// Mixer threads and engine settings.
    pub pool: PoolConfig,
    /// Access tokens.
    pub access: AccessConfig,
    /// TLS on the public port (`None`: plain). Keep a clone to reload its certificate.
    pub tls: Option<TlsReloader>,
    /// Membership of a fleet (`--redis-url`): rooms are placed on the fleet's nodes through
    /// Redis (see [`fleet_rooms`] and [`fleet_node`]).
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// Where recordings are written (`--record-dir`); `None`: rooms cannot be recorded.
    pub record_dir: Option<std::path::PathBuf>,
    /// Node-to-node links (`--node-key-file`): taking them, and relaying rooms mixed on other
    /// nodes as an edge (`--edge`); `None`: no links.
    pub links: Option<edge::LinkSettings>,
}

/// The `/healthz` body of an open server on a public address.
pub const INSECURE_HEALTH: &str =
    "ok (INSECURE: no authentication; anyone who reaches this port can join any room)\n";

/// Serves WebSocket clients on `listener` until `shutdown` completes, then closes every
/// connection (telling clients why) and stops the mixer threads.
///
/// Taking the listener and the shutdown signal as arguments lets tests bind port 0 and stop the
/// server when they are done.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    serve(config, listener, None, shutdown).await
}

/// [`run`], optionally with a second listener that serves only `GET /metrics` and `/healthz`
/// (so metrics can stay off the public port). With a metrics listener, the public port does not
/// serve `/metrics`.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // A fleet node's series carry its id, so one Prometheus and one dashboard serve the fleet.
    let metrics = Arc::new(match &config.fleet {
        Some(fleet) => Metrics::with_node(fleet.node.as_str()),
        None => Metrics::new(),
    });
    let pool =
        MixerPool::start(config.pool.clone(), metrics.clone()).context("starting mixer threads")?;
    let fleet_rooms = config.fleet.clone().map(|settings| {
        Arc::new(fleet_rooms::FleetRooms::new(
            settings,
            metrics.clone(),
            pool.clone(),
            config.settings.resume_window,
        ))
    });
    let addresses = Arc::new(AddressLimits::new(
        config.settings.max_connections_per_address,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let context = Arc::new(connection::Context {
        settings: config.settings.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        public_metrics: metrics_listener.is_none(),
        addresses: addresses.clone(),
        auth: config.access.verifier.clone(),
        health: if config.access.insecure {
            INSECURE_HEALTH
        } else {
            "ok\n"
        },
        fleet: fleet_rooms.clone(),
        source_password: config.access.source_password.clone(),
        recorders: Arc::new(recording::Recorders::new(
            config.record_dir.clone(),
            stop_rx.clone(),
        )),
        edges: config.links.clone().map(|settings| {
            Arc::new(edge::Edges::new(
                settings,
                fleet_rooms.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ))
        }),
    });
    match (&config.access.verifier, config.access.insecure) {
        (Some(verifier), _) => info!(key = verifier.kind(), "access tokens required"),
        (None, true) => warn!(
            "INSECURE: no authentication on a non-loopback address (--insecure-no-auth): anyone who reaches this port can join any room, claim any role and moderate"
        ),
        (None, false) => info!("no access tokens (open server on a loopback address)"),
    }
    let metrics_task = metrics_listener.map(|listener| {
        let context = context.clone();
        tokio::spawn(async move { serve_metrics(listener, context).await })
    });
    let slots = Arc::new(Semaphore::new(config.settings.max_connections));
    let drained = Arc::new(tokio::sync::Notify::new());
    let fleet_task = fleet_rooms.clone().map(|rooms| {
        // Ids from different nodes then rarely meet when a room moves between them.
        pool.randomise_ids();
        tokio::spawn(fleet_node::run(
            rooms,
            pool.clone(),
            metrics.clone(),
            config.pool.threads,
            drained.clone(),
            stop_rx.clone(),
        ))
    });
    // A fleet node drains before it stops: the first shutdown signal starts the drain, and the
    // node stops once its rooms have emptied or moved (or the drain timeout and a grace period
    // have passed).
    let mut signalled = false;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let tls = config.tls.clone();
    let handshake_timeout = config.settings.handshake_timeout;
    info!(address = %listener.local_addr()?, threads = config.pool.threads, tls = tls.is_some(),
          "mixer listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Counted once accepted: a failed accept is not a connection.
                metrics.connections_total.inc();
                while connections.try_join_next().is_some() {}
                let _ = stream.set_nodelay(true);
                if let Some(bytes) = config.settings.socket_send_buffer {
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(bytes);
                }
                // One address may not hold every slot: its own limit is checked first.
                let Some(address) = addresses.admit(peer.ip()) else {
                    debug!(%peer, "per-address connection limit reached; refusing");
                    metrics.connections_refused_total.inc();
                    connections.spawn(refuse(
                        stream,
                        peer,
                        tls.clone(),
                        handshake_timeout,
                        "too many connections from your address\n",
                    ));
                    continue;
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(%peer, "connection limit reached; refusing");
                    metrics.connections_refused_total.inc();
                    connections.spawn(refuse(stream, peer, tls.clone(), handshake_timeout, "server full\n"));
                    continue;
                };
                let context = context.clone();
                let stop = stop_rx.clone();
                let places = ConnectionPlaces { slot: permit, address };
                let tls = tls.clone();
                connections.spawn(async move {
                    // The TLS handshake runs here, in the connection's task, not in this loop.
                    match tls {
                        None => connection::serve(stream, peer, places, context, stop).await,
                        Some(tls) => {
                            if let Some(stream) = tls.accept(stream, peer, handshake_timeout).await {
                                connection::serve(stream, peer, places, context, stop).await;
                            }
                        }
                    }
                });
            }
            () = &mut shutdown, if !signalled => {
                signalled = true;
                match &config.fleet {
                    Some(fleet) => {
                        info!(timeout = ?fleet.drain_timeout, "shutdown signal: draining first");
                        pool.set_draining(true);
                        drain_deadline = Some(
                            tokio::time::Instant::now() + fleet.drain_timeout + DRAIN_GRACE,
                        );
                    }
                    None => break,
                }
            }
            () = drained.notified(), if drain_deadline.is_some() => {
                info!("drained: every room emptied or moved");
                break;
            }
            () = sleep_until_or_never(drain_deadline) => {
                warn!("drain did not finish in time; stopping anyway");
                break;
            }
        }
    }
    info!(connections = connections.len(), "shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(config.settings.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    // Recordings end at the same signal, each writing its last page and syncing its file.
    if tokio::time::timeout(config.settings.shutdown_grace, context.recorders.closed())
        .await
        .is_err()
    {
        warn!("recordings still closing after the grace period");
    }
    if drained.is_err() {
        warn!(
            remaining = connections.len(),
            "connections still open after the grace period; aborting them"
        );
        connections.shutdown().await;
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = fleet_task {
        // It deregisters (one Redis round trip, bounded by the fleet's timeout).
        let _ = task.await;
    }
    tokio::task::spawn_blocking(move || pool.shutdown())
        .await
        .context("stopping mixer threads")?;
    info!("stopped");
    Ok(())
}

/// Answers a connection refused under the connection limits with a 503 (after the TLS
/// handshake, on a TLS port, so that the client can read it).
///
/// A refused connection holds no slot under the limits, so on a TLS port its handshake gets at
/// most [`REFUSAL_HANDSHAKE_TIMEOUT`]: clients stalling handshakes past the limits cannot pile
/// up sockets for the whole handshake timeout.
async fn refuse(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    tls: Option<TlsReloader>,
    handshake_timeout: Duration,
    body: &'static str,
) {
    let status = "503 Service Unavailable";
    match tls {
        None => {
            let mut stream = stream;
            let _ = http::respond(&mut stream, status, body).await;
        }
        Some(tls) => {
            let timeout = handshake_timeout.min(REFUSAL_HANDSHAKE_TIMEOUT);
            if let Some(mut stream) = tls.accept(stream, peer, timeout).await {
                let _ = http::respond(&mut stream, status, body).await;
            }
        }
    }
}

/// How long past its drain timeout a fleet node stopping on a signal waits for its rooms to
/// move before it stops anyway (no other node could take them, say).
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Longest TLS handshake a refused connection is given (a few round trips on a slow link).
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `GET /metrics` and `GET /healthz` on a separate listener until aborted.
async fn serve_metrics(listener: TcpListener, context: Arc<connection::Context>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            let metrics = &context.metrics;
            let head =
                tokio::time::timeout(Duration::from_secs(10), http::read_head(&mut stream)).await;
            let Ok(Ok((_, route))) = head else { return };
            let _ = match route {
                http::Route::Metrics => {
                    http::respond_with(
                        &mut stream,
                        "200 OK",
                        http::METRICS_CONTENT_TYPE,
                        &metrics.render(),
                    )
                    .await
                }
                http::Route::Health if context.pool.is_draining() => {
                    http::respond(&mut stream, "503 Service Unavailable", "draining\n").await
                }
                http::Route::Health => http::respond(&mut stream, "200 OK", context.health).await,
                _ => http::respond(&mut stream, "404 Not Found", "not found\n").await,
            };
        });
    }
}
