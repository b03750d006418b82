//! The delivery pipeline: send-time checks, retries, `delivery_failed`,
//! and nothing lost when the queue or a worker is.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use futures::StreamExt;
use herald_core::{DeliveryId, EventKind, Role};
use herald_delivery::{Clock, Outcome};
use herald_testkit::fakes::Step;
use herald_testkit::{Backend, Fakes, eventually, spawn_app_with, spawn_app_with_fakes};
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// 23:30 in Moscow.
fn late_evening() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 20, 30, 0).unwrap()
}

pub(crate) fn redeemed(guest: &str) -> Value {
    let mut e = envelope(EventKind::PointsRedeemed);
    e["data"]["guestId"] = json!(guest);
    e
}

/// The newest notification's delivery on `channel`, as the API shows it.
pub(crate) async fn trace(app: &TestApp, token: &str, channel: &str) -> Value {
    let items = newest_deliveries(app, token).await;
    items
        .iter()
        .find(|d| d["channel"] == channel)
        .cloned()
        .unwrap_or_else(|| panic!("no {channel} delivery in {items:?}"))
}

pub(crate) fn delivery_id(d: &Value) -> DeliveryId {
    d["id"].as_str().unwrap().parse().unwrap()
}

pub(crate) async fn guest_with_email(app: &TestApp, name: &str, extra: Value) -> (String, String) {
    let guest = user(name);
    let token = app.token(Role::Guest, &guest, None);
    let mut contact = json!({"email": format!("{name}@example.com")});
    contact
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let res = app
        .send_json(
            Method::PUT,
            &format!("/v1/users/{guest}/contact"),
            &token,
            &contact,
        )
        .await;
    assert_eq!(res.status(), 200);
    (guest, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_writes_a_localized_email_to_the_outbox() {
    for backend in BACKENDS {
        let Some(app) = spawn_app_with(backend, |s| {
            s.delivery.workers_in_serve = true;
        })
        .await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "outbox-guest", json!({"locale": "en"})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let sent = eventually("the email to be sent", Duration::from_secs(20), || async {
            let d = trace(&app, &token, "email").await;
            (d["status"] == "sent").then_some(d)
        })
        .await;
        assert_eq!(sent["attempts"], 1);
        let file = sent["providerMessageId"].as_str().unwrap();
        let path = app.outbox_dir().join(file);
        let raw = std::fs::read(&path).unwrap();
        let mail = mailparse::parse_mail(&raw).unwrap();
        let header = |name: &str| {
            mail.headers
                .iter()
                .find(|h| h.get_key_ref() == name)
                .map(|h| h.get_value())
        };
        assert_eq!(header("To").as_deref(), Some("outbox-guest@example.com"));
        assert_eq!(
            header("Subject").as_deref(),
            Some("200 points redeemed: Бесплатный кофе")
        );
        assert_eq!(mail.ctype.mimetype, "multipart/alternative");
        let text = mail.subparts[0].get_body().unwrap();
        let html = mail.subparts[1].get_body().unwrap();
        assert!(
            text.contains("You redeemed 200 points for “Бесплатный кофе”."),
            "{text}"
        );
        assert!(html.contains("<html lang=\"en\">"), "{html}");
        // Push had nowhere to go: the guest has no device.
        assert_eq!(trace(&app, &token, "push").await["reason"], "no_contact");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_then_give_up_reporting_each_attempt() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |s| {
            s.delivery.retry.max_attempts = 3;
            s.delivery.retry.base_ms = 1_000;
            s.delivery.retry.cap_ms = 60_000;
        })
        .await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "flaky", json!({})).await;
        fakes.email.script([
            Step::Transient { retry_after: None },
            Step::Transient {
                retry_after: Some(Duration::from_secs(120)),
            },
            Step::Transient { retry_after: None },
        ]);
        app.publish_ok(&redeemed(&guest)).await;
        let email = trace(&app, &token, "email").await;
        let id = delivery_id(&email);
        let dispatcher = &app.delivery.dispatcher;
        let clock = fakes.clock();

        // Attempt 1: retry within the first window, [0, 1 s].
        let Outcome::Retrying {
            attempt: 1, next, ..
        } = dispatcher.process(id).await.unwrap()
        else {
            panic!()
        };
        assert!(next >= clock.now() && next <= clock.now() + chrono::Duration::seconds(1));
        let d = trace(&app, &token, "email").await;
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("retrying"), Some(1))
        );
        assert_eq!(d["nextAttemptAt"], next.timestamp_millis());
        // Not due yet: a premature job (a Redis queue counts whole seconds)
        // sends nothing, and comes back when the delivery is due instead of
        // leaving it to the sweeper.
        if next > clock.now() {
            let queued = queued_jobs(&app).await;
            assert_eq!(dispatcher.process(id).await.unwrap(), Outcome::Skipped);
            assert_eq!(queued_jobs(&app).await, queued + 1);
        }

        // Attempt 2: the provider's Retry-After (120 s) beats the 2 s window.
        clock.set(next);
        let Outcome::Retrying {
            attempt: 2, next, ..
        } = dispatcher.process(id).await.unwrap()
        else {
            panic!()
        };
        assert!(next >= clock.now() + chrono::Duration::seconds(120));

        // Attempt 3 is the last: give up.
        clock.set(next);
        let Outcome::Failed { attempt: 3, reason } = dispatcher.process(id).await.unwrap() else {
            panic!()
        };
        assert!(reason.starts_with("gave up after 3 attempts"), "{reason}");
        let d = trace(&app, &token, "email").await;
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("failed"), Some(3))
        );
        assert_eq!(d["nextAttemptAt"], Value::Null);
        assert!(fakes.email.sent().is_empty());
        assert_eq!(
            dispatcher.process(id).await.unwrap(),
            Outcome::Skipped,
            "a failed delivery stays failed"
        );

        // Each failed attempt told the guest's room and the admins.
        let reports: Vec<_> = fakes
            .broadcasts()
            .into_iter()
            .filter(|e| e.kind == EventKind::DeliveryFailed)
            .collect();
        assert_eq!(reports.len(), 3);
        for (i, report) in reports.iter().enumerate() {
            assert_eq!(
                report.rooms,
                vec![format!("user:{guest}"), "admin:events".to_owned()]
            );
            assert_eq!(report.data["retryCount"], i as u64 + 1);
            assert_eq!(report.data["channel"], "email");
            assert_eq!(
                report.data["notificationId"],
                app.inbox(&token).await[0]["id"]
            );
            assert_eq!(
                report.data["nextRetry"].is_null(),
                i == 2,
                "{:?}",
                report.data
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_stops_at_once() {
    let fakes = Fakes::new(late_evening());
    let app = spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |_| {})
        .await
        .unwrap();
    let (guest, token) = guest_with_email(&app, "bounced", json!({})).await;
    fakes.email.script([Step::Permanent]);
    app.publish_ok(&redeemed(&guest)).await;
    let id = delivery_id(&trace(&app, &token, "email").await);
    let outcome = app.delivery.dispatcher.process(id).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Failed { attempt: 1, .. }),
        "{outcome:?}"
    );
    let d = trace(&app, &token, "email").await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["lastError"], "provider rejected the address");
    let reports = fakes.broadcasts();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].data["nextRetry"], Value::Null);
    // Counted as it was logged.
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"herald_delivery_attempts_total{channel="email",outcome="failed"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_after_scheduling_stops_the_send() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |_| {}).await else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "changed-mind", json!({})).await;
        app.publish_ok(&redeemed(&guest)).await;
        let email = trace(&app, &token, "email").await;
        assert_eq!(email["status"], "pending");
        let prefs = json!({"channels": {"email": false}});
        let res = app
            .send_json(
                Method::PUT,
                &format!("/v1/users/{guest}/preferences"),
                &token,
                &prefs,
            )
            .await;
        assert_eq!(res.status(), 200);
        let outcome = app
            .delivery
            .dispatcher
            .process(delivery_id(&email))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Suppressed {
                reason: "channel_off".into()
            }
        );
        assert_eq!(fakes.email.calls(), 0);
        let d = trace(&app, &token, "email").await;
        assert_eq!(
            (d["status"].as_str(), d["reason"].as_str()),
            (Some("suppressed"), Some("channel_off"))
        );
        assert_eq!(
            d["attempts"], 0,
            "a check that sends nothing is not an attempt"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_push_and_sms_but_critical_events_pass() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) = spawn_app_with_fakes(backend, fakes.clone(), |_| {}).await else {
            continue;
        };
        let quiet =
            json!({"quietHours": {"start": "22:00", "end": "08:00", "timezone": "Europe/Moscow"}});

        // A guest's push waits for 08:00 Moscow (05:00 UTC).
        let guest = user("sleeper");
        let token = app.token(Role::Guest, &guest, None);
        let res = app
            .send_json(
                Method::POST,
                &format!("/v1/users/{guest}/devices"),
                &token,
                &json!({"kind": "fcm", "token": "fcm-sleeper"}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let res = app
            .send_json(
                Method::PUT,
                &format!("/v1/users/{guest}/preferences"),
                &token,
                &quiet,
            )
            .await;
        assert_eq!(res.status(), 200);
        app.publish_ok(&points_for(&guest, 10)).await;
        let push = trace(&app, &token, "push").await;
        let morning = Utc.with_ymd_and_hms(2026, 11, 27, 5, 0, 0).unwrap();
        assert_eq!(push["status"], "deferred");
        assert_eq!(push["nextAttemptAt"], morning.timestamp_millis());
        let id = delivery_id(&push);
        assert_eq!(
            app.delivery.dispatcher.process(id).await.unwrap(),
            Outcome::Skipped
        );
        fakes.clock().set(morning);
        let sent = app.delivery.dispatcher.process(id).await.unwrap();
        assert!(matches!(sent, Outcome::Sent { .. }), "{sent:?}");
        let message = &fakes.push.sent()[0];
        assert_eq!(message.subject.as_deref(), Some("+10 баллов"));
        fakes.clock().set(late_evening());

        // Quiet hours that begin after scheduling defer at send time.
        let (late, late_token) = guest_with_email(&app, "late", json!({})).await;
        let res = app
            .send_json(
                Method::POST,
                &format!("/v1/users/{late}/devices"),
                &late_token,
                &json!({"kind": "fcm", "token": "fcm-late"}),
            )
            .await;
        assert_eq!(res.status(), 201);
        app.publish_ok(&redeemed(&late)).await;
        let push = trace(&app, &late_token, "push").await;
        assert_eq!(push["status"], "pending");
        let res = app
            .send_json(
                Method::PUT,
                &format!("/v1/users/{late}/preferences"),
                &late_token,
                &quiet,
            )
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            app.delivery
                .dispatcher
                .process(delivery_id(&push))
                .await
                .unwrap(),
            Outcome::Deferred { until: morning }
        );

        // A critical alert's SMS to an admin with the same quiet hours goes now.
        app.register(
            "night-admin",
            Role::Admin,
            None,
            json!({"email": "ops@example.com", "phone": "+79161234567"}),
        )
        .await;
        let admin = app.token(Role::Admin, "night-admin", None);
        let res = app
            .send_json(
                Method::PUT,
                "/v1/users/night-admin/preferences",
                &admin,
                &quiet,
            )
            .await;
        assert_eq!(res.status(), 200);
        app.publish_ok(&envelope(EventKind::SystemAlert)).await;
        let sms = trace(&app, &admin, "sms").await;
        assert_eq!(
            (sms["status"].as_str(), sms["reason"].as_str()),
            (Some("pending"), Some("mandatory"))
        );
        let sent = app
            .delivery
            .dispatcher
            .process(delivery_id(&sms))
            .await
            .unwrap();
        assert!(matches!(sent, Outcome::Sent { .. }), "{sent:?}");
        assert_eq!(
            fakes.sms.sent()[0].text,
            "[CRITICAL] Database failover: Primary database is unreachable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_send_is_replaced_and_the_delivery_recorded_once() {
    for backend in BACKENDS {
        let fakes = Fakes::new(late_evening());
        let Some(app) =
            spawn_app_with_fakes(backend, fakes.clone(), |s| s.delivery.lease_seconds = 30).await
        else {
            continue;
        };
        let (guest, token) = guest_with_email(&app, "interrupted", json!({})).await;
        fakes.email.script([Step::Hang]);
        app.publish_ok(&redeemed(&guest)).await;
        let id = delivery_id(&trace(&app, &token, "email").await);

        let dispatcher = app.delivery.dispatcher.clone();
        let worker = tokio::spawn(async move { dispatcher.process(id).await });
        fakes.email.started.notified().await;
        worker.abort();
        assert!(worker.await.unwrap_err().is_cancelled());
        let d = trace(&app, &token, "email").await;
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("sending"), Some(1))
        );

        // Within the lease nobody else may take it.
        assert_eq!(
            app.delivery.dispatcher.process(id).await.unwrap(),
            Outcome::Skipped
        );
        let sweep = app.delivery.sweeper.sweep_once().await.unwrap();
        assert_eq!(sweep.released, 0);

        // Past the lease the sweeper hands it back, and the next attempt sends it.
        fakes.clock().advance(chrono::Duration::seconds(31));
        let sweep = app.delivery.sweeper.sweep_once().await.unwrap();
        assert_eq!(sweep.released, 1);
        // Handed back, it is due with no job of its own: enqueued at once.
        assert_eq!(sweep.requeued, 1);
        let outcome = app.delivery.dispatcher.process(id).await.unwrap();
        assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        assert_eq!(fakes.email.calls(), 2, "sent once more at most");
        assert_eq!(fakes.email.sent().len(), 1);
        let d = trace(&app, &token, "email").await;
        assert_eq!(
            (d["status"].as_str(), d["attempts"].as_i64()),
            (Some("sent"), Some(2))
        );
        assert_eq!(
            app.delivery.dispatcher.process(id).await.unwrap(),
            Outcome::Skipped,
            "recorded once"
        );
    }
}

/// 5,000 events through a Redis queue whose database is flushed half-way:
/// the sweeper finds what the queue lost, and every delivery is sent
/// exactly once. The queue gets a Redis database of its own (15), so the
/// flush (FLUSHDB: everything Herald's queue had) cannot disturb anything
/// else using Redis while the tests run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_redis_mid_burst_loses_nothing() {
    let Some((redis_url, mut redis, backend)) = redis_queue(15).await else {
        return;
    };
    let fakes = Fakes::live();
    let queue = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with_fakes(backend, fakes.clone(), |s| {
        on_redis_queue(s, &redis_url, &queue);
        s.delivery.workers_in_serve = true;
        s.delivery.concurrency = 32;
        s.delivery.sweep_interval_seconds = 1;
        s.delivery.stale_seconds = 2;
        s.delivery.sweep_batch = 5_000;
    })
    .await
    .unwrap();
    app.register(
        "burst-admin",
        Role::Admin,
        None,
        json!({"email": "ops@example.com", "phone": "+79161234567"}),
    )
    .await;

    // A critical alert owes the admin an email and an SMS: 10,000 deliveries.
    let batches: Vec<Value> = (0..50)
        .map(|_| Value::Array((0..100).map(|_| envelope(EventKind::SystemAlert)).collect()))
        .collect();
    for (i, batch) in batches.iter().enumerate() {
        assert_eq!(app.publish(batch).await.status(), 202);
        if i == 20 {
            let _: () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
        }
    }
    eventually(
        "every delivery to be sent",
        Duration::from_secs(180),
        || async {
            app.store
                .delivery_backlog()
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    for (name, fake) in [("email", &fakes.email), ("sms", &fakes.sms)] {
        let sent = fake.sent();
        let keys: std::collections::HashSet<_> =
            sent.iter().map(|m| m.idempotency_key.clone()).collect();
        assert_eq!(keys.len(), 5_000, "{name}: every delivery sent");
        assert_eq!(sent.len(), 5_000, "{name}: none sent twice");
    }
}

/// A backlog larger than apalis-redis can take in one go — its fetch moves
/// every due job to the active list with one Lua `unpack`, which fails
/// beyond 7,999 — waits in Redis before any worker runs: 9,000 deliveries
/// enqueued at ingest, and as many jobs that fell due in the scheduled set
/// meanwhile (as retries do). The worker that starts then drains it all
/// without dying once, and without the sweeper, whose `stale_seconds` is
/// an hour here; so does a single enqueue of 9,000 while it runs. The
/// queue gets a Redis database of its own (12): another test flushes 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_waiting_before_the_workers_start_drains() {
    let Some((redis_url, mut redis, backend)) = redis_queue(12).await else {
        return;
    };
    let fakes = Fakes::live();
    let queue = queue_name();
    let app = spawn_app_with_fakes(backend, fakes.clone(), |s| {
        on_redis_queue(s, &redis_url, &queue);
        s.delivery.workers_in_serve = false;
        s.delivery.concurrency = 32;
        s.delivery.stale_seconds = 3_600;
    })
    .await
    .unwrap();
    app.register(
        "backlog-admin",
        Role::Admin,
        None,
        json!({"email": "ops@example.com", "phone": "+79161234567"}),
    )
    .await;

    // 4,500 critical alerts, each owing the admin an email and an SMS.
    for _ in 0..45 {
        let batch = Value::Array((0..100).map(|_| envelope(EventKind::SystemAlert)).collect());
        assert_eq!(app.publish(&batch).await.status(), 202);
    }
    let tomorrow = (Utc::now() + chrono::Duration::days(1)).timestamp_millis();
    let ids = app
        .store
        .stranded_deliveries(tomorrow, 0, 10_000)
        .await
        .unwrap();
    assert_eq!(ids.len(), 9_000);
    let queue_handle = &app.delivery.queue;
    let now = Utc::now();
    futures::stream::iter(&ids)
        .map(|&id| async move { queue_handle.schedule(id, now, now).await })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<(), _>>()
        .unwrap();
    // Ingest's jobs (its deliveries, a job per 64 of each request's) and
    // one job per delivery on top: more due jobs than a Lua `unpack` takes.
    let ingest_jobs = 45 * 200_usize.div_ceil(herald_delivery::queue::JOB_DELIVERIES);
    assert_eq!(
        app.delivery.queue.depth().await.unwrap(),
        (9_000 + ingest_jobs) as u64
    );

    let stop = tokio_util::sync::CancellationToken::new();
    let workers = tokio::spawn(app.delivery.clone().run(stop.clone()));
    let drained = || async {
        let backlog = app.store.delivery_backlog().await.unwrap();
        let depth = app.delivery.queue.depth().await.unwrap();
        (backlog.is_empty() && depth == 0).then_some(())
    };
    eventually("the backlog to drain", Duration::from_secs(180), drained).await;
    // Enqueued again at once (as a sweep after a long outage might): every
    // job finds its delivery sent and skips it.
    app.delivery.queue.enqueue(&ids).await.unwrap();
    eventually(
        "the second batch to drain",
        Duration::from_secs(180),
        drained,
    )
    .await;
    // Finished jobs do not stay in Redis: the sweep purges them.
    eventually("finished jobs purged", Duration::from_secs(30), || async {
        app.delivery.sweeper.sweep_once().await.unwrap();
        (app.delivery.queue.stored_jobs().await.unwrap() == 0).then_some(())
    })
    .await;
    stop.cancel();
    workers.await.unwrap().unwrap();

    // apalis-redis registers each worker it runs: one means none died.
    let workers: u64 = redis::cmd("ZCARD")
        .arg(format!("{queue}:workers"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(workers, 1, "the worker was never replaced");
    for (name, fake) in [("email", &fakes.email), ("sms", &fakes.sms)] {
        let sent = fake.sent();
        let keys: std::collections::HashSet<_> =
            sent.iter().map(|m| m.idempotency_key.clone()).collect();
        assert_eq!(keys.len(), 4_500, "{name}: every delivery sent");
        assert_eq!(sent.len(), 4_500, "{name}: none sent twice");
    }

    // This queue's keys go; other users of database 12 keep theirs.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{queue}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    for chunk in keys.chunks(1_000) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(format!("{queue}:workers"))
        .query_async(&mut redis)
        .await
        .unwrap();
}

#[tokio::test]
async fn readiness_covers_the_queue() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let res = app.get("/readyz", "").await;
    assert_eq!(res.status(), 200);
    let ready: Value = res.json().await.unwrap();
    assert_eq!(ready["checks"]["queue"], "ok");
}

/// The `delivery_failed` sequence as connected clients see it: the guest in
/// its `user:` room, an admin in `admin:events`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_clients_see_each_failed_attempt() {
    use crate::realtime::Ws;
    let fakes = Fakes::new(late_evening()).with_realtime();
    let app = spawn_app_with_fakes(Backend::Sqlite, fakes.clone(), |s| {
        s.delivery.retry.max_attempts = 2;
    })
    .await
    .unwrap();
    let (guest, token) = guest_with_email(&app, "watching", json!({})).await;
    let (mut guest_ws, _) = Ws::connect(&app, &token).await;
    let (mut admin_ws, _) = Ws::connect(&app, &app.admin_token()).await;
    admin_ws.subscribe("system_events", json!({})).await;

    fakes.email.script([
        Step::Transient { retry_after: None },
        Step::Transient { retry_after: None },
    ]);
    app.publish_ok(&redeemed(&guest)).await;
    let notification = app.inbox(&token).await[0]["id"].clone();
    let id = delivery_id(&trace(&app, &token, "email").await);
    let Outcome::Retrying { next, .. } = app.delivery.dispatcher.process(id).await.unwrap() else {
        panic!("the first attempt retries")
    };
    fakes.clock().set(next);
    let outcome = app.delivery.dispatcher.process(id).await.unwrap();
    assert!(
        matches!(outcome, Outcome::Failed { attempt: 2, .. }),
        "{outcome:?}"
    );

    for ws in [&mut guest_ws, &mut admin_ws] {
        // The guest's room also carries the points_redeemed itself.
        let mut reports = Vec::new();
        while reports.len() < 2 {
            let frame = ws.recv().await;
            if frame["event"] == "delivery_failed" {
                reports.push(frame);
            }
        }
        let (first, second) = (&reports[0], &reports[1]);
        for (report, attempt) in [(first, 1), (second, 2)] {
            let data = &report["data"];
            assert_eq!(data["notificationId"], notification);
            assert_eq!(data["channel"], "email");
            assert_eq!(data["retryCount"], attempt);
            assert!(data["eventId"].is_string());
            assert!(data["reason"].as_str().unwrap().contains("503"));
        }
        assert_eq!(first["data"]["nextRetry"], next.timestamp_millis());
        assert_eq!(second["data"]["nextRetry"], Value::Null, "given up");
    }
}

/// A worker idle on a Redis queue still looks for jobs every
/// `poll_interval_ms`: one published after a quiet spell, and a retry that
/// falls due later, go out within seconds, not at the worker's next
/// heartbeat half a minute on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_keeps_looking_for_jobs() {
    let Some((redis_url, _, backend)) = redis_queue(12).await else {
        return;
    };
    let fakes = Fakes::live();
    let app = spawn_app_with_fakes(backend, fakes.clone(), |s| {
        on_redis_queue(s, &redis_url, &queue_name());
        s.delivery.retry.base_ms = 1_000;
        s.delivery.retry.cap_ms = 1_000;
    })
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let workers = tokio::spawn(app.delivery.clone().run(stop.clone()));
    // Quiet for a while: the worker has polled and found nothing, more
    // than once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (guest, _) = guest_with_email(&app, "after-a-quiet-spell", json!({})).await;
    fakes.email.script([Step::Transient { retry_after: None }]);
    app.publish_ok(&redeemed(&guest)).await;
    eventually("the retry to go out", Duration::from_secs(10), || async {
        (fakes.email.sent().len() == 1).then_some(())
    })
    .await;
    assert_eq!(fakes.email.calls(), 2);
    stop.cancel();
    workers.await.unwrap().unwrap();
}

/// The delivery queue on `redis_url`, under `queue`, a name of the test's
/// own.
fn on_redis_queue(s: &mut herald_server::Settings, redis_url: &str, queue: &str) {
    s.delivery.queue_url = herald_server::config::Secret::new(redis_url);
    s.delivery.queue_name = queue.to_owned();
}

/// A queue name no other test uses.
fn queue_name() -> String {
    format!("herald-test-{}", uuid::Uuid::new_v4().simple())
}

/// Database `db` of the test Redis for a queue test, a connection to it,
/// and the database backend to run it on (PostgreSQL when reachable).
/// None: Redis is down and the test skips, unless services are required.
async fn redis_queue(db: u8) -> Option<(String, redis::aio::MultiplexedConnection, Backend)> {
    let url = herald_testkit::redis_available(db).await?;
    let redis = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the test Redis answered a moment ago");
    let backend = if herald_testkit::postgres_available().await {
        Backend::Postgres
    } else {
        Backend::Sqlite
    };
    Some((url, redis, backend))
}

/// Jobs waiting in the delivery queue, as `GET /v1/admin/stats` reports them.
async fn queued_jobs(app: &TestApp) -> u64 {
    let stats = app.stats().await;
    stats["queue"]["jobs"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stats}"))
}
