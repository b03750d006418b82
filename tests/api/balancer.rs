//! Herald behind nginx, configured by `deploy/nginx/herald.conf`: two nodes
//! on one PostgreSQL and one Redis, the official `socket.io-client` over
//! long-polling and over WebSocket through the balancer, REST through it,
//! then the client's node dies: the client reconnects through nginx to the
//! other node and resumes without losing an event.
//!
//! Each node runs in a tokio runtime of its own, so killing it (dropping the
//! runtime) ends its listener, its sockets and its database connections at
//! once, without the `server_restart` of a graceful stop — as a crash would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_core::Role;
use herald_server::Application;
use herald_server::auth::Authenticator;
use herald_server::config::{Secret, Settings};
use herald_store::scratch::ScratchDatabase;
use herald_testkit::{eventually, skip};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::realtime::*;
use super::*;

const NGINX: &str = "/usr/sbin/nginx";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether nginx from Debian's package is installed (the test is skipped
/// without it, or fails when services are required).
fn nginx_installed() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    skip(
        "nginx is not installed",
        &format!("{NGINX} is missing: apt-get install nginx"),
    );
    false
}

/// A `herald serve` node in a runtime of its own.
struct Node {
    runtime: Option<tokio::runtime::Runtime>,
    port: u16,
}

impl Node {
    async fn start(settings: Settings) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("node runtime");
        let (ready, started) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let app = Application::build(settings).await.expect("node builds");
            let _ = ready.send(app.local_addr().port());
            let _ = app.run_until(std::future::pending::<()>()).await;
        });
        let port = started.await.expect("node starts");
        Node {
            runtime: Some(runtime),
            port,
        }
    }

    /// Ends everything the node runs, at once.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nginx with Herald's configuration in front of `ports`.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    async fn start(ports: &[u16]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("herald-nginx-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let site = std::fs::read_to_string(repo_root().join("deploy/nginx/herald.conf"))
            .expect("deploy/nginx/herald.conf");
        assert!(site.contains("listen 80;"), "the site listens on port 80");
        std::fs::write(
            dir.join("herald.conf"),
            site.replace("listen 80;", &format!("listen 127.0.0.1:{port};")),
        )
        .unwrap();
        let nodes: String = ports
            .iter()
            .map(|p| format!("server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n"))
            .collect();
        std::fs::write(dir.join("herald-nodes.conf"), nodes).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include herald.conf;\n}}\n"
            ),
        )
        .unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let address = format!("127.0.0.1:{port}");
        eventually("nginx listens", Duration::from_secs(10), || {
            let address = address.clone();
            async move {
                tokio::net::TcpStream::connect(address)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        Nginx { child, dir, port }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deployment's settings for one node: shared database, Redis, prefix and
/// secret; its own port, files and name.
fn node_settings(database: &str, redis: &str, prefix: &str, name: &str, dir: &Path) -> Settings {
    let mut s = Settings::load(None).expect("default settings load");
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.server.data_dir = dir.join(name);
    s.database.url = Secret::new(database.to_owned());
    s.database.max_connections = 4;
    s.auth.secret = Secret::new(format!("{prefix}-shared-secret"));
    s.realtime.redis_url = redis.to_owned();
    s.realtime.redis_prefix = prefix.to_owned();
    s.realtime.server_id = name.to_owned();
    s.realtime.trust_forwarded_for = true;
    s.delivery.queue_url = Secret::new(format!(
        "sqlite://{}",
        dir.join(name).join("queue.db").display()
    ));
    s.delivery.workers_in_serve = false;
    s.channels.outbox_dir = dir.join(name).join("outbox");
    s.routing.file = repo_root().join("config/routing.toml");
    s.templates.dir = repo_root().join("templates");
    s.validate().expect("node settings are valid");
    s
}

/// Publishes as a producer behind a balancer should: with an idempotency
/// key, sending the same request again when the balancer answers 502 (nginx
/// does not resend a POST whose node died under it). Herald answers a
/// repeated key with the first result, so a retry never doubles an event.
async fn publish_through(client: &reqwest::Client, address: &str, token: &str, body: &Value) {
    let mut body = body.clone();
    body["id"] = json!(format!("balancer-{}", uuid::Uuid::new_v4()));
    for attempt in 1.. {
        let res = client
            .post(format!("{address}/v1/events"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("POST /v1/events through nginx");
        let status = res.status();
        // nginx has marked the dead node failed with that 502: the same
        // request goes to the node left.
        if status == 502 && attempt < 5 {
            continue;
        }
        assert_eq!(status, 202, "{}", res.text().await.unwrap_or_default());
        return;
    }
}

/// The next line the client printed of `kind`, passing over others.
async fn next_of(client: &mut Sio, kind: &str) -> Value {
    loop {
        let line = client.recv().await;
        if line["type"] == kind {
            return line;
        }
    }
}

async fn failover(transport: &str) {
    let Some(redis) = redis_url().await else {
        return;
    };
    if !node_ready() || !nginx_installed() {
        return;
    }
    let Some(scratch) = ScratchDatabase::create("herald_test_balancer_").await else {
        return;
    };
    let database = scratch.url().to_owned();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("herald-test-{tag}");
    let dir = std::env::temp_dir().join(format!("herald-balancer-{tag}"));

    let first = node_settings(&database, &redis, &prefix, "node-a", &dir);
    let auth = Authenticator::from_settings(&first.auth).unwrap();
    // One node at a time: the first applies the migrations.
    let a = Node::start(first).await;
    let b = Node::start(node_settings(&database, &redis, &prefix, "node-b", &dir)).await;
    let mut nodes = [a, b];
    let nginx = Nginx::start(&[nodes[0].port, nodes[1].port]).await;
    let http = reqwest::Client::new();
    let service = auth
        .mint(
            Role::Service,
            "balancer-test",
            None,
            Duration::from_secs(600),
        )
        .unwrap();
    let guest = user(&format!("balancer-{tag}"));
    let token = auth
        .mint(Role::Guest, &guest, None, Duration::from_secs(600))
        .unwrap();

    // REST through the balancer: ready once the nodes' bus readers, which
    // connect in the background, read.
    eventually(
        "/readyz 200 through the balancer",
        Duration::from_secs(20),
        || async {
            let ready = http
                .get(format!("{}/readyz", nginx.address()))
                .send()
                .await
                .unwrap();
            (ready.status() == 200).then_some(())
        },
    )
    .await;

    let (mut client, connected) =
        Sio::connect_with(&nginx.address(), &token, json!({"transports": [transport]})).await;
    let epoch = connected["epoch"].clone();
    let served_by = connected["serverId"].as_str().unwrap().to_owned();
    client
        .subscribe("guest_card", json!({"guestId": guest}))
        .await;
    publish_through(&http, &nginx.address(), &service, &points_for(&guest, 1)).await;
    let seen = client.event("points_added").await;
    assert_eq!(seen[0]["amount"], 1);
    let last = seen[1]["offset"].clone();

    // The client's node dies.
    let victim = if served_by == "node-a" { 0 } else { 1 };
    nodes[victim].kill();
    next_of(&mut client, "disconnect").await;

    // Published meanwhile, through the balancer, to the node left.
    for amount in 2..=4 {
        publish_through(
            &http,
            &nginx.address(),
            &service,
            &points_for(&guest, amount),
        )
        .await;
    }

    // The client reconnects through nginx and resumes on the other node.
    client
        .command(json!({"cmd": "connect", "auth": {"resume": {
            "offset": last,
            "epoch": epoch,
            "subscriptions": [{"type": "guest_card", "data": {"guestId": guest}}],
        }}}))
        .await;
    let connect = next_of(&mut client, "connect").await;
    assert_eq!(connect["transport"], transport, "{connect}");
    let connected = client.event("connected").await;
    assert_ne!(connected[0]["serverId"], served_by.as_str());
    let mut amounts = Vec::new();
    for _ in 0..3 {
        amounts.push(
            client.event("points_added").await[0]["amount"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(amounts, [2, 3, 4], "every missed event, in order, once");
    let resumed = client.event("resumed").await;
    assert_eq!(resumed[0]["recovered"], true, "{resumed:?}");
    assert_eq!(resumed[0]["replayed"], 3);

    // And live again on the node left.
    publish_through(&http, &nginx.address(), &service, &points_for(&guest, 5)).await;
    assert_eq!(client.event("points_added").await[0]["amount"], 5);
    client.exit().await;
    drop(nginx);
    drop(nodes);
    drop(scratch);
    clear_redis(&redis, &prefix).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_over_long_polling_a_client_survives_its_node() {
    failover("polling").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_over_websocket_a_client_survives_its_node() {
    failover("websocket").await;
}
