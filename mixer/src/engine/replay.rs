//! Late-joiner replay of push-to-talk transmissions.
//!
//! On a walkie-talkie channel a message is said once. Someone who tunes in halfway through a
//! transmission would miss its first words, so a single-floor room records every transmission
//! while it is on the air (the holder's packets as its jitter buffer played them out: about
//! 100 bytes per 20 ms) and a participant who joins during one hears it from its start, then
//! catches up to live:
//!
//! - silence in the recording is skipped (a run of silence keeps [`KEEP_SILENT_FRAMES`] frames,
//!   so words stay apart), and
//! - speech plays 1.5x faster: every other output frame is two recorded frames cross-faded
//!   into one (the jitter buffer's way of shedding delay; pitch is kept, the merged frame is a
//!   little smeared).
//!
//! A joiner 10 s into a transmission of continuous speech is live again about 20 s later
//! (sooner with pauses). Transmissions that follow while a joiner is still behind are replayed
//! after it, in order, so a quick exchange of messages is heard whole.
//!
//! The recording is replayed through a decoder of its own per joiner, and the replay is mixed
//! in place of the holder's live voice (everyone else in the room is heard live). When the
//! replay reaches the live frame the joiner simply hears the room mix: the replay decoder has
//! just decoded the same packets as the live one, so the two agree.
//!
//! # Talking while behind
//!
//! A joiner who transmits while it is still behind goes live at once, and the rest of the
//! replay is dropped: once it is heard in the room's mix (a talker, or a push-to-talk holder
//! whose audio plays), or holds the single floor (pressed to talk, even before its first words
//! arrive). That is what a push-to-talk user expects: pressing to talk interrupts the message
//! being played back, and an answer is spoken into the room as it is now, not into a recording
//! the others heard seconds ago; nor is anyone's own transmission ever replayed to them. It
//! counts as catching up: [`Event::CaughtUp`](super::Event::CaughtUp) is reported then, once
//! per replay, as when a replay reaches the live edge. A joiner heard in the mix hears its
//! mix-minus on the stream it was replayed on (the same encoder, so the switch is seamless);
//! one holding the floor in silence hears the room's mix, moving to the shared stream as a
//! replay that reached the live edge does.
//!
//! Recordings are bounded ([`MAX_RECORDED_FRAMES`], [`MAX_RECORDED_BYTES`]): a transmission
//! longer than that stops being recorded; a joiner after that point hears it live only, and a
//! joiner replaying it jumps to live at the end of what was recorded.

use std::collections::VecDeque;

use mixer_protocol::FrameSize;

use super::codec::{self, CodecError};
use super::mix;
use super::participant::{decode_into, fade_in_start, resync};
use super::pcm::{PcmError, PcmRate, PcmUplink};
use super::{ClientCodec, ParticipantId};

/// Frames of a run of silence the replay keeps before skipping the rest (40 ms).
pub const KEEP_SILENT_FRAMES: u32 = 2;

/// Most frames one recording holds in a room of 20 ms frames: 60 s, the default longest turn
/// (rooms of shorter frames hold the same 60 s: see [`Recordings::for_frame`]).
pub const MAX_RECORDED_FRAMES: usize = 3_000;

/// Most payload bytes one recording holds (about 70 s of 48 kb/s Opus, 11 s of 48 kHz PCM).
pub const MAX_RECORDED_BYTES: usize = 1 << 20;

/// Shortest backlog worth replaying: a joiner fewer frames behind than this just hears live.
pub const MIN_REPLAY_FRAMES: usize = 3;

/// Below this RMS (about -50 dBFS) a replayed frame counts as silence.
const SILENCE_RMS: f32 = 0.003;

/// Decodes one replay may spend in one tick while skipping silence.
const MAX_DECODES_PER_TICK: usize = 6;

/// Recorded entries one replay may pass over in one tick (silence entries cost no decode).
const MAX_STEPS_PER_TICK: usize = 500;

/// What the holder's jitter buffer played in one 20 ms slot.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Slot {
    /// A packet, stored at `start..start + len` of the recording's bytes.
    Packet { start: u32, len: u16, gain: f32 },
    /// A lost packet recovered from the in-band FEC of the packet stored here.
    Fec { start: u32, len: u16, gain: f32 },
    /// A lost packet, concealed.
    Conceal { gain: f32 },
    /// Nothing played (no audio, a silent packet left undecoded, or the holder was gated).
    Silence,
}

/// What one tick of a participant's playout was, captured for the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Captured {
    /// A packet of this many bytes.
    Packet(usize),
    /// FEC taken from a packet of this many bytes.
    Fec(usize),
    /// Concealment.
    Conceal,
    /// Nothing.
    Silence,
}

/// The current holder's playout of one tick: at most two slots (a merge plays two packets),
/// with their bytes. Filled during the tick's decode (on whichever thread decodes the holder)
/// and moved into the recording after it.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    slots: [Option<Captured>; 2],
    bytes: Vec<u8>,
}

impl Capture {
    /// An empty capture with room for two packets of up to `max_payload` bytes each.
    pub(crate) fn new(max_payload: usize) -> Capture {
        Capture {
            slots: [None; 2],
            bytes: Vec::with_capacity(2 * max_payload),
        }
    }

    /// Notes one played slot; `bytes` are its packet (empty for concealment and silence).
    pub(crate) fn push(&mut self, slot: Captured, bytes: &[u8]) {
        if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some(slot);
            self.bytes.extend_from_slice(bytes);
        }
    }

    fn clear(&mut self) {
        self.slots = [None; 2];
        self.bytes.clear();
    }
}

/// One transmission as played out by its talker's jitter buffer.
#[derive(Debug)]
struct Recording {
    id: u64,
    talker: ParticipantId,
    codec: ClientCodec,
    slots: Vec<Slot>,
    bytes: Vec<u8>,
    /// Still on the air: a slot is added every tick.
    live: bool,
    /// Hit a size limit: nothing more is added.
    full: bool,
}

impl Recording {
    /// Adds what `capture` holds, up to `max_frames` frames in all.
    fn append(&mut self, capture: &Capture, gain: f32, max_frames: usize) {
        let mut offset = 0;
        for slot in capture.slots.iter().flatten() {
            if self.slots.len() >= max_frames {
                self.full = true;
                return;
            }
            let (len, make): (usize, fn(u32, u16, f32) -> Slot) = match *slot {
                Captured::Packet(len) => {
                    (len, |start, len, gain| Slot::Packet { start, len, gain })
                }
                Captured::Fec(len) => (len, |start, len, gain| Slot::Fec { start, len, gain }),
                Captured::Conceal => {
                    self.slots.push(Slot::Conceal { gain });
                    continue;
                }
                Captured::Silence => {
                    self.slots.push(Slot::Silence);
                    continue;
                }
            };
            if self.bytes.len() + len > MAX_RECORDED_BYTES || len > usize::from(u16::MAX) {
                self.full = true;
                return;
            }
            let start = self.bytes.len() as u32;
            self.bytes
                .extend_from_slice(&capture.bytes[offset..offset + len]);
            offset += len;
            self.slots.push(make(start, len as u16, gain));
        }
    }

    fn payload(&self, start: u32, len: u16) -> &[u8] {
        &self.bytes[start as usize..start as usize + usize::from(len)]
    }
}

/// A room's recordings: the transmission on the air (if any) and earlier ones that a joiner is
/// still replaying. Oldest first; usually zero or one.
#[derive(Debug)]
pub(crate) struct Recordings {
    list: VecDeque<Recording>,
    next_id: u64,
    /// The room's frame size.
    frame: FrameSize,
}

impl Default for Recordings {
    fn default() -> Self {
        Recordings::for_frame(FrameSize::default())
    }
}

impl Recordings {
    /// No recordings yet, in a room whose frames are `frame` long.
    pub(crate) fn for_frame(frame: FrameSize) -> Recordings {
        Recordings {
            list: VecDeque::new(),
            next_id: 0,
            frame,
        }
    }

    /// Frames one recording holds at most: the same 60 s whatever the frame size.
    fn max_frames(&self) -> usize {
        MAX_RECORDED_FRAMES * (FrameSize::Ms20.samples() / self.frame.samples())
    }

    /// The talker of the transmission on the air (recorded, or past the recording's limits),
    /// if any.
    pub(crate) fn on_air(&self) -> Option<ParticipantId> {
        self.list.back().filter(|r| r.live).map(|r| r.talker)
    }

    /// Starts recording a new transmission by `talker` (ending any earlier one).
    pub(crate) fn start(&mut self, talker: ParticipantId, codec: ClientCodec) {
        self.stop();
        self.list.push_back(Recording {
            id: self.next_id,
            talker,
            codec,
            slots: Vec::with_capacity(MAX_RECORDED_FRAMES),
            bytes: Vec::with_capacity(64 * 1024),
            live: true,
            full: false,
        });
        self.next_id += 1;
    }

    /// The transmission on the air has ended.
    pub(crate) fn stop(&mut self) {
        if let Some(last) = self.list.back_mut() {
            last.live = false;
        }
    }

    /// Adds one tick of the live transmission (captured from its talker, heard at `gain`),
    /// and clears the capture.
    pub(crate) fn append(&mut self, capture: &mut Capture, gain: f32) {
        let max_frames = self.max_frames();
        if let Some(last) = self.list.back_mut().filter(|r| r.live && !r.full) {
            last.append(capture, gain, max_frames);
        }
        capture.clear();
    }

    /// A replay of the transmission on the air, from its start, for a participant joining
    /// now; `None` when nothing is on the air or the joiner would be less than
    /// [`MIN_REPLAY_FRAMES`] behind (or past what could be recorded).
    pub(crate) fn replay_for_joiner(&self) -> Option<Result<Player, ReplayError>> {
        let live = self.list.back().filter(|r| r.live && !r.full)?;
        if live.slots.len() < MIN_REPLAY_FRAMES {
            return None;
        }
        Some(Player::new(live.id, live.codec, self.frame.samples()))
    }

    /// Frames of recorded audio from `player`'s position to the live edge (silence included).
    pub(crate) fn backlog(&self, player: &Player) -> usize {
        self.list
            .iter()
            .filter(|r| r.id >= player.recording)
            .map(|r| {
                if r.id == player.recording {
                    r.slots.len().saturating_sub(player.cursor)
                } else {
                    r.slots.len()
                }
            })
            .sum()
    }

    /// Forgets finished recordings that no replay still needs; `oldest_in_use` is the oldest
    /// recording any replay is playing.
    pub(crate) fn collect(&mut self, oldest_in_use: Option<u64>) {
        while let Some(first) = self.list.front() {
            let needed =
                first.live && !first.full || oldest_in_use.is_some_and(|id| id <= first.id);
            if needed {
                break;
            }
            self.list.pop_front();
        }
    }

    fn get(&self, id: u64) -> Option<&Recording> {
        self.list.iter().find(|r| r.id == id)
    }

    fn after(&self, id: u64) -> Option<&Recording> {
        self.list.iter().find(|r| r.id > id)
    }
}

/// Building a replay's decoder failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The Opus decoder.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The PCM converter.
    #[error(transparent)]
    Pcm(#[from] PcmError),
}

/// Decodes recorded slots like the talker's own decoder did.
enum ReplayDecoder {
    Opus(opus::Decoder),
    Pcm(Box<PcmUplink>),
}

impl ReplayDecoder {
    fn new(codec: ClientCodec) -> Result<ReplayDecoder, ReplayError> {
        Ok(match codec {
            ClientCodec::Opus => ReplayDecoder::Opus(codec::decoder()?),
            ClientCodec::Pcm(rate) => ReplayDecoder::Pcm(Box::new(PcmUplink::new(rate)?)),
        })
    }

    fn rate(&self) -> Option<PcmRate> {
        match self {
            ReplayDecoder::Opus(_) => None,
            ReplayDecoder::Pcm(uplink) => Some(uplink.rate()),
        }
    }

    /// Decodes one slot into `out` (one frame, gain applied); `false` for silence.
    fn decode(&mut self, recording: &Recording, slot: Slot, out: &mut [f32]) -> bool {
        let gain = match (self, slot) {
            (_, Slot::Silence) => return false,
            (ReplayDecoder::Opus(d), Slot::Packet { start, len, gain }) => {
                decode_into(d, recording.payload(start, len), false, out);
                gain
            }
            (ReplayDecoder::Opus(d), Slot::Fec { start, len, gain }) => {
                decode_into(d, recording.payload(start, len), true, out);
                gain
            }
            (ReplayDecoder::Opus(d), Slot::Conceal { gain }) => {
                decode_into(d, &[], false, out);
                gain
            }
            (ReplayDecoder::Pcm(uplink), Slot::Packet { start, len, gain }) => {
                if uplink.decode(recording.payload(start, len), out).is_err() {
                    uplink.conceal(out);
                }
                gain
            }
            (ReplayDecoder::Pcm(uplink), Slot::Fec { gain, .. } | Slot::Conceal { gain }) => {
                uplink.conceal(out);
                gain
            }
        };
        if gain != 1.0 {
            out.iter_mut().for_each(|s| *s *= gain);
        }
        true
    }
}

/// What [`Player::next_frame`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A frame of replayed audio (or silence, while skipping it); more to come.
    Frame,
    /// A frame, and it was the live frame: from the next tick on, the joiner hears live.
    CaughtUp,
    /// Nothing left to replay (the recording ended or was lost); the frame is silence.
    Done,
}

/// One joiner's position in the recordings, with its own decoder.
pub(crate) struct Player {
    recording: u64,
    cursor: usize,
    decoder: ReplayDecoder,
    scratch: Box<[f32]>,
    silent_run: u32,
    merge_next: bool,
    /// A silence slot was passed since the last decode: the talker's own decoder was reset
    /// before its next one (see `participant::resync`), and so is this one.
    decoder_stale: bool,
}

impl Player {
    fn new(recording: u64, codec: ClientCodec, samples: usize) -> Result<Player, ReplayError> {
        Ok(Player {
            recording,
            cursor: 0,
            decoder: ReplayDecoder::new(codec)?,
            scratch: vec![0.0; samples].into_boxed_slice(),
            // Silence before the first words is skipped whole.
            silent_run: KEEP_SILENT_FRAMES,
            merge_next: false,
            decoder_stale: false,
        })
    }

    /// The recording this replay is playing.
    pub(crate) fn recording(&self) -> u64 {
        self.recording
    }

    /// Renders this tick's frame of replay into `out`: the next recorded frame, skipping
    /// silence and merging every other pair of frames.
    pub(crate) fn next_frame(&mut self, recordings: &Recordings, out: &mut [f32]) -> Step {
        let mut decodes = 0;
        for _ in 0..MAX_STEPS_PER_TICK {
            let Some(recording) = recordings.get(self.recording) else {
                out.fill(0.0);
                return Step::Done;
            };
            let Some(&slot) = recording.slots.get(self.cursor) else {
                if recording.live && !recording.full {
                    // Skipped silence up to the live edge: live from the next tick.
                    out.fill(0.0);
                    return Step::CaughtUp;
                }
                // That transmission is over: go on to the next one, if any.
                match recordings.after(self.recording) {
                    Some(next) => {
                        if self.decoder.rate() != codec_rate(next.codec) {
                            match ReplayDecoder::new(next.codec) {
                                Ok(decoder) => self.decoder = decoder,
                                Err(_) => {
                                    out.fill(0.0);
                                    return Step::Done;
                                }
                            }
                        }
                        self.recording = next.id;
                        self.cursor = 0;
                        continue;
                    }
                    None => {
                        out.fill(0.0);
                        return Step::Done;
                    }
                }
            };
            self.cursor += 1;
            let mut fresh = false;
            if slot == Slot::Silence {
                self.decoder_stale = true;
            } else if let ReplayDecoder::Opus(decoder) = &mut self.decoder {
                fresh = resync(decoder, &mut self.decoder_stale);
            }
            let audible = self.decoder.decode(recording, slot, out);
            if fresh {
                fade_in_start(out);
            }
            decodes += usize::from(audible);
            if !audible || mix::rms(out) < SILENCE_RMS {
                self.silent_run += 1;
                if self.silent_run > KEEP_SILENT_FRAMES && decodes < MAX_DECODES_PER_TICK {
                    continue;
                }
                if !audible {
                    out.fill(0.0);
                }
            } else {
                self.silent_run = 0;
                if self.merge_next
                    && let Some(&second) = recording.slots.get(self.cursor)
                    && second != Slot::Silence
                {
                    // 1.5x: this frame and the next become one, cross-faded.
                    self.cursor += 1;
                    self.decoder.decode(recording, second, &mut self.scratch);
                    self.scratch.swap_with_slice(out);
                    mix::crossfade_into(&self.scratch, out);
                }
                self.merge_next = !self.merge_next;
            }
            let at_live = recording.live && !recording.full && self.cursor >= recording.slots.len();
            return if at_live { Step::CaughtUp } else { Step::Frame };
        }
        // Nothing but silence entries this tick.
        out.fill(0.0);
        Step::Frame
    }
}

fn codec_rate(codec: ClientCodec) -> Option<PcmRate> {
    match codec {
        ClientCodec::Opus => None,
        ClientCodec::Pcm(rate) => Some(rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mixer_protocol::FRAME_SAMPLES;

    fn tone(freq: f32, amplitude: f32, frame: usize) -> Vec<f32> {
        (0..FRAME_SAMPLES)
            .map(|i| {
                let t = (frame * FRAME_SAMPLES + i) as f32 / 48_000.0;
                amplitude * (std::f32::consts::TAU * freq * t).sin()
            })
            .collect()
    }

    /// Records `frames` of PCM at 48 kHz (which the replay decodes bit-exactly), with `None`
    /// as a silence slot.
    fn record(recordings: &mut Recordings, frames: &[Option<Vec<f32>>]) {
        let mut capture = Capture::new(PcmRate::Hz48000.frame_bytes());
        for frame in frames {
            match frame {
                Some(samples) => {
                    let bytes: Vec<u8> = samples
                        .iter()
                        .flat_map(|s| ((s * 32_767.0) as i16).to_le_bytes())
                        .collect();
                    capture.push(Captured::Packet(bytes.len()), &bytes);
                }
                None => capture.push(Captured::Silence, &[]),
            }
            recordings.append(&mut capture, 1.0);
        }
    }

    fn pcm48() -> ClientCodec {
        ClientCodec::Pcm(PcmRate::Hz48000)
    }

    #[test]
    fn a_replay_skips_silence_keeps_a_little_of_it_and_catches_up() {
        let mut recordings = Recordings::default();
        recordings.start(ParticipantId(1), pcm48());
        // 10 silent slots, 4 frames of tone, 10 silent slots, 4 frames of tone.
        let mut frames: Vec<Option<Vec<f32>>> = vec![None; 10];
        frames.extend((0..4).map(|i| Some(tone(440.0, 0.3, i))));
        frames.extend(std::iter::repeat_n(None, 10));
        frames.extend((4..8).map(|i| Some(tone(440.0, 0.3, i))));
        record(&mut recordings, &frames);
        let mut player = recordings
            .replay_for_joiner()
            .expect("on the air")
            .expect("decoder");
        let mut out = vec![0.0; FRAME_SAMPLES];
        let mut steps = Vec::new();
        let mut loud = 0;
        for _ in 0..40 {
            let step = player.next_frame(&recordings, &mut out);
            loud += usize::from(mix::rms(&out) > 0.1);
            steps.push(step);
            if step == Step::CaughtUp {
                break;
            }
            // The live transmission goes on (silently) while the joiner catches up.
            record(&mut recordings, &[None]);
        }
        assert_eq!(steps.last(), Some(&Step::CaughtUp), "{steps:?}");
        // 28 slots were recorded before the joiner arrived; it was live again well before 28
        // ticks: the silence was skipped and the tone merged by pairs.
        assert!(steps.len() < 14, "took {} ticks", steps.len());
        // Every one of the 8 tone frames was heard, 1.5x: 2 + 1 frames per 4, roughly.
        assert!((5..=8).contains(&loud), "{loud} loud frames");
    }

    #[test]
    fn a_replay_goes_on_to_the_next_transmission_and_then_is_done() {
        let mut recordings = Recordings::default();
        recordings.start(ParticipantId(1), pcm48());
        record(
            &mut recordings,
            &(0..6)
                .map(|i| Some(tone(300.0, 0.3, i)))
                .collect::<Vec<_>>(),
        );
        let mut player = recordings
            .replay_for_joiner()
            .expect("on the air")
            .expect("decoder");
        recordings.stop();
        recordings.start(ParticipantId(2), pcm48());
        record(&mut recordings, &[Some(tone(500.0, 0.3, 0))]);
        recordings.stop();
        let mut out = vec![0.0; FRAME_SAMPLES];
        let mut heard = Vec::new();
        loop {
            let step = player.next_frame(&recordings, &mut out);
            if step == Step::Done {
                break;
            }
            heard.push(player.recording());
            assert!(heard.len() < 20);
        }
        assert_eq!(heard.first(), Some(&0));
        assert_eq!(heard.last(), Some(&1));
        // Both replayed: nothing is needed any more.
        recordings.collect(None);
        assert!(recordings.list.is_empty());
    }

    #[test]
    fn recordings_still_replayed_are_kept_and_a_short_backlog_is_not_replayed() {
        let mut recordings = Recordings::default();
        recordings.start(ParticipantId(1), pcm48());
        record(&mut recordings, &[None, None]);
        assert!(
            recordings.replay_for_joiner().is_none(),
            "2 frames behind: live"
        );
        record(&mut recordings, &[None]);
        let player = recordings
            .replay_for_joiner()
            .expect("on the air")
            .expect("decoder");
        assert_eq!(recordings.backlog(&player), 3);
        recordings.stop();
        recordings.collect(Some(player.recording()));
        assert_eq!(recordings.list.len(), 1);
        recordings.collect(None);
        assert!(recordings.list.is_empty());
    }

    #[test]
    fn a_recording_stops_at_its_size_limit() {
        let mut recordings = Recordings::default();
        recordings.start(ParticipantId(1), ClientCodec::Opus);
        let mut capture = Capture::new(1275);
        for _ in 0..MAX_RECORDED_BYTES / 1000 + 1 {
            capture.push(Captured::Packet(1000), &[7; 1000]);
            recordings.append(&mut capture, 1.0);
        }
        assert!(recordings.list[0].full);
        assert!(recordings.list[0].bytes.len() <= MAX_RECORDED_BYTES);
        assert_eq!(
            recordings.on_air(),
            Some(ParticipantId(1)),
            "still on the air"
        );
        assert!(recordings.replay_for_joiner().is_none());
    }
}
