use std::time::Instant;

use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::Row;

use tokio::sync::oneshot;

use super::writer::{self, Queue, Request};
use crate::records::{DeliveryStatus, Ingested, NewDelivery, NewEvent, NewNotification};
use crate::testing::{Backend, TestDb, on_both_backends};
use crate::{Error, Store};

on_both_backends!(
    duplicate_ids_in_one_batch,
    a_batch_larger_than_a_statement_is_written_whole,
    batches_of_any_size_fill_their_statements_shape,
    a_conflict_in_a_merged_group_fails_only_its_request,
    requests_merged_into_one_group_see_each_other,
    a_request_whose_caller_left_is_still_written,
    concurrent_single_event_ingests_number_without_gaps,
    lanes_stop_when_their_queue_closes,
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
        schedule: None,
        fill_email: None,
        received_at: 1_764_000_000_000,
        traceparent: None,
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
                digest_key: None,
                seen_check: None,
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
        .map(|row| (row.get("seq"), row.get("id")))
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
    // The numbers a known id took on the way in went back: a batch of
    // known ids alone, then a new event, still leaves no gap.
    let outcomes = store.ingest(&[d.clone(), a.clone()]).await.expect("ingest");
    assert!(outcomes.iter().all(|o| matches!(o, Ingested::Duplicate(_))));
    let e = event_with_hash("e", "h-e", "u1");
    store
        .ingest(std::slice::from_ref(&e))
        .await
        .expect("ingest");
    assert_inbox(store, "u1", &entries_for([&a, &b, &d, &e], "u1")).await;
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

/// A request for `batch`, and where its answer arrives.
fn request(batch: Vec<NewEvent>) -> (Request, oneshot::Receiver<crate::Result<Vec<Ingested>>>) {
    let (reply, answer) = oneshot::channel();
    (Request { batch, reply }, answer)
}

async fn batches_of_any_size_fill_their_statements_shape(db: TestDb) {
    let store = &db.store;
    let mut sent = Vec::new();
    for size in (1..=17).chain([1_023, 1_025]) {
        let batch: Vec<NewEvent> = (0..size)
            .map(|i| points_added(EventId::new(), i, ["u1", "u2", "u3"][i as usize % 3]))
            .collect();
        let outcomes = store.ingest(&batch).await.expect("ingest");
        assert!(outcomes.iter().all(|o| matches!(o, Ingested::Accepted(_))));
        // Sent again: every id is looked up, none is written twice.
        let again = store.ingest(&batch).await.expect("ingest");
        assert!(again.iter().all(|o| matches!(o, Ingested::Duplicate(_))));
        sent.extend(batch);
    }
    for user in ["u1", "u2", "u3"] {
        assert_inbox(store, user, &entries_for(&sent, user)).await;
    }
    assert_eq!(count(store, "deliveries").await, sent.len() as i64);
}

async fn a_conflict_in_a_merged_group_fails_only_its_request(db: TestDb) {
    let store = &db.store;
    let x = event_with_hash("x", "h-x", "u1");
    store
        .ingest(std::slice::from_ref(&x))
        .await
        .expect("ingest");

    let (e1, e2, e3, e4) = (
        event_with_hash("e1", "h-e1", "u1"),
        event_with_hash("e2", "h-e2", "u2"),
        event_with_hash("e3", "h-e3", "u1"),
        event_with_hash("e4", "h-e4", "u1"),
    );
    let x_changed = event_with_hash("x", "h-x2", "u1");
    let x_again = event_with_hash("x", "h-x", "u2");
    let (r1, a1) = request(vec![e1.clone(), e2.clone()]);
    let (r2, a2) = request(vec![e3.clone(), x_changed]);
    let (r3, a3) = request(vec![e4.clone(), x_again]);
    writer::write_group(&store.write, &store.directory, vec![r1, r2, r3], ()).await;

    let a1 = a1
        .await
        .expect("answered")
        .expect("the first request is written");
    assert_eq!(
        a1,
        vec![
            Ingested::Accepted(super::record(&e1)),
            Ingested::Accepted(super::record(&e2))
        ]
    );
    // The conflict names its place in its own request.
    match a2.await.expect("answered") {
        Err(Error::IdempotencyConflict { index, event_id }) => {
            assert_eq!((index, event_id), (1, x.id.to_string()));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let a3 = a3
        .await
        .expect("answered")
        .expect("the third request is written");
    assert_eq!(
        a3,
        vec![
            Ingested::Accepted(super::record(&e4)),
            Ingested::Duplicate(super::record(&x))
        ]
    );
    // Numbering has no gap where the failed request would have been.
    assert_inbox(store, "u1", &entries_for([&x, &e1, &e4], "u1")).await;
    assert_inbox(store, "u2", &entries_for([&e2], "u2")).await;
    assert_eq!(count(store, "events").await, 4);
    assert_eq!(count(store, "deliveries").await, 4);
}

async fn requests_merged_into_one_group_see_each_other(db: TestDb) {
    let store = &db.store;
    let y = event_with_hash("y", "h-y", "u3");
    let z = event_with_hash("z", "h-z", "u3");
    let y_again = event_with_hash("y", "h-y", "u4");
    let (ra, aa) = request(vec![y.clone()]);
    let (rb, ab) = request(vec![z.clone(), y_again]);
    writer::write_group(&store.write, &store.directory, vec![ra, rb], ()).await;
    assert_eq!(
        aa.await.expect("answered").expect("written"),
        vec![Ingested::Accepted(super::record(&y))]
    );
    assert_eq!(
        ab.await.expect("answered").expect("written"),
        vec![
            Ingested::Accepted(super::record(&z)),
            Ingested::Duplicate(super::record(&y))
        ]
    );
    assert_inbox(store, "u3", &entries_for([&y, &z], "u3")).await;
    assert!(inbox(store, "u4").await.is_empty());
}

async fn a_request_whose_caller_left_is_still_written(db: TestDb) {
    let store = &db.store;
    let gone = event_with_hash("gone", "h-gone", "u5");
    let stays = event_with_hash("stays", "h-stays", "u5");
    let (r1, a1) = request(vec![gone.clone()]);
    let (r2, a2) = request(vec![stays.clone()]);
    drop(a1);
    writer::write_group(&store.write, &store.directory, vec![r1, r2], ()).await;
    assert_eq!(
        a2.await.expect("answered").expect("written"),
        vec![Ingested::Accepted(super::record(&stays))]
    );
    assert_inbox(store, "u5", &entries_for([&gone, &stays], "u5")).await;
}

async fn concurrent_single_event_ingests_number_without_gaps(db: TestDb) {
    const EVENTS: usize = 300;
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = Vec::new();
    for i in 0..EVENTS {
        // Most for one user; some for others, so groups bump several
        // counters.
        let user = if i % 3 == 0 {
            format!("other-{}", i % 7)
        } else {
            "fan".to_owned()
        };
        let ev = points_added(EventId::new(), i as i64, &user);
        sent.push(ev.clone());
        let store = db.store.clone();
        tasks.spawn(async move { store.ingest(&[ev]).await });
    }
    while let Some(done) = tasks.join_next().await {
        let outcomes = done.expect("task").expect("ingest");
        assert!(matches!(outcomes[..], [Ingested::Accepted(_)]));
    }
    let mut users: Vec<String> = sent
        .iter()
        .map(|ev| ev.notifications[0].recipient.0.clone())
        .collect();
    users.sort();
    users.dedup();
    for user in users {
        let got = inbox(&db.store, &user).await;
        let seqs: Vec<i64> = got.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=got.len() as i64).collect::<Vec<_>>(), "{user}");
        let mut ids: Vec<String> = got.into_iter().map(|(_, id)| id).collect();
        let mut want = entries_for(&sent, &user);
        ids.sort();
        want.sort();
        assert_eq!(ids, want, "{user}'s entries");
    }
    assert_eq!(count(&db.store, "notifications").await, EVENTS as i64);
}

async fn lanes_stop_when_their_queue_closes(db: TestDb) {
    let (queue, lanes) = writer::spawn(&db.store.write, 3, &db.store.directory);
    let ev = event_with_hash("last", "h-last", "u6");
    let (r, answer) = request(vec![ev.clone()]);
    queue.send(r).await.expect("queued");
    drop(queue);
    // What was queued is still written, then every lane ends.
    assert_eq!(
        answer.await.expect("answered").expect("written"),
        vec![Ingested::Accepted(super::record(&ev))]
    );
    for lane in lanes {
        tokio::time::timeout(std::time::Duration::from_secs(10), lane)
            .await
            .expect("the lane ends")
            .expect("the lane does not panic");
    }
}

#[tokio::test]
async fn groups_take_what_waits_up_to_the_bound() {
    let (queue, shared) = Queue::new();
    let mut shared = shared.lock().await;
    let mut answers = Vec::new();
    for (i, size) in [3, 2, 4, 1, 9].into_iter().enumerate() {
        let batch = (0..size)
            .map(|k| points_added(EventId::new(), k, &format!("u{i}")))
            .collect();
        let (r, a) = request(batch);
        queue.send(r).await.expect("queued");
        answers.push(a);
    }
    drop(queue);
    let mut sizes = Vec::new();
    while let Some(group) = writer::next_group(&mut shared, 6).await {
        sizes.push(group.iter().map(|r| r.batch.len()).collect::<Vec<_>>());
    }
    // In queue order; a request that does not fit starts the next group; one
    // larger than the bound goes alone.
    assert_eq!(sizes, vec![vec![3, 2], vec![4, 1], vec![9]]);
}

/// Events/s of ingest from 8 (or `HERALD_BENCH_PRODUCERS`) concurrent
/// producers sending batches of 1 and of 100 (or `HERALD_BENCH_BATCHES`,
/// e.g. `1,10`): `HERALD_BENCH_EVENTS`
/// (default 50,000) `points_added` events, one
/// recipient each among 2,000 users, one email delivery each. A measurement,
/// not a check: run it with
/// `cargo test -p herald-store --release -- --ignored --nocapture --test-threads 1 ingest_throughput`.
async fn ingest_throughput(backend: Backend) {
    const USERS: usize = 2_000;
    let producers_n: usize = std::env::var("HERALD_BENCH_PRODUCERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let total: usize = std::env::var("HERALD_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let batches: Vec<usize> = std::env::var("HERALD_BENCH_BATCHES")
        .ok()
        .map(|v| v.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100]);
    for batch in batches {
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
        for p in 0..producers_n {
            let store = db.store.clone();
            let mine: Vec<NewEvent> = events
                .iter()
                .skip(p)
                .step_by(producers_n)
                .cloned()
                .collect();
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
            "ingest {backend:?}, batch {batch}, {producers_n} producers: {total} events in {secs:.2} s = {:.0} events/s",
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
