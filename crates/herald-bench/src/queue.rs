//! Scenario (d): email, SMS and push jobs through a Redis queue to a local
//! fake of the providers (SendGrid v3, Twilio Messages, FCM HTTP v1 and its
//! OAuth token endpoint), at 0 ms and 50 ms provider latency and with 10%
//! of messages failing once (503) before they go through.
//!
//! Herald, on each of its two deployments ([`Deployment`]):
//!
//! - PostgreSQL + Redis: `herald serve` (workers off) takes
//!   `points_redeemed` events routed to email, SMS and push, so the
//!   deliveries wait in Redis; then one `herald worker` drains them.
//! - the embedded default (SQLite database, SQLite queue): `herald serve`
//!   with workers off takes the events and stops; then `herald serve` with
//!   its workers on, over the same files, drains them.
//!
//! The peer: `enqueue.mjs` fills a BullMQ queue with the same messages,
//! then one BullMQ worker drains it. Both run 16 sends at a time and back
//! off from 100 ms. Throughput is counted from the provider's first request
//! to the last message it accepted.
//!
//! The fake provider here also serves scenario (e), [`crate::e2e`].

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
pub const BULLMQ_QUEUE: &str = "redis://127.0.0.1:6379/13";

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

    pub fn reset(&self, mode: Mode) {
        self.latency_ms.store(mode.latency_ms, Ordering::SeqCst);
        self.fail_per_mille
            .store(mode.fail_once_per_mille, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
        self.duplicates.store(0, Ordering::SeqCst);
        *self.tally.lock().expect("tally") = Tally::default();
    }

    pub fn accepted(&self) -> usize {
        self.tally.lock().expect("tally").accepted.len()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }

    /// When the first request came.
    pub fn first_request(&self) -> Option<Instant> {
        self.tally.lock().expect("tally").first_request
    }

    /// When the last message was accepted.
    pub fn last_accept(&self) -> Option<Instant> {
        self.tally.lock().expect("tally").last_accept
    }

    /// Waits until `expected` messages were accepted, or until none came
    /// for `stall` (then the rest are lost); how many were accepted.
    pub async fn settle(&self, expected: usize, stall: Duration) -> usize {
        let mut seen = self.accepted();
        let mut progress = Instant::now();
        while seen < expected && progress.elapsed() < stall {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = self.accepted();
            if now > seen {
                seen = now;
                progress = Instant::now();
            }
        }
        // A moment for stray duplicates to show.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.accepted()
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

/// Where Herald keeps its deliveries and who sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    /// PostgreSQL, a Redis queue, `herald serve` without workers and one
    /// `herald worker` process.
    PostgresRedis,
    /// The embedded default: SQLite database and queue, the workers inside
    /// `herald serve`.
    Embedded,
}

impl Deployment {
    pub const ALL: [Deployment; 2] = [Deployment::PostgresRedis, Deployment::Embedded];

    pub fn label(self) -> &'static str {
        match self {
            Deployment::PostgresRedis => "Herald, PostgreSQL + Redis, 1 worker process",
            Deployment::Embedded => "Herald, embedded (SQLite), workers in serve",
        }
    }

    /// Herald started this way, its deliveries routed to `channels` and
    /// sent to the fake providers at `url`, 16 at a time. Workers in
    /// `herald serve` stay off; [`HeraldEnv::with_workers`] turns them on.
    pub fn spec(self, paths: &Paths, url: &str, channels: &str) -> Result<HeraldSpec> {
        let routing = routing_file(paths, channels)?;
        let service_account = json!({
            "type": "service_account",
            "project_id": "herald-bench",
            "private_key": std::fs::read_to_string(paths.root.join("tests/fixtures/rsa-private.pem"))?,
            "client_email": "bench@herald-bench.iam.gserviceaccount.com",
            "token_uri": format!("{url}/token"),
        });
        let env = |k: &str, v: String| (format!("HERALD__{k}"), v);
        let (db, queue) = match self {
            Deployment::PostgresRedis => (Db::Postgres, Some(HERALD_QUEUE.to_owned())),
            Deployment::Embedded => (Db::Sqlite, None),
        };
        Ok(HeraldSpec {
            db,
            queue,
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
        })
    }
}

impl Deployment {
    /// With `analyze`, refreshes PostgreSQL's statistics after the guests
    /// were set up (see [`server::analyze_pg`]); SQLite plans without them.
    pub async fn settle_statistics(self, analyze: bool) -> Result<()> {
        if analyze && self == Deployment::PostgresRedis {
            server::analyze_pg().await?;
        }
        Ok(())
    }
}

/// The shipped routing table with `points_redeemed` sent to `channels`
/// (e.g. `"email", "sms", "push"`).
fn routing_file(paths: &Paths, channels: &str) -> Result<std::path::PathBuf> {
    let shipped = std::fs::read_to_string(paths.root.join("config/routing.toml"))?;
    let variant = shipped.replacen(
        r#"deliveries = [{ to = "{guestId}", channels = ["push", "email"] }]"#,
        &format!(r#"deliveries = [{{ to = "{{guestId}}", channels = [{channels}] }}]"#),
        1,
    );
    anyhow::ensure!(
        variant != shipped,
        "routing.toml changed shape; update the bench"
    );
    let name: String = channels.chars().filter(char::is_ascii_alphabetic).collect();
    let path = paths.scratch.join(format!("routing-{name}.toml"));
    std::fs::write(&path, variant)?;
    Ok(path)
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
    worker_cpu_s: f64,
    worker: &Proc,
) -> Result<Dispatch> {
    let s = worker.sample()?;
    let d = Dispatch {
        server: server.to_owned(),
        mode,
        jobs,
        seconds,
        jobs_per_s: jobs as f64 / seconds.max(1e-9),
        provider_requests: p.requests(),
        duplicates: p.duplicates(),
        worker_cpu_s,
        worker_peak_rss_mib: s.peak_rss_kib as f64 / 1024.0,
    };
    eprintln!(
        "  {server} [{}]: {jobs} jobs in {seconds:.2} s = {:.0} jobs/s ({} requests, {} duplicates, {:.2} CPU-s)",
        mode.label, d.jobs_per_s, d.provider_requests, d.duplicates, d.worker_cpu_s
    );
    Ok(d)
}

/// Gives every guest of `guests` an address, a phone and (with `device`)
/// a phone app, over REST, 32 at a time.
pub async fn contacts(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    guests: std::ops::Range<u64>,
    device: bool,
) -> Result<()> {
    let setup = futures::stream::iter(guests.map(|g| async move {
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
        if device {
            let device = json!({ "kind": "fcm", "token": format!("fcm-token-{g}") });
            let r = http
                .post(format!("{user}/devices"))
                .bearer_auth(admin)
                .json(&device)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "device: {}", r.status());
        }
        Ok(())
    }))
    .buffer_unordered(32)
    .collect::<Vec<Result<()>>>()
    .await;
    setup
        .into_iter()
        .collect::<Result<()>>()
        .context("setting up guests")
}

/// POSTs `points_redeemed` for `guests` in arrays of `batch`, `in_flight`
/// requests at a time.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    guests: std::ops::Range<u64>,
    batch: usize,
    in_flight: usize,
) -> Result<()> {
    let all: Vec<u64> = guests.collect();
    let posts = futures::stream::iter(all.chunks(batch).map(|chunk| async move {
        let body: Vec<_> = chunk.iter().map(|&g| points_redeemed(g)).collect();
        let r = http
            .post(format!("{base}/v1/events"))
            .bearer_auth(admin)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "publish: {}", r.status());
        Ok(())
    }))
    .buffer_unordered(in_flight)
    .collect::<Vec<Result<()>>>()
    .await;
    posts.into_iter().collect()
}

/// Herald on `deployment`: the events of each mode published with no worker
/// running, then drained by one worker process.
pub async fn herald(
    paths: &Paths,
    secret: &str,
    provider: &Arc<Provider>,
    url: &str,
    events: u64,
    deployment: Deployment,
    analyze: bool,
) -> Result<Vec<Dispatch>> {
    let spec = deployment.spec(paths, url, r#""email", "sms", "push""#)?;
    let henv = server::prepare_herald(paths, &spec, secret).await?;
    let mut serve = Some(server::start_herald(paths, &henv).await?);
    let http = reqwest::Client::new();
    let admin = token(secret, "bench-admin", "admin", None);
    let total_guests = events * MODES.len() as u64;
    let base = serve.as_ref().map(Proc::base).unwrap_or_default();
    contacts(&http, &base, &admin, 0..total_guests, true).await?;
    deployment.settle_statistics(analyze).await?;

    let label = deployment.label();
    let mut results = Vec::new();
    for (m, mode) in MODES.into_iter().enumerate() {
        let first = m as u64 * events;
        let filler = match serve.take() {
            Some(s) => s,
            None => server::start_herald(paths, &henv).await?,
        };
        publish(&http, &filler.base(), &admin, first..first + events, 100, 1).await?;
        provider.reset(mode);
        let jobs = events as usize * 3;
        match deployment {
            Deployment::PostgresRedis => {
                let worker = server::start_herald_worker(paths, &henv)?;
                let seconds = provider.wait_for(jobs, Duration::from_secs(600)).await?;
                let cpu = worker.sample()?.cpu_secs;
                results.push(dispatch(
                    label, mode, jobs, seconds, provider, cpu, &worker,
                )?);
                worker.stop().await;
                serve = Some(filler);
            }
            Deployment::Embedded => {
                // One process owns the SQLite files at a time: the filler
                // goes, a serve with workers comes over the same files.
                filler.stop().await;
                let worker = server::start_herald(paths, &henv.with_workers()).await?;
                let seconds = provider.wait_for(jobs, Duration::from_secs(600)).await?;
                let cpu = worker.sample()?.cpu_secs;
                results.push(dispatch(
                    label, mode, jobs, seconds, provider, cpu, &worker,
                )?);
                worker.stop().await;
            }
        }
    }
    if let Some(serve) = serve {
        serve.stop().await;
    }
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
        // Node's start (loading BullMQ, ~0.4 CPU-s) is not per-job work.
        let at_ready = worker.sample()?.cpu_secs;
        let seconds = provider.wait_for(3 * n, Duration::from_secs(600)).await?;
        let cpu = worker.sample()?.cpu_secs - at_ready;
        results.push(dispatch(
            "BullMQ",
            mode,
            3 * n,
            seconds,
            provider,
            cpu,
            &worker,
        )?);
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
