//! Delivery outcomes as Prometheus metrics: every attempt is logged and
//! counted in one place ([`crate::dispatch`]), so the two never disagree.
//!
//! Like the realtime gateway's, they join the registry the server makes for
//! the whole process rather than the crate's global one, so several Herald
//! instances in one process count separately; `GET /metrics` renders it.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::dispatch::Outcome;

#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    /// Attempts by channel and outcome (`sent`, `retrying`, `postponed`,
    /// `failed`, `expired`, `suppressed`, `deferred`, `released`,
    /// `lease_lost`; smart delivery's `throttled`, `skipped` (seen),
    /// `digest_wait`, and `digested`, counted per delivery folded).
    pub attempts: IntCounterVec,
    /// Time from claim to recorded outcome, by channel.
    pub attempt_seconds: HistogramVec,
    /// Deliveries the sweeper recovered, by cause (`lease_expired`, `requeued`).
    pub recovered: IntCounterVec,
    /// Digests sent (one message for several events), by channel.
    pub digests: IntCounterVec,
}

impl DeliveryMetrics {
    /// Registers the delivery metrics in `registry`.
    ///
    /// # Panics
    ///
    /// If `registry` already holds them.
    pub fn new(registry: &Registry) -> DeliveryMetrics {
        let attempts = IntCounterVec::new(
            Opts::new(
                "herald_delivery_attempts_total",
                "Delivery attempts by outcome",
            ),
            &["channel", "outcome"],
        )
        .expect("valid metric");
        let attempt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "herald_delivery_attempt_seconds",
                "Claim to recorded outcome",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["channel"],
        )
        .expect("valid metric");
        let recovered = IntCounterVec::new(
            Opts::new(
                "herald_delivery_recovered_total",
                "Deliveries the sweeper recovered",
            ),
            &["cause"],
        )
        .expect("valid metric");
        let digests = IntCounterVec::new(
            Opts::new(
                "herald_digests_sent_total",
                "Digests sent: one message for several events",
            ),
            &["channel"],
        )
        .expect("valid metric");
        for m in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempt_seconds.clone()),
            Box::new(recovered.clone()),
            Box::new(digests.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        DeliveryMetrics {
            attempts,
            attempt_seconds,
            recovered,
            digests,
        }
    }

    /// Counts one attempt's outcome.
    pub fn record(&self, channel: &str, outcome: &Outcome, elapsed: Duration) {
        self.attempts
            .with_label_values(&[channel, outcome.label()])
            .inc();
        self.attempt_seconds
            .with_label_values(&[channel])
            .observe(elapsed.as_secs_f64());
    }
}
