//! CORS for the REST API, from the realtime allowlist
//! (`realtime.allowed_origins`): a preflight from an allowed origin is
//! answered, a disallowed one gets no CORS header, `*` never comes with
//! credentials — and a page served on another origin reads its inbox in a
//! real Chromium, while a page on a disallowed origin cannot.

use std::process::Stdio;

use herald_core::Role;
use herald_testkit::{Backend, spawn_app_with};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::*;
use crate::realtime::{node_ready, publish_ok, tests_dir};

const APP_ORIGIN: &str = "http://app.example.test";

async fn app_allowing(origins: &[&str]) -> TestApp {
    let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
    spawn_app_with(Backend::Sqlite, move |s| {
        s.realtime.allowed_origins = origins
    })
    .await
    .expect("sqlite always runs")
}

async fn preflight(app: &TestApp, path: &str, origin: &str) -> reqwest::Response {
    app.client
        .request(Method::OPTIONS, format!("{}{path}", app.address))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

fn cors_headers(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn an_allowed_origins_preflight_is_answered_and_its_requests_readable() {
    let app = app_allowing(&[APP_ORIGIN]).await;
    for path in [
        "/v1/notifications",
        "/v1/notifications/read-all",
        "/v1/users/u/preferences",
    ] {
        let res = preflight(&app, path, APP_ORIGIN).await;
        assert_eq!(res.status(), 204, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin"),
            Some(APP_ORIGIN)
        );
        assert_eq!(
            header(&res, "access-control-allow-credentials"),
            Some("true")
        );
        let methods = header(&res, "access-control-allow-methods").unwrap();
        for m in ["GET", "POST", "PUT", "DELETE"] {
            assert!(methods.contains(m), "{methods}");
        }
        let headers = header(&res, "access-control-allow-headers").unwrap();
        for h in ["authorization", "content-type", "if-match", "x-request-id"] {
            assert!(headers.contains(h), "{headers}");
        }
        assert!(header(&res, "access-control-max-age").is_some());
        assert_eq!(header(&res, "vary"), Some("origin"));
    }

    let guest = user("cors-guest");
    let token = app.token(Role::Guest, &guest, None);
    let res = app
        .request(Method::GET, "/v1/notifications", &token)
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    assert_eq!(
        header(&res, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(
        header(&res, "access-control-expose-headers")
            .unwrap()
            .contains("retry-after")
    );
    assert_eq!(header(&res, "vary"), Some("origin"));
    // A refusal is readable too: the page sees the problem document.
    let res = app
        .client
        .get(format!("{}/v1/notifications", app.address))
        .header("origin", APP_ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    assert_eq!(problem(res).await.0, 401);
}

#[tokio::test]
async fn a_disallowed_origin_gets_no_cors_header() {
    let app = app_allowing(&[APP_ORIGIN]).await;
    for origin in [
        "http://evil.example.test",
        "http://app.example.test.evil.io",
        "https://app.example.test",
        "null",
    ] {
        let res = preflight(&app, "/v1/notifications", origin).await;
        assert_eq!(cors_headers(&res), Vec::<String>::new(), "{origin}");
        let (status, body) = problem(res).await;
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));

        let token = app.token(Role::Guest, &user("cors-evil"), None);
        let res = app
            .request(Method::GET, "/v1/notifications", &token)
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        // The server answers (CORS is not access control); the browser
        // keeps the answer from the page.
        assert_eq!(res.status(), 200);
        assert_eq!(cors_headers(&res), Vec::<String>::new(), "{origin}");
        assert_eq!(header(&res, "vary"), Some("origin"));
    }
    // Not a browser page: no Origin, nothing added but Vary.
    let res = app
        .client
        .get(format!("{}/v1/notifications", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(cors_headers(&res), Vec::<String>::new());
    // Outside /v1, nothing changes: the socket routes keep their own rules.
    let res = preflight(&app, "/healthz", APP_ORIGIN).await;
    assert_eq!(cors_headers(&res), Vec::<String>::new());
}

#[tokio::test]
async fn any_origin_never_comes_with_credentials_and_the_default_is_same_origin() {
    let app = app_allowing(&["*"]).await;
    let res = preflight(&app, "/v1/notifications", "http://anywhere.example.test").await;
    assert_eq!(res.status(), 204);
    assert_eq!(header(&res, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&res, "access-control-allow-credentials"), None);
    let res = app
        .client
        .get(format!("{}/v1/notifications/unread-count", app.address))
        .bearer_auth(app.token(Role::Guest, &user("cors-any"), None))
        .header("origin", "http://anywhere.example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&res, "access-control-allow-credentials"), None);

    // The default list is empty: the page Herald itself serves, only.
    let app = app_allowing(&[]).await;
    let res = preflight(&app, "/v1/notifications", &app.address).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        header(&res, "access-control-allow-origin"),
        Some(app.address.as_str())
    );
    let res = preflight(&app, "/v1/notifications", APP_ORIGIN).await;
    assert_eq!(res.status(), 403);
    assert_eq!(cors_headers(&res), Vec::<String>::new());
}

/// A static page on a port of its own: another origin than Herald's.
async fn static_page() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let page = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>the platform's frontend</title>")
        }),
    );
    tokio::spawn(async move { axum::serve(listener, page).await });
    origin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_an_allowed_origin_reads_its_inbox_in_chromium() {
    let chromium = std::path::PathBuf::from(
        std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if !chromium.exists() || !tests_dir().join("node_modules/playwright-core").exists() {
        herald_testkit::skip(
            "Chromium missing",
            "no browser, or playwright-core not installed",
        );
        return;
    }
    if !node_ready() {
        return;
    }
    let frontend = static_page().await;
    let elsewhere = static_page().await;
    let app = app_allowing(&[&frontend]).await;
    let guest = user("cors-browser");
    let token = app.token(Role::Guest, &guest, None);
    publish_ok(&app, &points_for(&guest, 31)).await;

    let args = json!({
        "api": format!("{}/v1/notifications", app.address),
        "token": token,
        "pages": [format!("{frontend}/"), format!("{elsewhere}/")],
    });
    let out = tokio::process::Command::new("node")
        .arg(tests_dir().join("browser/cors.mjs"))
        .arg(args.to_string())
        .env("HERALD_CHROMIUM", &chromium)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .expect("node runs");
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");

    let allowed = &lines[0];
    assert_eq!(allowed["origin"], frontend.as_str());
    assert_eq!(allowed["ok"], true, "{allowed}");
    assert_eq!(allowed["status"], 200);
    let items = allowed["body"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{allowed}");
    assert_eq!(items[0]["data"]["amount"], 31);

    let refused = &lines[1];
    assert_eq!(refused["origin"], elsewhere.as_str());
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("Failed to fetch"),
        "{refused}"
    );
}
