//! Recording a room's mix to an Ogg/Opus file under `--record-dir`, started and stopped by a
//! moderator's `record` message or the admin API.
//!
//! A recorder is a participant of its own, in listen mode, named `[recorder]` (a label no person
//! can take): it is in the roster, so everyone who joins later sees that the room is recorded,
//! and it gets the room's shared listener frame, the one encode all listeners share, so
//! recording costs a copy of each frame's bytes into an Ogg page, never an encode. Its pages go
//! to the file through a buffered writer on the tokio side; the mixer threads never touch the
//! disk. A disk that stalls for longer than the recorder's outbox holds (five seconds) drops the
//! recorder like any slow client, and the recording ends with `write_failed`, keeping what was
//! written.
//!
//! The room's mix pauses while it is settled silence (downlink DTX); the file is filled with
//! silence packets over such gaps, so its timeline is the wall clock's, as the listen stream's is.
//! A recording ends when it is stopped, when nobody else has been in the room for
//! [`EMPTY_GRACE`], when the room closes or moves to another node, and when the server shuts
//! down; each end writes the stream's last page (end-of-stream flag) and syncs the file, and the
//! room is told with `recording` (`recording: false`, and why).
//!
//! File names are `ROOM-YYYYMMDDTHHMMSSZ.opus` (UTC): room names are `A-Z a-z 0-9 _ . -` so
//! they cannot leave the directory, a leading dot is replaced so no file is hidden, and a name
//! taken already gets `-2`, `-3`, ... (files are created exclusively and never overwritten).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mixer_protocol::{
    AudioFormat, AudioFrame, ErrorCode, LeaveReason, Mode, RecordingEnd, Role, ServerMessage,
    parse_server_message,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::connection::Context;
use super::fleet_rooms::{Located, Purpose};
use super::listen::OggOpusStream;
use super::membership::{Identity, Joiner, Membership};
use super::outbox::{Closed, Outbox, Outgoing};
use crate::engine::ParticipantId;

/// How long a recording goes on with nobody else in the room (an operator may start one before
/// anyone joins; a participant may drop and resume).
pub const EMPTY_GRACE: Duration = Duration::from_secs(10);

/// Frames the recorder's outbox holds (5 s): how long the disk may stall before the recording
/// is given up.
const OUTBOX_FRAMES: usize = 250;

/// The recorder's display name: a label, which no participant's name may look like.
pub const RECORDER_NAME: &str = "[recorder]";

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The server was started without `--record-dir`.
    #[error("this server does not record: start it with --record-dir")]
    Disabled,
    /// The room does not exist (on this node).
    #[error("no room {0:?} on this server")]
    UnknownRoom(String),
    /// Another node of the fleet mixes the room.
    #[error("another node mixes room {room:?}: ask {url}")]
    Elsewhere {
        /// The room.
        room: String,
        /// The node that mixes it.
        url: String,
    },
    /// The file could not be created.
    #[error("cannot create the recording file in {dir}: {error}")]
    File {
        /// The recording directory.
        dir: String,
        /// What failed.
        error: io::Error,
    },
    /// The recorder could not join the room (full, shutting down, ...).
    #[error("the recorder could not join the room: {0}")]
    Join(String),
}

impl RecordError {
    /// The protocol's error code for a moderator's `record` that failed this way.
    pub fn code(&self) -> ErrorCode {
        match self {
            RecordError::UnknownRoom(_) => ErrorCode::UnknownRoom,
            _ => ErrorCode::RecordingUnavailable,
        }
    }
}

/// A recording that runs, as its starter is told.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Recording {
    /// The room.
    pub room: String,
    /// The file's name under the recording directory.
    pub file: String,
    /// Whether it was running already (the request changed nothing).
    pub already: bool,
}

/// One running recording: how to stop it.
#[derive(Debug)]
struct Running {
    file: String,
    stop: oneshot::Sender<Option<u32>>,
}

/// The server's recordings: at most one a room.
#[derive(Debug)]
pub struct Recorders {
    dir: Option<PathBuf>,
    /// The server's shutdown signal, which ends every recording.
    shutdown: watch::Receiver<bool>,
    running: Mutex<HashMap<String, Running>>,
    tasks: Mutex<JoinSet<()>>,
}

impl Recorders {
    /// Recorders writing under `dir` (`None`: recording is refused), until `shutdown` turns
    /// true.
    pub fn new(dir: Option<PathBuf>, shutdown: watch::Receiver<bool>) -> Recorders {
        Recorders {
            dir,
            shutdown,
            running: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
        }
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file being written for `room`, if it is recorded.
    pub fn file_of(&self, room: &str) -> Option<String> {
        self.lock_running().get(room).map(|r| r.file.clone())
    }

    /// Starts recording `room` (asked by participant `by`, or by the operator); the room is
    /// told. Recording a room that is recorded already changes nothing.
    pub async fn start(
        self: &Arc<Self>,
        room: &str,
        by: Option<u32>,
        context: &Arc<Context>,
    ) -> Result<Recording, RecordError> {
        let dir = self.dir.as_deref().ok_or(RecordError::Disabled)?;
        if let Some(file) = self.file_of(room) {
            return Ok(Recording {
                room: room.to_owned(),
                file,
                already: true,
            });
        }
        if context.pool.room_info(room).is_none() {
            return Err(RecordError::UnknownRoom(room.to_owned()));
        }
        let gate = match &context.fleet {
            None => None,
            Some(fleet) => match fleet.locate(room, Purpose::Join, false).await {
                Ok(Located::Here(gate)) => Some(gate),
                Ok(Located::Elsewhere { url }) => {
                    return Err(RecordError::Elsewhere {
                        room: room.to_owned(),
                        url,
                    });
                }
                Ok(Located::Nowhere) => return Err(RecordError::UnknownRoom(room.to_owned())),
                Err(unavailable) => return Err(RecordError::Join(unavailable.to_string())),
            },
        };
        let outbox = Arc::new(Outbox::new(
            OUTBOX_FRAMES,
            context.settings.slow_client_drops,
        ));
        let joiner = Joiner {
            // One recorder a room: a second finds this identity's seat taken.
            identity: Identity::Name(Arc::from(format!("recorder:{room}"))),
            address: std::net::Ipv4Addr::LOCALHOST.into(),
            name: RECORDER_NAME.to_owned(),
            mode: Some(Mode::Listen),
            role: Role::Listener,
            format: AudioFormat::opus_48k_mono_20ms(),
            outbox: outbox.clone(),
        };
        let (file, name) =
            create_file(dir, room, SystemTime::now()).map_err(|error| RecordError::File {
                dir: dir.display().to_string(),
                error,
            })?;
        let membership = match context.pool.join(room, joiner, gate) {
            Ok(membership) => membership,
            Err(refused) => {
                drop(file);
                let _ = std::fs::remove_file(dir.join(&name));
                return Err(RecordError::Join(refused.to_string()));
            }
        };
        let (stop, stopped) = oneshot::channel();
        {
            let mut running = self.lock_running();
            if let Some(other) = running.get(room) {
                // Another request started it meanwhile: that one stands.
                let file = other.file.clone();
                drop(running);
                membership.leave(LeaveReason::Left);
                let _ = std::fs::remove_file(dir.join(&name));
                return Ok(Recording {
                    room: room.to_owned(),
                    file,
                    already: true,
                });
            }
            running.insert(
                room.to_owned(),
                Running {
                    file: name.clone(),
                    stop,
                },
            );
        }
        info!(room, file = %name, ?by, "recording started");
        let _ = context.pool.announce(
            room,
            ServerMessage::Recording {
                recording: true,
                file: name.clone(),
                by,
                reason: None,
            },
        );
        let task = RecorderTask {
            recorders: self.clone(),
            context: context.clone(),
            room: room.to_owned(),
            name: name.clone(),
            membership,
            outbox,
        };
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .spawn(task.run(
                tokio::fs::File::from_std(file),
                stopped,
                self.shutdown.clone(),
            ));
        Ok(Recording {
            room: room.to_owned(),
            file: name,
            already: false,
        })
    }

    /// Stops recording `room` (asked by participant `by`, or by the operator); the room is told
    /// once the file is closed. `None` if it was not recorded.
    pub fn stop(&self, room: &str, by: Option<u32>) -> Option<String> {
        let running = self.lock_running().remove(room)?;
        let _ = running.stop.send(by);
        Some(running.file)
    }

    /// Waits for every recording to have closed its file (after the server's shutdown signal,
    /// which ends them).
    pub async fn closed(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        while tasks.join_next().await.is_some() {}
    }
}

/// Creates the recording's file exclusively; returns it and its name.
fn create_file(dir: &Path, room: &str, now: SystemTime) -> io::Result<(std::fs::File, String)> {
    let stamp = utc_stamp(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
    let room = match room.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => room.to_owned(),
    };
    for n in 1..1000 {
        let name = if n == 1 {
            format!("{room}-{stamp}.opus")
        } else {
            format!("{room}-{stamp}-{n}.opus")
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))
        {
            Ok(file) => return Ok((file, name)),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "a thousand recordings of this room in one second",
    ))
}

/// `YYYYMMDDTHHMMSSZ` for `secs` since the Unix epoch (UTC; the civil-from-days algorithm of
/// Howard Hinnant's date library).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let time = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// A recording's task: the recorder's seat, its outbox, the file.
struct RecorderTask {
    recorders: Arc<Recorders>,
    context: Arc<Context>,
    room: String,
    name: String,
    membership: Membership,
    outbox: Arc<Outbox>,
}

impl RecorderTask {
    async fn run(
        self,
        file: tokio::fs::File,
        mut stopped: oneshot::Receiver<Option<u32>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut writer = BufWriter::with_capacity(64 * 1024, file);
        let mut ogg = OggOpusStream::new(super::listen::serial(), &self.room);
        let started = Instant::now();
        let mut others = Others::default();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut batch = Vec::new();
        let (end, by) = loop {
            let mut end = tokio::select! {
                () = self.outbox.wait() => None,
                _ = tick.tick() => None,
                by = &mut stopped => Some((RecordingEnd::Stopped, by.ok().flatten())),
                _ = shutdown.changed() => Some((RecordingEnd::ServerShutdown, None)),
            };
            let closed = self.outbox.drain(&mut batch);
            for item in batch.drain(..) {
                match item {
                    Outgoing::Audio(wire) => {
                        if let Ok(frame) = AudioFrame::parse(wire.frame()) {
                            ogg.push(frame.payload);
                        }
                    }
                    Outgoing::Control(text) => others.update(&text),
                    Outgoing::Raw(_) => {}
                }
            }
            ogg.keep_time(started.elapsed());
            let bytes = ogg.take();
            if writer.write_all(&bytes).await.is_err() {
                end = Some((RecordingEnd::WriteFailed, None));
            }
            end = end.or(match closed {
                None => None,
                Some(Closed::SlowConsumer) => Some((RecordingEnd::WriteFailed, None)),
                Some(Closed::Close { .. }) => Some((RecordingEnd::RoomGone, None)),
            });
            if end.is_none() && others.empty_for(EMPTY_GRACE, Instant::now()) {
                end = Some((RecordingEnd::RoomEmpty, None));
            }
            if let Some(end) = end {
                break end;
            }
        };
        // Stopped by request, the entry is gone already (and the room may be recorded anew
        // meanwhile, under another entry); otherwise this recording's entry goes now.
        {
            let mut running = self.recorders.lock_running();
            if running.get(&self.room).is_some_and(|r| r.file == self.name) {
                running.remove(&self.room);
            }
        }
        ogg.finish();
        let closed = async {
            writer.write_all(&ogg.take()).await?;
            writer.flush().await?;
            writer.get_ref().sync_all().await
        }
        .await;
        let seconds = ogg.samples() / 48_000;
        match closed {
            Ok(()) => {
                info!(room = %self.room, file = %self.name, seconds, reason = <&str>::from(end), "recording closed")
            }
            Err(error) => {
                warn!(room = %self.room, file = %self.name, %error, "recording could not be closed cleanly")
            }
        }
        let _ = self.context.pool.announce(
            &self.room,
            ServerMessage::Recording {
                recording: false,
                file: self.name.clone(),
                by,
                reason: Some(end),
            },
        );
        self.membership.leave(LeaveReason::Left);
    }
}

/// Who else is in the room, from the roster messages the recorder gets.
#[derive(Default)]
struct Others {
    ids: std::collections::HashSet<u32>,
    me: Option<u32>,
    /// Since when nobody else has been in the room.
    alone_since: Option<Instant>,
    seen_roster: bool,
}

impl Others {
    fn update(&mut self, text: &str) {
        let Ok(message) = parse_server_message(text) else {
            return;
        };
        match message {
            ServerMessage::Joined {
                participant_id,
                participants,
                ..
            } => {
                self.me = Some(participant_id);
                self.ids = participants.iter().map(|p| p.id).collect();
                self.seen_roster = true;
            }
            ServerMessage::ParticipantJoined { participant } => {
                self.ids.insert(participant.id);
            }
            ServerMessage::ParticipantLeft { participant_id, .. } => {
                self.ids.remove(&participant_id);
            }
            _ => {}
        }
        if let Some(me) = self.me {
            self.ids.remove(&me);
        }
    }

    /// Whether nobody else has been in the room for `grace` (`now` is when this is asked).
    fn empty_for(&mut self, grace: Duration, now: Instant) -> bool {
        if !self.seen_roster {
            return false;
        }
        if !self.ids.is_empty() {
            self.alone_since = None;
            return false;
        }
        let since = *self.alone_since.get_or_insert(now);
        now.duration_since(since) >= grace
    }
}

/// A participant's `record` request: a moderator starts or stops the recording of `room`.
/// Returns what the asker alone is told (the room hears of a change itself), or the error.
pub async fn moderator_request(
    context: &Arc<Context>,
    room: &str,
    id: ParticipantId,
    recording: bool,
) -> Result<Option<ServerMessage>, (ErrorCode, String)> {
    if context.pool.role_in(room, id) != Some(Role::Moderator) {
        return Err((
            ErrorCode::Forbidden,
            "only moderators may start or stop a recording".to_owned(),
        ));
    }
    let recorders = context.recorders.clone();
    if recording {
        match recorders.start(room, Some(id.0), context).await {
            // Already running: the asker is told the state; the room heard at its start.
            Ok(started) if started.already => Ok(Some(ServerMessage::Recording {
                recording: true,
                file: started.file,
                by: None,
                reason: None,
            })),
            Ok(_) => Ok(None),
            Err(error) => Err((error.code(), error.to_string())),
        }
    } else if recorders.stop(room, Some(id.0)).is_none() {
        Err((
            ErrorCode::RecordingUnavailable,
            format!("room {room:?} is not being recorded"),
        ))
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        // 2000-02-29 (a leap day of a century leap year) 12:34:56.
        assert_eq!(utc_stamp(951_827_696), "20000229T123456Z");
        // 2026-12-02 06:15:00.
        assert_eq!(utc_stamp(1_796_192_100), "20261202T061500Z");
    }

    #[test]
    fn files_are_created_exclusively_with_safe_names() {
        let dir = std::env::temp_dir().join(format!("mixer-rec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let now = UNIX_EPOCH + Duration::from_secs(1_796_192_100);
        let (_, first) = create_file(&dir, "lobby", now).expect("first");
        let (_, second) = create_file(&dir, "lobby", now).expect("second");
        let (_, hidden) = create_file(&dir, "..x", now).expect("dotted");
        assert_eq!(first, "lobby-20261202T061500Z.opus");
        assert_eq!(second, "lobby-20261202T061500Z-2.opus");
        assert_eq!(hidden, "_.x-20261202T061500Z.opus");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_room_counts_as_empty_only_after_the_grace() {
        let mut others = Others::default();
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        assert!(!others.empty_for(grace, t0), "no roster yet");
        others.update(
            r#"{"type":"joined","participant_id":2,"room":"r","participants":[{"id":1,"name":"Ada","mode":"talk","role":"speaker"}],"format":{"codec":"opus","sample_rate":48000,"channels":1,"frame_ms":20}}"#,
        );
        assert!(!others.empty_for(grace, t0 + grace), "Ada is there");
        others.update(r#"{"type":"participant_left","participant_id":1,"reason":"left"}"#);
        assert!(!others.empty_for(grace, t0 + grace));
        assert!(!others.empty_for(grace, t0 + grace + Duration::from_secs(9)));
        others.update(
            r#"{"type":"participant_joined","participant":{"id":3,"name":"Bo","mode":"talk","role":"speaker"}}"#,
        );
        assert!(!others.empty_for(grace, t0 + 2 * grace), "Bo came");
        others.update(r#"{"type":"participant_left","participant_id":3,"reason":"left"}"#);
        assert!(!others.empty_for(grace, t0 + 3 * grace));
        assert!(others.empty_for(grace, t0 + 4 * grace));
    }
}
