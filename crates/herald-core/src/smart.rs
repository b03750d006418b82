//! Smart delivery policy: digests, throttles, holds and escalation steps.
//!
//! All of them are "make this delivery due at time T for reason R" (design.md,
//! "Delivery as a scheduler"), so the policy here only answers *when* and
//! *why*; the store and the worker do the rest with the delivery's row.
//!
//! - A **digest** gathers what one recipient is owed on one channel into one
//!   message at a window's end. Deliveries headed for a digest carry a
//!   [`DigestGroup`] (`quiet`, or the event's category) and are due at the
//!   window's end; the worker that claims the first of them folds the rest in.
//!   Windows come from quiet hours, from the routing file's
//!   `[categories.NAME] digest = { every = "1h" }` (aligned to multiples of
//!   `every` since the epoch), and from a user's `digests.NAME.at` (daily at
//!   a local time).
//! - A **throttle** caps sends per (recipient, category, channel) over a
//!   sliding window; what exceeds it is folded into the next digest of its
//!   category or ends `throttled` ([`Overflow`]).
//! - A **hold** keeps a channel back for a grace period and skips it (`seen`)
//!   if the recipient read or acknowledged the event meanwhile; an
//!   **escalation step** is a hold for later recipients and channels, skipped
//!   once anyone the event reached has read it.
//!
//! Critical events are never digested or throttled; holds and escalation
//! steps are the routing file's explicit word, critical or not.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::channel::ChannelKind;
use crate::preferences::ClockTime;

/// A length of time as the routing file spells it: `90s`, `2m`, `1h`, `1d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period(Duration);

impl Period {
    pub fn from_secs(secs: u64) -> Period {
        Period(Duration::from_secs(secs))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    /// Parses `N` followed by `s`, `m`, `h` or `d`. Zero parses: whether it
    /// is allowed is the caller's to say, naming its key.
    pub fn parse(src: &str) -> Result<Period, String> {
        let src = src.trim();
        let split = src
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{src}` needs a unit: s, m, h or d (`90s`, `2m`, `1h`)"))?;
        let (digits, unit) = src.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{src}` is not a length of time such as `2m` or `1h`"))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(format!("`{src}`: the unit is s, m, h or d")),
        };
        n.checked_mul(secs)
            .filter(|s| *s <= 366 * 86_400)
            .map(Period::from_secs)
            .ok_or_else(|| format!("`{src}` is longer than a year"))
    }

    /// As [`Period::parse`], refusing zero.
    pub fn parse_positive(src: &str) -> Result<Period, String> {
        let p = Period::parse(src)?;
        if p.0.is_zero() {
            return Err(format!("`{src}`: must be more than zero"));
        }
        Ok(p)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if s >= secs && s.is_multiple_of(secs) {
                return write!(f, "{}{unit}", s / secs);
            }
        }
        write!(f, "{s}s")
    }
}

/// Which digest a delivery waits for; with the recipient and the channel it
/// is the digest's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestGroup {
    /// What quiet hours held back, any category.
    Quiet,
    /// One category's window (routing file, user preference, or a
    /// throttle's overflow).
    Category(&'static str),
}

impl DigestGroup {
    /// As stored on the delivery (`digest_key`).
    pub fn key(self) -> &'static str {
        match self {
            DigestGroup::Quiet => "quiet",
            DigestGroup::Category(c) => c,
        }
    }
}

/// Whose reading of the event skips a held delivery (`seen_check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeenCheck {
    /// A hold: the recipient read the entry or acknowledged the event.
    Recipient,
    /// An escalation step: anyone the event reached did.
    Anyone,
}

impl SeenCheck {
    /// As stored on the delivery.
    pub fn as_str(self) -> &'static str {
        match self {
            SeenCheck::Recipient => "recipient",
            SeenCheck::Anyone => "anyone",
        }
    }
}

/// What happens to a send beyond a throttle's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Folded into the category's next digest (its window, else the
    /// throttle's own window end).
    Digest,
    /// Ends `throttled`.
    Drop,
}

/// At most `max` sends per `per` for one (recipient, category, channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub max: u32,
    pub per: Period,
    pub overflow: Overflow,
}

/// A category's digest window from the routing file: every `every`, aligned
/// to the epoch (so `1h` ends on the hour, `1d` at midnight UTC), on these
/// channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestWindow {
    pub every: Period,
    pub channels: Vec<ChannelKind>,
}

impl DigestWindow {
    /// The end of the window `now` falls in: the next multiple of `every`.
    pub fn ends_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let every = self.every.as_millis().max(1);
        let t = now.timestamp_millis();
        let end = (t.div_euclid(every) + 1).saturating_mul(every);
        DateTime::from_timestamp_millis(end).unwrap_or(now)
    }
}

/// What the routing file says about one category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CategoryPolicy {
    pub digest: Option<DigestWindow>,
    pub throttle: BTreeMap<ChannelKind, Throttle>,
}

/// A user's digest of one category, daily at a local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DailyDigest {
    /// When the day's digest goes out, `HH:MM` local time.
    pub at: ClockTime,
    /// IANA zone; when absent, the contact's time zone, then UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl DailyDigest {
    /// The next `at` strictly after `now`, in the digest's zone.
    pub fn next(&self, now: DateTime<Utc>, fallback_tz: Option<&str>) -> DateTime<Utc> {
        let tz: Tz = self
            .timezone
            .as_deref()
            .or(fallback_tz)
            .and_then(|z| z.parse().ok())
            .unwrap_or(Tz::UTC);
        let local = now.with_timezone(&tz);
        for days in 0..3 {
            let date = local.date_naive() + Span::days(days);
            let naive = date.and_time(self.at.time());
            // A DST gap can swallow the time; the hour after it will do.
            let at = tz
                .from_local_datetime(&naive)
                .earliest()
                .or_else(|| tz.from_local_datetime(&(naive + Span::hours(1))).earliest());
            if let Some(at) = at.map(|t| t.with_timezone(&Utc))
                && at > now
            {
                return at;
            }
        }
        now + Span::days(1)
    }
}

// The routing file's spelling of the above.

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CategorySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<DigestSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    throttle: BTreeMap<String, ThrottleSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DigestSpec {
    every: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<ChannelKind>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ThrottleSpec {
    max: u32,
    per: String,
    #[serde(default = "default_overflow")]
    overflow: Overflow,
}

fn default_overflow() -> Overflow {
    Overflow::Digest
}

/// Compiles `[categories.NAME]`; errors name the key under it.
pub(crate) fn compile_category(spec: &CategorySpec) -> Result<CategoryPolicy, String> {
    let digest = match &spec.digest {
        None => None,
        Some(d) => {
            let every =
                Period::parse_positive(&d.every).map_err(|e| format!("digest.every: {e}"))?;
            let channels = d.channels.clone().unwrap_or_else(|| {
                ChannelKind::ALL
                    .into_iter()
                    .filter(|c| c.is_external())
                    .collect()
            });
            if let Some(c) = channels.iter().find(|c| !c.is_external()) {
                return Err(format!(
                    "digest.channels: `{c}` is not a delivery channel (email, sms, push)"
                ));
            }
            Some(DigestWindow { every, channels })
        }
    };
    let mut throttle = BTreeMap::new();
    for (name, t) in &spec.throttle {
        let channel = ChannelKind::parse(name)
            .filter(|c| c.is_external())
            .ok_or_else(|| format!("throttle.{name}: not a delivery channel (email, sms, push)"))?;
        if t.max == 0 {
            return Err(format!("throttle.{name}.max: must be at least 1"));
        }
        let per =
            Period::parse_positive(&t.per).map_err(|e| format!("throttle.{name}.per: {e}"))?;
        throttle.insert(
            channel,
            Throttle {
                max: t.max,
                per,
                overflow: t.overflow,
            },
        );
    }
    Ok(CategoryPolicy { digest, throttle })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_and_refuse_nonsense() {
        assert_eq!(Period::parse("90s").unwrap().as_duration().as_secs(), 90);
        assert_eq!(Period::parse("2m").unwrap().to_string(), "2m");
        assert_eq!(Period::parse("1d").unwrap().to_string(), "1d");
        assert_eq!(Period::parse("0m").unwrap().as_millis(), 0);
        assert!(
            Period::parse_positive("0h")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(Period::parse("5").is_err());
        assert!(Period::parse("5w").is_err());
        assert!(Period::parse("h").is_err());
        assert!(Period::parse("999999d").is_err());
    }

    #[test]
    fn hourly_windows_end_on_the_hour() {
        let w = DigestWindow {
            every: Period::parse("1h").unwrap(),
            channels: vec![ChannelKind::Push],
        };
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 10, 17, 5).unwrap();
        assert_eq!(
            w.ends_after(t),
            Utc.with_ymd_and_hms(2026, 12, 1, 11, 0, 0).unwrap()
        );
        let on = Utc.with_ymd_and_hms(2026, 12, 1, 11, 0, 0).unwrap();
        assert_eq!(w.ends_after(on), on + Span::hours(1));
    }

    #[test]
    fn daily_digests_go_at_the_next_local_time() {
        let d = DailyDigest {
            at: ClockTime::new(9, 0).unwrap(),
            timezone: None,
        };
        // 23:30 Moscow → 09:00 Moscow next day = 06:00 UTC.
        let t = Utc.with_ymd_and_hms(2026, 11, 26, 20, 30, 0).unwrap();
        assert_eq!(
            d.next(t, Some("Europe/Moscow")),
            Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0).unwrap()
        );
        // 08:00 Moscow → 09:00 the same day.
        let t = Utc.with_ymd_and_hms(2026, 11, 27, 5, 0, 0).unwrap();
        assert_eq!(
            d.next(t, Some("Europe/Moscow")),
            Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0).unwrap()
        );
    }
}
