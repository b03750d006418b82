//! When to try a failed delivery again.
//!
//! Exponential backoff with full jitter (the AWS architecture blog's
//! "full jitter"): attempt *n* waits a uniformly random time in
//! `[0, min(cap, base × factor^(n−1))]`. Spreading retries over the whole
//! window keeps a provider that just came back from being hit by every
//! retry at once. A provider's own `Retry-After` is a floor: Herald never
//! comes back sooner than it was asked to.
//!
//! The defaults outlast a provider outage of hours: twelve attempts whose
//! windows grow from 15 s to a cap of an hour span up to about four hours
//! (two on average). Attempts a provider chain could not even make (every
//! breaker open) are not counted, so a long outage spends little of it.
//! Each channel may override any setting (`[delivery.retry.sms]`).

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// Retry settings (`[delivery.retry]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. After the last, Herald gives up.
    pub max_attempts: u32,
    /// The first retry's ceiling, in milliseconds.
    pub base_ms: u64,
    /// How much the ceiling grows per attempt.
    pub factor: f64,
    /// The largest ceiling, in milliseconds.
    pub cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            base_ms: 15_000,
            factor: 2.0,
            cap_ms: 3_600_000,
        }
    }
}

/// A channel's changes to the default policy (`[delivery.retry.email]`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    pub max_attempts: Option<u32>,
    pub base_ms: Option<u64>,
    pub factor: Option<f64>,
    pub cap_ms: Option<u64>,
}

/// Retry settings (`[delivery.retry]`): the default policy, and what each
/// channel changes of it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first included. After the last, Herald gives up.
    pub max_attempts: u32,
    /// The first retry's ceiling, in milliseconds.
    pub base_ms: u64,
    /// How much the ceiling grows per attempt.
    pub factor: f64,
    /// The largest ceiling, in milliseconds.
    pub cap_ms: u64,
    pub email: Option<RetryOverride>,
    pub sms: Option<RetryOverride>,
    pub push: Option<RetryOverride>,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings::from(RetryPolicy::default())
    }
}

impl From<RetryPolicy> for RetrySettings {
    fn from(p: RetryPolicy) -> Self {
        RetrySettings {
            max_attempts: p.max_attempts,
            base_ms: p.base_ms,
            factor: p.factor,
            cap_ms: p.cap_ms,
            email: None,
            sms: None,
            push: None,
        }
    }
}

impl RetrySettings {
    /// The policy of channels that change nothing.
    pub fn default_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            base_ms: self.base_ms,
            factor: self.factor,
            cap_ms: self.cap_ms,
        }
    }

    /// The policy `channel` retries by.
    pub fn for_channel(&self, channel: herald_core::ChannelKind) -> RetryPolicy {
        use herald_core::ChannelKind;
        let over = match channel {
            ChannelKind::Email => self.email,
            ChannelKind::Sms => self.sms,
            ChannelKind::Push => self.push,
            _ => None,
        };
        let d = self.default_policy();
        let Some(o) = over else { return d };
        RetryPolicy {
            max_attempts: o.max_attempts.unwrap_or(d.max_attempts),
            base_ms: o.base_ms.unwrap_or(d.base_ms),
            factor: o.factor.unwrap_or(d.factor),
            cap_ms: o.cap_ms.unwrap_or(d.cap_ms),
        }
    }

    /// Every policy in force, by the config key that sets it.
    pub fn policies(&self) -> Vec<(&'static str, RetryPolicy)> {
        use herald_core::ChannelKind;
        vec![
            ("delivery.retry", self.default_policy()),
            ("delivery.retry.email", self.for_channel(ChannelKind::Email)),
            ("delivery.retry.sms", self.for_channel(ChannelKind::Sms)),
            ("delivery.retry.push", self.for_channel(ChannelKind::Push)),
        ]
    }
}

impl RetryPolicy {
    /// Whether attempt `attempt` (from 1) was the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }

    /// The most attempt `attempt` may wait before the next one.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.saturating_sub(1).min(63) as i32);
        let ms = (self.base_ms as f64 * exp).min(self.cap_ms as f64);
        Duration::from_millis(ms as u64)
    }

    /// How long to wait after failed attempt `attempt`.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        let jittered = Duration::from_millis(rng.random_range(0..=ceiling));
        retry_after.map_or(jittered, |floor| jittered.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_ms: 500,
            factor: 2.0,
            cap_ms: 10_000,
        }
    }

    #[test]
    fn ceilings_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=7).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            vec![500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000]
        );
        assert!(!p.exhausted(5));
        assert!(p.exhausted(6));
        assert_eq!(p.ceiling(10_000), Duration::from_millis(10_000));
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_window() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=6 {
            let ceiling = p.ceiling(attempt);
            let delays: Vec<Duration> = (0..2_000)
                .map(|_| p.delay(attempt, None, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling));
            // Uniform on [0, ceiling]: the mean sits near the middle and both
            // ends of the window are reached.
            let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.len() as f64;
            let mid = ceiling.as_secs_f64() / 2.0;
            assert!(
                (mean - mid).abs() < mid * 0.1,
                "attempt {attempt}: mean {mean}, mid {mid}"
            );
            assert!(
                delays
                    .iter()
                    .any(|d| d.as_secs_f64() < ceiling.as_secs_f64() * 0.05)
            );
            assert!(
                delays
                    .iter()
                    .any(|d| d.as_secs_f64() > ceiling.as_secs_f64() * 0.95)
            );
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            let d = p.delay(1, Some(Duration::from_secs(30)), &mut rng);
            assert_eq!(d, Duration::from_secs(30));
        }
    }
}
