//! The admin API: JSON over HTTP on the main port, for operators, authenticated with an access
//! token that has the `admin` claim (`Authorization: Bearer ...`). Served only when the server
//! has a key (`--auth-key-file`); over TLS when the port has it.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/admin/rooms` | every room, its settings and members |
//! | GET | `/admin/rooms/{room}` | one room |
//! | POST | `/admin/rooms/{room}/participants/{id}/mute` | mute (the room hears `by` 0) |
//! | POST | `/admin/rooms/{room}/participants/{id}/unmute` | unmute |
//! | POST | `/admin/rooms/{room}/participants/{id}/remove` | remove, banned while the room exists |
//! | POST | `/admin/rooms/{room}/close` | disconnect everyone in the room |
//! | POST | `/admin/rooms/{room}/record/start` | record the room's mix (`--record-dir`): `{"room","file","already"}` |
//! | POST | `/admin/rooms/{room}/record/stop` | stop recording: `{"room","file"}` |
//! | POST | `/admin/drain` | take no new rooms; `/healthz` answers 503 `draining` |
//! | POST | `/admin/undrain` | take new rooms again |
//!
//! Requests have no body. Answers are JSON: the data asked for, `{"ok":true}`, or
//! `{"error":"...","message":"..."}` with a 4xx status.

use std::sync::Arc;

use mixer_protocol::ErrorCode;
use serde::Serialize;
use tokio::io::AsyncWrite;
use tracing::info;

use super::connection::Context;
use super::http;
use super::pool::AdminRefused;

/// An answer: status line and JSON body.
struct Reply {
    status: &'static str,
    body: String,
}

impl Reply {
    fn json(value: &impl Serialize) -> Reply {
        Reply {
            status: "200 OK",
            body: serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    fn ok() -> Reply {
        Reply::json(&serde_json::json!({ "ok": true }))
    }

    fn error(status: &'static str, error: &str, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: serde_json::json!({ "error": error, "message": message.into() }).to_string(),
        }
    }
}

impl From<AdminRefused> for Reply {
    fn from(refused: AdminRefused) -> Reply {
        match refused {
            AdminRefused::UnknownRoom(_) => {
                Reply::error("404 Not Found", "unknown_room", refused.to_string())
            }
            AdminRefused::UnknownParticipant { .. } => {
                Reply::error("404 Not Found", "unknown_participant", refused.to_string())
            }
            AdminRefused::ShuttingDown => Reply::error(
                "503 Service Unavailable",
                "shutting_down",
                refused.to_string(),
            ),
        }
    }
}

/// Answers one admin request whose head is `head`, then the connection closes.
pub async fn serve<S: AsyncWrite + Unpin>(stream: &mut S, head: &[u8], context: &Arc<Context>) {
    let reply = handle(head, context).await;
    let code = reply.status.split(' ').next().unwrap_or("500");
    context
        .metrics
        .admin_requests_total
        .with_label_values(&[code])
        .inc();
    let _ = http::respond_with(stream, reply.status, "application/json", &reply.body).await;
}

async fn handle(head: &[u8], context: &Arc<Context>) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(head).is_err() {
        return Reply::error("400 Bad Request", "bad_request", "unparseable request");
    }
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Reply::error("400 Bad Request", "bad_request", "unparseable request");
    };
    let Some(verifier) = &context.auth else {
        return Reply::error(
            "404 Not Found",
            "admin_disabled",
            "the admin API needs a server key (--auth-key-file) and an admin token",
        );
    };
    let Some(token) = http::bearer(request.headers) else {
        return Reply::error(
            "401 Unauthorized",
            "token_required",
            "send an admin token as Authorization: Bearer <token>",
        );
    };
    let grant = match verifier.verify(&token) {
        Ok(grant) => grant,
        Err(error) => {
            return Reply::error("401 Unauthorized", error.code().as_str(), error.to_string());
        }
    };
    if !grant.admin {
        return Reply::error(
            "403 Forbidden",
            "token_insufficient",
            "the token does not grant the admin API (claim \"admin\": true)",
        );
    }
    let path = target.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path
        .trim_start_matches("/admin/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let pool = &context.pool;
    match (method, segments.as_slice()) {
        ("GET", ["rooms"]) => Reply::json(&serde_json::json!({
            "draining": pool.is_draining(),
            "rooms": pool.rooms_with_members(),
        })),
        ("GET", ["rooms", room]) => match pool.room_with_members(room) {
            Some(record) => Reply::json(&record),
            None => Reply::from(AdminRefused::UnknownRoom((*room).to_owned())),
        },
        ("POST", ["rooms", room, "participants", id, action]) => {
            let Ok(id) = id.parse::<u32>() else {
                return Reply::error(
                    "400 Bad Request",
                    "bad_request",
                    format!("participant id {id:?} is not a number"),
                );
            };
            let done = match *action {
                "mute" => pool.operator_mute(room, id, true),
                "unmute" => pool.operator_mute(room, id, false),
                "remove" => pool.operator_remove(room, id),
                _ => return not_found(path),
            };
            match done {
                Ok(()) => {
                    info!(identity = %grant.identity, %room, participant = id, action, "admin action");
                    Reply::ok()
                }
                Err(refused) => refused.into(),
            }
        }
        ("POST", ["rooms", room, "close"]) => match pool.operator_close(room) {
            Ok(()) => {
                info!(identity = %grant.identity, %room, "admin closed a room");
                Reply::ok()
            }
            Err(refused) => refused.into(),
        },
        ("POST", ["rooms", room, "record", "start"]) => {
            match context.recorders.start(room, None, context).await {
                Ok(recording) => {
                    info!(identity = %grant.identity, %room, file = %recording.file, "admin started a recording");
                    Reply::json(&recording)
                }
                Err(error) => {
                    let (status, code) = match error.code() {
                        ErrorCode::UnknownRoom => ("404 Not Found", "unknown_room"),
                        _ => ("409 Conflict", "recording_unavailable"),
                    };
                    Reply::error(status, code, error.to_string())
                }
            }
        }
        ("POST", ["rooms", room, "record", "stop"]) => match context.recorders.stop(room, None) {
            Some(file) => {
                info!(identity = %grant.identity, %room, %file, "admin stopped a recording");
                Reply::json(&serde_json::json!({ "room": room, "file": file }))
            }
            None => Reply::error(
                "409 Conflict",
                "recording_unavailable",
                format!("room {room:?} is not being recorded"),
            ),
        },
        ("POST", ["drain"]) => {
            pool.set_draining(true);
            Reply::json(&serde_json::json!({ "draining": true }))
        }
        ("POST", ["undrain"]) => {
            pool.set_draining(false);
            Reply::json(&serde_json::json!({ "draining": false }))
        }
        (
            _,
            ["rooms"]
            | ["rooms", _]
            | ["rooms", _, "close"]
            | ["rooms", _, "record", "start" | "stop"]
            | ["rooms", _, "participants", _, _]
            | ["drain"]
            | ["undrain"],
        ) => Reply::error(
            "405 Method Not Allowed",
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        ),
        _ => not_found(path),
    }
}

fn not_found(path: &str) -> Reply {
    Reply::error(
        "404 Not Found",
        "not_found",
        format!("no admin route {path:?}"),
    )
}
