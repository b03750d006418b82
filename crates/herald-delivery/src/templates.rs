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
//! A digest (one message for many events, see `herald_core::smart`) is
//! `templates/{locale}/_digest.j2`, with blocks `title` (push title, email
//! subject), `body` (push body), `text` (email text) and `sms`; it must
//! exist for the default locale.
//!
//! Shared layouts live in `templates/_layouts/NAME.j2` and are extended as
//! `_layouts/NAME`. Templates are loaded and compiled once at start; a
//! template that is missing for the default locale, or does not parse,
//! stops the start.
//!
//! HTML is escaped by minijinja itself, never by hand: a template whose
//! name ends in `.html` (`email.html.j2`, the layouts, and the built-in
//! fallbacks below) auto-escapes every value it prints, so a reward called
//! `<script>` stays text.
//!
//! A channel an event has no template for (a user can opt into SMS for any
//! event) is rendered from the event's inbox text, so an opt-in never
//! fails for want of a template. An email without its own `email.html.j2`
//! gets an HTML part from a built-in `.html` template: the inbox title and
//! body, or one paragraph per paragraph of the email's text.
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

/// The HTML part of an email for an event without an email template: the
/// inbox title and body.
const INBOX_EMAIL_HTML: &str = "_builtin/inbox_email.html";
/// The HTML part of an email template without `email.html.j2`: each
/// paragraph of its text (split on blank lines).
const PARAGRAPHS_HTML: &str = "_builtin/paragraphs.html";

/// The unsubscribe footer of an HTML part whose template did not print
/// `unsubscribe_url` itself.
const UNSUBSCRIBE_HTML: &str = "_builtin/unsubscribe.html";

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
        // Their names end in `.html`: minijinja escapes what they print.
        for (name, source) in [
            (
                INBOX_EMAIL_HTML,
                "<p><strong>{{ title }}</strong></p><p>{{ body }}</p>",
            ),
            (
                PARAGRAPHS_HTML,
                "{% for p in paragraphs %}<p>{{ p }}</p>{% endfor %}",
            ),
            (
                UNSUBSCRIBE_HTML,
                "<p style=\"font-size:12px;color:#71717a\">{% if locale == \"ru\" %}Не хотите получать такие письма? \
                 <a href=\"{{ unsubscribe_url }}\">Отписаться</a>{% else %}Don't want these emails? \
                 <a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>{% endif %}</p>",
            ),
        ] {
            env.add_template(name, source)
                .map_err(|source| Error::Template {
                    name: name.to_owned(),
                    source,
                })?;
        }
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
        for locale in Locale::ALL {
            let path = dir.join(locale.as_str()).join("_digest.j2");
            if path.exists() {
                let name = digest_name(locale);
                env.add_template_owned(name.clone(), read(&path)?)
                    .map_err(|source| Error::Template { name, source })?;
            }
        }
        let templates = Templates {
            env,
            default_locale,
        };
        let digest = digest_name(default_locale);
        templates
            .env
            .get_template(&digest)
            .map_err(|source| Error::Template {
                name: digest,
                source,
            })?;
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
        self.render_with(kind, channel, locale, data, None)
    }

    /// As [`Templates::render`], with the recipient's unsubscribe link
    /// (`None` for a mandatory message): an email shows it in both parts
    /// (the layout's footer prints `unsubscribe_url`; an HTML part without
    /// it gets a built-in footer), an SMS ends with a short hint, push
    /// carries none.
    pub fn render_with(
        &self,
        kind: EventKind,
        channel: ChannelKind,
        locale: Locale,
        data: &Map<String, Json>,
        unsubscribe: Option<&str>,
    ) -> Result<Rendered, Error> {
        let rendered = self.render_plain(kind, channel, locale, data, unsubscribe)?;
        self.with_unsubscribe(rendered, channel, locale, unsubscribe)
    }

    /// Adds the unsubscribe link to a rendered message that does not show
    /// it yet: the email's text part and, unless its template printed it,
    /// its HTML part; an SMS's text. Push carries none.
    fn with_unsubscribe(
        &self,
        mut rendered: Rendered,
        channel: ChannelKind,
        locale: Locale,
        unsubscribe: Option<&str>,
    ) -> Result<Rendered, Error> {
        let Some(url) = unsubscribe else {
            return Ok(rendered);
        };
        match channel {
            ChannelKind::Email => {
                rendered.text.push_str(match locale {
                    Locale::Ru => "\n\n—\nНе хотите получать такие письма? Отписаться: ",
                    Locale::En => "\n\n—\nDon't want these emails? Unsubscribe: ",
                });
                rendered.text.push_str(url);
                // minijinja escapes `/` in what it prints (`&#x2f;`), and
                // the URL has no other character it escapes.
                if let Some(html) = &mut rendered.html
                    && !html.contains(url)
                    && !html.contains(&url.replace('/', "&#x2f;"))
                {
                    let footer = self.builtin(
                        UNSUBSCRIBE_HTML,
                        minijinja::context! { locale => locale.as_str(), unsubscribe_url => url },
                    )?;
                    match html.rfind("</body>") {
                        Some(at) => html.insert_str(at, &footer),
                        None => html.push_str(&footer),
                    }
                }
            }
            ChannelKind::Sms => {
                rendered.text.push_str(match locale {
                    Locale::Ru => " Отписаться: ",
                    Locale::En => " Unsubscribe: ",
                });
                rendered.text.push_str(url);
            }
            _ => {}
        }
        Ok(rendered)
    }

    fn render_plain(
        &self,
        kind: EventKind,
        channel: ChannelKind,
        locale: Locale,
        data: &Map<String, Json>,
        unsubscribe: Option<&str>,
    ) -> Result<Rendered, Error> {
        let own = self.has(locale, kind, channel) || self.has(self.default_locale, kind, channel);
        if !own {
            let inbox = self.render_inbox(kind, locale, data)?;
            return Ok(match channel {
                ChannelKind::Email => Rendered {
                    html: Some(self.builtin(
                        INBOX_EMAIL_HTML,
                        minijinja::context! { title => &inbox.title, body => &inbox.body },
                    )?),
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
                let html = match self.email_html(kind, locale, data, &subject, unsubscribe)? {
                    Some(html) => html,
                    None => self.builtin(
                        PARAGRAPHS_HTML,
                        minijinja::context! { paragraphs => text.split("\n\n").map(str::to_owned).collect::<Vec<_>>() },
                    )?,
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

    /// One message for the events of a digest, in `locale` (else the
    /// default locale), with the recipient's unsubscribe link shown as
    /// [`Templates::render_with`] shows it (`None`: a mandatory message).
    pub fn render_digest(
        &self,
        channel: ChannelKind,
        locale: Locale,
        digest: &DigestText<'_>,
        unsubscribe: Option<&str>,
    ) -> Result<Rendered, Error> {
        let locale = if self.env.get_template(&digest_name(locale)).is_ok() {
            locale
        } else {
            self.default_locale
        };
        let name = digest_name(locale);
        let fail = |source| Error::Template {
            name: name.clone(),
            source,
        };
        let template = self.env.get_template(&name).map_err(fail)?;
        let items: Vec<Value> = digest
            .items
            .iter()
            .map(|&(title, body)| minijinja::context! { title => title, body => body })
            .collect();
        let ctx = minijinja::context! {
            locale => locale.as_str(),
            count => digest.count,
            more => digest.count.saturating_sub(digest.items.len() as i64),
            category => digest.category,
            group => digest.group,
            items => items,
        };
        let mut captured = template.render_captured(ctx).map_err(fail)?;
        let mut block = |b: &str| {
            captured
                .with_state_mut(|state| state.render_block(b))
                .map(|s| s.trim().to_owned())
                .map_err(fail)
        };
        let rendered = match channel {
            ChannelKind::Email => {
                let (subject, text) = (block("title")?, block("text")?);
                let html = self.builtin(
                    PARAGRAPHS_HTML,
                    minijinja::context! { paragraphs => text.lines().map(str::to_owned).collect::<Vec<_>>() },
                )?;
                Rendered {
                    subject: Some(subject),
                    text,
                    html: Some(html),
                }
            }
            ChannelKind::Sms => Rendered {
                subject: None,
                text: block("sms")?,
                html: None,
            },
            _ => Rendered {
                subject: Some(block("title")?),
                text: block("body")?,
                html: None,
            },
        };
        self.with_unsubscribe(rendered, channel, locale, unsubscribe)
    }

    /// One of the built-in templates.
    fn builtin(&self, name: &str, ctx: Value) -> Result<String, Error> {
        let fail = |source| Error::Template {
            name: name.to_owned(),
            source,
        };
        self.env
            .get_template(name)
            .map_err(fail)?
            .render(ctx)
            .map_err(fail)
    }

    /// The HTML part from `email.html.j2`, when the event has one.
    fn email_html(
        &self,
        kind: EventKind,
        locale: Locale,
        data: &Map<String, Json>,
        subject: &str,
        unsubscribe: Option<&str>,
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
        let ctx = minijinja::context! {
            locale => locale.as_str(),
            subject => subject,
            unsubscribe_url => unsubscribe,
            ..data
        };
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

fn digest_name(locale: Locale) -> String {
    format!("{locale}/_digest")
}

/// What a digest message says: how many events, the most important few
/// (their inbox title and body, in the recipient's locale), and what they
/// have in common.
#[derive(Debug, Clone)]
pub struct DigestText<'a> {
    pub count: i64,
    /// The items to list, most important first.
    pub items: Vec<(&'a str, &'a str)>,
    /// The category every item shares, if they do.
    pub category: Option<&'a str>,
    /// `quiet`, or the category whose window this is.
    pub group: &'a str,
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
    fn digests_count_in_each_locales_plural_forms() {
        let t = templates();
        let digest = |count: i64, items: Vec<(&'static str, &'static str)>| DigestText {
            count,
            items,
            category: Some("points"),
            group: "quiet",
        };
        let one = [("+10 баллов", "Пельменная №1")];
        let push = t
            .render_digest(
                ChannelKind::Push,
                Locale::Ru,
                &digest(1, one.to_vec()),
                None,
            )
            .unwrap();
        assert_eq!(
            push.subject.as_deref(),
            Some("Пока вы отдыхали: 1 начисление")
        );
        assert_eq!(push.text, "+10 баллов");
        let three = [("a", "x"), ("b", "y"), ("c", "z")];
        for (n, ru, en) in [
            (2, "2 начисления", "2 points updates"),
            (5, "5 начислений", "5 points updates"),
            (21, "21 начисление", "21 points updates"),
        ] {
            let items = three[..2.min(n as usize)].to_vec();
            let r = t
                .render_digest(
                    ChannelKind::Push,
                    Locale::Ru,
                    &digest(n, items.clone()),
                    None,
                )
                .unwrap();
            assert!(r.subject.unwrap().ends_with(ru));
            let r = t
                .render_digest(ChannelKind::Push, Locale::En, &digest(n, items), None)
                .unwrap();
            assert!(r.subject.unwrap().ends_with(en));
        }
        let mut mixed = digest(6, three.to_vec());
        mixed.category = None;
        let sms = t
            .render_digest(ChannelKind::Sms, Locale::En, &mixed, None)
            .unwrap();
        assert_eq!(sms.text, "6 updates: a; b; c and 3 more");
        let email = t
            .render_digest(ChannelKind::Email, Locale::Ru, &mixed, None)
            .unwrap();
        assert_eq!(
            email.subject.as_deref(),
            Some("Пока вы отдыхали: 6 уведомлений")
        );
        assert!(
            email.text.contains("• a. x\n• b. y\n• c. z"),
            "{}",
            email.text
        );
        assert!(
            email.text.ends_with("И ещё 3 уведомления — во входящих."),
            "{}",
            email.text
        );
        assert!(email.html.unwrap().contains("<p>• a. x</p>"));
        // A digest shows the way out as a single message does.
        let url = "https://herald.example/u/abc";
        let email = t
            .render_digest(ChannelKind::Email, Locale::En, &mixed, Some(url))
            .unwrap();
        assert!(
            email.text.ends_with(&format!("Unsubscribe: {url}")),
            "{}",
            email.text
        );
        let html = email.html.unwrap();
        assert!(
            html.contains("Unsubscribe</a>") && html.contains("herald.example"),
            "{html}"
        );
        let sms = t
            .render_digest(ChannelKind::Sms, Locale::Ru, &mixed, Some(url))
            .unwrap();
        assert!(
            sms.text.ends_with(&format!("Отписаться: {url}")),
            "{}",
            sms.text
        );
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

    /// The HTML part of an email for an event without an email template.
    fn inbox_email(t: &Templates, restaurant: &str) -> (InboxText, String) {
        let mut data = EventKind::PointsAdded.example();
        data["restaurantName"] = serde_json::json!(restaurant);
        let event = ValidatedEvent::parse_kind(EventKind::PointsAdded, data).unwrap();
        let inbox = t
            .render_inbox(EventKind::PointsAdded, Locale::En, &event.data)
            .unwrap();
        let r = t
            .render(
                EventKind::PointsAdded,
                ChannelKind::Email,
                Locale::En,
                &event.data,
            )
            .unwrap();
        assert_eq!(r.subject.as_deref(), Some(inbox.title.as_str()));
        assert_eq!(r.text, inbox.body);
        (inbox, r.html.unwrap())
    }

    #[test]
    fn emails_built_from_the_inbox_text_are_escaped_by_minijinja() {
        let t = templates();
        // Safe text comes out exactly as it always did.
        let (inbox, html) = inbox_email(&t, "Pelmennaya No. 1");
        assert_eq!(
            html,
            format!(
                "<p><strong>{}</strong></p><p>{}</p>",
                inbox.title, inbox.body
            )
        );
        assert!(html.contains("Earned at Pelmennaya No. 1."), "{html}");
        // Markup in a value is text.
        let (inbox, html) = inbox_email(&t, r#"Tom & Jerry's <b>"Diner"</b>"#);
        assert!(
            inbox
                .body
                .contains(r#"Earned at Tom & Jerry's <b>"Diner"</b>."#),
            "{}",
            inbox.body
        );
        assert!(
            html.contains(
                "Earned at Tom &amp; Jerry&#x27;s &lt;b&gt;&quot;Diner&quot;&lt;&#x2f;b&gt;."
            ),
            "{html}"
        );
        assert!(!html.contains("<b>"), "{html}");
    }

    #[test]
    fn an_email_without_an_html_template_gets_one_escaped_paragraph_per_paragraph() {
        // A copy of the templates where one event's email has no HTML part.
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
        let dir = std::env::temp_dir().join(format!(
            "herald-templates-{}-{}",
            std::process::id(),
            line!()
        ));
        copy_dir(&src, &dir);
        for locale in Locale::ALL {
            std::fs::remove_file(
                dir.join(locale.as_str())
                    .join("points_redeemed")
                    .join("email.html.j2"),
            )
            .unwrap();
        }
        let t = Templates::load(&dir, Locale::Ru).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let render = |reward: &str| {
            let mut data = EventKind::PointsRedeemed.example();
            data["rewardName"] = serde_json::json!(reward);
            let event = ValidatedEvent::parse_kind(EventKind::PointsRedeemed, data).unwrap();
            t.render(
                EventKind::PointsRedeemed,
                ChannelKind::Email,
                Locale::En,
                &event.data,
            )
            .unwrap()
        };
        let safe = render("Free coffee");
        let expected: String = safe
            .text
            .split("\n\n")
            .map(|p| format!("<p>{p}</p>"))
            .collect();
        assert!(safe.text.contains("\n\n"), "{}", safe.text);
        assert_eq!(safe.html.unwrap(), expected);
        let unsafe_ = render("<i>Tea</i> & \"cake\"");
        let html = unsafe_.html.unwrap();
        assert!(
            html.contains("&lt;i&gt;Tea&lt;&#x2f;i&gt; &amp; &quot;cake&quot;"),
            "{html}"
        );
        assert!(html.starts_with("<p>") && !html.contains("<i>"), "{html}");
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
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
