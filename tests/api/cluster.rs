//! Several Herald nodes on one Redis: fan-out across nodes, resume on
//! another node, and readiness that follows the bus. Each test has its own
//! key prefix, so tests (and CI runs) sharing a Redis do not meet.

use std::sync::{Arc, Mutex};

use herald_core::Role;
use herald_testkit::{Backend, spawn_app_with};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::realtime::*;
use super::*;

/// A node on `redis` under `prefix`; nodes of one prefix share their
/// token secret, as a deployment's nodes do.
async fn node(redis: &str, prefix: &str) -> TestApp {
    let (redis, prefix) = (redis.to_owned(), prefix.to_owned());
    spawn_app_with(Backend::Sqlite, move |s| {
        s.auth.secret = herald_server::config::Secret::new(format!("{prefix}-shared-secret"));
        s.realtime.redis_url = redis;
        s.realtime.redis_prefix = prefix;
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
    assert_ne!(connected_b["serverId"], on_a_server(&a).await);
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

async fn on_a_server(app: &TestApp) -> Value {
    let stats: Value = app
        .get("/v1/admin/stats", &app.admin_token())
        .await
        .json()
        .await
        .unwrap();
    stats["serverId"].clone()
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
    let target = redis
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = Proxy::start(&target, 0).await;
    let prefix = prefix();
    let app = node(&format!("redis://127.0.0.1:{}", proxy.port), &prefix).await;
    let ready = || async { app.get("/readyz", "").await };
    // The reader connects in the background: wait for it.
    let up = |app_ready: reqwest::Response| app_ready.status() == 200;
    tokio::time::timeout(WAIT, async {
        while !up(ready().await) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("ready once the bus reads");

    proxy.cut();
    let res = ready().await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    let realtime = body["checks"]["realtime"].as_str().unwrap();
    assert!(realtime.starts_with("unavailable"), "{body}");
    assert_eq!(body["checks"]["database"], "ok");

    let _restored = proxy.restore().await;
    tokio::time::timeout(WAIT, async {
        while !up(ready().await) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("ready again once Redis is back");
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(metrics.contains("herald_realtime_bus_up 1"), "{metrics}");
    clear_redis(&redis, &prefix).await;
}
