//! Room control requests (mode, mute, floor, moderation) and the room events they cause,
//! applied on the room's mixer thread.
//!
//! The engine knows nothing of roles or of who may ask what: this module checks permissions
//! (moderators may act on others), turns the engine's answers and events into protocol messages,
//! and decides who hears about them (the whole room, or only the asker).

use std::time::Instant;

use mixer_protocol::{
    ClientMessage, ErrorCode, FloorEndReason, FloorPolicy, Mode, Role, ServerMessage, close_code,
};
use tracing::{info, warn};

use super::metrics::{FLOOR_GRANTED, Metrics};
use super::outbox::Closed;
use super::room_fanout::RoomSlot;
use crate::engine::floor::{FloorChange, FloorEnd, FloorReply};
use crate::engine::{EngineError, MAX_GAIN_DB, ParticipantId};

/// A control request from a participant about its room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomRequest {
    /// A chat message for the room (already validated and rate-limited by the connection).
    Chat {
        /// The text.
        text: String,
        /// When the server received it, ms since the Unix epoch.
        ts_ms: u64,
    },
    /// Change the asker's mode.
    SetMode(Mode),
    /// Mute or unmute the asker, or (moderators) someone else.
    Mute {
        /// Whom; `None` = the asker.
        target: Option<ParticipantId>,
        /// Mute or unmute.
        muted: bool,
    },
    /// Moderators: mute or unmute everyone but the moderators.
    MuteRoom {
        /// Mute or unmute.
        muted: bool,
    },
    /// Ask for the push-to-talk floor; `preempt` (moderators) takes it from the holder.
    FloorRequest {
        /// Take the floor even if held.
        preempt: bool,
    },
    /// Give the floor back.
    FloorRelease,
    /// Moderators: remove a participant from the room.
    Remove {
        /// Whom.
        target: ParticipantId,
    },
    /// Moderators: set a participant's input gain.
    SetGain {
        /// Whose.
        target: ParticipantId,
        /// In dB.
        gain_db: i32,
    },
}

impl RoomRequest {
    /// The request a client's message makes, if it is a room request (`chat` stamped with
    /// `ts_ms`, already validated by whoever received it).
    pub fn from_client(message: ClientMessage, ts_ms: u64) -> Option<RoomRequest> {
        Some(match message {
            ClientMessage::SetMode { mode } => RoomRequest::SetMode(mode),
            ClientMessage::Mute {
                participant_id,
                muted,
            } => RoomRequest::Mute {
                target: participant_id.map(ParticipantId),
                muted,
            },
            ClientMessage::MuteRoom { muted } => RoomRequest::MuteRoom { muted },
            ClientMessage::FloorRequest { preempt } => RoomRequest::FloorRequest { preempt },
            ClientMessage::FloorRelease => RoomRequest::FloorRelease,
            ClientMessage::Remove { participant_id } => RoomRequest::Remove {
                target: ParticipantId(participant_id),
            },
            ClientMessage::SetGain {
                participant_id,
                gain_db,
            } => RoomRequest::SetGain {
                target: ParticipantId(participant_id),
                gain_db,
            },
            ClientMessage::Chat { text } => RoomRequest::Chat { text, ts_ms },
            _ => return None,
        })
    }

    /// The client message that makes this request (what an edge forwards to the room's owner).
    pub fn to_client(&self) -> ClientMessage {
        match self {
            RoomRequest::Chat { text, .. } => ClientMessage::Chat { text: text.clone() },
            RoomRequest::SetMode(mode) => ClientMessage::SetMode { mode: *mode },
            RoomRequest::Mute { target, muted } => ClientMessage::Mute {
                participant_id: target.map(|t| t.0),
                muted: *muted,
            },
            RoomRequest::MuteRoom { muted } => ClientMessage::MuteRoom { muted: *muted },
            RoomRequest::FloorRequest { preempt } => {
                ClientMessage::FloorRequest { preempt: *preempt }
            }
            RoomRequest::FloorRelease => ClientMessage::FloorRelease,
            RoomRequest::Remove { target } => ClientMessage::Remove {
                participant_id: target.0,
            },
            RoomRequest::SetGain { target, gain_db } => ClientMessage::SetGain {
                participant_id: target.0,
                gain_db: *gain_db,
            },
        }
    }
}

/// The time a chat message is stamped with: ms since the Unix epoch.
pub fn chat_timestamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a participant with `role` may use `mode` in a room with `policy`.
pub fn mode_allowed(role: Role, mode: Mode, policy: FloorPolicy) -> Result<(), String> {
    match (role, mode, policy) {
        (Role::Listener, Mode::Talk | Mode::Ptt, _) => Err(format!(
            "the listener role may not use {} mode; join as a speaker to talk",
            mode.as_str()
        )),
        (Role::Speaker, Mode::Talk, FloorPolicy::Single) => Err(
            "this room is push-to-talk with one speaker at a time: use ptt mode and \
             floor_request (open microphones are for moderators)"
                .to_owned(),
        ),
        _ => Ok(()),
    }
}

/// Tells `to` that a request named `target`, who is not in the room.
fn unknown_participant(
    slot: &RoomSlot,
    to: ParticipantId,
    target: ParticipantId,
    metrics: &Metrics,
) {
    slot.send_error(
        to,
        ErrorCode::UnknownParticipant,
        format!("participant {target} is not in this room"),
        metrics,
    );
}

/// What the mixer thread must do after a request: participants removed by a moderator, to be
/// taken out of the room like any other leave.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Participants to remove (reason `removed`).
    pub removed: Vec<ParticipantId>,
}

/// Applies `request` from `from`, answering it and telling the room.
pub(super) fn apply(
    slot: &mut RoomSlot,
    from: ParticipantId,
    request: RoomRequest,
    metrics: &Metrics,
    now: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(asker) = slot.members.get(&from) else {
        return outcome;
    };
    let moderator = asker.role == Role::Moderator;
    let forbidden = |slot: &RoomSlot, what: &str| {
        slot.send_error(
            from,
            ErrorCode::Forbidden,
            format!("{what} needs the moderator role"),
            metrics,
        );
    };
    match request {
        RoomRequest::Chat { text, ts_ms } => {
            slot.chats += 1;
            let message = ServerMessage::Chat {
                id: slot.chats,
                from: from.0,
                name: asker.name.clone(),
                text,
                ts_ms,
            };
            slot.broadcast_all(&message);
            metrics.chat_messages_total.inc();
        }
        RoomRequest::SetMode(mode) => {
            let policy = slot.engine.floor_config().policy;
            if let Err(message) = mode_allowed(asker.role, mode, policy) {
                return {
                    slot.send_error(from, ErrorCode::ModeNotAllowed, message, metrics);
                    outcome
                };
            }
            let Some(old) = slot.mode(from) else {
                return outcome;
            };
            if old == mode {
                // Nothing changes, so the room hears nothing; the asker gets its answer.
                slot.send_to(
                    from,
                    &ServerMessage::ModeChanged {
                        participant_id: from.0,
                        mode,
                    },
                );
                return outcome;
            }
            if let Err(error) = slot.engine.set_mode(from, mode) {
                warn!(participant = %from, %error, "mode change failed");
                slot.send_error(from, ErrorCode::Internal, error.to_string(), metrics);
                return outcome;
            }
            metrics
                .participants
                .with_label_values(&[old.as_str()])
                .dec();
            metrics
                .participants
                .with_label_values(&[mode.as_str()])
                .inc();
            slot.broadcast_all(&ServerMessage::ModeChanged {
                participant_id: from.0,
                mode,
            });
        }
        RoomRequest::Mute { target, muted } => {
            let target = target.unwrap_or(from);
            if target != from && !moderator {
                forbidden(slot, "muting someone else");
                return outcome;
            }
            let Some(member) = slot.members.get(&target) else {
                unknown_participant(slot, from, target, metrics);
                return outcome;
            };
            // Someone muted by a moderator stays muted until a moderator unmutes them.
            if !muted && target == from && !moderator && member.muted_by.is_some() {
                forbidden(slot, "unmuting after a moderator muted you");
                return outcome;
            }
            set_muted(slot, target, muted, (target != from).then_some(from));
        }
        RoomRequest::MuteRoom { muted } => {
            if !moderator {
                forbidden(slot, "mute_room");
                return outcome;
            }
            let mut targets: Vec<ParticipantId> = slot
                .members
                .iter()
                .filter(|(_, m)| m.role != Role::Moderator)
                .map(|(id, _)| *id)
                .collect();
            targets.sort_unstable();
            // One message for the room, naming those whose state changed, instead of one per
            // member (which was N messages to each of N members).
            targets.retain(|&target| mark_muted(slot, target, muted, Some(from)));
            let message = ServerMessage::RoomMuted {
                muted,
                by: from.0,
                participant_ids: targets.iter().map(|t| t.0).collect(),
            };
            // Nobody changed: only the moderator is answered.
            if targets.is_empty() {
                slot.send_to(from, &message);
            } else {
                slot.broadcast_all(&message);
            }
        }
        RoomRequest::FloorRequest { preempt } => {
            if preempt && !moderator {
                forbidden(slot, "preempting the floor");
                return outcome;
            }
            let holding = slot.engine.floor_holder() == Some(from);
            match slot.engine.request_floor(from, preempt, now) {
                Ok(FloorReply::Granted { deadline: None }) => {
                    // Open floor: nothing to arbitrate, only an acknowledgement to the asker.
                    slot.send_to(
                        from,
                        &ServerMessage::FloorGranted {
                            participant_id: from.0,
                            max_talk_ms: None,
                        },
                    );
                }
                // Asked again while holding: the turn goes on; only the asker hears it again.
                Ok(FloorReply::Granted { deadline: Some(_) }) if holding => {
                    let max_talk = slot.engine.floor_config().max_talk;
                    slot.send_to(
                        from,
                        &ServerMessage::FloorGranted {
                            participant_id: from.0,
                            max_talk_ms: Some(max_talk.as_millis() as u64),
                        },
                    );
                }
                // A new grant reaches everyone as a floor event.
                Ok(FloorReply::Granted { deadline: Some(_) }) => {}
                Ok(FloorReply::Denied { holder }) => {
                    slot.send_to(from, &ServerMessage::FloorDenied { holder: holder.0 });
                }
                Err(EngineError::NotPushToTalk(_)) => slot.send_error(
                    from,
                    ErrorCode::NotPtt,
                    "floor_request needs ptt mode; send set_mode first",
                    metrics,
                ),
                Err(error) => warn!(participant = %from, %error, "floor request failed"),
            }
        }
        RoomRequest::FloorRelease => {
            if slot.mode(from) != Some(Mode::Ptt) {
                slot.send_error(
                    from,
                    ErrorCode::NotPtt,
                    "floor_release needs ptt mode",
                    metrics,
                );
                return outcome;
            }
            // Releasing a floor one does not hold changes nothing and is not an error (the
            // floor may have been revoked a moment before).
            let _ = slot.engine.release_floor(from);
        }
        RoomRequest::Remove { target } => {
            if !moderator {
                forbidden(slot, "remove");
                return outcome;
            }
            let Some(member) = slot.members.get(&target) else {
                unknown_participant(slot, from, target, metrics);
                return outcome;
            };
            info!(participant = %target, by = %from, "removed by a moderator");
            slot.send_error(
                target,
                ErrorCode::Removed,
                format!("removed from the room by moderator {from}"),
                metrics,
            );
            member.outbox.close(Closed::Close {
                code: close_code::POLICY_VIOLATION,
                reason: "removed",
            });
            outcome.removed.push(target);
        }
        RoomRequest::SetGain { target, gain_db } => {
            if !moderator {
                forbidden(slot, "set_gain");
                return outcome;
            }
            match slot.engine.set_gain(target, gain_db as f32) {
                Ok(()) => slot.broadcast_all(&ServerMessage::GainChanged {
                    participant_id: target.0,
                    gain_db,
                    by: from.0,
                }),
                Err(EngineError::UnknownParticipant(_)) => {
                    unknown_participant(slot, from, target, metrics)
                }
                Err(_) => slot.send_error(
                    from,
                    ErrorCode::InvalidGain,
                    format!("gain {gain_db} dB is outside -{MAX_GAIN_DB}..={MAX_GAIN_DB} dB"),
                    metrics,
                ),
            }
        }
    }
    outcome
}

/// Mutes or unmutes `target` and tells the room; nothing is said if nothing changed.
/// The participant id that stands for the server's operator in `by` fields (the admin API):
/// participant ids start at 1.
pub const OPERATOR: ParticipantId = ParticipantId(0);

/// The operator (the admin API) mutes or unmutes `target`; the room hears it with `by` 0, and
/// only a moderator or the operator may unmute it.
pub(super) fn operator_mute(slot: &mut RoomSlot, target: ParticipantId, muted: bool) {
    set_muted(slot, target, muted, Some(OPERATOR));
}

fn set_muted(slot: &mut RoomSlot, target: ParticipantId, muted: bool, by: Option<ParticipantId>) {
    if mark_muted(slot, target, muted, by) {
        slot.broadcast_all(&ServerMessage::ParticipantMuted {
            participant_id: target.0,
            muted,
            by: by.map(|b| b.0),
        });
    }
}

/// Mutes or unmutes `target` in the engine and records who did; returns whether its state
/// changed.
fn mark_muted(
    slot: &mut RoomSlot,
    target: ParticipantId,
    muted: bool,
    by: Option<ParticipantId>,
) -> bool {
    if !slot.engine.set_muted(target, muted).unwrap_or(false) {
        return false;
    }
    if let Some(member) = slot.members.get_mut(&target) {
        member.muted_by = if muted { by } else { None };
    }
    true
}

/// The message that tells the room about a floor change (and counts it).
pub(super) fn floor_message(
    slot: &RoomSlot,
    change: FloorChange,
    metrics: &Metrics,
) -> ServerMessage {
    match change {
        FloorChange::Granted { to, .. } => {
            metrics
                .floor_events_total
                .with_label_values(&[FLOOR_GRANTED])
                .inc();
            ServerMessage::FloorGranted {
                participant_id: to.0,
                max_talk_ms: Some(slot.engine.floor_config().max_talk.as_millis() as u64),
            }
        }
        FloorChange::Ended { from, reason } => {
            let (reason, by) = match reason {
                FloorEnd::Released => (FloorEndReason::Released, None),
                FloorEnd::MaxTalkTime => (FloorEndReason::MaxTalkTime, None),
                FloorEnd::Silence => (FloorEndReason::Silence, None),
                FloorEnd::Left => (FloorEndReason::Left, None),
                FloorEnd::Preempted { by } => (FloorEndReason::Preempted, Some(by.0)),
            };
            metrics
                .floor_events_total
                .with_label_values(&[reason.as_str()])
                .inc();
            ServerMessage::FloorReleased {
                participant_id: from.0,
                reason,
                by,
            }
        }
    }
}
