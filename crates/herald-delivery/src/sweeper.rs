//! The sweeper: the database, not the queue, decides what is owed.
//!
//! Every `interval` it (1) hands back deliveries still `sending` past their
//! lease — their worker died — (2) re-enqueues due deliveries the queue
//! has lost (Redis flushed or restarted, a crash between commit and
//! enqueue), and (3) purges the queue's finished jobs.
//!
//! The queue cannot say which jobs it lost, and its jobs name many
//! deliveries each, so the sweeper goes by the database alone: a delivery
//! that is due and whose last job was made (or fell due) more than `stale`
//! ago is presumed lost and enqueued again, at most `batch` per sweep. A
//! healthy backlog older than `stale` is enqueued twice at worst, and a
//! delivery enqueued twice is still claimed once, so a wrong guess costs a
//! query, never a duplicate message. Every node runs a sweeper; they need
//! no coordination.

use std::sync::Arc;
use std::time::Duration;

use crate::Error;
use crate::clock::Clock;
use crate::metrics::DeliveryMetrics;
use crate::queue::Queue;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Deliveries whose worker died mid-attempt, handed back.
    pub released: u64,
    /// Deliveries the queue had lost, enqueued again.
    pub requeued: usize,
    /// Finished jobs removed from the queue.
    pub purged: u64,
}

#[derive(Debug, Clone)]
pub struct Sweeper {
    pub store: herald_store::Store,
    pub queue: Queue,
    pub clock: Arc<dyn Clock>,
    /// How old a job may get before the sweeper assumes it lost.
    pub stale: Duration,
    /// Most deliveries re-enqueued per sweep.
    pub batch: u32,
    pub metrics: Arc<DeliveryMetrics>,
}

impl Sweeper {
    pub async fn sweep_once(&self) -> Result<Sweep, Error> {
        let now = self.clock.now().timestamp_millis();
        let released = self.store.release_expired_leases(now).await?;
        self.metrics
            .recovered
            .with_label_values(&["lease_expired"])
            .inc_by(released);
        let stale = i64::try_from(self.stale.as_millis()).unwrap_or(i64::MAX);
        let stranded = self
            .store
            .stranded_deliveries(now, stale, self.batch)
            .await?;
        if !stranded.is_empty() {
            self.queue.enqueue(&stranded).await?;
            self.store.mark_enqueued(&stranded, now).await?;
            self.metrics
                .recovered
                .with_label_values(&["requeued"])
                .inc_by(stranded.len() as u64);
        }
        let purged = self.queue.purge_finished().await?;
        if released > 0 || !stranded.is_empty() {
            tracing::info!(
                released,
                requeued = stranded.len(),
                "sweep recovered deliveries"
            );
        }
        Ok(Sweep {
            released,
            requeued: stranded.len(),
            purged,
        })
    }

    /// Sweeps every `interval` until `shutdown` resolves.
    pub async fn run(self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticker.tick() => {
                    if let Err(e) = self.sweep_once().await {
                        tracing::warn!(error = %e, "sweep failed; trying again next tick");
                    }
                }
            }
        }
    }
}
