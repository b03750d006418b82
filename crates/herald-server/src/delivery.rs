//! The delivery side of a Herald process: the queue, the transports, the
//! workers and the sweeper, built from settings. `herald serve` runs it
//! beside the HTTP server (the embedded default); `herald worker` runs it
//! alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_channels::{
    Fcm, FcmConfig, Outbox, PushRouter, Security, SendGrid, SendGridConfig, Smtp, SmtpConfig,
    Twilio, TwilioConfig, WebPush, WebPushConfig,
};
use herald_core::Channel;
use herald_core::realtime::Broadcast;
use herald_core::{ChannelKind, SharedRouting};
use herald_delivery::providers::{BreakerSettings, Limiter, ProviderMetrics, RateLimit};
use herald_delivery::{
    Channels, Clock, DeliveryMetrics, Dispatcher, ProviderChain, Queue, Sweeper, Templates,
};
use herald_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::{ChannelSettings, ConfigError, DeliverySettings, Settings};

/// How long to wait before replacing a worker that died.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Each channel's providers, in the order they are tried, by name.
pub type Providers = HashMap<ChannelKind, Vec<(String, Arc<dyn Channel>)>>;

/// Parts that tests (and embedders) may supply instead of the configured ones.
#[derive(Debug, Default, Clone)]
pub struct Components {
    /// Providers to use instead of `[channels]`.
    pub channels: Option<Providers>,
    /// The clock for scheduling decisions (quiet hours, leases, retries).
    pub clock: Option<Arc<dyn Clock>>,
    /// Where realtime events go.
    pub broadcast: Option<Arc<dyn Broadcast>>,
}

/// The providers `[channels]` asks for, in order, for each channel.
pub fn channels_from(settings: &Settings) -> Result<Providers, ConfigError> {
    let c = &settings.channels;
    let mut out = Providers::new();
    for (kind, key, list) in [
        (ChannelKind::Email, "channels.email", &c.email),
        (ChannelKind::Sms, "channels.sms", &c.sms),
        (ChannelKind::Push, "channels.push", &c.push),
    ] {
        let mut chain = Vec::with_capacity(list.names().len());
        for name in list.names() {
            chain.push((name.clone(), transport(c, kind, key, name)?));
        }
        out.insert(kind, chain);
    }
    Ok(out)
}

/// One provider of a channel, built from its settings.
fn transport(
    c: &ChannelSettings,
    kind: ChannelKind,
    key: &str,
    name: &str,
) -> Result<Arc<dyn Channel>, ConfigError> {
    Ok(match name {
        "outbox" => Arc::new(
            Outbox::new(&c.outbox_dir, kind, &c.email_from)
                .map_err(|e| ConfigError::new("channels.email_from", e))?,
        ),
        "smtp" if kind == ChannelKind::Email => {
            let m = &c.smtp;
            let security = Security::parse(&m.security).ok_or_else(|| {
                ConfigError::new(
                    "channels.smtp.security",
                    format!("`{}`: expected starttls, tls or none", m.security),
                )
            })?;
            Arc::new(
                Smtp::new(&SmtpConfig {
                    host: m.host.clone(),
                    port: m.port,
                    security,
                    username: m.username.clone(),
                    password: m.password.expose().to_owned(),
                    from: c.email_from.clone(),
                    timeout: Duration::from_millis(m.timeout_ms),
                    pool_max_size: m.pool_max_size,
                })
                .map_err(|e| provider_error("channels.smtp", e))?,
            )
        }
        "sendgrid" if kind == ChannelKind::Email => {
            let s = &c.sendgrid;
            Arc::new(
                SendGrid::new(&SendGridConfig {
                    base_url: s.base_url.clone(),
                    api_key: s.api_key.expose().to_owned(),
                    from: c.email_from.clone(),
                    timeout: Duration::from_millis(s.timeout_ms),
                    connect_timeout: Duration::from_millis(s.connect_timeout_ms),
                })
                .map_err(|e| provider_error("channels.sendgrid", e))?,
            )
        }
        "twilio" if kind == ChannelKind::Sms => {
            let t = &c.twilio;
            Arc::new(
                Twilio::new(&TwilioConfig {
                    base_url: t.base_url.clone(),
                    account_sid: t.account_sid.clone(),
                    auth_token: t.auth_token.expose().to_owned(),
                    from: t.from.clone(),
                    messaging_service_sid: t.messaging_service_sid.clone(),
                    status_callback: t.status_callback.clone(),
                    timeout: Duration::from_millis(t.timeout_ms),
                    connect_timeout: Duration::from_millis(t.connect_timeout_ms),
                })
                .map_err(|e| provider_error("channels.twilio", e))?,
            )
        }
        "fcm" | "webpush" | "fcm+webpush" | "webpush+fcm" if kind == ChannelKind::Push => {
            let fcm = name.contains("fcm").then(|| fcm(c)).transpose()?;
            let webpush = name.contains("webpush").then(|| webpush(c)).transpose()?;
            Arc::new(PushRouter::new(fcm, webpush))
        }
        other => {
            return Err(ConfigError::new(
                key,
                format!(
                    "unknown transport `{other}` for {kind} (available: {})",
                    available(kind)
                ),
            ));
        }
    })
}

/// FCM HTTP v1 from `[channels.fcm]`.
fn fcm(c: &ChannelSettings) -> Result<Arc<dyn Channel>, ConfigError> {
    let f = &c.fcm;
    let json = if f.service_account_json.is_empty() {
        if f.service_account_file.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "channels.fcm.service_account_file",
                "is required (or service_account_json)",
            ));
        }
        std::fs::read_to_string(&f.service_account_file).map_err(|e| {
            ConfigError::new(
                "channels.fcm.service_account_file",
                format!("{}: {e}", f.service_account_file.display()),
            )
        })?
    } else {
        f.service_account_json.expose().to_owned()
    };
    Ok(Arc::new(
        Fcm::new(&FcmConfig {
            base_url: f.base_url.clone(),
            service_account_json: json,
            token_url: f.token_url.clone(),
            timeout: Duration::from_millis(f.timeout_ms),
            connect_timeout: Duration::from_millis(f.connect_timeout_ms),
        })
        .map_err(|e| provider_error("channels.fcm", e))?,
    ))
}

/// Web Push from `[channels.webpush]`.
fn webpush(c: &ChannelSettings) -> Result<Arc<dyn Channel>, ConfigError> {
    let w = &c.webpush;
    Ok(Arc::new(
        WebPush::new(&WebPushConfig {
            vapid_private_key: w.vapid_private_key.expose().to_owned(),
            subject: w.subject.clone(),
            ttl: Duration::from_secs(w.ttl_seconds),
            timeout: Duration::from_millis(w.timeout_ms),
            connect_timeout: Duration::from_millis(w.connect_timeout_ms),
        })
        .map_err(|e| provider_error("channels.webpush", e))?,
    ))
}

/// The transports that can serve a channel kind.
fn available(kind: ChannelKind) -> &'static str {
    match kind {
        ChannelKind::Email => "outbox, smtp, sendgrid",
        ChannelKind::Sms => "outbox, twilio",
        ChannelKind::Push => "outbox, fcm, webpush, fcm+webpush",
        _ => "outbox",
    }
}

/// A provider's construction error, named by its full key.
fn provider_error(section: &str, e: herald_channels::Error) -> ConfigError {
    let key = if e.key == "email_from" {
        "channels.email_from".to_owned()
    } else {
        format!("{section}.{}", e.key)
    };
    ConfigError::new(key, e.message)
}

/// The rate limiters of `[delivery.rate_limits]`: shared through the
/// queue's Redis when there is one, so the limit holds across every node.
struct Limiters {
    limits: HashMap<String, RateLimit>,
    /// The queue's Redis, and the prefix of its buckets' keys.
    redis: Option<(redis::aio::ConnectionManager, String)>,
}

impl Limiters {
    async fn connect(d: &DeliverySettings) -> Result<Limiters, ConfigError> {
        let limits: HashMap<String, RateLimit> = d
            .rate_limits
            .iter()
            .map(|(name, l)| {
                let limit = RateLimit {
                    per_second: l.per_second,
                    burst: l.burst,
                };
                limit
                    .validate()
                    .map(|()| (name.clone(), limit))
                    .map_err(|e| ConfigError::new(format!("delivery.rate_limits.{name}"), e))
            })
            .collect::<Result<_, _>>()?;
        let url = d.queue_url.expose();
        let redis = if !limits.is_empty()
            && (url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(3)))
                .set_response_timeout(Some(Duration::from_secs(3)));
            let conn = redis::Client::open(url)
                .map_err(|e| ConfigError::new("delivery.queue_url", e.to_string()))?
                .get_connection_manager_with_config(config)
                .await
                .map_err(|e| ConfigError::new("delivery.queue_url", e.to_string()))?;
            Some((conn, format!("{}:rate", d.queue_name)))
        } else {
            None
        };
        Ok(Limiters { limits, redis })
    }

    fn limiter(&self, provider: &str) -> Option<Limiter> {
        let limit = *self.limits.get(provider)?;
        Some(match &self.redis {
            Some((conn, prefix)) => {
                Limiter::redis(conn.clone(), format!("{prefix}:{provider}"), limit)
            }
            None => Limiter::local(limit),
        })
    }
}

/// A process's delivery machinery.
#[derive(Debug, Clone)]
pub struct DeliveryRuntime {
    pub dispatcher: Arc<Dispatcher>,
    pub sweeper: Sweeper,
    pub queue: Queue,
    concurrency: usize,
    poll_interval: Duration,
    sweep_interval: Duration,
    worker_name: String,
}

impl DeliveryRuntime {
    /// Builds the delivery side; its metrics (workers, providers) join
    /// `metrics`, the process's registry.
    pub async fn build(
        settings: &Settings,
        store: Store,
        routing: SharedRouting,
        templates: Arc<Templates>,
        components: &Components,
        metrics: &prometheus::Registry,
    ) -> Result<DeliveryRuntime, Error> {
        let d = &settings.delivery;
        let queue = Queue::connect(d.queue_url.expose(), &d.queue_name, d.concurrency * 2)
            .await
            .map_err(|e| ConfigError::new("delivery.queue_url", e.to_string()))?;
        let registry = metrics;
        let metrics = Arc::new(DeliveryMetrics::new(registry));
        let providers = match &components.channels {
            Some(c) => c.clone(),
            None => channels_from(settings)?,
        };
        let provider_metrics = Arc::new(ProviderMetrics::new());
        provider_metrics
            .register(registry)
            .expect("provider metrics register once");
        let limiters = Limiters::connect(d).await?;
        let breaker = BreakerSettings {
            failures: d.breaker.failures,
            open_for: Duration::from_secs(d.breaker.open_seconds),
        };
        // A provider that serves several channels (the outbox) has a
        // breaker per channel; its name says which, in the trace, on
        // /readyz and in /metrics. Its rate limit is shared.
        let mut channels_of: HashMap<String, usize> = HashMap::new();
        for chain in providers.values() {
            for (name, _) in chain {
                *channels_of.entry(name.clone()).or_default() += 1;
            }
        }
        let channels: Channels = providers
            .into_iter()
            .map(|(kind, chain)| {
                let chain = chain
                    .into_iter()
                    .map(|(name, transport)| {
                        let limiter = limiters.limiter(&name);
                        let label = if channels_of[&name] > 1 {
                            format!("{name}:{kind}")
                        } else {
                            name
                        };
                        (label, transport, limiter)
                    })
                    .collect();
                let chain = ProviderChain::new(chain, breaker, provider_metrics.clone());
                (kind, Arc::new(chain))
            })
            .collect();
        let clock: Arc<dyn Clock> = components
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(herald_delivery::SystemClock));
        let lease = Duration::from_secs(d.lease_seconds);
        let dispatcher = Arc::new(Dispatcher {
            store: store.clone(),
            routing,
            templates,
            channels,
            retry: d.retry,
            expire_after: settings.expire_after()?,
            lease,
            clock: clock.clone(),
            broadcast: components.broadcast.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
            sends: Arc::new(tokio::sync::Semaphore::new(d.concurrency)),
            // Made once per process: the HTTP side verifies with the same key.
            unsubscribe: Some(herald_delivery::unsubscribe::Links {
                signer: herald_core::unsubscribe::Signer::new(&settings.unsubscribe_secret()),
                base_url: settings.server.public_url.clone(),
                ttl: settings.unsubscribe_ttl()?,
            }),
        });
        let sweeper = Sweeper {
            store,
            queue: queue.clone(),
            clock,
            stale: Duration::from_secs(d.stale_seconds),
            batch: d.sweep_batch,
            metrics,
        };
        Ok(DeliveryRuntime {
            dispatcher,
            sweeper,
            queue,
            concurrency: d.concurrency,
            poll_interval: Duration::from_millis(d.poll_interval_ms),
            sweep_interval: Duration::from_secs(d.sweep_interval_seconds),
            worker_name: format!(
                "herald-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
        })
    }

    /// Asks every transport whether it can work now (`Channel::check`), at
    /// most `within` in all (they are asked at once). A broken provider is
    /// reported, not fatal: the
    /// deliveries it owes wait and retry until it comes back.
    pub async fn check_channels(&self, within: Duration) -> Vec<(ChannelKind, Result<(), String>)> {
        let mut kinds: Vec<ChannelKind> = self.dispatcher.channels.keys().copied().collect();
        kinds.sort();
        // Concurrently: the whole answer takes at most `within`.
        futures::future::join_all(kinds.into_iter().map(|kind| async move {
            let channel = &self.dispatcher.channels[&kind];
            let result = tokio::time::timeout(within, channel.check())
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "{}: no answer within {within:?}",
                        channel.names().join(", ")
                    ))
                });
            (kind, result)
        }))
        .await
    }

    /// Runs the workers and the sweeper until `stop` is cancelled. A worker
    /// that dies (its queue storage was flushed or restarted under it) is
    /// replaced after a pause; what it held comes back through the sweeper.
    pub async fn run(self, stop: CancellationToken) -> Result<(), Error> {
        let sweeper = self.sweeper.clone();
        let sweep_stop = stop.clone();
        let sweeping = tokio::spawn(async move {
            sweeper
                .run(self.sweep_interval, sweep_stop.cancelled_owned())
                .await;
        });
        tracing::info!(worker = %self.worker_name, concurrency = self.concurrency, queue = ?self.queue, "delivery workers started");
        for generation in 1.. {
            let name = format!("{}-{generation}", self.worker_name);
            let result = self
                .queue
                .clone()
                .run_workers(
                    &name,
                    self.dispatcher.clone(),
                    self.concurrency,
                    self.poll_interval,
                    stop.clone().cancelled_owned(),
                )
                .await;
            if stop.is_cancelled() {
                break;
            }
            match result {
                Ok(()) => {
                    tracing::warn!(worker = %name, "delivery worker stopped; starting another")
                }
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "delivery worker failed; starting another")
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(RESTART_PAUSE) => {}
            }
        }
        let _ = sweeping.await;
        tracing::info!("delivery workers stopped");
        Ok(())
    }
}
