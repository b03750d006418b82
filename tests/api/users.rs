//! Preferences, contact details and devices, and how preferences narrow
//! what each event owes.

use herald_core::{EventKind, Role};
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

async fn channels_of(app: &TestApp, token: &str) -> Vec<(String, String, String)> {
    newest_deliveries(app, token)
        .await
        .iter()
        .map(|d| {
            let field = |k: &str| d[k].as_str().unwrap().to_owned();
            (field("channel"), field("status"), field("reason"))
        })
        .collect()
}

fn redeemed(guest: &str) -> Value {
    let mut e = envelope(EventKind::PointsRedeemed);
    e["data"]["guestId"] = json!(guest);
    e
}

fn triple(c: &str, s: &str, r: &str) -> (String, String, String) {
    (c.to_owned(), s.to_owned(), r.to_owned())
}

/// Puts `user`'s preferences, which must be taken as given.
async fn put_preferences(app: &TestApp, user: &str, token: &str, prefs: &Value) {
    let res = app
        .send_json(
            Method::PUT,
            &format!("/v1/users/{user}/preferences"),
            token,
            prefs,
        )
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(status, 200, "{prefs}: {body}");
    for (key, value) in prefs.as_object().unwrap() {
        assert_eq!(&body[key], value, "{key}");
    }
}

backend_tests! {
    async fn preferences_narrow_deliveries(app) {
        let guest = &user("pref-guest");
        let token = app.token(Role::Guest, guest, None);
        // The guest registers an address and a phone for push.
        let res = app.send_json(Method::PUT, &format!("/v1/users/{guest}/contact"), &token, &json!({"email": "g@example.com", "timezone": "Europe/Moscow"})).await;
        assert_eq!(res.status(), 200);
        let res = app.send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &token, &json!({"kind": "fcm", "token": "fcm-token-1"})).await;
        assert_eq!(res.status(), 201);

        app.publish_ok(&redeemed(guest)).await;
        assert_eq!(channels_of(&app, &token).await, vec![triple("email", "pending", "routing_default"), triple("push", "pending", "routing_default")]);

        // Email off for the points category, SMS on for this event.
        let prefs = json!({"overrides": {"points": {"email": false}, "points_redeemed": {"sms": true}}});
        put_preferences(&app, guest, &token, &prefs).await;
        app.publish_ok(&redeemed(guest)).await;
        assert_eq!(
            channels_of(&app, &token).await,
            vec![
                triple("email", "suppressed", "category_override"),
                triple("push", "pending", "routing_default"),
                triple("sms", "suppressed", "no_contact"),
            ]
        );

        // Push off as a channel beats everything but mandatory.
        let prefs = json!({"channels": {"push": false}, "overrides": {"points_redeemed": {"push": true}}});
        put_preferences(&app, guest, &token, &prefs).await;
        app.publish_ok(&redeemed(guest)).await;
        assert_eq!(channels_of(&app, &token).await, vec![triple("email", "pending", "routing_default"), triple("push", "suppressed", "channel_off")]);

        // Everything off, inbox included: nothing shows.
        let before = app.inbox(&token).await.len();
        put_preferences(&app, guest, &token, &json!({"enabled": false})).await;
        app.publish_ok(&redeemed(guest)).await;
        assert_eq!(app.inbox(&token).await.len(), before, "in_app is off too");

        // Quiet hours around now, in the guest's own zone (Moscow, UTC+3 all
        // year, from the contact details), defer push and only push.
        let moscow = chrono::Utc::now() + chrono::Duration::hours(3);
        let clock = |t: chrono::DateTime<chrono::Utc>| t.format("%H:%M").to_string();
        let prefs = json!({"quietHours": {
            "start": clock(moscow - chrono::Duration::hours(1)),
            "end": clock(moscow + chrono::Duration::hours(1)),
        }});
        put_preferences(&app, guest, &token, &prefs).await;
        app.publish_ok(&redeemed(guest)).await;
        assert_eq!(channels_of(&app, &token).await, vec![triple("email", "pending", "routing_default"), triple("push", "deferred", "routing_default")]);
    }

    async fn preferences_round_trip_and_are_validated(app) {
        let token = app.token(Role::Guest, "p2", None);
        let got: Value = app.get("/v1/users/p2/preferences", &token).await.json().await.unwrap();
        assert_eq!(got, json!({"enabled": true, "channels": {}, "overrides": {}, "quietHours": null, "locale": null}));
        let prefs = json!({
            "enabled": true,
            "channels": {"sms": false},
            "overrides": {"points_added": {"push": false}},
            "quietHours": {"start": "22:30", "end": "07:00", "timezone": "Asia/Yekaterinburg"},
            "locale": "en"
        });
        let put: Value = app.send_json(Method::PUT, "/v1/users/p2/preferences", &token, &prefs).await.json().await.unwrap();
        assert_eq!(put, prefs);
        let got: Value = app.get("/v1/users/p2/preferences", &token).await.json().await.unwrap();
        assert_eq!(got, prefs);
        // The locale lives with the contact details.
        let contact: Value = app.get("/v1/users/p2/contact", &token).await.json().await.unwrap();
        assert_eq!(contact["locale"], "en");

        for (body, field) in [
            (json!({"channels": {"fax": true}}), "channels"),
            (json!({"channels": {"realtime": false}}), "channels.realtime"),
            (json!({"overrides": {"pointz": {"push": false}}}), "overrides.pointz"),
            (json!({"quietHours": {"start": "25:00", "end": "07:00"}}), "quietHours.start"),
            (json!({"quietHours": {"start": "22:00", "end": "07:00", "timezone": "Moon/Base"}}), "quietHours.timezone"),
            (json!({"locale": "de"}), "locale"),
            (json!({"enabled": "yes"}), "enabled"),
            (json!({"volume": 11}), "volume"),
        ] {
            let res = app.send_json(Method::PUT, "/v1/users/p2/preferences", &token, &body).await;
            assert_eq!(res.status(), 422, "{body}");
            let p: Value = res.json().await.unwrap();
            assert_eq!(p["field"].as_str().unwrap_or(""), field, "{body}: {p}");
        }
        // An admin may change them; the user sees the change.
        let admin = app.admin_token();
        let res = app.send_json(Method::PUT, "/v1/users/p2/preferences", &admin, &json!({"enabled": false})).await;
        assert_eq!(res.status(), 200);
        let got: Value = app.get("/v1/users/p2/preferences", &token).await.json().await.unwrap();
        assert_eq!(got["enabled"], false);
    }

    async fn contact_and_devices(app) {
        let token = app.token(Role::Guest, "c1", None);
        for (body, field) in [
            (json!({"email": "not-an-email"}), "email"),
            (json!({"phone": "8 916 123 45 67"}), "phone"),
            (json!({"timezone": "Europe/Atlantis"}), "timezone"),
            (json!({"locale": "fr"}), "locale"),
        ] {
            let res = app.send_json(Method::PUT, "/v1/users/c1/contact", &token, &body).await;
            assert_eq!(res.status(), 422, "{body}");
            assert_eq!(res.json::<Value>().await.unwrap()["field"], field);
        }
        // A guest cannot make themselves an admin.
        let res = app.send_json(Method::PUT, "/v1/users/c1/contact", &token, &json!({"role": "admin"})).await;
        assert_eq!(res.status(), 403);
        let res = app.send_json(Method::PUT, "/v1/users/c1/contact", &token, &json!({"email": "c1@example.com", "phone": "+79161234567", "locale": "ru"})).await;
        let contact: Value = res.json().await.unwrap();
        assert_eq!(contact, json!({"email": "c1@example.com", "phone": "+79161234567", "locale": "ru", "role": "guest"}));

        let sub = json!({"kind": "webpush", "subscription": {"endpoint": "https://push.example.com/abc", "expirationTime": null, "keys": {"p256dh": "BEl6...", "auth": "k8J..."}}});
        let res = app.send_json(Method::POST, "/v1/users/c1/devices", &token, &sub).await;
        assert_eq!(res.status(), 201);
        let device: Value = res.json().await.unwrap();
        // Registering the same subscription again is not a second device.
        let res = app.send_json(Method::POST, "/v1/users/c1/devices", &token, &sub).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.json::<Value>().await.unwrap()["id"], device["id"]);
        // The platform registers the guest's phone app.
        let res = app.send_json(Method::POST, "/v1/users/c1/devices", &app.service_token(), &json!({"kind": "fcm", "token": "fcm-abc"})).await;
        assert_eq!(res.status(), 201);
        for (body, field) in [
            (json!({"kind": "fcm"}), "token"),
            (json!({"kind": "webpush", "subscription": {"endpoint": "http://insecure", "keys": {"p256dh": "a", "auth": "b"}}}), "subscription.endpoint"),
            (json!({"kind": "apns", "token": "x"}), "kind"),
        ] {
            let res = app.send_json(Method::POST, "/v1/users/c1/devices", &token, &body).await;
            assert_eq!(res.status(), 422, "{body}");
            assert_eq!(res.json::<Value>().await.unwrap()["field"], field, "{body}");
        }
        let list: Value = app.get("/v1/users/c1/devices", &token).await.json().await.unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
        let id = device["id"].as_str().unwrap();
        assert_eq!(app.request(Method::DELETE, &format!("/v1/users/c1/devices/{id}"), &token).send().await.unwrap().status(), 204);
        assert_eq!(app.request(Method::DELETE, &format!("/v1/users/c1/devices/{id}"), &token).send().await.unwrap().status(), 404);
        let list: Value = app.get("/v1/users/c1/devices", &token).await.json().await.unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
    }

    async fn health_and_readiness(app) {
        assert_eq!(app.get("/healthz", "").await.status(), 200);
        let res = app.get("/readyz", "").await;
        assert_eq!(res.status(), 200);
        let ready: Value = res.json().await.unwrap();
        assert_eq!(ready["checks"]["database"], "ok");
    }
}
