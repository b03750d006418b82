//! The plain WebSocket at `/ws`: the same flows as Socket.IO, the frame
//! protocol, and what bad input gets.

use futures::SinkExt;
use herald_core::{EventKind, Role};
use herald_testkit::{Backend, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::realtime::*;
use super::*;

async fn app() -> TestApp {
    spawn_app(Backend::Sqlite)
        .await
        .expect("sqlite always runs")
}

#[tokio::test]
async fn a_guest_card_page_gets_points_once() {
    let app = app().await;
    let guest = user("ws-guest");
    let (mut ws, connected) = Ws::connect(&app, &app.token(Role::Guest, &guest, None)).await;
    assert_eq!(connected["userId"], guest.as_str());
    assert_eq!(connected["role"], "guest");
    assert!(connected["serverId"].is_string() && connected["timestamp"].is_i64());
    let ack = ws.subscribe("guest_card", json!({"guestId": guest})).await;
    assert_eq!(ack["room"], format!("guest:{guest}"));
    publish_ok(&app, &points_for(&guest, 10)).await;
    publish_ok(&app, &points_for(&guest, 11)).await;
    let first = ws.event("points_added").await;
    assert_eq!(first["data"]["amount"], 10);
    assert!(first["data"]["eventId"].is_string());
    let second = ws.event("points_added").await;
    assert_eq!(second["data"]["amount"], 11, "each event once, in order");
    assert!(second["offset"].as_u64() > first["offset"].as_u64());
}

#[tokio::test]
async fn a_restaurant_dashboard_and_an_admin_console() {
    let app = app().await;
    let r = restaurant();
    let (mut staff, _) = Ws::connect(
        &app,
        &app.token(Role::Restaurant, &user("ws-owner"), Some(&r)),
    )
    .await;
    staff
        .subscribe("points_operations", json!({"restaurantId": r}))
        .await;
    staff
        .subscribe("restaurant_transactions", json!({"restaurantId": r}))
        .await;
    let (mut admin, _) = Ws::connect(&app, &app.admin_token()).await;
    admin.subscribe("system_events", json!({})).await;

    publish_ok(&app, &envelope(EventKind::RestaurantTransaction)).await;
    publish_ok(&app, &points_for(&user("ws-any-guest"), 3)).await;
    publish_ok(&app, &envelope(EventKind::GuestRegistered)).await;
    publish_ok(&app, &envelope(EventKind::SystemAlert)).await;

    staff.event("restaurant_transaction").await;
    staff.event("points_added").await;
    // guest_registered also goes to restaurant:{rid}, which staff auto-join.
    staff.event("guest_registered").await;
    admin.event("guest_registered").await;
    admin.event("system_alert").await;
}

#[tokio::test]
async fn a_guest_gets_none_of_another_guests_hundred_events() {
    let app = app().await;
    let me = user("ws-me");
    let other = user("ws-other");
    let (mut ws, _) = Ws::connect(&app, &app.token(Role::Guest, &me, None)).await;
    ws.send(
        json!({"event": "subscribe", "data": {"type": "guest_card", "data": {"guestId": other}}}),
    )
    .await;
    let error = ws.event("error").await;
    assert_eq!(error["data"]["code"], "UNAUTHORIZED");
    assert!(error["data"]["message"].is_string() && error["data"]["timestamp"].is_i64());
    let batch: Vec<Value> = (0..100).map(|i| points_for(&other, i)).collect();
    publish_ok(&app, &Value::Array(batch)).await;
    publish_ok(&app, &points_for(&me, 1)).await;
    let next = ws.event("points_added").await;
    assert_eq!(next["data"]["guestId"], me.as_str());
}

#[tokio::test]
async fn resume_by_offset_and_by_event_id() {
    let app = app().await;
    let guest = user("ws-resume");
    let token = app.token(Role::Guest, &guest, None);
    let (mut ws, connected) = Ws::connect(&app, &token).await;
    publish_ok(&app, &points_for(&guest, 1)).await;
    let first = ws.event("points_added").await;
    drop(ws);
    for amount in 2..=4 {
        publish_ok(&app, &points_for(&guest, amount)).await;
    }

    // In the handshake: replayed before anything live.
    let url = format!(
        "{}?offset={}&epoch={}",
        ws_url(&app),
        first["offset"],
        connected["epoch"].as_str().unwrap()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = Ws::connect_request(request).await;
    for amount in 2..=4 {
        assert_eq!(ws.event("points_added").await["data"]["amount"], amount);
    }
    let resumed = ws.event("resumed").await;
    assert_eq!(
        (
            resumed["data"]["recovered"].as_bool(),
            resumed["data"]["replayed"].as_u64()
        ),
        (Some(true), Some(3))
    );

    // As a message, by the last event id the client saw.
    let (mut again, _) = Ws::connect(&app, &token).await;
    let (outcome, replayed) = again
        .request_collect("resume", json!({"lastEventId": first["data"]["eventId"]}))
        .await;
    // The replay precedes the ack.
    assert_eq!(outcome["recovered"], true, "{outcome}");
    assert_eq!(outcome["replayed"], 3);
    let amounts: Vec<_> = replayed
        .iter()
        .map(|f| f["data"]["amount"].clone())
        .collect();
    assert_eq!(amounts, [json!(2), json!(3), json!(4)]);
    let unknown = again
        .request("resume", json!({"lastEventId": "not-an-event"}))
        .await;
    assert_eq!(
        (unknown["recovered"].as_bool(), unknown["reason"].as_str()),
        (Some(false), Some("unknown_event"))
    );
    let other_epoch = again
        .request(
            "resume",
            json!({"offset": first["offset"], "epoch": "another"}),
        )
        .await;
    assert_eq!(other_epoch["reason"], "epoch_changed");
}

/// A single node holds history within `realtime.history_bytes`, all rooms
/// together: a gap whose start was evicted is `too_old`, the recent window
/// still replays.
#[tokio::test]
async fn a_gap_evicted_by_the_byte_budget_is_too_old_and_the_rest_replays() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.realtime.history_bytes = 64 << 10)
        .await
        .unwrap();
    let (quiet, busy) = (user("ws-bytes-quiet"), user("ws-bytes-busy"));
    let quiet_token = app.token(Role::Guest, &quiet, None);
    let busy_token = app.token(Role::Guest, &busy, None);
    let (quiet_ws, connected) = Ws::connect(&app, &quiet_token).await;
    drop(quiet_ws);
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    publish_ok(&app, &points_for(&quiet, 1)).await;
    // Another guest's events, enough to push the quiet one out: each event
    // costs the window more than a kilobyte.
    let (mut busy_ws, _) = Ws::connect(&app, &busy_token).await;
    let mut last = Value::Null;
    for round in 0..4 {
        let batch: Vec<Value> = (0..40).map(|i| points_for(&busy, round * 40 + i)).collect();
        publish_ok(&app, &Value::Array(batch)).await;
        for _ in 0..40 {
            last = busy_ws.event("points_added").await;
        }
    }

    // The quiet guest missed one event, which the window no longer holds.
    let (mut again, _) = Ws::connect(&app, &quiet_token).await;
    let outcome = again
        .request(
            "resume",
            json!({"offset": connected["offset"], "epoch": epoch}),
        )
        .await;
    assert_eq!(
        (outcome["recovered"].as_bool(), outcome["reason"].as_str()),
        (Some(false), Some("too_old")),
        "{outcome}"
    );
    assert_eq!(outcome["rooms"], json!([format!("user:{quiet}")]));

    // The busy guest's recent past is still there, replayed once.
    let (mut busy_again, _) = Ws::connect(&app, &busy_token).await;
    let before_last = last["offset"].as_u64().unwrap() - 1;
    let (outcome, replayed) = busy_again
        .request_collect("resume", json!({"offset": before_last, "epoch": epoch}))
        .await;
    assert_eq!(outcome["recovered"], true, "{outcome}");
    assert_eq!(outcome["replayed"], 1);
    assert_eq!(replayed[0]["data"]["eventId"], last["data"]["eventId"]);
}

#[tokio::test]
async fn garbage_frames_get_bad_request_and_the_socket_survives() {
    let app = app().await;
    let (mut ws, _) = Ws::connect(&app, &app.admin_token()).await;
    for frame in [
        Message::Text("not json".into()),
        Message::Text("[1,2,3]".into()),
        Message::Text("{}".into()),
        Message::Text(r#"{"event": 42}"#.into()),
        Message::Text(r#"{"event": "subscribe", "data": {}, "extra": true}"#.into()),
        Message::Text(r#"{"event": "subscribe", "ack": "one"}"#.into()),
        Message::Text(r#"{"event": "subscribe", "data": {"type": "guest_card"}}"#.into()),
        Message::Text(r#"{"event": "resume", "data": {"offset": -1}}"#.into()),
        Message::Text(r#"{"event": "teleport", "data": {}}"#.into()),
        Message::Binary(vec![0, 159, 146, 150].into()),
    ] {
        ws.stream.send(frame.clone()).await.unwrap();
        let error = ws.event("error").await;
        assert_eq!(error["data"]["code"], "BAD_REQUEST", "{frame:?}");
    }
    // Still connected and working.
    let ack = ws.subscribe("system_events", json!({})).await;
    assert_eq!(ack["ok"], true);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.realtime.max_message_bytes = 2048)
        .await
        .unwrap();
    let (mut ws, _) = Ws::connect(&app, &app.admin_token()).await;
    let big = json!({"event": "subscribe", "data": {"type": "x".repeat(4096)}});
    ws.send(big).await;
    let error = ws.event("error").await;
    assert_eq!(error["data"]["code"], "BAD_REQUEST");
    assert!(error["data"]["message"].as_str().unwrap().contains("2048"));
    // The oversized frame is read whole, so the close frame arrives.
    let close = ws.closed().await.expect("a close frame, not a reset");
    assert_eq!(close.code, CloseCode::Size);
}

#[tokio::test]
async fn a_flood_gets_rate_limited_then_closed() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.rate_limit_per_second = 5;
        s.realtime.rate_limit_burst = 10;
    })
    .await
    .unwrap();
    let (mut ws, _) = Ws::connect(&app, &app.admin_token()).await;
    for _ in 0..100 {
        ws.stream
            .feed(Message::Text(
                r#"{"event":"subscribe","data":{"type":"system_events"}}"#.into(),
            ))
            .await
            .unwrap();
    }
    ws.stream.flush().await.unwrap();
    let error = ws.event("error").await;
    assert_eq!(error["data"]["code"], "RATE_LIMITED");
    let close = ws.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
}

#[tokio::test]
async fn bad_tokens_and_cross_site_origins_are_refused_before_the_upgrade() {
    let app = app().await;
    let expired = token_expiring_in(&app, Role::Guest, "g", -3600);
    for (query, status) in [
        (String::new(), 401),
        ("?token=garbage".to_owned(), 401),
        (format!("?token={expired}"), 401),
    ] {
        let request = format!("{}{query}", ws_url(&app))
            .into_client_request()
            .unwrap();
        assert_eq!(Ws::refused(request).await, status, "{query}");
    }
    // ?token= works for browsers.
    let ok = format!("{}?token={}", ws_url(&app), app.admin_token());
    Ws::connect_request(ok.into_client_request().unwrap()).await;
    // Cross-site: 403 before the upgrade.
    let mut request = format!("{}?token={}", ws_url(&app), app.admin_token())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(Ws::refused(request).await, 403);
}

#[tokio::test]
async fn allowed_origins_are_exact() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.allowed_origins = vec!["https://app.example".into()];
    })
    .await
    .unwrap();
    let request = |origin: &'static str| {
        let mut request = format!("{}?token={}", ws_url(&app), app.admin_token())
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    let (_, connected) = Ws::connect_request(request("https://app.example")).await;
    assert_eq!(connected["role"], "admin");
    // A valid token does not help a cross-site page: refused as such.
    for origin in ["https://app.example.evil", "http://app.example"] {
        assert_eq!(Ws::refused(request(origin)).await, 403, "{origin}");
    }
}

#[tokio::test]
async fn a_socket_is_closed_when_its_token_expires() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.auth.leeway_seconds = 0)
        .await
        .unwrap();
    // Whole seconds: it lives 3 to 4 s, time enough to connect when loaded.
    let token = token_expiring_in(&app, Role::Guest, &user("ws-expiring"), 4);
    let (mut ws, _) = Ws::connect(&app, &token).await;
    let error = ws.event("error").await;
    assert_eq!(error["data"]["code"], "UNAUTHORIZED");
    assert_eq!(error["data"]["message"], "token expired");
    let close = ws.closed().await.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
}

/// A WebSocket client that completes the upgrade and then never reads or
/// writes: it cannot even answer a ping.
async fn mute_client(app: &TestApp, receive_buffer: u32) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(receive_buffer).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.admin_token()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    // Read up to the `connected` frame: the session is registered.
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(r#""event":"connected""#) {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("the upgrade answers")
            .unwrap();
        assert!(
            n == 1,
            "closed during the upgrade: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    stream
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.ping_interval_ms = 200;
        s.realtime.ping_timeout_ms = 200;
    })
    .await
    .unwrap();
    let mut stream = mute_client(&app, 64 * 1024).await;
    // Everything the server sends until it hangs up: pings, then
    // `disconnected {reason: "timeout"}` and a close frame.
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut seen))
        .await
        .expect("the server hangs up on a silent client")
        .unwrap();
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.contains(r#""event":"disconnected""#), "{seen}");
    assert!(seen.contains(r#""reason":"timeout""#), "{seen}");
    assert!(seen.contains(r#""reconnectDelay":"#), "{seen}");
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_its_buffer_freed() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.outbound_queue = 8;
        s.server.max_body_bytes = 4 << 20;
    })
    .await
    .unwrap();
    let mut stream = mute_client(&app, 4096).await;
    let text = "x".repeat(2000);
    let mut published = 0;
    let dropped = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(r#"herald_realtime_dropped_total{reason="slow_consumer"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The hub cuts a socket off inside the publish that overflows its
    // queue, so the metric is current when each publish returns.
    for _ in 0..40 {
        let batch: Vec<Value> = (0..200)
            .map(|_| {
                event(
                    EventKind::SystemAlert,
                    &json!({"title": text, "message": text}),
                )
            })
            .collect();
        publish_ok(&app, &Value::Array(batch)).await;
        published += 200;
        let metrics = app.get("/metrics", "").await.text().await.unwrap();
        if dropped(&metrics) > 0 {
            break;
        }
    }
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        dropped(&metrics) > 0,
        "the slow reader was cut off ({published} events)"
    );
    // What it had not read is all it will ever get: far fewer than were sent.
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut seen))
        .await
        .expect("the server hangs up")
        .ok();
    let received = String::from_utf8_lossy(&seen)
        .matches(r#""event":"system_alert""#)
        .count();
    assert!(received < published, "{received} of {published}");
    // Its connection and queue are gone.
    let stats = app.stats().await;
    assert_eq!(stats["totalSockets"], 0, "{stats}");
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"herald_realtime_disconnects_total{reason="slow_consumer"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn admins_see_stats_and_anyone_can_scrape_metrics() {
    let app = app().await;
    let guest = user("stats-guest");
    let token = app.token(Role::Guest, &guest, None);
    let (_one, _) = Ws::connect(&app, &token).await;
    let (mut two, _) = Ws::connect(&app, &token).await;
    two.subscribe("guest_card", json!({"guestId": guest})).await;
    let (_admin, _) = Ws::connect(&app, &app.admin_token()).await;

    let (status, p) = problem(app.get("/v1/admin/stats", &token).await).await;
    assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
    let stats = app.stats().await;
    assert_eq!(stats["connectedUsers"], 2, "{stats}");
    assert_eq!(stats["totalSockets"], 3);
    // user:{guest}, guest:{guest}, user:admin-1, admin
    assert_eq!(stats["rooms"], 4);
    assert_eq!(stats["transports"]["ws"], 3);
    // The delivery backlog: nothing owed yet.
    assert_eq!(stats["queue"], json!({"jobs": 0, "deliveries": {}}));

    publish_ok(&app, &points_for(&guest, 1)).await;
    two.event("points_added").await;
    let res = app.get("/metrics", "").await;
    assert_eq!(res.status(), 200);
    let metrics = res.text().await.unwrap();
    for line in [
        r#"herald_realtime_connections{transport="ws"} 3"#,
        "herald_realtime_rooms 4",
        "herald_realtime_events_published_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains(r#"herald_realtime_messages_sent_total{transport="ws"}"#));
    assert!(metrics.contains(r#"herald_realtime_disconnects_total{reason="server_restart"} 0"#));
}

#[tokio::test]
async fn shutdown_tells_every_client_to_come_back_later() {
    let mut app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.reconnect_delay_ms = 1000;
        s.realtime.reconnect_jitter_ms = 2000;
    })
    .await
    .unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let token = app.token(Role::Guest, &user(&format!("leaving-{i}")), None);
        clients.push(Ws::connect(&app, &token).await.0);
    }
    app.shutdown().await;
    for ws in &mut clients {
        let notice = ws.event("disconnected").await;
        assert_eq!(notice["data"]["reason"], "server_restart");
        let delay = notice["data"]["reconnectDelay"].as_u64().unwrap();
        assert!((1000..=3000).contains(&delay), "{delay}");
        let close = ws.closed().await.expect("a close frame");
        assert_eq!(close.code, CloseCode::Restart);
    }
    // And it is gone: even a valid token finds nobody listening.
    let request = format!("{}?token={}", ws_url(&app), app.admin_token())
        .into_client_request()
        .unwrap();
    match Ws::try_connect(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}")
        }
        other => panic!(
            "expected the connection refused, got {:?}",
            other.map(|(_, res)| res.status())
        ),
    }
}
