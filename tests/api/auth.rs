//! Contract §1: who may call, and with what token.

use base64::Engine as _;
use herald_core::Role;
use jsonwebtoken::{EncodingKey, Header, encode};
use reqwest::Method;
use serde_json::json;

use super::*;

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

backend_tests! {
    async fn bad_tokens_are_401(app) {
        let key = EncodingKey::from_secret(app.secret.as_bytes());
        let claims = |exp: u64| json!({"sub": "g1", "role": "guest", "exp": exp});
        let expired = encode(&Header::default(), &claims(now() - 3600), &key).unwrap();
        let wrong_key = encode(&Header::default(), &claims(now() + 3600), &EncodingKey::from_secret(b"another-secret-another-secret-!!")).unwrap();
        let no_exp = encode(&Header::default(), &json!({"sub": "g1", "role": "guest"}), &key).unwrap();
        let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims(now() + 3600)));
        let unknown_role = encode(&Header::default(), &json!({"sub": "g1", "role": "owner", "exp": now() + 60}), &key).unwrap();
        let staff_without_restaurant = encode(&Header::default(), &json!({"sub": "c1", "role": "cashier", "exp": now() + 60}), &key).unwrap();
        for (name, token) in [
            ("none", String::new()),
            ("garbage", "not.a.jwt".to_owned()),
            ("expired", expired),
            ("wrong key", wrong_key),
            ("no exp", no_exp),
            ("alg none", alg_none),
            ("unknown role", unknown_role),
            ("staff without restaurant", staff_without_restaurant),
        ] {
            let res = app.get("/v1/notifications", &token).await;
            assert_eq!(res.status(), 401, "{name}");
            assert_eq!(res.headers()["content-type"], "application/problem+json", "{name}");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["code"], "unauthorized", "{name}");
        }
    }

    async fn the_seeds_id_claim_is_accepted(app) {
        let key = EncodingKey::from_secret(app.secret.as_bytes());
        let legacy = user("g-legacy");
        let token = encode(&Header::default(), &json!({"id": legacy, "role": "guest", "exp": now() + 60}), &key).unwrap();
        // The `id` claim is the user: their inbox is the one the token reads.
        app.publish_ok(&points_for(&legacy, 10)).await;
        app.publish_ok(&points_for(&user("g-someone-else"), 20)).await;
        let res = app.get("/v1/notifications/unread-count", &token).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<serde_json::Value>().await.unwrap()["count"], 1);
        let inbox = app.inbox(&token).await;
        assert_eq!(inbox.len(), 1, "{inbox:?}");
        assert_eq!(inbox[0]["data"]["guestId"], legacy.as_str());
        assert_eq!(inbox[0]["data"]["amount"], 10);
        // And it may act as that user, and only that user.
        assert_eq!(app.get(&format!("/v1/users/{legacy}/preferences"), &token).await.status(), 200);
        assert_eq!(app.get(&format!("/v1/users/{}/preferences", user("g-someone-else")), &token).await.status(), 403);
    }

    async fn only_services_and_admins_publish(app) {
        for (role, restaurant, expected) in [
            (Role::Guest, None, 403),
            (Role::Cashier, Some("r1"), 403),
            (Role::Restaurant, Some("r1"), 403),
            (Role::Service, None, 202),
            (Role::Admin, None, 202),
        ] {
            let token = app.token(role, "someone", restaurant);
            let event = envelope(herald_core::EventKind::SystemAlert);
            let res = app.send_json(Method::POST, "/v1/events", &token, &event).await;
            if expected == 202 {
                assert_eq!(res.status(), 202, "{role:?}");
                let record: serde_json::Value = res.json().await.unwrap();
                assert_eq!(record["id"], event["id"], "{role:?}");
            } else {
                let (status, p) = problem(res).await;
                assert_eq!((status, p["code"].as_str()), (expected, Some("forbidden")), "{role:?}");
            }
        }
    }

    async fn guests_cannot_read_other_users_things(app) {
        let guest = app.token(Role::Guest, "g1", None);
        for path in ["/v1/users/g2/preferences", "/v1/users/g2/contact", "/v1/users/g2/devices"] {
            let (status, p) = problem(app.get(path, &guest).await).await;
            assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")), "{path}");
        }
        let res = app.send_json(Method::PUT, "/v1/users/g2/preferences", &guest, &json!({"enabled": false})).await;
        let (status, p) = problem(res).await;
        assert_eq!((status, p["code"].as_str()), (403, Some("forbidden")));
        // Unchanged.
        let prefs: serde_json::Value = app.get("/v1/users/g2/preferences", &app.admin_token()).await.json().await.unwrap();
        assert_eq!(prefs["enabled"], true);
        // Another user's notification is invisible: 404, not 403, so ids cannot be probed.
        let g2 = user("g2");
        app.publish_ok(&points_for(&g2, 10)).await;
        let g2 = app.token(Role::Guest, &g2, None);
        let theirs = app.inbox(&g2).await;
        let id = theirs[0]["id"].as_str().unwrap();
        for (method, path) in [
            (Method::GET, format!("/v1/notifications/{id}")),
            (Method::POST, format!("/v1/notifications/{id}/read")),
            (Method::DELETE, format!("/v1/notifications/{id}")),
            (Method::GET, format!("/v1/notifications/{id}/deliveries")),
        ] {
            let res = app.request(method.clone(), &path, &guest).send().await.unwrap();
            let (status, p) = problem(res).await;
            assert_eq!((status, p["code"].as_str()), (404, Some("not_found")), "{method} {path}");
        }
        // Nor did the attempts change it: still there, unread.
        let theirs = app.inbox(&g2).await;
        assert_eq!((theirs.len(), &theirs[0]["read"]), (1, &json!(false)));
        // The inbox endpoint only ever shows the caller's own entries.
        assert!(app.inbox(&guest).await.is_empty());
        // Admins may read anyone's preferences and delivery traces.
        let admin = app.admin_token();
        assert_eq!(app.get(&format!("/v1/users/{}/preferences", user("g2")), &admin).await.status(), 200);
        assert_eq!(app.get(&format!("/v1/notifications/{id}/deliveries"), &admin).await.status(), 200);
    }
}

/// RS256 and EdDSA verify with a configured public key; the algorithm is
/// pinned, so an HS256 token (even one signed with a configured secret) fails.
#[tokio::test]
async fn public_key_algorithms_are_pinned() {
    use herald_server::config::TokenAlgorithm;
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (algorithm, name) in [
        (TokenAlgorithm::EdDSA, "ed25519"),
        (TokenAlgorithm::RS256, "rsa"),
    ] {
        let app = herald_testkit::spawn_app_with(herald_testkit::Backend::Sqlite, |s| {
            s.auth.algorithm = algorithm;
            s.auth.public_key_file = fixtures.join(format!("{name}-public.pem"));
            s.auth.private_key_file = fixtures.join(format!("{name}-private.pem"));
        })
        .await
        .unwrap();
        let token = app.token(Role::Guest, "pk-user", None);
        assert_eq!(
            app.get("/v1/notifications", &token).await.status(),
            200,
            "{name}"
        );
        let hs256 = encode(
            &Header::default(),
            &json!({"sub": "pk-user", "role": "guest", "exp": now() + 60}),
            &EncodingKey::from_secret(app.secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            app.get("/v1/notifications", &hs256).await.status(),
            401,
            "{name}"
        );
    }
}

#[tokio::test]
async fn metrics_take_their_token_when_one_is_set() {
    let app = herald_testkit::spawn_app_with(herald_testkit::Backend::Sqlite, |s| {
        s.server.metrics_token = herald_server::config::Secret::new("scrape-me");
    })
    .await
    .expect("sqlite always runs");
    for token in ["", "scrape-you", &app.admin_token()] {
        let res = app.get("/metrics", token).await;
        assert_eq!(res.status(), 401, "{token:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    let res = app.get("/metrics", "scrape-me").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("herald_realtime_connections")
    );
}
