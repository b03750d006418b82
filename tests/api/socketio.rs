//! The Socket.IO surface, through the official `socket.io-client`: the
//! seed's flows (guest card page, restaurant dashboard, admin console),
//! subscription rules, resume, long-polling and bad input.

use herald_core::{EventKind, Role};
use herald_testkit::{Backend, spawn_app, spawn_app_with};
use serde_json::{Value, json};

use super::realtime::*;
use super::*;

async fn app() -> Option<TestApp> {
    if !node_ready() {
        return None;
    }
    spawn_app(Backend::Sqlite).await
}

#[tokio::test]
async fn the_seed_websocket_service_flow_works_unchanged() {
    let Some(app) = app().await else { return };
    let guest = user("sio-seed-guest");
    let token = app.token(Role::Guest, &guest, None);
    // The seed's options: auth token, websocket then polling.
    let (mut client, connected) = Sio::connect_with(
        &app.address,
        &token,
        json!({"transports": ["websocket", "polling"]}),
    )
    .await;
    assert_eq!(connected["userId"], guest.as_str());
    assert_eq!(connected["role"], "guest");
    assert!(connected["timestamp"].as_i64().unwrap() > 0);
    assert!(!connected["serverId"].as_str().unwrap().is_empty());
    // websocketService.subscribe emits without an ack.
    client
        .emit(
            "subscribe",
            json!({"type": "guest_card", "data": {"guestId": guest}}),
        )
        .await;
    // Fire and forget: prove the subscription landed before publishing.
    let ack = client
        .subscribe("guest_card", json!({"guestId": guest}))
        .await;
    assert_eq!(ack, json!({"ok": true, "room": format!("guest:{guest}")}));
    let sent = points_for(&guest, 120);
    publish_ok(&app, &sent).await;
    let args = client.event("points_added").await;
    assert_eq!(args[0]["amount"], 120);
    assert_eq!(args[0]["guestId"], guest.as_str());
    assert!(uuid::Uuid::parse_str(args[0]["eventId"].as_str().unwrap()).is_ok());
    assert!(args[1]["offset"].as_u64().unwrap() > connected["offset"].as_u64().unwrap());
    // It is in guest:{id} and user:{id}; it arrives once: the next event
    // is the next one published.
    publish_ok(&app, &points_for(&guest, 121)).await;
    assert_eq!(client.event("points_added").await[0]["amount"], 121);
    client.exit().await;
}

#[tokio::test]
async fn a_restaurant_dashboard_sees_transactions_and_points() {
    let Some(app) = app().await else { return };
    let r = restaurant();
    let token = app.token(Role::Cashier, &user("sio-cashier"), Some(&r));
    let (mut client, _) = Sio::connect(&app, &token).await;
    assert_eq!(
        client
            .subscribe("points_operations", json!({"restaurantId": r}))
            .await["room"],
        format!("restaurant:{r}:points")
    );
    client
        .subscribe("restaurant_transactions", json!({"restaurantId": r}))
        .await;
    // restaurant_transaction targets both rooms; it arrives once.
    publish_ok(
        &app,
        &event(EventKind::RestaurantTransaction, &json!({"amount": 990})),
    )
    .await;
    publish_ok(&app, &points_for(&user("sio-some-guest"), 15)).await;
    let tx = client.event("restaurant_transaction").await;
    assert_eq!(tx[0]["amount"], 990);
    let points = client.event("points_added").await;
    assert_eq!(points[0]["amount"], 15);
    // card_created goes to restaurant:{rid}, which staff join on connect.
    publish_ok(&app, &envelope(EventKind::CardCreated)).await;
    client.event("card_created").await;
    client.exit().await;
}

#[tokio::test]
async fn an_admin_sees_registrations_and_alerts() {
    let Some(app) = app().await else { return };
    let (mut client, connected) = Sio::connect(&app, &app.admin_token()).await;
    assert_eq!(connected["role"], "admin");
    client.subscribe("system_events", json!({})).await;
    publish_ok(&app, &envelope(EventKind::GuestRegistered)).await;
    // system_alert targets admin:events and admin: once.
    publish_ok(
        &app,
        &event(EventKind::SystemAlert, &json!({"level": "critical"})),
    )
    .await;
    assert_eq!(
        client.event("guest_registered").await[0]["guestId"],
        EventKind::GuestRegistered.example()["guestId"]
    );
    assert_eq!(client.event("system_alert").await[0]["level"], "critical");
    publish_ok(&app, &envelope(EventKind::AdminNotification)).await;
    client.event("admin_notification").await;
    client.exit().await;
}

#[tokio::test]
async fn a_guest_cannot_follow_another_guests_card() {
    let Some(app) = app().await else { return };
    let me = user("sio-me");
    let other = user("sio-other");
    let (mut client, _) = Sio::connect(&app, &app.token(Role::Guest, &me, None)).await;
    let ack = client
        .subscribe("guest_card", json!({"guestId": other}))
        .await;
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["error"]["code"], "UNAUTHORIZED");
    client
        .emit(
            "subscribe",
            json!({"type": "guest_card", "data": {"guestId": other}}),
        )
        .await;
    // Asked without an ack, the second time: refused with an `error` event.
    let refusal = client.recv().await;
    assert_eq!(refusal["event"], "error", "{refusal}");
    assert_eq!(refusal["args"][0]["code"], "UNAUTHORIZED");
    // Then of a hundred events for the other guest and one of mine, only
    // mine arrives.
    let batch: Vec<Value> = (0..100).map(|i| points_for(&other, i)).collect();
    publish_ok(&app, &Value::Array(batch)).await;
    publish_ok(&app, &points_for(&me, 7)).await;
    let next = client.event("points_added").await;
    assert_eq!(
        next[0]["guestId"],
        me.as_str(),
        "none of the other guest's events arrived"
    );
    client.exit().await;
}

#[tokio::test]
async fn subscriptions_answer_contract_error_codes() {
    let Some(app) = app().await else { return };
    let staff = app.token(Role::Restaurant, &user("sio-staff"), Some("r-1"));
    let (mut client, _) = Sio::connect(&app, &staff).await;
    let cases = [
        (json!({"type": "system_events"}), "UNAUTHORIZED"),
        (
            json!({"type": "points_operations", "data": {"restaurantId": "r-2"}}),
            "UNAUTHORIZED",
        ),
        (
            json!({"type": "everything", "data": {}}),
            "INVALID_SUBSCRIPTION",
        ),
        (json!({"type": "guest_card"}), "BAD_REQUEST"),
        (json!("guest_card"), "BAD_REQUEST"),
        (json!(null), "BAD_REQUEST"),
    ];
    for (request, code) in cases {
        let ack = client.request("subscribe", request.clone()).await;
        assert_eq!(ack["error"]["code"], code, "{request}");
    }
    let ack = client
        .request("action_confirm", json!({"actionId": "x"}))
        .await;
    assert_eq!(ack["error"]["code"], "BAD_REQUEST");
    let ack = client.request("no_such_event", json!({})).await;
    assert_eq!(ack["error"]["code"], "BAD_REQUEST");
    client.exit().await;
}

#[tokio::test]
async fn long_polling_works() {
    let Some(app) = app().await else { return };
    let guest = user("sio-polling");
    let mut client = Sio::open(
        &app.address,
        &app.token(Role::Guest, &guest, None),
        json!({"transports": ["polling"]}),
    )
    .await;
    let connect = client.recv().await;
    assert_eq!(
        (connect["type"].as_str(), connect["transport"].as_str()),
        (Some("connect"), Some("polling"))
    );
    client.event("connected").await;
    client
        .subscribe("guest_card", json!({"guestId": guest}))
        .await;
    publish_ok(&app, &points_for(&guest, 33)).await;
    assert_eq!(client.event("points_added").await[0]["amount"], 33);
    client.exit().await;
}

#[tokio::test]
async fn resume_after_a_disconnect_replays_exactly_what_was_missed() {
    let Some(app) = app().await else { return };
    let guest = user("sio-resume");
    let token = app.token(Role::Guest, &guest, None);
    let (mut client, connected) = Sio::connect(&app, &token).await;
    let epoch = connected["epoch"].as_str().unwrap().to_owned();
    client
        .subscribe("guest_card", json!({"guestId": guest}))
        .await;
    publish_ok(&app, &points_for(&guest, 1)).await;
    let seen = client.event("points_added").await;
    let last = seen[1]["offset"].as_u64().unwrap();
    client.exit().await;

    // Missed while away: three for me, and noise for someone else.
    for amount in [2, 3, 4] {
        publish_ok(&app, &points_for(&guest, amount)).await;
        publish_ok(&app, &points_for(&user("sio-resume-noise"), amount)).await;
    }

    let resume = json!({
        "epoch": epoch,
        "offset": last,
        "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
    });
    let (mut client, _) = Sio::connect_with(&app.address, &token, json!({"resume": resume})).await;
    let amounts: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            let args = client.event("points_added").await;
            assert_eq!(args[0]["guestId"], guest.as_str());
            v.push(args[0]["amount"].as_i64().unwrap());
        }
        v
    };
    assert_eq!(amounts, [2, 3, 4], "in order, once each");
    let resumed = client.event("resumed").await;
    assert_eq!(resumed[0]["recovered"], true, "{resumed:?}");
    assert_eq!(resumed[0]["replayed"], 3);
    // Live again, and nothing replayed twice.
    publish_ok(&app, &points_for(&guest, 5)).await;
    assert_eq!(client.event("points_added").await[0]["amount"], 5);
    client.exit().await;
}

#[tokio::test]
async fn a_gap_older_than_the_window_is_not_recovered() {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |s| s.realtime.history_max_events = 2)
        .await
        .unwrap();
    let guest = user("sio-too-old");
    let token = app.token(Role::Guest, &guest, None);
    let (client, connected) = Sio::connect(&app, &token).await;
    client.exit().await;
    for amount in 1..=3 {
        publish_ok(&app, &points_for(&guest, amount)).await;
    }
    let resume = json!({"offset": connected["offset"], "epoch": connected["epoch"]});
    let (mut client, _) = Sio::connect_with(&app.address, &token, json!({"resume": resume})).await;
    let resumed = client.event("resumed").await;
    assert_eq!(resumed[0]["recovered"], false);
    assert_eq!(resumed[0]["reason"], "too_old");
    assert_eq!(resumed[0]["rooms"], json!([format!("user:{guest}")]));
    // A resume from the new position works.
    let again = client
        .request("resume", json!({"offset": resumed[0]["offset"]}))
        .await;
    assert_eq!(
        (again["recovered"].as_bool(), again["replayed"].as_u64()),
        (Some(true), Some(0))
    );
    client.exit().await;
}

#[tokio::test]
async fn bad_and_expired_tokens_are_refused_at_the_handshake() {
    let Some(app) = app().await else { return };
    let expired = token_expiring_in(&app, Role::Guest, "g", -3600);
    for (token, words) in [
        ("", "missing token"),
        ("not-a-token", "malformed"),
        (expired.as_str(), "expired"),
    ] {
        let mut client = Sio::open(&app.address, token, json!({"transports": ["websocket"]})).await;
        let first = client.recv().await;
        assert_eq!(first["type"], "connect_error", "{first}");
        let message = first["message"].as_str().unwrap();
        assert!(
            message.starts_with("UNAUTHORIZED") && message.contains(words),
            "{message}"
        );
        assert!(
            token.is_empty() || !message.contains(token),
            "the token is not echoed"
        );
        client.exit().await;
    }
}

#[tokio::test]
async fn a_cross_site_origin_is_refused() {
    let Some(app) = app().await else { return };
    let token = app.admin_token();
    let mut client = Sio::open(
        &app.address,
        &token,
        json!({"transports": ["websocket"], "extraHeaders": {"Origin": "https://evil.example"}}),
    )
    .await;
    let first = client.recv().await;
    assert_eq!(first["type"], "connect_error", "{first}");
    client.exit().await;
    // Same origin passes.
    let (client, _) = Sio::connect_with(
        &app.address,
        &token,
        json!({"transports": ["websocket"], "extraHeaders": {"Origin": app.address}}),
    )
    .await;
    client.exit().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed() {
    let Some(app) = app().await else { return };
    let (mut client, _) = Sio::connect(&app, &app.admin_token()).await;
    client
        .command(json!({"cmd": "flood", "event": "subscribe", "data": {"type": "system_events"}, "count": 500}))
        .await;
    let mut saw_limit = false;
    loop {
        let next = client.recv().await;
        if next["event"] == "error" && next["args"][0]["code"] == "RATE_LIMITED" {
            saw_limit = true;
        }
        if next["type"] == "disconnect" {
            break;
        }
    }
    assert!(saw_limit, "told RATE_LIMITED before the close");
    client.exit().await;
}

#[tokio::test]
async fn shutdown_tells_socketio_clients_to_reconnect() {
    if !node_ready() {
        return;
    }
    let mut app = spawn_app(Backend::Sqlite).await.unwrap();
    let (mut client, _) = Sio::connect(&app, &app.admin_token()).await;
    app.shutdown().await;
    let notice = client.event("disconnected").await;
    assert_eq!(notice[0]["reason"], "server_restart");
    assert!(notice[0]["reconnectDelay"].as_u64().unwrap() >= 1000);
    // A transport close, not a server-side disconnect: socket.io-client
    // reconnects by itself.
    let next = client.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["reason"].as_str()),
        (Some("disconnect"), Some("transport close"))
    );
    client.exit().await;
}

#[tokio::test]
async fn long_polling_answers_cors_for_allowed_origins_only() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.allowed_origins = vec!["https://app.example".into()];
    })
    .await
    .unwrap();
    let handshake = |origin: &'static str| {
        app.client
            .get(format!(
                "{}/socket.io/?EIO=4&transport=polling",
                app.address
            ))
            .header("origin", origin)
            .send()
    };
    let res = handshake("https://app.example").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    let res = handshake("https://elsewhere.example").await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(!res.headers().contains_key("access-control-allow-origin"));
}
