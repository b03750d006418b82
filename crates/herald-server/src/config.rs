//! Settings, layered: the compiled-in `config/default.toml`, then an
//! optional environment file, then `HERALD__SECTION__KEY` variables.
//!
//! Every value is typed; anything that does not parse or does not make
//! sense stops the start with the key's name. Secrets are wrapped in
//! [`Secret`], whose `Debug` never shows them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use config::{Config, Environment, File, FileFormat};
use herald_core::Locale;
use herald_store::Backend;
use serde::Deserialize;

/// The most runtime worker threads `server.runtime_threads` may ask for.
const MAX_RUNTIME_THREADS: usize = 1024;

/// The compiled-in defaults.
pub const DEFAULTS: &str = include_str!("../../../config/default.toml");

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub database: DatabaseSettings,
    pub routing: RoutingSettings,
    pub templates: TemplateSettings,
    pub delivery: DeliverySettings,
    pub channels: ChannelSettings,
    pub log: LogSettings,
    /// OTLP traces (`[telemetry]`).
    pub telemetry: TelemetrySettings,
    /// `herald worker`'s own HTTP listener (`[worker]`).
    pub worker: WorkerSettings,
    /// How long records are kept, and the purge that enforces it.
    pub retention: RetentionSettings,
    /// The realtime gateway (Socket.IO, `/ws`, resume, Redis bus).
    pub realtime: herald_realtime::RealtimeConfig,
    /// Scheduled sends (`sendAt`): what is accepted, and their release.
    pub scheduling: SchedulingSettings,
    /// One-click unsubscribe links in emails and SMS.
    pub unsubscribe: UnsubscribeSettings,
}

/// `[scheduling]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulingSettings {
    /// How far in the past a `sendAt` may be (clock skew, a slow producer)
    /// and still be sent at once; further back is refused.
    pub past_tolerance_seconds: u64,
    /// How far ahead a `sendAt` may be.
    pub max_ahead_days: u64,
    /// How often a node looks for scheduled events to release.
    pub release_interval_ms: u64,
    /// Most events one look releases.
    pub release_batch: u32,
}

/// `[unsubscribe]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsubscribeSettings {
    /// The key that signs links (at least 32 bytes). Empty: derived from
    /// the HS256 `auth.secret`; with RS256/EdDSA required in production
    /// (in development a random one per process).
    pub secret: Secret,
    /// How long a link works: `"90d"`, `"720h"`.
    pub ttl: String,
    /// The "all my notification settings" link of the confirmation page;
    /// empty: `{server.public_url}/console`.
    pub preferences_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Refuse to run with development conveniences (a generated secret).
    pub production: bool,
    pub data_dir: PathBuf,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most events in one published array.
    pub max_batch: usize,
    /// A bearer token `GET /metrics` requires; empty: open (scrape it on
    /// a private network, not through the public balancer).
    pub metrics_token: Secret,
    /// Where the outside world reaches Herald (`https://herald.example.com`):
    /// the base of the links Herald puts in messages (unsubscribe).
    pub public_url: String,
    /// The async runtime's worker threads; 0 picks them, see
    /// [`Settings::runtime_threads`].
    pub runtime_threads: usize,
}

/// How tokens are verified (contract §1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub algorithm: TokenAlgorithm,
    /// HS256 shared secret.
    pub secret: Secret,
    /// RS256/EdDSA PEM public key file.
    pub public_key_file: PathBuf,
    /// RS256/EdDSA PEM private key file, for `herald token` only.
    pub private_key_file: PathBuf,
    pub leeway_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TokenAlgorithm {
    HS256,
    RS256,
    EdDSA,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`.
    pub url: Secret,
    pub max_connections: u32,
    /// Users' profiles (and group members) `herald serve` keeps in memory
    /// for ingest, least recently used evicted first; 0 turns the cache
    /// off. Kept true by every write; on PostgreSQL each node listens for
    /// the others' changes on a connection of its own.
    pub directory_cache: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSettings {
    /// The routing table when none was stored over REST (the default).
    pub file: PathBuf,
    /// How often each process looks for a routing table stored over REST
    /// by another node, in milliseconds.
    pub poll_interval_ms: u64,
}

impl RoutingSettings {
    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    pub dir: PathBuf,
    pub default_locale: Locale,
}

/// Every provider a channel may name.
pub const PROVIDERS: [&str; 6] = ["outbox", "smtp", "sendgrid", "twilio", "fcm", "webpush"];

/// The delivery queue and its workers (`[delivery]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySettings {
    /// `sqlite://…` (one node) or `redis://…`.
    pub queue_url: Secret,
    pub queue_name: String,
    pub workers_in_serve: bool,
    pub concurrency: usize,
    pub poll_interval_ms: u64,
    pub lease_seconds: u64,
    pub sweep_interval_seconds: u64,
    pub stale_seconds: u64,
    pub sweep_batch: u32,
    /// The default retry policy and each channel's changes to it.
    pub retry: herald_delivery::RetrySettings,
    /// Per event category (`points`, `card`, …), how long a delivery stays
    /// worth sending: `"72h"`, `"30m"`, `"2d"`. Past it, the delivery ends
    /// `expired`. A category not listed never expires.
    #[serde(default)]
    pub expire_after: std::collections::BTreeMap<String, String>,
    /// Circuit breakers, one per provider.
    pub breaker: BreakerSettings,
    /// Per provider (`sendgrid`, `smtp`, `twilio`, `fcm`, `webpush`,
    /// `outbox`), a token bucket; shared by every node when the queue is on
    /// Redis. A provider not listed is not limited.
    #[serde(default)]
    pub rate_limits: std::collections::BTreeMap<String, RateLimitSettings>,
}

/// A provider's circuit breaker (`[delivery.breaker]`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open it.
    pub failures: u32,
    /// How long it stays open before one probe may try.
    pub open_seconds: u64,
}

/// A provider's rate limit (`[delivery.rate_limits.NAME]`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Sends per second, on average.
    pub per_second: f64,
    /// Sends that may go at once after a quiet spell (at least 1).
    pub burst: u32,
}

/// A channel's providers, in the order they are tried: `"sendgrid"`,
/// `"sendgrid, smtp"` or `["sendgrid", "smtp"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderList(pub Vec<String>);

impl<'de> Deserialize<'de> for ProviderList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names = match Raw::deserialize(d)? {
            Raw::One(s) => s.split(',').map(str::to_owned).collect::<Vec<_>>(),
            Raw::Many(v) => v,
        };
        Ok(ProviderList(
            names
                .into_iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
        ))
    }
}

impl ProviderList {
    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl From<&str> for ProviderList {
    fn from(s: &str) -> Self {
        ProviderList(s.split(',').map(|n| n.trim().to_owned()).collect())
    }
}

/// `"72h"`, `"30m"`, `"45s"`, `"2d"`, or plain seconds.
pub fn parse_duration(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3_600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

/// Which transport serves each channel (`[channels]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSettings {
    /// Each channel's providers, tried in order.
    pub email: ProviderList,
    pub sms: ProviderList,
    pub push: ProviderList,
    pub outbox_dir: PathBuf,
    pub email_from: String,
    /// `email = "smtp"`.
    pub smtp: SmtpSettings,
    /// `email = "sendgrid"`.
    pub sendgrid: SendGridSettings,
    /// `sms = "twilio"`.
    pub twilio: TwilioSettings,
    /// `push = "fcm"`.
    pub fcm: FcmSettings,
    /// `push = "webpush"`.
    pub webpush: WebPushSettings,
}

/// Web Push with VAPID (`[channels.webpush]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushSettings {
    /// The VAPID private key (P-256, base64url, no padding).
    pub vapid_private_key: Secret,
    /// `mailto:` or `https:` contact for push services.
    pub subject: String,
    pub ttl_seconds: u64,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Firebase Cloud Messaging HTTP v1 (`[channels.fcm]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmSettings {
    pub base_url: String,
    /// The service account key file downloaded from Firebase.
    pub service_account_file: PathBuf,
    /// The same key's JSON inline (for environments that pass secrets as
    /// variables); wins over the file.
    pub service_account_json: Secret,
    /// Overrides the key's `token_uri`; empty uses the key's.
    pub token_url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Twilio's Messages API (`[channels.twilio]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    pub base_url: String,
    /// `AC…`.
    pub account_sid: String,
    /// Also the key of `X-Twilio-Signature` on status callbacks.
    pub auth_token: Secret,
    /// The sending number (E.164); empty when `messaging_service_sid` is set.
    pub from: String,
    /// `MG…`: let a Messaging Service choose the sender.
    pub messaging_service_sid: String,
    /// The public URL of Herald's `/v1/webhooks/twilio`, or empty.
    pub status_callback: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// An SMTP server (`[channels.smtp]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `starttls`, `tls` (implicit, port 465) or `none`.
    pub security: String,
    /// Empty: no authentication.
    pub username: String,
    pub password: Secret,
    pub timeout_ms: u64,
    pub pool_max_size: u32,
}

/// SendGrid's v3 Mail Send API (`[channels.sendgrid]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendGridSettings {
    pub base_url: String,
    /// An API key with the `mail.send` scope.
    pub api_key: Secret,
    /// The Signed Event Webhook's verification key (base64 DER); empty
    /// leaves `/v1/webhooks/sendgrid` off.
    pub webhook_public_key: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Retention per kind of record (`[retention]`): a duration (`"90d"`,
/// `"12h"`), or `"off"` (also `"forever"`) to keep that kind forever.
/// Checked and typed by [`Settings::retention`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Inbox entries, counted from when the user read or deleted them.
    pub inbox_read: String,
    /// Inbox entries never read, counted from when they arrived.
    pub inbox_unread: String,
    /// Events, once no inbox entry refers to them.
    pub events: String,
    /// Finished deliveries (with their trace) and provider status reports.
    pub deliveries: String,
    /// `action_confirm` records once relayed.
    pub actions: String,
    /// Rows of the admin audit log, from when they were written.
    pub audit: String,
    /// Files of the development outbox (`channels.outbox_dir`).
    pub outbox_files: String,
    /// How often a process purges; `"off"`: never (another process or
    /// `herald purge` does).
    pub purge_interval: String,
    /// Most rows one purge transaction deletes.
    pub batch_size: u32,
    /// The pause between two batches, in milliseconds.
    pub batch_pause_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

/// Traces exported over OTLP/HTTP (protobuf) to a collector (`[telemetry]`).
/// Off (no exporter, no OpenTelemetry layer) while `otlp_endpoint` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's base URL (`http://collector:4318`); Herald posts to
    /// `{otlp_endpoint}/v1/traces`, as `OTEL_EXPORTER_OTLP_ENDPOINT` would.
    pub otlp_endpoint: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// The share of new traces kept, 0.0 to 1.0. A trace started upstream
    /// (an incoming `traceparent`) follows its sampled flag instead.
    pub sample_ratio: f64,
    /// How long one export may take, in milliseconds.
    pub export_timeout_ms: u64,
}

impl TelemetrySettings {
    pub fn enabled(&self) -> bool {
        !self.otlp_endpoint.trim().is_empty()
    }
}

/// `herald worker`'s HTTP listener: `/metrics` and `/healthz` (`[worker]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Serve `/metrics` and `/healthz` from `herald worker`.
    pub metrics: bool,
    pub metrics_host: String,
    /// 0 picks a free port (tests).
    pub metrics_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A value that must not reach a log: its `Debug` is redacted.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Settings {
    /// Loads the layers. `file` is the environment file, if any.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("{} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(File::from(path).required(true));
        }
        let settings: Settings = builder
            .add_source(
                Environment::with_prefix("HERALD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| {
                let text = e.to_string();
                let key = text
                    .rsplit_once(" for key `")
                    .and_then(|(_, k)| k.split('`').next())
                    .unwrap_or("")
                    .to_owned();
                ConfigError::new(key, text)
            })?;
        settings.validate()?;
        Ok(settings)
    }

    /// How many worker threads the async runtime runs: `server.runtime_threads`,
    /// or when that is 0 one per core — less one on the embedded SQLite
    /// database, whose writer works on a thread of its own (and is the
    /// busiest thread under load), so that the runtime's workers and the
    /// writer do not take turns on the same cores. Never fewer than one.
    pub fn runtime_threads(&self) -> usize {
        if self.server.runtime_threads > 0 {
            return self.server.runtime_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sqlite = Backend::of_url(self.database.url.expose()) == Some(Backend::Sqlite);
        cores.saturating_sub(usize::from(sqlite)).max(1)
    }

    /// `[delivery.expire_after]` as durations, by category.
    pub fn expire_after(&self) -> Result<HashMap<String, std::time::Duration>, ConfigError> {
        let categories = herald_core::EventKind::categories();
        self.delivery
            .expire_after
            .iter()
            .map(|(category, raw)| {
                let key = format!("delivery.expire_after.{category}");
                if !categories.contains(&category.as_str()) {
                    return Err(ConfigError::new(
                        key,
                        format!("unknown category (known: {})", categories.join(", ")),
                    ));
                }
                match parse_duration(raw) {
                    Some(d) if !d.is_zero() => Ok((category.clone(), d)),
                    _ => Err(ConfigError::new(
                        key,
                        format!("`{raw}`: expected a duration above zero such as \"72h\", \"30m\" or \"2d\""),
                    )),
                }
            })
            .collect()
    }

    /// `[retention]`, checked and typed: each duration above zero or
    /// `off`, the outbox kept no longer than the deliveries that name its
    /// files (an erase finds a user's files through them).
    pub fn retention(&self) -> Result<crate::lifecycle::PurgePolicy, ConfigError> {
        let r = &self.retention;
        let keep = |key: &str, raw: &str| -> Result<Option<std::time::Duration>, ConfigError> {
            let key = format!("retention.{key}");
            match raw.trim() {
                "off" | "forever" => return Ok(None),
                t if t.starts_with('-') => {
                    return Err(ConfigError::new(
                        key,
                        format!("`{raw}` is negative: give a duration above zero, or \"off\""),
                    ));
                }
                _ => {}
            }
            match parse_duration(raw) {
                Some(d) if !d.is_zero() => Ok(Some(d)),
                Some(_) => Err(ConfigError::new(
                    key,
                    format!(
                        "`{raw}` is zero: give a duration above zero, or \"off\" to keep forever"
                    ),
                )),
                None => Err(ConfigError::new(
                    key,
                    format!(
                        "`{raw}`: expected a duration above zero such as \"90d\", \"12h\" or \"30m\", or \"off\""
                    ),
                )),
            }
        };
        let policy = crate::lifecycle::PurgePolicy {
            inbox_read: keep("inbox_read", &r.inbox_read)?,
            inbox_unread: keep("inbox_unread", &r.inbox_unread)?,
            events: keep("events", &r.events)?,
            deliveries: keep("deliveries", &r.deliveries)?,
            actions: keep("actions", &r.actions)?,
            audit: keep("audit", &r.audit)?,
            outbox_files: keep("outbox_files", &r.outbox_files)?,
            interval: keep("purge_interval", &r.purge_interval)?,
            batch_size: r.batch_size,
            batch_pause: std::time::Duration::from_millis(r.batch_pause_ms),
        };
        if !(1..=crate::lifecycle::MAX_BATCH).contains(&r.batch_size) {
            return Err(ConfigError::new(
                "retention.batch_size",
                format!("must be 1 to {}", crate::lifecycle::MAX_BATCH),
            ));
        }
        if let Some(deliveries) = policy.deliveries
            && policy.outbox_files.is_none_or(|files| files > deliveries)
        {
            return Err(ConfigError::new(
                "retention.outbox_files",
                "must not be longer than retention.deliveries: an erase finds a user's outbox files through their deliveries",
            ));
        }
        Ok(policy)
    }

    /// `[unsubscribe] ttl`, checked.
    pub fn unsubscribe_ttl(&self) -> Result<std::time::Duration, ConfigError> {
        match parse_duration(&self.unsubscribe.ttl) {
            Some(d) if !d.is_zero() && d.as_secs() <= 10 * 365 * 86_400 => Ok(d),
            _ => Err(ConfigError::new(
                "unsubscribe.ttl",
                format!(
                    "`{}`: expected a duration above zero and at most ten years, such as \"90d\"",
                    self.unsubscribe.ttl
                ),
            )),
        }
    }

    /// The key unsubscribe links are signed with: `unsubscribe.secret`,
    /// else the HS256 secret (the signer derives a key of its own from
    /// it), else — in development only — a random one, so links work
    /// until the process restarts.
    pub fn unsubscribe_secret(&self) -> Vec<u8> {
        if !self.unsubscribe.secret.is_empty() {
            return self.unsubscribe.secret.expose().as_bytes().to_vec();
        }
        if self.auth.algorithm == TokenAlgorithm::HS256 && !self.auth.secret.is_empty() {
            return self.auth.secret.expose().as_bytes().to_vec();
        }
        tracing::warn!(
            "no unsubscribe.secret: unsubscribe links are signed with a random key and stop working when this process restarts"
        );
        rand::random::<[u8; 32]>().to_vec()
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.runtime_threads > MAX_RUNTIME_THREADS {
            return Err(ConfigError::new(
                "server.runtime_threads",
                format!("must be at most {MAX_RUNTIME_THREADS} (0: one per core)"),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.routing.poll_interval_ms == 0 {
            return Err(ConfigError::new(
                "routing.poll_interval_ms",
                "must be at least 1",
            ));
        }
        if self.server.max_batch == 0 {
            return Err(ConfigError::new("server.max_batch", "must be at least 1"));
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return Err(ConfigError::new(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if t.enabled() {
            let endpoint = t.otlp_endpoint.trim();
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(ConfigError::new(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL (OTLP/HTTP), or empty for off",
                ));
            }
            if t.service_name.trim().is_empty() {
                return Err(ConfigError::new(
                    "telemetry.service_name",
                    "must not be empty",
                ));
            }
            if t.export_timeout_ms == 0 {
                return Err(ConfigError::new(
                    "telemetry.export_timeout_ms",
                    "must be at least 1",
                ));
            }
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        let d = &self.delivery;
        let queue = d.queue_url.expose();
        if !(queue.starts_with("sqlite:")
            || queue.starts_with("redis://")
            || queue.starts_with("rediss://"))
        {
            return Err(ConfigError::new(
                "delivery.queue_url",
                "must start with sqlite:, redis:// or rediss://",
            ));
        }
        for (key, value) in [
            ("delivery.concurrency", d.concurrency as u64),
            ("delivery.poll_interval_ms", d.poll_interval_ms),
            ("delivery.lease_seconds", d.lease_seconds),
            ("delivery.sweep_interval_seconds", d.sweep_interval_seconds),
            ("delivery.stale_seconds", d.stale_seconds),
            ("delivery.sweep_batch", u64::from(d.sweep_batch)),
            ("delivery.breaker.failures", u64::from(d.breaker.failures)),
            ("delivery.breaker.open_seconds", d.breaker.open_seconds),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        d.retry
            .check()
            .map_err(|(key, message)| ConfigError::new(key, message))?;
        self.expire_after()?;
        self.retention()?;
        for (name, limit) in &d.rate_limits {
            let key = format!("delivery.rate_limits.{name}");
            if !PROVIDERS.contains(&name.as_str()) {
                return Err(ConfigError::new(
                    key,
                    format!("unknown provider (known: {})", PROVIDERS.join(", ")),
                ));
            }
            if !(limit.per_second > 0.0 && limit.per_second.is_finite()) {
                return Err(ConfigError::new(
                    format!("{key}.per_second"),
                    "must be a number > 0",
                ));
            }
            if limit.burst == 0 {
                return Err(ConfigError::new(
                    format!("{key}.burst"),
                    "must be at least 1",
                ));
            }
        }
        for (key, list) in [
            ("channels.email", &self.channels.email),
            ("channels.sms", &self.channels.sms),
            ("channels.push", &self.channels.push),
        ] {
            if list.names().is_empty() {
                return Err(ConfigError::new(key, "names no provider"));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = list.names().iter().find(|n| !seen.insert(n.as_str())) {
                return Err(ConfigError::new(key, format!("names `{dup}` twice")));
            }
        }
        if Backend::of_url(self.database.url.expose()).is_none() {
            return Err(ConfigError::new(
                "database.url",
                "must start with sqlite:, postgres: or postgresql:",
            ));
        }
        let sendgrid_key = &self.channels.sendgrid.webhook_public_key;
        if !sendgrid_key.is_empty()
            && let Err(e) = herald_channels::sendgrid::EventWebhookKey::parse(sendgrid_key)
        {
            return Err(ConfigError::new(
                "channels.sendgrid.webhook_public_key",
                e.message,
            ));
        }
        let public = &self.server.public_url;
        if !(public.starts_with("http://") || public.starts_with("https://"))
            || public.contains(char::is_whitespace)
        {
            return Err(ConfigError::new(
                "server.public_url",
                format!("`{public}`: expected an http:// or https:// URL"),
            ));
        }
        let sch = &self.scheduling;
        for (key, value) in [
            ("scheduling.max_ahead_days", sch.max_ahead_days),
            ("scheduling.release_interval_ms", sch.release_interval_ms),
            ("scheduling.release_batch", u64::from(sch.release_batch)),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if sch.max_ahead_days > 3_650 {
            return Err(ConfigError::new(
                "scheduling.max_ahead_days",
                "must be at most 3650",
            ));
        }
        self.unsubscribe_ttl()?;
        let secret = &self.unsubscribe.secret;
        if !secret.is_empty() && secret.expose().len() < 32 {
            return Err(ConfigError::new(
                "unsubscribe.secret",
                "must be at least 32 bytes",
            ));
        }
        if secret.is_empty()
            && self.server.production
            && self.auth.algorithm != TokenAlgorithm::HS256
        {
            return Err(ConfigError::new(
                "unsubscribe.secret",
                "is required in production with RS256 or EdDSA tokens (set HERALD__UNSUBSCRIBE__SECRET)",
            ));
        }
        if let Err(herald_realtime::Error::Config { key, message }) = self.realtime.validate() {
            return Err(ConfigError::new(format!("realtime.{key}"), message));
        }
        match self.auth.algorithm {
            TokenAlgorithm::HS256 => {
                if self.server.production && self.auth.secret.is_empty() {
                    return Err(ConfigError::new(
                        "auth.secret",
                        "is required in production (set HERALD__AUTH__SECRET)",
                    ));
                }
                if !self.auth.secret.is_empty() && self.auth.secret.expose().len() < 32 {
                    return Err(ConfigError::new("auth.secret", "must be at least 32 bytes"));
                }
            }
            TokenAlgorithm::RS256 | TokenAlgorithm::EdDSA => {
                if self.auth.public_key_file.as_os_str().is_empty() {
                    return Err(ConfigError::new(
                        "auth.public_key_file",
                        "is required for RS256 and EdDSA",
                    ));
                }
            }
        }
        Ok(())
    }

    /// In development with no HS256 secret, use the one kept in
    /// `data_dir/dev-secret`, making it on first use. Returns whether a
    /// development secret is in use, so the caller can say so.
    pub fn ensure_dev_secret(&mut self) -> Result<bool, ConfigError> {
        if self.auth.algorithm != TokenAlgorithm::HS256 || !self.auth.secret.is_empty() {
            return Ok(false);
        }
        if self.server.production {
            return Err(ConfigError::new("auth.secret", "is required in production"));
        }
        let path = self.server.data_dir.join("dev-secret");
        let io = |e: std::io::Error| {
            ConfigError::new("server.data_dir", format!("{}: {e}", path.display()))
        };
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 32 => s.trim().to_owned(),
            _ => {
                std::fs::create_dir_all(&self.server.data_dir).map_err(io)?;
                let bytes: [u8; 32] = rand::random();
                let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
                write_private(&path, &secret).map_err(io)?;
                secret
            }
        };
        self.auth.secret = Secret(secret);
        Ok(true)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_secrets_stay_out_of_debug() {
        let mut s: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        s.validate().unwrap();
        s.auth.secret = Secret::new("a-very-long-secret-that-nobody-should-see");
        assert!(!format!("{s:?}").contains("nobody"));
        s.server.production = true;
        s.auth.secret = Secret::default();
        assert_eq!(s.validate().unwrap_err().key, "auth.secret");
    }

    fn defaults() -> Settings {
        Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap()
    }

    #[test]
    fn the_runtime_leaves_the_sqlite_writer_a_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let mut s = defaults();
        assert!(s.database.url.expose().starts_with("sqlite:"));
        assert_eq!(s.runtime_threads(), (cores - 1).max(1));
        s.database.url = Secret::new("postgres://herald@db/herald");
        assert_eq!(s.runtime_threads(), cores);
        s.server.runtime_threads = 3;
        assert_eq!(s.runtime_threads(), 3);
        s.server.runtime_threads = 100_000;
        assert_eq!(s.validate().unwrap_err().key, "server.runtime_threads");
    }

    /// The defaults with `[retention]` changed by `toml` (as an environment
    /// file would), validated.
    fn with_retention(toml: &str) -> Result<Settings, ConfigError> {
        let s: Settings = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .add_source(File::from_str(
                &format!("[retention]\n{toml}"),
                FileFormat::Toml,
            ))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        s.validate().map(|()| s)
    }

    #[test]
    fn retention_defaults_are_documented_durations() {
        let p = defaults().retention().unwrap();
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(p.inbox_read, Some(90 * day));
        assert_eq!(p.inbox_unread, Some(365 * day));
        assert_eq!(p.events, Some(365 * day));
        assert_eq!(p.deliveries, Some(90 * day));
        assert_eq!(p.actions, Some(30 * day));
        assert_eq!(p.outbox_files, Some(14 * day));
        assert_eq!(p.interval, Some(std::time::Duration::from_secs(3600)));
        assert_eq!(p.retention().inbox_read, Some(90 * 86_400_000));
    }

    #[test]
    fn zero_or_negative_retention_is_an_error_naming_the_key() {
        for (toml, key) in [
            ("inbox_read = \"0d\"", "retention.inbox_read"),
            ("inbox_read = \"0\"", "retention.inbox_read"),
            ("inbox_unread = \"-5d\"", "retention.inbox_unread"),
            ("events = -3", "retention.events"),
            ("deliveries = 0", "retention.deliveries"),
            ("actions = \"soon\"", "retention.actions"),
            ("outbox_files = \"-1h\"", "retention.outbox_files"),
            ("purge_interval = \"0s\"", "retention.purge_interval"),
            ("batch_size = 0", "retention.batch_size"),
            // The outbox may not outlive the deliveries that name its files.
            ("outbox_files = \"91d\"", "retention.outbox_files"),
            ("outbox_files = \"off\"", "retention.outbox_files"),
        ] {
            let err = with_retention(toml).unwrap_err();
            assert_eq!(err.key, key, "{toml}: {err}");
        }
        let err = with_retention("inbox_read = \"-1d\"").unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = with_retention("events = \"0h\"").unwrap_err();
        assert!(err.to_string().contains("zero"), "{err}");
    }

    #[test]
    fn off_keeps_a_kind_forever() {
        let s = with_retention(
            "inbox_read = \"off\"\nevents = \"forever\"\ndeliveries = \"off\"\n\
             outbox_files = \"off\"\npurge_interval = \"off\"",
        )
        .unwrap();
        let p = s.retention().unwrap();
        assert_eq!((p.inbox_read, p.events, p.deliveries), (None, None, None));
        assert_eq!((p.outbox_files, p.interval), (None, None));
        assert_eq!(p.retention().inbox_read, None);
        assert!(p.inbox_unread.is_some());
    }
}
