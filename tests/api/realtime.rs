//! Realtime test helpers: the official `socket.io-client` driven through
//! `node` (`tests/socketio/client.mjs`), a `/ws` client, and Redis for
//! multi-node runs. Nothing here sleeps: every wait is for a message,
//! bounded by a timeout that fails the test.
//!
//! Node (with `npm ci --prefix tests`) and Redis are services like
//! PostgreSQL: when missing, a test says `skipped` — unless
//! `HERALD_REQUIRE_SERVICES=1`, which makes that a failure.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_core::{EventKind, Role};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::*;

/// How long any one expected message may take.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// Whether node and the pinned socket.io-client are installed.
pub fn node_ready() -> bool {
    let installed = tests_dir()
        .join("node_modules/socket.io-client/package.json")
        .exists();
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if node && installed {
        return true;
    }
    let why = if node {
        "socket.io-client is not installed (run `npm ci --prefix tests`)"
    } else {
        "node is not on PATH"
    };
    herald_testkit::skip("Node with socket.io-client missing", why);
    false
}

/// The test Redis (database 0, keys under a prefix of the test's own), if
/// it answers; `None`: the test is skipped, unless services are required.
pub async fn redis_url() -> Option<String> {
    herald_testkit::redis_available(0).await
}

/// Deletes every key under `prefix` (multi-node tests use one per test).
pub async fn clear_redis(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// The restaurant of the catalog's examples.
pub fn restaurant() -> String {
    EventKind::PointsAdded.example()["restaurantId"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An event of `kind` (the catalog's example) with `fields` replaced.
pub fn event(kind: EventKind, fields: &Value) -> Value {
    let mut e = envelope(kind);
    for (k, v) in fields.as_object().unwrap() {
        e["data"][k] = v.clone();
    }
    e
}

/// Publishes `body`, which must be accepted.
pub async fn publish_ok(app: &TestApp, body: &Value) {
    app.publish_ok(body).await;
}

// ---------------------------------------------------------------------------
// Socket.IO: the official client, through node.

/// A `socket.io-client` in a node process.
pub struct Sio {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next_ack: u64,
}

impl Sio {
    /// Starts a client against `app` with `auth.token = token` and extra
    /// options (`transports`, `resume`, `extraHeaders`).
    pub async fn open(address: &str, token: &str, options: Value) -> Sio {
        let mut opts = json!({ "url": address, "token": token });
        for (k, v) in options.as_object().cloned().unwrap_or_default() {
            opts[k] = v;
        }
        let mut child = Command::new("node")
            .arg(tests_dir().join("socketio/client.mjs"))
            .arg(opts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Sio {
            child,
            stdin,
            lines,
            next_ack: 1,
        }
    }

    /// Connects and waits for `connected`; returns its payload.
    pub async fn connect(app: &TestApp, token: &str) -> (Sio, Value) {
        Self::connect_with(&app.address, token, json!({})).await
    }

    pub async fn connect_with(address: &str, token: &str, options: Value) -> (Sio, Value) {
        let mut client = Sio::open(address, token, options).await;
        let first = client.recv().await;
        assert_eq!(first["type"], "connect", "{first}");
        let connected = client.event("connected").await;
        (client, connected[0].clone())
    }

    /// The next thing the client saw.
    pub async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("socket.io client: nothing arrived in time")
            .expect("socket.io client output")
            .expect("socket.io client exited");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next event, which must be `name`; returns its arguments.
    pub async fn event(&mut self, name: &str) -> Vec<Value> {
        let next = self.recv().await;
        assert_eq!(
            (next["type"].as_str(), next["event"].as_str()),
            (Some("event"), Some(name)),
            "expected `{name}`, got {next}"
        );
        next["args"].as_array().unwrap().clone()
    }

    pub async fn command(&mut self, command: Value) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("node stdin");
        self.stdin.flush().await.expect("node stdin");
    }

    pub async fn emit(&mut self, event: &str, data: Value) {
        self.command(json!({"cmd": "emit", "event": event, "data": data}))
            .await;
    }

    /// Emits with an ack and waits for it. A refusal's `error` event comes
    /// just before its ack and is passed over; nothing else may come first.
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.command(json!({"cmd": "emit", "event": event, "data": data, "id": id}))
            .await;
        let mut ack = self.recv().await;
        if ack["event"] == "error" {
            ack = self.recv().await;
        }
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(id)),
            "{ack}"
        );
        ack["data"].clone()
    }

    pub async fn subscribe(&mut self, kind: &str, data: Value) -> Value {
        self.request("subscribe", json!({"type": kind, "data": data}))
            .await
    }

    pub async fn exit(mut self) {
        self.command(json!({"cmd": "exit"})).await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------
// /ws: a plain WebSocket client.

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub fn ws_url(app: &TestApp) -> String {
    app.address.replacen("http://", "ws://", 1) + "/ws"
}

/// A `/ws` client.
pub struct Ws {
    pub stream: Stream,
    next_ack: u64,
}

impl Ws {
    /// Connects with a Bearer header; returns the client and `connected`.
    pub async fn connect(app: &TestApp, token: &str) -> (Ws, Value) {
        let mut request = ws_url(app).into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Self::connect_request(request).await
    }

    pub async fn connect_request(request: tungstenite::handshake::client::Request) -> (Ws, Value) {
        let (stream, _) = Self::try_connect(request)
            .await
            .expect("the upgrade succeeds");
        let mut ws = Ws {
            stream,
            next_ack: 1,
        };
        let connected = ws.recv().await;
        assert_eq!(connected["event"], "connected", "{connected}");
        (ws, connected["data"].clone())
    }

    pub async fn try_connect(
        request: tungstenite::handshake::client::Request,
    ) -> Result<(Stream, tungstenite::handshake::client::Response), tungstenite::Error> {
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the upgrade answers in time")
    }

    /// The HTTP status with which the server refuses the upgrade; panics
    /// if it does not refuse it.
    pub async fn refused(request: tungstenite::handshake::client::Request) -> u16 {
        match Self::try_connect(request).await {
            Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
            other => panic!(
                "expected an HTTP refusal of the upgrade, got {:?}",
                other.map(|(_, res)| res.status())
            ),
        }
    }

    /// The next JSON frame, or `None` if nothing came within `within`
    /// (pings, answered as they come, do not count).
    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        tokio::time::timeout(within, self.recv()).await.ok()
    }

    /// The next JSON frame (pings and pongs skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("/ws: nothing arrived in time")
                .expect("/ws: stream ended")
                .expect("/ws: read failed");
            match frame {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("JSON frame");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("/ws: expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next event, which must be `name`; returns the whole frame.
    pub async fn event(&mut self, name: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["event"], name, "expected `{name}`, got {frame}");
        frame
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("/ws send");
    }

    /// Sends with an ack; returns the ack and the events that came before it.
    pub async fn request_collect(&mut self, event: &str, data: Value) -> (Value, Vec<Value>) {
        let ack = self.next_ack;
        self.next_ack += 1;
        self.send(json!({"event": event, "data": data, "ack": ack}))
            .await;
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if frame["event"] == "ack" && frame["ack"] == ack {
                return (frame["data"].clone(), before);
            }
            before.push(frame);
        }
    }

    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let ack = self.next_ack;
        self.next_ack += 1;
        self.send(json!({"event": event, "data": data, "ack": ack}))
            .await;
        let mut frame = self.recv().await;
        if frame["event"] == "error" {
            frame = self.recv().await;
        }
        assert_eq!(
            (frame["event"].as_str(), frame["ack"].as_u64()),
            (Some("ack"), Some(ack)),
            "{frame}"
        );
        frame["data"].clone()
    }

    pub async fn subscribe(&mut self, kind: &str, data: Value) -> Value {
        self.request("subscribe", json!({"type": kind, "data": data}))
            .await
    }

    /// Reads until the server closes; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("/ws: the server did not close in time")
            {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A token with its own expiry, signed with the app's secret.
pub fn token_expiring_in(app: &TestApp, role: Role, sub: &str, secs: i64) -> String {
    let exp = chrono::Utc::now().timestamp() + secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "role": role.as_str(), "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(app.secret.as_bytes()),
    )
    .unwrap()
}
