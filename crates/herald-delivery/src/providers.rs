//! Provider chains, circuit breakers and rate limits: what sits between a
//! delivery attempt and [`Channel::send`].
//!
//! A channel may have several providers, in order of preference (email:
//! SendGrid, then SMTP). A [`ProviderChain`] tries them in turn:
//!
//! * a provider whose [`Breaker`] is open is skipped at once: it has failed
//!   transiently `failures` times in a row, and hammering it helps nobody;
//! * a provider's [`Limiter`] is waited for: a throttled send is slower, not
//!   failed, so waiting never counts as an attempt;
//! * a transient failure moves on to the next provider *within the same
//!   attempt*: the retry budget is for the recipient's message, not for one
//!   provider's outage;
//! * a permanent error (bad address, rejected sender, unregistered device)
//!   ends the attempt where it arose: another provider would get the same
//!   answer, or worse, deliver what the first one rightly refused.
//!
//! What happened on the way (failovers, skips, waits) comes back as
//! [`Step`]s for the delivery trace; breaker states and transitions,
//! failovers, throttling and sends are counted in [`ProviderMetrics`].
//!
//! Many attempts run through one chain at once (one tokio task each), so
//! everything here is `Send + Sync`. Breakers keep their state behind a
//! `std::sync::Mutex` that is never held across an `.await`; limiters queue
//! their callers on a tokio mutex, so under contention each waiter sleeps
//! once, in turn, instead of all waking for every token. Time is
//! [`tokio::time::Instant`], so tests can pause it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use herald_core::channel::Receipt;
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tracing::Instrument;

// ---------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------

/// When a provider's breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open the breaker (at least 1).
    pub failures: u32,
    /// How long an open breaker turns sends away before it lets one probe
    /// through. Also how long a probe may stay unanswered before it is
    /// written off and another caller may probe.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A breaker's state, as `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Sends go through.
    Closed,
    /// Sends are turned away until `until`.
    Open { until: Instant },
    /// One probe may go (or is in flight); its answer closes or reopens it.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of `herald_provider_breaker_state`: 0 closed, 1 half-open,
    /// 2 open, so that "higher is worse" on a dashboard.
    pub fn gauge_value(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open { .. } => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The breaker's answer to "may a send go to this provider now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go.
    Admit,
    /// Half-open, and this caller is the one probe. It must report with
    /// [`Breaker::success`], [`Breaker::failure`] or, if it never sent,
    /// [`Breaker::abandon_probe`].
    Probe,
    /// Open, or another caller's probe is in flight. `retry_in` is when this
    /// breaker will next let a probe through at the latest (a probe in
    /// flight may close it sooner).
    Reject { retry_in: Duration },
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe went at `since` and has not reported.
    Probing {
        since: Instant,
    },
}

/// A circuit breaker for one provider.
///
/// Only transient failures count against it; a permanent error means the
/// provider answered (the address was bad), so it counts as a success.
/// Results that arrive while the breaker is open (from sends admitted
/// before it opened) change nothing: only the probe decides when it closes.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The state is a few words updated in place: a panic elsewhere cannot
    /// leave it half-written, so a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May a send go to this provider now? Closed: yes. Open: no until its
    /// time is up; then exactly one caller gets [`Admission::Probe`] and the
    /// others are turned away until that probe reports (or, if it never
    /// does, until `open_for` has passed since it went).
    pub fn admit(&self, now: Instant) -> Admission {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => Admission::Admit,
            Inner::Open { until } if now < until => Admission::Reject {
                retry_in: until - now,
            },
            Inner::Open { .. } => {
                *inner = Inner::Probing { since: now };
                Admission::Probe
            }
            Inner::Probing { since } => {
                let written_off = since + self.settings.open_for;
                if now >= written_off {
                    *inner = Inner::Probing { since: now };
                    Admission::Probe
                } else {
                    Admission::Reject {
                        retry_in: written_off - now,
                    }
                }
            }
        }
    }

    /// The provider answered. Resets the count of consecutive failures;
    /// closes a half-open breaker. Returns the new state if it changed.
    pub fn success(&self) -> Option<BreakerState> {
        let mut inner = self.lock();
        match *inner {
            Inner::Closed { .. } => {
                *inner = Inner::Closed { failures: 0 };
                None
            }
            Inner::Probing { .. } => {
                *inner = Inner::Closed { failures: 0 };
                Some(BreakerState::Closed)
            }
            Inner::Open { .. } => None,
        }
    }

    /// The provider failed transiently. The `failures`-th consecutive
    /// failure opens a closed breaker; a failed probe reopens it. Either way
    /// it stays open for `open_for` from `now`. Returns the new state if it
    /// changed.
    pub fn failure(&self, now: Instant) -> Option<BreakerState> {
        let mut inner = self.lock();
        let until = now + self.settings.open_for;
        match *inner {
            Inner::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failures.max(1) {
                    *inner = Inner::Open { until };
                    Some(BreakerState::Open { until })
                } else {
                    *inner = Inner::Closed { failures };
                    None
                }
            }
            Inner::Probing { .. } => {
                *inner = Inner::Open { until };
                Some(BreakerState::Open { until })
            }
            Inner::Open { .. } => None,
        }
    }

    /// A probe that never reached the provider (its attempt was cancelled):
    /// the breaker learnt nothing, so the next caller may probe at once
    /// rather than waiting for the probe to be written off.
    pub fn abandon_probe(&self, now: Instant) -> Option<BreakerState> {
        let mut inner = self.lock();
        match *inner {
            Inner::Probing { .. } => {
                *inner = Inner::Open { until: now };
                Some(BreakerState::Open { until: now })
            }
            Inner::Closed { .. } | Inner::Open { .. } => None,
        }
    }

    /// The state at `now`. An open breaker whose time is up reads as
    /// half-open: the next send will be its probe.
    pub fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now < until => BreakerState::Open { until },
            Inner::Open { .. } | Inner::Probing { .. } => BreakerState::HalfOpen,
        }
    }
}

// ---------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------

/// A token bucket: `per_second` sends a second on average, at most `burst`
/// at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// Whether the limit makes sense, for config checks at start.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second.is_finite() && self.per_second > 0.0) {
            return Err(format!(
                "per_second must be a positive number, not {}",
                self.per_second
            ));
        }
        if self.burst == 0 {
            return Err("burst must be at least 1".into());
        }
        Ok(())
    }

    fn checked(self) -> RateLimit {
        if let Err(e) = self.validate() {
            panic!("invalid rate limit: {e}");
        }
        self
    }
}

/// How long a limiter waits for Redis before limiting this node alone.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a limiter whose Redis failed limits this node alone before it
/// asks Redis again, so that an outage costs one timeout now and then
/// rather than one per send.
const REDIS_RECHECK: Duration = Duration::from_secs(5);

/// One turn of the shared token bucket (see the script's header).
static RATE_LIMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("rate_limit.lua")));

/// Held while a caller takes its turn at a limiter: callers queue on it in
/// order (tokio's mutex is fair), so only the one at the front sleeps.
#[derive(Debug)]
struct Turn {
    /// When the last caller that had to sleep finished sleeping. A caller
    /// that queued behind it was held up by the limit too.
    last_sleep_end: Option<Instant>,
}

impl Turn {
    fn new() -> Turn {
        Turn {
            last_sleep_end: None,
        }
    }

    /// What `acquire` reports: the whole wait if the limit held this caller
    /// up (it slept, or queued behind one who did), else zero, so that the
    /// cost of taking a token is never mistaken for throttling.
    fn waited(&self, start: Instant) -> Duration {
        match self.last_sleep_end {
            Some(end) if end >= start => start.elapsed(),
            _ => Duration::ZERO,
        }
    }
}

/// A token bucket in this process.
#[derive(Debug)]
pub struct LocalBucket {
    rate: RateLimit,
    state: tokio::sync::Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    turn: Turn,
}

impl LocalBucket {
    fn new(rate: RateLimit) -> LocalBucket {
        let rate = rate.checked();
        LocalBucket {
            rate,
            state: tokio::sync::Mutex::new(Bucket {
                tokens: f64::from(rate.burst),
                last: Instant::now(),
                turn: Turn::new(),
            }),
        }
    }

    async fn acquire(&self) -> Duration {
        let start = Instant::now();
        let mut bucket = self.state.lock().await;
        let burst = f64::from(self.rate.burst);
        loop {
            let now = Instant::now();
            let refill =
                now.saturating_duration_since(bucket.last).as_secs_f64() * self.rate.per_second;
            bucket.tokens = (bucket.tokens + refill).min(burst);
            bucket.last = now;
            // A token that is a rounding error short is a token: the sleep
            // below was for exactly the missing part.
            if bucket.tokens >= 1.0 - 1e-9 {
                bucket.tokens = (bucket.tokens - 1.0).max(0.0);
                return bucket.turn.waited(start);
            }
            let missing = (1.0 - bucket.tokens) / self.rate.per_second;
            tokio::time::sleep(Duration::from_secs_f64(missing)).await;
            bucket.turn.last_sleep_end = Some(Instant::now());
        }
    }
}

/// A token bucket in Redis, shared by every node that uses the same key:
/// the rate is the provider's total across the cluster.
///
/// Each turn is one atomic script (`rate_limit.lua`, GCRA): it reads the
/// bucket, and either takes a token and answers 0, or changes nothing and
/// answers how many milliseconds until one is due. The clock is Redis's
/// `TIME`, so nodes need not agree on the time, and the key expires once
/// the bucket is full again. Within a node, callers take turns in order,
/// so a node asks Redis about once per token, not once per waiting caller.
#[derive(Debug)]
pub struct RedisBucket {
    conn: ConnectionManager,
    key: String,
    rate: RateLimit,
    /// The time between sends, in whole microseconds, rounded up so the
    /// nodes together never exceed the rate.
    interval_us: u64,
    turn: tokio::sync::Mutex<Turn>,
    /// This node's own bucket, for while Redis does not answer.
    fallback: LocalBucket,
    /// Set while Redis is failing: until when to limit this node alone
    /// before asking Redis again.
    down_until: Mutex<Option<Instant>>,
    /// Whether the current outage has been logged: once per outage, not
    /// once per send.
    logged: AtomicBool,
}

impl RedisBucket {
    fn new(conn: ConnectionManager, key: String, rate: RateLimit) -> RedisBucket {
        let rate = rate.checked();
        let interval_us = (1e6 / rate.per_second).ceil().max(1.0) as u64;
        RedisBucket {
            conn,
            key,
            rate,
            interval_us,
            turn: tokio::sync::Mutex::new(Turn::new()),
            fallback: LocalBucket::new(rate),
            down_until: Mutex::new(None),
            logged: AtomicBool::new(false),
        }
    }

    fn down_until(&self) -> MutexGuard<'_, Option<Instant>> {
        self.down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn is_down(&self, now: Instant) -> bool {
        self.down_until().is_some_and(|until| now < until)
    }

    fn went_down(&self, error: &str) {
        *self.down_until() = Some(Instant::now() + REDIS_RECHECK);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key = %self.key,
                error,
                "rate limit: Redis failed; this node limits itself alone until Redis answers again"
            );
        }
    }

    fn answered(&self) {
        *self.down_until() = None;
        if self.logged.swap(false, Ordering::Relaxed) {
            tracing::info!(key = %self.key, "rate limit: Redis answers again; the limit is shared");
        }
    }

    /// One turn of the script: `Ok(0)` to go, else milliseconds to wait.
    async fn ask(&self) -> Result<u64, String> {
        let mut conn = self.conn.clone();
        let mut turn = RATE_LIMIT.key(&self.key);
        turn.arg(self.interval_us).arg(self.rate.burst);
        let call = turn.invoke_async::<u64>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(wait_ms)) => Ok(wait_ms),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {REDIS_TIMEOUT:?}")),
        }
    }

    async fn acquire(&self) -> Duration {
        let start = Instant::now();
        let mut turn = self.turn.lock().await;
        loop {
            if self.is_down(Instant::now()) {
                let waited = self.fallback.acquire().await;
                return turn.waited(start).max(waited);
            }
            match self.ask().await {
                Ok(0) => {
                    self.answered();
                    return turn.waited(start);
                }
                Ok(wait_ms) => {
                    self.answered();
                    tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    turn.last_sleep_end = Some(Instant::now());
                }
                Err(e) => self.went_down(&e),
            }
        }
    }
}

/// A provider's rate limit.
#[derive(Debug)]
pub enum Limiter {
    /// This process's own token bucket: right for a single node, or for a
    /// limit that is per node anyway.
    Local(LocalBucket),
    /// A token bucket in Redis (one Lua script per turn, Redis's clock), so
    /// the limit is the total across all nodes using the same key. While
    /// Redis does not answer, each node falls back to a local bucket at the
    /// full rate: sends slow down, never stop, and the provider's own 429s
    /// (transient, so they fail over) catch the overshoot.
    Redis(RedisBucket),
}

impl Limiter {
    /// An in-process token bucket, starting full.
    ///
    /// # Panics
    /// If `rate` is invalid (see [`RateLimit::validate`]).
    pub fn local(rate: RateLimit) -> Limiter {
        Limiter::Local(LocalBucket::new(rate))
    }

    /// A bucket shared through Redis at `key`. Every node must use the same
    /// key and rate for a provider; `herald:rate:{provider}` is the
    /// convention. One connection manager may serve every limiter.
    ///
    /// # Panics
    /// If `rate` is invalid (see [`RateLimit::validate`]).
    pub fn redis(conn: ConnectionManager, key: impl Into<String>, rate: RateLimit) -> Limiter {
        Limiter::Redis(RedisBucket::new(conn, key.into(), rate))
    }

    pub fn rate(&self) -> RateLimit {
        match self {
            Limiter::Local(bucket) => bucket.rate,
            Limiter::Redis(bucket) => bucket.rate,
        }
    }

    /// Waits until a send may go, and takes its token. Never fails: a
    /// limiter that cannot reach Redis limits this node alone (and logs
    /// that once). Returns how long the limit held this send up (zero if it
    /// did not).
    ///
    /// Cancel-safe: a caller dropped while waiting takes no token (short of
    /// being dropped while Redis is answering its very turn).
    pub async fn acquire(&self) -> Duration {
        match self {
            Limiter::Local(bucket) => bucket.acquire().await,
            Limiter::Redis(bucket) => bucket.acquire().await,
        }
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Provider health as Prometheus metrics, created unregistered: the process
/// registers them ([`ProviderMetrics::register`]) in the registry its
/// `/metrics` renders, next to the delivery metrics.
#[derive(Debug, Clone)]
pub struct ProviderMetrics {
    /// `herald_provider_breaker_state{provider}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: IntGaugeVec,
    /// `herald_provider_breaker_transitions_total{provider,to}`.
    pub breaker_transitions: IntCounterVec,
    /// `herald_provider_failovers_total{from,reason}`: attempts that moved
    /// on from a provider (`transient`, `breaker_open`).
    pub failovers: IntCounterVec,
    /// `herald_provider_throttled_seconds_total{provider}`: time sends
    /// waited for a rate limit.
    pub throttled_seconds: CounterVec,
    /// `herald_provider_sends_total{provider,result}`: each provider's
    /// answers (`sent`, `transient`, `permanent`, `gone`).
    pub sends: IntCounterVec,
}

impl Default for ProviderMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderMetrics {
    pub fn new() -> ProviderMetrics {
        ProviderMetrics {
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "herald_provider_breaker_state",
                    "Circuit breaker state by provider: 0 closed, 1 half-open, 2 open",
                ),
                &["provider"],
            )
            .expect("valid metric"),
            breaker_transitions: IntCounterVec::new(
                Opts::new(
                    "herald_provider_breaker_transitions_total",
                    "Circuit breaker transitions by provider and new state",
                ),
                &["provider", "to"],
            )
            .expect("valid metric"),
            failovers: IntCounterVec::new(
                Opts::new(
                    "herald_provider_failovers_total",
                    "Attempts that moved on to the next provider, by provider left and why",
                ),
                &["from", "reason"],
            )
            .expect("valid metric"),
            throttled_seconds: CounterVec::new(
                Opts::new(
                    "herald_provider_throttled_seconds_total",
                    "Time sends waited for a provider's rate limit",
                ),
                &["provider"],
            )
            .expect("valid metric"),
            sends: IntCounterVec::new(
                Opts::new(
                    "herald_provider_sends_total",
                    "Sends by provider and the provider's answer",
                ),
                &["provider", "result"],
            )
            .expect("valid metric"),
        }
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.breaker_state.clone()))?;
        registry.register(Box::new(self.breaker_transitions.clone()))?;
        registry.register(Box::new(self.failovers.clone()))?;
        registry.register(Box::new(self.throttled_seconds.clone()))?;
        registry.register(Box::new(self.sends.clone()))?;
        Ok(())
    }

    /// Logs and counts a breaker transition together.
    fn transition(&self, provider: &str, to: BreakerState) {
        self.breaker_state
            .with_label_values(&[provider])
            .set(to.gauge_value());
        self.breaker_transitions
            .with_label_values(&[provider, to.as_str()])
            .inc();
        match to {
            BreakerState::Open { .. } => {
                tracing::warn!(provider, "breaker opened: sends skip this provider")
            }
            BreakerState::HalfOpen => tracing::info!(provider, "breaker half-open: probing"),
            BreakerState::Closed => tracing::info!(provider, "breaker closed: provider is back"),
        }
    }
}

// ---------------------------------------------------------------------------
// The chain
// ---------------------------------------------------------------------------

/// One provider of a channel, with its breaker and rate limit.
#[derive(Debug)]
pub struct Provider {
    /// The name in config, traces and metrics (`sendgrid`, `smtp`).
    pub name: String,
    pub channel: Arc<dyn Channel>,
    breaker: Breaker,
    limiter: Option<Limiter>,
}

impl Provider {
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    pub fn limiter(&self) -> Option<&Limiter> {
        self.limiter.as_ref()
    }
}

/// Something that happened on the way to an attempt's answer, for the
/// delivery trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub provider: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// The provider failed transiently and the attempt moved on to the next.
    Failover { reason: String },
    /// The provider's breaker was open; it was skipped without a send.
    BreakerOpen,
    /// The send waited this long for the provider's rate limit.
    Throttled { waited: Duration },
}

impl StepKind {
    /// The trace's `step` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepKind::Failover { .. } => "failover",
            StepKind::BreakerOpen => "breaker_open",
            StepKind::Throttled { .. } => "throttled",
        }
    }
}

impl Step {
    /// The trace's `detail` column.
    pub fn detail(&self) -> String {
        match &self.kind {
            StepKind::Failover { reason } => reason.clone(),
            StepKind::BreakerOpen => "breaker open; skipped".into(),
            StepKind::Throttled { waited } => format!("waited {} ms", waited.as_millis()),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.provider,
            self.kind.as_str(),
            self.detail()
        )
    }
}

/// A provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub provider: String,
    pub receipt: Receipt,
    pub steps: Vec<Step>,
}

/// No provider accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSent {
    /// Permanent or gone: the provider's own error, not to be retried.
    /// Transient: every provider failed transiently or was skipped; the
    /// reason names each, and `retry_after` is the longest `Retry-After`
    /// any of them asked for (a floor for the next try).
    pub error: ChannelError,
    /// The last provider that answered; `None` if none was tried.
    pub provider: Option<String>,
    pub steps: Vec<Step>,
    /// No provider was even tried: every breaker was open. Nothing was
    /// sent, so the caller reschedules without counting an attempt, at
    /// `error`'s `retry_after`: when the first breaker will let a probe
    /// through.
    pub all_open: bool,
}

/// A channel's providers in order of preference.
#[derive(Debug)]
pub struct ProviderChain {
    providers: Vec<Provider>,
    metrics: Arc<ProviderMetrics>,
}

/// Reports a probe that never reached its provider (the attempt was
/// dropped mid-way, or the send panicked) so the breaker is not left
/// waiting for an answer that will not come.
struct ProbeGuard<'a> {
    provider: &'a Provider,
    metrics: &'a ProviderMetrics,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(to) = self.provider.breaker.abandon_probe(Instant::now())
        {
            self.metrics.transition(&self.provider.name, to);
        }
    }
}

impl ProviderChain {
    /// A chain of `providers` (name, transport, rate limit), tried in this
    /// order, each with a breaker of its own.
    ///
    /// # Panics
    /// If `providers` is empty or mixes channel kinds: a wiring mistake,
    /// caught at start.
    pub fn new(
        providers: Vec<(String, Arc<dyn Channel>, Option<Limiter>)>,
        breaker: BreakerSettings,
        metrics: Arc<ProviderMetrics>,
    ) -> ProviderChain {
        assert!(!providers.is_empty(), "a provider chain needs a provider");
        let kind = providers[0].1.kind();
        let providers: Vec<Provider> = providers
            .into_iter()
            .map(|(name, channel, limiter)| {
                assert_eq!(
                    channel.kind(),
                    kind,
                    "provider `{name}` serves {}, not {kind}",
                    channel.kind()
                );
                metrics.breaker_state.with_label_values(&[&name]).set(0);
                Provider {
                    name,
                    channel,
                    breaker: Breaker::new(breaker),
                    limiter,
                }
            })
            .collect();
        ProviderChain { providers, metrics }
    }

    pub fn kind(&self) -> ChannelKind {
        self.providers[0].channel.kind()
    }

    pub fn names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Sends `message` through the first provider that takes it.
    ///
    /// In order: a provider whose breaker is open is skipped; otherwise the
    /// send waits for its rate limit and goes. Accepted: done. Transient
    /// failure: counted against its breaker, and on to the next provider.
    /// Permanent or gone: the answer, at once; no other provider is asked.
    #[tracing::instrument(skip_all, fields(channel = %self.kind()))]
    pub async fn send(&self, message: &RenderedMessage) -> Result<Sent, NotSent> {
        let mut steps = Vec::new();
        // Each provider's part in a transient outcome, for its reason.
        let mut failures: Vec<String> = Vec::new();
        let mut longest_retry_after: Option<Duration> = None;
        let mut first_probe: Option<Duration> = None;
        let mut answered: Option<&str> = None;
        for (i, provider) in self.providers.iter().enumerate() {
            let name = provider.name.as_str();
            let has_next = i + 1 < self.providers.len();
            let probe = match provider.breaker.admit(Instant::now()) {
                Admission::Admit => false,
                Admission::Probe => {
                    self.metrics.transition(name, BreakerState::HalfOpen);
                    true
                }
                Admission::Reject { retry_in } => {
                    first_probe = Some(first_probe.map_or(retry_in, |d| d.min(retry_in)));
                    failures.push(format!("{name}: breaker open"));
                    steps.push(Step {
                        provider: name.to_owned(),
                        kind: StepKind::BreakerOpen,
                    });
                    if has_next {
                        self.metrics
                            .failovers
                            .with_label_values(&[name, "breaker_open"])
                            .inc();
                    }
                    continue;
                }
            };
            let mut guard = ProbeGuard {
                provider,
                metrics: &self.metrics,
                armed: probe,
            };
            if let Some(limiter) = &provider.limiter {
                let waited = limiter.acquire().await;
                if !waited.is_zero() {
                    self.metrics
                        .throttled_seconds
                        .with_label_values(&[name])
                        .inc_by(waited.as_secs_f64());
                    steps.push(Step {
                        provider: name.to_owned(),
                        kind: StepKind::Throttled { waited },
                    });
                }
            }
            let span = tracing::info_span!(
                "provider_send",
                provider = name,
                outcome = tracing::field::Empty,
            );
            let result = provider
                .channel
                .send(message)
                .instrument(span.clone())
                .await;
            span.record(
                "outcome",
                match &result {
                    Ok(_) => "sent",
                    Err(ChannelError::Transient { .. }) => "transient",
                    Err(ChannelError::Permanent { .. }) => "permanent",
                    Err(ChannelError::Gone { .. }) => "gone",
                },
            );
            guard.armed = false;
            answered = Some(name);
            let error = match result {
                Ok(receipt) => {
                    self.answered(provider, "sent");
                    return Ok(Sent {
                        provider: name.to_owned(),
                        receipt,
                        steps,
                    });
                }
                Err(error) => error,
            };
            let ChannelError::Transient {
                reason,
                retry_after,
            } = error
            else {
                // The provider understood and refused: it is healthy, and
                // the next one would refuse too (or should).
                let result = match error {
                    ChannelError::Gone { .. } => "gone",
                    _ => "permanent",
                };
                self.answered(provider, result);
                tracing::debug!(provider = name, error = %error, "permanent error; no failover");
                return Err(NotSent {
                    error,
                    provider: Some(name.to_owned()),
                    steps,
                    all_open: false,
                });
            };
            self.metrics
                .sends
                .with_label_values(&[name, "transient"])
                .inc();
            if let Some(to) = provider.breaker.failure(Instant::now()) {
                self.metrics.transition(name, to);
            }
            longest_retry_after = longest_retry_after.max(retry_after);
            failures.push(format!("{name}: {reason}"));
            if has_next {
                tracing::info!(
                    provider = name,
                    reason,
                    "transient failure; trying the next provider"
                );
                self.metrics
                    .failovers
                    .with_label_values(&[name, "transient"])
                    .inc();
                steps.push(Step {
                    provider: name.to_owned(),
                    kind: StepKind::Failover { reason },
                });
            }
        }
        let Some(last) = answered else {
            return Err(NotSent {
                error: ChannelError::Transient {
                    reason: format!(
                        "every provider's breaker is open ({})",
                        self.names().join(", ")
                    ),
                    retry_after: first_probe,
                },
                provider: None,
                steps,
                all_open: true,
            });
        };
        Err(NotSent {
            error: ChannelError::Transient {
                reason: failures.join("; "),
                retry_after: longest_retry_after,
            },
            provider: Some(last.to_owned()),
            steps,
            all_open: false,
        })
    }

    /// A provider answered (accepted or refused): its breaker hears of it.
    fn answered(&self, provider: &Provider, result: &str) {
        self.metrics
            .sends
            .with_label_values(&[&provider.name, result])
            .inc();
        if let Some(to) = provider.breaker.success() {
            self.metrics.transition(&provider.name, to);
        }
    }

    /// Each provider's breaker state, in chain order, for `/readyz`. Also
    /// brings the state gauge up to date: an open breaker whose time is up
    /// reads half-open before any send has probed it.
    pub fn breakers(&self) -> Vec<(String, &'static str)> {
        let now = Instant::now();
        self.providers
            .iter()
            .map(|p| {
                let state = p.breaker.state(now);
                self.metrics
                    .breaker_state
                    .with_label_values(&[&p.name])
                    .set(state.gauge_value());
                (p.name.clone(), state.as_str())
            })
            .collect()
    }

    /// Whether the channel can work: yes if any provider's own check
    /// passes (the chain fails over to it). Checks run concurrently; the
    /// error lists each provider's answer.
    pub async fn check(&self) -> Result<(), String> {
        let answers =
            futures::future::join_all(self.providers.iter().map(|p| p.channel.check())).await;
        if answers.iter().any(Result::is_ok) {
            return Ok(());
        }
        if let [Err(only)] = answers.as_slice() {
            // A transport's own answer already says which it is.
            return Err(only.clone());
        }
        Err(self
            .providers
            .iter()
            .zip(answers)
            .map(|(p, answer)| match answer {
                Ok(()) => format!("{}: ok", p.name),
                Err(e) => format!("{}: {e}", p.name),
            })
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use herald_core::channel::Address;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn settings(failures: u32) -> BreakerSettings {
        BreakerSettings {
            failures,
            open_for: Duration::from_secs(30),
        }
    }

    // --- breaker -----------------------------------------------------------

    #[test]
    fn breaker_opens_after_consecutive_transient_failures() {
        let breaker = Breaker::new(settings(3));
        let now = Instant::now();
        assert_eq!(breaker.failure(now), None);
        assert_eq!(breaker.failure(now), None);
        // A success in between starts the count again.
        assert_eq!(breaker.success(), None);
        assert_eq!(breaker.failure(now), None);
        assert_eq!(breaker.failure(now), None);
        assert_eq!(breaker.admit(now), Admission::Admit);
        let until = now + Duration::from_secs(30);
        assert_eq!(breaker.failure(now), Some(BreakerState::Open { until }));
        assert_eq!(breaker.state(now), BreakerState::Open { until });
        // Late answers of sends admitted before it opened change nothing.
        assert_eq!(breaker.failure(now + SECOND), None);
        assert_eq!(breaker.success(), None);
        assert_eq!(breaker.state(now), BreakerState::Open { until });
    }

    #[test]
    fn open_breaker_rejects_then_admits_exactly_one_probe() {
        let breaker = Arc::new(Breaker::new(settings(1)));
        let now = Instant::now();
        breaker.failure(now);
        assert_eq!(
            breaker.admit(now + Duration::from_secs(10)),
            Admission::Reject {
                retry_in: Duration::from_secs(20)
            }
        );
        let later = now + Duration::from_secs(30);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        // Sixteen callers at once when its time is up: one probe.
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let answers: Vec<Admission> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let (breaker, barrier) = (Arc::clone(&breaker), Arc::clone(&barrier));
                    s.spawn(move || {
                        barrier.wait();
                        breaker.admit(later)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let probes = answers.iter().filter(|a| **a == Admission::Probe).count();
        assert_eq!(probes, 1, "{answers:?}");
        // The others are told when the probe will be written off at the latest.
        assert!(answers.iter().all(|a| *a == Admission::Probe
            || *a
                == Admission::Reject {
                    retry_in: Duration::from_secs(30)
                }));
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
    }

    #[test]
    fn probe_success_closes_and_probe_failure_reopens() {
        let breaker = Breaker::new(settings(2));
        let t0 = Instant::now();
        breaker.failure(t0);
        breaker.failure(t0);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(breaker.admit(t1), Admission::Probe);
        let until = t1 + Duration::from_secs(31);
        assert_eq!(
            breaker.failure(t1 + SECOND),
            Some(BreakerState::Open { until })
        );
        assert!(matches!(
            breaker.admit(t1 + Duration::from_secs(5)),
            Admission::Reject { .. }
        ));
        assert_eq!(breaker.admit(until), Admission::Probe);
        assert_eq!(breaker.success(), Some(BreakerState::Closed));
        assert_eq!(breaker.state(until), BreakerState::Closed);
        assert_eq!(breaker.admit(until), Admission::Admit);
        // Closed again with a fresh count: one failure does not reopen it.
        assert_eq!(breaker.failure(until), None);
        assert_eq!(breaker.admit(until), Admission::Admit);
    }

    #[test]
    fn unanswered_probes_are_written_off() {
        let breaker = Breaker::new(settings(1));
        let t0 = Instant::now();
        breaker.failure(t0);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(breaker.admit(t1), Admission::Probe);
        // A probe that never reports: after `open_for`, another may go.
        let t2 = t1 + Duration::from_secs(30);
        assert!(matches!(
            breaker.admit(t2 - SECOND),
            Admission::Reject { .. }
        ));
        assert_eq!(breaker.admit(t2), Admission::Probe);
        // A probe abandoned before sending lets the next caller probe at once.
        assert_eq!(
            breaker.abandon_probe(t2),
            Some(BreakerState::Open { until: t2 })
        );
        assert_eq!(breaker.admit(t2), Admission::Probe);
    }

    #[test]
    fn breaker_states_read_as_strings_and_gauge_values() {
        let now = Instant::now();
        let states = [
            BreakerState::Closed,
            BreakerState::HalfOpen,
            BreakerState::Open { until: now },
        ];
        let shown: Vec<(&str, i64)> = states
            .iter()
            .map(|s| (s.as_str(), s.gauge_value()))
            .collect();
        assert_eq!(shown, [("closed", 0), ("half_open", 1), ("open", 2)]);
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    }

    // --- chain -------------------------------------------------------------

    /// A provider that answers from a script (then accepts), counting calls.
    #[derive(Debug)]
    struct Scripted {
        name: &'static str,
        answers: Mutex<VecDeque<Result<(), ChannelError>>>,
        calls: AtomicUsize,
        check: Result<(), String>,
        /// Never answers: an attempt stuck in a send.
        hang: bool,
    }

    impl Scripted {
        fn new(name: &'static str, answers: Vec<Result<(), ChannelError>>) -> Arc<Scripted> {
            Arc::new(Scripted {
                name,
                answers: Mutex::new(answers.into()),
                calls: AtomicUsize::new(0),
                check: Ok(()),
                hang: false,
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl Channel for Scripted {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Email
        }
        fn provider(&self) -> &str {
            self.name
        }
        async fn send(&self, _: &RenderedMessage) -> Result<Receipt, ChannelError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.hang {
                std::future::pending::<()>().await;
            }
            let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()));
            answer.map(|()| Receipt {
                provider_message_id: Some(format!("{}-{n}", self.name)),
            })
        }
        async fn check(&self) -> Result<(), String> {
            self.check.clone()
        }
    }

    fn message() -> RenderedMessage {
        RenderedMessage {
            channel: ChannelKind::Email,
            to: Address::Email {
                email: "ada@example.com".into(),
            },
            subject: Some("Points added".into()),
            text: "You earned 10 points.".into(),
            html: None,
            data: serde_json::Value::Null,
            idempotency_key: "d-1".into(),
            list_unsubscribe: None,
        }
    }

    fn chain_of(
        providers: &[&Arc<Scripted>],
        failures: u32,
    ) -> (ProviderChain, Arc<ProviderMetrics>) {
        let metrics = Arc::new(ProviderMetrics::new());
        let providers = providers
            .iter()
            .map(|p| (p.name.to_owned(), Arc::clone(*p) as Arc<dyn Channel>, None))
            .collect();
        let chain = ProviderChain::new(providers, settings(failures), Arc::clone(&metrics));
        (chain, metrics)
    }

    fn transient(reason: &str, retry_after: Option<Duration>) -> ChannelError {
        ChannelError::Transient {
            reason: reason.into(),
            retry_after,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_moves_on_to_the_next_provider() {
        let sendgrid = Scripted::new("sendgrid", vec![Err(transient("503", None))]);
        let smtp = Scripted::new("smtp", vec![]);
        let (chain, metrics) = chain_of(&[&sendgrid, &smtp], 5);
        assert_eq!(chain.names(), ["sendgrid", "smtp"]);
        assert_eq!(chain.kind(), ChannelKind::Email);

        let sent = chain.send(&message()).await.expect("sent");
        assert_eq!(sent.provider, "smtp");
        assert_eq!(sent.receipt.provider_message_id.as_deref(), Some("smtp-1"));
        assert_eq!(
            sent.steps,
            [Step {
                provider: "sendgrid".into(),
                kind: StepKind::Failover {
                    reason: "503".into()
                }
            }]
        );
        assert_eq!(sent.steps[0].to_string(), "sendgrid failover: 503");
        assert_eq!((sendgrid.calls(), smtp.calls()), (1, 1));
        assert_eq!(
            metrics
                .failovers
                .with_label_values(&["sendgrid", "transient"])
                .get(),
            1
        );
        assert_eq!(
            metrics
                .sends
                .with_label_values(&["sendgrid", "transient"])
                .get(),
            1
        );
        assert_eq!(metrics.sends.with_label_values(&["smtp", "sent"]).get(), 1);

        // The next message starts with the preferred provider again.
        let sent = chain.send(&message()).await.expect("sent");
        assert_eq!(sent.provider, "sendgrid");
        assert!(sent.steps.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_never_fails_over() {
        for error in [
            ChannelError::permanent("550 no such mailbox"),
            ChannelError::gone("token unregistered"),
        ] {
            let sendgrid = Scripted::new("sendgrid", vec![Err(error.clone())]);
            let smtp = Scripted::new("smtp", vec![]);
            let (chain, _) = chain_of(&[&sendgrid, &smtp], 1);
            let not_sent = chain.send(&message()).await.expect_err("refused");
            assert_eq!(not_sent.error, error);
            assert_eq!(not_sent.provider.as_deref(), Some("sendgrid"));
            assert!(not_sent.steps.is_empty());
            assert!(!not_sent.all_open);
            assert_eq!(smtp.calls(), 0, "never sent to the next provider");
            // The provider answered: its breaker stays closed.
            assert_eq!(chain.breakers()[0], ("sendgrid".to_owned(), "closed"));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_is_skipped_at_once() {
        let sendgrid = Scripted::new("sendgrid", vec![Err(transient("timeout", None))]);
        let smtp = Scripted::new("smtp", vec![]);
        let (chain, metrics) = chain_of(&[&sendgrid, &smtp], 1);
        chain.send(&message()).await.expect("smtp sent");
        assert_eq!(
            chain.breakers(),
            [
                ("sendgrid".to_owned(), "open"),
                ("smtp".to_owned(), "closed")
            ]
        );
        assert_eq!(
            metrics.breaker_state.with_label_values(&["sendgrid"]).get(),
            2
        );

        let start = Instant::now();
        let sent = chain.send(&message()).await.expect("sent");
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(sent.provider, "smtp");
        assert_eq!(
            sent.steps,
            [Step {
                provider: "sendgrid".into(),
                kind: StepKind::BreakerOpen
            }]
        );
        assert_eq!(sendgrid.calls(), 1, "skipped without a send");
        assert_eq!(
            metrics
                .failovers
                .with_label_values(&["sendgrid", "breaker_open"])
                .get(),
            1
        );

        // When its time is up, the next send probes it, and it is back.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(chain.breakers()[0].1, "half_open");
        let sent = chain.send(&message()).await.expect("sent");
        assert_eq!(sent.provider, "sendgrid");
        assert_eq!(chain.breakers()[0].1, "closed");
        let to = |state: &str| {
            metrics
                .breaker_transitions
                .with_label_values(&["sendgrid", state])
                .get()
        };
        assert_eq!((to("open"), to("half_open"), to("closed")), (1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn all_breakers_open_reschedules_at_the_first_probe() {
        let sendgrid = Scripted::new("sendgrid", vec![Err(transient("503", None))]);
        let smtp = Scripted::new("smtp", vec![Err(transient("421", None))]);
        let (chain, _) = chain_of(&[&sendgrid, &smtp], 1);
        chain.send(&message()).await.expect_err("both failed");
        tokio::time::advance(Duration::from_secs(12)).await;

        let not_sent = chain.send(&message()).await.expect_err("all open");
        assert!(not_sent.all_open);
        assert_eq!(not_sent.provider, None);
        assert_eq!((sendgrid.calls(), smtp.calls()), (1, 1), "nothing sent");
        assert_eq!(
            not_sent.error,
            ChannelError::Transient {
                reason: "every provider's breaker is open (sendgrid, smtp)".into(),
                retry_after: Some(Duration::from_secs(18)),
            }
        );
        assert_eq!(
            not_sent
                .steps
                .iter()
                .map(|s| (s.provider.as_str(), s.kind.as_str()))
                .collect::<Vec<_>>(),
            [("sendgrid", "breaker_open"), ("smtp", "breaker_open")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn all_transient_floors_the_next_try_at_the_longest_retry_after() {
        let sendgrid = Scripted::new(
            "sendgrid",
            vec![Err(transient("429", Some(Duration::from_secs(20))))],
        );
        let smtp = Scripted::new(
            "smtp",
            vec![Err(transient("421 busy", Some(Duration::from_secs(90))))],
        );
        let (chain, _) = chain_of(&[&sendgrid, &smtp], 5);
        let not_sent = chain.send(&message()).await.expect_err("both failed");
        assert!(!not_sent.all_open);
        assert_eq!(not_sent.provider.as_deref(), Some("smtp"));
        assert_eq!(
            not_sent.error,
            ChannelError::Transient {
                reason: "sendgrid: 429; smtp: 421 busy".into(),
                retry_after: Some(Duration::from_secs(90)),
            }
        );
        // The last provider had nothing to fail over to.
        assert_eq!(not_sent.steps.len(), 1);
        assert_eq!(not_sent.steps[0].kind.as_str(), "failover");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_does_not_wedge_the_breaker() {
        let stuck = Arc::new(Scripted {
            name: "sendgrid",
            answers: Mutex::new(VecDeque::new()),
            calls: AtomicUsize::new(0),
            check: Ok(()),
            hang: true,
        });
        let (chain, _) = chain_of(&[&stuck], 1);
        let breaker = chain.providers()[0].breaker();
        breaker.failure(Instant::now());
        tokio::time::advance(Duration::from_secs(30)).await;
        // The probe's attempt is dropped mid-send (a worker shutting down).
        let attempt = tokio::time::timeout(SECOND, chain.send(&message())).await;
        assert!(attempt.is_err());
        assert_eq!(stuck.calls(), 1);
        assert_eq!(breaker.admit(Instant::now()), Admission::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_send_waits_and_says_so() {
        let sendgrid = Scripted::new("sendgrid", vec![]);
        let metrics = Arc::new(ProviderMetrics::new());
        let limiter = Limiter::local(RateLimit {
            per_second: 2.0,
            burst: 1,
        });
        let chain = ProviderChain::new(
            vec![(
                "sendgrid".into(),
                Arc::clone(&sendgrid) as Arc<dyn Channel>,
                Some(limiter),
            )],
            settings(5),
            Arc::clone(&metrics),
        );
        assert!(chain.send(&message()).await.expect("sent").steps.is_empty());
        let sent = chain.send(&message()).await.expect("sent");
        assert_eq!(
            sent.steps,
            [Step {
                provider: "sendgrid".into(),
                kind: StepKind::Throttled {
                    waited: Duration::from_millis(500)
                }
            }]
        );
        assert_eq!(sent.steps[0].detail(), "waited 500 ms");
        let throttled = metrics
            .throttled_seconds
            .with_label_values(&["sendgrid"])
            .get();
        assert!((throttled - 0.5).abs() < 1e-6, "{throttled}");
        // Waiting is not failing.
        assert_eq!(chain.breakers()[0].1, "closed");
    }

    #[tokio::test]
    async fn check_passes_if_any_provider_can_send() {
        let broken = |name, why: &str| {
            Arc::new(Scripted {
                name,
                answers: Mutex::new(VecDeque::new()),
                calls: AtomicUsize::new(0),
                check: Err(why.to_owned()),
                hang: false,
            })
        };
        let sendgrid = broken("sendgrid", "401 bad key");
        let smtp = Scripted::new("smtp", vec![]);
        let (chain, _) = chain_of(&[&sendgrid, &smtp], 5);
        assert_eq!(chain.check().await, Ok(()));

        let smtp = broken("smtp", "connection refused");
        let (chain, _) = chain_of(&[&sendgrid, &smtp], 5);
        assert_eq!(
            chain.check().await,
            Err("sendgrid: 401 bad key; smtp: connection refused".into())
        );
    }

    #[test]
    fn metrics_register_once() {
        let registry = Registry::new();
        let metrics = ProviderMetrics::new();
        metrics.register(&registry).expect("registers");
        metrics.sends.with_label_values(&["smtp", "sent"]).inc();
        assert!(metrics.register(&registry).is_err(), "names are unique");
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(names.contains(&"herald_provider_sends_total".to_owned()));
    }

    // --- limiters ------------------------------------------------------------

    /// No window of one second, starting at any acquisition, holds more than
    /// `most` of them.
    fn busiest_second<T: Copy + Ord + std::ops::Sub<Output = Duration>>(times: &[T]) -> usize {
        let mut times = times.to_vec();
        times.sort();
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t - times[i] < SECOND)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_bucket_holds_its_rate() {
        let limiter = Arc::new(Limiter::local(RateLimit {
            per_second: 10.0,
            burst: 1,
        }));
        let start = Instant::now();
        // Three senders at once, ten sends each.
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    for _ in 0..10 {
                        limiter.acquire().await;
                        times.push(Instant::now());
                    }
                    times
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        assert_eq!(times.len(), 30);
        let took = *times.iter().max().unwrap() - start;
        assert!(took >= Duration::from_millis(2_900), "{took:?}");
        assert!(took <= Duration::from_millis(3_000), "{took:?}");
        assert!(busiest_second(&times) <= 10, "{}", busiest_second(&times));
    }

    #[tokio::test(start_paused = true)]
    async fn the_local_bucket_allows_its_burst_at_once() {
        let limiter = Limiter::local(RateLimit {
            per_second: 1.0,
            burst: 3,
        });
        for _ in 0..3 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        assert_eq!(limiter.acquire().await, SECOND);
    }

    #[test]
    fn rate_limits_are_validated() {
        let ok = RateLimit {
            per_second: 0.5,
            burst: 1,
        };
        assert_eq!(ok.validate(), Ok(()));
        for bad in [
            RateLimit {
                per_second: 0.0,
                ..ok
            },
            RateLimit {
                per_second: f64::NAN,
                ..ok
            },
            RateLimit { burst: 0, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    /// A connection to the test Redis (database 12, which the queue tests
    /// share, under keys of the test's own); `None` (test skipped) if there
    /// is none, unless services are required.
    async fn redis() -> Option<ConnectionManager> {
        let url = herald_testkit_core::redis_url(12);
        let connect = async {
            redis::Client::open(url.as_str())?
                .get_connection_manager()
                .await
        };
        let error = match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(conn)) => return Some(conn),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in 3 s".to_owned(),
        };
        herald_testkit_core::skip(
            &format!(
                "Redis unreachable at {}",
                herald_testkit_core::redis_server()
            ),
            &format!("database 12: {error}"),
        );
        None
    }

    fn unique_key(test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("herald:test:rate:{test}:{}:{nanos}", std::process::id())
    }

    #[tokio::test]
    async fn the_redis_bucket_is_shared_across_nodes() {
        let (Some(a), Some(b)) = (redis().await, redis().await) else {
            return;
        };
        let key = unique_key("shared");
        let rate = RateLimit {
            per_second: 20.0,
            burst: 1,
        };
        // Two nodes, each with its own connection, two senders each.
        let nodes = [
            Arc::new(Limiter::redis(a.clone(), &key, rate)),
            Arc::new(Limiter::redis(b, &key, rate)),
        ];
        let start = std::time::Instant::now();
        let tasks: Vec<_> = nodes
            .iter()
            .flat_map(|node| [Arc::clone(node), Arc::clone(node)])
            .map(|limiter| {
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    for _ in 0..15 {
                        limiter.acquire().await;
                        times.push(std::time::Instant::now());
                    }
                    times
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.extend(task.await.unwrap());
        }
        assert_eq!(times.len(), 60);
        let took = *times.iter().max().unwrap() - start;
        assert!(took >= Duration::from_millis(2_800), "{took:?}");
        let busiest = busiest_second(&times);
        assert!(busiest <= 21, "{busiest} sends in one second");
        for node in &nodes {
            let Limiter::Redis(bucket) = &**node else {
                unreachable!()
            };
            assert!(!bucket.is_down(Instant::now()), "Redis answered throughout");
        }
        // The key expires on its own once the bucket is full again.
        let mut conn = a;
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((0..=1_100).contains(&ttl), "{ttl}");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_failing_redis_falls_back_to_the_local_bucket() {
        let Some(mut conn) = redis().await else {
            return;
        };
        // A key of the wrong type makes the script fail, as an outage would.
        let key = unique_key("fallback");
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg("not")
            .arg("a bucket")
            .query_async(&mut conn)
            .await
            .unwrap();
        let limiter = Limiter::redis(
            conn.clone(),
            &key,
            RateLimit {
                per_second: 10.0,
                burst: 1,
            },
        );
        let start = std::time::Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        // Still limited, by this node alone: the second and third waited.
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
        let Limiter::Redis(bucket) = &limiter else {
            unreachable!()
        };
        assert!(bucket.is_down(Instant::now()));
        assert!(bucket.logged.load(Ordering::Relaxed));
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
