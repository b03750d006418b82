//! Scheduled sends (`sendAt`) and cancellation: `POST /v1/events/{id}/cancel`,
//! and deleting an inbox entry. Time is the testkit's manual clock.

use chrono::{DateTime, TimeZone, Utc};
use herald_core::Role;
use herald_delivery::Outcome;
use herald_store::deliveries::{Finish, Finished, TraceStep};
use herald_testkit::{Backend, Fakes, spawn_app_with_fakes};
use reqwest::Method;
use serde_json::{Value, json};

use super::delivery::{delivery_id, guest_with_email, redeemed};
use super::realtime::Ws;
use super::*;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A weekday morning, far from anyone's quiet hours.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap()
}

async fn app_on(backend: Backend) -> Option<(TestApp, Fakes)> {
    let fakes = Fakes::new(t0());
    let app = spawn_app_with_fakes(backend, fakes.clone(), |_| {}).await?;
    Some((app, fakes))
}

/// A guest with an email address (English) and a phone for push.
async fn guest(app: &TestApp, name: &str) -> (String, String) {
    let (guest, token) = guest_with_email(app, name, json!({"locale": "en"})).await;
    let res = app
        .send_json(
            Method::POST,
            &format!("/v1/users/{guest}/devices"),
            &token,
            &json!({"kind": "fcm", "token": format!("fcm-{name}")}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    (guest, token)
}

/// Every delivery of the event published with `key`, each with its trace
/// (as an admin reads them).
async fn deliveries_of(app: &TestApp, key: &str) -> Vec<Value> {
    let admin = app.admin_token();
    let list: Value = app
        .get(
            &format!(
                "/v1/admin/deliveries?eventId={key}&limit=100&status=pending,sending,sent,cancelled,suppressed,deferred,retrying,failed"
            ),
            &admin,
        )
        .await
        .json()
        .await
        .unwrap();
    let mut notifications: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["notificationId"].as_str().unwrap().to_owned())
        .collect();
    notifications.sort();
    notifications.dedup();
    let mut out = Vec::new();
    for n in notifications {
        let trace: Value = app
            .get(&format!("/v1/notifications/{n}/deliveries"), &admin)
            .await
            .json()
            .await
            .unwrap();
        out.extend(trace["items"].as_array().unwrap().iter().cloned());
    }
    out
}

fn on(deliveries: &[Value], channel: &str) -> Value {
    deliveries
        .iter()
        .find(|d| d["channel"] == channel)
        .cloned()
        .unwrap_or_else(|| panic!("no {channel} delivery in {deliveries:?}"))
}

async fn cancel(app: &TestApp, key: &str) -> (u16, Value) {
    let res = app
        .request(
            Method::POST,
            &format!("/v1/events/{key}/cancel"),
            &app.service_token(),
        )
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn unread(app: &TestApp, token: &str) -> i64 {
    let body: Value = app
        .get("/v1/notifications/unread-count", token)
        .await
        .json()
        .await
        .unwrap();
    body["count"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_waits_for_its_time_then_sends_appears_and_fans_out() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_on(backend).await else {
            continue;
        };
        let (guest, token) = guest(&app, "scheduled").await;
        let (mut ws, _) = Ws::connect(&app, &token).await;
        let send_at = t0() + chrono::Duration::hours(1);
        let mut event = redeemed(&guest);
        event["sendAt"] = json!(send_at.to_rfc3339());
        let key = event["id"].as_str().unwrap().to_owned();
        app.publish_ok(&event).await;
        // An event published after it fans out first: the scheduled one
        // did not go out at publish.
        app.publish_ok(&points_for(&guest, 7)).await;
        assert_eq!(ws.event("points_added").await["data"]["amount"], 7);
        let inbox = app.inbox(&token).await;
        assert_eq!(
            inbox.len(),
            1,
            "only the unscheduled entry shows: {inbox:?}"
        );
        assert_eq!(unread(&app, &token).await, 1);

        let deliveries = deliveries_of(&app, &key).await;
        for channel in ["email", "push"] {
            let d = on(&deliveries, channel);
            assert_eq!(d["status"], "pending", "{d}");
            assert_eq!(d["nextAttemptAt"], send_at.timestamp_millis(), "{d}");
            assert_eq!(d["trace"][0]["step"], "scheduled", "{d}");
            assert!(
                d["trace"][0]["detail"]
                    .as_str()
                    .unwrap()
                    .contains("2026-12-01T10:00:00"),
                "{d}"
            );
            // Not due yet: a job firing early claims nothing.
            assert_eq!(
                app.delivery
                    .dispatcher
                    .process(delivery_id(&d))
                    .await
                    .unwrap(),
                Outcome::Skipped
            );
        }
        app.releaser.release_due().await.unwrap();
        assert_eq!(app.inbox(&token).await.len(), 1, "not before its time");

        fakes.clock().advance(chrono::Duration::hours(1));
        app.releaser.release_due().await.unwrap();
        let released = ws.event("points_redeemed").await;
        assert_eq!(released["data"]["amount"], 200);
        let inbox = app.inbox(&token).await;
        assert_eq!(inbox.len(), 2);
        assert_eq!(inbox[0]["event"], "points_redeemed", "newest: {inbox:?}");
        assert!(inbox[0]["seq"].as_i64() > inbox[1]["seq"].as_i64());
        assert_eq!(unread(&app, &token).await, 2);
        for channel in ["email", "push"] {
            let id = delivery_id(&on(&deliveries, channel));
            let outcome = app.delivery.dispatcher.process(id).await.unwrap();
            assert!(matches!(outcome, Outcome::Sent { .. }), "{outcome:?}");
        }
        assert_eq!(fakes.email.sent().len(), 1);
        assert_eq!(fakes.push.sent().len(), 1);
        // Released once: nothing is left to release.
        assert_eq!(app.releaser.release_due().await.unwrap(), 0);
        assert_eq!(app.store.pending_releases().await.unwrap(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_event_cancelled_before_its_time_sends_and_shows_nothing() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_on(backend).await else {
            continue;
        };
        let (guest, token) = guest(&app, "called-off").await;
        let (mut ws, _) = Ws::connect(&app, &token).await;
        let mut event = redeemed(&guest);
        event["sendAt"] = json!((t0() + chrono::Duration::minutes(30)).to_rfc3339());
        let key = event["id"].as_str().unwrap().to_owned();
        app.publish_ok(&event).await;

        let (status, first) = cancel(&app, &key).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["cancelled"], 2, "{first}");
        assert_eq!(first["alreadySent"], 0, "{first}");
        assert_eq!(first["alreadyFinal"], 0, "{first}");
        assert_eq!(first["inboxHidden"], 1, "{first}");
        assert_eq!(first["releaseCancelled"], true, "{first}");
        let (status, again) = cancel(&app, &key).await;
        assert_eq!(status, 200);
        assert_eq!(again["cancelled"], 0, "{again}");
        assert_eq!(again["alreadySent"], 0, "{again}");
        assert_eq!(again["alreadyFinal"], 2, "{again}");
        assert_eq!(again["releaseCancelled"], false, "{again}");

        fakes.clock().advance(chrono::Duration::hours(2));
        assert_eq!(app.releaser.release_due().await.unwrap(), 0);
        let deliveries = deliveries_of(&app, &key).await;
        for channel in ["email", "push"] {
            let d = on(&deliveries, channel);
            assert_eq!(d["status"], "cancelled", "{d}");
            assert_eq!(d["reason"], "cancelled_by_publisher", "{d}");
            let last = d["trace"].as_array().unwrap().last().unwrap().clone();
            assert_eq!(last["step"], "cancel", "{d}");
            assert_eq!(last["actor"], "service:loyalty-platform", "{d}");
            assert_eq!(
                app.delivery
                    .dispatcher
                    .process(delivery_id(&d))
                    .await
                    .unwrap(),
                Outcome::Skipped
            );
        }
        assert_eq!(fakes.email.calls() + fakes.push.calls(), 0);
        assert!(app.inbox(&token).await.is_empty());
        assert_eq!(unread(&app, &token).await, 0);
        // The next thing the socket hears is a later event, not this one.
        app.publish_ok(&points_for(&guest, 3)).await;
        assert_eq!(ws.event("points_added").await["data"]["amount"], 3);
        let metrics = app.get("/metrics", "").await.text().await.unwrap();
        assert!(
            metrics
                .contains("herald_deliveries_cancelled_total{reason=\"cancelled_by_publisher\"} 2"),
            "{metrics}"
        );
        assert!(
            metrics.contains("herald_events_scheduled_total 1"),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reports_what_was_sent_and_is_idempotent() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_on(backend).await else {
            continue;
        };
        let (guest, _) = guest(&app, "half-sent").await;
        let event = redeemed(&guest);
        let key = event["id"].as_str().unwrap().to_owned();
        app.publish_ok(&event).await;
        let deliveries = deliveries_of(&app, &key).await;
        let email = delivery_id(&on(&deliveries, "email"));
        let push = delivery_id(&on(&deliveries, "push"));
        let sent = app.delivery.dispatcher.process(email).await.unwrap();
        assert!(matches!(sent, Outcome::Sent { .. }), "{sent:?}");

        let (status, first) = cancel(&app, &key).await;
        assert_eq!(status, 200, "{first}");
        assert_eq!(
            (
                &first["cancelled"],
                &first["alreadySent"],
                &first["alreadyFinal"]
            ),
            (&json!(1), &json!(1), &json!(0)),
            "{first}"
        );
        let (_, again) = cancel(&app, &key).await;
        assert_eq!(
            (
                &again["cancelled"],
                &again["alreadySent"],
                &again["alreadyFinal"]
            ),
            (&json!(0), &json!(1), &json!(1)),
            "{again}"
        );
        assert_eq!(
            app.delivery.dispatcher.process(push).await.unwrap(),
            Outcome::Skipped
        );
        assert_eq!(fakes.push.calls(), 0);
        assert_eq!(
            on(&deliveries_of(&app, &key).await, "email")["status"],
            "sent"
        );

        // Unknown events are 404; guests may not cancel.
        let (status, body) = cancel(&app, "no-such-event").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "not_found");
        let res = app
            .request(
                Method::POST,
                &format!("/v1/events/{key}/cancel"),
                &app.token(Role::Guest, &guest, None),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(problem(res).await.0, 403);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_when_the_cancel_comes_is_not_resurrected() {
    for backend in BACKENDS {
        let Some((app, _fakes)) = app_on(backend).await else {
            continue;
        };
        let (guest, _) = guest(&app, "in-flight").await;
        let event = redeemed(&guest);
        let key = event["id"].as_str().unwrap().to_owned();
        app.publish_ok(&event).await;
        let push = delivery_id(&on(&deliveries_of(&app, &key).await, "push"));
        let now = t0().timestamp_millis();
        // A worker holds it…
        let claimed = app
            .store
            .claim_deliveries(&[push], now, 60_000)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        // …when the publisher cancels.
        let (status, report) = cancel(&app, &key).await;
        assert_eq!(status, 200);
        assert_eq!(report["inFlight"], 1, "{report}");
        // The worker looks before sending…
        assert_eq!(
            app.store.cancel_requested(push).await.unwrap().as_deref(),
            Some("cancelled_by_publisher")
        );
        // …and a finish that would reopen it (a transient failure) ends it
        // cancelled instead.
        let applied = app
            .store
            .finish_deliveries(vec![Finished {
                id: push,
                attempt: claimed[0].attempt,
                finish: Finish::Retry {
                    error: "fcm: 503".into(),
                    next_attempt_at: now + 60_000,
                    provider: Some("fake".into()),
                    counted: true,
                },
                trace: vec![TraceStep {
                    step: "attempt".into(),
                    provider: Some("fake".into()),
                    outcome: Some("retrying".into()),
                    detail: Some("fcm: 503".into()),
                }],
                at: now + 1,
            }])
            .await
            .unwrap();
        assert_eq!(applied, vec![true]);
        let d = on(&deliveries_of(&app, &key).await, "push");
        assert_eq!(d["status"], "cancelled", "{d}");
        assert_eq!(d["reason"], "cancelled_by_publisher", "{d}");
        let last = d["trace"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            (&last["step"], &last["outcome"]),
            (&json!("cancel"), &json!("cancelled"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_inbox_entry_cancels_its_pending_push() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_on(backend).await else {
            continue;
        };
        let (guest, token) = guest(&app, "tidy").await;
        app.publish_ok(&points_for(&guest, 5)).await;
        let id = app.inbox(&token).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let res = app
            .request(Method::DELETE, &format!("/v1/notifications/{id}"), &token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 204);
        let trace: Value = app
            .get(&format!("/v1/notifications/{id}/deliveries"), &token)
            .await
            .json()
            .await
            .unwrap();
        let push = on(trace["items"].as_array().unwrap(), "push");
        assert_eq!(push["status"], "cancelled", "{push}");
        assert_eq!(push["reason"], "inbox_deleted", "{push}");
        let last = push["trace"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["actor"], format!("user:{guest}"));
        assert_eq!(
            app.delivery
                .dispatcher
                .process(delivery_id(&push))
                .await
                .unwrap(),
            Outcome::Skipped
        );
        assert_eq!(fakes.push.calls(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_at_out_of_bounds_is_refused_naming_the_field() {
    let (app, _fakes) = app_on(Backend::Sqlite).await.unwrap();
    let guest = user("bounds");
    let at = |d: chrono::Duration| json!((t0() + d).to_rfc3339());
    for (send_at, field) in [
        (at(chrono::Duration::hours(-1)), "sendAt"),
        (at(chrono::Duration::days(800)), "sendAt"),
        (json!("tomorrow morning"), "sendAt"),
        (json!(1_764_000_000_000_i64), "sendAt"),
    ] {
        let mut event = points_for(&guest, 1);
        event["sendAt"] = send_at.clone();
        let (status, body) = problem(app.publish(&event).await).await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some(field)),
            "{send_at}: {body}"
        );
        let mut ok = points_for(&guest, 1);
        ok["sendAt"] = at(chrono::Duration::hours(1));
        let (status, body) = problem(app.publish(&json!([ok, event])).await).await;
        assert_eq!(status, 422);
        assert_eq!(body["field"], "[1].sendAt", "{body}");
    }
    // A moment ago, within the tolerance: sent at once.
    let mut recent = points_for(&guest, 1);
    recent["sendAt"] = at(chrono::Duration::minutes(-2));
    app.publish_ok(&recent).await;
    let token = app.token(Role::Guest, &guest, None);
    assert_eq!(app.inbox(&token).await.len(), 1);
    // Nothing of the refused ones was written.
    assert_eq!(app.store.pending_releases().await.unwrap(), 0);
}
