//! Smart delivery (issue #16): digests at the end of quiet hours and of a
//! category's window, throttles, holds skipped when the event was seen,
//! escalation steps — each visible in the delivery trace and `/metrics`.
//! Attempts are driven through the dispatcher on a manual clock.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use herald_core::{DeliveryId, EventKind, Role};
use herald_testkit::fakes::Step;
use herald_testkit::{Backend, Fakes, spawn_app_with_fakes};
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// 23:30 in Moscow.
fn late_evening() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 20, 30, 0).unwrap()
}

/// 08:00 in Moscow, the next morning: quiet hours end.
fn morning() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 5, 0, 0).unwrap()
}

/// Noon in Moscow.
fn noon() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 9, 0, 0).unwrap()
}

/// The shipped routing table with `extra` appended, in a file of its own.
fn routing_with(extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/routing.toml"),
    )
    .unwrap();
    let path = std::env::temp_dir().join(format!("herald-routing-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{shipped}\n{extra}\n")).unwrap();
    path
}

/// A guest with a push device, a phone, SMS opted in for points, `locale`,
/// and `prefs` (merged into the preferences document).
async fn guest(app: &TestApp, name: &str, locale: &str, prefs: Value) -> (String, String) {
    let guest = user(name);
    let token = app.token(Role::Guest, &guest, None);
    let res = app
        .send_json(
            Method::PUT,
            &format!("/v1/users/{guest}/contact"),
            &token,
            &json!({"phone": "+79161234567", "locale": locale, "timezone": "Europe/Moscow"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .send_json(
            Method::POST,
            &format!("/v1/users/{guest}/devices"),
            &token,
            &json!({"kind": "fcm", "token": format!("fcm-{name}")}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let mut doc = json!({"overrides": {"points": {"sms": true}}});
    doc.as_object_mut()
        .unwrap()
        .extend(prefs.as_object().unwrap().clone());
    let res = app
        .send_json(
            Method::PUT,
            &format!("/v1/users/{guest}/preferences"),
            &token,
            &doc,
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    (guest, token)
}

fn quiet() -> Value {
    json!({"quietHours": {"start": "22:00", "end": "08:00"}})
}

/// Every delivery of every entry in `token`'s inbox, on `channel`.
async fn deliveries(app: &TestApp, token: &str, channel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in app.inbox(token).await {
        let id = entry["id"].as_str().unwrap();
        let trace: Value = app
            .get(&format!("/v1/notifications/{id}/deliveries"), token)
            .await
            .json()
            .await
            .unwrap();
        out.extend(
            trace["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["channel"] == channel)
                .cloned(),
        );
    }
    out
}

fn ids(ds: &[Value]) -> Vec<DeliveryId> {
    ds.iter()
        .map(|d| d["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

fn count(ds: &[Value], status: &str) -> usize {
    ds.iter().filter(|d| d["status"] == status).count()
}

/// The value of one sample of `/metrics`, 0 when absent.
async fn metric(app: &TestApp, sample: &str) -> f64 {
    let text = app.get("/metrics", "").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_events_in_quiet_hours_make_one_digest_per_channel_when_they_end() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |_| {}).await else {
            continue;
        };
        for (name, locale, push_title, sms_start) in [
            (
                "night-owl-ru",
                "ru",
                "Пока вы отдыхали: 6 начислений",
                "6 начислений: ",
            ),
            (
                "night-owl-en",
                "en",
                "While you were away: 6 points updates",
                "6 points updates: ",
            ),
        ] {
            let (guest, token) = guest(&app, name, locale, quiet()).await;
            let (pushes, smses) = (fakes.push.sent().len(), fakes.sms.sent().len());
            for amount in 1..=6 {
                app.publish_ok(&points_for(&guest, amount * 10)).await;
            }
            // Every event is in the inbox at once.
            assert_eq!(app.inbox(&token).await.len(), 6);
            let mut all = Vec::new();
            for channel in ["push", "sms"] {
                let ds = deliveries(&app, &token, channel).await;
                assert_eq!(count(&ds, "deferred"), 6, "{channel}: {ds:?}");
                for d in &ds {
                    assert_eq!(d["digestKey"], "quiet");
                    assert_eq!(d["nextAttemptAt"], morning().timestamp_millis());
                }
                all.extend(ids(&ds));
            }
            // Not before the window ends.
            assert!(
                app.delivery
                    .dispatcher
                    .process_batch(&all)
                    .await
                    .unwrap()
                    .is_empty()
            );

            fakes.clock().set(morning());
            app.delivery.dispatcher.process_batch(&all).await.unwrap();
            let push = &fakes.push.sent()[pushes..];
            assert_eq!(push.len(), 1, "one push digest: {push:?}");
            assert_eq!(push[0].subject.as_deref(), Some(push_title));
            // The most important first: all alike, so the newest.
            assert!(push[0].text.starts_with("+60 "), "{}", push[0].text);
            let sms = &fakes.sms.sent()[smses..];
            assert_eq!(sms.len(), 1, "one SMS digest: {sms:?}");
            assert!(sms[0].text.starts_with(sms_start), "{}", sms[0].text);

            for channel in ["push", "sms"] {
                let ds = deliveries(&app, &token, channel).await;
                assert_eq!(
                    (count(&ds, "sent"), count(&ds, "digested")),
                    (1, 5),
                    "{channel}: {ds:?}"
                );
                let carrier = ds.iter().find(|d| d["status"] == "sent").unwrap();
                assert_eq!(carrier["digestId"], carrier["id"]);
                let steps: Vec<&str> = carrier["trace"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["step"].as_str().unwrap())
                    .collect();
                assert!(steps.contains(&"digest"), "{steps:?}");
                for d in ds.iter().filter(|d| d["status"] == "digested") {
                    assert_eq!(d["digestId"], carrier["id"]);
                    assert_eq!(d["reason"], "digest");
                    let fold = d["trace"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|s| s["step"] == "digest")
                        .unwrap_or_else(|| panic!("no fold in {d}"))
                        .clone();
                    assert_eq!(fold["outcome"], "digested");
                    assert!(
                        fold["detail"]
                            .as_str()
                            .unwrap()
                            .contains(carrier["id"].as_str().unwrap())
                    );
                }
            }
            // Processing again sends nothing more.
            app.delivery.dispatcher.process_batch(&all).await.unwrap();
            assert_eq!(fakes.push.sent().len(), pushes + 1);
            fakes.clock().set(late_evening());
        }
        assert_eq!(
            metric(&app, "herald_digests_sent_total{channel=\"push\"}").await,
            2.0
        );
        assert_eq!(
            metric(
                &app,
                "herald_delivery_attempts_total{channel=\"push\",outcome=\"digested\"}"
            )
            .await,
            10.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_digest_is_replaced_and_the_digest_sent_once() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) =
            spawn_app_with_fakes(backend, fakes.clone(), |s| s.delivery.lease_seconds = 30).await
        else {
            continue;
        };
        let (guest, token) = guest(&app, "restless", "ru", quiet()).await;
        for amount in 1..=3 {
            app.publish_ok(&points_for(&guest, amount)).await;
        }
        let push = ids(&deliveries(&app, &token, "push").await);
        fakes.clock().set(morning());
        fakes.push.script([Step::Hang]);
        let dispatcher = app.delivery.dispatcher.clone();
        let batch = push.clone();
        let worker = tokio::spawn(async move { dispatcher.process_batch(&batch).await });
        fakes.push.started.notified().await;
        worker.abort();
        assert!(worker.await.unwrap_err().is_cancelled());
        // Folded before the send: the carrier is mid-send, the rest digested.
        let ds = deliveries(&app, &token, "push").await;
        assert_eq!(
            (count(&ds, "sending"), count(&ds, "digested")),
            (1, 2),
            "{ds:?}"
        );

        // Past its lease the sweeper hands the carrier back; its next
        // attempt sends the same three, once.
        fakes.clock().advance(chrono::Duration::seconds(31));
        let sweep = app.delivery.sweeper.sweep_once().await.unwrap();
        assert_eq!(sweep.released, 1);
        for _ in 0..3 {
            app.delivery.dispatcher.process_batch(&push).await.unwrap();
        }
        let sent = fakes.push.sent();
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(
            sent[0].subject.as_deref(),
            Some("Пока вы отдыхали: 3 начисления")
        );
        assert_eq!(fakes.push.calls(), 2, "the hung send and the one that went");
        let ds = deliveries(&app, &token, "push").await;
        assert_eq!(
            (count(&ds, "sent"), count(&ds, "digested")),
            (1, 2),
            "{ds:?}"
        );
        let carrier = ds.iter().find(|d| d["status"] == "sent").unwrap();
        assert_eq!(carrier["attempts"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_burst_sends_the_cap_then_digests_or_drops_the_rest() {
    let routing = routing_with(
        "[categories.points]\nthrottle = { sms = { max = 3, per = \"1h\", overflow = \"drop\" }, push = { max = 2, per = \"1h\" } }",
    );
    for backend in BACKENDS {
        let fakes = Fakes::new(noon());
        let file = routing.clone();
        let Some(app) =
            spawn_app_with_fakes(backend, fakes.clone(), |s| s.routing.file = file).await
        else {
            continue;
        };
        let (guest, token) = guest(&app, "bursty", "en", json!({})).await;
        for amount in 1..=5 {
            app.publish_ok(&points_for(&guest, amount)).await;
        }
        let sms = ids(&deliveries(&app, &token, "sms").await);
        let push = ids(&deliveries(&app, &token, "push").await);
        let all: Vec<DeliveryId> = sms.iter().chain(&push).copied().collect();
        app.delivery.dispatcher.process_batch(&all).await.unwrap();
        assert_eq!(fakes.sms.sent().len(), 3);
        assert_eq!(fakes.push.sent().len(), 2);
        let ds = deliveries(&app, &token, "sms").await;
        assert_eq!(
            (count(&ds, "sent"), count(&ds, "throttled")),
            (3, 2),
            "{ds:?}"
        );
        let dropped = ds.iter().find(|d| d["status"] == "throttled").unwrap();
        assert_eq!(dropped["reason"], "throttle");
        let last = dropped["trace"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["outcome"], "throttled");
        assert!(
            last["detail"]
                .as_str()
                .unwrap()
                .contains("at most 3 sms per 1h"),
            "{last}"
        );
        let ds = deliveries(&app, &token, "push").await;
        assert_eq!(
            (count(&ds, "sent"), count(&ds, "deferred")),
            (2, 3),
            "{ds:?}"
        );
        let next = noon() + chrono::Duration::hours(1);
        for d in ds.iter().filter(|d| d["status"] == "deferred") {
            assert_eq!(d["digestKey"], "points");
            assert_eq!(d["nextAttemptAt"], next.timestamp_millis());
        }

        // An hour on, the three go out as one digest, which the cap allows.
        fakes.clock().set(next);
        app.delivery.dispatcher.process_batch(&push).await.unwrap();
        let sent = fakes.push.sent();
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(sent[2].subject.as_deref(), Some("Digest: 3 points updates"));
        let ds = deliveries(&app, &token, "push").await;
        assert_eq!(
            (count(&ds, "sent"), count(&ds, "digested")),
            (3, 2),
            "{ds:?}"
        );
        assert_eq!(
            metric(
                &app,
                "herald_delivery_attempts_total{channel=\"sms\",outcome=\"throttled\"}"
            )
            .await,
            2.0
        );
        assert_eq!(
            metric(
                &app,
                "herald_delivery_attempts_total{channel=\"push\",outcome=\"throttled\"}"
            )
            .await,
            3.0
        );
    }
    let _ = std::fs::remove_file(routing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_window_and_a_daily_digest_preference_hold_until_their_time() {
    let routing =
        routing_with("[categories.points]\ndigest = { every = \"1h\", channels = [\"push\"] }");
    let fakes = Fakes::new(noon() + chrono::Duration::minutes(17));
    let file = routing.clone();
    let Some(app) =
        spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |s| s.routing.file = file).await
    else {
        return;
    };
    // The routing file's hourly window: push waits for the hour, SMS does not.
    let (hourly, hourly_token) = guest(&app, "hourly", "en", json!({})).await;
    for amount in [5, 50] {
        app.publish_ok(&points_for(&hourly, amount)).await;
    }
    let top = noon() + chrono::Duration::hours(1);
    let push = deliveries(&app, &hourly_token, "push").await;
    for d in &push {
        assert_eq!(
            (d["status"].as_str(), d["digestKey"].as_str()),
            (Some("deferred"), Some("points"))
        );
        assert_eq!(d["nextAttemptAt"], top.timestamp_millis());
    }
    let sms = deliveries(&app, &hourly_token, "sms").await;
    assert_eq!(count(&sms, "pending"), 2);
    fakes.clock().set(top);
    app.delivery
        .dispatcher
        .process_batch(&ids(&push))
        .await
        .unwrap();
    let sent = fakes.push.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].subject.as_deref(), Some("Digest: 2 points updates"));

    // A user's daily digest at 21:00 their time: every channel of the category.
    let (daily, daily_token) = guest(
        &app,
        "daily",
        "ru",
        json!({"digests": {"points": {"at": "21:00"}}}),
    )
    .await;
    let prefs: Value = app
        .get(&format!("/v1/users/{daily}/preferences"), &daily_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(prefs["digests"], json!({"points": {"at": "21:00"}}));
    app.publish_ok(&points_for(&daily, 7)).await;
    let nine_pm = Utc.with_ymd_and_hms(2026, 11, 26, 18, 0, 0).unwrap();
    for channel in ["push", "sms"] {
        let d = &deliveries(&app, &daily_token, channel).await[0];
        assert_eq!(d["digestKey"], "points");
        assert_eq!(d["nextAttemptAt"], nine_pm.timestamp_millis());
    }
    // A critical event is never digested: a system alert's SMS goes now.
    app.register(
        "duty-admin",
        Role::Admin,
        None,
        json!({"phone": "+79161234500", "email": "duty@example.com"}),
    )
    .await;
    let admin = app.token(Role::Admin, "duty-admin", None);
    let res = app
        .send_json(
            Method::PUT,
            "/v1/users/duty-admin/preferences",
            &admin,
            &json!({"digests": {"system": {"at": "09:00"}}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.publish_ok(&envelope(EventKind::SystemAlert)).await;
    let sms = &deliveries(&app, &admin, "sms").await[0];
    assert_eq!(sms["status"], "pending");
    let _ = std::fs::remove_file(routing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_preferences_are_validated_naming_the_field() {
    let Some(app) = spawn_app_with_fakes(Backend::Sqlite, Fakes::new(noon()), |_| {}).await else {
        return;
    };
    let guest = user("picky");
    let token = app.token(Role::Guest, &guest, None);
    for (body, field) in [
        (
            json!({"digests": {"pointz": {"at": "09:00"}}}),
            "digests.pointz",
        ),
        (
            json!({"digests": {"points": {"at": "25:00"}}}),
            "digests.points.at",
        ),
        (json!({"digests": {"points": {}}}), "digests.points.at"),
        (
            json!({"digests": {"points": {"at": "09:00", "timezone": "Mars/Base"}}}),
            "digests.points.timezone",
        ),
        (
            json!({"digests": {"points": {"at": "09:00", "every": "1h"}}}),
            "digests.points.every",
        ),
    ] {
        let res = app
            .send_json(
                Method::PUT,
                &format!("/v1/users/{guest}/preferences"),
                &token,
                &body,
            )
            .await;
        let (status, problem) = problem(res).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_digest_window_stops_the_start_naming_the_key() {
    let routing = routing_with("[categories.points]\ndigest = { every = \"0m\" }");
    let mut settings = herald_server::Settings::load(None).unwrap();
    settings.routing.file = routing.clone();
    settings.templates.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates");
    settings.auth.secret = herald_server::config::Secret::new("x".repeat(32));
    let err = match herald_server::Application::build(settings).await {
        Ok(_) => panic!("a zero digest window was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("categories.points.digest.every"), "{err}");
    let _ = std::fs::remove_file(routing);
}
