//! The bounded per-connection send queue between the mixer threads and a connection's writer.
//!
//! The mixer never waits on a client. It pushes each frame here and moves on; if the client has
//! not taken the previous frames, the oldest audio frame is dropped (and counted) to make room.
//! The client loses its own stale audio, nobody else is delayed and memory stays bounded. A
//! client that keeps falling behind — `slow_limit` audio frames dropped with no drain in between
//! — is marked slow, and its connection closes it with a reason.
//!
//! Control messages (roster changes, errors) are never dropped for audio: they have their own
//! lane, which is also bounded; overflowing it marks the client slow too. Control messages are
//! [`Utf8Bytes`], so a broadcast queues the same serialised bytes in every member's outbox.
//!
//! A participant whose client is on an edge node has a *relaying* outbox ([`Outbox::relay`]):
//! what is pushed goes, tagged with its session, into the queue of the link to that edge (see
//! [`super::link_hub`]), which bounds it; the rest of the server treats it like any other.
//!
//! The outbox also holds the connection's one error throttle: audio-path errors (raised by the
//! connection or by the mixer thread) reach the client at most once a second per code.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mixer_protocol::ErrorCode;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::link_hub::Relay;
use super::ws_writer::WireFrame;
use mixer_protocol::link::LinkKind;
use mixer_protocol::{ServerMessage, close_code};

/// Control messages that may wait in one outbox before the client is considered slow.
const CONTROL_CAPACITY: usize = 256;

/// One item for a connection's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A binary audio frame (header + Opus), framed for the WebSocket once for everyone.
    Audio(WireFrame),
    /// A JSON control message.
    Control(Utf8Bytes),
    /// WebSocket frames tungstenite wrote by itself (a pong, a close reply), sent as they are.
    Raw(Bytes),
}

/// Why an outbox stopped accepting items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The client did not keep up; the writer sends `slow_consumer` and closes with 1008.
    SlowConsumer,
    /// The connection is going away; the writer sends what is queued, then this close frame.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: &'static str,
    },
}

/// What happened to a pushed audio frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued behind fewer than `capacity` frames.
    Queued,
    /// Queued, and the oldest queued frame was dropped to make room.
    DroppedOldest,
    /// Not queued: the outbox is closed.
    Closed,
}

#[derive(Debug)]
struct State {
    audio: VecDeque<WireFrame>,
    /// Control messages and tungstenite's replies, in the order they were queued.
    control: VecDeque<Outgoing>,
    errors: ErrorThrottle,
    dropped_in_a_row: u32,
    closed: Option<Closed>,
    /// Something was queued quietly ([`Outbox::push_control_quietly`]) onto an empty queue and
    /// the writer has not been woken for it yet.
    wake_pending: bool,
}

/// A bounded, drop-oldest queue with a wake-up for the writer task.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
    slow_limit: u32,
    dropped: AtomicU64,
    /// Set for a participant on an edge node: everything goes to its link instead.
    relay: Option<Relay>,
}

impl Outbox {
    /// An outbox holding at most `capacity` audio frames; `slow_limit` consecutive drops without
    /// the writer draining mark the client slow.
    pub fn new(capacity: usize, slow_limit: u32) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                audio: VecDeque::with_capacity(capacity.max(1)),
                control: VecDeque::new(),
                errors: ErrorThrottle::default(),
                dropped_in_a_row: 0,
                closed: None,
                wake_pending: false,
            }),
            notify: Notify::new(),
            capacity: capacity.max(1),
            slow_limit: slow_limit.max(1),
            dropped: AtomicU64::new(0),
            relay: None,
        }
    }

    /// An outbox whose items go to a link's hub under the relay's session (a participant whose
    /// client is on an edge node). It queues nothing itself: the hub bounds the link.
    pub fn relay(relay: Relay) -> Outbox {
        Outbox {
            relay: Some(relay),
            ..Outbox::new(1, u32::MAX)
        }
    }

    /// Where this outbox relays to, if it is a relaying one.
    pub fn relayed(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few VecDeque calls), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an audio frame, dropping the oldest one if the queue is full.
    pub fn push_audio(&self, frame: WireFrame) -> Pushed {
        let (result, wake) = self.push_audio_unwoken(frame);
        if wake {
            self.notify.notify_one();
        }
        result
    }

    /// Queues an audio frame as [`Outbox::push_audio`] does, but leaves waking the writer to
    /// the caller: true means call [`Outbox::wake`]. A tick's fan-out wakes every writer after
    /// its last push, so the network threads do not preempt the mixer thread in the middle of
    /// it (on a shared core, waking them as it went let them write to a thousand listeners
    /// while the tick waited, and the next tick started late).
    pub fn push_audio_unwoken(&self, frame: WireFrame) -> (Pushed, bool) {
        if let Some(relay) = &self.relay {
            let pushed =
                if self.lock().closed.is_none() && relay.hub.own(relay.session, frame.frame()) {
                    Pushed::Queued
                } else {
                    Pushed::Closed
                };
            return (pushed, false);
        }
        let (result, wake) = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return (Pushed::Closed, false);
            }
            let empty = state.is_empty();
            let mut result = Pushed::Queued;
            if state.audio.len() >= self.capacity {
                state.audio.pop_front();
                state.dropped_in_a_row += 1;
                self.dropped.fetch_add(1, Ordering::Relaxed);
                result = Pushed::DroppedOldest;
                if state.dropped_in_a_row >= self.slow_limit {
                    state.closed = Some(Closed::SlowConsumer);
                }
            }
            state.audio.push_back(frame);
            // The writer drains everything at once: it needs waking only when the queue was
            // empty (a push onto a non-empty queue follows one that woke it), or when what is
            // queued was queued quietly.
            let wake = empty || std::mem::take(&mut state.wake_pending);
            (result, wake)
        };
        (result, wake)
    }

    /// Wakes the writer (after [`Outbox::push_audio_unwoken`] said to).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Queues a control message; returns false if it was not queued (the outbox is closed, or
    /// its control lane overflowed, which closes it as a slow consumer).
    pub fn push_control(&self, message: Utf8Bytes) -> bool {
        if let Some(relay) = &self.relay {
            return self.lock().closed.is_none()
                && relay
                    .hub
                    .send(LinkKind::Send, relay.session, message.as_bytes());
        }
        self.queue(Outgoing::Control(message))
    }

    /// Queues WebSocket frames already framed (tungstenite's replies) in the control lane;
    /// returns false if the outbox is closed or its control lane overflowed.
    pub fn push_raw(&self, frames: Bytes) -> bool {
        self.queue(Outgoing::Raw(frames))
    }

    /// Queues a control message without waking the writer, so that messages broadcast between
    /// two ticks (a burst of joins tells everyone of each) go out together with the next audio
    /// frame in one write, instead of costing every member a wake-up and a write each. The
    /// caller must call [`Outbox::wake_pending`] soon (a room does after its next tick, at most
    /// one frame later); a push that wakes the writer meanwhile takes it along. Returns false
    /// if it was not queued, as [`Outbox::push_control`].
    pub fn push_control_quietly(&self, message: Utf8Bytes) -> bool {
        if self.relay.is_some() {
            return self.push_control(message);
        }
        let mut state = self.lock();
        let empty = state.is_empty();
        let queued = Self::queue_control(&mut state, Outgoing::Control(message));
        if queued && empty {
            state.wake_pending = true;
        }
        queued
    }

    /// Wakes the writer for what was queued quietly, if nothing has woken it since.
    pub fn wake_pending(&self) {
        let wake = std::mem::take(&mut self.lock().wake_pending);
        if wake {
            self.notify.notify_one();
        }
    }

    fn queue(&self, item: Outgoing) -> bool {
        let (queued, wake) = {
            let mut state = self.lock();
            let wake = state.is_empty() || std::mem::take(&mut state.wake_pending);
            (Self::queue_control(&mut state, item), wake)
        };
        if wake {
            self.notify.notify_one();
        }
        queued
    }

    /// Queues the error `make` builds, unless an error with `code` was queued less than a second
    /// before `now` (see [`ErrorThrottle`]); returns whether it was queued.
    pub fn push_throttled_error(
        &self,
        code: ErrorCode,
        now: Instant,
        make: impl FnOnce() -> Utf8Bytes,
    ) -> bool {
        let queued = {
            let mut state = self.lock();
            if state.closed.is_some() || !state.errors.allow(code, now) {
                return false;
            }
            if let Some(relay) = &self.relay {
                drop(state);
                return relay
                    .hub
                    .send(LinkKind::Send, relay.session, make().as_bytes());
            }
            Self::queue_control(&mut state, Outgoing::Control(make()))
        };
        self.notify.notify_one();
        queued
    }

    fn queue_control(state: &mut State, message: Outgoing) -> bool {
        if state.closed.is_some() {
            return false;
        }
        if state.control.len() >= CONTROL_CAPACITY {
            state.closed = Some(Closed::SlowConsumer);
            return false;
        }
        state.control.push_back(message);
        true
    }

    /// Moves everything queued into `into` (control first, then audio in order) and returns
    /// whether the outbox has been closed.
    pub fn drain(&self, into: &mut Vec<Outgoing>) -> Option<Closed> {
        let mut state = self.lock();
        into.extend(state.control.drain(..));
        into.extend(state.audio.drain(..).map(Outgoing::Audio));
        state.dropped_in_a_row = 0;
        state.wake_pending = false;
        state.closed
    }

    /// Waits until something is queued or the outbox closes.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Stops accepting items; wakes the writer.
    pub fn close(&self, why: Closed) {
        let first = {
            let mut state = self.lock();
            let first = state.closed.is_none();
            state.closed.get_or_insert(why);
            first
        };
        if let (Some(relay), true) = (&self.relay, first) {
            // The edge closes its client's connection as a writer here would have.
            let (code, reason) = match why {
                Closed::SlowConsumer => {
                    let message = ServerMessage::error(
                        ErrorCode::SlowConsumer,
                        "you read audio too slowly and fell behind; disconnecting",
                    );
                    relay
                        .hub
                        .send(LinkKind::Send, relay.session, message.to_json().as_bytes());
                    (close_code::POLICY_VIOLATION, "slow consumer")
                }
                Closed::Close { code, reason } => (code, reason),
            };
            relay.hub.close_session(relay.session, code, reason);
        }
        self.notify.notify_one();
    }

    /// Whether and why the outbox is closed.
    pub fn closed(&self) -> Option<Closed> {
        self.lock().closed
    }

    /// Audio frames dropped so far because the client was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl State {
    fn is_empty(&self) -> bool {
        self.audio.is_empty() && self.control.is_empty()
    }
}

/// Sends each throttled error code at most once per second per connection: audio arrives 50
/// times a second, and a misbehaving client should be told without the server amplifying its
/// flood. Most control-message errors answer every message; the budget's own refusal
/// (`control_rate_limited`) is throttled like audio errors.
#[derive(Debug, Default)]
pub struct ErrorThrottle {
    last: Vec<(ErrorCode, Instant)>,
}

impl ErrorThrottle {
    /// Whether `code` may be sent now (and if so, records that it was).
    pub fn allow(&mut self, code: ErrorCode, now: Instant) -> bool {
        match self.last.iter_mut().find(|(c, _)| *c == code) {
            Some((_, at)) if now.saturating_duration_since(*at) < Duration::from_secs(1) => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                self.last.push((code, now));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> WireFrame {
        WireFrame::of(&[n])
    }

    #[test]
    fn drops_oldest_audio_when_full_and_keeps_newest() {
        let outbox = Outbox::new(3, 100);
        for n in 0..5 {
            outbox.push_audio(frame(n));
        }
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), None);
        assert_eq!(
            out,
            vec![2, 3, 4]
                .into_iter()
                .map(|n| Outgoing::Audio(frame(n)))
                .collect::<Vec<_>>()
        );
        assert_eq!(outbox.dropped(), 2);
    }

    #[test]
    fn control_is_never_dropped_for_audio_and_comes_first() {
        let outbox = Outbox::new(1, 100);
        outbox.push_audio(frame(1));
        assert!(outbox.push_control("hello".into()));
        outbox.push_audio(frame(2));
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(
            out,
            vec![Outgoing::Control("hello".into()), Outgoing::Audio(frame(2))]
        );
    }

    #[test]
    fn an_overflowing_control_lane_closes_the_outbox_and_says_the_message_was_not_queued() {
        let outbox = Outbox::new(1, 100);
        for n in 0..CONTROL_CAPACITY {
            assert!(outbox.push_control(format!("{n}").into()));
        }
        assert!(!outbox.push_control("one too many".into()));
        assert_eq!(outbox.closed(), Some(Closed::SlowConsumer));
    }

    #[test]
    fn throttled_errors_share_one_throttle_per_connection() {
        let outbox = Outbox::new(1, 100);
        let t0 = Instant::now();
        let error = || Utf8Bytes::from_static("error");
        assert!(outbox.push_throttled_error(ErrorCode::RateLimited, t0, error));
        // Whoever raises it next (the connection or a mixer thread) within the second: dropped.
        let soon = t0 + Duration::from_millis(300);
        assert!(!outbox.push_throttled_error(ErrorCode::RateLimited, soon, error));
        assert!(outbox.push_throttled_error(ErrorCode::NoFloor, soon, error));
        let later = t0 + Duration::from_millis(1001);
        assert!(outbox.push_throttled_error(ErrorCode::RateLimited, later, error));
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(out.len(), 3);
    }

    /// Whether the writer has been woken since the last call (takes the wake-up).
    fn woken(outbox: &Outbox) -> bool {
        let mut wait = std::pin::pin!(outbox.wait());
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        wait.as_mut().poll(&mut context).is_ready()
    }

    #[test]
    fn quiet_control_waits_for_the_next_wake_and_is_never_left_without_one() {
        let outbox = Outbox::new(4, 100);
        // Quietly queued messages wake nobody...
        assert!(outbox.push_control_quietly("joined 1".into()));
        assert!(outbox.push_control_quietly("joined 2".into()));
        assert!(!woken(&outbox));
        // ...until the room's tick: the audio frame pushed onto the non-empty queue wakes the
        // writer (a push onto a non-empty queue normally would not), and takes the messages.
        outbox.push_audio(frame(1));
        assert!(woken(&outbox));
        outbox.wake_pending();
        assert!(!woken(&outbox), "one wake-up for the lot");
        let mut out = Vec::new();
        outbox.drain(&mut out);
        assert_eq!(out.len(), 3);

        // A tick with no frame for this member (a silent mix): the room's wake_pending call
        // wakes it.
        assert!(outbox.push_control_quietly("left 2".into()));
        assert!(!woken(&outbox));
        outbox.wake_pending();
        assert!(woken(&outbox));
        outbox.drain(&mut out);

        // Onto a queue the writer was already woken for, nothing more is pending.
        outbox.push_audio(frame(2));
        assert!(woken(&outbox));
        assert!(outbox.push_control_quietly("joined 3".into()));
        outbox.wake_pending();
        assert!(!woken(&outbox));
        // An ordinary control push after a quiet one wakes the writer.
        outbox.drain(&mut out);
        assert!(outbox.push_control_quietly("joined 4".into()));
        assert!(outbox.push_control("error".into()));
        assert!(woken(&outbox));
    }

    #[test]
    fn consecutive_drops_without_drain_mark_the_client_slow() {
        let outbox = Outbox::new(2, 5);
        for n in 0..6 {
            outbox.push_audio(frame(n));
        }
        // 4 drops so far; a drain resets the streak.
        let mut out = Vec::new();
        assert_eq!(outbox.drain(&mut out), None);
        for n in 0..7 {
            outbox.push_audio(frame(n));
        }
        assert_eq!(outbox.closed(), Some(Closed::SlowConsumer));
        assert_eq!(outbox.push_audio(frame(9)), Pushed::Closed);
        assert!(!outbox.push_control("late".into()));
    }
}
