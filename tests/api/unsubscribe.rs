//! One-click unsubscribe: the headers and link every email that is not
//! mandatory carries, the SMS hint, and what following a link does.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use herald_core::{EventKind, Role};
use herald_delivery::Outcome;
use herald_server::config::Secret;
use herald_testkit::smtp::SmtpSink;
use herald_testkit::{Backend, Fakes, eventually, spawn_app_with, spawn_app_with_fakes};
use reqwest::Method;
use serde_json::{Value, json};

use super::delivery::{delivery_id, guest_with_email, redeemed, trace};
use super::*;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
const PUBLIC: &str = "https://herald.example.com";

fn header(mail: &mailparse::ParsedMail<'_>, name: &str) -> Option<String> {
    mail.headers
        .iter()
        .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
        .map(|h| h.get_value())
}

/// The app's own address for a link made with [`PUBLIC`].
fn local(link: &str) -> String {
    let path = link
        .strip_prefix(PUBLIC)
        .expect("a link under server.public_url");
    assert!(path.starts_with("/u/"), "{link}");
    path.to_owned()
}

async fn one_click(app: &TestApp, path: &str) -> reqwest::Response {
    app.request(Method::POST, path, "")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap()
}

async fn preferences(app: &TestApp, user: &str) -> Value {
    app.get(&format!("/v1/users/{user}/preferences"), &app.admin_token())
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_unsubscribes_in_one_click_and_the_next_one_is_not_sent() {
    for backend in BACKENDS {
        let mut sink = SmtpSink::start().await;
        let port = sink.addr.port();
        let Some(app) = spawn_app_with(backend, move |s| {
            s.server.public_url = PUBLIC.into();
            s.delivery.workers_in_serve = true;
            s.channels.email = "smtp".into();
            s.channels.email_from = "Herald <no-reply@herald.test>".into();
            s.channels.smtp.host = "127.0.0.1".into();
            s.channels.smtp.port = port;
            s.channels.smtp.security = "none".into();
            s.channels.smtp.password = Secret::new("");
        })
        .await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "unsub-ru", json!({"locale": "ru"})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let received = sink.next(Duration::from_secs(20)).await;
        let mail = mailparse::parse_mail(&received.data).unwrap();
        let list = header(&mail, "List-Unsubscribe").expect("List-Unsubscribe");
        let link = list
            .strip_prefix('<')
            .and_then(|l| l.strip_suffix('>'))
            .unwrap_or_else(|| panic!("{list}"))
            .to_owned();
        assert!(link.starts_with(&format!("{PUBLIC}/u/")), "{link}");
        assert_eq!(
            header(&mail, "List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let text = mail.subparts[0].get_body().unwrap();
        let html = mail.subparts[1].get_body().unwrap();
        assert!(text.contains(&format!("Отписаться: {link}")), "{text}");
        // (minijinja escapes `/` in attributes, as HTML allows.)
        let href = format!("href=\"{}\"", link.replace('/', "&#x2f;"));
        assert_eq!(html.matches(&href).count(), 1, "{html}");
        assert!(html.contains("Отписаться"), "{html}");
        let first = eventually("the email recorded", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "email").await;
            (d["status"] == "sent").then_some(d)
        })
        .await;

        // The page: in the recipient's language, a button, and no change.
        let path = local(&link);
        let res = app.get(&path, "").await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let page = res.text().await.unwrap();
        assert!(page.contains("<html lang=\"ru\">"), "{page}");
        assert!(page.contains("method=\"post\""), "{page}");
        assert!(page.contains("«баллы»"), "{page}");
        assert!(page.contains("herald.example.com&#x2f;console"), "{page}");
        assert_eq!(preferences(&app, &guest).await["overrides"], json!({}));

        // One click (RFC 8058), as a mail client sends it.
        let res = one_click(&app, &path).await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["changed"], true, "{body}");
        assert_eq!(
            preferences(&app, &guest).await["overrides"],
            json!({"points": {"email": false}})
        );
        let again: Value = one_click(&app, &path).await.json().await.unwrap();
        assert_eq!(again["changed"], false, "{again}");
        // In the first email's trace, and the preferences' history.
        let first_now: Value = app
            .get(
                &format!(
                    "/v1/notifications/{}/deliveries",
                    app.inbox(&token).await[0]["id"].as_str().unwrap()
                ),
                &token,
            )
            .await
            .json()
            .await
            .unwrap();
        let email = first_now["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == first["id"])
            .unwrap()
            .clone();
        let step = email["trace"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (&step["step"], &step["actor"]),
            (&json!("unsubscribe"), &json!("recipient"))
        );
        let changes = app
            .store
            .preference_changes(&herald_core::UserId(guest.clone()))
            .await
            .unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].scope.as_str(), changes[0].channel.as_str()),
            ("points", "email")
        );

        // The next points email is not sent: suppressed by the preference.
        app.publish_ok(&redeemed(&guest)).await;
        let next = eventually(
            "the next email decided",
            Duration::from_secs(20),
            || async {
                let d = trace(&app, &token, "email").await;
                (d["id"] != first["id"] && d["status"] != "pending").then_some(d)
            },
        )
        .await;
        assert_eq!(next["status"], "suppressed", "{next}");
        assert_eq!(next["reason"], "category_override", "{next}");
        let metrics = app.get("/metrics", "").await.text().await.unwrap();
        assert!(
            metrics.contains("herald_unsubscribes_total{channel=\"email\",outcome=\"applied\"} 1"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_expired_link_changes_nothing() {
    for backend in BACKENDS {
        let fakes = Fakes::new(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |s| {
            s.server.public_url = PUBLIC.into();
            s.unsubscribe.ttl = "30d".into();
        })
        .await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "unsub-en", json!({"locale": "en"})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let id = delivery_id(&trace(&app, &token, "email").await);
        let outcome = app.delivery.dispatcher.process(id).await.unwrap();
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        let message = fakes.email.sent().pop().unwrap();
        let link = message.list_unsubscribe.clone().expect("a link");
        assert!(
            message.text.contains(&format!("Unsubscribe: {link}")),
            "{}",
            message.text
        );
        let path = local(&link);

        // One character changed: forged.
        let mut tampered = path.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let res = app.get(&tampered, "").await;
        assert_eq!(res.status(), 403);
        // A forged link names nobody: Herald's default language.
        assert!(res.text().await.unwrap().contains("Ссылка недействительна"));
        let (status, body) = problem(one_click(&app, &tampered).await).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
        // A body that is not RFC 8058's: refused, naming the field.
        let res = app
            .request(Method::POST, &path, "")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("unsubscribe=yes")
            .send()
            .await
            .unwrap();
        let (status, body) = problem(res).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some("List-Unsubscribe"))
        );
        assert_eq!(preferences(&app, &guest).await["overrides"], json!({}));

        // Past its time: expired, in the recipient's language.
        fakes.clock().advance(chrono::Duration::days(31));
        let res = app.get(&path, "").await;
        assert_eq!(res.status(), 410);
        let page = res.text().await.unwrap();
        assert!(
            page.contains("<html lang=\"en\">") && page.contains("expired"),
            "{page}"
        );
        let (status, body) = problem(one_click(&app, &path).await).await;
        assert_eq!((status, body["code"].as_str()), (410, Some("link_expired")));
        assert_eq!(preferences(&app, &guest).await["overrides"], json!({}));
        assert!(
            app.store
                .preference_changes(&herald_core::UserId(guest.clone()))
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_form_unsubscribes_and_confirms_in_the_recipients_language() {
    let fakes = Fakes::new(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap());
    let app = spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |s| {
        s.server.public_url = PUBLIC.into();
        s.unsubscribe.preferences_url = "https://loyalty.example.com/settings".into();
    })
    .await
    .unwrap();
    let (guest, token) = guest_with_email(&app, "unsub-page", json!({"locale": "en"})).await;
    app.publish_ok(&redeemed(&guest)).await;
    let id = delivery_id(&trace(&app, &token, "email").await);
    app.delivery.dispatcher.process(id).await.unwrap();
    let link = fakes.email.sent().pop().unwrap().list_unsubscribe.unwrap();
    let path = local(&link);
    let page = app.get(&path, "").await.text().await.unwrap();
    assert!(
        page.contains("https:&#x2f;&#x2f;loyalty.example.com&#x2f;settings"),
        "{page}"
    );
    assert!(page.contains("Unsubscribe?"), "{page}");
    let res = app
        .request(Method::POST, &path, "")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click&confirm=page")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let done = res.text().await.unwrap();
    assert!(done.contains("You are unsubscribed"), "{done}");
    assert_eq!(
        preferences(&app, &guest).await["overrides"],
        json!({"points": {"email": false}})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_messages_carry_no_way_out_and_sms_carries_a_short_hint() {
    for backend in BACKENDS {
        let fakes = Fakes::new(Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |s| {
            s.server.public_url = PUBLIC.into();
        })
        .await
        else {
            continue;
        };
        // A critical alert is mandatory for admins: email and SMS, no link.
        let admin = user("unsub-admin");
        app.register(
            &admin,
            Role::Admin,
            None,
            json!({"email": "ops@example.com", "phone": "+79161234567", "locale": "en"}),
        )
        .await;
        let mut alert = envelope(EventKind::SystemAlert);
        alert["data"]["level"] = json!("critical");
        app.publish_ok(&alert).await;
        let admin_token = app.token(Role::Admin, &admin, None);
        for channel in ["email", "sms"] {
            let d = trace(&app, &admin_token, channel).await;
            assert_eq!(d["reason"], "mandatory", "{d}");
            let outcome = app
                .delivery
                .dispatcher
                .process(delivery_id(&d))
                .await
                .unwrap();
            assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        }
        let email = fakes.email.sent().pop().unwrap();
        assert_eq!(email.list_unsubscribe, None);
        assert!(!email.text.contains("/u/"), "{}", email.text);
        assert!(!email.html.unwrap().contains("/u/"));
        let sms = fakes.sms.sent().pop().unwrap();
        assert!(!sms.text.contains("/u/"), "{}", sms.text);

        // A guest who asked for points by SMS gets a hint in their language.
        for (name, locale, hint) in [
            (
                "sms-en",
                "en",
                " Unsubscribe: https://herald.example.com/u/",
            ),
            ("sms-ru", "ru", " Отписаться: https://herald.example.com/u/"),
        ] {
            let guest = user(name);
            let token = app.token(Role::Guest, &guest, None);
            app.register(
                &guest,
                Role::Guest,
                None,
                json!({"phone": "+79161234568", "locale": locale}),
            )
            .await;
            let res = app
                .send_json(
                    Method::PUT,
                    &format!("/v1/users/{guest}/preferences"),
                    &token,
                    &json!({"overrides": {"points": {"sms": true}}}),
                )
                .await;
            assert_eq!(res.status(), 200);
            app.publish_ok(&points_for(&guest, 12)).await;
            let d = trace(&app, &token, "sms").await;
            let outcome = app
                .delivery
                .dispatcher
                .process(delivery_id(&d))
                .await
                .unwrap();
            assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
            let sms = fakes.sms.sent().pop().unwrap();
            assert!(sms.text.contains(hint), "{}", sms.text);
            assert_eq!(sms.list_unsubscribe, None, "a header is for email only");
        }
    }
}
