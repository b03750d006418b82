//! Scheduled sends and cancellation, the HTTP side's part.
//!
//! `sendAt` is "make this due at T" (design.md, "Delivery as a
//! scheduler"): ingest writes the event at once, its deliveries due at T —
//! the workers need nothing else — and a release row
//! (`herald_store::scheduling`). What the delivery scheduler cannot do is
//! show the inbox entries and fan the event out to sockets at T: that is
//! the [`Releaser`]'s job. Every `herald serve` node runs one (it needs
//! the realtime hub, which dedicated workers do not have); each release is
//! claimed by one node with a lease, so it happens once across nodes, and
//! survives restarts because the row stays until the release is done. A
//! node that dies mid-release leaves the row to another once the lease
//! ends: entries are shown once, the realtime event may go out twice, never
//! not at all.
//!
//! How late a release can be: up to `scheduling.release_interval_ms`
//! after `sendAt` while a node is up. Deliveries do not wait for it.

use std::sync::Arc;
use std::time::Duration;

use herald_delivery::Clock;
use herald_realtime::{Hub, Outgoing};
use herald_store::Store;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

/// How long a node holds a release it claimed.
const RELEASE_LEASE: Duration = Duration::from_secs(60);

/// Scheduling, cancellation and unsubscribe decisions, for `/metrics`.
#[derive(Debug, Clone)]
pub struct SchedulingMetrics {
    /// Events accepted with a `sendAt`.
    pub scheduled: IntCounter,
    /// Scheduled events released (inbox shown, fanned out).
    pub released: IntCounter,
    /// Deliveries cancelled, by reason (`cancelled_by_publisher`,
    /// `inbox_deleted`), counting those stopped in flight.
    pub cancelled: IntCounterVec,
    /// Unsubscribe links followed, by channel and outcome (`applied`,
    /// `unchanged`, `forged`, `expired`).
    pub unsubscribes: IntCounterVec,
}

impl SchedulingMetrics {
    /// Registers them in `registry`.
    ///
    /// # Panics
    ///
    /// If `registry` already holds them.
    pub fn new(registry: &Registry) -> SchedulingMetrics {
        let scheduled = IntCounter::new(
            "herald_events_scheduled_total",
            "Events accepted with a sendAt",
        )
        .expect("valid metric");
        let released = IntCounter::new(
            "herald_events_released_total",
            "Scheduled events released at their sendAt",
        )
        .expect("valid metric");
        let cancelled = IntCounterVec::new(
            Opts::new(
                "herald_deliveries_cancelled_total",
                "Deliveries cancelled before they were sent",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let unsubscribes = IntCounterVec::new(
            Opts::new(
                "herald_unsubscribes_total",
                "Unsubscribe links followed, by outcome",
            ),
            &["channel", "outcome"],
        )
        .expect("valid metric");
        for m in [
            Box::new(scheduled.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(released.clone()),
            Box::new(cancelled.clone()),
            Box::new(unsubscribes.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        SchedulingMetrics {
            scheduled,
            released,
            cancelled,
            unsubscribes,
        }
    }
}

/// Releases scheduled events whose time has come.
#[derive(Debug, Clone)]
pub struct Releaser {
    pub store: Store,
    pub hub: Hub,
    pub clock: Arc<dyn Clock>,
    /// Most events one pass releases.
    pub batch: u32,
    pub metrics: Arc<SchedulingMetrics>,
}

impl Releaser {
    /// One pass at the clock's now: claims what is due, shows its inbox
    /// entries, fans it out, forgets it. How many events it released.
    pub async fn release_due(&self) -> Result<usize, herald_store::Error> {
        let now = self.clock.now().timestamp_millis();
        let lease = i64::try_from(RELEASE_LEASE.as_millis()).unwrap_or(i64::MAX);
        let claimed = self.store.claim_releases(now, lease, self.batch).await?;
        let mut released = 0;
        for release in claimed {
            // Cancelled since the claim: nothing to show or send.
            let Some(shown) = self.store.show_released(release.event_id, now).await? else {
                continue;
            };
            self.hub
                .publish(vec![Outgoing {
                    event: release.kind.as_str().to_owned(),
                    event_id: release.event_id.to_string(),
                    rooms: release.rooms,
                    data: release.payload,
                }])
                .await;
            self.store.finish_release(release.event_id).await?;
            self.metrics.released.inc();
            released += 1;
            tracing::info!(event_id = %release.event_id, inbox = shown, "scheduled event released");
        }
        Ok(released)
    }

    /// Releases every `interval` until `stop` is cancelled.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {
                    if let Err(e) = self.release_due().await {
                        tracing::warn!(error = %e, "releasing scheduled events failed; trying again next tick");
                    }
                }
            }
        }
    }
}
