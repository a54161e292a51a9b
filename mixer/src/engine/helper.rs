//! The helper thread a large room splits its decoding and encoding with.
//!
//! A room whose tick has more codec work than [`EngineConfig::parallel_threshold`] hands the
//! second half of its busy participants to a thread of its own for the decode phase and again
//! for the encode phase, and works on the first half meanwhile. The thread is spawned once, when
//! the room first crosses the threshold, and lives until the room is dropped; per tick the
//! handoff moves the boxed participants (pointers) to it and back over two one-slot channels, so
//! a split tick neither spawns nor allocates. (Spawning a scoped thread per phase instead costs
//! about as much as the mixer's own work for several participants, and allocates; see the
//! measurements in the engine docs.)
//!
//! [`EngineConfig::parallel_threshold`]: super::EngineConfig::parallel_threshold

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use mixer_protocol::FRAME_SAMPLES;

use super::participant::Participant;
use super::room::Event;

/// What the helper does with its half of the participants.
#[derive(Debug, Clone, Copy)]
pub(super) enum Work {
    /// Step 1 of a tick: playout and decoding.
    Pull {
        /// The tick's time.
        now: Instant,
        /// Whether the room normalises levels.
        normalise: bool,
    },
    /// Step 4c of a tick: encoding own and replay streams, rendering PCM frames.
    Encode {
        /// Whether settled silence is still sent.
        send_silence: bool,
    },
}

/// One phase's handoff: everything the helper needs, owned, so it can cross to the thread and
/// come back with its buffers (and their capacity) intact.
struct Job {
    work: Work,
    /// Boxed participants, so the handoff moves pointers.
    #[allow(clippy::vec_box)]
    half: Vec<Box<Participant>>,
    /// Events the helper's half raised (merged after the phase, in participant order).
    events: VecDeque<Event>,
    /// A copy of the shared stream's limited mix, which PCM clients on it resample.
    shared_mix: Box<[f32]>,
    /// Encoder calls the helper made.
    encodes: u64,
}

/// A room's helper thread and the buffers that travel to it and back.
pub(super) struct Helper {
    /// `None` only while dropping: closing it tells the thread to finish.
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Job>,
    thread: Option<JoinHandle<()>>,
    /// The buffers of the next job, sized at spawn.
    spare: Option<Job>,
}

impl Helper {
    /// Spawns the helper thread, with buffers for up to `capacity` participants.
    pub(super) fn spawn(capacity: usize) -> std::io::Result<Helper> {
        // One slot each way: at most one job is ever in flight.
        let (jobs, inbox) = mpsc::sync_channel::<Job>(1);
        let (outbox, done) = mpsc::sync_channel::<Job>(1);
        let thread = thread::Builder::new()
            .name("mixer-room-helper".into())
            .spawn(move || serve(inbox, outbox))?;
        Ok(Helper {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
            spare: Some(Job {
                work: Work::Encode {
                    send_silence: false,
                },
                half: Vec::with_capacity(capacity),
                events: VecDeque::with_capacity(64),
                shared_mix: vec![0.0; FRAME_SAMPLES].into_boxed_slice(),
                encodes: 0,
            }),
        })
    }

    /// Hands `participants[split..]` to the helper thread to do `work` on while `here` works on
    /// `participants[..split]` on this thread, then puts them back in order. The helper's events
    /// are appended to `events` after this thread's (the order a single thread would raise them
    /// in). Returns the encoder calls the helper made.
    #[allow(clippy::vec_box)]
    pub(super) fn run(
        &mut self,
        participants: &mut Vec<Box<Participant>>,
        split: usize,
        work: Work,
        shared_mix: &[f32],
        events: &mut VecDeque<Event>,
        here: impl FnOnce(&mut [Box<Participant>], &mut VecDeque<Event>),
    ) -> u64 {
        let mut job = self
            .spare
            .take()
            .expect("a helper job is handed out and taken back within one call");
        job.work = work;
        job.encodes = 0;
        job.half.extend(participants.drain(split..));
        if matches!(work, Work::Encode { .. }) {
            if job.shared_mix.len() == shared_mix.len() {
                job.shared_mix.copy_from_slice(shared_mix);
            } else {
                // The first job of a room whose frames are shorter than the default.
                job.shared_mix = shared_mix.into();
            }
        }
        let sent = self
            .jobs
            .as_ref()
            .expect("the job channel is open until drop")
            .send(job);
        // The helper only ever stops when the room drops it; a send or receive that fails means
        // it panicked, which only a bug in libopus or the engine could cause, and it took half
        // of the room's participants with it.
        assert!(sent.is_ok(), "the room's helper thread panicked");
        here(participants, events);
        let mut job = self.done.recv().expect("the room's helper thread panicked");
        participants.append(&mut job.half);
        events.append(&mut job.events);
        let encodes = job.encodes;
        self.spare = Some(job);
        encodes
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // A panic there has been reported by `run` already (or happened after the last job).
            let _ = thread.join();
        }
    }
}

/// The helper thread: does each job and sends it back, until the room closes the channel.
fn serve(inbox: Receiver<Job>, outbox: SyncSender<Job>) {
    while let Ok(mut job) = inbox.recv() {
        match job.work {
            Work::Pull { now, normalise } => {
                super::tick::pull_half(&mut job.half, now, normalise, &mut job.events);
            }
            Work::Encode { send_silence } => {
                job.encodes =
                    super::tick::encode_half(&mut job.half, &job.shared_mix, send_silence);
            }
        }
        if outbox.send(job).is_err() {
            return;
        }
    }
}
