//! Contract §4: every catalog event publishes and reaches the right inboxes.

use herald_core::{EventKind, Role};
use herald_testkit::{Backend, spawn_app};
use serde_json::{Value, json};

use super::*;

const RESTAURANT: &str = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";

/// Who the contract says gets an inbox entry.
fn inbox_of(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::PointsAdded
        | EventKind::PointsRedeemed
        | EventKind::PointsExpired
        | EventKind::CardCreated
        | EventKind::GuestRegistered
        | EventKind::GuestCardUpdated
        | EventKind::RestaurantGuestJoined
        | EventKind::RestaurantTransaction => &["guest"],
        EventKind::RestaurantStatusChanged => &["staff"],
        EventKind::SystemAlert | EventKind::AdminNotification => &["admin"],
        EventKind::DeliveryFailed => &[],
    }
}

backend_tests! {
    async fn every_event_reaches_the_right_inboxes(app) {
        let guest = EventKind::PointsAdded.example()["guestId"].as_str().unwrap().to_owned();
        app.register("admin-1", Role::Admin, None, json!({"email": "ops@example.com", "phone": "+79161234567"})).await;
        app.register("cashier-1", Role::Cashier, Some(RESTAURANT), json!({"email": "till@example.com"})).await;
        app.register("cashier-elsewhere", Role::Cashier, Some("another-restaurant"), json!({})).await;
        app.register(&guest, Role::Guest, None, json!({"email": "anna@example.com", "locale": "en"})).await;

        let tokens = [
            ("guest", app.token(Role::Guest, &guest, None)),
            ("staff", app.token(Role::Cashier, "cashier-1", Some(RESTAURANT))),
            ("admin", app.token(Role::Admin, "admin-1", None)),
            ("elsewhere", app.token(Role::Cashier, "cashier-elsewhere", Some("another-restaurant"))),
        ];
        for &kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
            let before: Vec<usize> = futures::future::join_all(tokens.iter().map(|(_, t)| app.inbox(t)))
                .await
                .iter()
                .map(Vec::len)
                .collect();
            let res = app.publish(&envelope(kind)).await;
            assert_eq!(res.status(), 202, "{kind}: {}", res.text().await.unwrap());
            for ((who, token), before) in tokens.iter().zip(before) {
                let inbox = app.inbox(token).await;
                let expected = usize::from(inbox_of(kind).contains(who));
                assert_eq!(inbox.len() - before, expected, "{kind} → {who}");
                if expected == 1 {
                    let newest = &inbox[0];
                    assert_eq!(newest["event"], kind.as_str());
                    assert!(!newest["title"].as_str().unwrap().is_empty());
                    assert_eq!(newest["read"], false);
                    // The payload is the one published, with the timestamp Herald keeps.
                    for (k, v) in kind.example().as_object().unwrap() {
                        assert_eq!(&newest["data"][k], v, "{kind}.{k}");
                    }
                }
            }
        }
        // The guest chose English; the admin (no locale) reads the Russian default.
        let guest_inbox = app.inbox(&tokens[0].1).await;
        let card = guest_inbox.iter().find(|n| n["event"] == "card_created").unwrap();
        assert_eq!(card["title"], "Your Пельменная №1 card is ready");
        let admin_inbox = app.inbox(&tokens[2].1).await;
        let alert = admin_inbox.iter().find(|n| n["event"] == "system_alert").unwrap();
        assert_eq!(alert["title"], "🚨 Database failover");
        let note = admin_inbox.iter().find(|n| n["event"] == "admin_notification").unwrap();
        assert_eq!(note["body"], "Ten redemptions in one minute Требуется действие.");
    }

    async fn deliveries_follow_the_routing_table(app) {
        let guest = "0d7c2a4e-5b1f-4c3d-8e9a-1f2b3c4d5e6f";
        app.register(guest, Role::Guest, None, json!({"email": "g@example.com"})).await;
        app.register("admin-1", Role::Admin, None, json!({"email": "ops@example.com", "phone": "+79161234567"})).await;

        let mut redeemed = envelope(EventKind::PointsRedeemed);
        redeemed["data"]["guestId"] = json!(guest);
        app.publish_ok(&redeemed).await;
        let token = app.token(Role::Guest, guest, None);
        let id = app.inbox(&token).await[0]["id"].as_str().unwrap().to_owned();
        let trace: Value = app.get(&format!("/v1/notifications/{id}/deliveries"), &token).await.json().await.unwrap();
        let channels: Vec<(&str, &str, &str)> = trace["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["channel"].as_str().unwrap(), d["status"].as_str().unwrap(), d["reason"].as_str().unwrap()))
            .collect();
        // Email is owed; push has nowhere to go (no device registered).
        assert_eq!(channels, vec![("email", "pending", "routing_default"), ("push", "suppressed", "no_contact")]);

        // A critical alert is mandatory email + SMS to every admin; an info alert is inbox only.
        app.publish_ok(&envelope(EventKind::SystemAlert)).await;
        let mut info = envelope(EventKind::SystemAlert);
        info["data"]["level"] = json!("info");
        app.publish_ok(&info).await;
        let admin = app.token(Role::Admin, "admin-1", None);
        let inbox = app.inbox(&admin).await;
        let (info_id, critical_id) = (inbox[0]["id"].as_str().unwrap(), inbox[1]["id"].as_str().unwrap());
        let critical: Value = app.get(&format!("/v1/notifications/{critical_id}/deliveries"), &admin).await.json().await.unwrap();
        let statuses: Vec<(&str, &str, &str)> = critical["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["channel"].as_str().unwrap(), d["status"].as_str().unwrap(), d["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(statuses, vec![("email", "pending", "mandatory"), ("sms", "pending", "mandatory")]);
        let info: Value = app.get(&format!("/v1/notifications/{info_id}/deliveries"), &admin).await.json().await.unwrap();
        assert_eq!(info["items"], json!([]));
    }
}

/// `GET /openapi.json` is public and describes contract §7: every
/// operation the router serves, and every event a producer may publish
/// with an example the server itself accepts.
#[tokio::test]
async fn the_openapi_document_describes_the_api_and_its_examples_publish() {
    let app = spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite is always there");
    let doc: Value = app.get("/openapi.json", "").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for &(path, method) in herald_server::routes::openapi::OPERATIONS {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not documented"
        );
        // A documented operation exists: the router does not answer it with
        // its fallbacks (no such endpoint, method not allowed).
        let path = path.replace("{user}", "someone").replace("{id}", "x");
        let response = app
            .request(method.to_uppercase().parse().unwrap(), &path, "")
            .send()
            .await
            .unwrap();
        assert_ne!(response.status(), 405, "{method} {path}");
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("no such endpoint"),
            "{method} {path}: {body}"
        );
    }
    // Every operation says what it answers, with a schema for each body;
    // those that take a token say which roles may call and that any
    // refusal is a problem document.
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|code| code.starts_with('2')),
                "{method} {path}: no success response"
            );
            for (code, response) in responses {
                if code == "204" || response.get("$ref").is_some() {
                    continue;
                }
                let content = response["content"].as_object();
                assert!(
                    content.is_some_and(|c| c.values().all(|m| m["schema"].is_object())),
                    "{method} {path} {code}: no schema"
                );
            }
            if op["security"] != json!([]) {
                assert!(
                    op["x-herald-roles"]
                        .as_array()
                        .is_some_and(|r| !r.is_empty()),
                    "{method} {path}"
                );
                assert_eq!(
                    responses["4XX"]["$ref"], "#/components/responses/Problem",
                    "{method} {path}"
                );
            }
        }
    }
    // Each publishable event's payload schema is the catalog's, and the
    // batch limit is this server's.
    for kind in EventKind::ALL.iter().filter(|k| !k.is_internal()) {
        let mut schema = doc["components"]["schemas"][format!("event.{kind}")].clone();
        schema.as_object_mut().unwrap().remove("example");
        assert_eq!(schema, kind.schema(), "{kind}");
    }
    let publish = &doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(publish["schema"]["oneOf"][1]["maxItems"], 1000);
    let examples = doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
        ["examples"]
        .as_object()
        .unwrap()
        .clone();
    let publishable = EventKind::ALL.iter().filter(|k| !k.is_internal()).count();
    assert_eq!(examples.len(), publishable);
    for (name, example) in examples {
        let response = app.publish(&example["value"]).await;
        assert_eq!(response.status(), 202, "the {name} example is refused");
    }
}
