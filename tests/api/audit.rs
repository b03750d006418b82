//! The admin audit log: what an admin or a service changes of someone
//! else's is recorded with its before and after, a user's own change is
//! not; filters and paging; an erase empties a user's audit values and an
//! export lists them.

use herald_core::Role;
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

/// `GET /v1/admin/audit?{query}` as an admin, which must answer 200.
pub async fn audit(app: &TestApp, query: &str) -> Value {
    let res = app
        .get(&format!("/v1/admin/audit?{query}"), &app.admin_token())
        .await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// The audit rows about `user`, newest first.
async fn rows_about(app: &TestApp, user: &str) -> Vec<Value> {
    audit(app, &format!("target={user}&limit=500")).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

async fn ok(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or_default();
    assert_eq!(got, status, "{body}");
    body
}

backend_tests! {
    async fn changes_to_someone_elses_data_are_audited_and_own_changes_are_not(app) {
        let guest = user("audited-guest");
        let me = app.token(Role::Guest, &guest, None);
        let admin = app.admin_token();
        let service = app.service_token();
        // The guest's own changes: nothing in the audit.
        ok(app.send_json(Method::PUT, &format!("/v1/users/{guest}/contact"), &me, &json!({"email": "anna@example.com"})).await, 200).await;
        ok(app.send_json(Method::PUT, &format!("/v1/users/{guest}/preferences"), &me, &json!({"channels": {"sms": false}})).await, 200).await;
        let own = ok(app.send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &me, &json!({"kind": "fcm", "token": "own-device-token-0123456789"})).await, 201).await;
        ok(app.request(Method::DELETE, &format!("/v1/users/{guest}/devices/{}", own["id"].as_str().unwrap()), &me).send().await.unwrap(), 204).await;
        assert!(rows_about(&app, &guest).await.is_empty());
        // An admin's own data is theirs too.
        ok(app.send_json(Method::PUT, "/v1/users/admin-1/preferences", &admin, &json!({"enabled": true})).await, 200).await;
        assert!(rows_about(&app, "admin-1").await.is_empty());

        // The platform changes the guest's contact; an admin their
        // preferences and devices.
        ok(app.send_json(Method::PUT, &format!("/v1/users/{guest}/contact"), &service, &json!({"email": "anya@example.com", "phone": "+79161234567"})).await, 200).await;
        ok(app.send_json(Method::PUT, &format!("/v1/users/{guest}/preferences"), &admin, &json!({"enabled": false, "locale": "en"})).await, 200).await;
        let device = ok(app.send_json(Method::POST, &format!("/v1/users/{guest}/devices"), &admin, &json!({"kind": "fcm", "token": "fcm-secret-token-0123456789"})).await, 201).await;
        ok(app.request(Method::DELETE, &format!("/v1/users/{guest}/devices/{}", device["id"].as_str().unwrap()), &service).send().await.unwrap(), 204).await;

        let rows = rows_about(&app, &guest).await;
        let summary: Vec<(&str, &str, &str)> = rows.iter().map(|r| (r["kind"].as_str().unwrap(), r["action"].as_str().unwrap(), r["actor"]["role"].as_str().unwrap())).collect();
        assert_eq!(summary, [("devices", "remove", "service"), ("devices", "add", "admin"), ("preferences", "update", "admin"), ("contact", "update", "service")]);
        for r in &rows {
            assert_eq!(r["target"], guest.as_str());
            assert!(r["at"].as_i64().unwrap() > 0);
            assert!(r["erasedAt"].is_null());
        }
        assert_eq!(rows[2]["actor"], json!({"subject": "admin-1", "role": "admin"}));
        assert_eq!(rows[3]["actor"], json!({"subject": "loyalty-platform", "role": "service"}));
        // Contact: the values an auditor needs, as they were.
        let contact = &rows[3];
        assert_eq!(contact["before"]["email"], "anna@example.com");
        assert_eq!(contact["after"]["email"], "anya@example.com");
        assert_eq!(contact["after"]["phone"], "+79161234567");
        // Preferences: as GET shows them, the locale included.
        let prefs = &rows[2];
        assert_eq!(prefs["before"]["enabled"], true);
        assert_eq!(prefs["before"]["channels"]["sms"], false);
        assert_eq!(prefs["after"]["enabled"], false);
        assert_eq!(prefs["after"]["locale"], "en");
        // Devices: the token masked, never whole.
        assert!(rows[1]["before"].is_null());
        assert_eq!(rows[1]["after"]["token"], "fcm-secr***");
        assert_eq!(rows[1]["after"]["id"], device["id"]);
        assert_eq!(rows[0]["before"]["token"], "fcm-secr***");
        assert!(rows[0]["after"].is_null());
        let everything = audit(&app, "limit=500").await.to_string();
        assert!(!everything.contains("secret-token"), "{everything}");
        // A refused change leaves no row.
        let res = app.send_json(Method::PUT, &format!("/v1/users/{guest}/contact"), &service, &json!({"timezone": "Mars/Olympus"})).await;
        assert_eq!(res.status(), 422);
        assert_eq!(rows_about(&app, &guest).await.len(), 4);
    }

    async fn the_audit_filters_pages_and_refuses_bad_filters(app) {
        let service = app.service_token();
        let admin = app.admin_token();
        let (a, b) = (user("audit-a"), user("audit-b"));
        for i in 0..3 {
            for u in [&a, &b] {
                ok(app.send_json(Method::PUT, &format!("/v1/users/{u}/contact"), &service, &json!({"email": format!("{i}@example.com")})).await, 200).await;
            }
        }
        ok(app.send_json(Method::PUT, &format!("/v1/users/{a}/preferences"), &admin, &json!({"enabled": false})).await, 200).await;
        let all = audit(&app, "limit=500").await["items"].as_array().unwrap().clone();
        assert_eq!(all.len(), 7);
        let times: Vec<i64> = all.iter().map(|r| r["at"].as_i64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first: {times:?}");

        // Three at a time: every row once, in the same order.
        let mut paged = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = audit(&app, &format!("limit=3&cursor={cursor}")).await;
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= 3);
            paged.extend(items.iter().map(|r| r["id"].clone()));
            match page["nextCursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => break,
            }
        }
        assert_eq!(paged, all.iter().map(|r| r["id"].clone()).collect::<Vec<_>>());

        let count = |v: Value| v["items"].as_array().unwrap().len();
        assert_eq!(count(audit(&app, "actor=loyalty-platform").await), 6);
        assert_eq!(count(audit(&app, "actor=admin-1").await), 1);
        assert_eq!(count(audit(&app, &format!("target={a}")).await), 4);
        assert_eq!(count(audit(&app, &format!("target={a}&kind=contact")).await), 3);
        assert_eq!(count(audit(&app, "kind=preferences").await), 1);
        assert_eq!(count(audit(&app, "kind=routing").await), 0);
        let newest = chrono::DateTime::from_timestamp_millis(times[0]).unwrap();
        let oldest = chrono::DateTime::from_timestamp_millis(*times.last().unwrap()).unwrap();
        let rfc = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).replace('+', "%2B");
        assert_eq!(count(audit(&app, &format!("from={}&to={}", rfc(oldest), rfc(newest))).await), 7);
        assert_eq!(count(audit(&app, &format!("to={}", rfc(oldest - chrono::Duration::milliseconds(1)))).await), 0);
        assert_eq!(count(audit(&app, &format!("from={}", rfc(newest + chrono::Duration::milliseconds(1)))).await), 0);

        for (query, field) in [
            ("kind=everything", "kind"),
            ("from=yesterday", "from"),
            ("to=2026-13-01T00:00:00Z", "to"),
            ("from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z", "to"),
            ("limit=0", "limit"),
            ("limit=501", "limit"),
            ("cursor=not-a-cursor", "cursor"),
            ("colour=red", "colour"),
        ] {
            let (status, body) = problem(app.get(&format!("/v1/admin/audit?{query}"), &admin).await).await;
            assert_eq!((status, body["field"].as_str()), (422, Some(field)), "{query}: {body}");
        }
        for token in [service, app.token(Role::Guest, &a, None)] {
            let (status, body) = problem(app.get("/v1/admin/audit", &token).await).await;
            assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
        }
        let (status, _) = problem(app.get("/v1/admin/audit", "").await).await;
        assert_eq!(status, 401);
    }

    async fn an_export_lists_the_audit_and_an_erase_empties_it(app) {
        let guest = user("audit-erased");
        let other = user("audit-kept");
        let service = app.service_token();
        for u in [&guest, &other] {
            ok(app.send_json(Method::PUT, &format!("/v1/users/{u}/contact"), &service, &json!({"email": "secret@example.com", "phone": "+79161234567"})).await, 200).await;
            ok(app.send_json(Method::PUT, &format!("/v1/users/{u}/preferences"), &app.admin_token(), &json!({"enabled": false})).await, 200).await;
        }
        // The guest's own export holds what was changed and by whom.
        let me = app.token(Role::Guest, &guest, None);
        let export = ok(app.get(&format!("/v1/users/{guest}/export"), &me).await, 200).await;
        let rows = export["audit"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["after"]["email"], "secret@example.com");
        assert_eq!(rows[0]["actor"]["subject"], "admin-1");

        let erased = ok(app.request(Method::DELETE, &format!("/v1/users/{guest}"), &app.admin_token()).send().await.unwrap(), 200).await;
        assert_eq!(erased["erased"]["audit"], 2);
        // The rows stay (who changed what, when), their values do not.
        let rows = rows_about(&app, &guest).await;
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r["before"].is_null() && r["after"].is_null(), "{r}");
            assert!(r["erasedAt"].as_i64().is_some());
            assert!(r["actor"]["subject"].is_string());
        }
        assert!(!serde_json::to_string(&rows).unwrap().contains("secret@"));
        // Another user's rows are untouched.
        let kept = rows_about(&app, &other).await;
        assert_eq!(kept[1]["after"]["email"], "secret@example.com");
        assert!(kept[1]["erasedAt"].is_null());
    }
}
