//! Scenario (a): fan-out. The seed's population listens over Socket.IO;
//! `points_added` events are published over REST at fixed rates (open loop,
//! latency counted from the moment a publish was *due*, so a server that
//! falls behind cannot hide it) and as fast as possible (closed loop).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::population::{Population, seq_of, token};
use crate::server::Proc;
use crate::sio::{self, Frame, Socket, Ws};

/// Requests in flight at most; beyond it the publisher waits (and the
/// latency it measures from the due time grows).
const MAX_IN_FLIGHT: usize = 1024;

/// Publish times and what arrived, for the step being measured.
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    /// Nanoseconds since `epoch` (plus one; zero is "not sent"), per seq.
    sent: Vec<AtomicU64>,
    /// The first seq of the current step: earlier ones arriving late were
    /// counted lost in their own step.
    window: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    received: AtomicU64,
    duplicated: AtomicU64,
    pub disconnects: AtomicU64,
}

impl Recorder {
    pub fn new(capacity: usize) -> Arc<Recorder> {
        Arc::new(Recorder {
            epoch: Instant::now(),
            sent: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            window: AtomicU64::new(0),
            hist: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            received: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.sent.len() as u64
    }

    fn ns(&self, at: Instant) -> u64 {
        at.duration_since(self.epoch).as_nanos() as u64 + 1
    }

    fn mark_sent(&self, first: u64, n: u64, at: Instant) {
        let ns = self.ns(at);
        for seq in first..first + n {
            if let Some(slot) = self.sent.get(seq as usize) {
                slot.store(ns, Ordering::Relaxed);
            }
        }
    }

    fn on_receive(&self, seq: u64, seen: &mut HashSet<u64>) {
        let now = self.ns(Instant::now());
        if seq < self.window.load(Ordering::Relaxed) {
            return;
        }
        if !seen.insert(seq) {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .sent
            .get(seq as usize)
            .map_or(0, |s| s.load(Ordering::Relaxed));
        if sent > 0 {
            let micros = now.saturating_sub(sent) / 1_000;
            self.hist
                .lock()
                .expect("histogram")
                .saturating_record(micros.max(1));
        }
    }

    fn begin(&self, first_seq: u64) {
        self.window.store(first_seq, Ordering::SeqCst);
        self.hist.lock().expect("histogram").reset();
        self.received.store(0, Ordering::SeqCst);
        self.duplicated.store(0, Ordering::SeqCst);
    }
}

/// The population, connected and subscribed, listening until told to stop.
#[derive(Debug)]
pub struct Audience {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    pub sockets: u64,
}

impl Audience {
    pub async fn connect(
        port: u16,
        secret: &str,
        pop: Population,
        recorder: Arc<Recorder>,
    ) -> Result<Audience> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let members = pop.members();
        let sockets = members.len() as u64;
        // Connect 64 at a time: a login burst, not a thundering herd.
        let mut connecting = futures::stream::iter(members.into_iter().map(
            |(sub, role, restaurant, subscription)| {
                let token = token(secret, &sub, role, restaurant.as_deref());
                async move {
                    let mut socket = Socket::connect(port, &token).await?;
                    let ack = socket.emit_with_ack("subscribe", &subscription).await?;
                    if ack["ok"] != true {
                        bail!("subscribe refused for {sub}: {ack}");
                    }
                    Ok::<_, anyhow::Error>(socket)
                }
            },
        ))
        .buffer_unordered(64);
        while let Some(socket) = connecting.next().await {
            let socket = socket.context("connecting the audience")?;
            tasks.spawn(listen(
                socket.into_inner(),
                recorder.clone(),
                stopped.clone(),
            ));
        }
        Ok(Audience {
            stop,
            tasks,
            sockets,
        })
    }

    /// Listens on sockets connected elsewhere (they answer pings and count
    /// what they get, nothing more).
    pub fn hold(sockets: Vec<Socket>, recorder: &Arc<Recorder>) -> Audience {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let count = sockets.len() as u64;
        for socket in sockets {
            tasks.spawn(listen(
                socket.into_inner(),
                recorder.clone(),
                stopped.clone(),
            ));
        }
        Audience {
            stop,
            tasks,
            sockets: count,
        }
    }

    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn listen(mut ws: Ws, recorder: Arc<Recorder>, mut stop: watch::Receiver<bool>) {
    let mut seen = HashSet::new();
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => match sio::classify(text.as_str()) {
                    Frame::Event(body) => {
                        if let Some(seq) = seq_of(body) {
                            recorder.on_receive(seq, &mut seen);
                        }
                    }
                    Frame::Ping => {
                        if sio::pong(&mut ws).await.is_err() {
                            break;
                        }
                    }
                    Frame::Other => {}
                },
                Some(Ok(_)) => {}
                _ => {
                    recorder.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            _ = stop.changed() => break,
        }
    }
    let _ = ws.close(None).await;
}

/// A server that takes `POST /v1/events`.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub url: String,
    pub token: String,
    pub http: reqwest::Client,
    pub pop: Population,
}

impl Publisher {
    pub fn new(server: &Proc, secret: &str, pop: Population) -> Publisher {
        Publisher {
            url: format!("{}/v1/events", server.base()),
            token: token(secret, "bench-producer", "service", None),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(MAX_IN_FLIGHT)
                .tcp_nodelay(true)
                .build()
                .expect("HTTP client"),
            pop,
        }
    }

    async fn post(&self, first: u64, batch: u64) -> bool {
        let body = if batch == 1 {
            self.pop.points_added(first)
        } else {
            self.pop.points_added_batch(first, batch)
        };
        match self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        }
    }
}

/// What one step published.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    pub events: u64,
    pub errors: u64,
    pub seconds: f64,
}

/// Open loop: `rate` events/s in requests of `batch`, for `duration`.
pub async fn open_loop(
    p: &Publisher,
    rec: &Arc<Recorder>,
    first: u64,
    rate: f64,
    duration: Duration,
    batch: u64,
) -> Published {
    let requests = ((rate * duration.as_secs_f64()) / batch as f64)
        .round()
        .max(1.0) as u64;
    let requests = requests.min((rec.capacity() - first) / batch);
    let gate = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for k in 0..requests {
        let due = start + Duration::from_secs_f64((k * batch) as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let seq = first + k * batch;
        rec.mark_sent(seq, batch, due);
        let (p, errors) = (p.clone(), errors.clone());
        tasks.spawn(async move {
            if !p.post(seq, batch).await {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    Published {
        events: requests * batch,
        errors: errors.load(Ordering::Relaxed) * batch,
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Closed loop: `concurrency` publishers, each sending its next request as
/// soon as the last is answered, for `duration` or `max_events`.
pub async fn closed_loop(
    p: &Publisher,
    rec: Option<&Arc<Recorder>>,
    first: u64,
    concurrency: usize,
    duration: Duration,
    batch: u64,
    max_events: u64,
) -> Published {
    let next = Arc::new(AtomicU64::new(first));
    let limit = first + max_events;
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (p, next, errors, rec) = (p.clone(), next.clone(), errors.clone(), rec.cloned());
        tasks.spawn(async move {
            while start.elapsed() < duration {
                let seq = next.fetch_add(batch, Ordering::Relaxed);
                if seq + batch > limit {
                    break;
                }
                if let Some(rec) = &rec {
                    rec.mark_sent(seq, batch, Instant::now());
                }
                if !p.post(seq, batch).await {
                    errors.fetch_add(batch, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let sent = next.load(Ordering::Relaxed).min(limit) - first;
    // Tasks that found the limit reached took a seq they did not send.
    let events = sent - sent % batch;
    Published {
        events,
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// One measured step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub label: String,
    /// Offered events/s (open loop), or None (as fast as possible).
    pub offered: Option<f64>,
    pub batch: u64,
    pub events: u64,
    pub events_per_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub server_cpu_s: f64,
    /// Server CPU per accepted event, microseconds.
    pub cpu_us_per_event: f64,
    pub deliveries_per_cpu_s: f64,
    /// The server's context switches over the step (see [`crate::proc`]).
    pub ctx_switches: u64,
    pub ctx_switches_per_event: f64,
    pub peak_rss_mib: f64,
    pub sustainable: bool,
}

/// The p99 bound a sustainable rate must keep.
pub const P99_BOUND_MS: f64 = 50.0;

/// Drives one server through a step and reads what its audience got.
pub struct Bench<'a> {
    pub server: &'a Proc,
    pub publisher: Publisher,
    pub rec: Arc<Recorder>,
    pub next_seq: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum Load {
    Rate(f64),
    AsFastAsPossible { concurrency: usize, max_events: u64 },
}

impl Bench<'_> {
    pub async fn step(
        &mut self,
        label: &str,
        load: Load,
        batch: u64,
        duration: Duration,
    ) -> Result<Step> {
        let pid = self.server.pid();
        let first = self.next_seq;
        self.rec.begin(first);
        crate::proc::reset_peak(pid);
        let before = self.server.sample()?;
        let published = match load {
            Load::Rate(rate) => {
                open_loop(&self.publisher, &self.rec, first, rate, duration, batch).await
            }
            Load::AsFastAsPossible {
                concurrency,
                max_events,
            } => {
                closed_loop(
                    &self.publisher,
                    Some(&self.rec),
                    first,
                    concurrency,
                    duration,
                    batch,
                    max_events.min(self.rec.capacity() - first),
                )
                .await
            }
        };
        self.next_seq = first + published.events + batch;
        let accepted = published.events - published.errors;
        let expected = accepted * self.publisher.pop.receivers_per_event();
        // Let the tail arrive: until everything is in or 5 s pass quietly.
        let mut last = (Instant::now(), 0);
        loop {
            let got = self.rec.received.load(Ordering::SeqCst);
            if got >= expected {
                break;
            }
            if got != last.1 {
                last = (Instant::now(), got);
            } else if last.0.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = self.server.sample()?;
        let received = self.rec.received.load(Ordering::SeqCst);
        let duplicated = self.rec.duplicated.load(Ordering::SeqCst);
        let hist = self.rec.hist.lock().expect("histogram").clone();
        let q = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let cpu = after.cpu_secs - before.cpu_secs;
        let lost = expected.saturating_sub(received);
        let p99 = q(0.99);
        let seconds = published.seconds.max(1e-9);
        let offered = match load {
            Load::Rate(r) => Some(r),
            Load::AsFastAsPossible { .. } => None,
        };
        let on_time = offered.is_none_or(|r| accepted as f64 / seconds >= 0.95 * r);
        Ok(Step {
            label: label.to_owned(),
            offered,
            batch,
            events: accepted,
            events_per_s: accepted as f64 / seconds,
            deliveries: received,
            deliveries_per_s: received as f64 / seconds,
            lost,
            duplicated,
            errors: published.errors,
            p50_ms: q(0.50),
            p99_ms: p99,
            p999_ms: q(0.999),
            server_cpu_s: cpu,
            cpu_us_per_event: if accepted > 0 {
                cpu * 1e6 / accepted as f64
            } else {
                0.0
            },
            ctx_switches: after.ctx_switches.saturating_sub(before.ctx_switches),
            ctx_switches_per_event: if accepted > 0 {
                after.ctx_switches.saturating_sub(before.ctx_switches) as f64 / accepted as f64
            } else {
                0.0
            },
            deliveries_per_cpu_s: if cpu > 0.0 {
                received as f64 / cpu
            } else {
                0.0
            },
            peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
            sustainable: lost == 0
                && duplicated == 0
                && published.errors == 0
                && p99 < P99_BOUND_MS
                && on_time,
        })
    }
}

/// How hard and how long scenario (a) pushes.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub step: Duration,
    pub start_rate: f64,
    pub max_rate: f64,
    /// Halvings of the gap between the last sustainable rate and the first
    /// that was not.
    pub bisections: usize,
    pub concurrency: usize,
    pub max_events: u64,
    /// The fixed rate at which server CPU and context switches per event
    /// are compared (issue #12: 1,000 events/s).
    pub fixed_rate: f64,
    /// How long that step lasts (long enough to attach `perf` to the
    /// server, whose pid is printed as it starts).
    pub fixed_step: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    pub server: String,
    pub sockets: u64,
    pub sweep: Vec<Step>,
    /// The highest offered rate (one event per request) with p99 under the
    /// bound, nothing lost, nothing duplicated.
    pub max_sustainable: f64,
    pub fastest_batch_1: Step,
    pub fastest_batch_10: Step,
    /// At [`Plan::fixed_rate`].
    pub fixed: Step,
    /// At another server's max sustainable rate, when given.
    pub at_rate: Option<Step>,
    /// At twice that rate.
    pub at_twice_rate: Option<Step>,
    pub disconnects: u64,
}

pub async fn run(
    server: &Proc,
    secret: &str,
    pop: Population,
    plan: Plan,
    at_rate: Option<f64>,
) -> Result<Fanout> {
    let rec = Recorder::new(8_000_000);
    let audience = Audience::connect(server.port, secret, pop, rec.clone()).await?;
    let mut bench = Bench {
        server,
        publisher: Publisher::new(server, secret, pop),
        rec: rec.clone(),
        next_seq: 0,
    };
    let name = &server.name;
    // Warm up: connections, JIT, caches, database pages.
    bench
        .step(
            "warm-up",
            Load::Rate(200.0),
            1,
            plan.step.min(Duration::from_secs(2)),
        )
        .await?;

    eprintln!(
        "  {name} (pid {}): fixed {:.0} ev/s for {} s",
        server.pid(),
        plan.fixed_rate,
        plan.fixed_step.as_secs()
    );
    let fixed = bench
        .step(
            &format!("fixed {:.0}/s", plan.fixed_rate),
            Load::Rate(plan.fixed_rate),
            1,
            plan.fixed_step,
        )
        .await?;
    eprintln!(
        "  {name}: fixed {:.0} ev/s: {:.1} µs CPU per event, {:.2} context switches per event, p99 {:.2} ms, lost {}",
        plan.fixed_rate,
        fixed.cpu_us_per_event,
        fixed.ctx_switches_per_event,
        fixed.p99_ms,
        fixed.lost
    );

    let mut sweep = Vec::new();
    let mut measure = async |bench: &mut Bench<'_>, rate: f64| -> Result<bool> {
        let step = bench
            .step(&format!("{rate:.0}/s"), Load::Rate(rate), 1, plan.step)
            .await?;
        eprintln!(
            "  {name}: {rate:>7.0} ev/s offered → {:>7.0} ev/s, p99 {:>7.2} ms, lost {}, dup {} {}",
            step.events_per_s,
            step.p99_ms,
            step.lost,
            step.duplicated,
            if step.sustainable { "✓" } else { "✗" }
        );
        let ok = step.sustainable;
        sweep.push(step);
        Ok(ok)
    };
    let (mut lo, mut hi) = (0.0, None);
    let mut rate = plan.start_rate;
    loop {
        if measure(&mut bench, rate).await? {
            lo = rate;
            if rate >= plan.max_rate {
                break;
            }
            rate = (rate * 2.0).min(plan.max_rate);
        } else {
            hi = Some(rate);
            break;
        }
    }
    if let Some(mut hi) = hi {
        for _ in 0..plan.bisections {
            let mid = ((lo + hi) / 2.0 / 50.0).round() * 50.0;
            if mid <= lo || mid >= hi {
                break;
            }
            if measure(&mut bench, mid).await? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    sweep.sort_by(|a, b| {
        a.offered
            .partial_cmp(&b.offered)
            .expect("rates are numbers")
    });

    let fastest = Load::AsFastAsPossible {
        concurrency: plan.concurrency,
        max_events: plan.max_events,
    };
    let fastest_batch_1 = bench
        .step("fastest, batch 1", fastest, 1, plan.step)
        .await?;
    let fastest_batch_10 = bench
        .step("fastest, batch 10", fastest, 10, plan.step)
        .await?;
    for s in [&fastest_batch_1, &fastest_batch_10] {
        eprintln!(
            "  {name}: {}: {:.0} ev/s, {:.0} deliveries/s, {:.0} deliveries per CPU-s, p99 {:.2} ms",
            s.label, s.events_per_s, s.deliveries_per_s, s.deliveries_per_cpu_s, s.p99_ms
        );
    }
    let (at_rate, at_twice_rate) = match at_rate {
        Some(rate) if rate > 0.0 => {
            let mut at = Vec::new();
            for rate in [rate, 2.0 * rate] {
                let s = bench
                    .step(&format!("at {rate:.0}/s"), Load::Rate(rate), 1, plan.step)
                    .await?;
                eprintln!(
                    "  {name}: at {rate:.0} ev/s: p99 {:.2} ms, lost {}",
                    s.p99_ms, s.lost
                );
                at.push(s);
            }
            let twice = at.pop();
            (at.pop(), twice)
        }
        _ => (None, None),
    };
    let disconnects = rec.disconnects.load(Ordering::SeqCst);
    let sockets = audience.sockets;
    audience.close().await;
    Ok(Fanout {
        server: name.clone(),
        sockets,
        sweep,
        max_sustainable: lo,
        fastest_batch_1,
        fastest_batch_10,
        fixed,
        at_rate,
        at_twice_rate,
        disconnects,
    })
}
