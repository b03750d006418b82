//! The `/demo` page in a real browser: headless Chromium (the system's,
//! driven by playwright-core from npm) opens the page with a guest's token,
//! and an event published over REST shows up live, then in the inbox.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use herald_core::Role;
use herald_testkit::{Backend, spawn_app};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;
use crate::realtime::{node_ready, tests_dir};

fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(
        std::env::var("HERALD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let driver = tests_dir().join("node_modules/playwright-core/package.json");
    if path.exists() && driver.exists() {
        return Some(path);
    }
    let why = format!(
        "no browser at {} or playwright-core not installed",
        path.display()
    );
    herald_testkit::skip("Chromium missing", &why);
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_shows_events_and_the_inbox_live() {
    let Some(browser) = chromium() else { return };
    if !node_ready() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    let guest = user("browser-guest");
    let token = app.token(Role::Guest, &guest, None);
    let mut child = tokio::process::Command::new("node")
        .arg(tests_dir().join("browser/demo.mjs"))
        .arg(format!("{}/demo?token={token}", app.address))
        .arg("points_added")
        .env("HERALD_CHROMIUM", browser)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the browser answers in time")
            .unwrap()
            .expect("the browser script ended early");
        let step: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(step["step"], "pageerror", "{step}");
        step
    };

    let connected = next().await;
    assert_eq!(connected["step"], "connected");
    assert!(
        connected["status"].as_str().unwrap().contains(&guest),
        "{connected}"
    );

    assert_eq!(app.publish(&points_for(&guest, 42)).await.status(), 202);
    let event = next().await;
    assert_eq!(event["step"], "event");
    let text = event["text"].as_str().unwrap();
    assert!(
        text.contains("points_added") && text.contains("\"amount\":42"),
        "{text}"
    );

    let inbox = next().await;
    assert_eq!(inbox["step"], "inbox");
    assert!(
        inbox["text"].as_str().unwrap().contains("+42 балла"),
        "{inbox}"
    );
    assert_eq!(inbox["unread"], "1");
    assert!(child.wait().await.unwrap().success());
}
