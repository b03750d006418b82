//! When to try again: the one backoff policy of every retry Herald makes —
//! deliveries, the `action_confirm` relay to the platform's webhook, and
//! the realtime bus reconnecting to Redis.
//!
//! Exponential backoff with full jitter (the AWS architecture blog's
//! "full jitter"): after failed attempt *n* (counted from 1) Herald waits a
//! uniformly random time in `[0, min(cap, base × factor^(n−1))]`. Spreading
//! retries over the whole window keeps a service that just came back from
//! being hit by every client at once. An answer's own `Retry-After` is a
//! floor: Herald never comes back sooner than it was asked to.
//!
//! The policy is pure: the caller passes the random source, so tests can
//! seed it, and parses its own settings into a [`Backoff`]; [`Backoff::check`]
//! says which knob is wrong so the caller can name its own config key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// Exponential backoff with full jitter, and optionally a limit on attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first retry's ceiling.
    pub base: Duration,
    /// How much the ceiling grows per attempt (at least 1).
    pub factor: f64,
    /// The largest ceiling.
    pub cap: Duration,
    /// Attempts in all, the first included; `None` retries for ever.
    pub max_attempts: Option<u32>,
}

/// A knob of [`Backoff`], to name in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knob {
    Base,
    Factor,
    Cap,
    MaxAttempts,
}

/// A [`Backoff`] that makes no sense: which knob, and why (the caller
/// names the knob by its own config key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBackoff {
    pub knob: Knob,
    pub message: &'static str,
}

impl Backoff {
    /// Doubling from `base` up to `cap`, for ever.
    pub const fn doubling(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            factor: 2.0,
            cap,
            max_attempts: None,
        }
    }

    /// The same policy, giving up after `max_attempts` attempts in all.
    #[must_use]
    pub const fn with_max_attempts(self, max_attempts: u32) -> Backoff {
        Backoff {
            max_attempts: Some(max_attempts),
            ..self
        }
    }

    /// Checks what the types cannot: a positive base, a cap no smaller than
    /// it, a finite factor of at least 1, at least one attempt.
    pub fn check(&self) -> Result<(), InvalidBackoff> {
        let bad = |knob, message| Err(InvalidBackoff { knob, message });
        if self.base.is_zero() {
            return bad(Knob::Base, "must be at least 1 ms");
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return bad(Knob::Factor, "must be a number ≥ 1");
        }
        if self.cap < self.base {
            return bad(Knob::Cap, "must be at least the base delay");
        }
        if self.max_attempts == Some(0) {
            return bad(Knob::MaxAttempts, "must be at least 1");
        }
        Ok(())
    }

    /// Whether attempt `attempt` (from 1) was the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
    }

    /// The most Herald may wait after failed attempt `attempt` (from 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self
            .factor
            .powi(attempt.saturating_sub(1).min(1_000) as i32);
        let ms = (self.base.as_millis() as f64 * exp).min(self.cap.as_millis() as f64);
        Duration::from_millis(ms as u64)
    }

    /// How long to wait after failed attempt `attempt` (from 1): uniformly
    /// random up to [`Backoff::ceiling`], and never less than `retry_after`.
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

/// An HTTP `Retry-After` value as a wait from `now`: delta-seconds (`120`)
/// or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`; a date already past
/// is no wait). `None` when it is neither.
pub fn retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn policy() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(10),
            max_attempts: Some(6),
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
        assert_eq!(p.ceiling(10_000), Duration::from_secs(10));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(10));
        let slow = Backoff {
            factor: 1.5,
            ..policy()
        };
        assert_eq!(slow.ceiling(3), Duration::from_millis(1_125));
    }

    #[test]
    fn without_a_limit_it_never_gives_up() {
        let p = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));
        assert!(!p.exhausted(u32::MAX));
        assert_eq!(p.ceiling(1), Duration::from_millis(100));
        assert_eq!(p.ceiling(7), Duration::from_secs(5));
        assert!(p.with_max_attempts(3).exhausted(3));
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

    #[test]
    fn nonsense_names_its_knob() {
        assert_eq!(policy().check(), Ok(()));
        let knob = |p: Backoff| p.check().unwrap_err().knob;
        assert_eq!(
            knob(Backoff {
                base: Duration::ZERO,
                ..policy()
            }),
            Knob::Base
        );
        assert_eq!(
            knob(Backoff {
                factor: 0.5,
                ..policy()
            }),
            Knob::Factor
        );
        assert_eq!(
            knob(Backoff {
                factor: f64::NAN,
                ..policy()
            }),
            Knob::Factor
        );
        assert_eq!(
            knob(Backoff {
                cap: Duration::from_millis(499),
                ..policy()
            }),
            Knob::Cap
        );
        assert_eq!(knob(policy().with_max_attempts(0)), Knob::MaxAttempts);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2026-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}
