//! One participant: its jitter buffer, decoder, own stream and talking state, and what one
//! tick's playout does with them.

use std::collections::VecDeque;
use std::time::Instant;

use mixer_protocol::{AudioHeader, AudioLevel, Flags, Mode};

use super::codec;
use super::config::{
    EngineConfig, NORMALISE_FRAMES, NORMALISE_MAX_GAIN, NORMALISE_TARGET_RMS, OWN_STREAM_HANGOVER,
    SILENCE_SETTLE_FRAMES, SILENT_DECODE_HANGOVER, TALK_START_FRAMES, TALK_START_RMS,
    TALK_STOP_FRAMES, TALK_STOP_RMS, VOICE_RMS_THRESHOLD,
};
use super::error::EngineError;
use super::jitter::{JitterBuffer, JitterConfig, Playout};
use super::mix;
use super::pcm::{PcmDownlink, PcmRate, PcmUplink};
use super::replay::{Capture, Captured, Player};
use super::room::Event;
use super::stats::ParticipantStats;
use super::stream::{MixStream, Output};

/// The server-wide id of one participant (one joined connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u32);

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// How a participant's audio is coded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientCodec {
    /// Opus at 48 kHz (the engine's own rate).
    #[default]
    Opus,
    /// 16-bit PCM at a client rate, resampled to and from 48 kHz.
    Pcm(PcmRate),
}

/// A PCM client's converters and its rendered frame.
pub(super) struct PcmLink {
    pub(super) uplink: PcmUplink,
    pub(super) downlink: PcmDownlink,
    /// This tick's frame for the client (16-bit little-endian at its rate).
    pub(super) payload: Vec<u8>,
    /// Consecutive silent outputs (for pausing in silence, like the Opus streams).
    pub(super) silent_ticks: u32,
}

/// One participant's codec state and buffers, all sized at join.
pub(super) struct Participant {
    pub(super) id: ParticipantId,
    pub(super) mode: Mode,
    pub(super) jitter: JitterBuffer,
    pub(super) decoder: opus::Decoder,
    /// The participant's own mix-minus stream; talkers only (listeners always hear the shared
    /// mix, so they never need an encoder of their own).
    pub(super) own: Option<MixStream>,
    /// Ticks in 20 ms (1, 2 or 4): the talking and normalisation constants are in 20 ms ticks.
    ticks_per_20ms: u32,
    /// This tick's decoded contribution (valid when `contributing`).
    pub(super) decoded: Box<[f32]>,
    /// Second decode target for merges.
    pub(super) scratch: Box<[f32]>,
    /// This tick's frame is ready, with this header; its payload comes from `own` when
    /// `uses_own`, else from the room's shared stream.
    pub(super) pending: Option<AudioHeader>,
    pub(super) contributing: bool,
    /// Whether this tick's output is the participant's own stream (else the shared one).
    pub(super) uses_own: bool,
    /// The own encoder must be primed with the shared stream's recent input before its next
    /// encode (the participant just moved from the shared stream to its own).
    pub(super) needs_prime: bool,
    /// Consecutive ticks without contributing audio.
    pub(super) quiet_ticks: u32,
    /// Consecutive silent packets decoded (see `SILENT_DECODE_HANGOVER`).
    pub(super) silent_packets: u32,
    /// The decoder has missed frames (the talker was idle or gated, or its silent packets were
    /// skipped); see [`resync`].
    pub(super) decoder_stale: bool,
    /// Smoothed power of this talker's decoded audio (for the talker cap).
    pub(super) loudness: f32,
    /// Result of this tick's own encode (when `uses_own`).
    pub(super) own_level: Option<AudioLevel>,
    /// Mixed in the previous tick (for the talker cap's hysteresis).
    pub(super) selected: bool,
    /// Left out of the mix by the talker cap this tick while it had audio.
    pub(super) capped: bool,
    /// `capped` as it was in the previous tick.
    pub(super) was_capped: bool,
    pub(super) decode_failing: bool,
    /// Set for PCM clients: they are decoded and "encoded" by resampling, not by Opus.
    pub(super) pcm: Option<PcmLink>,
    /// This tick's PCM frame level, or `None` when paused in silence.
    pub(super) pcm_level: Option<AudioLevel>,
    /// Muted (by itself or a moderator): its audio is dropped on arrival.
    pub(super) muted: bool,
    /// May not be mixed now (muted, in listen mode, or push-to-talk without the floor); its
    /// buffered audio is dropped and a frame in progress faded out.
    pub(super) gated: bool,
    /// Manual input gain (linear), set by a moderator.
    pub(super) gain: f32,
    /// Level-normalisation gain (linear), when the room normalises.
    pub(super) auto_gain: f32,
    /// Talking state for talking events, and the frames counted towards changing it.
    pub(super) talking: bool,
    pub(super) talk_frames: u32,
    /// The next frame sent starts a new run of frames (the first one, or the first after a
    /// pause in silence): it carries the marker bit.
    pub(super) starts_run: bool,
    /// Whether it hears the shared stream, as last reported ([`Event::StreamSwitched`]).
    pub(super) hears_shared: bool,
    /// How the client's audio is coded.
    pub(super) codec: ClientCodec,
    /// This tick's playout, captured while the participant holds a single floor (its
    /// transmission is recorded for late joiners).
    pub(super) capture: Option<Capture>,
    /// Set while the participant, a late joiner, hears a transmission replayed.
    pub(super) replay: Option<Box<Catchup>>,
    pub(super) stats: ParticipantStats,
}

/// A late joiner's replay of the transmission it joined in, and the stream it hears meanwhile.
pub(super) struct Catchup {
    pub(super) player: Player,
    /// The joiner's own output while it is behind the room (the room's mix with the replay in
    /// place of the live transmission).
    pub(super) stream: MixStream,
    /// This tick's replayed frame.
    pub(super) frame: Box<[f32]>,
    /// 0 while replaying; then ticks since the replay caught up, during which `stream` encodes
    /// the room's mix alongside the shared stream, so the move to it is inaudible.
    pub(super) live_ticks: u32,
}

impl Participant {
    pub(super) fn new(
        id: ParticipantId,
        mode: Mode,
        codec: ClientCodec,
        config: &EngineConfig,
    ) -> Result<Self, EngineError> {
        let pcm = match codec {
            ClientCodec::Opus => None,
            ClientCodec::Pcm(rate) => Some(PcmLink {
                uplink: PcmUplink::new(rate)?,
                downlink: PcmDownlink::new(rate)?,
                payload: Vec::with_capacity(rate.frame_bytes()),
                silent_ticks: 0,
            }),
        };
        let jitter = match codec {
            ClientCodec::Opus => config.jitter.clone(),
            ClientCodec::Pcm(rate) => JitterConfig {
                max_payload: rate.frame_bytes(),
                ..config.jitter.clone()
            },
        };
        Ok(Participant {
            pcm,
            pcm_level: None,
            id,
            mode,
            jitter: JitterBuffer::new(jitter),
            decoder: codec::decoder()?,
            own: match mode {
                Mode::Talk | Mode::Ptt => Some(MixStream::new(config)?),
                Mode::Listen => None,
            },
            decoded: vec![0.0; config.frame.samples()].into_boxed_slice(),
            scratch: vec![0.0; config.frame.samples()].into_boxed_slice(),
            pending: None,
            contributing: false,
            // A newcomer starts on the shared stream; it has no decoder state to keep in step.
            uses_own: false,
            needs_prime: false,
            quiet_ticks: OWN_STREAM_HANGOVER + 1,
            silent_packets: 0,
            decoder_stale: false,
            loudness: 0.0,
            own_level: None,
            selected: false,
            capped: false,
            was_capped: false,
            decode_failing: false,
            muted: false,
            gated: false,
            gain: 1.0,
            auto_gain: 1.0,
            talking: false,
            talk_frames: 0,
            ticks_per_20ms: config.ticks_per_20ms() as u32,
            starts_run: true,
            hears_shared: true,
            codec,
            capture: None,
            replay: None,
            stats: ParticipantStats::default(),
        })
    }

    /// The stream this participant hears this tick when it is not the shared one: its replay
    /// while it catches up, else its own mix-minus when in use.
    pub(super) fn stream(&self) -> Option<&MixStream> {
        match self.replay.as_ref() {
            Some(catchup) => Some(&catchup.stream),
            None => self.own.as_ref().filter(|_| self.uses_own),
        }
    }

    pub(super) fn snapshot(&self) -> ParticipantStats {
        ParticipantStats {
            jitter: self.jitter.stats().clone(),
            ..self.stats.clone()
        }
    }

    /// Runs the jitter buffer and decoder for this tick; returns whether `decoded` holds audio.
    /// Runs this tick's playout: decoding (see [`Participant::decode`]), then talking detection
    /// and input gain. Returns whether `decoded` holds audio to mix.
    pub(super) fn pull(
        &mut self,
        now: Instant,
        normalise: bool,
        events: &mut VecDeque<Event>,
    ) -> bool {
        if self.gated {
            // Not allowed to be heard: nothing buffered may play, and a frame in progress
            // fades out over one concealed frame instead of stopping with a click.
            let fade = self.contributing && !self.jitter.is_idle();
            if let Some(capture) = self.capture.as_mut() {
                capture.push(Captured::Silence, &[]);
            }
            if !self.jitter.is_idle() {
                self.jitter.reset();
            }
            self.update_talking(None, events);
            self.decoder_stale = true;
            if fade && decode_into(&mut self.decoder, &[], false, &mut self.decoded) {
                mix::fade_out(&mut self.decoded);
                return true;
            }
            return false;
        }
        if !self.decode(now, events) {
            self.update_talking(None, events);
            return false;
        }
        let rms = mix::rms(&self.decoded);
        self.update_talking(Some(rms), events);
        if normalise && rms > TALK_START_RMS {
            let wanted =
                (NORMALISE_TARGET_RMS / rms).clamp(1.0 / NORMALISE_MAX_GAIN, NORMALISE_MAX_GAIN);
            self.auto_gain +=
                (wanted - self.auto_gain) / (NORMALISE_FRAMES * self.ticks_per_20ms as f32);
        }
        let gain = if normalise {
            self.gain * self.auto_gain
        } else {
            self.gain
        };
        if gain != 1.0 {
            self.decoded.iter_mut().for_each(|s| *s *= gain);
        }
        true
    }

    /// The PCM counterpart of the Opus decoding: resampling to 48 kHz, with the converter's own
    /// concealment for lost frames. It runs every tick (concealing when there is nothing), so
    /// the resampler's timing stays continuous.
    #[allow(clippy::too_many_arguments)]
    fn decode_pcm(
        link: &mut PcmLink,
        jitter: &mut JitterBuffer,
        decoded: &mut [f32],
        scratch: &mut [f32],
        stats: &mut ParticipantStats,
        capture: Option<&mut Capture>,
        now: Instant,
    ) -> bool {
        let playout = jitter.pop(now);
        if let Some(capture) = capture {
            capture_playout(capture, &playout, false);
        }
        let ok = match playout {
            Playout::Silence => {
                link.uplink.conceal(scratch);
                return false;
            }
            Playout::Packet(packet) => link.uplink.decode(packet, decoded).is_ok(),
            Playout::Conceal { .. } => {
                link.uplink.conceal(decoded);
                true
            }
            Playout::Merge(first, second) => {
                let a = link.uplink.decode(first, scratch).is_ok();
                let b = link.uplink.decode(second, decoded).is_ok();
                if a && b {
                    mix::crossfade_into(scratch, decoded);
                }
                a && b
            }
        };
        stats.frames_decoded += 1;
        if !ok {
            // The shell checks frame lengths; count it anyway and play concealment.
            stats.decode_errors += 1;
            link.uplink.conceal(decoded);
        }
        true
    }

    /// Renders this tick's output for a PCM client from `mix` (48 kHz, limited); `None` while
    /// its output is settled silence and silence is not sent.
    pub(super) fn render_pcm(
        link: &mut PcmLink,
        mix: &[f32],
        send_silence: bool,
    ) -> Option<AudioLevel> {
        let silent = mix.iter().all(|s| *s == 0.0);
        link.silent_ticks = if silent { link.silent_ticks + 1 } else { 0 };
        if !send_silence && link.silent_ticks > SILENCE_SETTLE_FRAMES {
            return None;
        }
        let bytes = link.downlink.render(mix);
        link.payload.clear();
        link.payload.extend_from_slice(bytes);
        let rms = mix::rms(mix);
        Some(AudioLevel::from_rms(rms > VOICE_RMS_THRESHOLD, rms))
    }

    /// Advances the talking state by one tick with this tick's decoded level (`None`: no audio).
    fn update_talking(&mut self, rms: Option<f32>, events: &mut VecDeque<Event>) {
        let change = if self.talking {
            rms.is_none_or(|r| r < TALK_STOP_RMS)
        } else {
            rms.is_some_and(|r| r > TALK_START_RMS)
        };
        if !change {
            self.talk_frames = 0;
            return;
        }
        self.talk_frames += 1;
        let needed = self.ticks_per_20ms
            * if self.talking {
                TALK_STOP_FRAMES
            } else {
                TALK_START_FRAMES
            };
        if self.talk_frames >= needed {
            self.set_talking(!self.talking, events);
        }
    }

    pub(super) fn set_talking(&mut self, talking: bool, events: &mut VecDeque<Event>) {
        self.talk_frames = 0;
        if self.talking == talking {
            return;
        }
        self.talking = talking;
        let participant = self.id;
        events.push_back(if talking {
            Event::TalkingStarted { participant }
        } else {
            Event::TalkingStopped { participant }
        });
    }

    /// Runs the jitter buffer and decoder for this tick; returns whether `decoded` holds audio.
    fn decode(&mut self, now: Instant, events: &mut VecDeque<Event>) -> bool {
        if !self.mode.sends_audio() {
            return false;
        }
        if let Some(link) = self.pcm.as_mut() {
            return Self::decode_pcm(
                link,
                &mut self.jitter,
                &mut self.decoded,
                &mut self.scratch,
                &mut self.stats,
                self.capture.as_mut(),
                now,
            );
        }
        let silent = self.jitter.next_is_silent();
        let skipped = silent && self.silent_packets >= SILENT_DECODE_HANGOVER;
        let decoder = &mut self.decoder;
        let decoded = &mut self.decoded;
        let playout = self.jitter.pop(now);
        if let Some(capture) = self.capture.as_mut() {
            capture_playout(capture, &playout, skipped);
        }
        match playout {
            Playout::Silence => {
                self.decoder_stale = true;
                return false;
            }
            Playout::Packet(_) if skipped => {
                // A silent uplink costs no decode and adds nothing to the mix.
                self.stats.frames_skipped += 1;
                self.decoder_stale = true;
                return false;
            }
            _ => {}
        }
        let fresh = resync(decoder, &mut self.decoder_stale);
        let ok = match playout {
            Playout::Silence => return false,
            Playout::Packet(packet) => decode_into(decoder, packet, false, decoded),
            Playout::Conceal {
                fec_from: Some(next),
            } => decode_into(decoder, next, true, decoded),
            Playout::Conceal { fec_from: None } => decode_into(decoder, &[], false, decoded),
            Playout::Merge(first, second) => {
                let a = decode_into(decoder, first, false, &mut self.scratch);
                if fresh {
                    fade_in_start(&mut self.scratch);
                }
                let b = decode_into(decoder, second, false, decoded);
                if a && b {
                    mix::crossfade_into(&self.scratch, decoded);
                    self.stats.frames_decoded += 1;
                }
                a && b
            }
        };
        if fresh && !matches!(playout, Playout::Merge(..)) {
            fade_in_start(decoded);
        }
        self.stats.frames_decoded += 1;
        self.silent_packets = if silent {
            self.silent_packets.saturating_add(1)
        } else {
            0
        };
        if ok {
            self.decode_failing = false;
        } else {
            // A packet that passed the shell's checks and still fails to decode: conceal it so
            // the room hears a smooth gap, and report it once per run of failures.
            self.stats.decode_errors += 1;
            if !self.decode_failing {
                events.push_back(Event::DecodeFailed {
                    participant: self.id,
                });
            }
            self.decode_failing = true;
            if !decode_into(&mut self.decoder, &[], false, &mut self.decoded) {
                return false;
            }
        }
        true
    }

    /// Stamps this tick's frame with the room's sequence number and timestamp, around a payload
    /// encoded either by this participant's own encoder or by the shared one. Sharing the room's
    /// numbering makes every shared frame byte-identical for all its listeners (but for the
    /// marker on a newcomer's first frame), so the shell can build it once.
    ///
    /// It also reports (to `events`) when the participant has moved onto or off the shared
    /// stream since its last stamp: a relay that hands the shared frame on to many listeners
    /// at once must know who is not to get it, even while their own stream is paused.
    pub(super) fn stamp(
        &mut self,
        sequence: u16,
        timestamp: u32,
        output: Output,
        events: &mut VecDeque<Event>,
    ) {
        let hears_shared = self.pcm.is_none() && self.stream().is_none();
        if hears_shared != self.hears_shared {
            self.hears_shared = hears_shared;
            events.push_back(Event::StreamSwitched {
                participant: self.id,
                shared: hears_shared,
            });
        }
        if self.pending.take().is_some() {
            self.stats.frames_overwritten += 1;
        }
        match output {
            Output::Frame(level) => {
                self.pending = Some(AudioHeader {
                    flags: Flags::default().with_marker(self.starts_run),
                    sequence,
                    timestamp,
                    level,
                });
                self.starts_run = false;
                self.stats.frames_out += 1;
            }
            Output::Paused => {
                self.starts_run = true;
                self.stats.frames_paused += 1;
            }
            Output::Failed => {}
        }
    }
}

/// Notes a tick's playout in the recording of a transmission; `skipped` when a silent packet
/// is played without decoding (the replay skips it too).
pub(super) fn capture_playout(capture: &mut Capture, playout: &Playout<'_>, skipped: bool) {
    match *playout {
        Playout::Silence => capture.push(Captured::Silence, &[]),
        Playout::Packet(_) if skipped => capture.push(Captured::Silence, &[]),
        Playout::Packet(packet) => capture.push(Captured::Packet(packet.len()), packet),
        Playout::Conceal {
            fec_from: Some(next),
        } => capture.push(Captured::Fec(next.len()), next),
        Playout::Conceal { fec_from: None } => capture.push(Captured::Conceal, &[]),
        Playout::Merge(first, second) => {
            capture.push(Captured::Packet(first.len()), first);
            capture.push(Captured::Packet(second.len()), second);
        }
    }
}

/// Samples over which the first frame of a reset decoder fades in (2.5 ms).
const RESYNC_FADE_SAMPLES: usize = 120;

/// Starts a decoder that missed frames afresh before it decodes again (and clears `stale`);
/// returns whether it did, in which case the caller fades in the frame it decodes next with
/// [`fade_in_start`].
///
/// A talker that stops sending (DTX, push-to-talk, a gate) leaves its decoder where the last
/// concealed frames put it: an excitation history faded by packet loss concealment. The
/// sender's encoder meanwhile went on over silence (or was reset), so it predicts the next
/// spurt from silence. Decoded from the faded history, a voiced spurt came out about 20 dB low
/// and took about 100 ms to recover. A reset decoder matches the sender's state, and the spurt
/// starts at full level. The replay of a recording does the same at the same frames (see
/// `replay`).
pub(super) fn resync(decoder: &mut opus::Decoder, stale: &mut bool) -> bool {
    // A reset only clears the decoder's state; should libopus refuse it, decoding from the old
    // state is still sound audio.
    std::mem::take(stale) && decoder.reset_state().is_ok()
}

/// Fades in the first 2.5 ms of a reset decoder's first frame. A sender that went on talking
/// while its packets were dropped (gated, muted) resumes mid-word, and a decoder started from
/// rest would begin that word mid-wave, with a click; a new spurt after a real pause starts
/// from silence anyway (and later than 2.5 ms, behind the encoder's look-ahead).
pub(super) fn fade_in_start(frame: &mut [f32]) {
    let n = RESYNC_FADE_SAMPLES.min(frame.len());
    let step = std::f32::consts::PI / n.max(1) as f32;
    for (i, sample) in frame[..n].iter_mut().enumerate() {
        *sample *= 0.5 - 0.5 * (step * (i as f32 + 0.5)).cos();
    }
}

/// Decodes one packet (or conceals, for an empty one) into exactly one 20 ms frame.
pub(super) fn decode_into(
    decoder: &mut opus::Decoder,
    packet: &[u8],
    fec: bool,
    out: &mut [f32],
) -> bool {
    match decoder.decode_float(packet, out, fec) {
        Ok(n) if n == out.len() => true,
        _ => {
            out.fill(0.0);
            false
        }
    }
}
