//! Read state follows the user: marking read, marking all read and deleting
//! over REST reach every socket of that user (`user:{id}`) — on `/ws`, on
//! the official `socket.io-client`, on another node through Redis — and no
//! one else's; and a socket that was away gets them on resume.

use herald_core::Role;
use herald_testkit::{Backend, spawn_app_with};
use serde_json::{Value, json};

use super::realtime::*;
use super::*;

/// Publishes `n` events for `guest` and returns their inbox ids, newest first.
async fn inbox_of(app: &TestApp, guest: &str, token: &str, n: i64) -> Vec<String> {
    let batch: Vec<Value> = (0..n).map(|i| points_for(guest, i + 1)).collect();
    publish_ok(app, &Value::Array(batch)).await;
    app.inbox(token)
        .await
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn post(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.request(reqwest::Method::POST, path, token)
        .send()
        .await
        .unwrap()
}

/// The next frame on `ws` that is not a catalog event (those arrive for
/// the publishes that set the test up).
async fn next_own(ws: &mut Ws) -> Value {
    loop {
        let frame = ws.recv().await;
        if frame["event"] != "points_added" {
            return frame;
        }
    }
}

backend_tests! {
    async fn reading_on_rest_reaches_every_socket_of_the_user_and_no_one_else(app) {
        let guest = user("readsync-guest");
        let other = user("readsync-other");
        let token = app.token(Role::Guest, &guest, None);
        let (mut tab1, _) = Ws::connect(&app, &token).await;
        let (mut tab2, _) = Ws::connect(&app, &token).await;
        let (mut stranger, _) = Ws::connect(&app, &app.token(Role::Guest, &other, None)).await;
        let ids = inbox_of(&app, &guest, &token, 3).await;

        assert_eq!(post(&app, &format!("/v1/notifications/{}/read", ids[0]), &token).await.status(), 200);
        for tab in [&mut tab1, &mut tab2] {
            let frame = next_own(tab).await;
            assert_eq!(frame["event"], "notifications_read", "{frame}");
            assert_eq!(frame["data"]["ids"], json!([ids[0]]));
            assert_eq!(frame["data"]["all"], false);
            assert_eq!(frame["data"]["unreadCount"], 2);
            assert!(frame["offset"].as_u64().unwrap() > 0, "{frame}");
        }

        let res = app.request(reqwest::Method::DELETE, &format!("/v1/notifications/{}", ids[1]), &token).send().await.unwrap();
        assert_eq!(res.status(), 204);
        for tab in [&mut tab1, &mut tab2] {
            let frame = next_own(tab).await;
            assert_eq!(frame["event"], "notification_deleted", "{frame}");
            assert_eq!(frame["data"], json!({"id": ids[1], "unreadCount": 1, "eventId": frame["data"]["eventId"]}));
        }

        assert_eq!(post(&app, "/v1/notifications/read-all", &token).await.status(), 200);
        for tab in [&mut tab1, &mut tab2] {
            let frame = next_own(tab).await;
            assert_eq!(frame["event"], "notifications_read", "{frame}");
            assert_eq!(frame["data"]["all"], true);
            assert_eq!(frame["data"]["unreadCount"], 0);
        }
        // Nothing left unread: a second read-all changes nothing and says nothing.
        assert_eq!(post(&app, "/v1/notifications/read-all", &token).await.status(), 200);

        // The stranger heard none of it: the next thing it sees is its own event.
        publish_ok(&app, &points_for(&other, 77)).await;
        let frame = stranger.recv().await;
        assert_eq!(frame["event"], "points_added", "{frame}");
        assert_eq!(frame["data"]["amount"], 77);
        // The read state is the inbox's: announcements never land in it.
        let inbox = app.inbox(&token).await;
        assert_eq!(inbox.len(), 2);
        assert!(inbox.iter().all(|n| n["event"] == "points_added" && n["read"] == true));
    }
}

#[tokio::test]
async fn socket_io_clients_of_one_user_hear_reads_and_a_returning_one_resumes_them() {
    if !node_ready() {
        return;
    }
    let app = herald_testkit::spawn_app(Backend::Sqlite).await.unwrap();
    let guest = user("readsync-sio");
    let token = app.token(Role::Guest, &guest, None);
    let (mut first, _) = Sio::connect(&app, &token).await;
    let (mut second, connected) = Sio::connect(&app, &token).await;
    let (mut stranger, _) = Sio::connect(
        &app,
        &app.token(Role::Guest, &user("readsync-sio-other"), None),
    )
    .await;
    let ids = inbox_of(&app, &guest, &token, 2).await;
    for client in [&mut first, &mut second] {
        client.event("points_added").await;
        client.event("points_added").await;
    }
    // The second tab goes away; the first reads.
    second.command(json!({"cmd": "disconnect"})).await;
    assert_eq!(second.recv().await["type"], "disconnect");
    assert_eq!(
        post(&app, &format!("/v1/notifications/{}/read", ids[1]), &token)
            .await
            .status(),
        200
    );
    let read = first.event("notifications_read").await;
    assert_eq!(read[0]["ids"], json!([ids[1]]));
    assert_eq!(read[0]["unreadCount"], 1);
    let offset = read[1]["offset"].as_u64().unwrap();

    // Back, resuming from where it was: the read is replayed, then `resumed`.
    second
        .command(json!({"cmd": "connect", "auth": {"resume": {
            "offset": connected["offset"], "epoch": connected["epoch"]
        }}}))
        .await;
    assert_eq!(second.recv().await["type"], "connect");
    second.event("connected").await;
    let mut replayed = Vec::new();
    loop {
        let next = second.recv().await;
        if next["event"] == "resumed" {
            assert_eq!(next["args"][0]["recovered"], true, "{next}");
            break;
        }
        replayed.push(next);
    }
    let reads: Vec<&Value> = replayed
        .iter()
        .filter(|e| e["event"] == "notifications_read")
        .collect();
    assert_eq!(reads.len(), 1, "{replayed:?}");
    assert_eq!(reads[0]["args"][1]["offset"], offset);

    // The stranger's next event is its own.
    publish_ok(&app, &points_for(&user("readsync-sio-other"), 5)).await;
    assert_eq!(stranger.event("points_added").await[0]["amount"], 5);
    for client in [first, second, stranger] {
        client.exit().await;
    }
}

#[tokio::test]
async fn a_read_on_one_node_reaches_the_users_socket_on_another() {
    let Some(redis) = redis_url().await else {
        return;
    };
    let prefix = format!("herald-test-{}", uuid::Uuid::new_v4().simple());
    let node = |peer: Option<std::path::PathBuf>| {
        let (redis, prefix) = (redis.clone(), prefix.clone());
        spawn_app_with(Backend::Sqlite, move |s| {
            s.auth.secret = herald_server::config::Secret::new(format!("{prefix}-shared-secret"));
            s.realtime.redis_url = redis;
            s.realtime.redis_prefix = prefix;
            if let Some(db) = peer {
                s.database.url =
                    herald_server::config::Secret::new(format!("sqlite://{}", db.display()));
            }
        })
    };
    let a = node(None).await.unwrap();
    let b = node(Some(a.data_dir.join("herald.db"))).await.unwrap();
    let guest = user("readsync-cluster");
    let token = a.token(Role::Guest, &guest, None);
    let (mut on_b, _) = Ws::connect(&b, &token).await;
    let ids = inbox_of(&a, &guest, &token, 1).await;
    assert_eq!(
        post(&a, &format!("/v1/notifications/{}/read", ids[0]), &token)
            .await
            .status(),
        200
    );
    let frame = next_own(&mut on_b).await;
    assert_eq!(frame["event"], "notifications_read", "{frame}");
    assert_eq!(frame["data"]["ids"], json!([ids[0]]));
    assert_eq!(frame["data"]["unreadCount"], 0);
    clear_redis(&redis, &prefix).await;
}
