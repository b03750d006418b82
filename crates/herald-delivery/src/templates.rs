//! Message templates.
//!
//! One file per event, locale and channel: `templates/ru/points_added/in_app.j2`.
//! A file holds one block per part of the message (`title` and `body` for
//! the inbox). Templates are loaded and compiled once at start; a template
//! that is missing for the default locale, or does not parse, stops the start.
//!
//! Rendering is strict: printing a variable the payload does not have is an
//! error, caught by the render-every-template test rather than in production.
//! `{% if field %}` on an optional field is fine.
//!
//! Filters: `plural(n, one, few, many)` (Russian rules with three forms,
//! English with two), `rub` (money: `1 500 ₽` / `₽1,500`), `datetime`
//! (epoch milliseconds → `2026-11-26 15:00 UTC`).

use std::path::Path;

use chrono::{DateTime, Utc};
use herald_core::{ChannelKind, EventKind, Locale};
use minijinja::value::Serde;
use minijinja::{Environment, State, UndefinedBehavior, Value};
use serde_json::{Map, Value as Json};

use crate::Error;

/// An inbox entry's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxText {
    pub title: String,
    pub body: String,
}

/// The compiled templates of every locale.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    default_locale: Locale,
}

impl Templates {
    /// Loads every `*.j2` under `dir/{locale}/{event}/`. Every event Herald
    /// puts in an inbox must have an `in_app` template in the default locale.
    pub fn load(dir: &Path, default_locale: Locale) -> Result<Templates, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.add_filter("plural", plural);
        env.add_filter("rub", rub);
        env.add_filter("datetime", datetime);
        for locale in Locale::ALL {
            let locale_dir = dir.join(locale.as_str());
            if !locale_dir.exists() {
                continue;
            }
            for &kind in EventKind::ALL {
                for channel in ChannelKind::ALL {
                    let path = locale_dir.join(kind.as_str()).join(format!("{channel}.j2"));
                    let source = match std::fs::read_to_string(&path) {
                        Ok(s) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(source) => {
                            return Err(Error::TemplateDir {
                                dir: path.display().to_string(),
                                source,
                            });
                        }
                    };
                    let name = name(locale, kind, channel);
                    env.add_template_owned(name.clone(), source)
                        .map_err(|source| Error::Template { name, source })?;
                }
            }
        }
        let templates = Templates {
            env,
            default_locale,
        };
        for &kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
            let name = name(default_locale, kind, ChannelKind::InApp);
            templates
                .env
                .get_template(&name)
                .map_err(|source| Error::Template { name, source })?;
        }
        Ok(templates)
    }

    pub fn default_locale(&self) -> Locale {
        self.default_locale
    }

    /// Whether `locale` has its own template (no fallback) for the pair.
    pub fn has(&self, locale: Locale, kind: EventKind, channel: ChannelKind) -> bool {
        self.env.get_template(&name(locale, kind, channel)).is_ok()
    }

    /// The inbox title and body of `kind` in `locale`, falling back to the
    /// default locale when that locale has no template.
    pub fn render_inbox(
        &self,
        kind: EventKind,
        locale: Locale,
        data: &Map<String, Json>,
    ) -> Result<InboxText, Error> {
        let locale = if self.has(locale, kind, ChannelKind::InApp) {
            locale
        } else {
            self.default_locale
        };
        let name = name(locale, kind, ChannelKind::InApp);
        let fail = |source| Error::Template {
            name: name.clone(),
            source,
        };
        let template = self.env.get_template(&name).map_err(fail)?;
        let mut ctx = Value::from(Serde(data));
        ctx = minijinja::context! { locale => locale.as_str(), ..ctx };
        let mut captured = template.render_captured(ctx).map_err(fail)?;
        let (title, body) = captured
            .with_state_mut(|state| {
                Ok::<_, minijinja::Error>((
                    state.render_block("title")?,
                    state.render_block("body")?,
                ))
            })
            .map_err(fail)?;
        Ok(InboxText {
            title: title.trim().to_owned(),
            body: body.trim().to_owned(),
        })
    }
}

fn name(locale: Locale, kind: EventKind, channel: ChannelKind) -> String {
    format!("{locale}/{kind}/{channel}")
}

/// `5 | plural("балл", "балла", "баллов")` → `5 баллов`;
/// `1 | plural("point", "points")` → `1 point`.
fn plural(n: i64, one: &str, few: &str, many: Option<&str>) -> String {
    let word = match many {
        None => {
            if n == 1 {
                one
            } else {
                few
            }
        }
        Some(many) => {
            let (m10, m100) = (n.abs() % 10, n.abs() % 100);
            if m10 == 1 && m100 != 11 {
                one
            } else if (2..=4).contains(&m10) && !(12..=14).contains(&m100) {
                few
            } else {
                many
            }
        }
    };
    format!(
        "{} {word}",
        group_digits(
            n.unsigned_abs(),
            if many.is_some() { '\u{202f}' } else { ',' }
        )
    )
}

/// Roubles, grouped the way the reader's locale groups them.
fn rub(state: &State, amount: f64) -> String {
    let ru = state
        .lookup("locale")
        .is_none_or(|l| l.as_str() != Some("en"));
    let kopecks = (amount * 100.0).round() as i64;
    let (whole, frac) = (kopecks / 100, kopecks % 100);
    let sep = if ru { '\u{202f}' } else { ',' };
    let mut out = group_digits(whole.unsigned_abs(), sep);
    if frac != 0 {
        out.push(if ru { ',' } else { '.' });
        out.push_str(&format!("{frac:02}"));
    }
    if ru {
        format!("{out}\u{a0}₽")
    } else {
        format!("₽{out}")
    }
}

fn datetime(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn group_digits(n: u64, sep: char) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(sep);
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::ValidatedEvent;

    fn templates() -> Templates {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
        Templates::load(&dir, Locale::Ru).unwrap()
    }

    #[test]
    fn every_inbox_template_renders_in_every_locale() {
        let t = templates();
        for &kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
            let event = ValidatedEvent::parse_kind(kind, kind.example()).unwrap();
            for locale in Locale::ALL {
                assert!(
                    t.has(locale, kind, ChannelKind::InApp),
                    "{locale}/{kind} missing"
                );
                let text = t.render_inbox(kind, locale, &event.data).unwrap();
                assert!(
                    !text.title.is_empty() && !text.body.is_empty(),
                    "{locale}/{kind}: {text:?}"
                );
                assert!(!text.title.contains("{{") && !text.body.contains("{%"));
            }
        }
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let t = templates();
        for &kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
            let mut data = kind.example();
            let fields: Vec<String> = data.as_object().unwrap().keys().cloned().collect();
            // Drop every field the payload can do without.
            for f in fields {
                let mut trial = data.clone();
                trial.as_object_mut().unwrap().remove(&f);
                if ValidatedEvent::parse_kind(kind, trial.clone()).is_ok() {
                    data = trial;
                }
            }
            let event = ValidatedEvent::parse_kind(kind, data).unwrap();
            for locale in Locale::ALL {
                t.render_inbox(kind, locale, &event.data)
                    .unwrap_or_else(|e| panic!("{locale}/{kind} without optional fields: {e}"));
            }
        }
    }

    #[test]
    fn a_missing_variable_fails_the_render() {
        let t = templates();
        let mut data = EventKind::PointsAdded.example();
        data.as_object_mut().unwrap().remove("restaurantName");
        let data = data.as_object().unwrap().clone();
        assert!(
            t.render_inbox(EventKind::PointsAdded, Locale::Ru, &data)
                .is_err()
        );
    }

    #[test]
    fn russian_reads_naturally() {
        let t = templates();
        let event =
            ValidatedEvent::parse_kind(EventKind::PointsAdded, EventKind::PointsAdded.example())
                .unwrap();
        let ru = t
            .render_inbox(EventKind::PointsAdded, Locale::Ru, &event.data)
            .unwrap();
        assert_eq!(ru.title, "+100 баллов");
        assert!(
            ru.body
                .starts_with("Начислено в «Пельменная №1». Баланс: 500 баллов."),
            "{}",
            ru.body
        );
        let en = t
            .render_inbox(EventKind::PointsAdded, Locale::En, &event.data)
            .unwrap();
        assert_eq!(en.title, "+100 points");
        assert_eq!(plural(21, "балл", "балла", Some("баллов")), "21 балл");
        assert_eq!(plural(3, "балл", "балла", Some("баллов")), "3 балла");
        assert_eq!(plural(12, "балл", "балла", Some("баллов")), "12 баллов");
        assert_eq!(
            plural(1500, "балл", "балла", Some("баллов")),
            "1\u{202f}500 баллов"
        );
        let tx = ValidatedEvent::parse_kind(
            EventKind::RestaurantTransaction,
            EventKind::RestaurantTransaction.example(),
        )
        .unwrap();
        let ru = t
            .render_inbox(EventKind::RestaurantTransaction, Locale::Ru, &tx.data)
            .unwrap();
        assert_eq!(ru.title, "Покупка на 150\u{a0}₽");
        assert!(
            ru.body.ends_with("Итого за сегодня: 5\u{202f}000\u{a0}₽."),
            "{}",
            ru.body
        );
    }
}
