//! Scenario (d): email, SMS and push jobs through a Redis queue to a local
//! fake of the providers (SendGrid v3, Twilio Messages, FCM HTTP v1 and its
//! OAuth token endpoint), at 0 ms and 50 ms provider latency and with 10%
//! of messages failing once (503) before they go through.
//!
//! Herald: `herald serve` (workers off) takes `points_redeemed` events
//! routed to email, SMS and push, so the deliveries wait in Redis; then one
//! `herald worker` drains them. The peer: `enqueue.mjs` fills a BullMQ
//! queue with the same messages, then one BullMQ worker drains it. Both
//! run 16 jobs at a time and back off from 100 ms. Throughput is counted
//! from the provider's first request to the last message it accepted.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;

use crate::population::{guest_id, restaurant_id, token};
use crate::server::{self, Db, HeraldSpec, Paths, Proc};

pub const CONCURRENCY: usize = 16;
pub const BACKOFF_MS: u64 = 100;
const HERALD_QUEUE: &str = "redis://127.0.0.1:6379/14";
const BULLMQ_QUEUE: &str = "redis://127.0.0.1:6379/13";

/// One provider behaviour to measure under.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Mode {
    pub label: &'static str,
    pub latency_ms: u64,
    /// Messages (by content) whose first attempt fails, per mille.
    pub fail_once_per_mille: u64,
}

pub const MODES: [Mode; 3] = [
    Mode {
        label: "0 ms",
        latency_ms: 0,
        fail_once_per_mille: 0,
    },
    Mode {
        label: "50 ms",
        latency_ms: 50,
        fail_once_per_mille: 0,
    },
    Mode {
        label: "0 ms, 10% fail once",
        latency_ms: 0,
        fail_once_per_mille: 100,
    },
];

#[derive(Debug, Default)]
struct Tally {
    first_request: Option<Instant>,
    last_accept: Option<Instant>,
    failed_once: HashSet<u64>,
    accepted: HashSet<u64>,
}

/// The providers' fake: answers as the real ones document, counts what it
/// accepted (once per message content) and what it saw twice.
#[derive(Debug, Default)]
pub struct Provider {
    latency_ms: AtomicU64,
    fail_per_mille: AtomicU64,
    requests: AtomicU64,
    duplicates: AtomicU64,
    tally: Mutex<Tally>,
}

impl Provider {
    pub async fn start() -> Result<(Arc<Provider>, String)> {
        let provider = Arc::new(Provider::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((provider, url))
    }

    fn reset(&self, mode: Mode) {
        self.latency_ms.store(mode.latency_ms, Ordering::SeqCst);
        self.fail_per_mille
            .store(mode.fail_once_per_mille, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
        self.duplicates.store(0, Ordering::SeqCst);
        *self.tally.lock().expect("tally") = Tally::default();
    }

    fn accepted(&self) -> usize {
        self.tally.lock().expect("tally").accepted.len()
    }

    /// Waits until `expected` messages were accepted; then the window from
    /// the first request to the last acceptance.
    async fn wait_for(&self, expected: usize, within: Duration) -> Result<f64> {
        let deadline = Instant::now() + within;
        while self.accepted() < expected {
            if Instant::now() > deadline {
                bail!(
                    "the provider accepted {} of {expected} messages in {within:?}",
                    self.accepted()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A moment for stray duplicates to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = self.tally.lock().expect("tally");
        let (Some(a), Some(b)) = (t.first_request, t.last_accept) else {
            bail!("no requests seen");
        };
        Ok((b - a).as_secs_f64())
    }
}

async fn answer(State(p): State<Arc<Provider>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path();
    if path == "/token" {
        return axum::Json(json!({
            "access_token": "ya29.bench", "expires_in": 3600, "token_type": "Bearer"
        }))
        .into_response();
    }
    p.requests.fetch_add(1, Ordering::Relaxed);
    let mut h = DefaultHasher::new();
    path.hash(&mut h);
    body.hash(&mut h);
    let key = h.finish();
    {
        let mut t = p.tally.lock().expect("tally");
        t.first_request.get_or_insert_with(Instant::now);
    }
    let latency = p.latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    {
        let mut t = p.tally.lock().expect("tally");
        if key % 1000 < p.fail_per_mille.load(Ordering::Relaxed) && t.failed_once.insert(key) {
            drop(t);
            return (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response();
        }
        if !t.accepted.insert(key) {
            p.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        t.last_accept = Some(Instant::now());
    }
    let id = format!("{key:016x}");
    if path.ends_with("/mail/send") {
        (StatusCode::ACCEPTED, [("x-message-id", id)]).into_response()
    } else if path.ends_with("/Messages.json") {
        (
            StatusCode::CREATED,
            axum::Json(json!({ "sid": format!("SM{id}{id}"), "status": "queued" })),
        )
            .into_response()
    } else if path.ends_with("/messages:send") {
        axum::Json(json!({ "name": format!("projects/herald-bench/messages/{id}") }))
            .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "no such API",
        )
            .into_response()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dispatch {
    pub server: String,
    pub mode: Mode,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_s: f64,
    pub provider_requests: u64,
    pub duplicates: u64,
    pub worker_cpu_s: f64,
    pub worker_peak_rss_mib: f64,
}

fn dispatch(
    server: &str,
    mode: Mode,
    jobs: usize,
    seconds: f64,
    p: &Provider,
    worker: &Proc,
) -> Result<Dispatch> {
    let s = worker.sample()?;
    let d = Dispatch {
        server: server.to_owned(),
        mode,
        jobs,
        seconds,
        jobs_per_s: jobs as f64 / seconds.max(1e-9),
        provider_requests: p.requests.load(Ordering::SeqCst),
        duplicates: p.duplicates.load(Ordering::SeqCst),
        worker_cpu_s: s.cpu_secs,
        worker_peak_rss_mib: s.peak_rss_kib as f64 / 1024.0,
    };
    eprintln!(
        "  {server} [{}]: {jobs} jobs in {seconds:.2} s = {:.0} jobs/s ({} requests, {} duplicates, {:.2} CPU-s)",
        mode.label, d.jobs_per_s, d.provider_requests, d.duplicates, d.worker_cpu_s
    );
    Ok(d)
}

/// Herald: one `herald serve` to take the events, one `herald worker` per
/// mode to send them.
pub async fn herald(
    paths: &Paths,
    secret: &str,
    provider: &Arc<Provider>,
    url: &str,
    events: u64,
) -> Result<Vec<Dispatch>> {
    let routing = paths.scratch.join("routing-bench.toml");
    let shipped = std::fs::read_to_string(paths.root.join("config/routing.toml"))?;
    let all_three = shipped.replacen(
        r#"deliveries = [{ to = "{guestId}", channels = ["push", "email"] }]"#,
        r#"deliveries = [{ to = "{guestId}", channels = ["email", "sms", "push"] }]"#,
        1,
    );
    anyhow::ensure!(
        all_three != shipped,
        "routing.toml changed shape; update the bench"
    );
    std::fs::write(&routing, all_three)?;
    let service_account = json!({
        "type": "service_account",
        "project_id": "herald-bench",
        "private_key": std::fs::read_to_string(paths.root.join("tests/fixtures/rsa-private.pem"))?,
        "client_email": "bench@herald-bench.iam.gserviceaccount.com",
        "token_uri": format!("{url}/token"),
    });
    let env = |k: &str, v: String| (format!("HERALD__{k}"), v);
    let spec = HeraldSpec {
        db: Db::Postgres,
        queue: Some(HERALD_QUEUE.to_owned()),
        workers_in_serve: false,
        env: vec![
            env("ROUTING__FILE", routing.display().to_string()),
            env("DELIVERY__CONCURRENCY", CONCURRENCY.to_string()),
            env("DELIVERY__RETRY__BASE_MS", BACKOFF_MS.to_string()),
            env("CHANNELS__EMAIL", "sendgrid".into()),
            env("CHANNELS__SMS", "twilio".into()),
            env("CHANNELS__PUSH", "fcm".into()),
            env("CHANNELS__SENDGRID__BASE_URL", url.to_owned()),
            env("CHANNELS__SENDGRID__API_KEY", "SG.bench".into()),
            env("CHANNELS__TWILIO__BASE_URL", url.to_owned()),
            env(
                "CHANNELS__TWILIO__ACCOUNT_SID",
                format!("AC{}", "0123456789abcdef".repeat(2)),
            ),
            env("CHANNELS__TWILIO__AUTH_TOKEN", "bench".into()),
            env("CHANNELS__TWILIO__FROM", "+15017122661".into()),
            env("CHANNELS__FCM__BASE_URL", url.to_owned()),
            env(
                "CHANNELS__FCM__SERVICE_ACCOUNT_JSON",
                service_account.to_string(),
            ),
        ],
    };
    let henv = server::prepare_herald(paths, &spec, secret).await?;
    let serve = server::start_herald(paths, &henv).await?;
    let http = reqwest::Client::new();
    let admin = token(secret, "bench-admin", "admin", None);
    let base = serve.base();
    let total_guests = events * MODES.len() as u64;
    // Every guest gets an address, a phone and a phone app.
    let setup = futures::stream::iter((0..total_guests).map(|g| {
        let (http, admin, base) = (&http, &admin, &base);
        async move {
            let user = format!("{base}/v1/users/{}", guest_id(g));
            let contact = json!({
                "email": format!("guest{g}@example.com"),
                "phone": format!("+7900{g:07}"),
                "locale": "ru",
            });
            let r = http
                .put(format!("{user}/contact"))
                .bearer_auth(admin)
                .json(&contact)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "contact: {}", r.status());
            let device = json!({ "kind": "fcm", "token": format!("fcm-token-{g}") });
            let r = http
                .post(format!("{user}/devices"))
                .bearer_auth(admin)
                .json(&device)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "device: {}", r.status());
            Ok(())
        }
    }))
    .buffer_unordered(32)
    .collect::<Vec<Result<()>>>()
    .await;
    setup
        .into_iter()
        .collect::<Result<()>>()
        .context("setting up guests")?;

    let mut results = Vec::new();
    for (m, mode) in MODES.into_iter().enumerate() {
        let first = m as u64 * events;
        for chunk in (first..first + events).collect::<Vec<_>>().chunks(100) {
            let body: Vec<_> = chunk.iter().map(|&g| points_redeemed(g)).collect();
            let r = http
                .post(format!("{base}/v1/events"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "publish: {}", r.status());
        }
        provider.reset(mode);
        let jobs = events as usize * 3;
        let worker = server::start_herald_worker(paths, &henv)?;
        let seconds = provider.wait_for(jobs, Duration::from_secs(600)).await?;
        results.push(dispatch("Herald", mode, jobs, seconds, provider, &worker)?);
        worker.stop().await;
    }
    serve.stop().await;
    Ok(results)
}

/// The peer: BullMQ with the same messages.
pub async fn bullmq(
    paths: &Paths,
    provider: &Arc<Provider>,
    url: &str,
    events: u64,
) -> Result<Vec<Dispatch>> {
    let mut results = Vec::new();
    for mode in MODES {
        let n = events as usize;
        server::flush_redis(BULLMQ_QUEUE).await?;
        server::bullmq_enqueue(paths, BULLMQ_QUEUE, [n, n, n], BACKOFF_MS).await?;
        provider.reset(mode);
        let worker = server::start_bullmq_worker(paths, BULLMQ_QUEUE, url, CONCURRENCY).await?;
        let seconds = provider.wait_for(3 * n, Duration::from_secs(600)).await?;
        results.push(dispatch("BullMQ", mode, 3 * n, seconds, provider, &worker)?);
        worker.stop().await;
    }
    Ok(results)
}

fn points_redeemed(g: u64) -> serde_json::Value {
    json!({
        "event": "points_redeemed",
        "data": {
            "guestId": guest_id(g),
            "cardId": format!("00000000-0000-4000-9000-{g:012x}"),
            "amount": 200,
            "newBalance": 300,
            "restaurantId": restaurant_id(g % 20),
            "rewardName": "Бесплатный кофе",
            "transactionId": format!("00000000-0000-4000-b000-{g:012x}"),
            "timestamp": 1_764_000_000_000_i64,
        }
    })
}
