//! The console (`/console`) in a real browser: headless Chromium (the
//! system's, driven by playwright-core from npm) against a real Herald.
//! Each test runs one scenario of `tests/browser/console.mjs`, which
//! publishes the events it is handed over REST and reports what the page
//! shows, one JSON line per step; the assertions are here.
//!
//! Screenshots of the main screens are written to `docs/console/` when
//! `HERALD_UPDATE_SCREENSHOTS=1`, to a temporary directory otherwise.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use herald_core::{EventKind, Role};
use herald_testkit::{Backend, TestApp, eventually, spawn_app, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;
use crate::realtime::{node_ready, tests_dir};

/// The longest a whole scenario may take before the test gives up on it.
const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(
        std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let driver = tests_dir().join("node_modules/playwright-core/package.json");
    if path.exists() && driver.exists() {
        return Some(path);
    }
    let why = format!(
        "no browser at {} or playwright-core not installed",
        path.display()
    );
    herald_testkit::skip("Chromium missing", &why);
    None
}

/// Where screenshots go: the docs when asked to update them, else a
/// directory of the test's own (removed by the caller).
fn shots() -> (PathBuf, bool) {
    if std::env::var("HERALD_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console"),
            false,
        )
    } else {
        let dir = std::env::temp_dir().join(format!("herald-console-{}", uuid::Uuid::new_v4()));
        (dir, true)
    }
}

/// A guest's event of `kind`, naming `guest`.
fn event_for(kind: EventKind, guest: &str) -> Value {
    let mut e = envelope(kind);
    e["data"]["guestId"] = json!(guest);
    e
}

struct Scenario {
    app: TestApp,
    guest: String,
    events: Value,
    /// An event published before the browser starts.
    event_id: Option<String>,
}

impl Scenario {
    async fn new(name: &str) -> Option<Scenario> {
        Scenario::start(name, false).await
    }

    /// With the delivery workers running in the server, sending email to
    /// the development outbox, as `herald serve` does out of the box.
    async fn with_workers(name: &str) -> Option<Scenario> {
        Scenario::start(name, true).await
    }

    async fn start(name: &str, workers: bool) -> Option<Scenario> {
        if !node_ready() {
            return None;
        }
        chromium()?;
        let app =
            spawn_app_with(Backend::Sqlite, |s| s.delivery.workers_in_serve = workers).await?;
        let guest = user(name);
        Some(Scenario {
            app,
            guest,
            events: json!({}),
            event_id: None,
        })
    }

    fn event(&mut self, key: &str, envelope: Value) {
        self.events[key] = envelope;
    }

    /// Runs `scenario` to its end; the steps it reported, by name.
    async fn run(&self, scenario: &str) -> HashMap<String, Value> {
        let (shots, temporary) = shots();
        let config = json!({
            "base": self.app.address,
            "guest": self.guest,
            "tokens": {
                "guest": self.app.token(Role::Guest, &self.guest, None),
                "admin": self.app.admin_token(),
                "service": self.app.service_token(),
            },
            "events": self.events,
            "eventId": self.event_id,
            "shots": shots,
        });
        let mut child = tokio::process::Command::new("node")
            .arg(tests_dir().join("browser/console.mjs"))
            .arg(scenario)
            .env("HERALD_CONSOLE", config.to_string())
            .env("HERALD_CHROMIUM", chromium().unwrap())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut steps = HashMap::new();
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let step: Value = serde_json::from_str(&line).unwrap();
                let name = step["step"].as_str().unwrap().to_owned();
                assert!(
                    !["pageerror", "console", "failed"].contains(&name.as_str()),
                    "{scenario}: {step}"
                );
                steps.insert(name, step);
            }
        };
        let finished = tokio::time::timeout(SCENARIO_LIMIT, read).await;
        if temporary {
            let _ = std::fs::remove_dir_all(&shots);
        }
        finished
            .unwrap_or_else(|_| panic!("{scenario}: the browser did not finish; steps: {steps:?}"));
        assert!(child.wait().await.unwrap().success(), "{scenario}");
        assert!(steps.contains_key("done"), "{scenario}: {steps:?}");
        steps
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_event_toasts_rings_the_bell_and_reading_it_clears_every_tab() {
    let Some(mut s) = Scenario::new("console-live").await else {
        return;
    };
    s.event("first", points_for(&s.guest, 42));
    s.event("second", event_for(EventKind::CardCreated, &s.guest));
    s.event("third", points_for(&s.guest, 7));
    let steps = s.run("live").await;

    // The token left the address bar for the tab's storage.
    let signed_in = &steps["signed_in"];
    let url = signed_in["url"].as_str().unwrap();
    assert!(url.ends_with("/console"), "{signed_in}");
    assert_eq!(signed_in["stored"], true);

    let toast = &steps["toast"];
    assert!(toast["toast"].as_str().unwrap().contains("+42"), "{toast}");
    assert_eq!(toast["bell"], "Notifications, 1 unread");

    let centre = &steps["centre"];
    assert_eq!(centre["items"], 1, "{centre}");
    assert_eq!(centre["markButtons"], 1, "{centre}");

    let read = &steps["read"];
    assert_eq!(read["twoBefore"], "Notifications, 1 unread");
    assert_eq!(read["one"], "Notifications, none unread");
    assert_eq!(read["two"], "Notifications, none unread", "the other tab");

    let managed = &steps["managed"];
    assert_eq!(managed["cardOnly"], 1, "{managed}");
    assert_eq!(managed["allRead"]["two"], "Notifications, none unread");
    assert_eq!(managed["left"], 2, "{managed}");
    // Herald agrees: one entry deleted, none unread.
    let token = s.app.token(Role::Guest, &s.guest, None);
    let inbox = s.app.inbox(&token).await;
    assert_eq!(inbox.len(), 2);
    assert!(inbox.iter().all(|n| n["read"] == true), "{inbox:?}");

    let keyboard = &steps["keyboard"];
    assert_eq!(keyboard["bellFocused"], true, "{keyboard}");
    assert_eq!(keyboard["headingFocused"], true, "{keyboard}");
    assert_eq!(keyboard["expanded"], "true");
    assert_eq!(keyboard["closedToBell"], true, "{keyboard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_saved_in_the_console_suppress_the_next_email_and_the_trace_says_why() {
    let Some(mut s) = Scenario::new("console-prefs").await else {
        return;
    };
    s.app
        .register(
            &s.guest,
            Role::Guest,
            None,
            json!({"email": "anna@example.com", "locale": "en"}),
        )
        .await;
    s.event("redeemed", event_for(EventKind::PointsRedeemed, &s.guest));
    let steps = s.run("preferences").await;

    assert_eq!(steps["saved"]["before"], true);
    assert_eq!(steps["saved"]["after"], false);
    let token = s.app.token(Role::Guest, &s.guest, None);
    let prefs: Value = s
        .app
        .get(&format!("/v1/users/{}/preferences", s.guest), &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(prefs["channels"]["email"], false, "{prefs}");

    let trace = &steps["trace"];
    assert_eq!(trace["status"], "suppressed", "{trace}");
    assert_eq!(trace["reason"], "channel_off", "{trace}");
    // Decided when planned: no attempt, so no step; the status and reason say why.
    assert!(
        trace["text"].as_str().unwrap().contains("channel_off"),
        "{trace}"
    );
    // The same, over REST.
    let id = s.app.inbox(&token).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deliveries: Value = s
        .app
        .get(&format!("/v1/notifications/{id}/deliveries"), &token)
        .await
        .json()
        .await
        .unwrap();
    let email = deliveries["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "email")
        .expect("an email delivery")
        .clone();
    assert_eq!(
        (&email["status"], &email["reason"]),
        (&json!("suppressed"), &json!("channel_off")),
        "{email}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_with_every_event_exactly_once() {
    let Some(mut s) = Scenario::new("console-resume").await else {
        return;
    };
    s.event("first", points_for(&s.guest, 1));
    s.event("second", points_for(&s.guest, 2));
    s.event("third", points_for(&s.guest, 3));
    let steps = s.run("resume").await;

    let resumed = &steps["resumed"];
    assert_eq!(resumed["feed"], resumed["expected"], "{resumed}");
    let all = resumed["all"].as_array().unwrap();
    assert_eq!(all.len(), 3, "each event once, nothing else: {resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_sees_connections_a_deliverys_trace_and_the_routing_table() {
    let Some(mut s) = Scenario::with_workers("console-admin").await else {
        return;
    };
    s.app
        .register(
            &s.guest,
            Role::Guest,
            None,
            json!({"email": "boris@example.com", "locale": "ru"}),
        )
        .await;
    // Published and sent before the browser starts, so the trace is whole.
    let event = event_for(EventKind::PointsRedeemed, &s.guest);
    s.app.publish_ok(&event).await;
    let token = s.app.token(Role::Guest, &s.guest, None);
    let app = &s.app;
    eventually("the email sent", Duration::from_secs(30), || async {
        let inbox = app.inbox(&token).await;
        let id = inbox.first()?["id"].as_str()?.to_owned();
        let d: Value = app
            .get(&format!("/v1/notifications/{id}/deliveries"), &token)
            .await
            .json()
            .await
            .ok()?;
        d["items"]
            .as_array()?
            .iter()
            .any(|d| d["channel"] == "email" && d["status"] == "sent")
            .then_some(())
    })
    .await;
    s.event_id = Some(event["id"].as_str().unwrap().to_owned());
    let steps = s.run("admin").await;

    let row = steps["connections"]["row"].as_str().unwrap();
    assert!(
        row.contains("guest") && row.contains(&format!("user:{}", s.guest)),
        "{row}"
    );
    let explorer = &steps["explorer"];
    assert!(explorer["rows"].as_u64().unwrap() >= 1, "{explorer}");
    let trace: Vec<&str> = explorer["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(explorer["status"], "sent", "{explorer}");
    assert!(trace.contains(&"attempt"), "{explorer}");
    // The attempt's outcome and the provider that took it.
    let text = explorer["text"].as_str().unwrap();
    assert!(
        text.contains("routing_default") && text.contains("outbox:email"),
        "{text}"
    );
    let routing = &steps["routing"];
    assert!(routing["events"].as_u64().unwrap() >= 11, "{routing}");
    assert!(
        routing["redeemed"].as_str().unwrap().contains("email"),
        "{routing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_phone_in_russian_the_bell_and_the_centre_read_right() {
    let Some(mut s) = Scenario::new("console-phone").await else {
        return;
    };
    s.event("first", points_for(&s.guest, 42));
    let steps = s.run("phone").await;
    let phone = &steps["phone"];
    assert_eq!(phone["lang"], "ru");
    assert_eq!(phone["bell"], "Уведомления, 1 непрочитанное", "{phone}");
    assert_eq!(phone["markButtons"], 1, "{phone}");
    assert!(phone["text"].as_str().unwrap().contains("+42"), "{phone}");
    assert_eq!(phone["fits"], true, "{phone}");
    assert_eq!(phone["scrollWidth"], 390, "no sideways scrolling: {phone}");
}

/// `GET /console` serves the embedded page with a strict policy, its
/// assets with their types, and `/demo` now leads to it.
#[tokio::test]
async fn the_console_is_served_from_the_binary() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite is always there");
    let page = app.get("/console", "").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    assert!(page.text().await.unwrap().contains("/console/console.js"));

    let again = app
        .request(Method::GET, "/console", "")
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);

    for (asset, kind) in [
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let res = app.get(&format!("/console/{asset}"), "").await;
        assert_eq!(res.status(), 200, "{asset}");
        assert_eq!(res.headers()["content-type"], kind, "{asset}");
        assert_eq!(res.headers()["cache-control"], "no-cache", "{asset}");
    }
    let (status, body) = problem(app.get("/console/nope.js", "").await).await;
    assert_eq!(status, 404, "{body}");

    let demo = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/demo", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(demo.status(), 308);
    assert_eq!(demo.headers()["location"], "/console");
}

/// `GET /v1/admin/connections`, which the console's connections page reads:
/// each user's sockets with transport and rooms, paged by user id, for
/// admins only; a bad parameter is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_list_connected_users_with_their_sockets_and_rooms() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite is always there");
    let (anna, boris) = (user("conn-anna"), user("conn-boris"));
    let (first, _) = crate::realtime::Ws::connect(&app, &app.token(Role::Guest, &anna, None)).await;
    let (second, _) =
        crate::realtime::Ws::connect(&app, &app.token(Role::Guest, &anna, None)).await;
    let (third, _) =
        crate::realtime::Ws::connect(&app, &app.token(Role::Guest, &boris, None)).await;
    let admin = app.admin_token();

    let all: Value = app
        .get("/v1/admin/connections", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["totalUsers"], 2, "{all}");
    assert_eq!(all["nextAfter"], Value::Null, "{all}");
    let users = all["users"].as_array().unwrap();
    let mut ids = vec![anna.clone(), boris.clone()];
    ids.sort();
    assert_eq!(
        users
            .iter()
            .map(|u| u["userId"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids,
        "by user id"
    );
    let anna_entry = users.iter().find(|u| u["userId"] == anna).unwrap();
    assert_eq!(anna_entry["role"], "guest");
    let sockets = anna_entry["sockets"].as_array().unwrap();
    assert_eq!(sockets.len(), 2, "{anna_entry}");
    assert!(sockets[0]["connectedAt"].as_i64() <= sockets[1]["connectedAt"].as_i64());
    for socket in sockets {
        assert_eq!(socket["transport"], "ws");
        assert_eq!(socket["rooms"], json!([format!("user:{anna}")]), "{socket}");
    }

    // Paged: one user, then the other.
    let page: Value = app
        .get("/v1/admin/connections?limit=1", &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let after = page["nextAfter"].as_str().unwrap().to_owned();
    assert_eq!(after, ids[0]);
    let rest: Value = app
        .get(
            &format!("/v1/admin/connections?limit=1&after={after}"),
            &admin,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(rest["users"][0]["userId"], ids[1].as_str());
    assert_eq!(rest["nextAfter"], Value::Null);

    let guest = app.token(Role::Guest, &anna, None);
    let (status, body) = problem(app.get("/v1/admin/connections", &guest).await).await;
    assert_eq!(status, 403, "{body}");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=x", "limit"),
        ("room=a", "room"),
    ] {
        let (status, body) = problem(
            app.get(&format!("/v1/admin/connections?{query}"), &admin)
                .await,
        )
        .await;
        assert_eq!(
            (status, body["field"].as_str()),
            (422, Some(field)),
            "{body}"
        );
    }
    drop((first, second, third));
}
