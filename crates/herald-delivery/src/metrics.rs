//! Delivery outcomes as Prometheus metrics: every attempt is logged and
//! counted in one place ([`crate::dispatch`]), so the two never disagree.
//!
//! Like the realtime gateway's, the registry belongs to the process's
//! delivery runtime rather than being global, so several Herald instances in
//! one process count separately.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use crate::dispatch::Outcome;

#[derive(Debug, Clone)]
pub struct DeliveryMetrics {
    registry: Registry,
    /// Attempts by channel and outcome (`sent`, `retrying`, `postponed`,
    /// `failed`, `expired`, `suppressed`, `deferred`, `released`,
    /// `lease_lost`).
    pub attempts: IntCounterVec,
    /// Time from claim to recorded outcome, by channel.
    pub attempt_seconds: HistogramVec,
    /// Deliveries the sweeper recovered, by cause (`lease_expired`, `requeued`).
    pub recovered: IntCounterVec,
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryMetrics {
    pub fn new() -> DeliveryMetrics {
        let registry = Registry::new();
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
        for m in [
            Box::new(attempts.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(attempt_seconds.clone()),
            Box::new(recovered.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        DeliveryMetrics {
            registry,
            attempts,
            attempt_seconds,
            recovered,
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

    /// The registry, for the provider chains' metrics to join.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}
