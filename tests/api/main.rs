//! Herald's integration tests: one binary, a real Herald per test on port
//! 0, each scenario on SQLite and on PostgreSQL.

mod actions;
mod audit;
mod auth;
mod balancer;
mod catalog;
mod clients;
mod cluster;
mod console;
mod cors;
mod delivery;
mod directory;
mod dispatch;
mod engineio;
mod guard;
mod hardening;
mod inbox;
mod ingest;
mod lifecycle;
mod observability;
mod readsync;
mod realtime;
mod redrive;
mod routing_api;
mod scheduled;
mod smart;
mod socketio;
mod transports;
mod unsubscribe;
mod users;
mod ws;

use herald_core::EventKind;
use serde_json::{Value, json};

pub use herald_testkit::{TestApp, backend_tests};

/// The example payload of `kind`, with a fresh idempotency key.
pub fn envelope(kind: EventKind) -> Value {
    json!({ "id": uuid::Uuid::new_v4().to_string(), "event": kind.as_str(), "data": kind.example() })
}

/// A user id (a UUID, as the catalog requires) named after `name`, so a
/// test can say `user("pager")` and mean the same user each time.
pub fn user(name: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// A `points_added` for `guest` (a UUID).
pub fn points_for(guest: &str, amount: i64) -> Value {
    let mut e = envelope(EventKind::PointsAdded);
    e["data"]["guestId"] = json!(guest);
    e["data"]["amount"] = json!(amount);
    e
}

/// An error answer's status and body, which must be a problem document
/// (`application/problem+json`).
pub async fn problem(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    assert_eq!(
        res.headers()["content-type"],
        "application/problem+json",
        "{status}"
    );
    (status, res.json().await.unwrap())
}

/// The delivery trace of `token`'s newest notification, as the API shows it.
pub async fn newest_deliveries(app: &TestApp, token: &str) -> Vec<Value> {
    let inbox = app.inbox(token).await;
    let id = inbox[0]["id"].as_str().unwrap();
    let trace: Value = app
        .get(&format!("/v1/notifications/{id}/deliveries"), token)
        .await
        .json()
        .await
        .unwrap();
    trace["items"].as_array().unwrap().clone()
}

/// Runs the ignored test `name` alone, in the test binary started again
/// for it, and fails if it fails: for a test that must have the process to
/// itself (its tracing callsites, its resident memory).
pub fn in_a_process_of_its_own(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This process's resident memory, in KiB (the app runs in the test
/// process).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
