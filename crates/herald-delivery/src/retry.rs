//! How deliveries retry: the `[delivery.retry]` settings, per channel.
//!
//! The backoff itself is Herald's one policy, [`herald_core::retry`]:
//! exponential with full jitter, a provider's own `Retry-After` as a floor.
//! This module only says what delivery configures of it.
//!
//! The defaults outlast a provider outage of hours: twelve attempts whose
//! windows grow from 15 s to a cap of an hour span up to about four hours
//! (two on average). Attempts a provider chain could not even make (every
//! breaker open) are not counted, so a long outage spends little of it.
//! Each channel may override any setting (`[delivery.retry.sms]`).

use std::time::Duration;

use herald_core::retry::{Backoff, InvalidBackoff, Knob};
use serde::Deserialize;

/// The policy of a channel, as configured: attempts in all (the first
/// included; after the last, Herald gives up) and the backoff between them.
pub type RetryPolicy = Backoff;

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
        RetrySettings {
            max_attempts: 12,
            base_ms: 15_000,
            factor: 2.0,
            cap_ms: 3_600_000,
            email: None,
            sms: None,
            push: None,
        }
    }
}

impl RetrySettings {
    /// The policy of channels that change nothing.
    pub fn default_policy(&self) -> RetryPolicy {
        policy(self.max_attempts, self.base_ms, self.factor, self.cap_ms)
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
        let o = over.unwrap_or_default();
        policy(
            o.max_attempts.unwrap_or(self.max_attempts),
            o.base_ms.unwrap_or(self.base_ms),
            o.factor.unwrap_or(self.factor),
            o.cap_ms.unwrap_or(self.cap_ms),
        )
    }

    /// Checks every policy in force; the error names the key at fault
    /// (`delivery.retry.sms.cap_ms`) and what is wrong with it.
    pub fn check(&self) -> Result<(), (String, &'static str)> {
        for (key, policy) in self.policies() {
            policy.check().map_err(|InvalidBackoff { knob, message }| {
                let field = match knob {
                    Knob::MaxAttempts => "max_attempts",
                    Knob::Base => "base_ms",
                    Knob::Factor => "factor",
                    Knob::Cap => "cap_ms",
                };
                (format!("{key}.{field}"), message)
            })?;
        }
        Ok(())
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

/// A delivery policy from its settings: it always has a limit on attempts.
fn policy(max_attempts: u32, base_ms: u64, factor: f64, cap_ms: u64) -> RetryPolicy {
    Backoff {
        base: Duration::from_millis(base_ms),
        factor,
        cap: Duration::from_millis(cap_ms),
        max_attempts: Some(max_attempts),
    }
}

#[cfg(test)]
mod tests {
    use herald_core::ChannelKind;

    use super::*;

    #[test]
    fn channels_override_the_default_knob_by_knob() {
        let settings = RetrySettings {
            sms: Some(RetryOverride {
                max_attempts: Some(6),
                cap_ms: Some(60_000),
                ..RetryOverride::default()
            }),
            ..RetrySettings::default()
        };
        let default = settings.default_policy();
        assert_eq!(default.max_attempts, Some(12));
        assert_eq!(default.base, Duration::from_secs(15));
        assert_eq!(default.cap, Duration::from_secs(3_600));
        let sms = settings.for_channel(ChannelKind::Sms);
        assert_eq!(sms.max_attempts, Some(6));
        assert_eq!(sms.base, default.base);
        assert_eq!(sms.cap, Duration::from_secs(60));
        assert_eq!(settings.for_channel(ChannelKind::Email), default);
        assert!(sms.exhausted(6) && !default.exhausted(6));
    }

    #[test]
    fn a_bad_knob_is_named_by_its_key() {
        assert_eq!(RetrySettings::default().check(), Ok(()));
        let settings = RetrySettings {
            push: Some(RetryOverride {
                cap_ms: Some(1),
                ..RetryOverride::default()
            }),
            ..RetrySettings::default()
        };
        assert_eq!(
            settings.check().unwrap_err().0,
            "delivery.retry.push.cap_ms"
        );
        let settings = RetrySettings {
            max_attempts: 0,
            ..RetrySettings::default()
        };
        assert_eq!(
            settings.check().unwrap_err().0,
            "delivery.retry.max_attempts"
        );
    }
}
