//! The routing table over REST: read, replace (checked as the file is,
//! guarded by If-Match), go back to the file; each change audited and
//! followed by a second node on the same database without a restart.

use std::time::Duration;

use herald_core::{EventKind, Role};
use herald_server::routing::LiveRouting;
use herald_store::scratch::ScratchDatabase;
use herald_testkit::{Backend, eventually, spawn_app_with};
use reqwest::Method;
use reqwest::header::{ETAG, IF_MATCH};
use serde_json::{Value, json};

use super::audit::audit;
use super::*;

/// `GET /v1/admin/routing` as an admin: the body, and the `ETag`.
async fn routing(app: &TestApp) -> (Value, String) {
    let res = app.get("/v1/admin/routing", &app.admin_token()).await;
    assert_eq!(res.status(), 200);
    let etag = res.headers()[ETAG].to_str().unwrap().to_owned();
    (res.json().await.unwrap(), etag)
}

/// Sends `table` (or, without one, a DELETE) with `If-Match: if_match`.
async fn change(app: &TestApp, table: Option<&Value>, if_match: Option<&str>) -> reqwest::Response {
    let mut req = match table {
        Some(t) => app
            .request(Method::PUT, "/v1/admin/routing", &app.admin_token())
            .json(t),
        None => app.request(Method::DELETE, "/v1/admin/routing", &app.admin_token()),
    };
    if let Some(m) = if_match {
        req = req.header(IF_MATCH, m);
    }
    req.send().await.unwrap()
}

/// The table in force with `points_added` also sent by email.
fn with_email(table: &Value) -> Value {
    let mut t = table.clone();
    t["events"]["points_added"]["deliveries"][0]["channels"] = json!(["push", "email"]);
    t
}

/// A guest with an email address and no device; their token.
async fn guest(app: &TestApp, name: &str) -> (String, String) {
    let guest = user(name);
    app.register(
        &guest,
        Role::Guest,
        None,
        json!({"email": format!("{name}@example.com")}),
    )
    .await;
    let token = app.token(Role::Guest, &guest, None);
    (guest, token)
}

/// The channels the guest's newest notification owes, with their status.
async fn channels(app: &TestApp, guest: &str, token: &str) -> Vec<(String, String)> {
    app.publish_ok(&points_for(guest, 5)).await;
    let mut out: Vec<(String, String)> = newest_deliveries(app, token)
        .await
        .iter()
        .map(|d| {
            (
                d["channel"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pair(c: &str, s: &str) -> (String, String) {
    (c.to_owned(), s.to_owned())
}

backend_tests! {
    async fn the_routing_table_is_read_replaced_and_reverted_over_rest(app) {
        let (guest, token) = guest(&app, "routed-guest").await;
        let push_only = vec![pair("push", "suppressed")];
        let push_and_email = vec![pair("email", "pending"), pair("push", "suppressed")];

        // The file, as version 0, in the file's shape.
        let (file, etag) = routing(&app).await;
        assert_eq!((file["version"].as_i64(), file["source"].as_str(), etag.as_str()), (Some(0), Some("file"), "\"0\""));
        assert_eq!(file["etag"], "\"0\"");
        assert!(file["file"].as_str().unwrap().ends_with("routing.toml"));
        assert!(file["updatedBy"].is_null());
        assert_eq!(file["table"]["events"]["points_added"]["deliveries"][0], json!({"to": "{guestId}", "channels": ["push"], "when": {}, "mandatory": false}));
        for kind in EventKind::ALL {
            assert!(file["table"]["events"].get(kind.as_str()).is_some(), "{kind}");
        }
        assert_eq!(channels(&app, &guest, &token).await, push_only);

        // Invalid tables: 422 with the path at fault, and nothing changes.
        let table = file["table"].clone();
        let mut bad_role = table.clone();
        bad_role["events"]["points_added"]["deliveries"][0]["to"] = json!("role:owner");
        let mut missing = table.clone();
        missing["events"].as_object_mut().unwrap().remove("system_alert");
        let mut unknown_field = table.clone();
        unknown_field["events"]["card_created"]["colour"] = json!("red");
        for (bad, field) in [
            (bad_role, "events.points_added.deliveries[0].to"),
            (missing, "events.system_alert"),
            (unknown_field, "events.card_created.colour"),
            (json!({"events": {"points_added": {"deliveries": [{"to": "{guestId}", "channels": ["fax"]}]}}}), "events.points_added.deliveries[0].channels[0]"),
            (json!([1, 2]), ""),
        ] {
            let (status, body) = problem(change(&app, Some(&bad), Some("\"0\"")).await).await;
            assert_eq!((status, body["code"].as_str(), body["field"].as_str()), (422, Some("validation_failed"), Some(field)), "{body}");
        }
        assert_eq!(routing(&app).await.0["version"], 0);
        assert_eq!(channels(&app, &guest, &token).await, push_only);

        // An If-Match that is not the current version: 412, nothing changes.
        for stale in ["\"7\"", "W/\"3\"", "banana"] {
            let (status, body) = problem(change(&app, Some(&with_email(&table)), Some(stale)).await).await;
            assert_eq!((status, body["code"].as_str()), (412, Some("precondition_failed")), "{stale}");
        }

        // A valid table with the version read: in force at once.
        let res = change(&app, Some(&with_email(&table)), Some(&etag)).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()[ETAG], "\"1\"");
        let v1: Value = res.json().await.unwrap();
        assert_eq!((v1["version"].as_i64(), v1["source"].as_str()), (Some(1), Some("api")));
        assert_eq!(v1["updatedBy"], json!({"subject": "admin-1", "role": "admin"}));
        assert!(v1["updatedAt"].as_i64().is_some());
        assert_eq!(v1["table"], with_email(&table));
        assert_eq!(routing(&app).await.0, v1);
        assert_eq!(channels(&app, &guest, &token).await, push_and_email);
        // The same If-Match again is stale now.
        let (status, _) = problem(change(&app, Some(&table), Some(&etag)).await).await;
        assert_eq!(status, 412);
        // A bad table still changes nothing.
        let (status, _) = problem(change(&app, Some(&json!({"events": {}})), None).await).await;
        assert_eq!(status, 422);
        assert_eq!(channels(&app, &guest, &token).await, push_and_email);

        // Back to the file.
        let res = change(&app, None, Some("\"1\"")).await;
        assert_eq!(res.status(), 200);
        let v2: Value = res.json().await.unwrap();
        assert_eq!((v2["version"].as_i64(), v2["source"].as_str()), (Some(2), Some("file")));
        assert_eq!(v2["table"], table);
        assert_eq!(channels(&app, &guest, &token).await, push_only);
        // Already on the file: nothing more is stored.
        let res = change(&app, None, None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["version"], 2);

        // Each change is in the audit, before and after.
        let rows = audit(&app, "kind=routing").await["items"].as_array().unwrap().clone();
        let summary: Vec<(&str, i64, i64)> = rows.iter().map(|r| (r["action"].as_str().unwrap(), r["before"]["version"].as_i64().unwrap(), r["after"]["version"].as_i64().unwrap())).collect();
        assert_eq!(summary, [("revert", 1, 2), ("replace", 0, 1)]);
        assert!(rows.iter().all(|r| r["target"].is_null() && r["actor"]["subject"] == "admin-1"));
        assert_eq!(rows[1]["before"]["source"], "file");
        assert_eq!(rows[1]["before"]["table"], table);
        assert_eq!(rows[1]["after"]["table"], with_email(&table));
        assert_eq!(rows[0]["after"]["source"], "file");

        // Admins only.
        for token in [app.service_token(), token.clone()] {
            for res in [
                app.get("/v1/admin/routing", &token).await,
                app.send_json(Method::PUT, "/v1/admin/routing", &token, &table).await,
                app.request(Method::DELETE, "/v1/admin/routing", &token).send().await.unwrap(),
            ] {
                assert_eq!(problem(res).await.0, 403);
            }
        }
        assert_eq!(problem(app.get("/v1/admin/routing", "").await).await.0, 401);
    }
}

/// What a `herald worker` process runs: its own [`LiveRouting`] on the
/// shared database, following changes; its delivery workers route by
/// `shared()`. A table put over REST reaches it without a restart.
async fn a_worker_process_follows_routing_changes(app: TestApp) {
    let file = std::sync::Arc::new(herald_core::RoutingTable::default_table());
    let worker = LiveRouting::start(app.store.clone(), file, "config/routing.toml".into())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let following = tokio::spawn(
        worker
            .clone()
            .follow(Duration::from_millis(20), stop.clone()),
    );
    let routes = worker.shared();
    let event = herald_core::ValidatedEvent::parse_kind(
        EventKind::PointsAdded,
        EventKind::PointsAdded.example(),
    )
    .unwrap();
    let channels = |r: &herald_core::routing::Route| {
        r.deliveries
            .iter()
            .map(|d| d.channel.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(channels(&routes.route(&event)), ["push"]);

    let (file, etag) = routing(&app).await;
    assert_eq!(
        change(&app, Some(&with_email(&file["table"])), Some(&etag))
            .await
            .status(),
        200
    );
    // The table the routes read is swapped a moment before the version
    // the worker reports: wait for both.
    eventually(
        "the worker routes by version 1",
        Duration::from_secs(10),
        || async {
            (channels(&routes.route(&event)) == ["push", "email"] && worker.current().version == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(change(&app, None, None).await.status(), 200);
    eventually(
        "the worker is back on the file",
        Duration::from_secs(10),
        || async { (channels(&routes.route(&event)) == ["push"]).then_some(()) },
    )
    .await;
    stop.cancel();
    following.await.unwrap();
}

mod a_worker_process_follows_routing_changes {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = herald_testkit::spawn_app(Backend::Sqlite)
            .await
            .expect("sqlite always runs");
        super::a_worker_process_follows_routing_changes(app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(app) = herald_testkit::spawn_app(Backend::Postgres).await {
            super::a_worker_process_follows_routing_changes(app).await;
        }
    }
}

/// Two nodes on one PostgreSQL database, as a deployment runs them: a table
/// put on one routes the next event published on the other, without a
/// restart; a node started afterwards starts on it; going back to the file
/// reaches the other node too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_change_reaches_another_node_without_a_restart() {
    let Some(db) = ScratchDatabase::create("herald_test_routing_").await else {
        return;
    };
    let url = db.url().to_owned();
    let node = |url: String| {
        spawn_app_with(Backend::Sqlite, move |s| {
            s.database.url = herald_server::config::Secret::new(url);
            s.routing.poll_interval_ms = 50;
        })
    };
    let a = node(url.clone()).await.expect("node a");
    let b = node(url.clone()).await.expect("node b");
    let (guest, token) = guest(&b, "two-node-guest").await;
    assert_eq!(
        channels(&b, &guest, &token).await,
        vec![pair("push", "suppressed")]
    );

    let (file, etag) = routing(&a).await;
    let res = change(&a, Some(&with_email(&file["table"])), Some(&etag)).await;
    assert_eq!(res.status(), 200);
    // Node b takes it up by itself.
    eventually("node b runs version 1", Duration::from_secs(10), || async {
        (routing(&b).await.0["version"] == 1).then_some(())
    })
    .await;
    assert_eq!(routing(&b).await.0["table"], with_email(&file["table"]));
    assert_eq!(
        channels(&b, &guest, &token).await,
        vec![pair("email", "pending"), pair("push", "suppressed")]
    );
    // A node that starts now starts on the stored table.
    let c = node(url.clone()).await.expect("node c");
    let (on_c, _) = routing(&c).await;
    assert_eq!(
        (on_c["version"].as_i64(), on_c["source"].as_str()),
        (Some(1), Some("api"))
    );

    // Back to the file, on node b this time; node a follows.
    assert_eq!(change(&b, None, Some("\"1\"")).await.status(), 200);
    eventually("node a runs version 2", Duration::from_secs(10), || async {
        (routing(&a).await.0["version"] == 2).then_some(())
    })
    .await;
    assert_eq!(routing(&a).await.0["source"], "file");
    let token_a = a.token(Role::Guest, &guest, None);
    assert_eq!(
        channels(&a, &guest, &token_a).await,
        vec![pair("push", "suppressed")]
    );
    drop((a, b, c));
    drop(db);
}
