//! Clients that flood every kind of control message cost the rest of their room nothing: no
//! audio frame, no event, no memory. One floods at full speed and is cut off for ignoring its
//! budget; another floods at a pace that stays under the cut-off for the whole run, so the
//! budget drops most of what it sends and lets the rest through. What protects the room is the
//! per-connection control budget, the bounded control queue to each mixer thread and
//! broadcasts serialised once.

use std::collections::BTreeMap;

use futures_util::stream::SplitStream;
use mixer_protocol::close_code;

use super::*;

/// Bystanders who only listen; one more reads at 64 KB/s, like a client on a poor link.
const BYSTANDERS: usize = 40;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(4);
/// Bytes per second the slow bystander reads.
const SLOW_LINK_BYTES_PER_SECOND: f64 = 64_000.0;
/// Messages per second of the paced flooder: well over its budget, under the cut-off.
const PACED_FLOOD_PER_SECOND: u32 = 300;
/// A participant id nobody has.
const NOBODY: u32 = 999_999;
/// Decoded audio a bystander keeps (the last second is what is checked).
const KEEP_SAMPLES: usize = 2 * 48_000;

/// What a bystander saw: the talker's audio and every room event, in order.
struct Seen {
    listener: Listener,
    events: Vec<String>,
    ended: Option<String>,
}

/// Reads everything for `duration`; with `slow`, no faster than the slow link allows.
async fn watch(mut ws: Client, duration: Duration, slow: bool) -> Seen {
    let mut seen = Seen {
        listener: Listener::default(),
        events: Vec::new(),
        ended: None,
    };
    // Decoded audio is kept to the last second or two, in memory reserved up front, so the
    // test's own memory stays flat and the server's is what the measurement sees.
    seen.listener.pcm.reserve(KEEP_SAMPLES + 960);
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => break,
            Ok(Some(Ok(message))) => message,
            Ok(other) => {
                seen.ended = Some(format!("{other:?}"));
                break;
            }
        };
        if slow {
            let seconds = message.len() as f64 / SLOW_LINK_BYTES_PER_SECOND;
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        }
        match message {
            Message::Binary(bytes) => {
                seen.listener.receive_wire(&bytes);
                let pcm = &mut seen.listener.pcm;
                if pcm.len() > KEEP_SAMPLES {
                    pcm.drain(..pcm.len() - KEEP_SAMPLES / 2);
                }
            }
            Message::Text(text) => {
                let message = parse_server_message(text.as_str()).expect("server JSON parses");
                // Talking indicators follow the talker's audio, and the other bystanders joined
                // before the watch began (each saw a different number of them); everything
                // else is an event the whole room must see in full.
                let before_the_watch = match &message {
                    ServerMessage::TalkingStarted { .. } | ServerMessage::TalkingStopped { .. } => {
                        true
                    }
                    ServerMessage::ParticipantJoined { participant } => {
                        participant.name.starts_with("ear-")
                    }
                    _ => false,
                };
                if !before_the_watch {
                    seen.events.push(text.to_string());
                }
            }
            Message::Close(frame) => {
                seen.ended = Some(format!("closed: {frame:?}"));
                break;
            }
            _ => {}
        }
    }
    seen
}

/// What a flooder did.
struct Flooded {
    sent: usize,
    seconds: f64,
    /// Replies by type (errors by code).
    replies: BTreeMap<String, usize>,
    /// The server's close code, if it closed the connection.
    closed: Option<u16>,
}

/// Sends every control message type for [`FLOOD`], as fast as possible or at `per_second`, while
/// reading every reply.
async fn flood(ws: Client, other: u32, per_second: Option<u32>, role: Role) -> Flooded {
    let (mut sink, stream) = ws.split();
    let replies = tokio::spawn(read_replies(stream));
    let started = Instant::now();
    let mut sent = 0usize;
    let mut cycles = 0u64;
    'flood: while started.elapsed() < FLOOD {
        for message in loadgen::flood::cycle(cycles, "flood", "flooder", role, other) {
            if let Some(rate) = per_second {
                let due = started + Duration::from_secs_f64(sent as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
                if sink.send(message).await.is_err() {
                    break 'flood;
                }
            } else if sink.feed(message).await.is_err() {
                break 'flood;
            }
            sent += 1;
        }
        if sink.flush().await.is_err() {
            break;
        }
        cycles += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = sink.close().await;
    let (replies, closed) = tokio::time::timeout(Duration::from_secs(5), replies)
        .await
        .expect("the flooder's replies end")
        .expect("reply task");
    Flooded {
        sent,
        seconds,
        replies,
        closed,
    }
}

/// Reads a flooder's replies to the end: counts by type, and the server's close code.
async fn read_replies(mut stream: SplitStream<Client>) -> (BTreeMap<String, usize>, Option<u16>) {
    let mut replies = BTreeMap::new();
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                let key = match parse_server_message(text.as_str()) {
                    Ok(ServerMessage::Error { code, .. }) => format!("error:{code}"),
                    Ok(other) => other.type_name().to_owned(),
                    Err(error) => panic!("server JSON parses: {error}"),
                };
                *replies.entry(key).or_default() += 1;
            }
            Message::Close(frame) => {
                let code = frame
                    .map(|f| u16::from(f.code))
                    .filter(|&c| c != close_code::NORMAL);
                return (replies, code);
            }
            _ => {}
        }
    }
    (replies, None)
}

/// The events about the flooders (who joined under the name "flooder"), in order.
fn about_flooders(events: &[String]) -> Vec<&String> {
    let mut flooders = std::collections::BTreeSet::new();
    events
        .iter()
        .filter(|event| {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(event) else {
                return false;
            };
            if value["participant"]["name"] == "flooder" {
                flooders.insert(value["participant"]["id"].as_u64());
            }
            let about = value["participant_id"]
                .as_u64()
                .or(value["from"].as_u64())
                .or(value["by"].as_u64())
                .or(value["participant"]["id"].as_u64());
            about.is_some() && flooders.contains(&about)
        })
        .collect()
}

/// The process's resident memory, in bytes (the server runs in this process).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_every_control_type_costs_its_room_no_audio_no_event_and_no_memory() {
    let server = TestServer::start(&[]).await;
    // The talker is a moderator, so the flooding moderator's mute_room never mutes it.
    let (talker, talker_id) =
        join_as(&server, "flood", "talker", Mode::Talk, Role::Moderator).await;
    let mut bystanders = Vec::new();
    for n in 0..=BYSTANDERS {
        let (ws, _) = join(&server, "flood", &format!("ear-{n}"), Mode::Listen).await;
        bystanders.push(ws);
    }
    let (paced, _) = join(&server, "flood", "flooder-paced", Mode::Talk).await;
    let (rushed, _) = join(&server, "flood", "flooder-rushed", Mode::Talk).await;
    let (chair, _) = join_as(
        &server,
        "flood",
        "flooder-chair",
        Mode::Talk,
        Role::Moderator,
    )
    .await;

    // The talker talks throughout; everyone else listens from now until after the flood.
    let settle = Duration::from_millis(1500);
    let watch_for = settle + FLOOD + Duration::from_millis(1500);
    let talking = tokio::spawn(run_client(talker, Some(TONES[0]), watch_for));
    let watchers: Vec<_> = bystanders
        .into_iter()
        .enumerate()
        .map(|(n, ws)| tokio::spawn(watch(ws, watch_for, n == 0)))
        .collect();
    tokio::time::sleep(settle).await;
    let memory_before = resident_bytes();

    let rushed = tokio::spawn(flood(rushed, talker_id, None, Role::Speaker));
    let paced = tokio::spawn(flood(
        paced,
        talker_id,
        Some(PACED_FLOOD_PER_SECOND),
        Role::Speaker,
    ));
    // A moderator may do the expensive things (mute_room, set_gain, remove, preempt): it aims
    // them at nobody in the room, so what it costs is the work and the room-wide room_muted.
    let chair = tokio::spawn(flood(
        chair,
        NOBODY,
        Some(PACED_FLOOD_PER_SECOND),
        Role::Moderator,
    ));
    let rushed = rushed.await.expect("rushed flooder");
    let paced = paced.await.expect("paced flooder");
    let chair = chair.await.expect("moderator flooder");
    let memory_after = resident_bytes();

    let heard = talking.await.expect("talker task");
    let seen: Vec<Seen> = futures_util::future::join_all(watchers)
        .await
        .into_iter()
        .map(|seen| seen.expect("bystander task"))
        .collect();
    let metrics = http_get(server.addr, "/metrics").await.1;
    let refused = |reason: &str| {
        metric(
            &metrics,
            "mixer_control_refused_total",
            &format!("reason=\"{reason}\""),
        )
    };
    println!(
        "rushed flooder: {} messages in {:.2} s, replies {:?}, closed {:?}\n\
         paced flooder: {} messages in {:.1} s, replies {:?}, closed {:?}\n\
         moderator flooder: {} messages in {:.1} s, replies {:?}, closed {:?}\n\
         resident memory {:.1} -> {:.1} MiB; refused: budget {}, flood {}, busy {}",
        rushed.sent,
        rushed.seconds,
        rushed.replies,
        rushed.closed,
        paced.sent,
        paced.seconds,
        paced.replies,
        paced.closed,
        chair.sent,
        chair.seconds,
        chair.replies,
        chair.closed,
        memory_before as f64 / 1048576.0,
        memory_after as f64 / 1048576.0,
        refused("budget"),
        refused("flood"),
        refused("busy"),
    );

    // The full-speed flooder ignored the budget and was cut off (1008), well within the flood.
    assert_eq!(rushed.closed, Some(1008), "{:?}", rushed.replies);
    assert!(rushed.sent > 500, "it did flood: {}", rushed.sent);
    assert!(refused("flood") >= 1.0);
    // The paced ones were never cut off; the budget dropped most of what they sent and let
    // through no more than its burst plus its refill.
    assert_eq!(paced.closed, None, "{:?}", paced.replies);
    assert_eq!(chair.closed, None, "{:?}", chair.replies);
    assert!(
        chair.replies.contains_key("room_muted"),
        "the moderator's mute_room was applied: {:?}",
        chair.replies
    );
    assert!(
        paced.sent as f64 >= 0.8 * f64::from(PACED_FLOOD_PER_SECOND) * FLOOD.as_secs_f64(),
        "{}",
        paced.sent
    );
    assert!(
        paced
            .replies
            .get("error:control_rate_limited")
            .copied()
            .unwrap_or(0)
            >= 2,
        "{:?}",
        paced.replies
    );
    // Each message the budgets let through (the paced flooders', and the rushed one's before
    // it was cut off) causes at most one message to the paced flooder; talking indicators
    // follow the talker's audio instead.
    let answered: usize = paced
        .replies
        .iter()
        .filter(|(reply, _)| {
            !matches!(
                reply.as_str(),
                "error:control_rate_limited" | "talking_started" | "talking_stopped"
            )
        })
        .map(|(_, n)| n)
        .sum();
    let burst = f64::from(mixer_protocol::CONTROL_BUDGET_BURST);
    let refill = f64::from(mixer_protocol::CONTROL_BUDGET_REFILL_PER_SECOND);
    let budgets = 3.0 * burst + refill * (paced.seconds + chair.seconds + rushed.seconds + 1.0);
    assert!(
        (answered as f64) <= budgets,
        "{answered} messages answered or announced, more than the budgets' {budgets:.0}"
    );

    // No bystander lost audio or was cut off, the slow one included.
    for (n, seen) in seen.iter().enumerate() {
        assert_eq!(seen.ended, None, "bystander {n} was cut off");
        let frames = seen.listener.frames;
        let expected = watch_for.as_secs_f64() * 50.0;
        assert!(
            frames as f64 >= expected * 0.9,
            "bystander {n} got {frames} frames of about {expected:.0}"
        );
        assert_eq!(
            seen.listener.sequence_gaps, 0,
            "bystander {n} lost frames (sequence gaps)"
        );
        let pcm = &seen.listener.pcm;
        let tail = &pcm[pcm.len().saturating_sub(48_000)..];
        assert!(
            tone_db(tail, TONES[0]) > -22.0,
            "bystander {n} hears the talker after the flood: {:.1} dB",
            tone_db(tail, TONES[0])
        );
    }
    // Every bystander saw the same events, in the same order (nothing dropped for anyone), and
    // the flood did reach them: the flooders' changes are real events.
    // (Only events about the flooders: bystanders leaving at the end are seen by some and not
    // others, depending on who stops watching first.)
    let flood_events: Vec<Vec<&String>> = seen.iter().map(|s| about_flooders(&s.events)).collect();
    let reference = &flood_events[1];
    let changes = reference
        .iter()
        .filter(|e| e.contains("mode_changed") || e.contains("participant_muted"))
        .count();
    assert!(changes >= 4, "{reference:?}");
    for (n, events) in flood_events.iter().enumerate() {
        assert_eq!(events, reference, "bystander {n} saw other events");
    }
    // The talker heard nobody but was never disturbed either.
    assert_eq!(heard.listener.sequence_gaps, 0);
    // Memory stays flat: the flood is refused at the connection, not queued.
    let growth = memory_after.saturating_sub(memory_before);
    assert!(
        growth < 16 * 1024 * 1024,
        "resident memory grew by {} MiB during the flood",
        growth / 1048576
    );
    server.shutdown().await;
}
