//! Bad input and lost dependencies, answered honestly: a NUL character in
//! any input, integers JavaScript cannot read, instants past year 9999, a
//! token whose `exp` is absurd, and the database going away. Each gets the
//! status and problem code that say what happened, and names the field at
//! fault, on SQLite and on PostgreSQL alike.

use std::sync::{Arc, Mutex};

use herald_core::input::{MAX_INSTANT_MS, MAX_INSTANT_SECONDS, MAX_SAFE_INTEGER};
use herald_core::{EventKind, Role};
use herald_testkit::{Backend, spawn_app, spawn_app_with};
use jsonwebtoken::{EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::realtime::{Ws, ws_url};
use super::*;

/// The status and problem document of an error answer.
async fn problem(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{status}"
    );
    (status, res.json().await.unwrap())
}

/// Asserts a 422 `validation_failed` naming `field`.
async fn invalid(res: reqwest::Response, field: &str) -> Value {
    let (status, p) = problem(res).await;
    assert_eq!(status, 422, "{field}: {p}");
    assert_eq!(p["code"], "validation_failed", "{field}: {p}");
    assert_eq!(p["field"], field, "{p}");
    p
}

/// A token signed with the app's secret over any claims, absurd ones included.
fn forge(app: &TestApp, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(app.secret.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> u64 {
    jsonwebtoken::get_current_timestamp() + 3600
}

/// Asserts a 401 `unauthorized` whose detail mentions `says`.
async fn refused(res: reqwest::Response, says: &str) {
    let (status, p) = problem(res).await;
    assert_eq!(status, 401, "{says}: {p}");
    assert_eq!(p["code"], "unauthorized", "{p}");
    assert!(p["detail"].as_str().unwrap().contains(says), "{says}: {p}");
}

/// Asserts that `/ws` refuses `token` before the upgrade with the same
/// problem document as REST.
async fn ws_refuses(app: &TestApp, token: &str) {
    let mut request = ws_url(app).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    match Ws::try_connect(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 401);
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "unauthorized", "{body}");
            assert_eq!(body["title"], "Unauthorized", "{body}");
            assert_eq!(body["type"], "urn:herald:problem:unauthorized", "{body}");
            assert_eq!(body["status"], 401, "{body}");
        }
        other => panic!(
            "expected a 401 before the upgrade, got {:?}",
            other.map(|_| ())
        ),
    }
}

backend_tests! {
    async fn a_nul_in_a_body_is_422_naming_the_field(app) {
        let guest = user("nul-guest");
        // The event id.
        let mut e = points_for(&guest, 10);
        e["id"] = json!("order\u{0}42");
        invalid(app.publish(&e).await, "id").await;
        // A payload field, alone and in a batch.
        let mut e = points_for(&guest, 10);
        e["data"]["restaurantName"] = json!("Пельменная\u{0}№1");
        let p = invalid(app.publish(&e).await, "data.restaurantName").await;
        assert!(p["detail"].as_str().unwrap().contains("NUL"), "{p}");
        let ok = points_for(&guest, 10);
        invalid(app.publish(&json!([ok, e])).await, "[1].data.restaurantName").await;
        // Nothing of either was written.
        let token = app.token(Role::Guest, &guest, None);
        assert!(app.inbox(&token).await.is_empty());

        // A contact email, and a key of the body.
        let service = app.service_token();
        let contact = format!("/v1/users/{guest}/contact");
        let res = app.send_json(Method::PUT, &contact, &service, &json!({"email": "anna\u{0}@example.com"})).await;
        invalid(res, "email").await;
        let res = app.send_json(Method::PUT, &contact, &service, &json!({"em\u{0}ail": "anna@example.com"})).await;
        invalid(res, "em\\u0000ail").await;
        let stored: Value = app.get(&contact, &service).await.json().await.unwrap();
        assert!(stored["email"].is_null(), "{stored}");

        // A device token.
        let res = app
            .send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &service, &json!({"kind": "fcm", "token": "fcm\u{0}token"}))
            .await;
        invalid(res, "token").await;
        let devices: Value = app.get(&format!("/v1/users/{guest}/devices"), &service).await.json().await.unwrap();
        assert_eq!(devices["items"], json!([]));

        // The same requests without the NUL go through.
        assert_eq!(app.publish(&points_for(&guest, 10)).await.status(), 202);
        let res = app.send_json(Method::PUT, &contact, &service, &json!({"email": "anna@example.com"})).await;
        assert_eq!(res.status(), 200);
    }

    async fn a_nul_in_a_path_or_query_is_422_naming_the_parameter(app) {
        let service = app.service_token();
        let res = app.send_json(Method::PUT, "/v1/users/a%00b/contact", &service, &json!({"email": "a@example.com"})).await;
        invalid(res, "user").await;
        invalid(app.get("/v1/users/a%00b/contact", &service).await, "user").await;
        invalid(app.get("/v1/users/a%00b/preferences", &app.admin_token()).await, "user").await;
        let res = app.request(Method::DELETE, "/v1/users/u1/devices/d%00", &service).send().await.unwrap();
        invalid(res, "id").await;
        let res = app.request(Method::POST, "/v1/notifications/n%00/read", &app.token(Role::Guest, "g1", None)).send().await.unwrap();
        invalid(res, "id").await;
        // The query of the admin's delivery list reaches the database too.
        let admin = app.admin_token();
        invalid(app.get("/v1/admin/deliveries?recipient=a%00b", &admin).await, "recipient").await;
        invalid(app.get("/v1/notifications?cursor=%00", &app.token(Role::Guest, "g1", None)).await, "cursor").await;
        // A segment that is not UTF-8 is a bad request, still problem+json.
        let (status, p) = problem(app.get("/v1/users/a%FFb/contact", &service).await).await;
        assert_eq!((status, p["code"].as_str().unwrap()), (400, "bad_request"), "{p}");
    }

    async fn a_nul_in_a_token_claim_is_401(app) {
        let exp = in_an_hour();
        let cases = [
            (json!({"sub": "g\u{0}1", "role": "guest", "exp": exp}), "`sub`"),
            (json!({"id": "g\u{0}1", "role": "guest", "exp": exp}), "`id`"),
            (json!({"sub": "c1", "role": "cashier", "restaurantId": "r\u{0}1", "exp": exp}), "`restaurantId`"),
        ];
        for (claims, says) in cases {
            let token = forge(&app, &claims);
            refused(app.get("/v1/notifications", &token).await, says).await;
            refused(app.get("/v1/notifications/unread-count", &token).await, says).await;
            ws_refuses(&app, &token).await;
        }
        // The same claims without the NUL are accepted.
        let token = forge(&app, &json!({"sub": "c1", "role": "cashier", "restaurantId": "r1", "exp": exp}));
        assert_eq!(app.get("/v1/notifications", &token).await.status(), 200);
    }

    async fn a_token_expiring_past_year_9999_is_401(app) {
        for exp in [json!(u64::MAX), json!(1_u64 << 63), json!(i64::MAX), json!(MAX_INSTANT_SECONDS + 1)] {
            let token = forge(&app, &json!({"sub": "g1", "role": "guest", "exp": exp}));
            refused(app.get("/v1/notifications", &token).await, "year 9999").await;
            ws_refuses(&app, &token).await;
        }
        // The horizon itself is a lifetime, however long.
        let token = forge(&app, &json!({"sub": "g1", "role": "guest", "exp": MAX_INSTANT_SECONDS}));
        assert_eq!(app.get("/v1/notifications", &token).await.status(), 200);
    }

    async fn an_integer_javascript_cannot_read_is_422_naming_the_field(app) {
        let guest = user("big-numbers");
        let mut e = points_for(&guest, 10);
        e["data"]["amount"] = json!(MAX_SAFE_INTEGER + 1);
        let p = invalid(app.publish(&e).await, "data.amount").await;
        assert!(p["detail"].as_str().unwrap().contains("JavaScript"), "{p}");
        let mut e = points_for(&guest, 10);
        e["data"]["timestamp"] = json!(u64::MAX);
        invalid(app.publish(&e).await, "data.timestamp").await;
        let mut e = points_for(&guest, 10);
        e["data"]["newBalance"] = json!(i64::MIN);
        invalid(app.publish(&json!([points_for(&guest, 1), e])).await, "[1].data.newBalance").await;
        // Any body, not only events.
        let res = app
            .send_json(
                Method::POST,
                &format!("/v1/users/{guest}/devices"),
                &app.service_token(),
                &json!({"kind": "webpush", "subscription": {
                    "endpoint": "https://push.example/abc", "expirationTime": 1_u64 << 60,
                    "keys": {"p256dh": "key", "auth": "secret"}
                }}),
            )
            .await;
        invalid(res, "subscription.expirationTime").await;
        let token = app.token(Role::Guest, &guest, None);
        assert!(app.inbox(&token).await.is_empty());
        // The largest safe integer itself is fine.
        let mut e = points_for(&guest, 10);
        e["data"]["newBalance"] = json!(MAX_SAFE_INTEGER);
        assert_eq!(app.publish(&e).await.status(), 202);
        assert_eq!(app.inbox(&token).await.len(), 1);
        // A whole number spelled as a float is that integer (JSON has one
        // number type; JavaScript writes 5.0 for 5).
        let mut e = points_for(&guest, 10);
        e["data"]["amount"] = json!(250.0);
        assert_eq!(app.publish(&e).await.status(), 202);
        let newest = app.inbox(&token).await[0].clone();
        assert!(newest.to_string().contains("250"), "{newest}");
        assert!(!newest.to_string().contains("250.0"), "{newest}");
    }

    async fn instants_and_amounts_are_bounded_by_the_catalog(app) {
        for restore in [json!(i64::MIN), json!(-1), json!(MAX_INSTANT_MS + 1)] {
            let mut e = envelope(EventKind::RestaurantStatusChanged);
            e["data"]["estimatedRestore"] = restore.clone();
            invalid(app.publish(&e).await, "data.estimatedRestore").await;
        }
        let mut e = envelope(EventKind::SystemAlert);
        e["data"]["timestamp"] = json!(-1_764_000_000_000_i64);
        invalid(app.publish(&e).await, "data.timestamp").await;
        // A float passes the integer rule; the catalog bounds the amount.
        let mut e = envelope(EventKind::RestaurantTransaction);
        e["data"]["amount"] = json!(1e300);
        let p = invalid(app.publish(&e).await, "data.amount").await;
        assert!(p["detail"].as_str().unwrap().contains("at most"), "{p}");
        let mut e = envelope(EventKind::PointsAdded);
        e["data"]["amount"] = json!(-1);
        invalid(app.publish(&e).await, "data.amount").await;
        // The horizon itself is accepted.
        let mut e = envelope(EventKind::RestaurantStatusChanged);
        e["data"]["estimatedRestore"] = json!(MAX_INSTANT_MS);
        assert_eq!(app.publish(&e).await.status(), 202);
    }
}

/// Asserts a 503 `unavailable` with `Retry-After`.
async fn unavailable(res: reqwest::Response, what: &str) {
    let retry_after = res.headers().get("retry-after").cloned();
    let (status, p) = problem(res).await;
    assert_eq!(status, 503, "{what}: {p}");
    assert_eq!(p["code"], "unavailable", "{what}: {p}");
    assert!(
        p["detail"].as_str().unwrap().contains("database"),
        "{what}: {p}"
    );
    let retry_after = retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After"));
    assert!(retry_after.to_str().unwrap().parse::<u64>().unwrap() > 0);
}

/// What needs the database says it is gone: publishing, the inbox, the
/// unread count, settings.
async fn everything_says_the_database_is_unavailable(app: &TestApp) {
    let guest = user("while-down");
    let token = app.token(Role::Guest, &guest, None);
    unavailable(app.publish(&points_for(&guest, 10)).await, "publish").await;
    unavailable(
        app.publish(&envelope(EventKind::SystemAlert)).await,
        "publish to admins",
    )
    .await;
    unavailable(app.get("/v1/notifications", &token).await, "inbox").await;
    unavailable(
        app.get("/v1/notifications/unread-count", &token).await,
        "unread count",
    )
    .await;
    let res = app
        .request(Method::POST, "/v1/notifications/read-all", &token)
        .send()
        .await
        .unwrap();
    unavailable(res, "read all").await;
    unavailable(
        app.get(&format!("/v1/users/{guest}/preferences"), &token)
            .await,
        "preferences",
    )
    .await;
}

/// SQLite: the app's pools are closed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_503_with_retry_after_sqlite() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let guest = user("before");
    assert_eq!(app.publish(&points_for(&guest, 10)).await.status(), 202);
    app.store.close().await;
    everything_says_the_database_is_unavailable(&app).await;
}

/// PostgreSQL: the database stops accepting connections and the app's are
/// cut, as in a failover; once it is back, the same requests succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_503_with_retry_after_postgres() {
    let database_url = Arc::new(Mutex::new(String::new()));
    let seen = database_url.clone();
    let Some(app) = spawn_app_with(Backend::Postgres, move |s| {
        *seen.lock().unwrap() = s.database.url.expose().to_owned();
    })
    .await
    else {
        return;
    };
    let url = database_url.lock().unwrap().clone();
    let (base, name) = url.rsplit_once('/').unwrap();
    let admin = sqlx::PgPool::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    let guest = user("before");
    assert_eq!(app.publish(&points_for(&guest, 10)).await.status(), 202);

    // `name` is the test's own database, made by the testkit.
    let allow = |allow: bool| {
        sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}"
        ))
    };
    sqlx::query(allow(false)).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&admin)
        .await
        .unwrap();
    everything_says_the_database_is_unavailable(&app).await;

    sqlx::query(allow(true)).execute(&admin).await.unwrap();
    assert_eq!(app.publish(&points_for(&guest, 10)).await.status(), 202);
    let token = app.token(Role::Guest, &guest, None);
    assert_eq!(app.inbox(&token).await.len(), 2);
}
