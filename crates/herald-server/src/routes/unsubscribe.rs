//! `GET`, `POST /u/{token}`: the unsubscribe link of an email or SMS.
//!
//! The token (`herald_core::unsubscribe`) names the recipient, the event
//! category and the channel; following it needs no sign-in.
//!
//! - `GET` shows a small page in the recipient's language with a button:
//!   it changes nothing, because mail scanners and link previews fetch
//!   every link they see.
//! - `POST` with `List-Unsubscribe=One-Click` in the body (RFC 8058: what a
//!   mail client sends from its own unsubscribe button, or the page's
//!   button) turns the category × channel off in the recipient's
//!   preferences, records it (`preference_changes`, the message's delivery
//!   trace), and answers 200: JSON for a mail client, the confirmation
//!   page for the page's form.
//!
//! A token that does not verify is 403 and one past its time 410, both
//! changing nothing: problem+json for a one-click POST, the page (saying
//! so) for a browser.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use herald_core::unsubscribe::{TokenError, Unsubscribe};
use herald_core::{ChannelKind, Locale};
use serde_json::json;

use crate::problem::{ApiError, Code};
use crate::startup::AppState;

/// The page, auto-escaped by minijinja (its name ends in `.html`).
const PAGE: &str = include_str!("../../assets/unsubscribe.html.j2");

/// `GET /u/{token}`: the confirmation page; changes nothing.
#[tracing::instrument(skip_all)]
pub async fn page(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match verify(&state, &token) {
        Ok(u) => {
            let locale = locale_of(&state, Some(&u)).await;
            render(&state, StatusCode::OK, "confirm", locale, Some(&u), &token)
        }
        Err(err) => refused(&state, err, &token).await,
    }
}

/// `POST /u/{token}`: unsubscribe (RFC 8058 one-click, or the page's form).
#[tracing::instrument(skip_all)]
pub async fn one_click(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form = Form::parse(&headers, &body);
    let u = match verify(&state, &token) {
        Ok(u) => u,
        Err(err) if form.from_page => return refused(&state, err, &token).await,
        Err(TokenError::Forged) => {
            count(&state, None, "forged");
            return ApiError::forbidden("this unsubscribe link is not valid; nothing was changed")
                .into_response();
        }
        Err(TokenError::Expired(u)) => {
            count(&state, Some(u.channel), "expired");
            return ApiError::new(
                Code::LinkExpired,
                "this unsubscribe link has expired; nothing was changed",
            )
            .into_response();
        }
    };
    if !form.one_click {
        return ApiError::invalid(herald_core::ValidationError::new(
            "List-Unsubscribe",
            "the body must be List-Unsubscribe=One-Click (RFC 8058)",
        ))
        .into_response();
    }
    let now = state.delivery.dispatcher.clock.now().timestamp_millis();
    let changed = match state
        .store
        .opt_out(&u.user, &u.category, u.channel, u.delivery, now)
        .await
    {
        Ok(changed) => changed,
        Err(e) => return ApiError::from(e).into_response(),
    };
    count(
        &state,
        Some(u.channel),
        if changed { "applied" } else { "unchanged" },
    );
    tracing::info!(category = %u.category, channel = %u.channel, changed, "unsubscribed by link");
    if form.from_page {
        let locale = locale_of(&state, Some(&u)).await;
        return render(&state, StatusCode::OK, "done", locale, Some(&u), &token);
    }
    axum::Json(json!({
        "unsubscribed": true,
        "category": u.category,
        "channel": u.channel,
        "changed": changed,
    }))
    .into_response()
}

/// What the POST body says.
struct Form {
    /// `List-Unsubscribe=One-Click` is there.
    one_click: bool,
    /// The page's own form sent it (`confirm=page`): answer with the page.
    from_page: bool,
}

impl Form {
    /// RFC 8058 allows `application/x-www-form-urlencoded` and
    /// `multipart/form-data`.
    fn parse(headers: &HeaderMap, body: &[u8]) -> Form {
        let multipart = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if multipart {
            let text = String::from_utf8_lossy(body);
            let field = |name: &str, value: &str| {
                text.split(&format!("name=\"{name}\""))
                    .nth(1)
                    .and_then(|rest| rest.split("\r\n\r\n").nth(1))
                    .is_some_and(|v| v.starts_with(value))
            };
            return Form {
                one_click: field("List-Unsubscribe", "One-Click"),
                from_page: field("confirm", "page"),
            };
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
        Form {
            one_click: has("List-Unsubscribe", "One-Click"),
            from_page: has("confirm", "page"),
        }
    }
}

fn verify(state: &AppState, token: &str) -> Result<Unsubscribe, TokenError> {
    let links = state
        .delivery
        .dispatcher
        .unsubscribe
        .as_ref()
        .ok_or(TokenError::Forged)?;
    let now = state.delivery.dispatcher.clock.now().timestamp();
    links.signer.verify(token, now)
}

/// The page for a refused link: 403 or 410, nothing changed.
async fn refused(state: &AppState, err: TokenError, token: &str) -> Response {
    match err {
        TokenError::Forged => {
            count(state, None, "forged");
            let locale = locale_of(state, None).await;
            render(state, StatusCode::FORBIDDEN, "forged", locale, None, token)
        }
        TokenError::Expired(u) => {
            count(state, Some(u.channel), "expired");
            let locale = locale_of(state, Some(&u)).await;
            render(state, StatusCode::GONE, "expired", locale, Some(&u), token)
        }
    }
}

fn count(state: &AppState, channel: Option<ChannelKind>, outcome: &str) {
    state
        .scheduling
        .unsubscribes
        .with_label_values(&[channel.map_or("unknown", ChannelKind::as_str), outcome])
        .inc();
}

/// The recipient's language, else Herald's default.
async fn locale_of(state: &AppState, u: Option<&Unsubscribe>) -> Locale {
    let fallback = state.settings.templates.default_locale;
    let Some(u) = u else { return fallback };
    match state.store.contact(&u.user).await {
        Ok(Some(record)) => record.contact.locale.unwrap_or(fallback),
        _ => fallback,
    }
}

fn render(
    state: &AppState,
    status: StatusCode,
    page: &str,
    locale: Locale,
    u: Option<&Unsubscribe>,
    token: &str,
) -> Response {
    let ru = locale == Locale::Ru;
    let (channel, category) = u.map_or((String::new(), String::new()), |u| {
        (
            channel_name(u.channel, ru).to_owned(),
            category_name(&u.category, ru),
        )
    });
    let preferences_url = if state.settings.unsubscribe.preferences_url.is_empty() {
        format!(
            "{}/console",
            state.settings.server.public_url.trim_end_matches('/')
        )
    } else {
        state.settings.unsubscribe.preferences_url.clone()
    };
    let mut env = minijinja::Environment::new();
    let html = env
        .add_template("unsubscribe.html", PAGE)
        .and_then(|()| env.get_template("unsubscribe.html"))
        .and_then(|t| {
            t.render(minijinja::context! {
                state => page,
                locale => locale.as_str(),
                channel => channel,
                category => category,
                // Relative: the page posts back to the link it was opened by.
                action => format!("/u/{token}"),
                preferences_url => preferences_url,
            })
        });
    match html {
        Ok(html) => {
            let mut response = (status, Html(html)).into_response();
            // Never cached: the link's answer changes once it is used.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(e) => ApiError::internal(e).into_response(),
    }
}

fn channel_name(channel: ChannelKind, ru: bool) -> &'static str {
    match (channel, ru) {
        (ChannelKind::Email, true) => "письма",
        (ChannelKind::Email, false) => "emails",
        (ChannelKind::Sms, _) => "SMS",
        (ChannelKind::Push, true) => "push-уведомления",
        (ChannelKind::Push, false) => "push notifications",
        (_, true) => "уведомления",
        (_, false) => "notifications",
    }
}

fn category_name(category: &str, ru: bool) -> String {
    let name = match (category, ru) {
        ("points", true) => "баллы",
        ("points", false) => "your points",
        ("card", true) => "карта гостя",
        ("card", false) => "your card",
        ("account", true) => "аккаунт",
        ("account", false) => "your account",
        ("restaurant", true) => "ресторан",
        ("restaurant", false) => "your restaurant",
        ("system", true) => "система",
        ("system", false) => "the system",
        (other, _) => other,
    };
    name.to_owned()
}
