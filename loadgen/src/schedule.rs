//! When each client is in its room: the group's stages give the number of clients over time,
//! and churn takes clients out for a while during the holds.
//!
//! Clients join in index order and leave in reverse (the last to join leaves first), so the
//! number in the rooms follows the stages: client `i` is in while the target exceeds `i`. A
//! ramp up from `a` to `b` over `T` lets client `a + k` in at `k·T/(b−a)` into the stage (the
//! first at once, as a run from flags always did); a ramp down lets client `a − 1 − k` out at
//! `(k+1)·T/(a−b)`. A client that a ramp down took out and a later ramp up brings back is away
//! in between, as a churned client is, and joins again as a new participant.
//!
//! Everything here is pure and seeded: a scenario and a seed give the same schedule on every
//! machine, which `--shard` relies on (each shard runs its rooms' share of one schedule).

use std::time::Duration;

use crate::config::{Churn, Stage};
use crate::rng::Rng;

/// How close (either side) two stretches away of one client may come; a churn event that
/// would come closer is skipped.
const AWAY_SPACING: Duration = Duration::from_millis(500);

/// One client's time in its room, counted from the start of the run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Presence {
    /// When it first joins.
    pub join: Duration,
    /// Stretches it spends out of the room, in order: it leaves at the first instant and joins
    /// again (afresh) at the second.
    pub away: Vec<(Duration, Duration)>,
    /// When it leaves for good; `None`: it stays to the end of the run.
    pub leave: Option<Duration>,
}

/// Each of `clients` clients' presence under `stages`, then churned; `None` for a client the
/// stages never let in (only when the peak is below `clients`).
pub fn presences(
    stages: &[Stage],
    clients: usize,
    churn: Option<Churn>,
    seed: u64,
) -> Vec<Option<Presence>> {
    let mut out: Vec<Option<Presence>> = vec![None; clients];
    // A client taken out by a ramp down, waiting for a ramp up (or the end): when it left.
    let mut left: Vec<Option<Duration>> = vec![None; clients];
    let mut start = Duration::ZERO;
    let mut level = 0usize;
    for stage in stages {
        let to = stage.to.min(clients);
        if to > level {
            let step = stage.over.div_f64((to - level) as f64);
            for (k, i) in (level..to).enumerate() {
                let at = start + step.mul_f64(k as f64);
                match (&mut out[i], left[i].take()) {
                    (None, _) => {
                        out[i] = Some(Presence {
                            join: at,
                            ..Presence::default()
                        })
                    }
                    (Some(presence), Some(gone)) => presence.away.push((gone, at)),
                    (Some(_), None) => {}
                }
            }
        } else if to < level {
            let step = stage.over.div_f64((level - to) as f64);
            for (k, i) in (to..level).rev().enumerate() {
                left[i] = Some(start + step.mul_f64((k + 1) as f64));
            }
        }
        level = to;
        start += stage.over;
    }
    for (presence, gone) in out.iter_mut().zip(left) {
        if let Some(presence) = presence {
            presence.leave = gone;
        }
    }
    if let Some(churn) = churn {
        add_churn(&mut out, stages, churn, seed);
    }
    out
}

/// Churn during each hold (a stage that keeps a non-zero level): leaves come at exponentially
/// distributed intervals, `churn.per_second` on average, each taking a client (drawn at
/// random among those the hold keeps in) out for `churn.away`. A leave whose stretch would not
/// end inside the hold, or would come within [`AWAY_SPACING`] of another of that client's, is
/// skipped.
fn add_churn(out: &mut [Option<Presence>], stages: &[Stage], churn: Churn, seed: u64) {
    let mut rng = Rng::new(seed, u64::MAX - 1);
    let mut start = Duration::ZERO;
    let mut level = 0usize;
    for stage in stages {
        let end = start + stage.over;
        let held = stage.to.min(out.len());
        if held == level && held > 0 {
            let mut at = start;
            loop {
                at += Duration::from_secs_f64(rng.exponential(1.0 / churn.per_second));
                let back = at + churn.away;
                if back >= end {
                    break;
                }
                let client = (rng.next_u64() % held as u64) as usize;
                let Some(presence) = out[client].as_mut() else {
                    continue;
                };
                let clear = presence.join + AWAY_SPACING <= at
                    && presence
                        .away
                        .iter()
                        .all(|&(from, to)| back + AWAY_SPACING <= from || to + AWAY_SPACING <= at);
                if clear {
                    presence.away.push((at, back));
                    presence.away.sort();
                }
            }
        }
        level = held;
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn stage(to: usize, over: f64) -> Stage {
        Stage {
            to,
            over: secs(over),
        }
    }

    /// The number of clients in at `t` under `presences`.
    fn count_at(presences: &[Option<Presence>], t: Duration) -> usize {
        presences
            .iter()
            .flatten()
            .filter(|p| {
                p.join <= t
                    && p.leave.is_none_or(|leave| t < leave)
                    && !p.away.iter().any(|&(from, to)| from <= t && t < to)
            })
            .count()
    }

    #[test]
    fn the_flags_ramp_joins_clients_at_the_rate_and_keeps_them_to_the_end() {
        // 10 clients at 5 a second: one every 200 ms from 0, as before stages existed.
        let stages = crate::config::Scenario::flag_stages(10, 5.0, secs(3.0));
        let presences = presences(&stages, 10, None, 1);
        for (i, p) in presences.iter().enumerate() {
            let p = p.as_ref().expect("every client joins");
            assert_eq!(p.join, secs(0.2 * i as f64));
            assert_eq!((p.away.len(), p.leave), (0, None));
        }
    }

    #[test]
    fn the_number_in_the_rooms_follows_the_stages_up_hold_down_and_up_again() {
        let stages = [
            stage(40, 4.0),
            stage(40, 2.0),
            stage(10, 3.0),
            stage(40, 3.0),
            stage(0, 2.0),
        ];
        let presences = presences(&stages, 40, None, 1);
        for (t, expected) in [
            (1.01, 11),
            (3.99, 40),
            (5.5, 40),
            (7.5, 25),
            (9.0, 10),
            (10.5, 25),
            (11.99, 40),
            (13.0, 20),
        ] {
            let n = count_at(&presences, secs(t));
            assert!(
                n.abs_diff(expected) <= 1,
                "at {t} s: {n} in, expected {expected}"
            );
        }
        // Last in, first out: client 39 went out first and came back; client 0 stayed till
        // the last ramp down.
        let last = presences[39].as_ref().expect("joined");
        assert_eq!(last.away.len(), 1);
        assert!((last.away[0].0.as_secs_f64() - 6.1).abs() < 1e-9);
        let first = presences[0].as_ref().expect("joined");
        assert!(first.away.is_empty());
        assert_eq!(first.leave, Some(secs(14.0)));
    }

    #[test]
    fn the_target_follows_the_stages_as_the_presences_do() {
        let mut scenario = crate::config::Args::parse_from(["loadgen"])
            .to_scenario()
            .expect("valid");
        scenario.stages = vec![stage(40, 4.0), stage(40, 2.0), stage(10, 3.0)];
        for (t, expected) in [
            (0.0, 0.0),
            (1.0, 10.0),
            (5.0, 40.0),
            (7.5, 25.0),
            (9.5, 0.0),
        ] {
            assert!((scenario.target_at(t) - expected).abs() < 1e-9, "at {t} s");
        }
    }

    #[test]
    fn churn_takes_clients_out_at_its_rate_only_during_holds_and_is_repeatable() {
        let stages = [stage(20, 2.0), stage(20, 60.0), stage(0, 2.0)];
        let churn = Churn {
            per_second: 2.0,
            away: secs(1.0),
        };
        let churned = presences(&stages, 20, Some(churn), 9);
        let aways: Vec<(Duration, Duration)> = churned
            .iter()
            .flatten()
            .flat_map(|p| p.away.clone())
            .collect();
        // About 120 leaves in a minute, fewer the few that would overlap.
        assert!((80..=140).contains(&aways.len()), "{} leaves", aways.len());
        assert!(
            aways.iter().all(|&(from, to)| {
                from >= secs(2.0) && to < secs(62.0) && to - from == secs(1.0)
            })
        );
        // At most the clients away at once that the rate implies, never the room emptied.
        let least = (0..600)
            .map(|k| count_at(&churned, secs(2.0 + 0.1 * k as f64)))
            .min()
            .unwrap_or(0);
        assert!(least >= 12, "as few as {least} of 20 in at once");
        assert_eq!(churned, presences(&stages, 20, Some(churn), 9));
        assert_ne!(churned, presences(&stages, 20, Some(churn), 10));
    }
}
