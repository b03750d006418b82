//! Message templates.
//!
//! One file per event, locale and channel: `templates/ru/points_added/in_app.j2`.
//! A file holds one block per part of the message:
//!
//! | channel | blocks |
//! |---|---|
//! | `in_app` | `title`, `body` |
//! | `email` | `subject`, `text`; the HTML part is `email.html.j2`, a whole document (usually extending `_layouts/email.html`) |
//! | `sms` | `text` |
//! | `push` | `title`, `body` |
//!
//! Shared layouts live in `templates/_layouts/NAME.j2` and are extended as
//! `_layouts/NAME`. Templates whose name ends in `.html` escape every
//! value they print, so a reward called `<script>` stays text. Templates are loaded and compiled once at start; a
//! template that is missing for the default locale, or does not parse,
//! stops the start.
//!
//! A channel an event has no template for (a user can opt into SMS for any
//! event) is rendered from the event's inbox text, so an opt-in never
//! fails for want of a template.
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

/// A message's text for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Email subject, push title; `None` for SMS.
    pub subject: Option<String>,
    /// Email text part, SMS text, push body.
    pub text: String,
    /// Email HTML part.
    pub html: Option<String>,
}

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
    /// Loads every `*.j2` under `dir/{locale}/{event}/` and `dir/_layouts/`.
    /// Every event Herald puts in an inbox must have an `in_app` template in
    /// the default locale.
    pub fn load(dir: &Path, default_locale: Locale) -> Result<Templates, Error> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.add_filter("plural", plural);
        env.add_filter("rub", rub);
        env.add_filter("datetime", datetime);
        load_layouts(&mut env, &dir.join("_layouts"))?;
        for locale in Locale::ALL {
            for &kind in EventKind::ALL {
                let event_dir = dir.join(locale.as_str()).join(kind.as_str());
                for channel in ChannelKind::ALL {
                    let path = event_dir.join(format!("{channel}.j2"));
                    if !path.exists() {
                        continue;
                    }
                    let name = name(locale, kind, channel);
                    env.add_template_owned(name.clone(), read(&path)?)
                        .map_err(|source| Error::Template { name, source })?;
                }
                let html = event_dir.join("email.html.j2");
                if html.exists() {
                    let name = format!("{}.html", name(locale, kind, ChannelKind::Email));
                    env.add_template_owned(name.clone(), read(&html)?)
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
        let [title, body] =
            self.blocks(kind, ChannelKind::InApp, locale, data, ["title", "body"])?;
        Ok(InboxText { title, body })
    }

    /// The message for `channel` (email, SMS or push) in `locale`: the
    /// channel's own template in that locale, else in the default locale,
    /// else built from the inbox text.
    pub fn render(
        &self,
        kind: EventKind,
        channel: ChannelKind,
        locale: Locale,
        data: &Map<String, Json>,
    ) -> Result<Rendered, Error> {
        let own = self.has(locale, kind, channel) || self.has(self.default_locale, kind, channel);
        if !own {
            let inbox = self.render_inbox(kind, locale, data)?;
            return Ok(match channel {
                ChannelKind::Email => Rendered {
                    html: Some(format!(
                        "<p><strong>{}</strong></p><p>{}</p>",
                        escape_html(&inbox.title),
                        escape_html(&inbox.body)
                    )),
                    subject: Some(inbox.title),
                    text: inbox.body,
                },
                ChannelKind::Sms => Rendered {
                    subject: None,
                    text: format!("{}. {}", inbox.title.trim_end_matches('.'), inbox.body),
                    html: None,
                },
                _ => Rendered {
                    subject: Some(inbox.title),
                    text: inbox.body,
                    html: None,
                },
            });
        }
        Ok(match channel {
            ChannelKind::Email => {
                let [subject, text] =
                    self.blocks(kind, channel, locale, data, ["subject", "text"])?;
                let html = match self.email_html(kind, locale, data, &subject)? {
                    Some(html) => html,
                    None => text
                        .split("\n\n")
                        .map(|p| format!("<p>{}</p>", escape_html(p)))
                        .collect(),
                };
                Rendered {
                    subject: Some(subject),
                    text,
                    html: Some(html),
                }
            }
            ChannelKind::Sms => {
                let [text] = self.blocks(kind, channel, locale, data, ["text"])?;
                Rendered {
                    subject: None,
                    text,
                    html: None,
                }
            }
            _ => {
                let [title, body] = self.blocks(kind, channel, locale, data, ["title", "body"])?;
                Rendered {
                    subject: Some(title),
                    text: body,
                    html: None,
                }
            }
        })
    }

    /// The HTML part from `email.html.j2`, when the event has one.
    fn email_html(
        &self,
        kind: EventKind,
        locale: Locale,
        data: &Map<String, Json>,
        subject: &str,
    ) -> Result<Option<String>, Error> {
        let own = format!("{}.html", name(locale, kind, ChannelKind::Email));
        let fallback = format!(
            "{}.html",
            name(self.default_locale, kind, ChannelKind::Email)
        );
        let (name, locale) = if self.env.get_template(&own).is_ok() {
            (own, locale)
        } else if self.env.get_template(&fallback).is_ok() {
            (fallback, self.default_locale)
        } else {
            return Ok(None);
        };
        let fail = |source| Error::Template {
            name: name.clone(),
            source,
        };
        let template = self.env.get_template(&name).map_err(fail)?;
        let data = Value::from(Serde(data));
        let ctx = minijinja::context! { locale => locale.as_str(), subject => subject, ..data };
        template.render(ctx).map(Some).map_err(fail)
    }

    /// Renders the named blocks of one template, trimmed, falling back to
    /// the default locale when `locale` lacks the template.
    fn blocks<const N: usize>(
        &self,
        kind: EventKind,
        channel: ChannelKind,
        locale: Locale,
        data: &Map<String, Json>,
        blocks: [&str; N],
    ) -> Result<[String; N], Error> {
        let locale = if self.has(locale, kind, channel) {
            locale
        } else {
            self.default_locale
        };
        let name = name(locale, kind, channel);
        let fail = |source| Error::Template {
            name: name.clone(),
            source,
        };
        let template = self.env.get_template(&name).map_err(fail)?;
        let data = Value::from(Serde(data));
        let ctx = minijinja::context! { locale => locale.as_str(), ..data };
        let mut captured = template.render_captured(ctx).map_err(fail)?;
        let mut out: [String; N] = std::array::from_fn(|_| String::new());
        captured
            .with_state_mut(|state| {
                for (slot, block) in out.iter_mut().zip(blocks) {
                    *slot = state.render_block(block)?.trim().to_owned();
                }
                Ok::<_, minijinja::Error>(())
            })
            .map_err(fail)?;
        Ok(out)
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::TemplateDir {
        dir: path.display().to_string(),
        source,
    })
}

/// Loads `dir/NAME.j2` as `_layouts/NAME`.
fn load_layouts(env: &mut Environment<'static>, dir: &Path) -> Result<(), Error> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".j2"))
        else {
            continue;
        };
        let name = format!("_layouts/{stem}");
        env.add_template_owned(name.clone(), read(&path)?)
            .map_err(|source| Error::Template { name, source })?;
    }
    Ok(())
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
    fn optional_fields_may_be_absent_on_every_channel() {
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
                for channel in [ChannelKind::Email, ChannelKind::Sms, ChannelKind::Push] {
                    t.render(kind, channel, locale, &event.data)
                        .unwrap_or_else(|e| {
                            panic!("{locale}/{kind}/{channel} without optional fields: {e}")
                        });
                }
            }
        }
    }

    #[test]
    fn every_channel_renders_in_every_locale_and_defaults_have_their_own_templates() {
        let t = templates();
        let table = herald_core::RoutingTable::default_table();
        for &kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
            let event = ValidatedEvent::parse_kind(kind, kind.example()).unwrap();
            let defaults: Vec<ChannelKind> = table
                .route(&event)
                .deliveries
                .iter()
                .map(|d| d.channel)
                .collect();
            for channel in [ChannelKind::Email, ChannelKind::Sms, ChannelKind::Push] {
                for locale in Locale::ALL {
                    if defaults.contains(&channel) {
                        assert!(
                            t.has(locale, kind, channel),
                            "{locale}/{kind}/{channel} missing"
                        );
                    }
                    let r = t
                        .render(kind, channel, locale, &event.data)
                        .unwrap_or_else(|e| panic!("{locale}/{kind}/{channel}: {e}"));
                    assert!(!r.text.is_empty(), "{locale}/{kind}/{channel}");
                    assert_eq!(r.subject.is_some(), channel != ChannelKind::Sms);
                    assert_eq!(r.html.is_some(), channel == ChannelKind::Email);
                    if let Some(html) = &r.html {
                        assert!(!html.contains("{{") && !html.contains("{%"));
                    }
                }
            }
        }
    }

    #[test]
    fn email_html_escapes_and_reads_in_the_locale() {
        let t = templates();
        let mut data = EventKind::PointsRedeemed.example();
        data["rewardName"] = serde_json::json!("<script>alert(1)</script>");
        let event = ValidatedEvent::parse_kind(EventKind::PointsRedeemed, data).unwrap();
        let r = t
            .render(
                EventKind::PointsRedeemed,
                ChannelKind::Email,
                Locale::Ru,
                &event.data,
            )
            .unwrap();
        let html = r.html.unwrap();
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(
            html.starts_with("<!doctype html>\n<html lang=\"ru\">"),
            "{html}"
        );
        // The text part is not HTML and keeps the characters.
        assert!(r.text.contains("«<script>alert(1)</script>»"), "{}", r.text);
        assert_eq!(
            r.subject.unwrap(),
            "Списано 200 баллов: <script>alert(1)</script>"
        );
        let sms = t
            .render(
                EventKind::SystemAlert,
                ChannelKind::Sms,
                Locale::En,
                &ValidatedEvent::parse_kind(
                    EventKind::SystemAlert,
                    EventKind::SystemAlert.example(),
                )
                .unwrap()
                .data,
            )
            .unwrap();
        assert_eq!(
            sms.text,
            "[CRITICAL] Database failover: Primary database is unreachable"
        );
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
