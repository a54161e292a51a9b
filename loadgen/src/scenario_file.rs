//! Scenario files: a whole test in one TOML file, as load testers write them for k6 or Gatling.
//!
//! A file has a `[run]` table (where and how to run: URLs, seed, verification), a `[gates]`
//! table, an optional `[storm]`, and one `[[group]]` per kind of client: its rooms, talkers,
//! talk pattern, push-to-talk, impairment, **stages** (ramp to N over T, hold, ramp down) and
//! churn. Each group becomes a [`Scenario`] of its own, run at the same time as the others on
//! the same clock, with rooms of its own (`<prefix>-<group>-…`), so the checks of one group
//! (mix-minus, other rooms' tones leaking in) stay within it.
//!
//! The flags still apply: those that say where and how to run (`--url`, `--seed`, `--verify`,
//! `--json`, the gates, ...) override the file when given; those that shape the load
//! (`--rooms`, `--talkers`, `--duration`, ...) belong in the file and are refused beside it.
//! A run from flags is the one-group scenario they describe (see [`Scenario::flag_stages`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use mixer_protocol::FloorPolicy;
use serde::Deserialize;

use crate::config::{
    Args, Churn, Impairment, Scenario, ScenarioError, Signal, Stage, Storm, TalkPattern,
};

/// The flags that shape the load, which a scenario file replaces: `(clap id, flag)`.
const SHAPE_FLAGS: &[(&str, &str)] = &[
    ("rooms", "--rooms"),
    ("participants", "--participants"),
    ("talkers", "--talkers"),
    ("talk", "--talk"),
    ("talk_on_ms", "--talk-on-ms"),
    ("talk_off_ms", "--talk-off-ms"),
    ("duration", "--duration"),
    ("ramp", "--ramp"),
    ("jitter_ms", "--jitter-ms"),
    ("loss", "--loss"),
    ("loss_burst", "--loss-burst"),
    ("reorder", "--reorder"),
    ("wav", "--wav"),
    ("find_max", "--find-max"),
    ("step", "--step"),
    ("max_rounds", "--max-rounds"),
    ("flooders", "--flooders"),
    ("flood_rate", "--flood-rate"),
    ("storm_at", "--storm-at"),
    ("storm_fraction", "--storm-fraction"),
];

/// Longest group name: room names are at most 64 bytes, and a prefix may take 40.
const MAX_GROUP_NAME: usize = 12;

/// Why a scenario file cannot run.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the shape of a scenario (an unknown key, a wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and column.
        message: String,
    },
    /// A flag that shapes the load, given beside a file that does.
    #[error("{flag} shapes the load, which the scenario file describes; set it in its [[group]]")]
    ShapeFlag {
        /// The flag.
        flag: &'static str,
    },
    /// A file without groups.
    #[error("{0}: no [[group]]: a scenario needs at least one group of clients")]
    NoGroups(PathBuf),
    /// Two groups with one name.
    #[error("two groups are named {0:?}: each group needs a name of its own")]
    DuplicateGroup(String),
    /// Something wrong in one group.
    #[error("group {group:?}: {problem}")]
    Group {
        /// The group's name.
        group: String,
        /// What is wrong.
        problem: String,
    },
    /// A value outside `[run]`, `[gates]` or `[storm]` that cannot work.
    #[error(transparent)]
    Invalid(#[from] ScenarioError),
    /// A storm after every group has ended.
    #[error("[storm] at_secs = {at} is not within the run (it lasts {length} s)")]
    StormOutsideRun {
        /// `at_secs`.
        at: f64,
        /// The longest group's length, seconds.
        length: f64,
    },
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    run: RunSection,
    #[serde(default)]
    gates: GatesSection,
    storm: Option<StormSection>,
    #[serde(default, rename = "group")]
    groups: Vec<GroupSection>,
}

/// `[run]`: where and how; each key overrides the flag's default, and an explicit flag
/// overrides the key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunSection {
    url: Option<Vec<String>>,
    seed: Option<u64>,
    verify: Option<usize>,
    warmup_ms: Option<u64>,
    heard_db: Option<f64>,
    isolation_db: Option<f64>,
    room_prefix: Option<String>,
    join_timeout_ms: Option<u64>,
}

/// `[gates]`, named as the flags are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatesSection {
    max_loss: Option<f64>,
    max_p99_delay: Option<f64>,
    max_p99_jitter: Option<f64>,
    max_p99_join: Option<f64>,
    max_storm_recovery: Option<f64>,
    min_rx_rate: Option<f64>,
    max_errors: Option<u64>,
    require_verified: Option<bool>,
}

/// `[storm]`: a share of every group's clients cut at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StormSection {
    /// Seconds after the start of the run.
    at_secs: f64,
    /// Percentage of the clients cut.
    #[serde(default = "default_storm_fraction")]
    fraction: f64,
}

fn default_storm_fraction() -> f64 {
    50.0
}

/// `[[group]]`: one kind of client in rooms of its own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSection {
    name: String,
    rooms: usize,
    participants: usize,
    #[serde(default)]
    talkers: usize,
    #[serde(default)]
    talk: Option<TalkPattern>,
    talk_on_ms: Option<u64>,
    talk_off_ms: Option<u64>,
    /// Talkers use push-to-talk in rooms of this floor policy.
    ptt: Option<FloorPolicy>,
    #[serde(default)]
    impairment: ImpairmentSection,
    /// Moderators in each room, muting its talkers in turn.
    moderators: Option<ModeratorsSection>,
    /// The clients send and receive 16-bit PCM at this rate instead of Opus.
    pcm_rate: Option<u32>,
    /// This group's isolation requirement, dB (default: the run's `--isolation-db`).
    isolation_db: Option<f64>,
    wav: Option<PathBuf>,
    /// Receivers of this group to verify (default: the run's `verify`).
    verify: Option<usize>,
    stages: Vec<StageSection>,
    churn: Option<ChurnSection>,
}

/// A group's impairment, as the flags give it (percentages).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpairmentSection {
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    loss_burst: f64,
    #[serde(default)]
    reorder: f64,
}

/// A group's moderators: the last `per_room` participants of each room.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeratorsSection {
    #[serde(default = "one")]
    per_room: usize,
    #[serde(default = "default_mute_every_ms")]
    every_ms: u64,
    #[serde(default = "default_mute_ms")]
    mute_ms: u64,
}

fn one() -> usize {
    1
}

fn default_mute_every_ms() -> u64 {
    10_000
}

fn default_mute_ms() -> u64 {
    3000
}

/// One stage: to `to` clients over `secs`; without `to`, a hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageSection {
    to: Option<usize>,
    secs: f64,
}

/// Churn while a group's load holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChurnSection {
    per_second: f64,
    #[serde(default = "default_away_ms")]
    away_ms: u64,
}

fn default_away_ms() -> u64 {
    2000
}

/// Reads the scenario file at `path` into one [`Scenario`] per group. `args` are the flags;
/// `explicit(id)` says whether the flag with clap id `id` was given (on the command line or in
/// the environment) rather than left at its default.
pub fn load(
    path: &Path,
    args: &Args,
    explicit: impl Fn(&str) -> bool,
) -> Result<Vec<Scenario>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path, args, explicit)
}

/// [`load`] from the file's text.
pub fn parse(
    text: &str,
    path: &Path,
    args: &Args,
    explicit: impl Fn(&str) -> bool,
) -> Result<Vec<Scenario>, FileError> {
    if let Some((_, flag)) = SHAPE_FLAGS.iter().find(|(id, _)| explicit(id)) {
        return Err(FileError::ShapeFlag { flag });
    }
    let file: File = toml::from_str(text).map_err(|e| FileError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    if file.groups.is_empty() {
        return Err(FileError::NoGroups(path.to_owned()));
    }
    // The run's settings: the file's where a flag was not given.
    let mut flags = args.clone();
    let run = &file.run;
    let take = |id: &str| !explicit(id);
    if let Some(url) = &run.url
        && take("url")
    {
        flags.url = url.clone();
    }
    macro_rules! from_file {
        ($($field:ident),*) => {$(
            if let Some(value) = run.$field.clone() && take(stringify!($field)) {
                flags.$field = value;
            }
        )*};
    }
    from_file!(
        seed,
        verify,
        warmup_ms,
        heard_db,
        isolation_db,
        room_prefix,
        join_timeout_ms
    );
    let gates = &file.gates;
    macro_rules! gate_from_file {
        ($($field:ident),*) => {$(
            if gates.$field.is_some() && take(stringify!($field)) {
                flags.$field = gates.$field;
            }
        )*};
    }
    gate_from_file!(
        max_loss,
        max_p99_delay,
        max_p99_jitter,
        max_p99_join,
        min_rx_rate,
        max_errors
    );
    if let Some(required) = gates.require_verified
        && take("require_verified")
    {
        flags.require_verified = required;
    }
    // The storm gate is checked against the file's storm below, not the flags'.
    let storm_gate = if take("max_storm_recovery") {
        gates.max_storm_recovery
    } else {
        flags.max_storm_recovery
    };
    flags.max_storm_recovery = None;
    // The file's groups are scaled below, one by one.
    flags.scale = 1.0;
    let base = flags.to_scenario()?;
    let mut base = Scenario {
        gates: crate::config::Gates {
            max_storm_recovery_ms: storm_gate,
            ..base.gates.clone()
        },
        ..base
    };
    if storm_gate.is_some() && file.storm.is_none() {
        return Err(ScenarioError::StormGateWithoutStorm.into());
    }
    let storm = match &file.storm {
        None => None,
        Some(storm) => {
            if !(0.0..=100.0).contains(&storm.fraction) {
                return Err(ScenarioError::Percent {
                    flag: "storm-fraction",
                    value: storm.fraction,
                }
                .into());
            }
            if !(storm.at_secs.is_finite() && storm.at_secs >= 0.0) {
                return Err(FileError::StormOutsideRun {
                    at: storm.at_secs,
                    length: 0.0,
                });
            }
            Some(Storm {
                at: Duration::from_secs_f64(storm.at_secs),
                fraction: storm.fraction / 100.0,
            })
        }
    };
    base.storm = storm;
    if !(args.scale.is_finite() && args.scale > 0.0) {
        return Err(ScenarioError::NotPositive {
            flag: "scale",
            value: args.scale,
        }
        .into());
    }
    let mut scenarios: Vec<Scenario> = Vec::with_capacity(file.groups.len());
    let mut first_room = 0;
    for (index, group) in file.groups.iter().enumerate() {
        if scenarios.iter().any(|s| s.group == group.name) {
            return Err(FileError::DuplicateGroup(group.name.clone()));
        }
        let scenario = group_scenario(&base, group, index, first_room)
            .map(|scenario| scaled(scenario, args.scale))
            .map_err(|problem| FileError::Group {
                group: group.name.clone(),
                problem,
            })?;
        first_room += scenario.rooms;
        scenarios.push(scenario);
    }
    if let Some(storm) = base.storm {
        let length = scenarios
            .iter()
            .map(Scenario::length)
            .max()
            .unwrap_or_default();
        if storm.at >= length {
            return Err(FileError::StormOutsideRun {
                at: storm.at.as_secs_f64(),
                length: length.as_secs_f64(),
            });
        }
    }
    Ok(scenarios)
}

/// One group's [`Scenario`]: the run's settings with the group's load. The group's seed is the
/// run's plus its index, so two groups do not talk in step.
fn group_scenario(
    base: &Scenario,
    group: &GroupSection,
    index: usize,
    first_room: usize,
) -> Result<Scenario, String> {
    let name_ok = !group.name.is_empty()
        && group.name.len() <= MAX_GROUP_NAME
        && group
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(format!(
            "a group name is 1 to {MAX_GROUP_NAME} of A-Z a-z 0-9 _ . - (it is part of room names)"
        ));
    }
    if group.rooms == 0 || group.participants == 0 {
        return Err("rooms and participants must be greater than zero".into());
    }
    if group.talkers > group.participants {
        return Err(format!(
            "talkers ({}) cannot exceed participants ({})",
            group.talkers, group.participants
        ));
    }
    let impairment = &group.impairment;
    let impaired = Impairment::from_percent(
        impairment.jitter_ms,
        impairment.loss,
        impairment.loss_burst,
        impairment.reorder,
    )
    .map_err(|(key, value)| {
        format!("impairment.{key} is a percentage within 0..=100 (got {value})")
    })?;
    let pattern = group.talk.unwrap_or(TalkPattern::Continuous);
    let talk_on = Duration::from_millis(group.talk_on_ms.unwrap_or(2000));
    let talk_off = Duration::from_millis(group.talk_off_ms.unwrap_or(1500));
    if pattern == TalkPattern::Spurts && (talk_on.is_zero() || talk_off.is_zero()) {
        return Err("talk_on_ms and talk_off_ms must be greater than zero".into());
    }
    if group.ptt.is_some() && pattern != TalkPattern::Spurts {
        return Err(
            "push-to-talk talkers press the button for each spurt: set talk = \"spurts\"".into(),
        );
    }
    if group.ptt.is_some() && (impairment.jitter_ms > 0 || impairment.reorder > 0.0) {
        // A frame delayed or held back past the spurt's end would reach the server after the
        // talker's floor_release, and be refused as sent without the floor.
        return Err(
            "push-to-talk talkers take loss impairment only (no jitter_ms or reorder): a frame \
             held back past the button's release would arrive without the floor"
                .into(),
        );
    }
    let moderators = match &group.moderators {
        None => None,
        Some(m) => {
            if m.per_room == 0 || group.talkers + m.per_room > group.participants {
                return Err(format!(
                    "moderators.per_room ({}) must be at least 1 and fit beside the talkers \
                     ({}) in participants ({})",
                    m.per_room, group.talkers, group.participants
                ));
            }
            if m.every_ms == 0 || m.mute_ms == 0 || m.mute_ms >= m.every_ms {
                return Err(format!(
                    "moderators: mute_ms ({}) must be greater than zero and below every_ms ({})",
                    m.mute_ms, m.every_ms
                ));
            }
            Some(crate::config::Moderators {
                per_room: m.per_room,
                every: Duration::from_millis(m.every_ms),
                hold: Duration::from_millis(m.mute_ms),
            })
        }
    };
    if let Some(rate) = group.pcm_rate {
        if !mixer_protocol::PCM_RATES.contains(&rate) {
            return Err(format!(
                "pcm_rate {rate} is not one the mixer takes ({:?})",
                mixer_protocol::PCM_RATES
            ));
        }
        if group.wav.is_some() {
            return Err("pcm_rate clients send tones; leave wav out".into());
        }
    }
    let clients = group.rooms * group.participants;
    let stages = stages(&group.stages, clients)?;
    let churn = match &group.churn {
        None => None,
        Some(churn) => {
            if !(churn.per_second.is_finite() && churn.per_second > 0.0) {
                return Err(format!(
                    "churn.per_second must be greater than zero (got {})",
                    churn.per_second
                ));
            }
            if churn.away_ms == 0 {
                return Err("churn.away_ms must be greater than zero".into());
            }
            Some(Churn {
                per_second: churn.per_second,
                away: Duration::from_millis(churn.away_ms),
            })
        }
    };
    let length = stages.iter().map(|s| s.over).sum::<Duration>();
    let prefix = format!("{}-{}", base.room_prefix, group.name);
    if prefix.len() > 52 {
        return Err(format!(
            "room names {prefix}-… would be too long: shorten the prefix or the group's name"
        ));
    }
    Ok(Scenario {
        rooms: group.rooms,
        participants: group.participants,
        talkers: group.talkers,
        pattern,
        talk_on,
        talk_off,
        duration: length,
        seed: base.seed.wrapping_add(index as u64),
        impairment: impaired,
        signal: match &group.wav {
            Some(path) => Signal::Wav(path.clone()),
            None => Signal::Tones,
        },
        verify: group.verify.unwrap_or(base.verify),
        room_prefix: prefix,
        group: group.name.clone(),
        stages,
        churn,
        ptt: group.ptt,
        moderators,
        pcm_rate: group.pcm_rate,
        isolation_db: group.isolation_db.unwrap_or(base.isolation_db),
        first_room,
        ..base.clone()
    })
}

/// `scenario` with its load scaled by `factor` (`--scale`): its rooms (a one-room group: its
/// participants, keeping its talkers and at least one listener slot), its stages' client
/// counts in proportion, and its churn rate; its timing and talkers per room stay.
fn scaled(mut scenario: Scenario, factor: f64) -> Scenario {
    if factor == 1.0 {
        return scenario;
    }
    let before = scenario.clients();
    let rooms = (scenario.rooms as f64 * factor).round() as usize;
    if rooms >= 1 {
        scenario.rooms = rooms;
    } else {
        scenario.rooms = 1;
        let participants = (before as f64 * factor).round() as usize;
        // The talkers, and the moderators or else one listener slot, still fit.
        let kept = scenario.talkers + scenario.moderators.map_or(1, |m| m.per_room);
        scenario.participants = participants.max(kept).min(before);
    }
    let after = scenario.clients();
    for stage in &mut scenario.stages {
        // Exact at the peak, so the stages still reach every client.
        stage.to = (stage.to * after).div_ceil(before.max(1)).min(after);
    }
    if let Some(churn) = scenario.churn.as_mut() {
        churn.per_second *= after as f64 / before.max(1) as f64;
    }
    scenario
}

/// A group's stages, checked: positive lengths, and a peak of exactly its `clients` (a
/// smaller peak would leave clients that never join; a larger one is more than its rooms
/// hold).
fn stages(written: &[StageSection], clients: usize) -> Result<Vec<Stage>, String> {
    if written.is_empty() {
        return Err(
            "no stages: give at least one, e.g. stages = [{ to = 10, secs = 5 }, { secs = 30 }]"
                .into(),
        );
    }
    let mut level = 0;
    let mut out = Vec::with_capacity(written.len());
    for (k, stage) in written.iter().enumerate() {
        if !(stage.secs.is_finite() && stage.secs > 0.0) {
            return Err(format!(
                "stage {} lasts {} s: every stage needs secs > 0",
                k + 1,
                stage.secs
            ));
        }
        level = stage.to.unwrap_or(level);
        out.push(Stage {
            to: level,
            over: Duration::from_secs_f64(stage.secs),
        });
    }
    let peak = out.iter().map(|s| s.to).max().unwrap_or(0);
    if peak != clients {
        return Err(format!(
            "the stages peak at {peak} clients, but rooms × participants is {clients}: ramp to {clients}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// Parses `flags` as the binary does and loads `text` with them.
    fn load_with(text: &str, flags: &[&str]) -> Result<Vec<Scenario>, FileError> {
        let mut argv = vec!["loadgen"];
        argv.extend_from_slice(flags);
        let matches = Args::command()
            .try_get_matches_from(argv)
            .expect("flags parse");
        let args = Args::from_arg_matches(&matches).expect("flags parse");
        parse(text, Path::new("test.toml"), &args, |id| {
            crate::config::given(&matches, id)
        })
    }

    const TWO_GROUPS: &str = r#"
        [run]
        url = ["ws://127.0.0.1:9/"]
        seed = 7
        verify = 4

        [gates]
        max_loss = 1.0
        require_verified = true

        [[group]]
        name = "talk"
        rooms = 2
        participants = 4
        talkers = 2
        talk = "spurts"
        impairment = { jitter_ms = 20, loss = 2 }
        stages = [{ to = 8, secs = 4 }, { secs = 20 }, { to = 0, secs = 2 }]
        churn = { per_second = 0.5, away_ms = 1500 }

        [[group]]
        name = "ptt"
        rooms = 1
        participants = 5
        talkers = 5
        ptt = "single"
        talk = "spurts"
        stages = [{ secs = 2 }, { to = 5, secs = 1 }, { secs = 10 }]
    "#;

    #[test]
    fn a_file_becomes_one_scenario_per_group_with_the_run_settings_of_each() {
        let groups = load_with(TWO_GROUPS, &[]).expect("valid");
        assert_eq!(groups.len(), 2);
        let (talk, ptt) = (&groups[0], &groups[1]);
        assert_eq!(talk.urls, vec!["ws://127.0.0.1:9/".to_owned()]);
        assert_eq!((talk.seed, ptt.seed), (7, 8));
        assert_eq!(talk.verify, 4);
        assert_eq!(talk.gates.max_loss_pct, Some(1.0));
        assert!(ptt.gates.require_verified);
        assert_eq!(talk.pattern, TalkPattern::Spurts);
        assert_eq!(talk.impairment.jitter, Duration::from_millis(20));
        assert!((talk.impairment.loss - 0.02).abs() < 1e-12);
        assert_eq!(
            talk.stages.iter().map(|s| s.to).collect::<Vec<_>>(),
            vec![8, 8, 0]
        );
        assert_eq!(talk.length(), Duration::from_secs(26));
        assert_eq!(
            talk.churn.map(|c| c.away),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(ptt.ptt, Some(FloorPolicy::Single));
        // A hold at 0 first: the push-to-talk group starts two seconds in.
        assert_eq!(ptt.stages[0].to, 0);
        assert_eq!((talk.first_room, ptt.first_room), (0, 2));
        assert_eq!(talk.room_name(0, 1), "loadgen-talk-0-1");
        assert_eq!(ptt.room_name(0, 0), "loadgen-ptt-0-0");
    }

    #[test]
    fn explicit_flags_override_the_file_and_shape_flags_are_refused() {
        let groups = load_with(
            TWO_GROUPS,
            &[
                "--url",
                "ws://10.0.0.1:1/",
                "--max-loss",
                "5",
                "--shard",
                "1/2",
            ],
        )
        .expect("valid");
        assert_eq!(groups[0].urls, vec!["ws://10.0.0.1:1/".to_owned()]);
        assert_eq!(groups[1].gates.max_loss_pct, Some(5.0));
        assert!(groups.iter().all(|g| g.shard.is_some()));
        // Rooms 0 and 1 of the first group, room 0 of the second is room 2 overall.
        assert!(!groups[0].runs_room(0) && groups[0].runs_room(1));
        assert!(!groups[1].runs_room(0));
        let err = load_with(TWO_GROUPS, &["--rooms", "3"]).expect_err("shape flag");
        assert!(err.to_string().contains("--rooms"), "{err}");
    }

    #[test]
    fn scale_shrinks_the_rooms_or_a_one_room_group_and_keeps_the_timing() {
        let groups = load_with(TWO_GROUPS, &["--scale", "0.5"]).expect("valid");
        let (talk, ptt) = (&groups[0], &groups[1]);
        assert_eq!((talk.rooms, talk.participants), (1, 4));
        assert_eq!(
            talk.stages.iter().map(|s| s.to).collect::<Vec<_>>(),
            vec![4, 4, 0]
        );
        assert_eq!(talk.length(), Duration::from_secs(26));
        assert!((talk.churn.expect("churn").per_second - 0.25).abs() < 1e-12);
        // One room of five talkers: half of it would be 2.5 clients; it keeps its talkers and
        // one more slot, never more than it had.
        assert_eq!((ptt.rooms, ptt.participants), (1, 5));
        assert_eq!(ptt.stages.iter().map(|s| s.to).max(), Some(5));
        let err = load_with(TWO_GROUPS, &["--scale", "0"]).expect_err("zero");
        assert!(err.to_string().contains("--scale"), "{err}");
    }

    #[test]
    fn mistakes_in_a_file_name_the_group_and_the_key() {
        let err = load_with("[[group]]\nname = \"a\"\nrooms = 1\n", &[]).expect_err("missing");
        assert!(err.to_string().contains("participants"), "{err}");
        let err = load_with("[run]\nspeed = 3\n", &[]).expect_err("unknown key");
        assert!(err.to_string().contains("speed"), "{err}");
        let err = load_with("[run]\nseed = 3\n", &[]).expect_err("no group");
        assert!(matches!(err, FileError::NoGroups(_)));
        let group = |extra: &str| {
            format!(
                "[[group]]\nname = \"g\"\nrooms = 2\nparticipants = 3\n{extra}\n\
                 stages = [{{ to = 6, secs = 1 }}]\n"
            )
        };
        let err = load_with(&group("talkers = 4"), &[]).expect_err("too many talkers");
        assert!(err.to_string().contains("group \"g\""), "{err}");
        let err = load_with(
            "[[group]]\nname = \"g\"\nrooms = 2\nparticipants = 3\nstages = [{ to = 5, secs = 1 }]\n",
            &[],
        )
        .expect_err("peak below the clients");
        assert!(err.to_string().contains("peak at 5"), "{err}");
        let err = load_with(&group("churn = { per_second = 0 }"), &[]).expect_err("churn");
        assert!(err.to_string().contains("churn.per_second"), "{err}");
        let err = load_with(&format!("{}\n{}", group(""), group("")), &[]).expect_err("dup");
        assert!(matches!(err, FileError::DuplicateGroup(_)));
        let err = load_with(&format!("[storm]\nat_secs = 5\n{}", group("")), &[])
            .expect_err("storm after the end");
        assert!(err.to_string().contains("at_secs = 5"), "{err}");
        let err = load_with(
            &format!("[gates]\nmax_storm_recovery = 5\n{}", group("")),
            &[],
        )
        .expect_err("storm gate without storm");
        assert!(err.to_string().contains("storm"), "{err}");
        let err = load_with(
            &group("ptt = \"open\"\ntalk = \"spurts\"\nimpairment = { jitter_ms = 20 }"),
            &[],
        )
        .expect_err("push-to-talk with jitter");
        assert!(err.to_string().contains("loss impairment only"), "{err}");
        let err = load_with(&group("pcm_rate = 12000"), &[]).expect_err("no such rate");
        assert!(err.to_string().contains("pcm_rate 12000"), "{err}");
        assert_eq!(
            load_with(&group("pcm_rate = 8000"), &[]).expect("valid")[0].pcm_rate,
            Some(8000)
        );
        let err = load_with(&group("name2 = 1"), &[]).expect_err("unknown group key");
        assert!(err.to_string().contains("name2"), "{err}");
    }
}
