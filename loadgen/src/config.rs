//! Command-line flags and the validated [`Scenario`] they become.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Load generator for the mixer: joins simulated talkers and listeners, and checks what they hear.
///
/// Every talker sends a tone of its own; verified receivers decode what the server sends and
/// check that the right talkers are heard, their own voice and other rooms are not, and how long
/// audio takes from mouth to ear. Exit code: 0 all gates held, 1 a gate was violated, 2 usage or
/// setup error.
///
/// `loadgen merge` combines the reports of load generators that ran on several machines.
// A run takes flags only and `merge` takes its own: `args_conflicts_with_subcommands` keeps the
// two apart, so every run's command line parses as it did before `merge` existed.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    version,
    about,
    long_about,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Something else than a load run (`merge`); `None` runs the load the flags describe.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Mixer WebSocket URL, ws:// or wss://; repeat (or separate with commas) for several
    /// servers. Rooms are spread over them round-robin (all members of a room on the same server).
    #[arg(
        long,
        env = "LOADGEN_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/"
    )]
    pub url: Vec<String>,

    /// Number of rooms.
    #[arg(long, env = "LOADGEN_ROOMS", default_value_t = 1)]
    pub rooms: usize,

    /// Participants per room (talkers plus listeners).
    #[arg(long, env = "LOADGEN_PARTICIPANTS", default_value_t = 4)]
    pub participants: usize,

    /// How many participants of each room talk; the others join in listen mode.
    #[arg(long, env = "LOADGEN_TALKERS", default_value_t = 2)]
    pub talkers: usize,

    /// Talk pattern: `continuous` (1 s tone bursts back to back) or `spurts` (on/off periods drawn
    /// from an exponential distribution, nothing sent while off, like a conversation with DTX).
    #[arg(long, env = "LOADGEN_TALK", value_enum, default_value_t = TalkPattern::Continuous)]
    pub talk: TalkPattern,

    /// Mean talk-spurt length in `spurts` mode, in ms.
    #[arg(long, env = "LOADGEN_TALK_ON_MS", default_value_t = 2000)]
    pub talk_on_ms: u64,

    /// Mean pause between spurts in `spurts` mode, in ms.
    #[arg(long, env = "LOADGEN_TALK_OFF_MS", default_value_t = 1500)]
    pub talk_off_ms: u64,

    /// Measured time once every client has joined, in seconds (the ramp comes on top).
    #[arg(long, env = "LOADGEN_DURATION", default_value_t = 10.0)]
    pub duration: f64,

    /// Join rate while ramping up, in clients per second.
    #[arg(long, env = "LOADGEN_RAMP", default_value_t = 200.0)]
    pub ramp: f64,

    /// Seed for every random choice (talk spurts, impairments); the same seed gives the same run.
    #[arg(long, env = "LOADGEN_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Impairment: extra delay added to each sent packet, uniform in 0..J ms (reorders packets
    /// whose delays cross).
    #[arg(long, env = "LOADGEN_JITTER_MS", default_value_t = 0)]
    pub jitter_ms: u64,

    /// Impairment: percentage of sent packets dropped (the start of a loss burst).
    #[arg(long, env = "LOADGEN_LOSS", default_value_t = 0.0)]
    pub loss: f64,

    /// Impairment: percentage chance that a loss continues to the next packet (Gilbert burst
    /// loss; 0 = independent losses).
    #[arg(long, env = "LOADGEN_LOSS_BURST", default_value_t = 0.0)]
    pub loss_burst: f64,

    /// Impairment: percentage of packets swapped with the packet after them.
    #[arg(long, env = "LOADGEN_REORDER", default_value_t = 0.0)]
    pub reorder: f64,

    /// Send this WAV file (16-bit PCM, mono, 48 kHz) instead of tones, from every talker. Per
    /// talker checks then reduce to "audio present"; mix-minus, leak and delay are not checked.
    #[arg(long, env = "LOADGEN_WAV")]
    pub wav: Option<PathBuf>,

    /// How many receivers decode and verify their audio (spread over rooms); the others only
    /// count frames, loss and jitter.
    #[arg(long, env = "LOADGEN_VERIFY", default_value_t = 50)]
    pub verify: usize,

    /// Time after a room's last join that verification and delay ignore, in ms.
    #[arg(long, env = "LOADGEN_WARMUP_MS", default_value_t = 1500)]
    pub warmup_ms: u64,

    /// A talker counts as heard when its tone reaches this level, in dBFS.
    #[arg(long, env = "LOADGEN_HEARD_DB", default_value_t = -30.0, allow_hyphen_values = true)]
    pub heard_db: f64,

    /// Own voice (mix-minus) and other rooms' tones must be this far below the weakest talker
    /// heard, in dB.
    #[arg(long, env = "LOADGEN_ISOLATION_DB", default_value_t = 40.0)]
    pub isolation_db: f64,

    /// Write the full report as JSON to this file.
    #[arg(long, env = "LOADGEN_JSON")]
    pub json: Option<PathBuf>,

    /// Write the report as one self-contained HTML page to this file: the summary, the gates,
    /// charts of the run second by second (clients, frames, loss, jitter, delay, and each
    /// `ws://` mixer's tick time and CPU from its /metrics) and every verified receiver. With
    /// `--find-max`, the last round's report.
    #[arg(long, env = "LOADGEN_HTML")]
    pub html: Option<PathBuf>,

    /// Gate: largest acceptable loss of server frames, in percent.
    #[arg(long, env = "LOADGEN_MAX_LOSS")]
    pub max_loss: Option<f64>,

    /// Gate: largest acceptable p99 mouth-to-ear delay, in ms.
    #[arg(long, env = "LOADGEN_MAX_P99_DELAY")]
    pub max_p99_delay: Option<f64>,

    /// Gate: largest acceptable p99 inter-arrival jitter (RFC 3550), in ms.
    #[arg(long, env = "LOADGEN_MAX_P99_JITTER")]
    pub max_p99_jitter: Option<f64>,

    /// Gate: largest acceptable p99 join time, in ms.
    #[arg(long, env = "LOADGEN_MAX_P99_JOIN")]
    pub max_p99_join: Option<f64>,

    /// Gate: smallest acceptable receive rate of the worst client, in percent of 50 frames/s.
    #[arg(long, env = "LOADGEN_MIN_RX_RATE")]
    pub min_rx_rate: Option<f64>,

    /// Gate: most failed joins plus disconnects plus server errors tolerated.
    #[arg(long, env = "LOADGEN_MAX_ERRORS")]
    pub max_errors: Option<u64>,

    /// Gate: every verified receiver must pass verification.
    #[arg(long, env = "LOADGEN_REQUIRE_VERIFIED")]
    pub require_verified: bool,

    /// Capacity search: run rounds of growing load (more rooms each round) until a gate breaks,
    /// and report the largest load that held. Needs at least one gate.
    #[arg(long, env = "LOADGEN_FIND_MAX")]
    pub find_max: bool,

    /// Rooms added per `--find-max` round (default: the starting `--rooms`).
    #[arg(long, env = "LOADGEN_STEP")]
    pub step: Option<usize>,

    /// Most rounds `--find-max` runs.
    #[arg(long, env = "LOADGEN_MAX_ROUNDS", default_value_t = 10)]
    pub max_rounds: usize,

    /// Also report this process's CPU use over the run (the mixer's PID, Linux only).
    #[arg(long, env = "LOADGEN_MIXER_PID")]
    pub mixer_pid: Option<u32>,

    /// Prefix of the room names, so several load generators can share a server.
    #[arg(long, env = "LOADGEN_ROOM_PREFIX", default_value = "loadgen")]
    pub room_prefix: String,

    /// For wss:// URLs, trust only the CA certificate(s) in this PEM file (a self-signed test
    /// CA, say) instead of the system's roots.
    #[arg(long, env = "LOADGEN_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Time allowed for connecting and joining, in ms.
    #[arg(long, env = "LOADGEN_JOIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub join_timeout_ms: u64,

    /// Misbehaving clients added to the rooms (round-robin), each sending every kind of control
    /// message as fast as it can for the whole run. They are not counted or verified: the
    /// gates judge what the other clients get meanwhile.
    #[arg(long, env = "LOADGEN_FLOODERS", default_value_t = 0)]
    pub flooders: usize,

    /// Messages per second each flooder sends; 0 sends as fast as the connection takes them
    /// (the server then cuts the flooder off, and it reconnects).
    #[arg(long, env = "LOADGEN_FLOOD_RATE", default_value_t = 0)]
    pub flood_rate: u32,

    /// A reconnect storm: this many seconds after the ramp, `--storm-fraction` of the clients
    /// drop their connections at once (no close frame, as a network cut would) and rejoin at
    /// once, resuming with their tokens. The report says how long until each heard audio again.
    #[arg(long, env = "LOADGEN_STORM_AT")]
    pub storm_at: Option<f64>,

    /// Percentage of the clients a `--storm-at` storm drops.
    #[arg(long, env = "LOADGEN_STORM_FRACTION", default_value_t = 50.0)]
    pub storm_fraction: f64,

    /// Gate: the longest a stormed client may take from its drop to its first audio frame on
    /// the new connection, in ms (a client never heard again fails it).
    #[arg(long, env = "LOADGEN_MAX_STORM_RECOVERY")]
    pub max_storm_recovery: Option<f64>,

    /// For a server with access tokens: the signing key (the mixer's HMAC secret, or the
    /// Ed25519 private key whose public key the mixer holds). Each client gets a token of its
    /// own, with its own identity, in its connection URL.
    #[arg(long, env = "LOADGEN_AUTH_KEY_FILE")]
    pub auth_key_file: Option<std::path::PathBuf>,

    /// Run the scenario in this TOML file: several client groups, each with its own rooms,
    /// talk pattern, impairment, stages and churn, plus the gates (see loadgen/README.md). The
    /// flags that describe where and how to run (`--url`, `--json`, `--seed`, `--verify`, ...)
    /// still apply and override the file's `[run]` values; the flags that shape the load
    /// (`--rooms`, `--talkers`, ...) belong in the file and are refused with it.
    #[arg(long, env = "LOADGEN_SCENARIO")]
    pub scenario: Option<PathBuf>,

    /// Run only this generator's share of the load, `i/n` (0 <= i < n): whole rooms, those whose
    /// number counted over all groups leaves remainder `i` divided by `n`. Run the same scenario
    /// with `--shard 0/n` to `--shard n-1/n` on n machines, then `loadgen merge` their JSON.
    #[arg(long, env = "LOADGEN_SHARD")]
    pub shard: Option<Shard>,

    /// With `--scenario`: scale every group's load by this factor (its rooms, or the
    /// participants of a one-room group, its stages' client counts and its churn rate), keeping
    /// its timing, e.g. 0.1 to smoke-test a big scenario on a laptop.
    #[arg(long, env = "LOADGEN_SCALE", default_value_t = 1.0)]
    pub scale: f64,

    /// Serve loadgen's own Prometheus metrics (clients connected, frames received, lost and
    /// paused, errors, reconnections) on `GET /metrics` at this address, e.g. 0.0.0.0:9400, so a
    /// run can be watched next to the mixer.
    #[arg(long, env = "LOADGEN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// What loadgen can do besides a load run.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub enum Command {
    /// Merge the reports of load generators that ran one scenario together, one per machine.
    ///
    /// Each report is one written by `--json` for a share of the rooms (`--shard i/n`); the
    /// merged report sums the counts, recomputes the percentiles from the merged histograms and
    /// judges the gates again. Exit code: 0 all gates held, 1 a gate was violated, 2 unreadable
    /// or mismatched reports.
    Merge(MergeArgs),
}

/// The flags of `loadgen merge`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct MergeArgs {
    /// The reports to merge, as written by `loadgen --json`.
    #[arg(required = true, value_name = "REPORT")]
    pub reports: Vec<PathBuf>,

    /// Write the merged report as JSON to this file.
    #[arg(long, env = "LOADGEN_MERGE_JSON")]
    pub json: Option<PathBuf>,

    /// Write the merged report as one self-contained HTML page to this file.
    #[arg(long, env = "LOADGEN_MERGE_HTML")]
    pub html: Option<PathBuf>,
}

/// How talkers talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TalkPattern {
    /// Always sending: the 1 s tone-burst signal back to back.
    Continuous,
    /// Talk spurts and pauses with exponentially distributed lengths; silent periods not sent.
    Spurts,
}

/// Whether the flag with clap id `id` was given, on the command line or in the environment,
/// rather than left at its default (a scenario file's value then gives way to it).
pub fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    )
}

/// Network impairment applied by each talker before sending.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Impairment {
    /// Extra delay, uniform in `[0, jitter]`.
    pub jitter: Duration,
    /// Probability that a packet is dropped when the previous one was not.
    pub loss: f64,
    /// Probability that a packet is dropped when the previous one was.
    pub loss_burst: f64,
    /// Probability that a packet swaps places with the next.
    pub reorder: f64,
}

impl Impairment {
    /// From the numbers as flags and scenario files give them: jitter in ms, the rest in
    /// percent. A percentage outside 0..=100 is refused with its name (`loss`, `loss_burst`,
    /// `reorder`) and value, for the caller to word as its flag or key.
    pub fn from_percent(
        jitter_ms: u64,
        loss: f64,
        loss_burst: f64,
        reorder: f64,
    ) -> Result<Impairment, (&'static str, f64)> {
        for (name, value) in [
            ("loss", loss),
            ("loss_burst", loss_burst),
            ("reorder", reorder),
        ] {
            if !(0.0..=100.0).contains(&value) {
                return Err((name, value));
            }
        }
        Ok(Impairment {
            jitter: Duration::from_millis(jitter_ms),
            loss: loss / 100.0,
            loss_burst: loss_burst / 100.0,
            reorder: reorder / 100.0,
        })
    }

    /// Whether any impairment is configured.
    pub fn is_active(&self) -> bool {
        !self.jitter.is_zero() || self.loss > 0.0 || self.loss_burst > 0.0 || self.reorder > 0.0
    }
}

/// Service-level gates: a report that violates one makes the exit code 1.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Gates {
    /// Largest loss of server frames, percent.
    pub max_loss_pct: Option<f64>,
    /// Largest p99 mouth-to-ear delay, ms.
    pub max_p99_delay_ms: Option<f64>,
    /// Largest p99 jitter, ms.
    pub max_p99_jitter_ms: Option<f64>,
    /// Largest p99 join time, ms.
    pub max_p99_join_ms: Option<f64>,
    /// Longest a stormed client may take to hear audio again, ms.
    pub max_storm_recovery_ms: Option<f64>,
    /// Smallest receive rate of the worst client, percent of 50/s.
    pub min_rx_rate_pct: Option<f64>,
    /// Most errors (failed joins, disconnects, server error messages).
    pub max_errors: Option<u64>,
    /// Every verified receiver must pass.
    pub require_verified: bool,
}

impl Gates {
    /// Whether any gate is set.
    pub fn any(&self) -> bool {
        self.max_loss_pct.is_some()
            || self.max_p99_delay_ms.is_some()
            || self.max_p99_jitter_ms.is_some()
            || self.max_p99_join_ms.is_some()
            || self.max_storm_recovery_ms.is_some()
            || self.min_rx_rate_pct.is_some()
            || self.max_errors.is_some()
            || self.require_verified
    }
}

/// Audio every talker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Signal {
    /// A tone per talker from the frequency grid.
    Tones,
    /// One WAV file for all talkers.
    Wav(PathBuf),
}

/// A validated load scenario: everything [`crate::run`] needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// Mixer URLs; room `r` goes to `urls[r % urls.len()]`.
    pub urls: Vec<String>,
    /// Rooms.
    pub rooms: usize,
    /// Participants per room.
    pub participants: usize,
    /// Talkers per room (the first `talkers` participants).
    pub talkers: usize,
    /// Talk pattern.
    pub pattern: TalkPattern,
    /// Mean spurt length.
    pub talk_on: Duration,
    /// Mean pause length.
    pub talk_off: Duration,
    /// Measured time after the ramp.
    pub duration: Duration,
    /// Joins per second.
    pub ramp_per_sec: f64,
    /// Seed.
    pub seed: u64,
    /// Client-side impairment of talkers' packets.
    pub impairment: Impairment,
    /// What talkers send.
    pub signal: Signal,
    /// Receivers to verify.
    pub verify: usize,
    /// Ignored time after a room's last join.
    pub warmup: Duration,
    /// Heard threshold, dBFS.
    pub heard_db: f64,
    /// Isolation required, dB.
    pub isolation_db: f64,
    /// Gates.
    pub gates: Gates,
    /// PID of the mixer, to report its CPU.
    pub mixer_pid: Option<u32>,
    /// Room name prefix.
    pub room_prefix: String,
    /// The CA that wss:// URLs are checked against (`None`: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Connect plus join timeout.
    pub join_timeout: Duration,
    /// Capacity search settings, when `--find-max` is given.
    pub find_max: Option<FindMax>,
    /// Control-flooding clients added to the rooms.
    pub flooders: usize,
    /// Messages per second per flooder (`None`: as fast as possible).
    pub flood_rate: Option<u32>,
    /// A reconnect storm during the run, if any.
    pub storm: Option<Storm>,
    /// The key that signs each client's access token, for a server that requires them.
    pub auth_key_file: Option<std::path::PathBuf>,
    /// The group's name (`main` for a run from flags); part of its room names in a file's run.
    pub group: String,
    /// How the number of clients moves over the run. From flags: a ramp at `ramp_per_sec`,
    /// then a hold of `duration`.
    pub stages: Vec<Stage>,
    /// Clients leaving and coming back while the load holds.
    pub churn: Option<Churn>,
    /// Talkers talk push-to-talk in rooms of this floor policy (`None`: they talk freely).
    pub ptt: Option<mixer_protocol::FloorPolicy>,
    /// Moderators in each room, muting its talkers in turn.
    pub moderators: Option<Moderators>,
    /// The group's clients send and receive 16-bit PCM at this rate instead of Opus.
    #[serde(default)]
    pub pcm_rate: Option<u32>,
    /// This generator's share of the rooms, when the load comes from several machines.
    pub shard: Option<Shard>,
    /// The number of this group's first room counted over all groups (shards split rooms by
    /// it).
    pub first_room: usize,
}

/// A reconnect storm: a share of the clients drop their connections at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Storm {
    /// When, counted from the start of the run.
    pub at: Duration,
    /// Share of the clients dropped, 0 to 1.
    pub fraction: f64,
}

impl Storm {
    /// Whether client `index` is one of those dropped: a fixed spread over the clients (by a
    /// multiplicative hash of the index), so every room loses about the same share and a run
    /// is repeatable.
    pub fn takes(&self, index: usize) -> bool {
        let spread = (index as u32).wrapping_mul(0x9E37_79B9);
        f64::from(spread) / f64::from(u32::MAX) < self.fraction
    }
}

/// One stage of a group's load: the number of clients moves in a straight line from where the
/// previous stage left it (0 before the first) to `to` over `over`. A stage whose `to` equals
/// the count before it holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// Clients at the end of the stage.
    pub to: usize,
    /// How long the stage lasts.
    pub over: Duration,
}

/// Churn: while the load holds, clients leave and come back, as people drop out of and into
/// real rooms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    /// Leaves per second over the group (each followed by a join of the same client).
    pub per_second: f64,
    /// How long a client that left stays away before it joins again (as a new participant).
    pub away: Duration,
}

/// Moderators in every room of a group: the room's last `per_room` participants join as
/// moderators (listening) and mute the room's talkers in turn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moderators {
    /// Moderators per room.
    pub per_room: usize,
    /// Between two mutes by one moderator.
    pub every: Duration,
    /// How long each mute lasts.
    pub hold: Duration,
}

/// This generator's share of a scenario run from several machines: the rooms whose number
/// (counted over all groups) leaves remainder `index` divided by `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Which share, from 0.
    pub index: usize,
    /// Shares in all.
    pub count: usize,
}

impl Shard {
    /// Whether room `room` (counted over all groups) is in this share.
    pub fn has(&self, room: usize) -> bool {
        room % self.count == self.index
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Shard, String> {
        let bad = || format!("{text:?} is not a share i/n with 0 <= i < n (e.g. 0/2)");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// How `--find-max` grows the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindMax {
    /// Rooms added per round.
    pub step: usize,
    /// Most rounds.
    pub max_rounds: usize,
}

impl Scenario {
    /// Simulated clients in total (in all shards).
    pub fn clients(&self) -> usize {
        self.rooms * self.participants
    }

    /// The stages of a run from flags: `clients` join at `per_sec`, then the load holds for
    /// `hold`.
    pub fn flag_stages(clients: usize, per_sec: f64, hold: Duration) -> Vec<Stage> {
        vec![
            Stage {
                to: clients,
                over: Duration::from_secs_f64(clients as f64 / per_sec),
            },
            Stage {
                to: clients,
                over: hold,
            },
        ]
    }

    /// How many clients the stages call for `secs` into the run (a straight line through each
    /// stage; 0 before the first and after the last).
    pub fn target_at(&self, secs: f64) -> f64 {
        let (mut start, mut level) = (0.0, 0.0);
        for stage in &self.stages {
            let over = stage.over.as_secs_f64();
            let to = stage.to as f64;
            if secs < start + over {
                let done = ((secs - start) / over).clamp(0.0, 1.0);
                return level + (to - level) * done;
            }
            (start, level) = (start + over, to);
        }
        0.0
    }

    /// How long the run lasts: all its stages.
    pub fn length(&self) -> Duration {
        self.stages.iter().map(|stage| stage.over).sum()
    }

    /// The same scenario with `rooms` rooms (a `--find-max` round): a run from flags ramps
    /// them in at the same rate, so its stages and storm move with the longer ramp.
    pub fn with_rooms(&self, rooms: usize) -> Scenario {
        let mut this = self.clone();
        this.rooms = rooms;
        let old_ramp = self.stages.first().map_or(Duration::ZERO, |s| s.over);
        this.stages = Scenario::flag_stages(this.clients(), this.ramp_per_sec, this.duration);
        let new_ramp = this.stages[0].over;
        if let Some(storm) = this.storm.as_mut() {
            storm.at = storm.at.saturating_sub(old_ramp) + new_ramp;
        }
        this
    }

    /// Whether room `room` of this group is this generator's to run.
    pub fn runs_room(&self, room: usize) -> bool {
        self.shard
            .is_none_or(|shard| shard.has(self.first_room + room))
    }

    /// The name of room `room` (the round number keeps `--find-max` rounds apart).
    pub fn room_name(&self, round: usize, room: usize) -> String {
        format!("{}-{round}-{room}", self.room_prefix)
    }
}

/// Flag values that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// A count or rate that must be positive was not.
    #[error("--{flag} must be greater than zero (got {value})")]
    NotPositive {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: f64,
    },
    /// More talkers than participants.
    #[error("--talkers ({talkers}) cannot exceed --participants ({participants})")]
    TooManyTalkers {
        /// --talkers.
        talkers: usize,
        /// --participants.
        participants: usize,
    },
    /// A percentage outside 0..=100.
    #[error("--{flag} is a percentage and must be within 0..=100 (got {value})")]
    Percent {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: f64,
    },
    /// A URL that is neither `ws://` nor `wss://`.
    #[error("--url {0:?} must start with ws:// or wss://")]
    Url(String),
    /// A room prefix the server would reject.
    #[error("--room-prefix {0:?} may only contain A-Z a-z 0-9 _ . - and be at most 40 bytes")]
    RoomPrefix(String),
    /// Capacity search without anything to search against.
    #[error(
        "--find-max needs at least one gate (--max-loss, --max-p99-delay, --require-verified, ...)"
    )]
    FindMaxWithoutGates,
    /// A storm that would not happen within the measured time.
    #[error(
        "--storm-at {at} must be within the measured time after the ramp (0 to --duration {duration}, exclusive)"
    )]
    StormOutsideRun {
        /// --storm-at.
        at: f64,
        /// --duration.
        duration: f64,
    },
    /// The storm gate without a storm.
    #[error("--max-storm-recovery needs --storm-at")]
    StormGateWithoutStorm,
    /// `--scale` without a scenario file to scale.
    #[error("--scale scales a scenario file's groups (--scenario); scale flags' runs with --rooms")]
    ScaleWithoutScenario,
}

impl Args {
    /// Validates the flags into a [`Scenario`].
    pub fn to_scenario(&self) -> Result<Scenario, ScenarioError> {
        let positive = |flag: &'static str, value: f64| {
            if value > 0.0 && value.is_finite() {
                Ok(())
            } else {
                Err(ScenarioError::NotPositive { flag, value })
            }
        };
        positive("rooms", self.rooms as f64)?;
        positive("participants", self.participants as f64)?;
        positive("duration", self.duration)?;
        positive("ramp", self.ramp)?;
        if self.talk == TalkPattern::Spurts {
            positive("talk-on-ms", self.talk_on_ms as f64)?;
            positive("talk-off-ms", self.talk_off_ms as f64)?;
        }
        if self.find_max {
            positive("max-rounds", self.max_rounds as f64)?;
            if let Some(step) = self.step {
                positive("step", step as f64)?;
            }
        }
        if self.talkers > self.participants {
            return Err(ScenarioError::TooManyTalkers {
                talkers: self.talkers,
                participants: self.participants,
            });
        }
        let impairment =
            Impairment::from_percent(self.jitter_ms, self.loss, self.loss_burst, self.reorder)
                .map_err(|(name, value)| ScenarioError::Percent {
                    flag: if name == "loss_burst" {
                        "loss-burst"
                    } else {
                        name
                    },
                    value,
                })?;
        for url in &self.url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(ScenarioError::Url(url.clone()));
            }
        }
        if self.url.is_empty() {
            return Err(ScenarioError::Url(String::new()));
        }
        let prefix_ok = !self.room_prefix.is_empty()
            && self.room_prefix.len() <= 40
            && self
                .room_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !prefix_ok {
            return Err(ScenarioError::RoomPrefix(self.room_prefix.clone()));
        }
        let gates = Gates {
            max_loss_pct: self.max_loss,
            max_p99_delay_ms: self.max_p99_delay,
            max_p99_jitter_ms: self.max_p99_jitter,
            max_p99_join_ms: self.max_p99_join,
            max_storm_recovery_ms: self.max_storm_recovery,
            min_rx_rate_pct: self.min_rx_rate,
            max_errors: self.max_errors,
            require_verified: self.require_verified,
        };
        if self.find_max && !gates.any() {
            return Err(ScenarioError::FindMaxWithoutGates);
        }
        if !(0.0..=100.0).contains(&self.storm_fraction) {
            return Err(ScenarioError::Percent {
                flag: "storm-fraction",
                value: self.storm_fraction,
            });
        }
        if let Some(at) = self.storm_at
            && !(at >= 0.0 && at < self.duration)
        {
            return Err(ScenarioError::StormOutsideRun {
                at,
                duration: self.duration,
            });
        }
        if self.max_storm_recovery.is_some() && self.storm_at.is_none() {
            return Err(ScenarioError::StormGateWithoutStorm);
        }
        if self.scale != 1.0 && self.scenario.is_none() {
            return Err(ScenarioError::ScaleWithoutScenario);
        }
        let stages = Scenario::flag_stages(
            self.rooms * self.participants,
            self.ramp,
            Duration::from_secs_f64(self.duration),
        );
        Ok(Scenario {
            urls: self.url.clone(),
            rooms: self.rooms,
            participants: self.participants,
            talkers: self.talkers,
            pattern: self.talk,
            talk_on: Duration::from_millis(self.talk_on_ms),
            talk_off: Duration::from_millis(self.talk_off_ms),
            duration: Duration::from_secs_f64(self.duration),
            ramp_per_sec: self.ramp,
            seed: self.seed,
            impairment,
            signal: match &self.wav {
                Some(path) => Signal::Wav(path.clone()),
                None => Signal::Tones,
            },
            verify: self.verify,
            warmup: Duration::from_millis(self.warmup_ms),
            heard_db: self.heard_db,
            isolation_db: self.isolation_db,
            gates,
            mixer_pid: self.mixer_pid,
            room_prefix: self.room_prefix.clone(),
            ca_file: self.ca_file.clone(),
            join_timeout: Duration::from_millis(self.join_timeout_ms),
            find_max: self.find_max.then(|| FindMax {
                step: self.step.unwrap_or(self.rooms),
                max_rounds: self.max_rounds,
            }),
            flooders: self.flooders,
            flood_rate: (self.flood_rate > 0).then_some(self.flood_rate),
            storm: self.storm_at.map(|at| Storm {
                at: stages[0].over + Duration::from_secs_f64(at),
                fraction: self.storm_fraction / 100.0,
            }),
            auth_key_file: self.auth_key_file.clone(),
            group: "main".to_owned(),
            stages,
            churn: None,
            ptt: None,
            moderators: None,
            pcm_rate: None,
            shard: self.shard,
            first_room: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let mut full = vec!["loadgen"];
        full.extend_from_slice(args);
        Args::try_parse_from(full).expect("parses")
    }

    #[test]
    fn defaults_validate_and_bad_values_name_the_flag() {
        let scenario = parse(&[]).to_scenario().expect("valid");
        assert_eq!(scenario.clients(), 4);
        assert!(!scenario.gates.any());
        let err = parse(&["--talkers", "5"])
            .to_scenario()
            .expect_err("invalid");
        assert!(err.to_string().contains("--talkers (5)"), "{err}");
        let err = parse(&["--loss", "120"])
            .to_scenario()
            .expect_err("invalid");
        assert!(err.to_string().contains("--loss"), "{err}");
        let err = parse(&["--url", "http://x"])
            .to_scenario()
            .expect_err("invalid");
        assert!(matches!(err, ScenarioError::Url(_)));
        let err = parse(&["--find-max"]).to_scenario().expect_err("invalid");
        assert_eq!(err, ScenarioError::FindMaxWithoutGates);
        let err = parse(&["--room-prefix", "a b"])
            .to_scenario()
            .expect_err("invalid");
        assert!(matches!(err, ScenarioError::RoomPrefix(_)));
        let s = parse(&["--url", "wss://a/", "--ca-file", "ca.pem"])
            .to_scenario()
            .expect("valid");
        assert_eq!(s.ca_file.as_deref(), Some(std::path::Path::new("ca.pem")));
        let s = parse(&["--url", "ws://a/,ws://b/", "--loss", "5", "--max-loss", "1"])
            .to_scenario()
            .expect("valid");
        assert_eq!(s.urls.len(), 2);
        assert!((s.impairment.loss - 0.05).abs() < 1e-12);
        assert!(s.gates.any());
    }

    #[test]
    fn a_storm_takes_its_share_of_the_clients_and_must_fall_inside_the_run() {
        let s = parse(&["--storm-at", "2", "--storm-fraction", "30"])
            .to_scenario()
            .expect("valid");
        let storm = s.storm.expect("a storm");
        // Two seconds after the ramp of 4 clients at 200 a second.
        assert_eq!(storm.at, Duration::from_millis(2020));
        let taken = (0..1000).filter(|&i| storm.takes(i)).count();
        assert!((250..=350).contains(&taken), "30 % of 1000 took {taken}");
        // Spread over the rooms, not the first clients: every block of ten loses some.
        assert!((0..100).all(|block| (0..10).any(|k| storm.takes(block * 10 + k))));
        let all = Storm {
            fraction: 1.0,
            ..storm
        };
        assert!((0..1000).all(|i| all.takes(i)));

        let err = parse(&["--storm-at", "9", "--duration", "5"])
            .to_scenario()
            .expect_err("after the end");
        assert!(err.to_string().contains("--storm-at 9"), "{err}");
        let err = parse(&["--storm-at", "1", "--storm-fraction", "150"])
            .to_scenario()
            .expect_err("not a percentage");
        assert!(err.to_string().contains("--storm-fraction"), "{err}");
        let err = parse(&["--max-storm-recovery", "500"])
            .to_scenario()
            .expect_err("no storm");
        assert_eq!(err, ScenarioError::StormGateWithoutStorm);
        let err = parse(&["--scale", "0.5"])
            .to_scenario()
            .expect_err("no file");
        assert_eq!(err, ScenarioError::ScaleWithoutScenario);
        assert!(parse(&[]).to_scenario().expect("valid").storm.is_none());
    }

    #[test]
    fn merge_is_a_subcommand_and_a_run_still_takes_its_flags_alone() {
        let args = parse(&[
            "merge", "a.json", "b.json", "--json", "all.json", "--html", "all.html",
        ]);
        assert_eq!(
            args.command,
            Some(Command::Merge(MergeArgs {
                reports: vec!["a.json".into(), "b.json".into()],
                json: Some("all.json".into()),
                html: Some("all.html".into()),
            }))
        );
        // The run's flags, as before there was a subcommand.
        let run = parse(&["--rooms", "3", "--json", "run.json"]);
        assert_eq!(run.command, None);
        assert_eq!(run.rooms, 3);
        assert_eq!(run.json.as_deref(), Some(std::path::Path::new("run.json")));
        // A room prefix that happens to be `merge` is still a value, not the subcommand.
        assert_eq!(parse(&["--room-prefix", "merge"]).room_prefix, "merge");
        // Nothing to merge, or run flags mixed with `merge`, are usage errors.
        assert!(Args::try_parse_from(["loadgen", "merge"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "--rooms", "3", "merge", "a.json"]).is_err());
        assert!(Args::try_parse_from(["loadgen", "merge", "a.json", "--rooms", "3"]).is_err());
    }

    #[test]
    fn metrics_listen_takes_a_socket_address() {
        let args = parse(&["--metrics-listen", "127.0.0.1:9400"]);
        assert_eq!(
            args.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9400)))
        );
        assert!(Args::try_parse_from(["loadgen", "--metrics-listen", "localhost"]).is_err());
        assert_eq!(parse(&[]).metrics_listen, None);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
