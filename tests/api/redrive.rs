//! The admin's re-drive: failed and expired deliveries listed with
//! filters and cursors, retried one at a time or as a bounded set, each
//! sent once however often it is retried, and traced with who asked.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use herald_core::{EventKind, Role};
use herald_server::cli::{Cli, Command};
use herald_testkit::fakes::Step;
use herald_testkit::{Backend, Fakes, eventually, spawn_app_with_fakes};
use reqwest::Method;
use serde_json::{Value, json};

use super::delivery::{guest_with_email, redeemed};
use super::*;

const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];
const WAIT: Duration = Duration::from_secs(30);

/// A Herald whose workers send through fakes on the wall clock.
async fn app_with_workers(backend: Backend) -> Option<(TestApp, Fakes)> {
    let fakes = Fakes::live();
    let app = spawn_app_with_fakes(backend, fakes.clone(), |s| {
        s.delivery.workers_in_serve = true;
        s.delivery.poll_interval_ms = 50;
    })
    .await?;
    Some((app, fakes))
}

/// `GET` as an admin; the status and the body.
async fn admin_get(app: &TestApp, path: &str) -> (u16, Value) {
    let res = app.get(path, &app.admin_token()).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `POST` JSON as an admin; the status, the content type and the body.
async fn admin_post(app: &TestApp, path: &str, body: &Value) -> (u16, String, Value) {
    let res = app
        .send_json(Method::POST, path, &app.admin_token(), body)
        .await;
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, res.json().await.unwrap_or(Value::Null))
}

/// The items of one page of `GET /v1/admin/deliveries?{query}`.
async fn listed(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, page) = admin_get(app, &format!("/v1/admin/deliveries?{query}")).await;
    assert_eq!(status, 200, "{query}: {page}");
    page["items"].as_array().unwrap().clone()
}

fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `recipient` has `n` deliveries in `status`; returns them.
async fn wait_for(app: &TestApp, recipient: &str, status: &str, n: usize) -> Vec<Value> {
    eventually(
        &format!("{n} {status} deliveries for {recipient}"),
        WAIT,
        || async move {
            let items = listed(app, &format!("status={status}&recipient={recipient}")).await;
            (items.len() == n).then_some(items)
        },
    )
    .await
}

/// How many accepted messages each delivery id has had.
fn sends_of(fakes: &Fakes, id: &str) -> usize {
    fakes
        .email
        .sent()
        .iter()
        .filter(|m| m.idempotency_key.starts_with(id))
        .count()
}

/// The 422's `field` for `GET /v1/admin/deliveries?{query}`.
async fn list_refuses(app: &TestApp, query: &str) -> String {
    let res = app
        .get(&format!("/v1/admin/deliveries?{query}"), &app.admin_token())
        .await;
    assert_eq!(res.status(), 422, "{query}");
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{query}"
    );
    let problem: Value = res.json().await.unwrap();
    problem["field"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_lists_failed_deliveries_with_filters_and_cursors() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_with_workers(backend).await else {
            continue;
        };
        let (anna, _) = guest_with_email(&app, "redrive-list-anna", json!({})).await;
        let (boris, _) = guest_with_email(&app, "redrive-list-boris", json!({})).await;
        fakes.email.script([
            Step::Permanent,
            Step::Permanent,
            Step::Permanent,
            Step::Permanent,
        ]);
        for _ in 0..3 {
            assert_eq!(app.publish(&redeemed(&anna)).await.status(), 202);
        }
        let mut expired = envelope(EventKind::PointsExpired);
        expired["data"]["guestId"] = json!(boris);
        let published: Value = app.publish(&expired).await.json().await.unwrap();
        let boris_event = published["id"].as_str().unwrap().to_owned();
        wait_for(&app, &anna, "failed", 3).await;
        wait_for(&app, &boris, "failed", 1).await;

        // The default: failed and expired, newest first.
        let all = listed(&app, "").await;
        assert_eq!(all.len(), 4, "{all:?}");
        let times: Vec<i64> = all
            .iter()
            .map(|d| d["updatedAt"].as_i64().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
        let first = &all[0];
        for key in [
            "id",
            "notificationId",
            "eventId",
            "event",
            "recipient",
            "channel",
            "provider",
            "status",
            "reason",
            "attempts",
            "lastError",
            "nextAttemptAt",
            "createdAt",
            "updatedAt",
        ] {
            assert!(first.get(key).is_some(), "{key} missing from {first}");
        }
        assert_eq!(
            (first["channel"].as_str(), first["status"].as_str()),
            (Some("email"), Some("failed"))
        );

        // Two pages of two, no overlap, the same order as one page.
        let (_, page1) = admin_get(&app, "/v1/admin/deliveries?limit=2").await;
        let cursor = page1["nextCursor"]
            .as_str()
            .expect("a next page")
            .to_owned();
        let (_, page2) = admin_get(
            &app,
            &format!("/v1/admin/deliveries?limit=2&cursor={cursor}"),
        )
        .await;
        assert_eq!(page2["nextCursor"], Value::Null);
        let mut paged = ids_of(page1["items"].as_array().unwrap());
        paged.extend(ids_of(page2["items"].as_array().unwrap()));
        assert_eq!(paged, ids_of(&all));
        assert_eq!(paged.iter().collect::<HashSet<_>>().len(), 4);

        // Filters.
        let count = |query: String| {
            let app = &app;
            async move { listed(app, &query).await.len() }
        };
        assert_eq!(count(format!("recipient={anna}")).await, 3);
        assert_eq!(count("event=points_expired".into()).await, 1);
        assert_eq!(count(format!("eventId={boris_event}")).await, 1);
        assert_eq!(count("channel=email&status=failed".into()).await, 4);
        assert_eq!(count("channel=sms".into()).await, 0);
        assert_eq!(count("provider=no-such-provider".into()).await, 0);
        assert_eq!(count("reason=no_such_reason".into()).await, 0);
        let error = first["lastError"]
            .as_str()
            .expect("a failed delivery says why");
        let by_error = listed(&app, &format!("error={}", urlencode(&error.to_uppercase()))).await;
        assert!(ids_of(&by_error).contains(&ids_of(&all)[0]), "{by_error:?}");
        assert_eq!(count("error=zzz-no-such-words".into()).await, 0);
        // Push had no device to go to: listed when asked for.
        assert_eq!(
            count(format!("status=suppressed&recipient={anna}")).await,
            3
        );
        let newest = times[0];
        let oldest = times[3];
        assert_eq!(count(format!("from={}", newest + 1)).await, 0);
        assert_eq!(count(format!("to={}", oldest - 1)).await, 0);
        let rfc3339 = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        assert_eq!(
            count(format!("from={}&to={newest}", urlencode(&rfc3339(oldest)))).await,
            4
        );

        // Bad input names its field.
        assert_eq!(list_refuses(&app, "status=failed,lost").await, "status");
        assert_eq!(list_refuses(&app, "channel=fax").await, "channel");
        assert_eq!(list_refuses(&app, "from=2000&to=1000").await, "to");
        assert_eq!(list_refuses(&app, "from=last-tuesday").await, "from");
        assert_eq!(list_refuses(&app, "cursor=not-a-cursor").await, "cursor");
        assert_eq!(list_refuses(&app, "limit=0").await, "limit");
        assert_eq!(list_refuses(&app, "limit=501").await, "limit");
        assert_eq!(list_refuses(&app, "colour=red").await, "colour");

        // Admins only.
        let guest = app.token(Role::Guest, &anna, None);
        assert_eq!(app.get("/v1/admin/deliveries", &guest).await.status(), 403);
        assert_eq!(app.get("/v1/admin/deliveries", "").await.status(), 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_a_filtered_set_sends_each_once_and_traces_who_asked() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_with_workers(backend).await else {
            continue;
        };
        let (anna, _) = guest_with_email(&app, "redrive-set-anna", json!({})).await;
        let (carl, _) = guest_with_email(&app, "redrive-set-carl", json!({})).await;
        fakes
            .email
            .script([Step::Permanent, Step::Permanent, Step::Permanent]);
        for _ in 0..3 {
            app.publish_ok(&redeemed(&anna)).await;
        }
        let failed = ids_of(&wait_for(&app, &anna, "failed", 3).await);
        app.publish_ok(&redeemed(&carl)).await;
        let carl_sent = wait_for(&app, &carl, "sent", 1).await;
        let carl_id = carl_sent[0]["id"].as_str().unwrap().to_owned();
        assert_eq!(fakes.email.sent().len(), 1);

        // Bounded: more than `max` is refused and changes nothing.
        let retry = "/v1/admin/deliveries/retry";
        let (status, ctype, problem) = admin_post(
            &app,
            retry,
            &json!({"filter": {"recipient": anna}, "max": 2}),
        )
        .await;
        assert_eq!((status, ctype.as_str()), (422, "application/problem+json"));
        assert_eq!(problem["field"], "filter");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains("matches 3 deliveries") && detail.contains("max"),
            "{detail}"
        );
        assert_eq!(listed(&app, &format!("recipient={anna}")).await.len(), 3);
        let field = |body: Value| {
            let app = &app;
            async move {
                let (status, _, problem) = admin_post(app, retry, &body).await;
                assert_eq!(status, 422, "{body}: {problem}");
                problem["field"].as_str().unwrap_or_default().to_owned()
            }
        };
        assert_eq!(
            field(json!({"filter": {"status": ["sent"]}})).await,
            "filter.status"
        );
        assert_eq!(
            field(json!({"filter": {"status": "failed,lost"}})).await,
            "filter.status"
        );
        assert_eq!(
            field(json!({"filter": {"from": 2000, "to": 1000}})).await,
            "filter.to"
        );
        assert_eq!(field(json!({"filter": {}, "max": 1001})).await, "max");
        let many: Vec<String> = (0..1001)
            .map(|_| uuid::Uuid::new_v4().to_string())
            .collect();
        assert_eq!(field(json!({ "ids": many })).await, "ids");
        assert_eq!(field(json!({"ids": ["not-an-id"]})).await, "ids[0]");

        // Re-drive the set; at once again: the second finds them open or sent.
        let (status, _, report) = admin_post(
            &app,
            retry,
            &json!({"filter": {"recipient": anna, "channel": "email"}}),
        )
        .await;
        assert_eq!(status, 202, "{report}");
        let mut requeued: Vec<String> = serde_json::from_value(report["requeued"].clone()).unwrap();
        requeued.sort();
        let mut expected = failed.clone();
        expected.sort();
        assert_eq!(requeued, expected);
        let (status, _, again) = admin_post(&app, retry, &json!({ "ids": failed })).await;
        assert_eq!(status, 202);
        assert_eq!(again["requeued"], json!([]), "{again}");
        assert_eq!(
            again["alreadyQueued"].as_array().unwrap().len()
                + again["notRetryable"].as_array().unwrap().len(),
            3,
            "{again}"
        );

        // Each is sent once.
        wait_for(&app, &anna, "sent", 3).await;
        for id in &failed {
            assert_eq!(sends_of(&fakes, id), 1, "{id}");
        }
        // Nothing left to re-drive; asking again sends nothing.
        let (_, _, report) = admin_post(&app, retry, &json!({"filter": {"recipient": anna}})).await;
        assert_eq!(report["requeued"], json!([]));
        let (_, _, report) = admin_post(&app, retry, &json!({ "ids": failed })).await;
        let statuses: Vec<&str> = report["notRetryable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, vec!["sent"; 3]);
        assert_eq!(fakes.email.sent().len(), 4);

        // A sent delivery is a conflict; an unknown one is not found.
        let (status, ctype, problem) = admin_post(
            &app,
            &format!("/v1/admin/deliveries/{carl_id}/retry"),
            &json!({}),
        )
        .await;
        assert_eq!((status, ctype.as_str()), (409, "application/problem+json"));
        assert_eq!(problem["code"], "not_retryable");
        let unknown = uuid::Uuid::new_v4();
        let (status, _, _) = admin_post(
            &app,
            &format!("/v1/admin/deliveries/{unknown}/retry"),
            &json!({}),
        )
        .await;
        assert_eq!(status, 404);
        let guest = app.token(Role::Guest, &anna, None);
        let res = app
            .send_json(Method::POST, retry, &guest, &json!({ "ids": failed }))
            .await;
        assert_eq!(res.status(), 403);

        // The trace says who re-drove it, and when.
        let item = listed(&app, &format!("status=sent&recipient={anna}")).await[0].clone();
        let notification = item["notificationId"].as_str().unwrap();
        let (status, deliveries) = admin_get(
            &app,
            &format!("/v1/notifications/{notification}/deliveries"),
        )
        .await;
        assert_eq!(status, 200);
        let email = deliveries["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["channel"] == "email")
            .unwrap()
            .clone();
        assert!(email.get("provider").is_some(), "{email}");
        let redrives: Vec<&Value> = email["trace"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["step"] == "redrive")
            .collect();
        assert_eq!(redrives.len(), 1, "{email}");
        assert_eq!(redrives[0]["actor"], "admin:admin-1");
        assert_eq!(redrives[0]["outcome"], "pending");
        assert!(redrives[0]["at"].as_i64().unwrap() > 0);
        assert!(
            redrives[0]["detail"]
                .as_str()
                .unwrap()
                .starts_with("was failed"),
            "{email}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_one_delivery_retried_twice_is_sent_once() {
    for backend in BACKENDS {
        let Some((app, fakes)) = app_with_workers(backend).await else {
            continue;
        };
        let (dora, token) = guest_with_email(&app, "redrive-one-dora", json!({})).await;
        fakes.email.script([Step::Permanent]);
        app.publish_ok(&redeemed(&dora)).await;
        let id = wait_for(&app, &dora, "failed", 1).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/v1/admin/deliveries/{id}/retry");

        let (status, _, first) = admin_post(&app, &path, &json!({})).await;
        assert_eq!(status, 202, "{first}");
        assert_eq!(
            (first["id"].as_str(), first["alreadyQueued"].as_bool()),
            (Some(id.as_str()), Some(false))
        );
        assert!(first["attempts"].as_i64().unwrap_or(0) <= 1, "{first}");
        assert!(first["redrivenAt"].as_i64().is_some(), "{first}");
        // At once again: still queued (200), or already sent (409).
        let (status, _, second) = admin_post(&app, &path, &json!({})).await;
        match status {
            200 => assert_eq!(second["alreadyQueued"], true, "{second}"),
            409 => assert_eq!(second["code"], "not_retryable", "{second}"),
            other => panic!("{other}: {second}"),
        }
        wait_for(&app, &dora, "sent", 1).await;
        let (status, _, _) = admin_post(&app, &path, &json!({})).await;
        assert_eq!(status, 409);
        assert_eq!(sends_of(&fakes, &id), 1);
        // The owner sees the re-drive in the trace too.
        let email = super::delivery::trace(&app, &token, "email").await;
        assert!(
            email["trace"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["step"] == "redrive" && t["actor"] == "admin:admin-1"),
            "{email}"
        );
    }
}

/// `herald deliveries list|retry`, on the app's own database and queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_from_the_cli() {
    let Some((app, fakes)) = app_with_workers(Backend::Sqlite).await else {
        return;
    };
    let (emil, token) = guest_with_email(&app, "redrive-cli-emil", json!({})).await;
    fakes.email.script([Step::Permanent, Step::Permanent]);
    app.publish_ok(&redeemed(&emil)).await;
    app.publish_ok(&redeemed(&emil)).await;
    let failed = ids_of(&wait_for(&app, &emil, "failed", 2).await);
    let run = |args: Vec<String>| {
        let app = &app;
        async move {
            let cli = Cli::try_parse_from(
                ["herald", "deliveries"]
                    .into_iter()
                    .map(String::from)
                    .chain(args),
            )
            .expect("the command line parses");
            let Some(Command::Deliveries { command }) = cli.command else {
                panic!()
            };
            let mut out = Vec::new();
            herald_server::cli::deliveries(&app.store, &app.delivery.queue, command, &mut out)
                .await
                .map(|()| String::from_utf8(out).unwrap())
                .map_err(|e| e.to_string())
        }
    };
    let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();

    let table = run(args(&format!("list --recipient {emil}")))
        .await
        .unwrap();
    assert!(table.starts_with("UPDATED"), "{table}");
    for id in &failed {
        assert!(table.contains(id.as_str()), "{table}");
    }
    let lines = run(args(&format!("list --recipient {emil} --json")))
        .await
        .unwrap();
    let parsed: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ids_of(&parsed), failed);
    let paged = run(args(&format!("list --recipient {emil} --limit 1")))
        .await
        .unwrap();
    assert!(paged.contains("next page: --cursor "), "{paged}");

    let refused = run(args(&format!("retry --recipient {emil} --max 1")))
        .await
        .unwrap_err();
    assert!(refused.contains("matches 2 deliveries"), "{refused}");
    let refused = run(args("retry --status sent")).await.unwrap_err();
    assert!(refused.starts_with("--status:"), "{refused}");
    let bare = run(args("retry")).await.unwrap_err();
    assert!(
        bare.starts_with("give delivery ids, or filter flags"),
        "{bare}"
    );

    let report = run(args(&format!("retry --recipient {emil} --status failed")))
        .await
        .unwrap();
    assert!(report.starts_with("requeued 2,"), "{report}");
    wait_for(&app, &emil, "sent", 2).await;
    let again = run(args(&format!("retry {} --json", failed.join(" "))))
        .await
        .unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["requeued"], json!([]));
    assert_eq!(again["notRetryable"].as_array().unwrap().len(), 2);
    for id in &failed {
        assert_eq!(sends_of(&fakes, id), 1);
    }
    let email = super::delivery::trace(&app, &token, "email").await;
    assert!(
        email["trace"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["step"] == "redrive" && t["actor"] == "cli"),
        "{email}"
    );
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
