//! Herald's own Engine.IO layer under `/socket.io/`: the official client
//! over each transport and the upgrade, reconnection with acks, protocol
//! misuse answered as the reference server answers it, abandoned
//! long-polling sessions freed, and thousands of connections opened and
//! closed, round after round, leaving no session and no memory behind.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_core::Role;
use herald_testkit::{Backend, eventually, spawn_app_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::realtime::*;
use super::*;

/// A metric's value in a Prometheus exposition (`name` with its labels).
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics", "").await.text().await.unwrap()
}

async fn sessions(app: &TestApp) -> f64 {
    metric(&metrics(app).await, "herald_realtime_engine_sessions")
}

/// Waits until no Engine.IO session and no socket is left on the node.
async fn all_freed(app: &TestApp, within: Duration) {
    let admin = app.admin_token();
    eventually("every session freed", within, || async {
        let m = metrics(app).await;
        let stats: Value = app.get("/v1/admin/stats", &admin).await.json().await.ok()?;
        (metric(&m, "herald_realtime_engine_sessions") == 0.0
            && metric(&m, "herald_realtime_pending_handshakes") == 0.0
            && stats["totalSockets"] == 0)
            .then_some(())
    })
    .await;
}

/// Pings every second, a second to answer: a client that exits without
/// closing its long-polling session leaves it for two seconds, not 45.
fn quick_pings(settings: &mut herald_server::config::Settings) {
    settings.realtime.ping_interval_ms = 1_000;
    settings.realtime.ping_timeout_ms = 1_000;
}

fn base(app: &TestApp) -> String {
    format!("{}/socket.io/?EIO=4", app.address)
}

fn ws_base(app: &TestApp) -> String {
    base(app).replacen("http://", "ws://", 1)
}

/// A long-polling handshake; returns the sid.
async fn polling_handshake(app: &TestApp) -> String {
    let res = app
        .client
        .get(format!("{}&transport=polling", base(app)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    open["sid"].as_str().unwrap().to_owned()
}

async fn post(app: &TestApp, sid: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(format!("{}&transport=polling&sid={sid}", base(app)))
        .header("content-type", "text/plain;charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn get(app: &TestApp, sid: &str) -> reqwest::Response {
    app.client
        .get(format!("{}&transport=polling&sid={sid}", base(app)))
        .send()
        .await
        .unwrap()
}

/// The packets of one long-polling answer.
async fn packets(res: reqwest::Response) -> Vec<String> {
    assert_eq!(res.status(), 200);
    res.text()
        .await
        .unwrap()
        .split('\x1e')
        .map(str::to_owned)
        .collect()
}

/// Reads WebSocket text frames until one starts with `prefix`.
async fn until(ws: &mut Stream, prefix: &str) -> String {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        if let Message::Text(text) = frame
            && text.starts_with(prefix)
        {
            return text.to_string();
        }
    }
}

/// The close frame's code, reading past anything before it.
async fn close_code(ws: &mut Stream) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// A Socket.IO client over a raw WebSocket, connected with `token`.
async fn raw_websocket(app: &TestApp, token: &str) -> Stream {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}&transport=websocket", ws_base(app)))
            .await
            .unwrap();
    let open = until(&mut ws, "0").await;
    let open: Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!(open["upgrades"], json!([]));
    ws.send(Message::Text(
        format!("40{}", json!({"token": token})).into(),
    ))
    .await
    .unwrap();
    until(&mut ws, "40{\"sid\"").await;
    until(&mut ws, "42[\"connected\"").await;
    ws
}

#[tokio::test]
async fn the_official_client_works_over_polling_websocket_and_the_upgrade() {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, quick_pings).await.unwrap();
    let guest = user("eio-transports");
    let token = app.token(Role::Guest, &guest, None);
    let cases = [
        (json!({"transports": ["polling"], "upgrade": false}), false),
        (json!({"transports": ["websocket"]}), false),
        (json!({"transports": ["polling", "websocket"]}), true),
    ];
    for (amount, (options, upgrades)) in cases.into_iter().enumerate() {
        let mut client = Sio::open(&app.address, &token, options.clone()).await;
        // `connect`, `connected` and — when the client upgrades, at any
        // point among them — `upgrade`.
        let (mut connect, mut connected, mut upgraded) = (None, false, false);
        while connect.is_none() || !connected || upgraded != upgrades {
            let next = client.recv().await;
            match (next["type"].as_str(), next["event"].as_str()) {
                (Some("connect"), _) => connect = Some(next["transport"].clone()),
                (Some("upgrade"), _) => {
                    assert_eq!(next["transport"], "websocket");
                    upgraded = true;
                }
                (Some("event"), Some("connected")) => connected = true,
                _ => panic!("{options}: unexpected {next}"),
            }
        }
        let first = options["transports"][0].clone();
        assert!(connect == Some(first) || upgrades, "{options}: {connect:?}");
        let ack = client
            .subscribe("guest_card", json!({"guestId": guest}))
            .await;
        assert_eq!(ack["ok"], true, "{options}");
        publish_ok(&app, &points_for(&guest, amount as i64)).await;
        let args = client.event("points_added").await;
        assert_eq!(args[0]["amount"], amount, "{options}");
        assert!(args[1]["offset"].as_u64().is_some());
        client.exit().await;
    }
    all_freed(&app, WAIT).await;
}

#[tokio::test]
async fn the_client_reconnects_by_itself_and_its_acks_keep_working() {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, quick_pings).await.unwrap();
    let guest = user("eio-reconnect");
    let token = app.token(Role::Guest, &guest, None);
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let mut client = Sio::open(
            &app.address,
            &token,
            json!({"transports": transports, "reconnection": true}),
        )
        .await;
        assert_eq!(client.recv().await["type"], "connect");
        client.event("connected").await;
        let ack = client
            .subscribe("guest_card", json!({"guestId": guest}))
            .await;
        assert_eq!(ack["ok"], true);
        // The transport drops under the client; it reconnects by itself.
        client.command(json!({"cmd": "drop"})).await;
        let mut seen = Vec::new();
        loop {
            let next = client.recv().await;
            seen.push(next["type"].as_str().unwrap_or_default().to_owned());
            if next["event"] == "connected" {
                break;
            }
        }
        assert!(
            seen.contains(&"disconnect".to_owned()) && seen.contains(&"reconnect".to_owned()),
            "{seen:?}"
        );
        // A new connection: subscriptions start over, acks answer.
        let ack = client
            .subscribe("guest_card", json!({"guestId": guest}))
            .await;
        assert_eq!(ack["ok"], true, "{transports}");
        let ack = client.request("no_such_event", json!({})).await;
        assert_eq!(ack["error"]["code"], "BAD_REQUEST");
        publish_ok(&app, &points_for(&guest, 9)).await;
        assert_eq!(client.event("points_added").await[0]["amount"], 9);
        client.exit().await;
    }
    all_freed(&app, WAIT).await;
}

#[tokio::test]
async fn protocol_misuse_is_answered_as_the_reference_server_does() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.realtime.max_message_bytes = 4096)
        .await
        .unwrap();
    let error = |code: u8, message: &str| json!({"code": code, "message": message});
    let refused = |res: reqwest::Response| async move {
        assert_eq!(res.status(), 400);
        res.json::<Value>().await.unwrap()
    };

    // Unknown sid, unknown transport, a handshake that is not a GET.
    let unknown = get(&app, "no-such-session").await;
    assert_eq!(refused(unknown).await, error(1, "Session ID unknown"));
    let transport = app
        .client
        .get(format!("{}&transport=carrier-pigeon", base(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(transport).await, error(0, "Transport unknown"));
    let handshake_post = app
        .client
        .post(format!("{}&transport=polling", base(&app)))
        .body("40")
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused(handshake_post).await,
        error(2, "Bad handshake method")
    );

    // A polling session's sid on the wrong transport (no upgrade).
    let sid = polling_handshake(&app).await;
    let wrong = app
        .client
        .get(format!("{}&transport=websocket&sid={sid}", base(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(refused(wrong).await, error(3, "Bad request"));

    // The upgrade, then a second WebSocket on the upgraded sid: closed.
    let token = app.admin_token();
    let res = post(&app, &sid, format!("40{}", json!({"token": token}))).await;
    assert_eq!(res.status(), 200);
    let answer = packets(get(&app, &sid).await).await;
    assert!(answer[0].starts_with("40{\"sid\""), "{answer:?}");
    let upgrade_url = format!("{}&transport=websocket&sid={sid}", ws_base(&app));
    let (mut ws, _) = tokio_tungstenite::connect_async(&upgrade_url)
        .await
        .unwrap();
    ws.send(Message::Text("2probe".into())).await.unwrap();
    assert_eq!(until(&mut ws, "3").await, "3probe");
    ws.send(Message::Text("5".into())).await.unwrap();
    // The session now answers over the socket: an ack to a request.
    ws.send(Message::Text(
        r#"421["subscribe",{"type":"system_events"}]"#.into(),
    ))
    .await
    .unwrap();
    let ack = until(&mut ws, "431").await;
    assert_eq!(ack, r#"431[{"ok":true,"room":"admin:events"}]"#);
    let (mut second, _) = tokio_tungstenite::connect_async(&upgrade_url)
        .await
        .unwrap();
    assert!(
        matches!(second.next().await, Some(Ok(Message::Close(_))) | None),
        "a second WebSocket on an upgraded sid is closed"
    );
    // Polling on the upgraded sid: the wrong transport now.
    assert_eq!(
        refused(get(&app, &sid).await).await,
        error(3, "Bad request")
    );
    drop(ws);

    // A polling body over maxPayload: 413, and the session is gone.
    let sid = polling_handshake(&app).await;
    let big = format!("42[\"subscribe\",\"{}\"]", "x".repeat(8192));
    assert_eq!(post(&app, &sid, big).await.status(), 413);
    assert_eq!(
        refused(get(&app, &sid).await).await,
        error(1, "Session ID unknown")
    );

    // Binary: a binary WebSocket frame closes with 1003; a Socket.IO
    // binary event is refused with an error, then the socket closes.
    let mut ws = raw_websocket(&app, &token).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Unsupported));
    drop(ws);
    let mut ws = raw_websocket(&app, &token).await;
    ws.send(Message::Text(
        r#"451-["subscribe",{"_placeholder":true,"num":0}]"#.into(),
    ))
    .await
    .unwrap();
    let refusal = until(&mut ws, "42[\"error\"").await;
    assert!(refusal.contains("binary"), "{refusal}");
    assert!(
        close_code(&mut ws).await.is_some(),
        "a close frame, not a reset"
    );
    drop(ws);
    // And over long-polling: the session closes.
    let sid = polling_handshake(&app).await;
    post(&app, &sid, format!("40{}", json!({"token": token}))).await;
    packets(get(&app, &sid).await).await;
    post(&app, &sid, "bAQID").await;
    let last = packets(get(&app, &sid).await).await;
    assert_eq!(last.last().map(String::as_str), Some("1"), "{last:?}");

    // A namespace other than `/` is refused.
    let mut ws = raw_websocket(&app, &token).await;
    ws.send(Message::Text("40/admin,".into())).await.unwrap();
    assert_eq!(
        until(&mut ws, "44").await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    drop(ws);
    all_freed(&app, WAIT).await;
}

#[tokio::test]
async fn two_thousand_abandoned_polling_sessions_are_freed_after_the_ping_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.ping_interval_ms = 1_000;
        s.realtime.ping_timeout_ms = 1_000;
        // Longer than the ping timeout: these sessions authenticate, and
        // it is the ping timeout that frees them.
        s.realtime.connect_timeout_ms = 120_000;
        s.realtime.max_pending_handshakes = 10_000;
    })
    .await
    .unwrap();
    const SESSIONS: usize = 2_000;
    let token = app.token(Role::Guest, &user("eio-abandoned"), None);
    let bearer = format!("Bearer {token}");
    let opened = futures::stream::iter(0..SESSIONS)
        .map(|_| {
            let (app, bearer, token) = (&app, &bearer, &token);
            async move {
                // An authenticated handshake (the guard lets it through),
                // CONNECT, the answer — and never a poll again.
                let res = app
                    .client
                    .get(format!("{}&transport=polling", base(app)))
                    .header("authorization", bearer)
                    .send()
                    .await
                    .unwrap();
                let body = res.text().await.unwrap();
                let open: Value = serde_json::from_str(&body[1..]).unwrap();
                let sid = open["sid"].as_str().unwrap().to_owned();
                let res = post(app, &sid, format!("40{}", json!({"token": token}))).await;
                assert_eq!(res.status(), 200);
                let answer = packets(get(app, &sid).await).await;
                answer[0].starts_with("40{\"sid\"")
            }
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(opened, SESSIONS);
    let m = metrics(&app).await;
    assert_eq!(
        metric(
            &m,
            "herald_realtime_connections_total{transport=\"socketio\"}"
        ),
        SESSIONS as f64
    );
    all_freed(&app, Duration::from_secs(60)).await;
    let m = metrics(&app).await;
    assert_eq!(
        metric(&m, "herald_realtime_disconnects_total{reason=\"timeout\"}"),
        SESSIONS as f64
    );
}

/// Connections per round of the soak.
const CONNECTIONS: usize = 2_000;
/// Rounds of the soak after the first.
const ROUNDS: usize = 3;

/// Whether the soak's `i`th connection is a `/ws` one.
fn is_plain_ws(i: usize) -> bool {
    i % 3 == 2
}

/// Opens and closes `CONNECTIONS` connections, 32 at a time, by turns
/// Socket.IO over WebSocket, Socket.IO over long-polling and `/ws`, each
/// authenticated and welcomed before it leaves; then waits until the node
/// holds none.
async fn open_and_close(app: &TestApp, token: &str) {
    let bearer = format!("Bearer {token}");
    let done = futures::stream::iter(0..CONNECTIONS)
        .map(|i| {
            let bearer = &bearer;
            async move {
                if is_plain_ws(i) {
                    let (mut ws, _) = Ws::connect(app, token).await;
                    ws.stream.close(None).await.unwrap();
                    while let Some(Ok(_)) = ws.stream.next().await {}
                } else if i % 3 == 0 {
                    let mut request = format!("{}&transport=websocket", ws_base(app))
                        .into_client_request()
                        .unwrap();
                    request
                        .headers_mut()
                        .insert("authorization", bearer.parse().unwrap());
                    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
                    until(&mut ws, "0").await;
                    ws.send(Message::Text(
                        format!("40{}", json!({"token": token})).into(),
                    ))
                    .await
                    .unwrap();
                    until(&mut ws, "42[\"connected\"").await;
                    ws.close(None).await.unwrap();
                    while let Some(Ok(_)) = ws.next().await {}
                } else {
                    let res = app
                        .client
                        .get(format!("{}&transport=polling", base(app)))
                        .header("authorization", bearer)
                        .send()
                        .await
                        .unwrap();
                    let body = res.text().await.unwrap();
                    let open: Value = serde_json::from_str(&body[1..]).unwrap();
                    let sid = open["sid"].as_str().unwrap().to_owned();
                    post(app, &sid, format!("40{}", json!({"token": token}))).await;
                    let answer = packets(get(app, &sid).await).await;
                    assert!(answer[0].starts_with("40{\"sid\""), "{answer:?}");
                    // The client leaves: Socket.IO DISCONNECT, Engine.IO close.
                    assert_eq!(post(app, &sid, "41\u{1e}1").await.status(), 200);
                }
            }
        })
        .buffer_unordered(32)
        .count()
        .await;
    assert_eq!(done, CONNECTIONS);
    all_freed(app, Duration::from_secs(60)).await;
}

/// 2,000 connections opened and closed, four times over: every session
/// is freed after each round, and the process's resident memory after the
/// last round is where it was after the first (which warms the pools, the
/// caches and the allocator's arenas). A connection that left anything
/// behind, a kilobyte of it, would add 6 MiB over the three rounds.
///
/// In a process of its own, so that its resident memory is its own.
#[test]
fn a_soak_of_two_thousand_connections_gives_back_its_memory() {
    in_a_process_of_its_own("engineio::soak_in_a_process_of_its_own");
}

#[tokio::test]
#[ignore = "run alone by a_soak_of_two_thousand_connections_gives_back_its_memory"]
async fn soak_in_a_process_of_its_own() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.max_pending_handshakes = 10_000;
    })
    .await
    .unwrap();
    let token = app.token(Role::Guest, &user("eio-soak"), None);
    open_and_close(&app, &token).await;
    let warm = rss_kib();
    for _ in 0..ROUNDS {
        open_and_close(&app, &token).await;
    }
    let after = rss_kib();
    eprintln!("resident memory after the first round {warm} KiB, after the last {after} KiB");

    let m = metrics(&app).await;
    let rounds = (ROUNDS + 1) as f64;
    let plain = (0..CONNECTIONS).filter(|&i| is_plain_ws(i)).count() as f64;
    let total = CONNECTIONS as f64 * rounds;
    assert_eq!(
        metric(
            &m,
            "herald_realtime_connections_total{transport=\"socketio\"}"
        ),
        total - plain * rounds
    );
    assert_eq!(
        metric(&m, "herald_realtime_connections_total{transport=\"ws\"}"),
        plain * rounds
    );
    assert_eq!(
        metric(
            &m,
            "herald_realtime_disconnects_total{reason=\"client_disconnect\"}"
        ),
        total
    );
    assert!(sessions(&app).await == 0.0);
    // Slack for what the allocator keeps and the clients' own buffers.
    let slack = 2 * 1024;
    assert!(
        after <= warm + slack,
        "resident memory grew from {warm} KiB to {after} KiB over {ROUNDS} rounds of {CONNECTIONS} connections"
    );
}

#[tokio::test]
async fn a_poll_the_client_abandons_loses_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let guest = user("eio-abandoned-poll");
    let token = app.token(Role::Guest, &guest, None);
    let sid = polling_handshake(&app).await;
    post(&app, &sid, format!("40{}", json!({"token": token}))).await;
    let answer = packets(get(&app, &sid).await).await;
    assert!(answer[1].starts_with("42[\"connected\""), "{answer:?}");
    // A poll the client gives up on: the request is dropped mid-wait.
    let cut = app
        .client
        .get(format!("{}&transport=polling&sid={sid}", base(&app)))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(cut.is_err(), "nothing to say yet: the poll waits");
    // The session still gets its events on the next poll.
    publish_ok(&app, &points_for(&guest, 77)).await;
    let answer = packets(get(&app, &sid).await).await;
    assert!(
        answer
            .iter()
            .any(|p| p.starts_with("42[\"points_added\"") && p.contains("\"amount\":77")),
        "{answer:?}"
    );
    assert_eq!(post(&app, &sid, "1").await.status(), 200);
    all_freed(&app, WAIT).await;
}
