//! Connecting and joining a room: at a client's start, and again after its session broke
//! (a fleet moved its room, the node lost the room's lease, or the connection dropped).
//!
//! A join follows up to [`MAX_REDIRECTS`] `redirect`s in a row to the node that mixes the room.
//! A rejoin ([`rejoin`]) starts where the break points it (the `url` of a mid-session redirect,
//! with its resume token for a moved room; the next of the client's URLs after a drop) and
//! retries for at most [`REJOIN_WINDOW`]: every [`RETRY_EVERY`] at the same node while the fleet
//! cannot place the room yet (`fleet_unavailable` while Redis is down, and the like), at the next
//! URL when a node is unreachable or draining, without the token when the resume is refused. An
//! answer that no retry can change (a missing token, a ban) ends it at once.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mixer_protocol::{ErrorCode, ServerMessage, parse_server_message};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::client::{ClientPlan, join_message};
use crate::connect::{Connector, Ws};

/// Redirects a client follows in a row before it gives up (a misconfigured fleet must not
/// bounce it forever).
pub const MAX_REDIRECTS: u32 = 3;

/// How long a client tries to get back into its room after a break before it gives up and
/// counts as disconnected. Long enough for a fleet to notice a killed node (its leases lapse in
/// a few seconds) and for a Redis restart; short enough that a load test does not wait on a
/// client that will never be back.
pub const REJOIN_WINDOW: Duration = Duration::from_secs(15);

/// The pause between rejoin attempts (none before the first): often enough that the gap after a
/// recovery stays short, rarely enough that a few thousand clients waiting on one fleet do not
/// flood it.
pub const RETRY_EVERY: Duration = Duration::from_millis(250);

/// A connection that joined, and how it got there.
pub struct Joined {
    /// The connection (boxed: a connection is large, and this is one value per join).
    pub ws: Box<Ws>,
    /// The URL of the node it joined at.
    pub url: String,
    /// The server answered that it resumed the client as the same participant.
    pub resumed: bool,
    /// The token to resume as the same participant after a dropped connection.
    pub resume_token: Option<String>,
    /// Its participant id in the room (push-to-talk clients know their floor grants by it).
    pub participant_id: u32,
    /// A moderating client's view of the room at its join: the others' ids and names (empty
    /// for every other client, which has no use for it).
    pub others: Vec<(u32, String)>,
    /// Redirects followed on the way, over every attempt.
    pub redirects: u32,
    /// Connections tried (1 when the first one joined).
    pub attempts: u32,
}

/// Why one attempt to join failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttemptError {
    /// No WebSocket connection: refused, reset, or a failed TLS or WebSocket handshake.
    #[error("connect: {0}")]
    Connect(String),
    /// The server answered the `join` with an `error`.
    #[error("join rejected: {code}: {message}")]
    Refused {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The connection ended (or failed) before the server answered the `join`.
    #[error("{0}")]
    Lost(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// More than [`MAX_REDIRECTS`] redirects in a row; the last was to this URL.
    #[error("more than {MAX_REDIRECTS} redirects in a row (last to {0})")]
    RedirectLoop(String),
}

/// What a rejoin does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At once, at the same URL, as a fresh join: the resume token was refused.
    WithoutResume,
    /// At the same URL after [`RETRY_EVERY`]: the node is there but cannot take the join yet.
    Same,
    /// At the client's next URL after [`RETRY_EVERY`]: this node is gone or going.
    Next,
    /// Not at all: no retry changes this answer.
    GiveUp,
}

impl AttemptError {
    /// What to do after this failure; `resuming` tells whether the attempt carried a token.
    pub fn retry(&self, resuming: bool) -> Retry {
        match self {
            AttemptError::Refused { code, .. } => match code {
                ErrorCode::ResumeFailed => Retry::WithoutResume,
                // Failed resumes are limited per address; a fresh join is not.
                ErrorCode::RateLimited if resuming => Retry::WithoutResume,
                // Redis down or just back (fleet_unavailable), a mixer thread's queue full,
                // a join burst limited, or the old seat not yet given up by a server that has
                // not noticed our old connection died: each passes by itself.
                ErrorCode::FleetUnavailable
                | ErrorCode::ServerBusy
                | ErrorCode::RateLimited
                | ErrorCode::NameTaken
                | ErrorCode::Internal => Retry::Same,
                ErrorCode::Draining | ErrorCode::ShuttingDown | ErrorCode::ServerFull => {
                    Retry::Next
                }
                _ => Retry::GiveUp,
            },
            AttemptError::Connect(_)
            | AttemptError::Lost(_)
            | AttemptError::TimedOut(_)
            | AttemptError::RedirectLoop(_) => Retry::Next,
        }
    }
}

/// Creates a room with `settings` at `url` (which carries the token, if any) on a connection of
/// its own: done once the server answers `room_info`, or says the room exists (left from an
/// earlier run, still with the settings loadgen gave it).
///
/// # Errors
///
/// No connection, or any other answer than those two (the server's create limit, a token
/// that may not create rooms).
pub(crate) async fn create_room(
    connector: &Connector,
    url: &str,
    settings: mixer_protocol::RoomSettings,
) -> Result<(), AttemptError> {
    let (mut ws, _) = connector
        .websocket(url, None)
        .await
        .map_err(|e| AttemptError::Connect(e.to_string()))?;
    ws.send(Message::text(
        mixer_protocol::ClientMessage::CreateRoom(settings).to_json(),
    ))
    .await
    .map_err(|e| AttemptError::Lost(format!("sending create_room: {e}")))?;
    let answer = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
                Ok(ServerMessage::RoomInfo(_)) => break Ok(()),
                Ok(ServerMessage::Error {
                    code: ErrorCode::RoomExists,
                    ..
                }) => break Ok(()),
                Ok(ServerMessage::Error { code, message }) => {
                    break Err(AttemptError::Refused { code, message });
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(AttemptError::Lost(e.to_string())),
            None => break Err(AttemptError::Lost("connection closed".into())),
        }
    };
    let _ = ws.close(None).await;
    answer
}

/// Connects and joins at the plan's URL, following redirects: a client's first join. No retry:
/// a client that cannot join at the start is a failed join.
pub(crate) async fn connect_and_join(
    plan: &ClientPlan,
    connector: &Connector,
) -> Result<Joined, AttemptError> {
    follow(plan, connector, &plan.url, None, &mut 0).await
}

/// Gets a client whose session broke back into its room: starts at `url` (resuming with
/// `resume` if given), follows redirects, and retries as [`AttemptError::retry`] says until
/// `deadline`. Each attempt may take at most `attempt_timeout`.
///
/// # Errors
///
/// The last attempt's failure, when an answer ended it or the deadline passed.
pub(crate) async fn rejoin(
    plan: &ClientPlan,
    connector: &Connector,
    url: String,
    resume: Option<String>,
    attempt_timeout: Duration,
    deadline: Instant,
) -> Result<Joined, AttemptError> {
    let (mut url, mut resume) = (url, resume);
    let (mut redirects, mut attempts) = (0, 0);
    // A resume refused right after a cut may only have come before the server noticed the old
    // connection was gone (it suspends the seat when it does): the first refusal is tried again
    // after a pause, still resuming; a second joins afresh.
    let mut resume_refused = false;
    loop {
        attempts += 1;
        let timeout = attempt_timeout.min(deadline.saturating_duration_since(Instant::now()));
        let attempt = follow(plan, connector, &url, resume.clone(), &mut redirects);
        let error = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(joined)) => return Ok(Joined { attempts, ..joined }),
            Ok(Err(e)) => e,
            Err(_) => AttemptError::TimedOut(timeout),
        };
        let refused_resume = matches!(
            &error,
            AttemptError::Refused {
                code: ErrorCode::ResumeFailed,
                ..
            }
        );
        let pause = match error.retry(resume.is_some()) {
            Retry::GiveUp => return Err(error),
            Retry::WithoutResume if refused_resume && !resume_refused => {
                resume_refused = true;
                RETRY_EVERY
            }
            Retry::WithoutResume => {
                resume = None;
                Duration::ZERO
            }
            Retry::Same => RETRY_EVERY,
            Retry::Next => {
                url = next_url(plan, &url).to_owned();
                RETRY_EVERY
            }
        };
        if Instant::now() + pause >= deadline {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
    }
}

/// The URL of `plan.urls` after `url` (round-robin), or after the plan's own URL when `url` is
/// not one of them (a node a redirect named).
pub fn next_url<'a>(plan: &'a ClientPlan, url: &str) -> &'a str {
    let urls = &plan.urls;
    let Some(first) = urls.first() else {
        return &plan.url;
    };
    let at = urls
        .iter()
        .position(|u| u == url)
        .or_else(|| urls.iter().position(|u| *u == plan.url));
    match at {
        Some(at) => &urls[(at + 1) % urls.len()],
        None => first,
    }
}

/// One attempt: connects at `url` and joins, following redirects (counted in `redirects`, over
/// every attempt) to the node that mixes the room. The join it returns counts one attempt.
async fn follow(
    plan: &ClientPlan,
    connector: &Connector,
    url: &str,
    resume: Option<String>,
    redirects: &mut u32,
) -> Result<Joined, AttemptError> {
    let (mut url, mut resume) = (url.to_owned(), resume);
    for _ in 0..=MAX_REDIRECTS {
        match join_at(plan, connector, &url, resume.clone()).await? {
            Answer::Joined {
                ws,
                resumed,
                resume_token,
                participant_id,
                others,
            } => {
                return Ok(Joined {
                    ws,
                    url,
                    resumed,
                    resume_token,
                    participant_id,
                    others,
                    redirects: *redirects,
                    attempts: 1,
                });
            }
            Answer::Redirect { to, resume_token } => {
                *redirects += 1;
                url = to;
                // A token the redirect gives replaces ours; without one, ours still names the
                // participant wherever the room is now.
                if resume_token.is_some() {
                    resume = resume_token;
                }
            }
        }
    }
    Err(AttemptError::RedirectLoop(url))
}

/// What one connection's `join` came to.
enum Answer {
    /// Joined (boxed: a connection is large, and this is one value per join).
    Joined {
        /// The connection.
        ws: Box<Ws>,
        /// The server resumed the participant.
        resumed: bool,
        /// Its token for resuming after a dropped connection.
        resume_token: Option<String>,
        /// Its participant id.
        participant_id: u32,
        /// The others in the room, for a moderating client.
        others: Vec<(u32, String)>,
    },
    /// Sent elsewhere.
    Redirect {
        /// Where.
        to: String,
        /// To resume with there.
        resume_token: Option<String>,
    },
}

async fn join_at(
    plan: &ClientPlan,
    connector: &Connector,
    url: &str,
    resume: Option<String>,
) -> Result<Answer, AttemptError> {
    // tungstenite zero-fills the free part of its read buffer before every read; with the
    // 128 KiB default that memset, once per 20 ms frame per client, cost more than the read.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    // The client's own token goes with it to whichever node it is sent to.
    let url = match &plan.access_token {
        Some(token) => crate::auth::with_token(url, token),
        None => url.to_owned(),
    };
    let (mut ws, _) = connector
        .websocket(&url, Some(config))
        .await
        .map_err(|e| AttemptError::Connect(e.to_string()))?;
    ws.send(join_message(plan, resume))
        .await
        .map_err(|e| AttemptError::Lost(format!("sending join: {e}")))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match parse_server_message(text.as_str()) {
                Ok(ServerMessage::Joined {
                    resumed,
                    resume_token,
                    participant_id,
                    participants,
                    ..
                }) => {
                    let others = match plan.moderate {
                        Some(_) => participants.into_iter().map(|p| (p.id, p.name)).collect(),
                        None => Vec::new(),
                    };
                    return Ok(Answer::Joined {
                        ws: Box::new(ws),
                        resumed,
                        resume_token,
                        participant_id,
                        others,
                    });
                }
                Ok(ServerMessage::Redirect {
                    url, resume_token, ..
                }) => {
                    let _ = ws.close(None).await;
                    return Ok(Answer::Redirect {
                        to: url,
                        resume_token,
                    });
                }
                Ok(ServerMessage::Error { code, message }) => {
                    return Err(AttemptError::Refused { code, message });
                }
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(AttemptError::Lost(format!(
                    "closed during join: {}",
                    close_reason(frame.as_ref())
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(AttemptError::Lost(format!("during join: {e}"))),
            None => return Err(AttemptError::Lost("connection dropped during join".into())),
        }
    }
}

/// A close frame as a reason: `close 1008 removed`.
pub fn close_reason(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if f.reason.is_empty() => format!("close {}", u16::from(f.code)),
        Some(f) => format!("close {} {}", u16::from(f.code), f.reason.as_str()),
        None => "close without code".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn refused(code: ErrorCode) -> AttemptError {
        AttemptError::Refused {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn transient_refusals_retry_in_place_and_lost_nodes_move_on() {
        assert_eq!(
            refused(ErrorCode::FleetUnavailable).retry(false),
            Retry::Same
        );
        assert_eq!(refused(ErrorCode::NameTaken).retry(false), Retry::Same);
        assert_eq!(refused(ErrorCode::RateLimited).retry(false), Retry::Same);
        assert_eq!(
            refused(ErrorCode::RateLimited).retry(true),
            Retry::WithoutResume
        );
        assert_eq!(
            refused(ErrorCode::ResumeFailed).retry(true),
            Retry::WithoutResume
        );
        assert_eq!(refused(ErrorCode::Draining).retry(false), Retry::Next);
        assert_eq!(
            AttemptError::Connect("refused".into()).retry(true),
            Retry::Next
        );
        assert_eq!(
            AttemptError::TimedOut(Duration::from_secs(1)).retry(false),
            Retry::Next
        );
        assert_eq!(
            refused(ErrorCode::TokenRequired).retry(false),
            Retry::GiveUp
        );
        assert_eq!(refused(ErrorCode::Banned).retry(true), Retry::GiveUp);
    }

    #[test]
    fn the_next_url_goes_round_the_list_from_the_current_one() {
        let plan = ClientPlan {
            index: 0,
            room: 0,
            slot: 0,
            source: None,
            url: "ws://b/".into(),
            urls: Arc::new(vec!["ws://a/".into(), "ws://b/".into(), "ws://c/".into()]),
            access_token: None,
            room_name: "r".into(),
            start_at: Instant::now(),
            away: Vec::new(),
            leave_at: None,
            ptt: false,
            moderate: None,
            moderated: false,
            pcm_rate: None,
            record: false,
            stormed: false,
        };
        assert_eq!(next_url(&plan, "ws://a/"), "ws://b/");
        assert_eq!(next_url(&plan, "ws://c/"), "ws://a/");
        // A node only a redirect named: after the plan's own URL.
        assert_eq!(next_url(&plan, "ws://elsewhere/"), "ws://c/");
    }
}
