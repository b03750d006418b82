//! Faults and abuse: an unauthenticated handshake flood, a session that
//! never authenticates, `/readyz` while Redis or the database is down and
//! after it returns, and an oversized `/ws` message.
//!
//! Real processes throughout: a private `redis-server` that the test kills
//! and restarts, the test PostgreSQL made unreachable and reachable again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald_core::Role;
use herald_server::config::Secret;
use herald_testkit::{Backend, PrivateRedis, eventually, spawn_app_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::realtime::*;
use super::*;

/// A metric's value in a Prometheus exposition (`name` with its labels).
fn metric(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

async fn metrics(app: &TestApp) -> String {
    app.get("/metrics", "").await.text().await.unwrap()
}

fn handshake_url(app: &TestApp) -> String {
    format!("{}/socket.io/?EIO=4&transport=polling", app.address)
}

#[tokio::test]
async fn an_unauthenticated_handshake_flood_is_refused_and_leaves_nothing_behind() {
    if !node_ready() {
        return;
    }
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.connect_timeout_ms = 2_000;
        s.realtime.max_pending_handshakes = 500;
        s.realtime.handshakes_per_second_per_address = 20;
        s.realtime.handshake_burst_per_address = 40;
        // The flood comes from "many addresses" through a trusted balancer.
        s.realtime.trust_forwarded_for = true;
    })
    .await
    .unwrap();
    let guest = user("flood-guest");
    let token = app.token(Role::Guest, &guest, None);
    // An authenticated client shows its token on the handshake too, so the
    // flood it resembles does not lock it out.
    let honest = json!({"extraHeaders": {"Authorization": format!("Bearer {token}")}});
    let (mut before, _) = Sio::connect_with(&app.address, &token, honest.clone()).await;
    let rss_before = rss_kib();

    // 50,000 handshakes without a token, 256 in flight: half from one
    // address (its rate bites), half from as many addresses (the cap bites).
    const FLOOD: usize = 50_000;
    let flooder = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = handshake_url(&app);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let flood = {
        let (flooder, url, peak) = (flooder.clone(), url.clone(), peak.clone());
        tokio::spawn(async move {
            futures::stream::iter(0..FLOOD)
                .map(|i| {
                    let (flooder, url, peak) = (flooder.clone(), url.clone(), peak.clone());
                    async move {
                        let from = if i % 2 == 0 {
                            "198.51.100.7".to_owned()
                        } else {
                            format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
                        };
                        let status = flooder
                            .get(&url)
                            .header("x-forwarded-for", from)
                            .send()
                            .await
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        if i % 500 == 0 {
                            peak.fetch_max(rss_kib(), Ordering::Relaxed);
                        }
                        status
                    }
                })
                .buffer_unordered(256)
                .fold(
                    HashMap::<u16, usize>::new(),
                    |mut counts, status| async move {
                        *counts.entry(status).or_default() += 1;
                        counts
                    },
                )
                .await
        })
    };

    // During the flood: once handshakes are being refused, a client with a
    // token still connects, and both clients get an event.
    eventually("handshakes refused", Duration::from_secs(60), || async {
        let m = metrics(&app).await;
        let refused = metric(
            &m,
            "herald_realtime_handshakes_refused_total{reason=\"cap\"}",
        ) + metric(
            &m,
            "herald_realtime_handshakes_refused_total{reason=\"rate\"}",
        );
        (refused > 0.0).then_some(())
    })
    .await;
    let (mut during, _) = Sio::connect_with(&app.address, &token, honest.clone()).await;
    publish_ok(&app, &points_for(&guest, 1)).await;
    for client in [&mut before, &mut during] {
        let args = client.event("points_added").await;
        assert_eq!(args[0]["amount"], 1);
    }

    let counts = tokio::time::timeout(Duration::from_secs(300), flood)
        .await
        .expect("the flood ends in time")
        .unwrap();
    let rss_peak = peak.load(Ordering::Relaxed).max(rss_kib());
    let ok = counts.get(&200).copied().unwrap_or(0);
    let rate = counts.get(&429).copied().unwrap_or(0);
    let cap = counts.get(&503).copied().unwrap_or(0);
    eprintln!("flood of {FLOOD}: {counts:?}");
    assert_eq!(ok + rate + cap, FLOOD, "only 200, 429 and 503: {counts:?}");
    assert!(rate > 0 && cap > 0, "{counts:?}");
    assert!(
        rate + cap >= FLOOD / 2,
        "most handshakes are refused: {counts:?}"
    );
    let m = metrics(&app).await;
    assert_eq!(
        metric(
            &m,
            "herald_realtime_handshakes_refused_total{reason=\"rate\"}"
        ),
        rate as f64
    );
    assert_eq!(
        metric(
            &m,
            "herald_realtime_handshakes_refused_total{reason=\"cap\"}"
        ),
        cap as f64
    );

    // Every session the flood opened times out and is freed.
    eventually(
        "no sessions pending authentication",
        Duration::from_secs(30),
        || async {
            let m = metrics(&app).await;
            (metric(&m, "herald_realtime_pending_handshakes") == 0.0).then_some(())
        },
    )
    .await;
    drop(flooder);

    // After the flood: the clients still get events.
    publish_ok(&app, &points_for(&guest, 2)).await;
    for client in [&mut before, &mut during] {
        let args = client.event("points_added").await;
        assert_eq!(args[0]["amount"], 2);
    }

    // The measure of memory held is the pending gauge above: in-process
    // RSS is shared with the test's own client and other tests, and the
    // test allocator keeps freed pages. RSS is still bounded, generously:
    // unguarded, 50,000 sessions held about 500 MiB for 45 s each.
    let slack = 256 * 1024;
    let rss_after = eventually("memory back", Duration::from_secs(60), || async {
        let now = rss_kib();
        (now <= rss_before + slack).then_some(now)
    })
    .await;
    eprintln!(
        "RSS before {} MiB, peak {} MiB, after {} MiB",
        rss_before / 1024,
        rss_peak / 1024,
        rss_after / 1024
    );
    before.exit().await;
    during.exit().await;
}

#[tokio::test]
async fn a_session_that_never_authenticates_is_closed_after_the_connect_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        // Long enough that the gauge is read before the session goes,
        // even on a loaded machine.
        s.realtime.connect_timeout_ms = 2_000;
    })
    .await
    .unwrap();
    let open = app.client.get(handshake_url(&app)).send().await.unwrap();
    assert_eq!(open.status(), 200);
    let body = open.text().await.unwrap();
    let handshake: Value = serde_json::from_str(body.trim_start_matches('0')).unwrap();
    let sid = handshake["sid"].as_str().unwrap().to_owned();
    let pending = metric(&metrics(&app).await, "herald_realtime_pending_handshakes");
    assert_eq!(pending, 1.0);

    // No CONNECT: the session is closed and forgotten, and the count with it.
    eventually("the session closed", WAIT, || async {
        let m = metrics(&app).await;
        (metric(&m, "herald_realtime_pending_handshakes") == 0.0).then_some(())
    })
    .await;
    let poll = app
        .client
        .get(format!("{}&sid={sid}", handshake_url(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 400, "an unknown session by now");
}

#[tokio::test]
async fn handshakes_without_a_token_are_rate_limited_per_address_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.handshakes_per_second_per_address = 1;
        s.realtime.handshake_burst_per_address = 3;
    })
    .await
    .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let res = app.client.get(handshake_url(&app)).send().await.unwrap();
        statuses.push(res.status().as_u16());
        if res.status() == 429 {
            assert!(res.headers().get("retry-after").is_some());
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    // /ws upgrades without a token count against the same allowance.
    let ws = app.client.get(format!("{}/ws", app.address)).send().await;
    assert_eq!(ws.unwrap().status(), 429);
    // A token passes whatever the allowance.
    let (ws, _) = Ws::connect(&app, &app.admin_token()).await;
    drop(ws);
}

#[tokio::test]
async fn a_one_mebibyte_ws_message_closes_with_1009() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let (mut ws, _) = Ws::connect(&app, &app.admin_token()).await;
    let big = json!({"event": "subscribe", "data": {"type": "x".repeat(1 << 20)}});
    ws.stream
        .send(Message::Text(big.to_string().into()))
        .await
        .unwrap();
    let close = ws.closed().await.expect("a close frame, not a reset");
    assert_eq!(close.code, CloseCode::Size);
    assert!(!close.reason.is_empty());
}

// ---------------------------------------------------------------------------
// Dependencies down and back.

/// `/readyz`, and how long it took to answer.
async fn readyz(app: &TestApp) -> (u16, Value, Duration) {
    let started = Instant::now();
    let res = app.get("/readyz", "").await;
    let took = started.elapsed();
    (res.status().as_u16(), res.json().await.unwrap(), took)
}

async fn ready_again(app: &TestApp) {
    eventually("/readyz 200", Duration::from_secs(30), || async {
        (readyz(app).await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn readiness_follows_redis_down_and_back_and_nothing_answers_500_after() {
    let Some(mut redis) = PrivateRedis::start().await else {
        return;
    };
    let url = redis.url();
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.realtime.redis_url = url.clone();
        s.realtime.redis_prefix = format!("herald-guard-{}", uuid::Uuid::new_v4().simple());
        s.delivery.queue_url = Secret::new(url.clone());
    })
    .await
    .unwrap();
    let admin = app.admin_token();
    ready_again(&app).await;
    assert!(app.stats().await["queue"]["jobs"].is_u64());

    redis.kill().await;
    let (status, body, took) = readyz(&app).await;
    eprintln!("/readyz with Redis down: {status} in {took:?}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(
        body["checks"]["queue"]
            .as_str()
            .unwrap()
            .starts_with("unavailable")
    );
    assert_eq!(body["checks"]["database"], "ok");
    // A REST call that needs the queue says so: 503 with Retry-After.
    let stats = app.get("/v1/admin/stats", &admin).await;
    assert_eq!(stats.status(), 503);
    assert!(stats.headers().get("retry-after").is_some());
    let problem: Value = stats.json().await.unwrap();
    assert_eq!(problem["code"], "unavailable");

    // Back on the same port.
    redis.restart().await;
    ready_again(&app).await;
    assert!(app.stats().await["queue"]["jobs"].is_u64());

    // Down and back again with no request in between: the first request
    // that needs the queue meets the connection that broke meanwhile, and
    // still answers.
    redis.kill().await;
    redis.restart().await;
    assert!(app.stats().await["queue"]["jobs"].is_u64());
    ready_again(&app).await;
    redis.kill().await;
}

#[tokio::test]
async fn readiness_follows_the_database_down_and_back() {
    let database_url = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = database_url.clone();
    let Some(app) = spawn_app_with(Backend::Postgres, move |s| {
        *seen.lock().unwrap() = s.database.url.expose().to_owned();
    })
    .await
    else {
        return;
    };
    let url = database_url.lock().unwrap().clone();
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin_url = format!("{base}/postgres");
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    ready_again(&app).await;

    // Nobody may connect, and the app's connections are cut.
    // `name` is the test's own database, made by the testkit.
    let alter = |allow: bool| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}"
        ))
    };
    sqlx::query(alter(false)).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&admin)
        .await
        .unwrap();
    let (status, body, took) = readyz(&app).await;
    eprintln!("/readyz with the database down: {status} in {took:?}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(
        body["checks"]["database"]
            .as_str()
            .unwrap()
            .starts_with("unavailable")
    );

    sqlx::query(alter(true)).execute(&admin).await.unwrap();
    ready_again(&app).await;
    // REST reads work again at once.
    let guest = user("db-back");
    let res = app
        .get("/v1/notifications", &app.token(Role::Guest, &guest, None))
        .await;
    assert_eq!(res.status(), 200);
}
