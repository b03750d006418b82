//! `action_confirm`: acked once durably recorded, relayed to the platform's
//! webhook (signed, retried until accepted).

use std::net::SocketAddr;

use axum::http::{HeaderMap, StatusCode};
use herald_core::Role;
use herald_testkit::{Backend, spawn_app_with};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::realtime::*;
use super::*;

backend_tests! {
    async fn confirmations_are_recorded_before_the_ack(app) {
        let guest = user("confirming-guest");
        let (mut ws, _) = Ws::connect(&app, &app.token(Role::Guest, &guest, None)).await;
        let confirm = json!({"actionId": "act-1", "action": "points_redeem", "amount": 500});
        let ack = ws.request("action_confirm", confirm.clone()).await;
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!((ack["actionId"].as_str(), ack["status"].as_str()), (Some("act-1"), Some("recorded")));
        // No webhook configured: recorded, not relayed, and the ack says so.
        assert_eq!(ack["relay"], "disabled");
        assert_eq!(ack["duplicate"], false);
        let row = app.store.action(&guest, "act-1").await.unwrap().expect("recorded before the ack");
        assert_eq!((row.action.as_str(), row.amount.as_str()), ("points_redeem", "500"));
        assert_eq!(row.status.as_str(), "unrelayed");

        // A retry is the same confirmation; another amount under the id is refused.
        let again = ws.request("action_confirm", confirm).await;
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["recordedAt"], ack["recordedAt"]);
        let conflict = ws
            .request("action_confirm", json!({"actionId": "act-1", "action": "points_redeem", "amount": 501}))
            .await;
        assert_eq!(conflict["error"]["code"], "BAD_REQUEST");
        // Ids are per user: another guest may use the same one.
        let (mut other, _) = Ws::connect(&app, &app.token(Role::Guest, &user("another"), None)).await;
        let theirs = other
            .request("action_confirm", json!({"actionId": "act-1", "action": "x", "amount": 1}))
            .await;
        assert_eq!(theirs["duplicate"], false);
    }
}

/// One webhook request as the platform saw it.
#[derive(Debug)]
struct Hook {
    headers: HeaderMap,
    body: String,
}

/// A platform endpoint that refuses the first `failures` requests.
async fn platform(failures: usize) -> (SocketAddr, mpsc::UnboundedReceiver<Hook>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (tx, seen) = (tx.clone(), seen.clone());
            async move {
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tx.send(Hook { headers, body });
                if n < failures {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx)
}

async fn next_hook(rx: &mut mpsc::UnboundedReceiver<Hook>) -> Hook {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the webhook was called in time")
        .expect("platform running")
}

#[tokio::test]
async fn confirmations_are_relayed_signed_and_retried_until_accepted() {
    let (addr, mut hooks) = platform(2).await;
    let secret = "platform-shared-webhook-secret";
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.realtime.webhook_url = format!("http://{addr}/hook");
        s.realtime.webhook_secret = secret.into();
        s.realtime.webhook_retry_base_ms = 10;
        s.realtime.webhook_retry_max_ms = 40;
    })
    .await
    .unwrap();
    let cashier = user("relaying-cashier");
    let (mut ws, _) = Ws::connect(&app, &app.token(Role::Cashier, &cashier, Some("r-9"))).await;
    let ack = ws
        .request(
            "action_confirm",
            json!({"actionId": "a-42", "action": "points_redeem", "amount": 99.5}),
        )
        .await;
    assert_eq!(
        (ack["ok"].as_bool(), ack["relay"].as_str()),
        (Some(true), Some("pending"))
    );

    // Two refusals, then accepted: three attempts of the same request.
    let attempts = [
        next_hook(&mut hooks).await,
        next_hook(&mut hooks).await,
        next_hook(&mut hooks).await,
    ];
    let key = attempts[0].headers["x-herald-idempotency-key"].clone();
    for hook in &attempts {
        let body: Value = serde_json::from_str(&hook.body).unwrap();
        assert_eq!(body["type"], "action_confirm");
        assert_eq!(
            (body["userId"].as_str(), body["role"].as_str()),
            (Some(cashier.as_str()), Some("cashier"))
        );
        assert_eq!(
            (body["restaurantId"].as_str(), body["actionId"].as_str()),
            (Some("r-9"), Some("a-42"))
        );
        assert_eq!(body["amount"], json!(99.5));
        assert_eq!(hook.headers["x-herald-idempotency-key"], key);
        let timestamp: i64 = hook.headers["x-herald-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            hook.headers["x-herald-signature"].to_str().unwrap(),
            herald_realtime::actions::signature(secret.as_bytes(), timestamp, &hook.body),
            "signed with the shared secret over timestamp and body"
        );
    }

    // The relay handles one confirmation at a time: once the next one
    // reaches the platform, the first is marked relayed.
    ws.request(
        "action_confirm",
        json!({"actionId": "a-43", "action": "x", "amount": 1}),
    )
    .await;
    let next: Value = serde_json::from_str(&next_hook(&mut hooks).await.body).unwrap();
    assert_eq!(next["actionId"], "a-43");
    let row = app.store.action(&cashier, "a-42").await.unwrap().unwrap();
    assert_eq!(row.status.as_str(), "relayed");
    assert_eq!(row.attempts, 3);
}
