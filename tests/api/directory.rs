//! The directory cache across nodes: what one node changes (preferences,
//! contact details) is honoured by the next events another node ingests,
//! though that node planned earlier ones from memory.

use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::{EventKind, Role};
use herald_testkit::{Backend, eventually, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};

use super::realtime::{clear_redis, redis_url};
use super::*;

/// A node on `backend`, in the cluster `prefix` on `redis`, on the
/// database of `peer` when given (as a deployment's nodes share theirs).
async fn node(
    backend: Backend,
    redis: &str,
    prefix: &str,
    peer: Option<&TestApp>,
) -> Option<TestApp> {
    let (redis, prefix) = (redis.to_owned(), prefix.to_owned());
    let database = peer.map(TestApp::database_url);
    spawn_app_with(backend, move |s| {
        s.auth.secret = herald_server::config::Secret::new(format!("{prefix}-shared-secret"));
        s.realtime.redis_url = redis;
        s.realtime.redis_prefix = prefix;
        if let Some(url) = database {
            s.database.url = herald_server::config::Secret::new(url);
        }
    })
    .await
}

fn redeemed(guest: &str) -> Value {
    let mut e = envelope(EventKind::PointsRedeemed);
    e["data"]["guestId"] = json!(guest);
    e
}

/// The email delivery's status of `guest`'s newest notification.
async fn email_status(app: &TestApp, token: &str) -> String {
    newest_deliveries(app, token)
        .await
        .iter()
        .find(|d| d["channel"] == "email")
        .map(|d| d["status"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn honoured_across_nodes(backend: Backend) {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
    let Some(a) = node(backend, &redis, &prefix, None).await else {
        return;
    };
    let b = node(backend, &redis, &prefix, Some(&a))
        .await
        .expect("the first node's database runs");
    let guest = user(&format!("directory-guest-{}", uuid::Uuid::new_v4()));
    a.register(&guest, Role::Guest, None, json!({"email": "g@example.com"}))
        .await;
    let token = b.token(Role::Guest, &guest, None);

    // B plans from its cache: once it holds the guest, a publish reads
    // nothing of them. Not necessarily the second one: on PostgreSQL, A's
    // registration reaches B as a notification that may land after B's
    // first publish began, and then it evicts (or refuses) what that
    // publish read.
    eventually(
        "B plans a publish from its cache",
        Duration::from_secs(20),
        || async {
            let hits = b.store.directory_cache().stats.hits.load(Ordering::Relaxed);
            b.publish_ok(&redeemed(&guest)).await;
            assert_eq!(email_status(&b, &token).await, "pending");
            (b.store.directory_cache().stats.hits.load(Ordering::Relaxed) > hits).then_some(())
        },
    )
    .await;

    // The guest turns email off for points, on A.
    let res = a
        .send_json(
            Method::PUT,
            &format!("/v1/users/{guest}/preferences"),
            &a.token(Role::Guest, &guest, None),
            &json!({"overrides": {"points": {"email": false}}}),
        )
        .await;
    assert_eq!(res.status(), 200);

    // B hears of it: an event ingested there honours it.
    eventually(
        "B honours A's preference change",
        Duration::from_secs(20),
        || async {
            b.publish_ok(&redeemed(&guest)).await;
            (email_status(&b, &token).await == "suppressed").then_some(())
        },
    )
    .await;
    // And keeps honouring it from its cache.
    b.publish_ok(&redeemed(&guest)).await;
    assert_eq!(email_status(&b, &token).await, "suppressed");

    // A contact change on A (the address goes) reaches B too.
    a.register(&guest, Role::Guest, None, json!({})).await;
    put_email_back_on(&a, &guest).await;
    eventually(
        "B sees the contact change",
        Duration::from_secs(20),
        || async {
            b.publish_ok(&redeemed(&guest)).await;
            let reasons: Vec<String> = newest_deliveries(&b, &token)
                .await
                .iter()
                .filter(|d| d["channel"] == "email")
                .map(|d| d["reason"].as_str().unwrap_or_default().to_owned())
                .collect();
            (reasons == ["no_contact"]).then_some(())
        },
    )
    .await;
    clear_redis(&redis, &prefix).await;
}

/// Email back on for points (so that only the missing address stops it).
async fn put_email_back_on(app: &TestApp, guest: &str) {
    let res = app
        .send_json(
            Method::PUT,
            &format!("/v1/users/{guest}/preferences"),
            &app.token(Role::Guest, guest, None),
            &json!({}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_change_on_one_postgres_node_is_honoured_by_the_next_event_on_another() {
    honoured_across_nodes(Backend::Postgres).await;
}

/// Two nodes on one SQLite file (not the embedded default, but it runs):
/// each ingest transaction notices the other process's commits.
#[tokio::test]
async fn a_change_on_one_sqlite_node_is_honoured_by_a_later_event_on_another() {
    honoured_across_nodes(Backend::Sqlite).await;
}
