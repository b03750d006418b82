//! A Socket.IO v4 client, just enough of it: Engine.IO v4 over a WebSocket
//! (no long-polling), the default namespace, `auth: {token}`, events and
//! acks, and pong. The same code drives Herald and the Node peer, and it is
//! small enough that 10,000 of it fit in the harness.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connected, authenticated socket.
#[derive(Debug)]
pub struct Socket {
    ws: Ws,
    next_ack: u64,
}

/// What a frame from the server is, as far as the harness cares.
#[derive(Debug)]
pub enum Frame<'a> {
    /// `42["name", …]`: the whole packet's text after `42`.
    Event(&'a str),
    /// Engine.IO ping: answer with pong.
    Ping,
    Other,
}

pub fn classify(text: &str) -> Frame<'_> {
    if let Some(rest) = text.strip_prefix("42") {
        Frame::Event(rest)
    } else if text == "2" {
        Frame::Ping
    } else {
        Frame::Other
    }
}

/// The event name of a `42[...]` packet's body, without parsing the rest.
pub fn event_name(body: &str) -> Option<&str> {
    let body = body.strip_prefix("[\"")?;
    Some(&body[..body.find('"')?])
}

impl Socket {
    /// Opens the WebSocket, answers the Engine.IO handshake, connects to the
    /// default namespace with `auth.token` and waits for `connected`.
    pub async fn connect(port: u16, token: &str) -> Result<Socket> {
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket");
        // Small buffers: thousands of sockets live in one harness.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .context("WebSocket upgrade")?;
        let mut socket = Socket { ws, next_ack: 1 };
        let open = socket.next_text().await?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got {open}");
        }
        let auth = serde_json::json!({ "token": token });
        socket.send(format!("40{auth}")).await?;
        loop {
            let text = socket.next_text().await?;
            if text.starts_with("40") {
                break;
            }
            if text.starts_with("44") {
                bail!("connection refused: {text}");
            }
        }
        loop {
            let text = socket.next_text().await?;
            if let Frame::Event(body) = classify(&text)
                && event_name(body) == Some("connected")
            {
                return Ok(socket);
            }
        }
    }

    /// Emits `event` with `data` and waits for its ack (frames before it are
    /// answered or dropped: nothing else is expected yet).
    pub async fn emit_with_ack(&mut self, event: &str, data: &Value) -> Result<Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        let packet = serde_json::to_string(&(event, data))?;
        self.send(format!("42{id}{packet}")).await?;
        let prefix = format!("43{id}");
        loop {
            let text = self.next_text().await?;
            if let Some(rest) = text.strip_prefix(&prefix) {
                let mut args: Vec<Value> = serde_json::from_str(rest)?;
                return Ok(if args.is_empty() {
                    Value::Null
                } else {
                    args.swap_remove(0)
                });
            }
        }
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// The next text frame, answering pings on the way.
    async fn next_text(&mut self) -> Result<String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .context("server silent for 30 s")?
                .context("connection closed")??;
            if let Message::Text(text) = msg {
                if text.as_str() == "2" {
                    self.send("3".to_owned()).await?;
                    continue;
                }
                return Ok(text.as_str().to_owned());
            }
        }
    }

    /// Hands over the raw stream for the receive loop.
    pub fn into_inner(self) -> Ws {
        self.ws
    }
}

/// Answers a ping on a raw stream.
pub async fn pong(ws: &mut Ws) -> Result<()> {
    ws.send(Message::text("3")).await?;
    Ok(())
}
