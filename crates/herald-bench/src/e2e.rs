//! Scenario (e): end to end, REST in and provider out, with the workers
//! already running. `points_redeemed` events routed to email only are
//! POSTed in arrays of [`BATCH`], [`IN_FLIGHT`] requests at a time; each
//! becomes one email to the fake SendGrid (0 ms). Throughput is the emails
//! the provider accepted over the time from the first POST to the last
//! accepted email, so it counts ingest, the queue and the send together.
//!
//! Herald runs on PostgreSQL + Redis with one `herald worker` process
//! (serve with workers off), and on the embedded default (SQLite database
//! and queue, workers inside `herald serve`). The peer: a BullMQ worker
//! already running while `enqueue.mjs` adds the same number of email jobs,
//! [`BATCH`] to an `addBulk`, [`IN_FLIGHT`] at a time. Both send 16 at a
//! time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::population::token;
use crate::queue::{self, BACKOFF_MS, BULLMQ_QUEUE, CONCURRENCY, Deployment, MODES, Provider};
use crate::server::{self, Paths};

/// Events (and emails) per POST, and jobs per `addBulk`.
pub const BATCH: usize = 100;
/// POSTs (or `addBulk`s) in flight at once.
pub const IN_FLIGHT: usize = 4;
/// With no email accepted for this long, the missing ones count as lost.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    pub server: String,
    pub emails: usize,
    pub accepted: usize,
    pub lost: usize,
    pub duplicates: u64,
    pub provider_requests: u64,
    pub seconds: f64,
    pub emails_per_s: f64,
    /// From the first POST (or `addBulk`) to the provider's first request.
    pub first_email_ms: f64,
    /// CPU seconds of the side that takes the events: `herald serve` (with
    /// its workers, on the embedded default), or BullMQ's producer.
    pub ingest_cpu_s: f64,
    /// CPU seconds of the separate worker process (none on the embedded
    /// default: its workers are counted in `ingest_cpu_s`).
    pub worker_cpu_s: f64,
    pub cpu_s_per_1000: f64,
}

impl EndToEnd {
    fn new(
        server: &str,
        emails: usize,
        started: Instant,
        provider: &Provider,
        accepted: usize,
        ingest_cpu_s: f64,
        worker_cpu_s: f64,
    ) -> EndToEnd {
        let seconds = provider
            .last_accept()
            .map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64());
        let cpu = ingest_cpu_s + worker_cpu_s;
        let r = EndToEnd {
            server: server.to_owned(),
            emails,
            accepted,
            lost: emails.saturating_sub(accepted),
            duplicates: provider.duplicates(),
            provider_requests: provider.requests(),
            seconds,
            emails_per_s: accepted as f64 / seconds.max(1e-9),
            first_email_ms: provider.first_request().map_or(0.0, |t| {
                t.saturating_duration_since(started).as_secs_f64() * 1000.0
            }),
            ingest_cpu_s,
            worker_cpu_s,
            cpu_s_per_1000: cpu * 1000.0 / (accepted.max(1) as f64),
        };
        eprintln!(
            "  {server}: {accepted} of {emails} emails in {seconds:.2} s = {:.0} emails/s, \
             the first after {:.0} ms ({} lost, {} duplicates; {ingest_cpu_s:.2} + {worker_cpu_s:.2} CPU-s = {:.2} per 1,000)",
            r.emails_per_s, r.first_email_ms, r.lost, r.duplicates, r.cpu_s_per_1000
        );
        r
    }
}

/// Herald on `deployment`: workers up, then `emails` events over REST.
pub async fn herald(
    paths: &Paths,
    secret: &str,
    provider: &Arc<Provider>,
    url: &str,
    emails: u64,
    deployment: Deployment,
    analyze: bool,
) -> Result<EndToEnd> {
    let spec = deployment.spec(paths, url, r#""email""#)?;
    let env = server::prepare_herald(paths, &spec, secret).await?;
    let env = match deployment {
        Deployment::PostgresRedis => env,
        Deployment::Embedded => env.with_workers(),
    };
    let serve = server::start_herald(paths, &env).await?;
    let worker = match deployment {
        Deployment::PostgresRedis => Some(server::start_herald_worker(paths, &env)?),
        Deployment::Embedded => None,
    };
    let http = reqwest::Client::new();
    let admin = token(secret, "bench-admin", "admin", None);
    let base = serve.base();
    queue::contacts(&http, &base, &admin, 0..emails, false).await?;
    deployment.settle_statistics(analyze).await?;
    // The worker connects while the contacts go in; a moment more so it
    // is polling before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    provider.reset(MODES[0]);
    let serve_before = serve.sample()?.cpu_secs;
    let worker_before = worker
        .as_ref()
        .map_or(Ok(0.0), |w| w.sample().map(|s| s.cpu_secs))?;
    let started = Instant::now();
    queue::publish(&http, &base, &admin, 0..emails, BATCH, IN_FLIGHT).await?;
    let accepted = provider.settle(emails as usize, STALL).await;
    let serve_cpu = serve.sample()?.cpu_secs - serve_before;
    let worker_cpu = worker
        .as_ref()
        .map_or(Ok(0.0), |w| w.sample().map(|s| s.cpu_secs))?
        - worker_before;
    let r = EndToEnd::new(
        deployment.label(),
        emails as usize,
        started,
        provider,
        accepted,
        serve_cpu,
        worker_cpu,
    );
    if let Some(worker) = worker {
        worker.stop().await;
    }
    serve.stop().await;
    Ok(r)
}

/// The peer: a BullMQ worker already running while the jobs are added.
pub async fn bullmq(
    paths: &Paths,
    provider: &Arc<Provider>,
    url: &str,
    emails: u64,
) -> Result<EndToEnd> {
    server::flush_redis(BULLMQ_QUEUE).await?;
    let worker = server::start_bullmq_worker(paths, BULLMQ_QUEUE, url, CONCURRENCY).await?;
    provider.reset(MODES[0]);
    let worker_before = worker.sample()?.cpu_secs;
    let live = server::bullmq_enqueue_live(
        paths,
        BULLMQ_QUEUE,
        emails as usize,
        BATCH,
        IN_FLIGHT,
        BACKOFF_MS,
    )
    .await?;
    let accepted = provider.settle(emails as usize, STALL).await;
    let worker_cpu = worker.sample()?.cpu_secs - worker_before;
    let r = EndToEnd::new(
        "BullMQ",
        emails as usize,
        live.started,
        provider,
        accepted,
        live.cpu_s,
        worker_cpu,
    );
    worker.stop().await;
    Ok(r)
}
