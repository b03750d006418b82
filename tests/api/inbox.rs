//! The notification centre: paging, unread state, read, delete.

use std::collections::HashSet;

use herald_core::Role;
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

async fn unread_count(app: &TestApp, token: &str) -> i64 {
    let v: Value = app
        .get("/v1/notifications/unread-count", token)
        .await
        .json()
        .await
        .unwrap();
    v["count"].as_i64().unwrap()
}

backend_tests! {
    async fn paging_never_skips_or_repeats_while_notifications_arrive(app) {
        let token = app.token(Role::Guest, &user("pager"), None);
        for batch in 0..3 {
            let events: Vec<Value> = (0..10).map(|i| points_for(&user("pager"), batch * 10 + i)).collect();
            assert_eq!(app.publish(&Value::Array(events)).await.status(), 202);
        }
        // Page backwards through the 30 while 40 more arrive concurrently.
        let writer = {
            let events: Vec<Value> = (0..40).map(|i| points_for(&user("pager"), 1000 + i)).collect();
            let app = &app;
            async move {
                for chunk in events.chunks(4) {
                    assert_eq!(app.publish(&Value::Array(chunk.to_vec())).await.status(), 202);
                }
            }
        };
        let reader = async {
            let mut seen = Vec::new();
            let mut cursor = String::new();
            loop {
                let page: Value = app.get(&format!("/v1/notifications?limit=7&cursor={cursor}"), &token).await.json().await.unwrap();
                seen.extend(page["items"].as_array().unwrap().iter().map(|n| n["seq"].as_i64().unwrap()));
                match page["nextCursor"].as_str() {
                    Some(c) => cursor = c.to_owned(),
                    None => break seen,
                }
            }
        };
        let ((), seen) = tokio::join!(writer, reader);
        // Strictly decreasing: nothing repeated, and the sequence has no holes
        // from the first page's top down to 1.
        assert!(seen.windows(2).all(|w| w[0] == w[1] + 1), "{seen:?}");
        assert_eq!(*seen.last().unwrap(), 1);
        assert!(seen.len() >= 30);
        // Afterwards the whole inbox is exactly 70 distinct entries, numbered 1..=70.
        let all = app.inbox(&token).await;
        let seqs: HashSet<i64> = all.iter().map(|n| n["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (1..=70).collect());
    }

    async fn read_unread_and_delete(app) {
        let token = app.token(Role::Guest, &user("reader"), None);
        let events: Vec<Value> = (0..4).map(|i| points_for(&user("reader"), i)).collect();
        app.publish_ok(&Value::Array(events)).await;
        assert_eq!(unread_count(&app, &token).await, 4);
        let inbox = app.inbox(&token).await;
        let first = inbox[0]["id"].as_str().unwrap();

        let res = app.request(Method::POST, &format!("/v1/notifications/{first}/read"), &token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let read: Value = res.json().await.unwrap();
        assert_eq!(read["read"], true);
        let read_at = read["readAt"].clone();
        // Reading again keeps the first read time.
        let again: Value = app.request(Method::POST, &format!("/v1/notifications/{first}/read"), &token).send().await.unwrap().json().await.unwrap();
        assert_eq!(again["readAt"], read_at);
        assert_eq!(unread_count(&app, &token).await, 3);

        let unread: Value = app.get("/v1/notifications?unread=true", &token).await.json().await.unwrap();
        assert_eq!(unread["items"].as_array().unwrap().len(), 3);
        assert!(unread["items"].as_array().unwrap().iter().all(|n| n["read"] == false));

        let second = inbox[1]["id"].as_str().unwrap();
        let res = app.request(Method::DELETE, &format!("/v1/notifications/{second}"), &token).send().await.unwrap();
        assert_eq!(res.status(), 204);
        let res = app.request(Method::DELETE, &format!("/v1/notifications/{second}"), &token).send().await.unwrap();
        assert_eq!(res.status(), 404);
        assert_eq!(app.get(&format!("/v1/notifications/{second}"), &token).await.status(), 404);
        assert_eq!(app.inbox(&token).await.len(), 3);
        assert_eq!(unread_count(&app, &token).await, 2);

        let res: Value = app.request(Method::POST, "/v1/notifications/read-all", &token).send().await.unwrap().json().await.unwrap();
        assert_eq!(res, json!({"updated": 2}));
        assert_eq!(unread_count(&app, &token).await, 0);
    }

    async fn query_parameters_are_checked(app) {
        let token = app.token(Role::Guest, "q", None);
        for (query, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=ten", "limit"),
            ("cursor=abc", "cursor"),
            ("unread=maybe", "unread"),
            ("colour=red", "colour"),
        ] {
            let res = app.get(&format!("/v1/notifications?{query}"), &token).await;
            assert_eq!(res.status(), 422, "{query}");
            let p: Value = res.json().await.unwrap();
            assert_eq!(p["field"], field, "{query}");
        }
        assert_eq!(app.get("/v1/notifications/not-a-uuid", &token).await.status(), 404);
    }
}
