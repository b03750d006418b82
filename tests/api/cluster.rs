//! Several Herald nodes on one Redis: fan-out across nodes, resume on
//! another node, and readiness that follows the bus. Each test has its own
//! key prefix, so tests (and CI runs) sharing a Redis do not meet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::Role;
use herald_testkit::{Backend, PrivateRedis, eventually, spawn_app_with};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::realtime::*;
use super::*;

/// A node on `redis` under `prefix`; nodes of one prefix share their
/// token secret, as a deployment's nodes do.
async fn node(redis: &str, prefix: &str) -> TestApp {
    node_on(redis, prefix, None).await
}

/// A node as [`node`], on the database of `peer` (a SQLite file) when given,
/// as a deployment's nodes share theirs.
async fn node_on(redis: &str, prefix: &str, peer: Option<&TestApp>) -> TestApp {
    let (redis, prefix) = (redis.to_owned(), prefix.to_owned());
    let db = peer.map(|p| p.outbox_dir().parent().unwrap().join("herald.db"));
    spawn_app_with(Backend::Sqlite, move |s| {
        s.auth.secret = herald_server::config::Secret::new(format!("{prefix}-shared-secret"));
        s.realtime.redis_url = redis;
        s.realtime.redis_prefix = prefix;
        if let Some(db) = db {
            s.database.url =
                herald_server::config::Secret::new(format!("sqlite://{}", db.display()));
        }
    })
    .await
    .expect("sqlite always runs")
}

fn prefix() -> String {
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn events_published_on_one_node_reach_sockets_on_every_node_once() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = prefix();
    let a = node(&redis, &prefix).await;
    let b = node(&redis, &prefix).await;
    let guest = user("cluster-guest");
    let token = a.token(Role::Guest, &guest, None);
    let (mut on_a, _) = Ws::connect(&a, &token).await;
    let (mut on_b, connected_b) = Ws::connect(&b, &token).await;
    assert_ne!(connected_b["serverId"], a.stats().await["serverId"]);
    on_b.subscribe("guest_card", json!({"guestId": guest}))
        .await;

    publish_ok(&a, &points_for(&guest, 1)).await;
    publish_ok(&b, &points_for(&guest, 2)).await;
    publish_ok(&a, &points_for(&guest, 3)).await;
    for ws in [&mut on_a, &mut on_b] {
        let amounts: Vec<i64> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(
                    ws.event("points_added").await["data"]["amount"]
                        .as_i64()
                        .unwrap(),
                );
            }
            v
        };
        // Once each (b is in guest: and user:), in the one global order.
        assert_eq!(amounts, [1, 2, 3]);
    }
    clear_redis(&redis, &prefix).await;
}

#[tokio::test]
async fn socketio_clients_on_two_nodes_hear_each_other() {
    let Some(redis) = redis_url().await else {
        return;
    };
    if !node_ready() {
        return;
    }
    let prefix = prefix();
    let a = node(&redis, &prefix).await;
    let b = node(&redis, &prefix).await;
    let (mut admin_b, _) = Sio::connect(&b, &b.admin_token()).await;
    admin_b.subscribe("system_events", json!({})).await;
    publish_ok(&a, &envelope(herald_core::EventKind::GuestRegistered)).await;
    admin_b.event("guest_registered").await;
    admin_b.exit().await;
    clear_redis(&redis, &prefix).await;
}

#[tokio::test]
async fn a_client_resumes_on_another_node() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = prefix();
    let a = node(&redis, &prefix).await;
    let b = node(&redis, &prefix).await;
    let guest = user("cluster-resume");
    let token = a.token(Role::Guest, &guest, None);
    let (mut on_a, connected) = Ws::connect(&a, &token).await;
    on_a.subscribe("guest_card", json!({"guestId": guest}))
        .await;
    publish_ok(&a, &points_for(&guest, 1)).await;
    let seen = on_a.event("points_added").await;
    drop(on_a);
    for amount in 2..=4 {
        publish_ok(&b, &points_for(&guest, amount)).await;
    }
    let (mut on_b, _) = Ws::connect(&b, &token).await;
    let (outcome, replayed) = on_b
        .request_collect(
            "resume",
            json!({
                "offset": seen["offset"],
                "epoch": connected["epoch"],
                "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
            }),
        )
        .await;
    assert_eq!(outcome["recovered"], true, "{outcome}");
    let amounts: Vec<_> = replayed
        .iter()
        .map(|f| f["data"]["amount"].as_i64().unwrap())
        .collect();
    assert_eq!(amounts, [2, 3, 4], "exactly the missed events, in order");
    // Live from here, nothing twice.
    publish_ok(&a, &points_for(&guest, 5)).await;
    assert_eq!(on_b.event("points_added").await["data"]["amount"], 5);
    clear_redis(&redis, &prefix).await;
}

/// A TCP proxy to Redis that a test can cut and restore.
struct Proxy {
    port: u16,
    target: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: &str, port: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let target = target.to_owned();
        let (t, to) = (tasks.clone(), target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = to.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                t.lock().unwrap().push(pipe);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy {
            port,
            target,
            tasks,
        }
    }

    /// Cuts every connection and stops listening.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    async fn restore(&self) -> Proxy {
        Proxy::start(&self.target, self.port).await
    }
}

#[tokio::test]
async fn readyz_follows_the_bus() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let target = herald_testkit::redis_server()
        .trim_start_matches("redis://")
        .to_owned();
    let proxy = Proxy::start(&target, 0).await;
    let prefix = prefix();
    let app = node(&format!("redis://127.0.0.1:{}", proxy.port), &prefix).await;
    let ready = || async { app.get("/readyz", "").await.status() == 200 };
    // The reader connects in the background: wait for it.
    eventually("/readyz 200 once the bus reads", WAIT, || async {
        ready().await.then_some(())
    })
    .await;

    proxy.cut();
    let res = app.get("/readyz", "").await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    let realtime = body["checks"]["realtime"].as_str().unwrap();
    assert!(realtime.starts_with("unavailable"), "{body}");
    assert_eq!(body["checks"]["database"], "ok");

    let _restored = proxy.restore().await;
    eventually("/readyz 200 again once Redis is back", WAIT, || async {
        ready().await.then_some(())
    })
    .await;
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(metrics.contains("herald_realtime_bus_up 1"), "{metrics}");
    clear_redis(&redis, &prefix).await;
}

/// Redis killed with SIGKILL under two nodes, events published meanwhile
/// (each answered 202): the publishing node's sockets still get them, every
/// socket is then told to resume, and the resume says truthfully that the
/// history cannot be vouched for — never `recovered` with a gap. The same
/// when Redis comes back from a stale snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_never_silent() {
    for from_snapshot in [false, true] {
        let Some(mut redis) = PrivateRedis::start().await else {
            return;
        };
        let prefix = prefix();
        let a = node(&redis.url(), &prefix).await;
        let b = node_on(&redis.url(), &prefix, Some(&a)).await;
        let guest = user("outage-guest");
        let token = a.token(Role::Guest, &guest, None);
        let (mut on_a, _) = Ws::connect(&a, &token).await;
        let (mut on_b, connected_b) = Ws::connect(&b, &token).await;
        for ws in [&mut on_a, &mut on_b] {
            ws.subscribe("guest_card", json!({"guestId": guest})).await;
        }
        publish_ok(&a, &points_for(&guest, 1)).await;
        let mut last_b = Value::Null;
        for ws in [&mut on_a, &mut on_b] {
            last_b = ws.event("points_added").await;
        }
        if from_snapshot {
            redis.snapshot().await;
        }

        redis.kill().await;
        // A steady publish while Redis is down: every one answered 202.
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        for amount in 2..=21 {
            ticker.tick().await;
            publish_ok(&a, &points_for(&guest, amount)).await;
        }
        // The publishing node's own sockets are served without the bus,
        // in order.
        for amount in 2..=21 {
            assert_eq!(on_a.event("points_added").await["data"]["amount"], amount);
        }
        let ready = a.get("/readyz", "").await;
        assert_eq!(ready.status(), 503, "the bus is down");

        redis.restart().await;
        // Once the bus is back, every socket on both nodes is told to
        // resume: b's never saw 2–4, a's may have missed b's.
        for ws in [&mut on_a, &mut on_b] {
            loop {
                let frame = ws.recv().await;
                if frame["event"] == "disconnected" {
                    assert_eq!(frame["data"]["reason"], "server_restart");
                    break;
                }
                assert_eq!(frame["event"], "points_added", "{frame}");
                let amount = frame["data"]["amount"].as_i64().unwrap();
                assert!(amount >= 22, "b never gets the local-only events: {frame}");
            }
        }
        // Publishing goes on meanwhile (it is what brings the bus back).
        let published = tokio::spawn({
            let body = points_for(&guest, 22);
            let a_addr = a.address.clone();
            let token = a.service_token();
            async move {
                reqwest::Client::new()
                    .post(format!("{a_addr}/v1/events"))
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            }
        });
        assert_eq!(published.await.unwrap(), 202);

        // The resume is truthful: the history cannot vouch for the gap.
        let (mut again, _) = Ws::connect(&b, &token).await;
        let (outcome, replayed) = again
            .request_collect(
                "resume",
                json!({
                    "offset": last_b["offset"],
                    "epoch": connected_b["epoch"],
                    "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
                }),
            )
            .await;
        assert_eq!(outcome["recovered"], false, "{outcome}");
        assert_eq!(outcome["reason"], "epoch_changed", "{outcome}");
        assert!(
            outcome["rooms"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("guest:{guest}"))),
            "{outcome}"
        );
        assert!(replayed.is_empty());
        // Live again on both nodes.
        publish_ok(&b, &points_for(&guest, 23)).await;
        loop {
            let frame = again.event("points_added").await;
            if frame["data"]["amount"] == 23 {
                break;
            }
        }
        for node in [&a, &b] {
            eventually("ready again", WAIT, || async {
                (node.get("/readyz", "").await.status() == 200).then_some(())
            })
            .await;
        }
    }
}

/// Redis loses its history — restarted empty, or from a snapshot taken
/// before the last events — while a client is away: its resume on another
/// node is served from the database, exactly what it missed, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_recovered_from_the_database_after_redis_lost_its_history() {
    for from_snapshot in [false, true] {
        let Some(mut redis) = PrivateRedis::start().await else {
            return;
        };
        let prefix = prefix();
        let a = node(&redis.url(), &prefix).await;
        let b = node_on(&redis.url(), &prefix, Some(&a)).await;
        let guest = user("recovered-guest");
        let token = a.token(Role::Guest, &guest, None);
        let (mut away, connected) = Ws::connect(&b, &token).await;
        away.subscribe("guest_card", json!({"guestId": guest}))
            .await;
        // The official Socket.IO client, on the other node.
        let (mut sio, sio_connected) = Sio::connect(&a, &token).await;
        sio.subscribe("guest_card", json!({"guestId": guest})).await;
        publish_ok(&a, &points_for(&guest, 1)).await;
        let seen = away.event("points_added").await;
        drop(away);
        let sio_seen = sio.event("points_added").await[1]["offset"].clone();
        sio.exit().await;

        if from_snapshot {
            redis.snapshot().await;
        }
        for amount in 2..=3 {
            publish_ok(&a, &points_for(&guest, amount)).await;
        }
        redis.kill().await;
        redis.restart().await;
        for node in [&a, &b] {
            eventually("the bus back", WAIT, || async {
                (node.get("/readyz", "").await.status() == 200).then_some(())
            })
            .await;
        }
        publish_ok(&a, &points_for(&guest, 4)).await;

        let (mut back, _) = Ws::connect(&b, &token).await;
        let (outcome, replayed) = back
            .request_collect(
                "resume",
                json!({
                    "offset": seen["offset"],
                    "epoch": connected["epoch"],
                    "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
                }),
            )
            .await;
        assert_eq!(outcome["recovered"], true, "{outcome}");
        assert_ne!(outcome["epoch"], connected["epoch"], "a new epoch");
        let amounts: Vec<_> = replayed
            .iter()
            .map(|f| f["data"]["amount"].as_i64().unwrap())
            .collect();
        assert_eq!(amounts, [2, 3, 4], "exactly the missed events, in order");
        let resume = json!({
            "epoch": sio_connected["epoch"],
            "offset": sio_seen,
            "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
        });
        let (mut sio, _) = Sio::connect_with(&a.address, &token, json!({"resume": resume})).await;
        let mut amounts = Vec::new();
        for _ in 0..3 {
            amounts.push(
                sio.event("points_added").await[0]["amount"]
                    .as_i64()
                    .unwrap(),
            );
        }
        assert_eq!(amounts, [2, 3, 4], "Socket.IO too: in order, once each");
        let resumed = sio.event("resumed").await;
        assert_eq!(resumed[0]["recovered"], true, "{resumed:?}");

        // Live from here, nothing twice.
        publish_ok(&a, &points_for(&guest, 5)).await;
        assert_eq!(back.event("points_added").await["data"]["amount"], 5);
        assert_eq!(sio.event("points_added").await[0]["amount"], 5);
        sio.exit().await;
    }
}
