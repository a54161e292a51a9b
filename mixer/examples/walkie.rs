//! A minimal push-to-talk client, for trying a channel by hand (see the README's walk-through).
//!
//! It joins a room, "presses the button" at the times given with `--press`, asks for the floor,
//! transmits a tone while it holds it, releases it, prints every event the room sends, and can
//! record what it hears to a WAV file.
//!
//! ```text
//! cargo run --release -p mixer --example walkie -- --name bob --record bob.wav --duration 10
//! cargo run --release -p mixer --example walkie -- --name alice --press 2:3 --tone 440
//! ```
//!
//! Against a TLS server, give a `wss://` URL (and `--ca-file` for a self-signed test CA).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{
    AudioFormat, AudioFrame, AudioHeader, AudioLevel, ClientMessage, FRAME_SAMPLES, Flags,
    JoinRequest, Mode, Role, SAMPLE_RATE, ServerMessage, parse_server_message,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Redirects followed in a row before giving up, so a misconfigured fleet cannot bounce the
/// client forever.
const MAX_REDIRECTS: u32 = 3;

/// A push-to-talk test client for the mixer.
#[derive(Debug, Parser)]
struct Args {
    /// Mixer WebSocket URL, ws:// or wss://.
    #[arg(long, default_value = "ws://127.0.0.1:8080/")]
    url: String,
    /// For a wss:// URL, trust only the CA certificate(s) in this PEM file (a self-signed test
    /// CA, say) instead of the system's roots.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Channel (room) to join.
    #[arg(long, default_value = "channel-1")]
    room: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// Role: speaker, listener or moderator; default: the access token's, or speaker.
    #[arg(long)]
    role: Option<String>,
    /// Access token (`mixer token create ...`), for a server with --auth-key-file.
    #[arg(long, env = "MIXER_TOKEN")]
    token: Option<String>,
    /// Press the talk button at START seconds for LENGTH seconds ("START:LENGTH"); repeatable.
    #[arg(long, value_parser = parse_press)]
    press: Vec<(f64, f64)>,
    /// Frequency of the tone transmitted while holding the floor, in Hz.
    #[arg(long, default_value_t = 440.0)]
    tone: f32,
    /// Seconds to stay in the channel.
    #[arg(long, default_value_t = 8.0)]
    duration: f64,
    /// Write what this client hears to a 48 kHz mono 16-bit WAV file.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Wait this many seconds before joining (to tune in mid-transmission, say).
    #[arg(long, default_value_t = 0.0)]
    join_after: f64,
}

fn parse_press(text: &str) -> Result<(f64, f64), String> {
    let (start, length) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected START:LENGTH in seconds, e.g. 2:3"))?;
    let number = |s: &str| {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{s:?} is not a number of seconds"))
    };
    Ok((number(start)?, number(length)?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let role = match args.role.as_deref() {
        None => None,
        Some("speaker") => Some(Role::Speaker),
        Some("listener") => Some(Role::Listener),
        Some("moderator") => Some(Role::Moderator),
        Some(other) => bail!("unknown role {other:?}: use speaker, listener or moderator"),
    };
    if !(args.join_after.is_finite() && args.join_after >= 0.0) {
        bail!("--join-after must be a number of seconds");
    }
    tokio::time::sleep(std::time::Duration::from_secs_f64(args.join_after)).await;
    // loadgen's connector: TLS for wss:// with rustls, ws:// as plain as ever.
    let connector = loadgen::connect::Connector::for_urls(
        std::slice::from_ref(&args.url),
        args.ca_file.as_deref(),
    )?;
    let (mut ws, _) = connector
        .websocket(&args.url, None)
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    let join = ClientMessage::Join(JoinRequest {
        room: args.room.clone(),
        name: args.name.clone(),
        token: args.token.clone(),
        // Listeners listen; everyone else uses push-to-talk here, in any room.
        mode: Some(if role == Some(Role::Listener) {
            Mode::Listen
        } else {
            Mode::Ptt
        }),
        resume: None,
        role,
        format: AudioFormat::opus_48k_mono_20ms(),
    });
    ws.send(Message::text(join.to_json())).await?;

    let start = Instant::now();
    let say = |what: String| println!("{:6.2}s  {what}", start.elapsed().as_secs_f64());
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut me = None;
    let mut encoder =
        opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
    let mut decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?;
    let (mut pcm, mut packet, mut heard) = (
        vec![0.0f32; FRAME_SAMPLES],
        vec![0u8; 1500],
        Vec::<f32>::new(),
    );
    let (mut phase, mut sequence, mut timestamp) = (0.0f32, 0u16, 0u32);
    let mut holding = false;
    let mut pressed = false;
    let mut first_of_spurt = true;
    let mut last_sequence: Option<u16> = None;
    let mut redirects = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let end = start + Duration::from_secs_f64(args.duration);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if Instant::now() >= end {
                    break;
                }
                let t = start.elapsed().as_secs_f64();
                let want = args.press.iter().any(|(from, len)| t >= *from && t < from + len);
                if want && !pressed {
                    say("button pressed: floor_request".into());
                    let request = ClientMessage::FloorRequest { preempt: false };
                    ws.send(Message::text(request.to_json())).await?;
                } else if !want && pressed {
                    say("button released: floor_release".into());
                    ws.send(Message::text(ClientMessage::FloorRelease.to_json())).await?;
                    holding = false;
                    first_of_spurt = true;
                }
                pressed = want;
                timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
                if holding {
                    for sample in pcm.iter_mut() {
                        *sample = 0.25 * phase.sin();
                        phase = (phase + std::f32::consts::TAU * args.tone / SAMPLE_RATE as f32)
                            % std::f32::consts::TAU;
                    }
                    if first_of_spurt {
                        // The encoder was idle across the pause: start the new press from a
                        // clean state, as the protocol asks ("Across a pause").
                        encoder.reset_state()?;
                    }
                    let len = encoder.encode_float(&pcm, &mut packet)?;
                    let frame = AudioFrame {
                        header: AudioHeader {
                            flags: Flags::default().with_marker(first_of_spurt),
                            sequence,
                            timestamp,
                            // Measured, as the protocol asks of a sender that can.
                            level: AudioLevel::from_rms(true, rms(&pcm)),
                        },
                        payload: &packet[..len],
                    };
                    ws.send(Message::binary(frame.to_vec())).await?;
                    sequence = sequence.wrapping_add(1);
                    first_of_spurt = false;
                }
            }
            message = ws.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    let frame = AudioFrame::parse(&bytes)?;
                    // The server pauses while the mix is silent; the marked frame after a pause
                    // tells how long it was, so the recording keeps real time.
                    if let Some(last) = last_sequence
                        && frame.header.flags.marker()
                    {
                        let missing = frame.header.sequence.wrapping_sub(last).wrapping_sub(1);
                        heard.resize(heard.len() + usize::from(missing) * FRAME_SAMPLES, 0.0);
                    }
                    last_sequence = Some(frame.header.sequence);
                    let n = decoder.decode_float(frame.payload, &mut pcm, false)?;
                    heard.extend_from_slice(&pcm[..n]);
                }
                Some(Ok(Message::Text(text))) => {
                    let message = parse_server_message(text.as_str())?;
                    let name = |id: &u32| names.get(id).cloned().unwrap_or_else(|| format!("#{id}"));
                    match &message {
                        ServerMessage::Joined { participant_id, participants, floor, replay_ms, .. } => {
                            redirects = 0;
                            me = Some(*participant_id);
                            names.insert(*participant_id, format!("{} (me)", args.name));
                            for p in participants {
                                names.insert(p.id, p.name.clone());
                            }
                            say(format!("joined {} as #{participant_id}; floor policy {:?}; {} others here",
                                args.room, floor.policy, participants.len()));
                            if let Some(behind) = replay_ms {
                                let holder = floor
                                    .holder
                                    .and_then(|h| names.get(&h).cloned())
                                    .unwrap_or_default();
                                say(format!("{holder} is on the air: replaying from the start ({behind} ms behind)"));
                            }
                        }
                        ServerMessage::Redirect { url, reason, resume_token, .. } => {
                            // Another node of the fleet mixes the room: join there.
                            redirects += 1;
                            if redirects > MAX_REDIRECTS {
                                bail!("more than {MAX_REDIRECTS} redirects in a row (last to {url})");
                            }
                            say(format!("redirected ({reason:?}) to {url}"));
                            let (next, _) = connector
                                .websocket(url, None)
                                .await
                                .with_context(|| format!("connecting to {url}"))?;
                            ws = next;
                            let mut again = join.clone();
                            if let ClientMessage::Join(request) = &mut again {
                                request.resume = resume_token.clone();
                            }
                            ws.send(Message::text(again.to_json())).await?;
                        }
                        ServerMessage::CaughtUp => say("caught up: live".to_owned()),
                        ServerMessage::ParticipantJoined { participant } => {
                            names.insert(participant.id, participant.name.clone());
                            say(format!("{} joined ({:?})", participant.name, participant.mode));
                        }
                        ServerMessage::FloorGranted { participant_id, .. } => {
                            if Some(*participant_id) == me && pressed {
                                holding = true;
                            }
                            say(format!("floor granted to {}", name(participant_id)));
                        }
                        ServerMessage::FloorDenied { holder } => {
                            say(format!("floor denied: {} is talking", name(holder)));
                        }
                        ServerMessage::FloorReleased { participant_id, reason, .. } => {
                            if Some(*participant_id) == me {
                                holding = false;
                            }
                            say(format!("floor released by {} ({reason:?})", name(participant_id)));
                        }
                        ServerMessage::TalkingStarted { participant_id } => {
                            say(format!("{} is talking", name(participant_id)));
                        }
                        ServerMessage::TalkingStopped { participant_id } => {
                            say(format!("{} stopped talking", name(participant_id)));
                        }
                        other => say(format!("{other:?}")),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("connection failed: {error}"),
                None => bail!("the server closed the connection"),
            },
        }
    }
    let _ = ws.close(None).await;
    let rms = (heard.iter().map(|x| x * x).sum::<f32>() / heard.len().max(1) as f32).sqrt();
    say(format!(
        "heard {:.1} s of audio, level {:.0} dBFS",
        heard.len() as f64 / f64::from(SAMPLE_RATE),
        20.0 * (rms.max(1e-9) * std::f32::consts::SQRT_2).log10()
    ));
    if let Some(path) = &args.record {
        write_wav(path, &heard).with_context(|| format!("writing {}", path.display()))?;
        say(format!("recorded to {}", path.display()));
    }
    Ok(())
}

/// Writes 48 kHz mono 16-bit PCM.
fn write_wav(path: &std::path::Path, samples: &[f32]) -> std::io::Result<()> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"RIFF")?;
    out.write_all(&(36 + data_len).to_le_bytes())?;
    out.write_all(b"WAVEfmt ")?;
    out.write_all(&16u32.to_le_bytes())?;
    out.write_all(&1u16.to_le_bytes())?; // PCM
    out.write_all(&1u16.to_le_bytes())?; // mono
    out.write_all(&SAMPLE_RATE.to_le_bytes())?;
    out.write_all(&(SAMPLE_RATE * 2).to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&16u16.to_le_bytes())?;
    out.write_all(b"data")?;
    out.write_all(&data_len.to_le_bytes())?;
    for s in samples {
        out.write_all(&((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())?;
    }
    out.flush()
}

/// Root mean square of a frame.
fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|x| x * x).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}
