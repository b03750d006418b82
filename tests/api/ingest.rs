//! `POST /v1/events`: validation, batches, idempotency, limits.

use herald_core::{EventKind, Role};
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

backend_tests! {
    async fn bad_payloads_are_422_naming_the_field(app) {
        let mut negative = envelope(EventKind::PointsAdded);
        negative["data"]["amount"] = json!(-5);
        let mut missing = envelope(EventKind::CardCreated);
        missing["data"].as_object_mut().unwrap().remove("cardId");
        let mut bad_enum = envelope(EventKind::GuestCardUpdated);
        bad_enum["data"]["changes"]["tier"] = json!("diamond");
        let mut bad_uuid = envelope(EventKind::PointsRedeemed);
        bad_uuid["data"]["guestId"] = json!("guest-7");
        let mut typo = envelope(EventKind::PointsAdded);
        typo["data"]["descripton"] = json!("oops");
        let cases = [
            (negative, "data.amount", "validation_failed"),
            (missing, "data.cardId", "validation_failed"),
            (bad_enum, "data.changes.tier", "validation_failed"),
            (bad_uuid, "data.guestId", "validation_failed"),
            (typo, "data.descripton", "validation_failed"),
            (json!({"event": "points_added"}), "data", "validation_failed"),
            (json!({"event": "points_added", "data": {}, "extra": 1}), "extra", "validation_failed"),
            (json!({"id": "", "event": "points_added", "data": {}}), "id", "validation_failed"),
            (json!({"event": "points_subtracted", "data": {}}), "event", "unknown_event"),
            (json!({"event": "delivery_failed", "data": {}}), "event", "unknown_event"),
            (json!("points_added"), "", "validation_failed"),
        ];
        for (body, field, code) in cases {
            let (status, p) = problem(app.publish(&body).await).await;
            assert_eq!(status, 422, "{body}");
            assert_eq!(p["code"], code, "{body}: {p}");
            assert_eq!(p["field"].as_str().unwrap_or(""), field, "{body}: {p}");
            assert!(!p["detail"].as_str().unwrap().is_empty());
        }
        // Nothing was written by any of them.
        let guest = app.token(Role::Guest, EventKind::PointsAdded.example()["guestId"].as_str().unwrap(), None);
        assert!(app.inbox(&guest).await.is_empty());
    }

    async fn malformed_requests_get_clear_errors(app) {
        let token = app.service_token();
        let res = app.request(Method::POST, "/v1/events", &token).header("content-type", "application/json").body("{\"event\": ").send().await.unwrap();
        let (status, p) = problem(res).await;
        assert_eq!((status, p["code"].as_str().unwrap()), (400, "invalid_json"));
        let res = app.request(Method::POST, "/v1/events", &token).header("content-type", "text/plain").body("{}").send().await.unwrap();
        assert_eq!(problem(res).await.0, 415);
        let res = app.get("/v1/nothing-here", &token).await;
        assert_eq!(problem(res).await.0, 404);
        let res = app.request(Method::PATCH, "/v1/events", &token).send().await.unwrap();
        assert_eq!(problem(res).await.0, 405);
    }

    async fn batches_are_all_or_nothing(app) {
        let batch: Vec<Value> = (0..5).map(|i| points_for(&user("b-guest"), 10 + i)).collect();
        let res = app.publish(&Value::Array(batch.clone())).await;
        assert_eq!(res.status(), 202);
        let records: Vec<Value> = res.json().await.unwrap();
        assert_eq!(records.len(), 5);
        for (record, sent) in records.iter().zip(&batch) {
            assert_eq!(record["id"], sent["id"]);
            assert_eq!(record["event"], "points_added");
        }
        let guest = app.token(Role::Guest, &user("b-guest"), None);
        let inbox = app.inbox(&guest).await;
        assert_eq!(inbox.len(), 5);
        // Newest first; a batch's entries keep its order.
        let amounts: Vec<i64> = inbox.iter().map(|n| n["data"]["amount"].as_i64().unwrap()).collect();
        assert_eq!(amounts, vec![14, 13, 12, 11, 10]);

        let mut bad = vec![points_for(&user("b-guest"), 1), points_for(&user("b-guest"), 2)];
        bad[1]["data"]["amount"] = json!(-2);
        let (status, p) = problem(app.publish(&Value::Array(bad)).await).await;
        assert_eq!((status, p["field"].as_str().unwrap()), (422, "[1].data.amount"));
        assert_eq!(app.inbox(&guest).await.len(), 5, "the valid half was not written either");

        let (status, _) = problem(app.publish(&json!([])).await).await;
        assert_eq!(status, 422);
    }

    async fn the_same_id_is_one_event(app) {
        let event = points_for(&user("idem-guest"), 42);
        let first = app.publish(&event).await;
        assert_eq!(first.status(), 202);
        let first: Value = first.json().await.unwrap();
        for _ in 0..3 {
            let again = app.publish(&event).await;
            assert_eq!(again.status(), 202);
            assert_eq!(again.json::<Value>().await.unwrap(), first, "answers as the first time");
        }
        let guest = app.token(Role::Guest, &user("idem-guest"), None);
        assert_eq!(app.inbox(&guest).await.len(), 1);

        let mut changed = event.clone();
        changed["data"]["amount"] = json!(43);
        let (status, p) = problem(app.publish(&changed).await).await;
        assert_eq!((status, p["code"].as_str().unwrap(), p["field"].as_str().unwrap()), (409, "idempotency_conflict", "id"));

        // Keys need not be UUIDs.
        let mut keyed = points_for(&user("idem-guest"), 7);
        keyed["id"] = json!("txn-2026-000123");
        let a: Value = app.publish(&keyed).await.json().await.unwrap();
        let b: Value = app.publish(&keyed).await.json().await.unwrap();
        assert_eq!(a, b);
        assert_eq!(app.inbox(&guest).await.len(), 2);
    }

    async fn twenty_concurrent_publishes_of_one_id_make_one_notification(app) {
        let event = points_for(&user("race-guest"), 5);
        let responses = futures::future::join_all((0..20).map(|_| app.publish(&event))).await;
        let mut bodies = Vec::new();
        for res in responses {
            assert_eq!(res.status(), 202);
            bodies.push(res.json::<Value>().await.unwrap());
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "every caller hears the same answer");
        let guest = app.token(Role::Guest, &user("race-guest"), None);
        assert_eq!(app.inbox(&guest).await.len(), 1);
    }

    async fn oversized_batches_are_refused(app) {
        let batch: Vec<Value> = (0..1001).map(|i| points_for(&user("many"), i)).collect();
        let (status, p) = problem(app.publish(&Value::Array(batch)).await).await;
        assert_eq!((status, p["code"].as_str().unwrap()), (413, "batch_too_large"));
    }
}

/// Body size does not depend on the database; a small limit keeps the
/// whole body inside the socket buffers, so the client reads the answer
/// rather than a reset.
#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = herald_testkit::spawn_app_with(herald_testkit::Backend::Sqlite, |s| {
        s.server.max_body_bytes = 4096
    })
    .await
    .unwrap();
    let big = "x".repeat(6000);
    let res = app
        .publish(&json!({"event": "system_alert", "data": {"title": big}}))
        .await;
    let (status, p) = problem(res).await;
    assert_eq!(
        (status, p["code"].as_str().unwrap()),
        (413, "payload_too_large")
    );
}
