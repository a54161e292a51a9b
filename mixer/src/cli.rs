//! Command-line interface: flags and environment variables, validated into a server config.
//!
//! Every flag can also be set through the environment variable named in `--help`, which is how
//! containers and service managers usually configure it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::{Claims, Signer, Verifier, parse_ttl, unix_now};
use crate::engine::EngineConfig;
use crate::engine::codec::{EncoderSettings, OpusApplication};
use crate::engine::floor::{FloorConfig, FloorPolicy};
use crate::engine::jitter::JitterConfig;
use crate::fleet::{FleetConfig, FleetSettings, NodeId};
use crate::server::pool::PoolConfig;
use crate::server::tls::{TlsError, TlsFiles, TlsReloader};
use crate::server::{AccessConfig, ServerConfig, Settings};

/// Real-time Opus audio mixer: every participant in a room hears everyone but themselves.
#[derive(Debug, Parser)]
#[command(name = "mixer", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the mixer server.
    Serve(Box<ServeArgs>),
    /// Access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `mixer token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new access token signed with the key file (an HMAC secret, or an Ed25519
    /// private key whose public key the server holds).
    Create(TokenCreateArgs),
}

/// A role a token grants (the protocol's roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// May only listen.
    Listener,
    /// May talk and listen.
    Speaker,
    /// May also mute, remove and set the gain of others, mute the room and preempt the floor.
    Moderator,
}

impl From<RoleArg> for mixer_protocol::Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Listener => mixer_protocol::Role::Listener,
            RoleArg::Speaker => mixer_protocol::Role::Speaker,
            RoleArg::Moderator => mixer_protocol::Role::Moderator,
        }
    }
}

/// Flags of `mixer token create`.
#[derive(Debug, Clone, Args)]
pub struct TokenCreateArgs {
    /// The signing key: an HMAC secret (at least 32 bytes) or an Ed25519 private key (PEM).
    #[arg(long, env = "MIXER_AUTH_KEY_FILE")]
    pub key_file: PathBuf,
    /// A room the token grants: a name, or a prefix ending in `*` (`team-*`; `*` is every
    /// room). Repeat for several.
    #[arg(long = "room", required = true)]
    pub rooms: Vec<String>,
    /// The holder's identity (`sub`): one seat per room per identity.
    #[arg(long)]
    pub identity: String,
    /// Display name; default: the identity.
    #[arg(long)]
    pub name: Option<String>,
    /// The highest role the holder may join with.
    #[arg(long, value_enum, default_value_t = RoleArg::Speaker)]
    pub role: RoleArg,
    /// How long the token is valid: 90s, 30m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// May create rooms (among its rooms).
    #[arg(long)]
    pub can_create_rooms: bool,
    /// May list rooms (those among its rooms).
    #[arg(long)]
    pub can_list_rooms: bool,
    /// May use the admin API.
    #[arg(long)]
    pub admin: bool,
}

impl TokenCreateArgs {
    /// Signs the token these flags describe.
    pub fn sign(&self) -> anyhow::Result<String> {
        use anyhow::Context as _;
        let ttl = parse_ttl(&self.ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
        for room in &self.rooms {
            crate::auth::RoomPattern::parse(room).map_err(|e| anyhow::anyhow!("--room: {e}"))?;
        }
        let now = unix_now();
        let claims = Claims {
            sub: self.identity.clone(),
            name: self.name.clone(),
            role: self.role.into(),
            rooms: self.rooms.clone(),
            can_create_rooms: self.can_create_rooms,
            can_list_rooms: self.can_list_rooms,
            admin: self.admin,
            exp: now + ttl.as_secs(),
            nbf: None,
            iat: Some(now),
        };
        let signer = Signer::from_file(&self.key_file)?;
        let token = signer.sign(&claims).context("signing the token")?;
        // What a server would make of it: a token the server would refuse is an error here.
        if let Ok(verifier) = Verifier::from_file(&self.key_file) {
            verifier
                .verify(&token)
                .map_err(|e| anyhow::anyhow!("the token would be refused: {e}"))?;
        }
        Ok(token)
    }
}

/// Push-to-talk floor policy of new rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloorPolicyArg {
    /// Anyone in ptt mode is mixed while sending.
    Open,
    /// One speaker at a time, by floor_request.
    Single,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags of `mixer serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on for WebSocket clients and GET /healthz.
    #[arg(long, env = "MIXER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Separate address for GET /metrics (and /healthz); when set, /metrics is not served on
    /// --listen, so it can be kept off the public port.
    #[arg(long, env = "MIXER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// PEM certificate chain (the server's certificate first) for TLS on --listen: clients then
    /// connect with wss:// and https:// only. Needs --tls-key. Reread, with the key, on SIGHUP.
    /// --metrics-listen stays plain HTTP.
    #[arg(long, env = "MIXER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "MIXER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Mixer threads; 0 means one per CPU core.
    #[arg(long, env = "MIXER_THREADS", default_value_t = 0)]
    pub mixer_threads: usize,

    /// Rooms the server holds at most.
    #[arg(long, env = "MIXER_MAX_ROOMS", default_value_t = 10_000)]
    pub max_rooms: usize,

    /// Participants one room holds at most.
    #[arg(long, env = "MIXER_MAX_PARTICIPANTS", default_value_t = 256)]
    pub max_participants: usize,

    /// Talkers mixed at once per room: beyond it the loudest are mixed (with hysteresis) and the
    /// rest left out, which bounds a room's cost at this many + 1 encodes.
    #[arg(long, env = "MIXER_MAX_TALKERS", default_value_t = 16)]
    pub max_talkers: usize,

    /// A room splits a tick's decoding or encoding over its own thread and a helper thread when
    /// at least this many of its participants have that work to do this tick (talkers with
    /// audio to decode; own, replayed or PCM streams to encode), so one large room can use two
    /// cores; 0 keeps every room on one thread.
    #[arg(long, env = "MIXER_PARALLEL_ROOM_TALKERS", default_value_t = 48)]
    pub parallel_room_talkers: usize,

    /// Send a frame every 20 ms even while a participant's mix is silent. By default those
    /// frames are paused (downlink DTX) and the next frame carries the marker bit; set this for
    /// clients whose player cannot cope with gaps.
    #[arg(long, env = "MIXER_SEND_SILENCE")]
    pub send_silence: bool,

    /// Push-to-talk floor policy of new rooms: open (every ptt participant is mixed while it
    /// sends) or single (one speaker at a time, by floor_request; open mic for moderators only).
    #[arg(long, env = "MIXER_FLOOR_POLICY", value_enum, default_value_t = FloorPolicyArg::Open)]
    pub floor_policy: FloorPolicyArg,

    /// Single floor: longest turn, in ms, before the floor is revoked.
    #[arg(long, env = "MIXER_FLOOR_MAX_TALK_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub floor_max_talk_ms: u64,

    /// Single floor: the floor is revoked after this long without voice from its holder, in ms.
    #[arg(long, env = "MIXER_FLOOR_SILENCE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub floor_silence_ms: u64,

    /// Normalise talkers' levels in new rooms (each brought slowly towards -20 dBFS, within
    /// +-15 dB).
    #[arg(long, env = "MIXER_NORMALISE")]
    pub normalise: bool,

    /// Key that verifies access tokens: an HMAC secret (at least 32 bytes; HS256) or an Ed25519
    /// public key in PEM (EdDSA). With it, every join, create_room, room_info and list_rooms
    /// needs a token that grants it, and the admin API is served. Without it the server is
    /// open, which it allows only on a loopback address (see --insecure-no-auth).
    #[arg(long, env = "MIXER_AUTH_KEY_FILE")]
    pub auth_key_file: Option<PathBuf>,

    /// File holding the password of Icecast-style sources (`PUT /ROOM` or `SOURCE /ROOM` with
    /// HTTP Basic auth, as `ffmpeg ... icecast://source:PASSWORD@host:port/ROOM` sends) on a
    /// server without access tokens; at least 8 characters, surrounding whitespace ignored.
    /// With --auth-key-file the password is an access token instead. Without either, sources
    /// are refused.
    #[arg(long, env = "MIXER_SOURCE_PASSWORD_FILE")]
    pub source_password_file: Option<PathBuf>,

    /// Directory that room recordings are written to (created if missing), as
    /// ROOM-YYYYMMDDTHHMMSSZ.opus; moderators (`record`) and the admin API start and stop
    /// them. Without it, rooms cannot be recorded.
    #[arg(long, env = "MIXER_RECORD_DIR")]
    pub record_dir: Option<PathBuf>,

    /// Serve without access tokens on a non-loopback address: anyone who reaches the port can
    /// join any room, claim any role and moderate. Logged loudly and shown in /healthz.
    #[arg(long, env = "MIXER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Simultaneous connections at most; further ones get HTTP 503.
    #[arg(long, env = "MIXER_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Close a connection that has not joined a room this many ms after connecting (or after
    /// leaving), so idle sockets cannot hold connection slots; 0 never closes it.
    #[arg(long, env = "MIXER_UNJOINED_TIMEOUT_MS", default_value_t = 60_000)]
    pub unjoined_timeout_ms: u64,

    /// Simultaneous connections from one client address (an IPv6 /64) at most; further ones get
    /// HTTP 503. 0 for no limit (behind a reverse proxy, whose address every client shares, or
    /// for load tests from one machine).
    #[arg(long, env = "MIXER_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 100)]
    pub max_connections_per_address: usize,

    /// Audio a client's send queue holds, in ms; beyond it the oldest frames are dropped.
    #[arg(long, env = "MIXER_SEND_QUEUE_MS", default_value_t = 200)]
    pub send_queue_ms: u64,

    /// A client that reads nothing for this long (its queue overflowing all the time) is
    /// disconnected as a slow consumer, in ms.
    #[arg(long, env = "MIXER_SLOW_CLIENT_TIMEOUT_MS", default_value_t = 5_000)]
    pub slow_client_timeout_ms: u64,

    /// Kernel send buffer per client socket, in bytes; 0 keeps the OS default (which can grow to
    /// megabytes, that is minutes of audio a slow client would lag behind before any drop).
    #[arg(long, env = "MIXER_SOCKET_SEND_BUFFER", default_value_t = 32_768)]
    pub socket_send_buffer: usize,

    /// How often the server sends WebSocket pings, in ms.
    #[arg(long, env = "MIXER_PING_INTERVAL_MS", default_value_t = 10_000)]
    pub ping_interval_ms: u64,

    /// A client that sends nothing, not even a pong, for this long is disconnected, in ms.
    #[arg(long, env = "MIXER_PING_TIMEOUT_MS", default_value_t = 30_000)]
    pub ping_timeout_ms: u64,

    /// Time allowed for the HTTP request and WebSocket handshake, in ms.
    #[arg(long, env = "MIXER_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Largest WebSocket message accepted, in bytes; larger ones close the connection (1009).
    #[arg(long, env = "MIXER_MAX_MESSAGE_BYTES", default_value_t = 65_536)]
    pub max_message_bytes: usize,

    /// Smallest jitter-buffer playout delay, in ms (a multiple of 20).
    #[arg(long, env = "MIXER_JITTER_MIN_MS", default_value_t = 20)]
    pub jitter_min_ms: u32,

    /// Largest jitter-buffer playout delay, in ms (a multiple of 20).
    #[arg(long, env = "MIXER_JITTER_MAX_MS", default_value_t = 200)]
    pub jitter_max_ms: u32,

    /// Opus mode for the mixes the server encodes: voip, audio or lowdelay (CELT only).
    #[arg(long, env = "MIXER_OPUS_APPLICATION", default_value = "lowdelay")]
    pub opus_application: OpusApplication,

    /// Opus bitrate of the mixes, in bits per second: the shared stream's, and the floor of a
    /// talker's own stream, which adds 32 kb/s per voice beyond the first in its mix (up to
    /// 256 kb/s) so its own voice stays far below the codec noise.
    #[arg(long, env = "MIXER_OPUS_BITRATE", default_value_t = 48_000)]
    pub opus_bitrate: u32,

    /// Opus encoder complexity of the mixes, 0 (cheapest) to 10.
    #[arg(long, env = "MIXER_OPUS_COMPLEXITY", default_value_t = 5)]
    pub opus_complexity: u8,

    /// How long a participant whose connection dropped (no clean close) is kept, silent, for its
    /// client to come back with the resume token from `joined`, in ms; 0 disables resuming.
    #[arg(long, env = "MIXER_RESUME_WINDOW_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub resume_window_ms: u64,

    /// Redis of a fleet of mixer nodes (redis://host:port/db): the node registers there, and
    /// rooms are placed on the fleet's nodes through it (a client joining a room another node
    /// mixes is redirected there). Without it the node runs alone.
    #[arg(long, env = "MIXER_REDIS_URL")]
    pub redis_url: Option<String>,

    /// With --redis-url: where clients reach this node (ws:// or wss://), as other nodes'
    /// redirects will tell them.
    #[arg(long, env = "MIXER_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// With --redis-url: this node's id in the fleet (1 to 64 of A-Z a-z 0-9 . _ -); default:
    /// random.
    #[arg(long, env = "MIXER_NODE_ID")]
    pub node_id: Option<String>,

    /// With --redis-url: how long a draining node keeps its rooms before moving them to other
    /// nodes, in ms.
    #[arg(long, env = "MIXER_DRAIN_TIMEOUT_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub drain_timeout_ms: u64,

    /// The fleet's node key (a shared secret of at least 32 bytes, the same on every node):
    /// signs and checks node-to-node links (`/link/ROOM`). Without it the node takes no links
    /// and makes none.
    #[arg(long, env = "MIXER_NODE_KEY_FILE")]
    pub node_key_file: Option<PathBuf>,

    /// With --node-key-file: serve a client of a room mixed on another node as an *edge* (one
    /// link per room to that node carries all of this node's members) instead of redirecting
    /// it there.
    #[arg(long, env = "MIXER_EDGE")]
    pub edge: bool,

    /// With --edge: link through this node (ws://host:port) instead of straight to each
    /// room's node, making a tree of mixers. Outside a fleet, every room joined here is
    /// relayed there.
    #[arg(long, env = "MIXER_EDGE_UPSTREAM")]
    pub edge_upstream: Option<String>,

    /// How long shutdown waits for clients to close, in ms.
    #[arg(long, env = "MIXER_SHUTDOWN_GRACE_MS", default_value_t = 2_000)]
    pub shutdown_grace_ms: u64,

    /// Log format.
    #[arg(long, env = "MIXER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. "info" or "mixer=debug").
    #[arg(long, env = "MIXER_LOG", default_value = "info")]
    pub log: String,
}

/// A flag value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The source password file cannot be used.
    #[error("--source-password-file: {0}")]
    SourcePassword(String),
    /// The recording directory cannot be used.
    #[error("--record-dir: {0}")]
    RecordDir(String),
    /// The link flags cannot work together.
    #[error("--{flag}: {reason}")]
    Links {
        /// The flag at fault.
        flag: &'static str,
        /// Why.
        reason: String,
    },
    /// A value that must be positive was zero.
    #[error("--{flag} must be greater than zero")]
    Zero {
        /// The flag.
        flag: &'static str,
    },
    /// A jitter delay that is not a multiple of the 20 ms frame, or min above max.
    #[error(
        "jitter delays must be multiples of 20 ms with 20 <= min <= max <= 1000 (got min {min}, max {max})"
    )]
    JitterDelays {
        /// --jitter-min-ms.
        min: u32,
        /// --jitter-max-ms.
        max: u32,
    },
    /// The ping timeout does not exceed the ping interval.
    #[error("--ping-timeout-ms ({timeout}) must be larger than --ping-interval-ms ({interval})")]
    PingTimeout {
        /// --ping-timeout-ms.
        timeout: u64,
        /// --ping-interval-ms.
        interval: u64,
    },
    /// The message limit cannot hold every message a valid client sends.
    #[error(
        "--max-message-bytes must be at least {min} to hold the largest valid client message \
         (a 4096-byte control message; a 48 kHz pcm16 frame is 1929 bytes) (got {got})"
    )]
    MessageLimit {
        /// The minimum.
        min: usize,
        /// What was given.
        got: usize,
    },
    /// Bad Opus settings.
    #[error("{0}")]
    Encoder(String),
    /// The auth key file cannot be used.
    #[error("--auth-key-file: {0}")]
    AuthKey(String),
    /// An open server (no key) on an address other than loopback, without the flag that
    /// allows it.
    #[error(
        "refusing to listen on {address} without authentication: give --auth-key-file (see the README's \"Access tokens\"), listen on a loopback address, or pass --insecure-no-auth to accept that anyone who reaches the port can join any room and moderate"
    )]
    InsecureListen {
        /// --listen.
        address: SocketAddr,
    },
    /// One of --tls-cert and --tls-key without the other.
    #[error("--{given} needs --{missing} too (TLS takes a certificate and its key)")]
    TlsPair {
        /// The flag given.
        given: &'static str,
        /// The flag missing.
        missing: &'static str,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A fleet flag that cannot work.
    #[error("--{flag}: {reason}")]
    Fleet {
        /// The flag.
        flag: &'static str,
        /// What is wrong, with the value.
        reason: String,
    },
}

impl ServeArgs {
    /// Validates the flags into the server's configuration.
    pub fn to_config(&self) -> Result<ServerConfig, ConfigError> {
        let nonzero = |value: u64, flag: &'static str| {
            if value == 0 {
                Err(ConfigError::Zero { flag })
            } else {
                Ok(value)
            }
        };
        nonzero(self.max_rooms as u64, "max-rooms")?;
        nonzero(self.max_participants as u64, "max-participants")?;
        nonzero(self.max_talkers as u64, "max-talkers")?;
        nonzero(self.max_connections as u64, "max-connections")?;
        nonzero(self.send_queue_ms, "send-queue-ms")?;
        nonzero(self.slow_client_timeout_ms, "slow-client-timeout-ms")?;
        nonzero(self.ping_interval_ms, "ping-interval-ms")?;
        nonzero(self.handshake_timeout_ms, "handshake-timeout-ms")?;
        if self.ping_timeout_ms <= self.ping_interval_ms {
            return Err(ConfigError::PingTimeout {
                timeout: self.ping_timeout_ms,
                interval: self.ping_interval_ms,
            });
        }
        let (min, max) = (self.jitter_min_ms, self.jitter_max_ms);
        if min % 20 != 0 || max % 20 != 0 || min < 20 || min > max || max > 1000 {
            return Err(ConfigError::JitterDelays { min, max });
        }
        if self.max_message_bytes < MIN_MESSAGE_LIMIT {
            return Err(ConfigError::MessageLimit {
                min: MIN_MESSAGE_LIMIT,
                got: self.max_message_bytes,
            });
        }
        let encoder = EncoderSettings {
            application: self.opus_application,
            bitrate: self.opus_bitrate,
            complexity: self.opus_complexity,
        };
        encoder
            .validate()
            .map_err(|e| ConfigError::Encoder(e.to_string()))?;
        let verifier = self
            .auth_key_file
            .as_deref()
            .map(Verifier::from_file)
            .transpose()
            .map_err(|e| ConfigError::AuthKey(e.to_string()))?;
        let public = !self.listen.ip().is_loopback();
        if verifier.is_none() && public && !self.insecure_no_auth {
            return Err(ConfigError::InsecureListen {
                address: self.listen,
            });
        }
        let source_password = self
            .source_password_file
            .as_deref()
            .map(|path| {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::SourcePassword(format!("reading {}: {e}", path.display()))
                })?;
                let password = text.trim();
                if password.chars().count() < 8 {
                    return Err(ConfigError::SourcePassword(format!(
                        "{} holds a password of {} characters; at least 8 are needed",
                        path.display(),
                        password.chars().count()
                    )));
                }
                Ok(Arc::<str>::from(password))
            })
            .transpose()?;
        let record_dir = self
            .record_dir
            .as_deref()
            .map(|dir| {
                std::fs::create_dir_all(dir).map_err(|e| {
                    ConfigError::RecordDir(format!("creating {}: {e}", dir.display()))
                })?;
                let metadata = std::fs::metadata(dir).map_err(|e| {
                    ConfigError::RecordDir(format!("reading {}: {e}", dir.display()))
                })?;
                if metadata.permissions().readonly() {
                    return Err(ConfigError::RecordDir(format!(
                        "{} is read-only",
                        dir.display()
                    )));
                }
                Ok(dir.to_path_buf())
            })
            .transpose()?;
        let access = AccessConfig {
            insecure: verifier.is_none() && public,
            verifier,
            source_password,
        };
        let threads = match self.mixer_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let jitter = JitterConfig {
            min_delay_frames: min / 20,
            max_delay_frames: max / 20,
            ..JitterConfig::default()
        };
        let fleet = self.fleet_settings(tls_configured(self))?;
        let links = self.link_settings(fleet.as_ref())?;
        // Last: the only check that reads files, and the slowest.
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsReloader::load(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })?),
            (Some(_), None) => {
                return Err(ConfigError::TlsPair {
                    given: "tls-cert",
                    missing: "tls-key",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::TlsPair {
                    given: "tls-key",
                    missing: "tls-cert",
                });
            }
        };
        let frames = |ms: u64| {
            usize::try_from(ms.div_ceil(20))
                .unwrap_or(usize::MAX)
                .max(1)
        };
        Ok(ServerConfig {
            links,
            access,
            settings: Settings {
                send_queue_frames: frames(self.send_queue_ms),
                slow_client_drops: u32::try_from(frames(self.slow_client_timeout_ms))
                    .unwrap_or(u32::MAX),
                ping_interval: Duration::from_millis(self.ping_interval_ms),
                ping_timeout: Duration::from_millis(self.ping_timeout_ms),
                handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
                max_message_bytes: self.max_message_bytes,
                max_connections: self.max_connections,
                max_connections_per_address: self.max_connections_per_address,
                socket_send_buffer: (self.socket_send_buffer > 0)
                    .then_some(self.socket_send_buffer),
                shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
                resume_window: Duration::from_millis(self.resume_window_ms),
                unjoined_timeout: Duration::from_millis(self.unjoined_timeout_ms),
            },
            pool: PoolConfig {
                threads,
                max_rooms: self.max_rooms,
                resumable: self.resume_window_ms > 0,
                engine: EngineConfig {
                    encoder,
                    jitter,
                    max_participants: self.max_participants,
                    max_talkers: self.max_talkers,
                    parallel_threshold: (self.parallel_room_talkers > 0)
                        .then_some(self.parallel_room_talkers),
                    send_silence: self.send_silence,
                    floor: FloorConfig {
                        policy: match self.floor_policy {
                            FloorPolicyArg::Open => FloorPolicy::Open,
                            FloorPolicyArg::Single => FloorPolicy::Single,
                        },
                        max_talk: Duration::from_millis(self.floor_max_talk_ms),
                        silence_timeout: Duration::from_millis(self.floor_silence_ms),
                    },
                    normalise: self.normalise,
                    ..EngineConfig::default()
                },
            },
            tls,
            fleet,
            record_dir,
        })
    }

    /// Validates the link flags: `None` without --node-key-file.
    fn link_settings(
        &self,
        fleet: Option<&FleetSettings>,
    ) -> Result<Option<crate::server::edge::LinkSettings>, ConfigError> {
        let error = |flag, reason: String| ConfigError::Links { flag, reason };
        let Some(path) = &self.node_key_file else {
            if self.edge {
                return Err(error("edge", "needs --node-key-file".into()));
            }
            if self.edge_upstream.is_some() {
                return Err(error("edge-upstream", "needs --node-key-file".into()));
            }
            return Ok(None);
        };
        if self.edge_upstream.is_some() && !self.edge {
            return Err(error(
                "edge-upstream",
                "only means something with --edge".into(),
            ));
        }
        if self.edge && fleet.is_none() && self.edge_upstream.is_none() {
            return Err(error(
                "edge",
                "outside a fleet (--redis-url) an edge needs --edge-upstream to know where rooms are mixed".into(),
            ));
        }
        if let Some(url) = &self.edge_upstream {
            crate::server::edge::link_url(url, "room")
                .map_err(|reason| error("edge-upstream", reason))?;
        }
        let key = crate::server::link::LinkKey::from_file(path)
            .map_err(|e| error("node-key-file", e.to_string()))?;
        Ok(Some(crate::server::edge::LinkSettings {
            key: Arc::new(key),
            // Outside a fleet a node still needs an id of its own: the room's node tells one
            // edge's links from another's by it.
            node: match fleet {
                Some(fleet) => fleet.node.as_str().to_owned(),
                None => format!(
                    "standalone-{}",
                    crate::server::membership::new_resume_token()
                        .map_err(|e| error("node-key-file", format!("no random id: {e}")))?
                        .get(..8)
                        .unwrap_or_default()
                ),
            },
            edge: self.edge,
            upstream: self.edge_upstream.clone(),
            public_url: fleet.map(|f| f.public_url.clone()),
        }))
    }

    /// Validates the fleet flags: `None` without --redis-url, the other fleet flags then being
    /// refused rather than silently ignored.
    fn fleet_settings(&self, tls: bool) -> Result<Option<FleetSettings>, ConfigError> {
        let Some(redis_url) = &self.redis_url else {
            let orphan = [
                ("public-url", self.public_url.is_some()),
                ("node-id", self.node_id.is_some()),
            ];
            if let Some(&(flag, _)) = orphan.iter().find(|(_, given)| *given) {
                return Err(ConfigError::Fleet {
                    flag,
                    reason: "only means something in a fleet: give --redis-url too".into(),
                });
            }
            return Ok(None);
        };
        let fleet_error = |flag, reason| ConfigError::Fleet { flag, reason };
        redis::Client::open(redis_url.as_str()).map_err(|e| {
            fleet_error(
                "redis-url",
                format!("{redis_url:?} is not a Redis URL: {e}"),
            )
        })?;
        let public_url = self.public_url.clone().ok_or_else(|| {
            fleet_error(
                "public-url",
                "a fleet node needs the URL clients reach it at (ws://host:port/ or wss://...)"
                    .into(),
            )
        })?;
        let host = public_url
            .strip_prefix("wss://")
            .or_else(|| public_url.strip_prefix("ws://"))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
        if host.is_none_or(str::is_empty) {
            return Err(fleet_error(
                "public-url",
                format!("{public_url:?} is not a ws:// or wss:// URL with a host"),
            ));
        }
        // Behind a TLS-terminating proxy a plain server is reached by wss://; the reverse never
        // works.
        if tls && public_url.starts_with("ws://") {
            return Err(fleet_error(
                "public-url",
                format!("{public_url:?} is ws://, but this server takes only TLS: use wss://"),
            ));
        }
        let node = match &self.node_id {
            Some(id) => NodeId::new(id).map_err(|e| fleet_error("node-id", e.to_string()))?,
            None => NodeId::random()
                .map_err(|e| fleet_error("node-id", format!("no random id: {e}")))?,
        };
        Ok(Some(FleetSettings {
            store: FleetConfig::new(redis_url.clone()),
            node,
            public_url,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        }))
    }
}

fn tls_configured(args: &ServeArgs) -> bool {
    args.tls_cert.is_some() && args.tls_key.is_some()
}

/// The smallest `--max-message-bytes` that still takes every valid client message: the
/// largest control message, an Opus frame and a 48 kHz pcm16 frame.
const MIN_MESSAGE_LIMIT: usize = max(
    mixer_protocol::MAX_CONTROL_MESSAGE,
    max(
        mixer_protocol::MAX_AUDIO_FRAME,
        mixer_protocol::MAX_PCM_AUDIO_FRAME,
    ),
);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut full = vec!["mixer", "serve"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).map(|cli| match cli.command {
            Command::Serve(args) => *args,
            Command::Token(_) => unreachable!("parsed as serve"),
        })
    }

    #[test]
    fn defaults_validate() {
        let config = parse(&[]).expect("parse").to_config().expect("valid");
        assert_eq!(config.settings.send_queue_frames, 10);
        assert_eq!(config.settings.slow_client_drops, 250);
        assert!(config.pool.threads >= 1);
        assert_eq!(config.pool.engine.jitter.max_delay_frames, 10);
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let err = parse(&["--jitter-min-ms", "30"])
            .expect("parse")
            .to_config()
            .expect_err("invalid");
        assert!(err.to_string().contains("min 30"), "{err}");
        let err = parse(&["--ping-timeout-ms", "5000"])
            .expect("parse")
            .to_config()
            .expect_err("invalid");
        assert!(matches!(err, ConfigError::PingTimeout { .. }));
        let err = parse(&["--opus-complexity", "12"])
            .expect("parse")
            .to_config()
            .expect_err("invalid");
        assert!(err.to_string().contains("complexity 12"), "{err}");
        let err = parse(&["--max-rooms", "0"])
            .expect("parse")
            .to_config()
            .expect_err("invalid");
        assert_eq!(err, ConfigError::Zero { flag: "max-rooms" });
        // Room for an Opus frame but not for a 48 kHz pcm16 frame or a large control message.
        let err = parse(&["--max-message-bytes", "1500"])
            .expect("parse")
            .to_config()
            .expect_err("invalid");
        assert_eq!(
            err,
            ConfigError::MessageLimit {
                min: 4096,
                got: 1500
            }
        );
        assert!(
            parse(&["--max-message-bytes", "4096"])
                .expect("parse")
                .to_config()
                .is_ok()
        );
        assert!(parse(&["--opus-application", "speech"]).is_err());
        let err = parse(&["--tls-cert", "cert.pem"])
            .expect("parse")
            .to_config()
            .expect_err("no key");
        assert_eq!(
            err,
            ConfigError::TlsPair {
                given: "tls-cert",
                missing: "tls-key"
            }
        );
        let err = parse(&["--tls-key", "key.pem"])
            .expect("parse")
            .to_config()
            .expect_err("no certificate");
        assert!(
            err.to_string().contains("--tls-key needs --tls-cert"),
            "{err}"
        );
        let err = parse(&[
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .expect("parse")
        .to_config()
        .expect_err("no such file");
        assert!(
            matches!(err, ConfigError::Tls(TlsError::Read { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }

    #[test]
    fn an_open_server_listens_only_on_loopback_unless_told_otherwise() {
        let err = parse(&["--listen", "0.0.0.0:8080"])
            .expect("parse")
            .to_config()
            .expect_err("refused");
        assert!(matches!(err, ConfigError::InsecureListen { .. }), "{err}");
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        let config = parse(&["--listen", "[::]:8080", "--insecure-no-auth"])
            .expect("parse")
            .to_config()
            .expect("allowed");
        assert!(config.access.insecure && config.access.verifier.is_none());
        for loopback in ["127.0.0.1:8080", "[::1]:8080"] {
            let config = parse(&["--listen", loopback])
                .expect("parse")
                .to_config()
                .expect("loopback is fine");
            assert!(!config.access.insecure);
        }
        let err = parse(&["--auth-key-file", "/nonexistent/key"])
            .expect("parse")
            .to_config()
            .expect_err("no such file");
        assert!(matches!(err, ConfigError::AuthKey(_)), "{err}");
    }

    #[test]
    fn fleet_flags_are_checked_and_absent_by_default() {
        let config = parse(&[]).expect("parse").to_config().expect("valid");
        assert!(config.fleet.is_none());
        let config = parse(&[
            "--redis-url",
            "redis://10.0.0.5:6379/0",
            "--public-url",
            "wss://mixer-1.example.com/",
            "--node-id",
            "mixer-1",
            "--drain-timeout-ms",
            "60000",
        ])
        .expect("parse")
        .to_config()
        .expect("valid");
        let fleet = config.fleet.expect("a fleet node");
        assert_eq!(fleet.node.as_str(), "mixer-1");
        assert_eq!(fleet.store.redis_url, "redis://10.0.0.5:6379/0");
        assert_eq!(fleet.drain_timeout, Duration::from_secs(60));
        let random = parse(&["--redis-url", "redis://r/", "--public-url", "ws://h:8080/"])
            .expect("parse")
            .to_config()
            .expect("valid");
        assert!(
            random
                .fleet
                .expect("fleet")
                .node
                .as_str()
                .starts_with("node-")
        );
        for (args, flag, needle) in [
            (
                &["--public-url", "ws://h/"][..],
                "public-url",
                "--redis-url",
            ),
            (&["--node-id", "n1"][..], "node-id", "--redis-url"),
            (
                &["--redis-url", "redis://r/"][..],
                "public-url",
                "needs the URL",
            ),
            (
                &["--redis-url", "http://r/", "--public-url", "ws://h/"][..],
                "redis-url",
                "http://r/",
            ),
            (
                &["--redis-url", "redis://r/", "--public-url", "http://h/"][..],
                "public-url",
                "http://h/",
            ),
            (
                &["--redis-url", "redis://r/", "--public-url", "ws:///x"][..],
                "public-url",
                "ws:///x",
            ),
            (
                &[
                    "--redis-url",
                    "redis://r/",
                    "--public-url",
                    "ws://h/",
                    "--node-id",
                    "a b",
                ][..],
                "node-id",
                "\"a b\"",
            ),
        ] {
            let err = parse(args)
                .expect("parse")
                .to_config()
                .expect_err("invalid");
            assert!(
                matches!(&err, ConfigError::Fleet { flag: f, .. } if *f == flag),
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
