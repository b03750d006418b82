//! The delivery side of a Herald process: the queue, the transports, the
//! workers and the sweeper, built from settings. `herald serve` runs it
//! beside the HTTP server (the embedded default); `herald worker` runs it
//! alone.

use std::sync::Arc;
use std::time::Duration;

use herald_channels::Outbox;
use herald_core::realtime::Broadcast;
use herald_core::{ChannelKind, RoutingTable};
use herald_delivery::{Channels, Clock, DeliveryMetrics, Dispatcher, Queue, Sweeper, Templates};
use herald_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::{ConfigError, Settings};

/// How long to wait before replacing a worker that died.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Parts that tests (and embedders) may supply instead of the configured ones.
#[derive(Debug, Default, Clone)]
pub struct Components {
    /// Transports to use instead of `[channels]`.
    pub channels: Option<Channels>,
    /// The clock for scheduling decisions (quiet hours, leases, retries).
    pub clock: Option<Arc<dyn Clock>>,
    /// Where realtime events go.
    pub broadcast: Option<Arc<dyn Broadcast>>,
}

/// The transports `[channels]` asks for.
pub fn channels_from(settings: &Settings) -> Result<Channels, ConfigError> {
    let c = &settings.channels;
    let mut channels = Channels::new();
    for (kind, key, choice) in [
        (ChannelKind::Email, "channels.email", &c.email),
        (ChannelKind::Sms, "channels.sms", &c.sms),
        (ChannelKind::Push, "channels.push", &c.push),
    ] {
        let transport: Arc<dyn herald_core::Channel> = match choice.as_str() {
            "outbox" => Arc::new(
                Outbox::new(&c.outbox_dir, kind, &c.email_from)
                    .map_err(|e| ConfigError::new("channels.email_from", e))?,
            ),
            other => {
                return Err(ConfigError::new(
                    key,
                    format!("unknown transport `{other}` (available: outbox)"),
                ));
            }
        };
        channels.insert(kind, transport);
    }
    Ok(channels)
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
    pub async fn build(
        settings: &Settings,
        store: Store,
        routing: Arc<RoutingTable>,
        templates: Arc<Templates>,
        components: &Components,
    ) -> Result<DeliveryRuntime, Error> {
        let d = &settings.delivery;
        let queue = Queue::connect(d.queue_url.expose(), &d.queue_name, d.concurrency * 2)
            .await
            .map_err(|e| ConfigError::new("delivery.queue_url", e.to_string()))?;
        let channels = match &components.channels {
            Some(c) => c.clone(),
            None => channels_from(settings)?,
        };
        let clock: Arc<dyn Clock> = components
            .clock
            .clone()
            .unwrap_or_else(|| Arc::new(herald_delivery::SystemClock));
        let lease = Duration::from_secs(d.lease_seconds);
        let metrics = Arc::new(DeliveryMetrics::new());
        let dispatcher = Arc::new(Dispatcher {
            store: store.clone(),
            routing,
            templates,
            channels,
            retry: d.retry,
            lease,
            clock: clock.clone(),
            broadcast: components.broadcast.clone(),
            queue: queue.clone(),
            metrics: metrics.clone(),
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
