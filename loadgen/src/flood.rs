//! Misbehaving clients (`--flooders`): each joins a room as a speaker and sends every kind of
//! control message, as fast as its connection takes them or at `--flood-rate` messages a
//! second, for the whole run; when the server cuts it off, it connects again and goes on. They
//! are not counted as clients and not verified: the point is what the *other* clients measure
//! while they flood (loss, receive rate, verification, disconnects), which the gates judge as
//! usual.

use std::collections::BTreeMap;

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{
    ClientMessage, Mode, Role, RoomSettings, ServerMessage, parse_server_message,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::{Connector, Ws};

/// What the flooders did, summed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    /// Flooding clients.
    pub clients: usize,
    /// Control messages they sent.
    pub sent: u64,
    /// Messages sent per second, all flooders together.
    pub per_second: f64,
    /// What the server answered: message type (errors as `error:<code>`) → count.
    pub replies: BTreeMap<String, u64>,
    /// Connections the server ended during the flood, by reason (close code) → count; each was
    /// followed by a reconnect.
    pub disconnects: BTreeMap<String, u64>,
}

impl FloodReport {
    /// Adds one flooder's outcome.
    pub fn add(&mut self, outcome: FloodOutcome) {
        self.clients += 1;
        self.sent += outcome.sent;
        for (reply, count) in outcome.replies {
            *self.replies.entry(reply).or_default() += count;
        }
        for (reason, count) in outcome.disconnects {
            *self.disconnects.entry(reason).or_default() += count;
        }
    }
}

/// One flooder's outcome.
#[derive(Debug, Clone, Default)]
pub struct FloodOutcome {
    /// Control messages sent.
    pub sent: u64,
    /// Replies by type.
    pub replies: BTreeMap<String, u64>,
    /// Why connections ended early → how often.
    pub disconnects: BTreeMap<String, u64>,
}

/// One round of every control message, valid or not, that a client joined to `room` as `name`
/// with `role` can send; requests about someone else name `other`. It ends with `leave` and
/// `join`, so the flooder keeps coming back as a new participant.
pub fn cycle(n: u64, room: &str, name: &str, role: Role, other: u32) -> Vec<Message> {
    let text = |m: ClientMessage| Message::text(m.to_json());
    vec![
        text(ClientMessage::SetMode { mode: Mode::Listen }),
        text(ClientMessage::SetMode { mode: Mode::Talk }),
        text(ClientMessage::SetMode { mode: Mode::Talk }),
        text(ClientMessage::Mute {
            participant_id: None,
            muted: true,
        }),
        text(ClientMessage::Mute {
            participant_id: None,
            muted: false,
        }),
        text(ClientMessage::Mute {
            participant_id: Some(other),
            muted: true,
        }),
        text(ClientMessage::MuteRoom { muted: true }),
        text(ClientMessage::FloorRequest { preempt: true }),
        text(ClientMessage::FloorRelease),
        text(ClientMessage::Remove {
            participant_id: other,
        }),
        text(ClientMessage::SetGain {
            participant_id: other,
            gain_db: -20,
        }),
        text(ClientMessage::Chat {
            text: format!("flood {n}"),
        }),
        text(ClientMessage::ListRooms),
        text(ClientMessage::RoomInfo {
            room: room.to_owned(),
        }),
        text(ClientMessage::CreateRoom(RoomSettings {
            room: format!("{name}-{n}"),
            floor_policy: None,
            max_participants: None,
            max_talkers: None,
            normalise: None,
            max_talk_ms: None,
            frame_ms: None,
        })),
        text(ClientMessage::Ping { id: Some(n) }),
        Message::text("{not json"),
        Message::text(r#"{"type":"no_such_type"}"#),
        text(ClientMessage::Leave),
        Message::text(crate::client::join_json_as(room, name, Mode::Talk, role)),
    ]
}

/// The key a reply is counted under: its type, or `error:<code>`.
fn reply_key(text: &str) -> String {
    match parse_server_message(text) {
        Ok(ServerMessage::Error { code, .. }) => format!("error:{code}"),
        Ok(message) => message.type_name().to_owned(),
        Err(_) => "unparsable".into(),
    }
}

/// Floods `room` at `url` from `start_at` until `end`, at `per_second` messages a second (or as
/// fast as possible), connecting again whenever the server cuts it off.
pub async fn run_flooder(
    connector: Connector,
    url: String,
    room: String,
    name: String,
    per_second: Option<u32>,
    start_at: Instant,
    end: Instant,
) -> FloodOutcome {
    let mut outcome = FloodOutcome::default();
    tokio::time::sleep_until(start_at).await;
    let mut n = 0u64;
    while Instant::now() < end {
        let ended = match connector.websocket(&url, None).await {
            Ok((ws, _)) => {
                flood_once(ws, &room, &name, per_second, end, &mut n, &mut outcome).await
            }
            Err(error) => Some(format!("connect: {error}")),
        };
        if let Some(reason) = ended {
            *outcome.disconnects.entry(reason).or_default() += 1;
            // A cut-off attacker comes straight back; a little pause keeps a refused connect
            // from spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    outcome
}

/// One connection's flood; returns why the server ended it, if it did before `end`.
async fn flood_once(
    ws: Ws,
    room: &str,
    name: &str,
    per_second: Option<u32>,
    end: Instant,
    n: &mut u64,
    outcome: &mut FloodOutcome,
) -> Option<String> {
    let (mut sink, mut stream) = ws.split();
    // Replies are read (and counted) as fast as they come: a flooder that stopped reading
    // would be cut off as a slow consumer, which is the server's other defence.
    let reader = tokio::spawn(async move {
        let mut replies: BTreeMap<String, u64> = BTreeMap::new();
        let mut ended = None;
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    *replies.entry(reply_key(text.as_str())).or_default() += 1;
                }
                Ok(Message::Close(frame)) => {
                    ended = frame
                        .filter(|f| u16::from(f.code) != 1000)
                        .map(|f| format!("close {} {}", u16::from(f.code), f.reason.as_str()));
                    break;
                }
                Ok(_) => {}
                Err(error) => {
                    ended = Some(error.to_string());
                    break;
                }
            }
        }
        (replies, ended)
    });
    let started = Instant::now();
    let mut sent = 0u64;
    let join = Message::text(crate::client::join_json(room, name, Mode::Talk));
    let mut failed = sink.send(join).await.is_err();
    'flood: while !failed && Instant::now() < end {
        for message in cycle(*n, room, name, Role::Speaker, 1) {
            if let Some(rate) = per_second {
                let due =
                    started + std::time::Duration::from_secs_f64(sent as f64 / f64::from(rate));
                tokio::time::sleep_until(due).await;
                failed = sink.send(message).await.is_err();
            } else {
                failed = sink.feed(message).await.is_err();
            }
            if failed || Instant::now() >= end {
                break 'flood;
            }
            sent += 1;
        }
        failed |= sink.flush().await.is_err();
        *n += 1;
    }
    outcome.sent += sent;
    let _ = sink.close().await;
    let (replies, ended) = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    for (reply, count) in replies {
        *outcome.replies.entry(reply).or_default() += count;
    }
    if failed {
        Some(ended.unwrap_or_else(|| "send failed".into()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_holds_every_control_message_type_and_each_serialises() {
        let messages = cycle(7, "room", "flooder", Role::Speaker, 1);
        let types: std::collections::BTreeSet<String> = messages
            .iter()
            .filter_map(|m| {
                let text = m.to_text().ok()?;
                let value: serde_json::Value = serde_json::from_str(text).ok()?;
                Some(value.get("type")?.as_str()?.to_owned())
            })
            .collect();
        for expected in [
            "join",
            "leave",
            "set_mode",
            "mute",
            "mute_room",
            "floor_request",
            "floor_release",
            "remove",
            "set_gain",
            "chat",
            "list_rooms",
            "room_info",
            "create_room",
            "ping",
            "no_such_type",
        ] {
            assert!(
                types.contains(expected),
                "{expected} missing from {types:?}"
            );
        }
        assert_eq!(
            reply_key(r#"{"type":"error","code":"control_rate_limited","message":"x"}"#),
            "error:control_rate_limited"
        );
        assert_eq!(reply_key(r#"{"type":"pong","id":3}"#), "pong");
    }
}
