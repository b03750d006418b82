use std::time::Instant;

use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::Row;

use crate::records::{DeliveryStatus, Ingested, NewDelivery, NewEvent, NewNotification};
use crate::testing::{Backend, TestDb};
use crate::{Error, Store};

/// Runs each `async fn name(db: TestDb)` on a fresh SQLite and a fresh
/// PostgreSQL database (skipped when PostgreSQL is unreachable).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(db) = TestDb::new(Backend::Sqlite, 8).await {
                    super::$name(db).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = TestDb::new(Backend::Postgres, 8).await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}

on_both_backends!(
    duplicate_ids_in_one_batch,
    a_batch_larger_than_a_statement_is_written_whole,
);

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

#[test]
fn parameters_are_numbered_on_postgres_and_positional_on_sqlite() {
    assert_eq!(
        super::values(Backend::Postgres, 2, 3),
        "($1, $2, $3), ($4, $5, $6)"
    );
    assert_eq!(super::values(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
    assert_eq!(super::params(Backend::Postgres, 2, 3), "$2, $3, $4");
}

/// An event for `recipient` whose payload hash is `hash`.
fn event_with_hash(key: &str, hash: &str, recipient: &str) -> NewEvent {
    let mut ev = points_added(EventId::from_key(key), 1, recipient);
    ev.hash = hash.to_owned();
    ev
}

/// `recipient`'s inbox as (seq, notification id), in seq order.
async fn inbox(store: &Store, recipient: &str) -> Vec<(i64, String)> {
    sqlx::query("SELECT seq, id FROM notifications WHERE recipient_id = $1 ORDER BY seq")
        .bind(recipient)
        .fetch_all(&store.read)
        .await
        .expect("inbox")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn count(store: &Store, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&store.read)
        .await
        .expect("count")
}

/// The notification ids of `events` for `recipient`, in batch order.
fn entries_for<'a>(events: impl IntoIterator<Item = &'a NewEvent>, recipient: &str) -> Vec<String> {
    events
        .into_iter()
        .flat_map(|ev| &ev.notifications)
        .filter(|n| n.recipient.as_str() == recipient)
        .map(|n| n.id.to_string())
        .collect()
}

/// Asserts that `recipient`'s inbox is exactly `expected` (notification
/// ids), numbered 1..=n in that order.
async fn assert_inbox(store: &Store, recipient: &str, expected: &[String]) {
    let got = inbox(store, recipient).await;
    let seqs: Vec<i64> = got.iter().map(|(seq, _)| *seq).collect();
    let want: Vec<i64> = (1..=expected.len() as i64).collect();
    assert_eq!(seqs, want, "{recipient}'s seq numbers");
    let ids: Vec<&String> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(
        ids,
        expected.iter().collect::<Vec<_>>(),
        "{recipient}'s entries in order"
    );
}

async fn duplicate_ids_in_one_batch(db: TestDb) {
    let store = &db.store;
    let a = event_with_hash("a", "h-a", "u1");
    let a_again = event_with_hash("a", "h-a", "u2");
    let b = event_with_hash("b", "h-b", "u1");
    let batch = vec![a.clone(), b.clone(), a_again];
    let outcomes = store.ingest(&batch).await.expect("ingest");
    assert!(matches!(&outcomes[0], Ingested::Accepted(r) if r.id == a.id));
    assert!(matches!(&outcomes[1], Ingested::Accepted(r) if r.id == b.id));
    // The later occurrence is a duplicate of the first, which it reports.
    assert_eq!(
        outcomes[2],
        Ingested::Duplicate(outcomes[0].record().clone())
    );
    assert_inbox(store, "u1", &entries_for([&a, &b], "u1")).await;
    assert!(inbox(store, "u2").await.is_empty());

    // A batch that repeats an id with another payload writes nothing; the
    // error names the later occurrence.
    let c = event_with_hash("c", "h-c", "u1");
    let c_changed = event_with_hash("c", "h-c2", "u1");
    let d = event_with_hash("d", "h-d", "u1");
    match store.ingest(&[d.clone(), c, c_changed.clone()]).await {
        Err(Error::IdempotencyConflict { index, event_id }) => {
            assert_eq!((index, event_id), (2, c_changed.id.to_string()));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // Known ids are duplicates (same hash) beside new ones, and numbering
    // goes on without a gap.
    let outcomes = store.ingest(&[b.clone(), d.clone()]).await.expect("ingest");
    assert!(matches!(&outcomes[0], Ingested::Duplicate(r) if r.id == b.id));
    assert!(matches!(&outcomes[1], Ingested::Accepted(r) if r.id == d.id));
    assert_inbox(store, "u1", &entries_for([&a, &b, &d], "u1")).await;
    assert_eq!(count(store, "events").await, 3);
    assert_eq!(count(store, "deliveries").await, 3);
}

async fn a_batch_larger_than_a_statement_is_written_whole(db: TestDb) {
    let store = &db.store;
    let users = ["u1", "u2", "u3", "u4", "u5", "u6", "u7"];
    let batch: Vec<NewEvent> = (0..5_000)
        .map(|i| points_added(EventId::new(), i, users[i as usize % users.len()]))
        .collect();
    let outcomes = store.ingest(&batch).await.expect("ingest");
    assert_eq!(outcomes.len(), batch.len());
    for (outcome, ev) in outcomes.iter().zip(&batch) {
        assert_eq!(outcome, &Ingested::Accepted(super::record(ev)));
    }
    assert_eq!(count(store, "events").await, 5_000);
    assert_eq!(count(store, "notifications").await, 5_000);
    assert_eq!(count(store, "deliveries").await, 5_000);
    for user in users {
        assert_inbox(store, user, &entries_for(&batch, user)).await;
    }
    // Sent again, all of it is duplicate and nothing more is written.
    let again = store.ingest(&batch).await.expect("ingest");
    assert!(again.iter().all(|o| matches!(o, Ingested::Duplicate(_))));
    assert_eq!(count(store, "notifications").await, 5_000);
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
