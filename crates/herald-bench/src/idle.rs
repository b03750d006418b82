//! Scenario (b): what an idle connection costs the server, and how fast it
//! takes new ones. Sockets connect (Engine.IO handshake, JWT, the
//! `connected` event) 256 at a time; the server's resident memory is read
//! before and after, once the heap has settled. [`run_ws`] does the same
//! over Herald's plain WebSocket at `/ws` (the peer has none).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;

use crate::fanout::{Audience, Recorder};
use crate::population::token;
use crate::proc::Sample;
use crate::server::Proc;
use crate::sio::{Socket, Ws};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub server: String,
    pub connections: u64,
    pub connect_seconds: f64,
    pub connects_per_s: f64,
    pub rss_before_mib: f64,
    pub rss_after_mib: f64,
    pub kib_per_connection: f64,
    pub connect_cpu_s: f64,
    /// Server CPU per connect, milliseconds.
    pub connect_cpu_ms_each: f64,
}

impl Idle {
    /// The figures of `n` connections from the server's samples before
    /// they connected, once they had, and once the heap settled; printed
    /// as they are made.
    fn measured(
        server: String,
        n: u64,
        connect_seconds: f64,
        (before, connected, after): (Sample, Sample, Sample),
    ) -> Idle {
        let connect_cpu_s = connected.cpu_secs - before.cpu_secs;
        let idle = Idle {
            server,
            connections: n,
            connect_seconds,
            connects_per_s: n as f64 / connect_seconds,
            rss_before_mib: before.rss_kib as f64 / 1024.0,
            rss_after_mib: after.rss_kib as f64 / 1024.0,
            kib_per_connection: (after.rss_kib.saturating_sub(before.rss_kib)) as f64 / n as f64,
            connect_cpu_s,
            connect_cpu_ms_each: connect_cpu_s * 1000.0 / n as f64,
        };
        eprintln!(
            "  {}: {n} connections in {connect_seconds:.2} s ({:.0}/s), {:.2} KiB each",
            idle.server, idle.connects_per_s, idle.kib_per_connection
        );
        idle
    }
}

/// The harness holds one end of each connection, the server the other (a
/// process of its own, with its own limit).
fn ensure_open_files(n: u64) -> Result<()> {
    let limit = open_files_limit();
    anyhow::ensure!(
        limit >= n + 1024,
        "{n} connections need `ulimit -n` ≥ {} (it is {limit})",
        n + 1024
    );
    Ok(())
}

pub async fn run(server: &Proc, secret: &str, n: u64) -> Result<Idle> {
    ensure_open_files(n)?;
    // One socket first, so the baseline includes the first-use allocations.
    let warm = Socket::connect(server.port, &token(secret, "idle-warm", "guest", None)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.sample()?;
    let start = Instant::now();
    let sockets: Vec<Socket> = futures::stream::iter((0..n).map(|i| {
        let token = token(secret, &format!("idle-{i}"), "guest", None);
        async move { Socket::connect(server.port, &token).await }
    }))
    .buffer_unordered(256)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_>>()
    .context("connecting idle sockets")?;
    let connect_seconds = start.elapsed().as_secs_f64();
    let connected = server.sample()?;
    // Hand them to listeners that answer pings, and let the heap settle.
    let audience = Audience::hold(sockets, &Recorder::new(1));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.sample()?;
    let result = Idle::measured(
        server.name.clone(),
        n,
        connect_seconds,
        (before, connected, after),
    );
    audience.close().await;
    drop(warm);
    Ok(result)
}

/// Scenario (b) over `/ws?token=`: `n` plain WebSocket clients that read
/// (so pings are answered) and say nothing.
pub async fn run_ws(server: &Proc, secret: &str, n: u64) -> Result<Idle> {
    ensure_open_files(n)?;
    let port = server.port;
    let warm = ws_connect(port, &token(secret, "idle-ws-warm", "guest", None)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.sample()?;
    let start = Instant::now();
    let sockets: Vec<Ws> = futures::stream::iter((0..n).map(|i| {
        let token = token(secret, &format!("idle-ws-{i}"), "guest", None);
        async move { ws_connect(port, &token).await }
    }))
    .buffer_unordered(256)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<_>>()
    .context("connecting idle /ws sockets")?;
    let connect_seconds = start.elapsed().as_secs_f64();
    let connected = server.sample()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in sockets {
        let mut stopped = stopped.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    msg = ws.next() => if !matches!(msg, Some(Ok(_))) { return },
                    _ = stopped.changed() => break,
                }
            }
            let _ = ws.close(None).await;
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = server.sample()?;
    let result = Idle::measured(
        format!("{} /ws", server.name),
        n,
        connect_seconds,
        (before, connected, after),
    );
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    drop(warm);
    Ok(result)
}

/// A `/ws` client, once the server's `connected` frame has arrived.
async fn ws_connect(port: u16, token: &str) -> Result<Ws> {
    let url = format!("ws://127.0.0.1:{port}/ws?token={token}");
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .context("/ws upgrade")?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"connected\"") => return Ok(ws),
            Some(Ok(_)) => {}
            other => anyhow::bail!("/ws closed before `connected`: {other:?}"),
        }
    }
}

fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}
