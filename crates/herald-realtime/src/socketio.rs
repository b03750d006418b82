//! Socket.IO v4 (protocol 5) at `/socket.io/`, on Herald's own Engine.IO
//! layer ([`crate::engineio`]), so the platform's `socket.io-client`
//! connects unchanged over WebSocket and long-polling.
//!
//! This module is the Socket.IO half: the packet codec (`CONNECT`,
//! `DISCONNECT`, `EVENT`, `ACK`, `CONNECT_ERROR`; the binary packets are
//! refused), and a [`Conversation`]: one Engine.IO session's Socket.IO
//! state, waiting for `CONNECT`, then live with a [`Session`].
//!
//! `CONNECT` does all the work that can refuse a client — token
//! (`auth.token`, or a Bearer header on the Engine.IO handshake request),
//! registration — before it is answered, so a bad token is a
//! `connect_error` whose message starts with `UNAUTHORIZED`. Only the main
//! namespace `/` exists; any other is refused with `Invalid namespace`, as
//! the reference server does. Client events are rate-limited, then handed
//! to the session inline, in arrival order.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::admission::{self, Admitted, Denied};
use crate::guard::Ticket;
use crate::history::Delivery;
use crate::hub::{Conn, Hub, Transport};
use crate::protocol::{CloseReason, Refusal};
use crate::session::{Bucket, Inbound, Reply, Session};

/// A Socket.IO packet from a client (the text after the Engine.IO
/// message type `4`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    /// `0[/nsp,][{auth}]`
    Connect { nsp: &'a str, auth: &'a str },
    /// `1[/nsp,]`
    Disconnect { nsp: &'a str },
    /// `2[/nsp,][id]["event", …]`: `args` is the JSON array.
    Event {
        nsp: &'a str,
        id: Option<u64>,
        args: &'a str,
    },
    /// `3[/nsp,]id[…]`: the answer to an ack the server asked for.
    Ack { nsp: &'a str, id: u64 },
    /// `4…`: only servers send it.
    ConnectError,
    /// `5…` / `6…`: binary events and acks, which Herald does not take.
    Binary,
}

/// Decodes one Socket.IO packet, or says what is wrong with it.
pub(crate) fn decode(text: &str) -> Result<Packet<'_>, &'static str> {
    let mut chars = text.char_indices();
    let kind = match chars.next() {
        Some((_, c @ '0'..='6')) => c,
        _ => return Err("unknown packet type"),
    };
    if matches!(kind, '5' | '6') {
        return Ok(Packet::Binary);
    }
    let mut rest = &text[1..];
    let mut nsp = "/";
    if rest.starts_with('/') {
        match rest.find(',') {
            Some(i) => {
                nsp = &rest[..i];
                rest = &rest[i + 1..];
            }
            None => {
                nsp = rest;
                rest = "";
            }
        }
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = match digits {
        0 => None,
        _ => Some(
            rest[..digits]
                .parse::<u64>()
                .map_err(|_| "ack id too large")?,
        ),
    };
    rest = &rest[digits..];
    match kind {
        '0' => Ok(Packet::Connect { nsp, auth: rest }),
        '1' => Ok(Packet::Disconnect { nsp }),
        '2' => {
            if !rest.starts_with('[') {
                return Err("an event's payload is a JSON array");
            }
            Ok(Packet::Event {
                nsp,
                id,
                args: rest,
            })
        }
        '3' => Ok(Packet::Ack {
            nsp,
            id: id.ok_or("an ack needs an id")?,
        }),
        _ => Ok(Packet::ConnectError),
    }
}

/// `42["event",data]`: a server event, in an Engine.IO message packet.
pub(crate) fn event_text<T: Serialize + ?Sized>(event: &str, data: &T) -> String {
    let mut text = String::from("42[");
    push_json(&mut text, event);
    text.push(',');
    push_json(&mut text, data);
    text.push(']');
    text
}

/// `43id[data]`: the answer to a client's ack request.
pub(crate) fn ack_text<T: Serialize + ?Sized>(id: u64, data: &T) -> String {
    let mut text = format!("43{id}[");
    push_json(&mut text, data);
    text.push(']');
    text
}

/// `42["name",data,{"offset":n}]`: an event from the stream, its payload
/// spliced in as serialised once.
pub(crate) fn delivery_text(d: &Delivery) -> String {
    let mut text = String::with_capacity(d.data.get().len() + d.event.len() + 40);
    text.push_str("42[");
    push_json(&mut text, &d.event);
    text.push(',');
    text.push_str(d.data.get());
    text.push_str(",{\"offset\":");
    text.push_str(&d.offset.to_string());
    text.push_str("}]");
    text
}

/// `40{"sid":…}`: the answer to `CONNECT`.
fn connect_text(sid: &str) -> String {
    let mut text = String::from("40{\"sid\":");
    push_json(&mut text, sid);
    text.push('}');
    text
}

/// `44[/nsp,]{"message":…}`: `CONNECT` refused.
fn connect_error_text(nsp: &str, message: &str) -> String {
    let mut text = String::from("44");
    if nsp != "/" {
        text.push_str(nsp);
        text.push(',');
    }
    text.push_str("{\"message\":");
    push_json(&mut text, message);
    text.push('}');
    text
}

/// `41`: the server disconnects the socket (the client does not reconnect
/// by itself).
const DISCONNECT: &str = "41";

fn push_json<T: Serialize + ?Sized>(text: &mut String, value: &T) {
    // Serialising into a String's bytes keeps them UTF-8.
    let mut bytes = std::mem::take(text).into_bytes();
    if serde_json::to_writer(&mut bytes, value).is_err() {
        bytes.extend_from_slice(b"null");
    }
    *text = String::from_utf8(bytes).unwrap_or_default();
}

/// One Engine.IO session's Socket.IO state.
#[derive(Debug)]
pub(crate) struct Conversation {
    state: State,
    /// Socket.IO packets to write, in order, each an Engine.IO message.
    pub out: Vec<Utf8Bytes>,
}

#[derive(Debug)]
enum State {
    /// The Engine.IO session is open; no `CONNECT` yet.
    Waiting {
        /// A Bearer token from the handshake request, if any.
        bearer: Option<Box<str>>,
        /// The session's place among those pending authentication.
        ticket: Option<Arc<Ticket>>,
        /// When an unauthenticated session is closed.
        deadline: Instant,
    },
    Live {
        session: Box<Session>,
        bucket: Bucket,
    },
    Closed,
}

impl Conversation {
    pub fn new(hub: &Hub, bearer: Option<String>, ticket: Option<Arc<Ticket>>) -> Conversation {
        Conversation {
            state: State::Waiting {
                bearer: bearer.map(String::into_boxed_str),
                ticket,
                deadline: Instant::now() + hub.config().connect_timeout(),
            },
            out: Vec::new(),
        }
    }

    /// What stays behind in a long-polling session's slot once the
    /// conversation moved to a WebSocket.
    pub fn moved() -> Conversation {
        Conversation {
            state: State::Closed,
            out: Vec::new(),
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    pub fn is_live(&self) -> bool {
        matches!(self.state, State::Live { .. })
    }

    /// When something is due without any input: the connect timeout, or
    /// the token's expiry.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { deadline, .. } => Some(*deadline),
            State::Live { session, .. } => Some(session.expires),
            State::Closed => None,
        }
    }

    /// Why the conversation must end now, if it must: the connect timeout,
    /// the hub's kill signal, the token's expiry.
    pub fn due(&self) -> Option<CloseReason> {
        match &self.state {
            State::Waiting { deadline, .. } => {
                (Instant::now() >= *deadline).then_some(CloseReason::Timeout)
            }
            State::Live { session, .. } => session.due(),
            State::Closed => None,
        }
    }

    /// Takes one Socket.IO packet. `Ok(Some(conn))` when the connection
    /// just authenticated: the transport waits on its outbox from now on.
    pub async fn receive(
        &mut self,
        hub: &Hub,
        text: &str,
    ) -> Result<Option<Arc<Conn>>, CloseReason> {
        let packet = match decode(text) {
            Ok(packet) => packet,
            Err(why) => {
                tracing::debug!(why, "socket.io packet refused");
                return Err(CloseReason::TransportError);
            }
        };
        match (&mut self.state, packet) {
            (_, Packet::Binary) => {
                self.emit_refusal(&Refusal::bad_request(
                    "binary packets are not supported; send JSON",
                ));
                Err(CloseReason::TransportError)
            }
            (State::Waiting { .. }, Packet::Connect { nsp, auth }) => {
                if nsp != "/" {
                    self.push(connect_error_text(nsp, "Invalid namespace"));
                    return Ok(None);
                }
                Ok(self.admit(hub, auth).await)
            }
            (State::Live { .. }, Packet::Connect { nsp, .. }) if nsp != "/" => {
                self.push(connect_error_text(nsp, "Invalid namespace"));
                Ok(None)
            }
            (State::Live { session, bucket }, Packet::Event { nsp: "/", id, args }) => {
                if !bucket.take() {
                    return Err(CloseReason::RateLimited);
                }
                session.handle(inbound(id, args)).await;
                self.out.extend(session.take_out());
                Ok(None)
            }
            (State::Live { .. }, Packet::Disconnect { nsp: "/" }) => {
                Err(CloseReason::ClientDisconnect)
            }
            // Another namespace's traffic, a second CONNECT, acks the
            // server never asked for: nothing to do.
            (State::Live { .. }, _) => Ok(None),
            (State::Waiting { .. }, Packet::Disconnect { .. }) => {
                Err(CloseReason::ClientDisconnect)
            }
            (State::Waiting { .. }, _) => Err(CloseReason::TransportError),
            (State::Closed, _) => Ok(None),
        }
    }

    fn push(&mut self, text: String) {
        self.out.push(text.into());
    }

    fn emit_refusal(&mut self, refusal: &Refusal) {
        match &mut self.state {
            State::Live { session, .. } => {
                session.refuse(Reply::None, refusal);
                self.out.extend(session.take_out());
            }
            _ => self.push(event_text("error", &refusal.to_error())),
        }
    }

    /// `CONNECT`: token, registration, the answer, `connected` and the
    /// handshake resume. A refusal is a `connect_error`; the session stays
    /// open until the client tries again or the connect timeout.
    async fn admit(&mut self, hub: &Hub, auth: &str) -> Option<Arc<Conn>> {
        let State::Waiting { bearer, ticket, .. } = &self.state else {
            return None;
        };
        let auth: Value = serde_json::from_str(auth).unwrap_or(Value::Null);
        let token = match auth.get("token") {
            Some(Value::String(t)) if !t.is_empty() => Some(t.as_str()),
            _ => bearer.as_deref(),
        };
        let admitted = admission::check(hub, token)
            .and_then(|credentials| admission::enter(hub, credentials, Transport::SocketIo));
        let Admitted { registered, exp } = match admitted {
            Ok(admitted) => admitted,
            Err(denied) => {
                let message = match denied {
                    Denied::MissingToken => {
                        "UNAUTHORIZED: missing token (send it as auth.token)".to_owned()
                    }
                    Denied::InvalidToken(e) => format!("UNAUTHORIZED: {e}"),
                    Denied::Refused(r) => format!("{}: {}", r.code.as_str(), r.message),
                };
                self.push(connect_error_text("/", &message));
                return None;
            }
        };
        // Authenticated: the session no longer counts against the pending cap.
        if let Some(ticket) = ticket {
            ticket.settle();
        }
        let mut session = Session::new(hub.clone(), registered, exp);
        let conn = session.conn.clone();
        self.push(connect_text(&format!("{:032x}", rand::random::<u128>())));
        let resume = auth.get("resume").filter(|r| !r.is_null()).cloned();
        session.open(resume).await;
        self.out.extend(session.take_out());
        self.state = State::Live {
            session: Box::new(session),
            bucket: admission::rate_limit(hub),
        };
        Some(conn)
    }

    /// Takes the live events the hub queued into the frames to write.
    pub fn take_queued(&mut self) {
        if let State::Live { session, .. } = &mut self.state {
            session.take_queued();
            self.out.extend(session.take_out());
        }
    }

    /// Ends the conversation: queues what the client is told (when it can
    /// still be told anything) and takes the connection out of the hub.
    pub fn finish(&mut self, reason: CloseReason) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Live { mut session, .. } => {
                if !matches!(
                    reason,
                    CloseReason::ClientDisconnect | CloseReason::SlowConsumer
                ) {
                    session.say_goodbye(reason);
                    self.out.extend(session.take_out());
                }
                // On restart (and when the client left) the transport just
                // closes, so clients see a transport close and reconnect
                // by themselves; otherwise the server disconnects the socket.
                if !matches!(
                    reason,
                    CloseReason::ServerRestart | CloseReason::ClientDisconnect
                ) {
                    self.push(DISCONNECT.to_owned());
                }
                session.close(reason);
            }
            // Dropping the ticket takes the session out of the pending count.
            State::Waiting { .. } | State::Closed => {}
        }
    }
}

/// An `EVENT` packet's array as a client message.
fn inbound(id: Option<u64>, args: &str) -> Inbound {
    let reply = id.map_or(Reply::None, Reply::SocketIo);
    let parsed = serde_json::from_str::<Vec<Value>>(args);
    let mut args = match parsed {
        Ok(args) => args.into_iter(),
        Err(_) => {
            return Inbound {
                event: String::new(),
                data: Err(Refusal::bad_request("the event's data is not JSON")),
                reply,
            };
        }
    };
    let Some(Value::String(event)) = args.next() else {
        return Inbound {
            event: String::new(),
            data: Err(Refusal::bad_request(
                "an event's first argument is its name",
            )),
            reply,
        };
    };
    Inbound {
        event,
        data: Ok(args.next().unwrap_or(Value::Null)),
        reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_decode() {
        assert_eq!(decode("0"), Ok(Packet::Connect { nsp: "/", auth: "" }));
        assert_eq!(
            decode(r#"0{"token":"t"}"#),
            Ok(Packet::Connect {
                nsp: "/",
                auth: r#"{"token":"t"}"#
            })
        );
        assert_eq!(
            decode(r#"0/admin,{"token":"t"}"#),
            Ok(Packet::Connect {
                nsp: "/admin",
                auth: r#"{"token":"t"}"#
            })
        );
        assert_eq!(decode("1"), Ok(Packet::Disconnect { nsp: "/" }));
        assert_eq!(decode("1/admin,"), Ok(Packet::Disconnect { nsp: "/admin" }));
        assert_eq!(
            decode(r#"2["subscribe",{"type":"x"}]"#),
            Ok(Packet::Event {
                nsp: "/",
                id: None,
                args: r#"["subscribe",{"type":"x"}]"#
            })
        );
        assert_eq!(
            decode(r#"217["resume",{}]"#),
            Ok(Packet::Event {
                nsp: "/",
                id: Some(17),
                args: r#"["resume",{}]"#
            })
        );
        assert_eq!(
            decode(r#"2/admin,3["x"]"#),
            Ok(Packet::Event {
                nsp: "/admin",
                id: Some(3),
                args: r#"["x"]"#
            })
        );
        assert_eq!(decode("34[]"), Ok(Packet::Ack { nsp: "/", id: 4 }));
        assert_eq!(
            decode(r#"51-["x",{"_placeholder":true,"num":0}]"#),
            Ok(Packet::Binary)
        );
        assert_eq!(decode("61-0[]"), Ok(Packet::Binary));
        for bad in [
            "",
            "7",
            "x",
            "2",
            "2{}",
            "3[]",
            "299999999999999999999999[]",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn packets_encode() {
        assert_eq!(
            event_text("error", &serde_json::json!({"a": 1})),
            r#"42["error",{"a":1}]"#
        );
        assert_eq!(
            ack_text(12, &serde_json::json!({"ok": true})),
            r#"4312[{"ok":true}]"#
        );
        assert_eq!(connect_text("abc"), r#"40{"sid":"abc"}"#);
        assert_eq!(
            connect_error_text("/", "UNAUTHORIZED: \"bad\""),
            r#"44{"message":"UNAUTHORIZED: \"bad\""}"#
        );
        assert_eq!(
            connect_error_text("/admin", "Invalid namespace"),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        let stored = crate::history::Stored {
            event: "points_added".into(),
            event_id: "e1".into(),
            rooms: vec!["user:u".into()],
            data: serde_json::value::to_raw_value(&serde_json::json!({"amount": 5})).unwrap(),
        };
        let d = Delivery::new(1234, stored);
        assert_eq!(
            &*d.socketio_text(),
            r#"42["points_added",{"amount":5},{"offset":1234}]"#
        );
    }

    #[test]
    fn events_parse_or_say_why() {
        let ok = inbound(Some(3), r#"["subscribe",{"type":"system_events"}]"#);
        assert_eq!(ok.event, "subscribe");
        assert_eq!(ok.reply, Reply::SocketIo(3));
        assert_eq!(ok.data.unwrap()["type"], "system_events");
        let bare = inbound(None, r#"["resume"]"#);
        assert_eq!(bare.data.unwrap(), Value::Null);
        assert!(inbound(None, "[1,2]").data.is_err());
        assert!(inbound(None, "[nope").data.is_err());
    }
}
