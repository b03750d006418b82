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

use super::delivery::delivery_id;
use super::realtime::{Sio, Ws, node_ready};
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
    routing_edited(&[], extra)
}

/// The shipped routing table with each `(from, to)` replaced (`from` must
/// be there) and `extra` appended, in a file of its own.
fn routing_edited(edits: &[(&str, &str)], extra: &str) -> PathBuf {
    let mut table = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/routing.toml"),
    )
    .unwrap();
    for (from, to) in edits {
        assert!(table.contains(from), "the shipped table has no `{from}`");
        table = table.replace(from, to);
    }
    let path = std::env::temp_dir().join(format!("herald-routing-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("{table}\n{extra}\n")).unwrap();
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
async fn bad_smart_settings_stop_the_start_naming_the_key() {
    for (routing, key) in [
        (
            routing_with("[categories.points]\ndigest = { every = \"0m\" }"),
            "categories.points.digest.every",
        ),
        (
            routing_edited(
                &[(
                    ALERT_RULES,
                    &format!(
                        "{ALERT_RULES}\nescalate = [{{ after = \"5m\", to = \"role:admin\", channels = [\"pager\"] }}]"
                    ),
                )],
                "",
            ),
            "events.system_alert.escalate[0].channels[0]",
        ),
        (
            routing_edited(
                &[(
                    POINTS_RULE,
                    "deliveries = [{ to = \"{guestId}\", channels = [\"push\"], hold = \"0s\" }]\n\n[events.points_redeemed]",
                )],
                "",
            ),
            "events.points_added.deliveries[0].hold",
        ),
    ] {
        let mut settings = herald_server::Settings::load(None).unwrap();
        settings.routing.file = routing.clone();
        settings.templates.dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("templates");
        settings.auth.secret = herald_server::config::Secret::new("x".repeat(32));
        let err = match herald_server::Application::build(settings).await {
            Ok(_) => panic!("{key}: accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key), "{err}");
        let _ = std::fs::remove_file(routing);
    }
}

/// `points_added`'s rule in the shipped table.
const POINTS_RULE: &str = r#"deliveries = [{ to = "{guestId}", channels = ["push"] }]

[events.points_redeemed]"#;

/// `system_alert`'s rules in the shipped table.
const ALERT_RULES: &str = r#"deliveries = [
  { to = "role:admin", channels = ["email", "sms"], when = { level = ["critical"] }, mandatory = true },
]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_push_is_skipped_when_the_guest_saw_or_read_it_in_time() {
    let routing = routing_edited(
        &[(
            POINTS_RULE,
            "deliveries = [{ to = \"{guestId}\", channels = [\"push\"], hold = \"2m\" }]\n\n[events.points_redeemed]",
        )],
        "",
    );
    for backend in BACKENDS {
        let fakes = Fakes::new(noon());
        let file = routing.clone();
        let Some(app) =
            spawn_app_with_fakes(backend, fakes.clone(), |s| s.routing.file = file).await
        else {
            continue;
        };
        let (guest, token) = guest(&app, "watcher", "ru", json!({"overrides": {}})).await;
        let (mut ws, _) = Ws::connect(&app, &token).await;
        let (mut other_tab, _) = Ws::connect(&app, &token).await;

        // Watched live and read on the socket: the push is skipped as seen.
        app.publish_ok(&points_for(&guest, 10)).await;
        let live = ws.event("points_added").await;
        let event_id = live["data"]["eventId"].as_str().unwrap().to_owned();
        let held = &deliveries(&app, &token, "push").await[0];
        assert_eq!(
            (held["status"].as_str(), held["reason"].as_str()),
            (Some("deferred"), Some("routing_default"))
        );
        let later = noon() + chrono::Duration::minutes(2);
        assert_eq!(held["nextAttemptAt"], later.timestamp_millis());
        let (ack, before) = ws
            .request_collect("read", json!({"eventId": event_id}))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        // The reading socket is one of the user's sockets too.
        if !before.iter().any(|f| f["event"] == "notifications_read") {
            ws.event("notifications_read").await;
        }
        let entry = &app.inbox(&token).await[0];
        assert_eq!(
            (entry["read"].as_bool(), &entry["id"]),
            (Some(true), &ack["notificationId"])
        );
        // The user's other socket hears that it is read.
        let read = other_tab.event("points_added").await;
        assert_eq!(read["data"]["eventId"], event_id.as_str());
        let sync = other_tab.event("notifications_read").await;
        assert_eq!(sync["data"]["ids"], json!([ack["notificationId"]]));
        assert_eq!(sync["data"]["unreadCount"], 0);
        fakes.clock().set(later);
        let outcome = app
            .delivery
            .dispatcher
            .process(delivery_id(held))
            .await
            .unwrap();
        assert!(
            matches!(outcome, herald_delivery::Outcome::Seen { .. }),
            "{outcome:?}"
        );
        let skipped = &deliveries(&app, &token, "push").await[0];
        assert_eq!(
            (skipped["status"].as_str(), skipped["reason"].as_str()),
            (Some("skipped"), Some("seen"))
        );
        assert_eq!(
            skipped["trace"].as_array().unwrap().last().unwrap()["outcome"],
            "skipped"
        );
        assert!(fakes.push.sent().is_empty());

        // Acknowledged as `seen` only: skipped too, and the entry stays unread.
        fakes.clock().set(noon());
        app.publish_ok(&points_for(&guest, 20)).await;
        let live = ws.event("points_added").await;
        let (ack, _) = ws
            .request_collect("seen", json!({"eventId": live["data"]["eventId"]}))
            .await;
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!(app.inbox(&token).await[0]["read"], false);
        fakes.clock().set(later);
        let held = deliveries(&app, &token, "push").await;
        let held = held.iter().find(|d| d["status"] == "deferred").unwrap();
        let outcome = app
            .delivery
            .dispatcher
            .process(delivery_id(held))
            .await
            .unwrap();
        assert!(
            matches!(outcome, herald_delivery::Outcome::Seen { .. }),
            "{outcome:?}"
        );

        // Not seen: sent when the hold ends.
        fakes.clock().set(noon());
        app.publish_ok(&points_for(&guest, 30)).await;
        fakes.clock().set(later);
        let held = deliveries(&app, &token, "push").await;
        let held = held.iter().find(|d| d["status"] == "deferred").unwrap();
        let outcome = app
            .delivery
            .dispatcher
            .process(delivery_id(held))
            .await
            .unwrap();
        assert!(
            matches!(outcome, herald_delivery::Outcome::Sent { .. }),
            "{outcome:?}"
        );
        assert_eq!(fakes.push.sent().len(), 1);

        // An event the user has no entry for is NOT_FOUND; a bad id BAD_REQUEST.
        let (ack, _) = ws
            .request_collect("seen", json!({"eventId": uuid::Uuid::new_v4()}))
            .await;
        assert_eq!(ack["error"]["code"], "NOT_FOUND", "{ack}");
        let (ack, _) = ws.request_collect("read", json!({"eventId": 7})).await;
        assert_eq!(ack["error"]["code"], "BAD_REQUEST", "{ack}");
        assert_eq!(
            metric(
                &app,
                "herald_delivery_attempts_total{channel=\"push\",outcome=\"skipped\"}"
            )
            .await,
            2.0
        );
    }
    let _ = std::fs::remove_file(routing);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_clients_acknowledge_events_too() {
    if !node_ready() {
        return;
    }
    let Some(app) = spawn_app_with_fakes(Backend::Sqlite, Fakes::new(noon()), |_| {}).await else {
        return;
    };
    let (guest, token) = guest(&app, "sio-reader", "en", json!({})).await;
    let (mut sio, _) = Sio::connect(&app, &token).await;
    app.publish_ok(&points_for(&guest, 5)).await;
    let live = sio.event("points_added").await;
    let ack = sio
        .request("read", json!({"eventId": live[0]["eventId"]}))
        .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(app.inbox(&token).await[0]["read"], true);
    sio.exit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_critical_alert_escalates_and_a_read_one_does_not() {
    let routing = routing_edited(
        &[(
            ALERT_RULES,
            r#"deliveries = [
  { to = "role:admin", channels = ["push"], when = { level = ["critical"] }, mandatory = true },
]
escalate = [
  { after = "5m", to = "role:admin", channels = ["sms"] },
  { after = "15m", to = "role:admin", channels = ["email"] },
]"#,
        )],
        "",
    );
    for backend in BACKENDS {
        let fakes = Fakes::new(noon());
        let file = routing.clone();
        let Some(app) =
            spawn_app_with_fakes(backend, fakes.clone(), |s| s.routing.file = file).await
        else {
            continue;
        };
        for (name, phone) in [("oncall-1", "+79160000001"), ("oncall-2", "+79160000002")] {
            app.register(
                name,
                Role::Admin,
                None,
                json!({"email": format!("{name}@example.com"), "phone": phone}),
            )
            .await;
        }
        let first = app.token(Role::Admin, "oncall-1", None);
        let second = app.token(Role::Admin, "oncall-2", None);
        let res = app
            .send_json(
                Method::POST,
                "/v1/users/oncall-1/devices",
                &first,
                &json!({"kind": "fcm", "token": "fcm-oncall"}),
            )
            .await;
        assert_eq!(res.status(), 201);

        // Unread: the push goes now, SMS to both admins five minutes on.
        app.publish_ok(&envelope(EventKind::SystemAlert)).await;
        let push = &deliveries(&app, &first, "push").await[0];
        assert_eq!(push["status"], "pending");
        app.delivery
            .dispatcher
            .process(delivery_id(push))
            .await
            .unwrap();
        let five = noon() + chrono::Duration::minutes(5);
        let mut steps = Vec::new();
        for token in [&first, &second] {
            let sms = &deliveries(&app, token, "sms").await[0];
            assert_eq!(
                (sms["status"].as_str(), sms["reason"].as_str()),
                (Some("deferred"), Some("escalation"))
            );
            assert_eq!(sms["nextAttemptAt"], five.timestamp_millis());
            let email = &deliveries(&app, token, "email").await[0];
            assert_eq!(
                email["nextAttemptAt"],
                (noon() + chrono::Duration::minutes(15)).timestamp_millis()
            );
            steps.push(delivery_id(sms));
        }
        fakes.clock().set(five);
        app.delivery.dispatcher.process_batch(&steps).await.unwrap();
        assert_eq!(fakes.sms.sent().len(), 2, "escalated to both");

        // Read by one admin within five minutes: nobody's step goes.
        app.publish_ok(&envelope(EventKind::SystemAlert)).await;
        let entry = app.inbox(&second).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = app
            .send_json(
                Method::POST,
                &format!("/v1/notifications/{entry}/read"),
                &second,
                &json!({}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let mut steps = Vec::new();
        for token in [&first, &second] {
            steps.push(delivery_id(&deliveries(&app, token, "sms").await[0]));
        }
        fakes.clock().set(five + chrono::Duration::minutes(5));
        app.delivery.dispatcher.process_batch(&steps).await.unwrap();
        assert_eq!(fakes.sms.sent().len(), 2, "no more SMS");
        for token in [&first, &second] {
            let sms = &deliveries(&app, token, "sms").await[0];
            assert_eq!(
                (sms["status"].as_str(), sms["reason"].as_str()),
                (Some("skipped"), Some("seen")),
                "{sms}"
            );
        }
    }
    let _ = std::fs::remove_file(routing);
}
