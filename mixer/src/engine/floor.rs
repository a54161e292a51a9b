//! Push-to-talk floor control for one room.
//!
//! A walkie-talkie channel lets one person speak at a time: a participant asks for the floor,
//! speaks while holding it and gives it back. This module is that state machine, sans-IO like the
//! rest of the engine: requests, releases, departures, voice activity and time go in as calls,
//! and every change comes out as a [`FloorChange`] for the shell to announce to the room.
//!
//! Two policies:
//! - [`FloorPolicy::Open`]: no arbitration; every push-to-talk participant may talk while it
//!   holds its button, and a request is always granted (so clients can use one code path).
//! - [`FloorPolicy::Single`]: at most one holder. A request while someone else holds the floor is
//!   denied with the holder's id, unless it preempts (moderators). The floor is revoked when the
//!   holder has talked for [`FloorConfig::max_talk`], has sent no voice for
//!   [`FloorConfig::silence_timeout`], or leaves.
//!
//! The invariants (at most one holder in `Single`; the holder is always a present participant)
//! are checked by a property test over random sequences of calls.

use std::time::{Duration, Instant};

use super::ParticipantId;

/// How a room arbitrates push-to-talk (the protocol's type: `open` or `single`).
pub use mixer_protocol::FloorPolicy;

/// Floor-control settings of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloorConfig {
    /// The arbitration policy.
    pub policy: FloorPolicy,
    /// Longest a holder keeps the floor in one go (a stuck button cannot block the channel).
    pub max_talk: Duration,
    /// A holder who sends no voice for this long loses the floor (walked away, button held).
    pub silence_timeout: Duration,
}

impl Default for FloorConfig {
    /// Open policy; in single mode 60 s per turn and 5 s of silence, as walkie-talkie apps do.
    fn default() -> Self {
        FloorConfig {
            policy: FloorPolicy::Open,
            max_talk: Duration::from_secs(60),
            silence_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a holder lost the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorEnd {
    /// It released the floor.
    Released,
    /// It reached the maximum talk time.
    MaxTalkTime,
    /// It sent no voice for the silence timeout.
    Silence,
    /// It left the room (or stopped being allowed to talk).
    Left,
    /// Another participant (a moderator) took the floor.
    Preempted {
        /// Who took it.
        by: ParticipantId,
    },
}

/// A change of floor state the room must hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorChange {
    /// `to` holds the floor now, until `deadline` at the latest.
    Granted {
        /// The new holder.
        to: ParticipantId,
        /// When the floor is revoked for talk time, if it is still held.
        deadline: Instant,
    },
    /// `from` no longer holds the floor.
    Ended {
        /// The former holder.
        from: ParticipantId,
        /// Why.
        reason: FloorEnd,
    },
}

/// The answer to a floor request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorReply {
    /// Granted (or, under the open policy, nothing to arbitrate). In single mode the changes to
    /// announce are in `changes` (a preempted holder's end, then the grant).
    Granted {
        /// Revoked for talk time at the latest at this instant (single mode).
        deadline: Option<Instant>,
    },
    /// Someone else holds the floor.
    Denied {
        /// The current holder.
        holder: ParticipantId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holder {
    id: ParticipantId,
    granted_at: Instant,
    last_voice: Instant,
}

/// One room's floor.
#[derive(Debug, Clone)]
pub struct Floor {
    config: FloorConfig,
    holder: Option<Holder>,
}

impl Floor {
    /// A free floor.
    pub fn new(config: FloorConfig) -> Floor {
        Floor {
            config,
            holder: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &FloorConfig {
        &self.config
    }

    /// The current holder (single policy only; the open policy has none).
    pub fn holder(&self) -> Option<ParticipantId> {
        self.holder.map(|h| h.id)
    }

    /// Whether a push-to-talk participant's audio may be mixed now.
    pub fn may_talk(&self, id: ParticipantId) -> bool {
        match self.config.policy {
            FloorPolicy::Open => true,
            FloorPolicy::Single => self.holder() == Some(id),
        }
    }

    /// `id` asks for the floor at `now`; `preempt` lets it take the floor from another holder
    /// (for moderators). Changes to announce are appended to `changes`.
    pub fn request(
        &mut self,
        id: ParticipantId,
        preempt: bool,
        now: Instant,
        changes: &mut Vec<FloorChange>,
    ) -> FloorReply {
        if self.config.policy == FloorPolicy::Open {
            return FloorReply::Granted { deadline: None };
        }
        if let Some(holder) = self.holder {
            if holder.id == id {
                // Asking again while holding: the turn goes on, nothing changes.
                return FloorReply::Granted {
                    deadline: Some(holder.granted_at + self.config.max_talk),
                };
            }
            if !preempt {
                return FloorReply::Denied { holder: holder.id };
            }
            changes.push(FloorChange::Ended {
                from: holder.id,
                reason: FloorEnd::Preempted { by: id },
            });
        }
        let deadline = now + self.config.max_talk;
        self.holder = Some(Holder {
            id,
            granted_at: now,
            last_voice: now,
        });
        changes.push(FloorChange::Granted { to: id, deadline });
        FloorReply::Granted {
            deadline: Some(deadline),
        }
    }

    /// `id` gives the floor back; returns the change if it held it.
    pub fn release(&mut self, id: ParticipantId) -> Option<FloorChange> {
        self.end_if_holder(id, FloorEnd::Released)
    }

    /// `id` left the room or may no longer talk; the floor is freed if it held it.
    pub fn left(&mut self, id: ParticipantId) -> Option<FloorChange> {
        self.end_if_holder(id, FloorEnd::Left)
    }

    /// The holder `id` was heard talking at `now` (keeps the silence timeout from firing).
    pub fn voice(&mut self, id: ParticipantId, now: Instant) {
        if let Some(holder) = self.holder.as_mut().filter(|h| h.id == id) {
            holder.last_voice = holder.last_voice.max(now);
        }
    }

    /// Revokes the floor if its holder ran out of talk time or went silent.
    pub fn poll(&mut self, now: Instant) -> Option<FloorChange> {
        let holder = self.holder?;
        let reason = if now >= holder.granted_at + self.config.max_talk {
            FloorEnd::MaxTalkTime
        } else if now >= holder.last_voice + self.config.silence_timeout {
            FloorEnd::Silence
        } else {
            return None;
        };
        self.end_if_holder(holder.id, reason)
    }

    /// When [`Floor::poll`] may next revoke the floor, if someone holds it.
    pub fn deadline(&self) -> Option<Instant> {
        self.holder.map(|h| {
            (h.granted_at + self.config.max_talk).min(h.last_voice + self.config.silence_timeout)
        })
    }

    /// Changes the policy or timings. Switching to the open policy frees the floor.
    pub fn reconfigure(&mut self, config: FloorConfig) -> Option<FloorChange> {
        self.config = config;
        match (config.policy, self.holder) {
            (FloorPolicy::Open, Some(holder)) => self.end_if_holder(holder.id, FloorEnd::Released),
            _ => None,
        }
    }

    fn end_if_holder(&mut self, id: ParticipantId, reason: FloorEnd) -> Option<FloorChange> {
        let holder = self.holder.filter(|h| h.id == id)?;
        self.holder = None;
        Some(FloorChange::Ended {
            from: holder.id,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single() -> Floor {
        Floor::new(FloorConfig {
            policy: FloorPolicy::Single,
            max_talk: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(2),
        })
    }

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);

    #[test]
    fn one_holder_at_a_time_and_denials_name_the_holder() {
        let t0 = Instant::now();
        let mut floor = single();
        let mut changes = Vec::new();
        assert!(matches!(
            floor.request(A, false, t0, &mut changes),
            FloorReply::Granted { .. }
        ));
        assert_eq!(
            floor.request(B, false, t0, &mut changes),
            FloorReply::Denied { holder: A }
        );
        assert!(floor.may_talk(A) && !floor.may_talk(B));
        assert_eq!(
            floor.release(A),
            Some(FloorChange::Ended {
                from: A,
                reason: FloorEnd::Released
            })
        );
        assert_eq!(floor.release(A), None, "releasing twice changes nothing");
        assert!(matches!(
            floor.request(B, false, t0, &mut changes),
            FloorReply::Granted { .. }
        ));
        assert_eq!(floor.holder(), Some(B));
    }

    #[test]
    fn a_moderator_preempts_and_the_old_holder_hears_why() {
        let t0 = Instant::now();
        let mut floor = single();
        let mut changes = Vec::new();
        floor.request(A, false, t0, &mut changes);
        changes.clear();
        floor.request(B, true, t0, &mut changes);
        assert_eq!(
            changes,
            vec![
                FloorChange::Ended {
                    from: A,
                    reason: FloorEnd::Preempted { by: B }
                },
                FloorChange::Granted {
                    to: B,
                    deadline: t0 + Duration::from_secs(10)
                },
            ]
        );
    }

    #[test]
    fn the_floor_is_revoked_for_talk_time_and_for_silence() {
        let t0 = Instant::now();
        let mut floor = single();
        let mut changes = Vec::new();
        floor.request(A, false, t0, &mut changes);
        // Talking keeps it until the talk-time limit.
        for s in 1..10 {
            let now = t0 + Duration::from_secs(s);
            floor.voice(A, now);
            assert_eq!(floor.poll(now), None);
        }
        assert_eq!(
            floor.poll(t0 + Duration::from_secs(10)),
            Some(FloorChange::Ended {
                from: A,
                reason: FloorEnd::MaxTalkTime
            })
        );
        floor.request(B, false, t0 + Duration::from_secs(11), &mut changes);
        assert_eq!(floor.deadline(), Some(t0 + Duration::from_secs(13)));
        assert_eq!(floor.poll(t0 + Duration::from_millis(12_900)), None);
        assert_eq!(
            floor.poll(t0 + Duration::from_secs(13)),
            Some(FloorChange::Ended {
                from: B,
                reason: FloorEnd::Silence
            })
        );
        assert_eq!(floor.holder(), None);
    }

    #[test]
    fn the_open_policy_grants_everyone_and_tracks_no_holder() {
        let t0 = Instant::now();
        let mut floor = Floor::new(FloorConfig::default());
        let mut changes = Vec::new();
        for id in [A, B] {
            assert_eq!(
                floor.request(id, false, t0, &mut changes),
                FloorReply::Granted { deadline: None }
            );
            assert!(floor.may_talk(id));
        }
        assert!(changes.is_empty());
        assert_eq!(floor.holder(), None);
    }

    #[test]
    fn a_departing_holder_frees_the_floor() {
        let t0 = Instant::now();
        let mut floor = single();
        floor.request(A, false, t0, &mut Vec::new());
        assert_eq!(floor.left(B), None);
        assert_eq!(
            floor.left(A),
            Some(FloorChange::Ended {
                from: A,
                reason: FloorEnd::Left
            })
        );
    }
}
