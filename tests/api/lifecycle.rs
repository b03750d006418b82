//! The data lifecycle: the retention purge (rows counted before and after,
//! publishing while it runs), a user's erase and export.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{Duration as Days, Utc};
use herald_core::{Role, UserId};
use herald_delivery::SystemClock;
use herald_server::Settings;
use herald_server::lifecycle::{PurgePolicy, Purger, Registry};
use herald_store::actions::ActionRecord;
use reqwest::Method;
use serde_json::{Value, json};

use super::delivery::{delivery_id, guest_with_email, redeemed};
use super::*;

/// Rows per table.
async fn counts(app: &TestApp) -> BTreeMap<&'static str, i64> {
    app.store
        .table_counts()
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// The files in the app's outbox.
fn outbox_files(app: &TestApp) -> Vec<String> {
    match std::fs::read_dir(app.outbox_dir()) {
        Ok(dir) => dir
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The default `[retention]`, with `adjust` applied.
fn policy(adjust: impl FnOnce(&mut PurgePolicy)) -> PurgePolicy {
    let mut p = Settings::load(None).unwrap().retention().unwrap();
    adjust(&mut p);
    p
}

fn purger(app: &TestApp, policy: PurgePolicy) -> Purger {
    Purger::new(
        app.store.clone(),
        policy,
        app.outbox_dir(),
        Arc::new(SystemClock),
        &Registry::new(),
    )
}

/// Sends every delivery owed to `user` once (through the outbox).
async fn deliver_all(app: &TestApp, user: &str) {
    for id in app
        .store
        .delivery_ids_of(&UserId(user.into()))
        .await
        .unwrap()
    {
        app.delivery
            .dispatcher
            .process(id.parse().unwrap())
            .await
            .unwrap();
    }
}

async fn unread(app: &TestApp, token: &str) -> i64 {
    let v: Value = app
        .get("/v1/notifications/unread-count", token)
        .await
        .json()
        .await
        .unwrap();
    v["count"].as_i64().unwrap()
}

async fn record_action(app: &TestApp, user: &str, id: &str) {
    let record = ActionRecord {
        user_id: user.into(),
        action_id: id.into(),
        role: "guest".into(),
        restaurant_id: None,
        action: "accept".into(),
        amount: "100".into(),
        status: herald_store::actions::ActionStatus::Unrelayed,
        attempts: 0,
        created_at: 0,
        last_error: None,
        response: None,
    };
    app.store.record_action(&record, false).await.unwrap();
}

/// `after[table] - before[table]` for every table that changed.
fn changes(
    before: &BTreeMap<&'static str, i64>,
    after: &BTreeMap<&'static str, i64>,
) -> BTreeMap<&'static str, i64> {
    before
        .iter()
        .filter_map(|(t, b)| {
            let d = after[t] - b;
            (d != 0).then_some((*t, d))
        })
        .collect()
}

backend_tests! {
    async fn a_purge_deletes_what_retention_no_longer_keeps(app) {
        let (guest, token) = guest_with_email(&app, "retained", json!({})).await;
        for _ in 0..3 {
            assert_eq!(app.publish(&redeemed(&guest)).await.status(), 202);
        }
        deliver_all(&app, &guest).await;
        // Another guest's event, never sent: its deliveries stay open.
        let (waiting, waiting_token) = guest_with_email(&app, "waiting", json!({})).await;
        assert_eq!(app.publish(&redeemed(&waiting)).await.status(), 202);
        let inbox = app.inbox(&token).await;
        let read = inbox[0]["id"].as_str().unwrap();
        let res = app.request(Method::POST, &format!("/v1/notifications/{read}/read"), &token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        record_action(&app, &guest, "a-1").await;
        assert_eq!(outbox_files(&app).len(), 3, "one email per event (push has no device)");

        let before = counts(&app).await;
        assert_eq!((before["notifications"], before["deliveries"], before["events"]), (4, 8, 4));
        let purger = purger(&app, policy(|_| {}));
        // Nothing is old yet.
        let nothing = purger.purge_at(Utc::now()).await.unwrap();
        assert_eq!(nothing.rows.total() + nothing.outbox_files, 0);
        assert_eq!(counts(&app).await, before);

        // 100 days on: finished deliveries (90d), the read entry (90d), the
        // action (30d) and the outbox (14d) go; unread entries (365d),
        // events they refer to, and open deliveries stay.
        let report = purger.purge_at(Utc::now() + Days::days(100)).await.unwrap();
        assert_eq!(report.rows.inbox_read, 1);
        assert_eq!(report.rows.inbox_unread, 0);
        // The sent emails and suppressed pushes; of the waiting guest's,
        // the suppressed push (its entry stays for the open email).
        assert_eq!(report.rows.deliveries, 7);
        assert_eq!(report.rows.actions, 1);
        assert_eq!(report.outbox_files, 3);
        let after = counts(&app).await;
        assert_eq!(
            changes(&before, &after),
            BTreeMap::from([
                ("action_confirms", -1),
                ("deliveries", -7),
                ("delivery_trace", -before["delivery_trace"]),
                ("notifications", -1),
            ])
        );
        assert!(outbox_files(&app).is_empty());
        assert_eq!(unread(&app, &token).await, 2);
        assert_eq!(unread(&app, &waiting_token).await, 1);
        assert_eq!(purger.purged("inbox_read"), 1);
        assert_eq!(purger.purged("outbox_files"), 3);

        // 400 days on: the unread entries and their events go; the entry
        // owed open deliveries stays, and so does its event.
        let report = purger.purge_at(Utc::now() + Days::days(400)).await.unwrap();
        assert_eq!((report.rows.inbox_unread, report.rows.events), (2, 3));
        let last = counts(&app).await;
        assert_eq!((last["notifications"], last["deliveries"], last["events"]), (1, 1, 1));
        // Counters stay: the next entry is numbered after the purged ones.
        assert_eq!(last["inbox_counters"], 2);
        assert_eq!(app.publish(&redeemed(&guest)).await.status(), 202);
        assert_eq!(app.inbox(&token).await[0]["seq"], 4);
    }

    async fn publishing_during_a_purge_is_answered_and_lands(app) {
        let old = user("old-entries");
        let old_token = app.token(Role::Guest, &old, None);
        for round in 0..3 {
            let events: Vec<Value> = (0..100).map(|i| points_for(&old, round * 100 + i)).collect();
            assert_eq!(app.publish(&Value::Array(events)).await.status(), 202);
        }
        let res = app.request(Method::POST, "/v1/notifications/read-all", &old_token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let purger = purger(&app, policy(|p| {
            p.batch_size = 10;
            p.batch_pause = std::time::Duration::from_millis(5);
        }));
        let fresh = user("fresh-entries");
        let fresh_token = app.token(Role::Guest, &fresh, None);
        let done = std::sync::atomic::AtomicBool::new(false);
        let purge = async {
            let report = purger.purge_at(Utc::now() + Days::days(100)).await.unwrap();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            report
        };
        let publish = async {
            let (mut sent, mut during) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::SeqCst) || sent < 20 {
                let res = app.publish(&points_for(&fresh, sent)).await;
                assert_eq!(res.status(), 202, "publish {sent} during the purge");
                sent += 1;
                if !done.load(std::sync::atomic::Ordering::SeqCst) {
                    during += 1;
                }
            }
            (sent, during)
        };
        let (report, (sent, during)) = tokio::join!(purge, publish);
        assert_eq!(report.rows.inbox_read, 300);
        assert!(during > 0, "no publish was answered while the purge ran");
        // Every publish landed, none was purged.
        assert_eq!(app.inbox(&fresh_token).await.len(), sent as usize);
        assert_eq!(unread(&app, &fresh_token).await, sent);
        assert!(app.inbox(&old_token).await.is_empty());
    }

    async fn an_erase_removes_a_user_everywhere_and_only_them(app) {
        let (guest, token) = guest_with_email(&app, "erased", json!({"phone": "+79161234567"})).await;
        let res = app.send_json(Method::PUT, &format!("/v1/users/{guest}/preferences"), &token, &json!({"enabled": true, "channels": {"sms": false}})).await;
        assert_eq!(res.status(), 200);
        let res = app.send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &token, &json!({"kind": "fcm", "token": "fcm-erased"})).await;
        assert_eq!(res.status(), 201);
        for _ in 0..3 {
            assert_eq!(app.publish(&redeemed(&guest)).await.status(), 202);
        }
        deliver_all(&app, &guest).await;
        record_action(&app, &guest, "a-1").await;
        let (other, other_token) = guest_with_email(&app, "kept", json!({})).await;
        for _ in 0..2 {
            assert_eq!(app.publish(&redeemed(&other)).await.status(), 202);
        }
        deliver_all(&app, &other).await;
        let theirs: HashSet<String> = app.store.delivery_ids_of(&UserId(guest.clone())).await.unwrap().into_iter().collect();
        let files = outbox_files(&app);
        // An email and a push per event for the guest; an email per event for the other.
        assert_eq!(files.len(), 8, "{files:?}");

        // Neither the guest nor another user may erase.
        for t in [&token, &other_token] {
            let res = app.request(Method::DELETE, &format!("/v1/users/{guest}"), t).send().await.unwrap();
            assert_eq!(res.status(), 403);
        }
        let before = counts(&app).await;
        let res = app.request(Method::DELETE, &format!("/v1/users/{guest}"), &app.admin_token()).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["userId"], guest.as_str());
        let erased = &body["erased"];
        for (kind, n) in [("contact", 1), ("preferences", 1), ("devices", 1), ("notifications", 3), ("deliveries", 6), ("events", 3), ("actions", 1), ("inboxCounter", 1), ("outboxFiles", 6)] {
            assert_eq!(erased[kind], n, "{kind}: {erased}");
        }
        let after = counts(&app).await;
        assert_eq!(
            changes(&before, &after),
            BTreeMap::from([
                ("action_confirms", -1),
                ("contacts", -1),
                ("deliveries", -6),
                ("delivery_trace", -erased["deliveryTrace"].as_i64().unwrap()),
                ("devices", -1),
                ("events", -3),
                ("inbox_counters", -1),
                ("notifications", -3),
                ("preferences", -1),
            ])
        );
        let left = outbox_files(&app);
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|f| {
            let d = herald_channels::outbox::delivery_of(f).unwrap();
            !theirs.contains(d)
        }));
        // The other guest is untouched.
        assert_eq!(unread(&app, &other_token).await, 2);
        assert_eq!(app.inbox(&other_token).await.len(), 2);
        // Herald knows nothing of the guest any more.
        assert!(app.inbox(&token).await.is_empty());
        let contact: Value = app.get(&format!("/v1/users/{guest}/contact"), &token).await.json().await.unwrap();
        assert!(contact["email"].is_null(), "{contact}");
        for path in [format!("/v1/users/{guest}"), format!("/v1/users/{}", user("never-seen"))] {
            let res = app.request(Method::DELETE, &path, &app.service_token()).send().await.unwrap();
            assert_eq!(res.status(), 404, "{path}");
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            assert_eq!(res.json::<Value>().await.unwrap()["code"], "not_found");
        }
        let res = app.get(&format!("/v1/users/{guest}/export"), &app.admin_token()).await;
        assert_eq!(res.status(), 404);
    }

    async fn an_export_holds_everything_a_user_has(app) {
        let (guest, token) = guest_with_email(&app, "exported", json!({"locale": "en"})).await;
        let res = app.send_json(Method::PUT, &format!("/v1/users/{guest}/preferences"), &token, &json!({"enabled": true, "channels": {"sms": false}})).await;
        assert_eq!(res.status(), 200);
        let res = app.send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &token, &json!({"kind": "fcm", "token": "fcm-exported"})).await;
        assert_eq!(res.status(), 201);
        for _ in 0..3 {
            assert_eq!(app.publish(&redeemed(&guest)).await.status(), 202);
        }
        deliver_all(&app, &guest).await;
        record_action(&app, &guest, "a-7").await;
        let inbox = app.inbox(&token).await;
        let (read, deleted) = (inbox[0]["id"].as_str().unwrap(), inbox[1]["id"].as_str().unwrap());
        app.request(Method::POST, &format!("/v1/notifications/{read}/read"), &token).send().await.unwrap();
        let res = app.request(Method::DELETE, &format!("/v1/notifications/{deleted}"), &token).send().await.unwrap();
        assert_eq!(res.status(), 204);

        let res = app.get(&format!("/v1/users/{guest}/export"), &token).await;
        assert_eq!(res.status(), 200);
        let export: Value = res.json().await.unwrap();
        assert_eq!(export["userId"], guest.as_str());
        assert_eq!(export["contact"]["email"], "exported@example.com");
        assert_eq!(export["contact"]["locale"], "en");
        assert_eq!(export["preferences"]["channels"]["sms"], false);
        assert_eq!(export["devices"][0]["token"], "fcm-exported");
        let entries = export["notifications"].as_array().unwrap();
        // All three: read, deleted and unread, newest first.
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["id"], read);
        assert!(entries[0]["readAt"].is_i64());
        assert_eq!(entries[1]["id"], deleted);
        assert!(entries[1]["deletedAt"].is_i64());
        assert!(entries[2]["readAt"].is_null() && entries[2]["deletedAt"].is_null());
        assert_eq!(entries[2]["data"]["guestId"], guest.as_str());
        let deliveries = export["deliveries"].as_array().unwrap();
        assert_eq!(deliveries.len(), 6);
        let sent: Vec<&Value> = deliveries.iter().filter(|d| d["status"] == "sent").collect();
        assert_eq!(sent.len(), 6, "{deliveries:?}");
        assert!(sent.iter().all(|d| d["provider"].is_string() && d["updatedAt"].is_i64()));
        assert_eq!(export["actions"][0]["actionId"], "a-7");
        assert_eq!(export["actions"][0]["amount"], "100");

        // An admin and the platform may export too; another guest may not.
        assert_eq!(app.get(&format!("/v1/users/{guest}/export"), &app.admin_token()).await.status(), 200);
        assert_eq!(app.get(&format!("/v1/users/{guest}/export"), &app.service_token()).await.status(), 200);
        let stranger = app.token(Role::Guest, &user("stranger"), None);
        assert_eq!(app.get(&format!("/v1/users/{guest}/export"), &stranger).await.status(), 403);
        let res = app.get(&format!("/v1/users/{}/export", user("stranger")), &stranger).await;
        assert_eq!(res.status(), 404);
        // The delivery ids in the export are the deliveries'.
        let trace = newest_deliveries(&app, &token).await;
        let ids: HashSet<String> = deliveries.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
        assert!(trace.iter().all(|d| ids.contains(&delivery_id(d).to_string())));
    }
}
