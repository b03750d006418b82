//! The plain JSON WebSocket at `/ws` (contract §3.2).
//!
//! One text frame per message: `{"event": "subscribe", "data": {…}, "ack": 7}`
//! from the client; events as `{"event", "data", "offset"}` and answers as
//! `{"event": "ack", "ack": 7, "data": {…}}` from the server.
//!
//! The token comes from `Authorization: Bearer` or, for browsers, which
//! cannot set headers on an upgrade, `?token=`; it is checked before the
//! upgrade, so a bad one is a plain 401 and costs no socket. The request's
//! query never reaches a log (the server's trace span records the path
//! only). A handshake resume rides in the query too: `?offset=` (or
//! `?lastEventId=`) and `?epoch=`, replayed before any live event.
//!
//! Buffers are set explicitly — a few KiB per idle connection — and a
//! message larger than `max_message_bytes` closes the socket with 1009
//! (Message Too Big). The WebSocket layer itself takes messages up to
//! [`hard_cap`], a few times the limit, and the size is checked here: an
//! oversized message is then read whole, so the close frame is followed by
//! a clean closing handshake. Were the read cut short at the limit, the
//! rest of the message would sit unread when the socket closes, and the
//! kernel would answer with a reset that overtakes the close frame (the
//! client sees 1006). Past the hard cap the read does fail; the socket
//! then lingers a moment, unread, so the close frame still arrives first.

use std::collections::HashMap;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::problem::Code;
use serde_json::{Value, json};

use crate::admission::{self, Credentials, Denied};
use crate::hub::{Hub, Transport};
use crate::outbox::Socket;
use crate::protocol::{CloseReason, Refusal};
use crate::session::{Inbound, Reply, WsSession};

/// A problem+json answer before the upgrade: the server's error shape, its
/// code, status and title from Herald's one table of codes.
pub(crate) fn problem(code: Code, detail: &str) -> Response {
    let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "type": code.type_uri(),
        "title": code.title(),
        "status": status.as_u16(),
        "detail": detail,
        "code": code.as_str(),
    });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The token of an `Authorization: Bearer …` header, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// `GET /ws`: authenticate, then upgrade.
pub(crate) async fn upgrade(
    State(hub): State<Hub>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let token = bearer(&headers).or_else(|| query.get("token").cloned().filter(|t| !t.is_empty()));
    let credentials = match admission::check(&hub, token.as_deref()) {
        Ok(credentials) => credentials,
        Err(Denied::MissingToken) => {
            return problem(
                Code::Unauthorized,
                "missing token: send `Authorization: Bearer …` or `?token=`",
            );
        }
        Err(Denied::InvalidToken(e)) => return problem(Code::Unauthorized, &e),
        Err(Denied::Refused(r)) => return problem(Code::Unavailable, &r.message),
    };
    let resume = match handshake_resume(&query) {
        Ok(resume) => resume,
        Err(detail) => return problem(Code::BadRequest, &detail),
    };
    let c = hub.config();
    ws.read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_write_buffer_size(c.write_buffer_bytes + 2 * c.max_message_bytes)
        .max_message_size(hard_cap(c.max_message_bytes))
        .max_frame_size(hard_cap(c.max_message_bytes))
        .on_upgrade(move |socket| {
            // Admitted before the connection's future is made, so that the
            // future holds the session alone, not what made it.
            let mut session = admit(hub, Socket::new(socket), credentials);
            async move {
                // Borrowed where it lies, not moved out of its `Option`
                // nor into `run`: a moved session would be held twice by
                // the future, for the connection's whole life.
                if let Some(session) = &mut session {
                    session.run(resume).await;
                }
            }
        })
}

/// The largest message the WebSocket layer reads whole: four times the
/// limit, at least 2 MiB, at most 64 MiB. Only an authenticated client can
/// make the server buffer this much, once, on its way out.
pub(crate) fn hard_cap(max_message_bytes: usize) -> usize {
    (max_message_bytes * 4).clamp(2 << 20, 64 << 20)
}

/// How long a socket whose read failed on the hard cap stays open, unread,
/// so the client can take the close frame before the reset.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// `?offset=…&epoch=…` or `?lastEventId=…` as a resume request.
fn handshake_resume(query: &HashMap<String, String>) -> Result<Option<Value>, String> {
    let mut resume = serde_json::Map::new();
    if let Some(offset) = query.get("offset") {
        let offset: u64 = offset
            .parse()
            .map_err(|_| "`offset` must be a non-negative integer".to_owned())?;
        resume.insert("offset".into(), offset.into());
    }
    if let Some(id) = query.get("lastEventId") {
        resume.insert("lastEventId".into(), id.clone().into());
    }
    if resume.is_empty() {
        return Ok(None);
    }
    if let Some(epoch) = query.get("epoch") {
        resume.insert("epoch".into(), epoch.clone().into());
    }
    Ok(Some(Value::Object(resume)))
}

/// The upgraded connection's session; `None` when shutdown began during
/// the upgrade (the socket just closes).
fn admit(hub: Hub, socket: Socket, credentials: Credentials) -> Option<WsSession> {
    let admitted = admission::enter(&hub, credentials, Transport::Ws).ok()?;
    Some(WsSession::new(
        hub,
        admitted.registered,
        socket,
        admitted.exp,
    ))
}

/// What one read from the socket means for the session.
#[derive(Debug)]
pub(crate) enum Read {
    /// A client message to answer.
    Message(Inbound),
    /// Nothing to do (a ping, a pong).
    Nothing,
    /// The connection ends; `linger` when the read failed on the hard cap
    /// (see the module docs).
    End { reason: CloseReason, linger: bool },
}

/// Interprets one read: frames larger than `max_message_bytes` end the
/// connection with 1009, binary frames are refused, text frames parsed.
pub(crate) fn interpret(
    frame: Option<Result<Message, axum::Error>>,
    max_message_bytes: usize,
) -> Read {
    let end = |reason| Read::End {
        reason,
        linger: false,
    };
    let frame = match frame {
        None | Some(Ok(Message::Close(_))) => return end(CloseReason::ClientDisconnect),
        Some(Err(e)) if too_large(&e) => {
            return Read::End {
                reason: CloseReason::MessageTooLarge,
                linger: true,
            };
        }
        Some(Err(_)) => return end(CloseReason::TransportError),
        Some(Ok(frame)) => frame,
    };
    let size = match &frame {
        Message::Text(text) => text.len(),
        Message::Binary(bytes) => bytes.len(),
        _ => 0,
    };
    if size > max_message_bytes {
        return end(CloseReason::MessageTooLarge);
    }
    match frame {
        Message::Text(text) => Read::Message(parse(text.as_str())),
        Message::Binary(_) => Read::Message(Inbound {
            event: String::new(),
            data: Err(Refusal::bad_request(
                "binary frames are not supported; send JSON text frames",
            )),
            reply: Reply::None,
        }),
        _ => Read::Nothing,
    }
}

/// Whether a read failed on the size limit (tungstenite's capacity error).
pub(crate) fn too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(t) = err.downcast_ref::<tungstenite::Error>() {
            return matches!(t, tungstenite::Error::Capacity(_));
        }
        source = err.source();
    }
    false
}

/// One text frame as a client message.
fn parse(text: &str) -> Inbound {
    let shape =
        || Refusal::bad_request("a frame is a JSON object {\"event\": …, \"data\": …, \"ack\": n}");
    let bad = |refusal: Refusal, reply: Reply| Inbound {
        event: String::new(),
        data: Err(refusal),
        reply,
    };
    let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
        return bad(shape(), Reply::None);
    };
    let reply = match frame.remove("ack") {
        None | Some(Value::Null) => Reply::None,
        Some(Value::Number(n)) if n.as_u64().is_some() => Reply::Ws(n.as_u64().unwrap_or_default()),
        Some(_) => {
            return bad(
                Refusal::bad_request("`ack` must be a non-negative integer"),
                Reply::None,
            );
        }
    };
    let event = match frame.remove("event") {
        Some(Value::String(event)) => event,
        _ => return bad(shape(), reply),
    };
    let data = frame.remove("data").unwrap_or(Value::Null);
    if let Some(extra) = frame.keys().next() {
        let extra: String = extra.chars().take(64).collect();
        return bad(
            Refusal::bad_request(format!("unknown frame field `{extra}`")),
            reply,
        );
    }
    Inbound {
        event,
        data: Ok(data),
        reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_say_why() {
        let ok = parse(r#"{"event":"subscribe","data":{"type":"system_events"},"ack":3}"#);
        assert_eq!(ok.event, "subscribe");
        assert!(matches!(ok.reply, Reply::Ws(3)));
        assert!(ok.data.is_ok());
        for bad in [
            "",
            "nope",
            "[1]",
            "{}",
            r#"{"event":5}"#,
            r#"{"event":"x","ack":-1}"#,
            r#"{"event":"x","more":1}"#,
        ] {
            assert!(parse(bad).data.is_err(), "{bad}");
        }
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(handshake_resume(&q(&[])).unwrap(), None);
        assert_eq!(
            handshake_resume(&q(&[("offset", "12"), ("epoch", "e")])).unwrap(),
            Some(json!({"offset": 12, "epoch": "e"}))
        );
        assert!(handshake_resume(&q(&[("offset", "x")])).is_err());
    }
}
