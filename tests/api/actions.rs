//! `action_confirm`: acked once durably recorded, relayed to the platform's
//! webhook (signed, retried while the platform may still take it, final
//! when it refuses with a 4xx).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use herald_core::Role;
use herald_store::actions::{ActionRecord, ActionStatus};
use herald_testkit::{Backend, eventually, spawn_app_with};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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

    async fn a_confirmation_the_database_cannot_hold_is_refused_not_retried(app) {
        let guest = user("nul-guest");
        let (mut ws, _) = Ws::connect(&app, &app.token(Role::Guest, &guest, None)).await;
        // PostgreSQL cannot store NUL; SQLite would, and the relay would choke
        // on it later. Both refuse it as bad input, naming the field.
        let nul = ws
            .request("action_confirm", json!({"actionId": "act\u{0}1", "action": "points_redeem", "amount": 1}))
            .await;
        assert_eq!(nul["error"]["code"], "BAD_REQUEST", "{nul}");
        assert!(nul["error"]["message"].as_str().unwrap().contains("actionId"), "{nul}");
        let huge = ws
            .request("action_confirm", json!({"actionId": "act-2", "action": "points_redeem", "amount": 9_007_199_254_740_993_u64}))
            .await;
        assert_eq!(huge["error"]["code"], "BAD_REQUEST", "{huge}");
        assert!(app.store.action(&guest, "act-2").await.unwrap().is_none());
        // The connection is still good.
        let ok = ws
            .request("action_confirm", json!({"actionId": "act-3", "action": "points_redeem", "amount": 1}))
            .await;
        assert_eq!(ok["ok"], true, "{ok}");
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

/// A Herald relaying to `platform`'s `/hook`, retrying fast.
async fn relaying_to(backend: Backend, platform: &MockServer) -> Option<TestApp> {
    let url = format!("{}/hook", platform.uri());
    spawn_app_with(backend, move |s| {
        s.realtime.webhook_url = url;
        s.realtime.webhook_secret = "platform-shared-webhook-secret".into();
        s.realtime.webhook_retry_base_ms = 10;
        s.realtime.webhook_retry_max_ms = 40;
    })
    .await
}

/// The confirmation once it has reached `status`.
async fn settled(app: &TestApp, user: &str, action_id: &str, status: ActionStatus) -> ActionRecord {
    eventually(
        &format!("{action_id} {}", status.as_str()),
        WAIT,
        || async {
            app.store
                .action(user, action_id)
                .await
                .unwrap()
                .filter(|r| r.status == status)
        },
    )
    .await
}

/// `herald_realtime_action_relays_total` of `outcome`.
async fn relays(app: &TestApp, outcome: &str) -> u64 {
    let metrics = app.get("/metrics", "").await.text().await.unwrap();
    let series = format!("herald_realtime_action_relays_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("{series} in\n{metrics}"))
        .parse()
        .unwrap()
}

async fn a_refusal_is_final_and_visible(backend: Backend) {
    let platform = MockServer::start().await;
    let refusal = r#"{"error":"unknown action","action":"points_gift"}"#;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .and(body_partial_json(json!({"actionId": "refused"})))
        .respond_with(ResponseTemplate::new(400).set_body_string(refusal))
        .expect(1)
        .mount(&platform)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .and(body_partial_json(json!({"actionId": "accepted"})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&platform)
        .await;
    let Some(app) = relaying_to(backend, &platform).await else {
        return;
    };
    let guest = user("refused-guest");
    let (mut ws, _) = Ws::connect(&app, &app.token(Role::Guest, &guest, None)).await;
    let confirm = json!({"actionId": "refused", "action": "points_gift", "amount": 5});
    let ack = ws.request("action_confirm", confirm.clone()).await;
    assert_eq!(ack["relay"], "pending", "{ack}");

    // Rejected at the first answer, with the answer kept.
    let row = settled(&app, &guest, "refused", ActionStatus::Rejected).await;
    assert_eq!(row.attempts, 1);
    let answer = row.response.expect("the answer is recorded");
    assert_eq!((answer.status, answer.body.as_str()), (400, refusal));
    assert!(
        row.last_error.as_deref().is_some_and(|e| e.contains("400")),
        "{:?}",
        row.last_error
    );
    // Nothing is left to retry, and the outcome is counted.
    assert_eq!(app.store.next_action_due().await.unwrap(), None);
    assert_eq!(relays(&app, "rejected").await, 1);
    assert_eq!(relays(&app, "retrying").await, 0);
    // The client asking again learns the outcome.
    let again = ws.request("action_confirm", confirm).await;
    assert_eq!(
        (again["duplicate"].as_bool(), again["relay"].as_str()),
        (Some(true), Some("rejected"))
    );

    // The relay goes on with the next confirmation; the refused one was
    // posted once (each mock expects exactly one request).
    ws.request(
        "action_confirm",
        json!({"actionId": "accepted", "action": "points_redeem", "amount": 1}),
    )
    .await;
    let relayed = settled(&app, &guest, "accepted", ActionStatus::Relayed).await;
    assert_eq!(relayed.response, None);
    assert_eq!(relays(&app, "relayed").await, 1);
    platform.verify().await;
}

#[tokio::test]
async fn a_client_error_is_final_and_visible_sqlite() {
    a_refusal_is_final_and_visible(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_client_error_is_final_and_visible_postgres() {
    a_refusal_is_final_and_visible(Backend::Postgres).await;
}

#[tokio::test]
async fn an_unavailable_platform_is_retried_no_sooner_than_it_asks() {
    let platform = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("retry-after", "1")
                .set_body_string("maintenance"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&platform)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&platform)
        .await;
    let app = relaying_to(Backend::Sqlite, &platform).await.unwrap();
    let cashier = user("patient-cashier");
    let (mut ws, _) = Ws::connect(&app, &app.token(Role::Cashier, &cashier, Some("r-1"))).await;
    let started = Instant::now();
    ws.request(
        "action_confirm",
        json!({"actionId": "later", "action": "points_redeem", "amount": 10}),
    )
    .await;
    let row = settled(&app, &cashier, "later", ActionStatus::Relayed).await;
    assert_eq!(row.attempts, 2);
    // The backoff alone would have come back within 40 ms; the platform
    // asked for a second.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((row.response, row.last_error), (None, None));
    assert_eq!(relays(&app, "retrying").await, 1);
    assert_eq!(relays(&app, "relayed").await, 1);
    assert_eq!(relays(&app, "rejected").await, 0);
    platform.verify().await;
}
