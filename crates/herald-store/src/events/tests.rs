use std::time::Instant;

use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};

use crate::records::{DeliveryStatus, NewDelivery, NewEvent, NewNotification};
use crate::testing::{Backend, TestDb};

/// A `points_added` event for `recipient`, with its inbox entry and one
/// pending email delivery, as the publisher would make it.
fn points_added(id: EventId, amount: i64, recipient: &str) -> NewEvent {
    let mut payload = EventKind::PointsAdded.example();
    payload["amount"] = amount.into();
    payload["guestId"] = recipient.into();
    let payload = payload.to_string();
    NewEvent {
        id,
        key: Some(id.to_string()),
        kind: EventKind::PointsAdded,
        hash: format!("{:x}-{}", payload.len(), amount),
        payload,
        received_at: 1_764_000_000_000,
        notifications: vec![NewNotification {
            id: NotificationId::new(),
            recipient: UserId(recipient.to_owned()),
            title: "Начислено баллов".into(),
            body: format!("+{amount} баллов в «Пельменная №1»"),
            in_inbox: true,
            deliveries: vec![NewDelivery {
                id: DeliveryId::new(),
                channel: ChannelKind::Email,
                status: DeliveryStatus::Pending,
                reason: "routing_default".into(),
                next_attempt_at: None,
            }],
        }],
    }
}

/// Events/s of ingest from 8 concurrent producers sending batches of 1 and
/// of 100: `HERALD_BENCH_EVENTS` (default 50,000) `points_added` events, one
/// recipient each among 2,000 users, one email delivery each. A measurement,
/// not a check: run it with
/// `cargo test -p herald-store --release -- --ignored --nocapture --test-threads 1 ingest_throughput`.
async fn ingest_throughput(backend: Backend) {
    const PRODUCERS: usize = 8;
    const USERS: usize = 2_000;
    let total: usize = std::env::var("HERALD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    for batch in [1, 100] {
        let Some(db) = TestDb::new(backend, 16).await else {
            return;
        };
        let events: Vec<NewEvent> = (0..total)
            .map(|i| {
                points_added(
                    EventId::new(),
                    i as i64,
                    &format!("guest-{}", i * 7919 % USERS),
                )
            })
            .collect();
        let start = Instant::now();
        let mut producers = tokio::task::JoinSet::new();
        for p in 0..PRODUCERS {
            let store = db.store.clone();
            let mine: Vec<NewEvent> = events.iter().skip(p).step_by(PRODUCERS).cloned().collect();
            producers.spawn(async move {
                for chunk in mine.chunks(batch) {
                    store.ingest(chunk).await.expect("ingest");
                }
            });
        }
        while let Some(done) = producers.join_next().await {
            done.expect("producer");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "ingest {backend:?}, batch {batch}, {PRODUCERS} producers: {total} events in {secs:.2} s = {:.0} events/s",
            total as f64 / secs
        );
        let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries")
            .fetch_one(&db.store.read)
            .await
            .expect("count");
        assert_eq!(written, total as i64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn ingest_throughput_sqlite() {
    ingest_throughput(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement"]
async fn ingest_throughput_postgres() {
    ingest_throughput(Backend::Postgres).await;
}
