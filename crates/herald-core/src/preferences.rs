//! What each person wants to receive (contract §5), and how to reach them.
//!
//! Preferences are a small document per user. The fields are all optional on
//! the wire: an absent switch means "as the routing table says". How they
//! combine with the routing table is [`crate::routing`]'s business.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::catalog::EventKind;
use crate::channel::ChannelKind;
use crate::error::ValidationError;
use crate::smart::DailyDigest;

/// A language Herald writes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Locale {
    Ru,
    En,
}

impl Locale {
    pub const ALL: [Locale; 2] = [Locale::Ru, Locale::En];

    pub fn as_str(self) -> &'static str {
        match self {
            Locale::Ru => "ru",
            Locale::En => "en",
        }
    }

    /// Accepts `ru`, `ru-RU`, `en_GB` and the like.
    pub fn parse(s: &str) -> Option<Locale> {
        let lang = s.split(['-', '_']).next()?.to_ascii_lowercase();
        Locale::ALL.into_iter().find(|l| l.as_str() == lang)
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A time of day, `HH:MM` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(NaiveTime);

impl ClockTime {
    pub fn new(hour: u32, minute: u32) -> Option<ClockTime> {
        NaiveTime::from_hms_opt(hour, minute, 0).map(ClockTime)
    }

    pub fn time(self) -> NaiveTime {
        self.0
    }
}

impl Serialize for ClockTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:02}:{:02}", self.0.hour(), self.0.minute()))
    }
}

impl<'de> Deserialize<'de> for ClockTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NaiveTime::parse_from_str(&s, "%H:%M")
            .map(ClockTime)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a time of day (HH:MM)")))
    }
}

/// A nightly window in which push and SMS wait (unless the event is critical).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuietHours {
    pub start: ClockTime,
    pub end: ClockTime,
    /// IANA zone; when absent, the contact's time zone, then UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl QuietHours {
    /// If `now` falls inside the window, the instant it ends.
    pub fn ends_after(
        &self,
        now: DateTime<Utc>,
        fallback_tz: Option<&str>,
    ) -> Option<DateTime<Utc>> {
        let tz: Tz = self
            .timezone
            .as_deref()
            .or(fallback_tz)
            .and_then(|z| z.parse().ok())
            .unwrap_or(Tz::UTC);
        let local = now.with_timezone(&tz);
        let (start, end, t) = (self.start.0, self.end.0, local.time());
        let end_date = if start < end {
            (start <= t && t < end).then_some(local.date_naive())?
        } else if start > end {
            if t >= start {
                local.date_naive() + Duration::days(1)
            } else if t < end {
                local.date_naive()
            } else {
                return None;
            }
        } else {
            return None;
        };
        let naive = end_date.and_time(end);
        // A DST gap can swallow the end time; the first instant after it will do.
        let ends = tz.from_local_datetime(&naive).earliest().or_else(|| {
            tz.from_local_datetime(&(naive + Duration::hours(1)))
                .earliest()
        })?;
        Some(ends.with_timezone(&Utc))
    }
}

/// One user's preferences. Absent entries defer to the routing table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preferences {
    /// The global switch: off silences everything but mandatory events.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Per channel (`in_app`, `email`, `sms`, `push`).
    #[serde(default)]
    pub channels: BTreeMap<ChannelKind, bool>,
    /// Per event name (`points_added`) or category (`points`), per channel.
    #[serde(default)]
    pub overrides: BTreeMap<String, BTreeMap<ChannelKind, bool>>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Per category (`points`): gather its email, SMS and push into one
    /// message a day at a local time instead of one per event. Absent
    /// from the document when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, DailyDigest>,
}

fn enabled() -> bool {
    true
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            enabled: true,
            channels: BTreeMap::new(),
            overrides: BTreeMap::new(),
            quiet_hours: None,
            digests: BTreeMap::new(),
        }
    }
}

impl Preferences {
    /// Checks what serde cannot: channel and override names, the time zone.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let channel_ok = |c: &ChannelKind| ChannelKind::PREFERENCE.contains(c);
        if let Some(c) = self.channels.keys().find(|c| !channel_ok(c)) {
            return Err(ValidationError::new(
                format!("channels.{c}"),
                "is not a channel preferences can switch (in_app, email, sms, push)",
            ));
        }
        let categories = EventKind::categories();
        for (key, channels) in &self.overrides {
            if EventKind::parse(key).is_none() && !categories.contains(&key.as_str()) {
                return Err(ValidationError::new(
                    format!("overrides.{key}"),
                    "is neither an event nor a category",
                ));
            }
            if let Some(c) = channels.keys().find(|c| !channel_ok(c)) {
                return Err(ValidationError::new(
                    format!("overrides.{key}.{c}"),
                    "is not a channel preferences can switch",
                ));
            }
        }
        if let Some(q) = &self.quiet_hours {
            if q.start == q.end {
                return Err(ValidationError::new(
                    "quietHours.end",
                    "must differ from start",
                ));
            }
            if let Some(tz) = &q.timezone {
                check_timezone("quietHours.timezone", tz)?;
            }
        }
        for (key, digest) in &self.digests {
            if !categories.contains(&key.as_str()) {
                return Err(ValidationError::new(
                    format!("digests.{key}"),
                    format!("is not a category ({})", categories.join(", ")),
                ));
            }
            if let Some(tz) = &digest.timezone {
                check_timezone(&format!("digests.{key}.timezone"), tz)?;
            }
        }
        Ok(())
    }

    /// The user's own word on `channel` for `event`, most specific first:
    /// an event override, then a category override.
    pub fn override_for(&self, event: EventKind, channel: ChannelKind) -> Option<(bool, bool)> {
        let lookup = |key: &str| {
            self.overrides
                .get(key)
                .and_then(|m| m.get(&channel))
                .copied()
        };
        lookup(event.as_str())
            .map(|on| (on, true))
            .or_else(|| lookup(event.category()).map(|on| (on, false)))
    }
}

/// How to reach a user, and how to speak to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164 (`+79161234567`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<Locale>,
    /// IANA zone (`Europe/Moscow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl Contact {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(email) = &self.email
            && !looks_like_email(email)
        {
            return Err(ValidationError::new("email", "must be an email address"));
        }
        if let Some(phone) = &self.phone
            && !looks_like_phone(phone)
        {
            return Err(ValidationError::new(
                "phone",
                "must be an E.164 number such as +79161234567",
            ));
        }
        if let Some(tz) = &self.timezone {
            check_timezone("timezone", tz)?;
        }
        Ok(())
    }
}

fn check_timezone(field: &str, tz: &str) -> Result<(), ValidationError> {
    tz.parse::<Tz>()
        .map(drop)
        .map_err(|_| ValidationError::new(field, format!("`{tz}` is not an IANA time zone")))
}

/// A deliberately plain check: one `@`, something on each side, a dot in the
/// domain, no spaces. Providers have the final word.
pub fn looks_like_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !s.chars().any(char::is_whitespace)
}

/// E.164: a plus, then 8 to 15 digits, the first not zero.
pub fn looks_like_phone(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn quiet(start: &str, end: &str, tz: &str) -> QuietHours {
        serde_json::from_value(json!({"start": start, "end": end, "timezone": tz})).unwrap()
    }

    #[test]
    fn overnight_quiet_hours_end_next_morning_in_the_users_zone() {
        let q = quiet("22:00", "08:00", "Europe/Moscow");
        // 23:30 in Moscow (UTC+3) is 20:30 UTC; quiet until 08:00 Moscow = 05:00 UTC.
        assert_eq!(
            q.ends_after(at("2026-11-26T20:30:00Z"), None),
            Some(at("2026-11-27T05:00:00Z"))
        );
        // 07:00 Moscow, same window, ends within the hour.
        assert_eq!(
            q.ends_after(at("2026-11-27T04:00:00Z"), None),
            Some(at("2026-11-27T05:00:00Z"))
        );
        // Noon in Moscow: not quiet.
        assert_eq!(q.ends_after(at("2026-11-27T09:00:00Z"), None), None);
    }

    #[test]
    fn daytime_windows_and_the_fallback_zone() {
        let q: QuietHours =
            serde_json::from_value(json!({"start": "13:00", "end": "14:00"})).unwrap();
        assert_eq!(
            q.ends_after(at("2026-11-26T10:30:00Z"), Some("Europe/Moscow")),
            Some(at("2026-11-26T11:00:00Z"))
        );
        assert_eq!(q.ends_after(at("2026-11-26T10:30:00Z"), None), None);
    }

    #[test]
    fn validation_names_the_field() {
        let bad: Preferences =
            serde_json::from_value(json!({"channels": {"realtime": false}})).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "channels.realtime");
        let bad: Preferences =
            serde_json::from_value(json!({"overrides": {"pointz": {"push": false}}})).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "overrides.pointz");
        let bad: Preferences = serde_json::from_value(
            json!({"quietHours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}}),
        )
        .unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "quietHours.timezone");
        let ok: Preferences = serde_json::from_value(
            json!({"overrides": {"points": {"email": true}, "points_added": {"push": false}}}),
        )
        .unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn event_overrides_beat_category_overrides() {
        let p: Preferences = serde_json::from_value(
            json!({"overrides": {"points": {"push": false}, "points_added": {"push": true}}}),
        )
        .unwrap();
        assert_eq!(
            p.override_for(EventKind::PointsAdded, ChannelKind::Push),
            Some((true, true))
        );
        assert_eq!(
            p.override_for(EventKind::PointsRedeemed, ChannelKind::Push),
            Some((false, false))
        );
        assert_eq!(
            p.override_for(EventKind::PointsRedeemed, ChannelKind::Email),
            None
        );
    }

    #[test]
    fn contacts_and_locales() {
        assert!(looks_like_email("anna@example.com"));
        assert!(!looks_like_email("anna@example"));
        assert!(!looks_like_email("an na@example.com"));
        assert!(looks_like_phone("+79161234567"));
        assert!(!looks_like_phone("89161234567"));
        assert_eq!(Locale::parse("ru-RU"), Some(Locale::Ru));
        assert_eq!(Locale::parse("de"), None);
        let c = Contact {
            phone: Some("12345".into()),
            ..Contact::default()
        };
        assert_eq!(c.validate().unwrap_err().field, "phone");
    }
}
