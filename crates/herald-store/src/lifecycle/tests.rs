use std::time::Duration;

use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};

use super::{PurgeStep, Retention};
use crate::records::{DeliveryStatus, NewDelivery, NewEvent, NewNotification};
use crate::testing::{TestDb, on_both_backends};

on_both_backends!(
    a_purge_keeps_open_deliveries_and_referenced_events,
    small_batches_purge_everything_in_the_end,
    an_erase_takes_one_user_and_leaves_the_others,
);

const T0: i64 = 1_764_000_000_000;
const DAY: i64 = 86_400_000;

/// An event at `T0`; for `recipient`, an inbox entry with one email
/// delivery in `status`.
fn event(recipient: Option<&str>, status: DeliveryStatus) -> NewEvent {
    let id = EventId::new();
    let payload = EventKind::PointsAdded.example().to_string();
    NewEvent {
        id,
        key: None,
        kind: EventKind::PointsAdded,
        hash: id.to_string(),
        payload,
        schedule: None,
        fill_email: None,
        received_at: T0,
        traceparent: None,
        notifications: recipient
            .map(|r| NewNotification {
                id: NotificationId::new(),
                recipient: UserId(r.to_owned()),
                title: "t".into(),
                body: "b".into(),
                in_inbox: true,
                deliveries: vec![NewDelivery {
                    id: DeliveryId::new(),
                    channel: ChannelKind::Email,
                    status,
                    reason: "routing_default".into(),
                    next_attempt_at: None,
                    digest_key: None,
                    seen_check: None,
                }],
            })
            .into_iter()
            .collect(),
    }
}

async fn count(db: &TestDb, table: &str) -> i64 {
    db.store
        .table_counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| *t == table)
        .unwrap()
        .1
}

async fn a_purge_keeps_open_deliveries_and_referenced_events(db: TestDb) {
    let store = &db.store;
    let read = event(Some("u"), DeliveryStatus::Suppressed);
    let open = event(Some("u"), DeliveryStatus::Pending);
    let unread = event(Some("u"), DeliveryStatus::Suppressed);
    let bare = event(None, DeliveryStatus::Pending);
    store
        .ingest(&[read.clone(), open.clone(), unread.clone(), bare.clone()])
        .await
        .unwrap();
    sqlx::query("UPDATE notifications SET read_at = $1 WHERE id = $2")
        .bind(T0 + DAY)
        .bind(read.notifications[0].id.to_string())
        .execute(&store.write)
        .await
        .unwrap();
    let retention = Retention {
        inbox_read: Some(10 * DAY),
        inbox_unread: Some(20 * DAY),
        events: Some(30 * DAY),
        deliveries: Some(5 * DAY),
        actions: Some(DAY),
        audit: None,
    };
    // Day 10: only the deliveries are old enough (and not the open one).
    let p = store
        .purge(&retention, T0 + 10 * DAY, 100, Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert_eq!((p.deliveries, p.inbox_read, p.events), (2, 0, 0), "{p:?}");
    assert_eq!(count(&db, "deliveries").await, 1);
    // Day 12: the entry read on day 1.
    let p = store
        .purge(&retention, T0 + 12 * DAY, 100, Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert_eq!((p.inbox_read, p.inbox_unread), (1, 0), "{p:?}");
    // Day 40: the unread entry; the one owed an open delivery stays, and so
    // does its event; the others' events and the bare one go.
    let p = store
        .purge(&retention, T0 + 40 * DAY, 100, Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert_eq!((p.inbox_unread, p.events), (1, 3), "{p:?}");
    assert_eq!(count(&db, "notifications").await, 1);
    assert_eq!(count(&db, "events").await, 1);
    assert_eq!(count(&db, "deliveries").await, 1);
    // The counter stays, so the next entry is numbered after the purged ones.
    assert_eq!(count(&db, "inbox_counters").await, 1);
    assert_eq!(store.unread_count(&UserId("u".into())).await.unwrap(), 1);
    store
        .ingest(&[event(Some("u"), DeliveryStatus::Pending)])
        .await
        .unwrap();
    let seqs: Vec<i64> = store
        .export_user(&UserId("u".into()))
        .await
        .unwrap()
        .unwrap()
        .notifications
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(seqs, [4, 2]);
}

async fn small_batches_purge_everything_in_the_end(db: TestDb) {
    let store = &db.store;
    let batch: Vec<NewEvent> = (0..7)
        .map(|_| event(Some("v"), DeliveryStatus::Suppressed))
        .collect();
    store.ingest(&batch).await.unwrap();
    let (first, more) = store
        .purge_batch(PurgeStep::InboxUnread, T0 + 1, 3)
        .await
        .unwrap();
    assert_eq!((first.inbox_unread, first.deliveries, more), (3, 3, true));
    let retention = Retention {
        inbox_unread: Some(1),
        events: Some(1),
        ..Retention::default()
    };
    let mut batches = 0;
    let p = store
        .purge(&retention, T0 + 2, 3, Duration::from_millis(1), |_| {
            batches += 1
        })
        .await
        .unwrap();
    assert_eq!((p.inbox_unread, p.events), (4, 7), "{p:?}");
    // 4 entries in batches of 3 (two), 7 events (three).
    assert_eq!(batches, 5);
    assert_eq!(count(&db, "notifications").await, 0);
    assert_eq!(count(&db, "deliveries").await, 0);
}

async fn an_erase_takes_one_user_and_leaves_the_others(db: TestDb) {
    let store = &db.store;
    let mut shared = event(Some("gone"), DeliveryStatus::Pending);
    let mut other = event(Some("stays"), DeliveryStatus::Pending).notifications;
    shared.notifications.append(&mut other);
    let own: Vec<NewEvent> = (0..5)
        .map(|_| event(Some("gone"), DeliveryStatus::Suppressed))
        .collect();
    store.ingest(&own).await.unwrap();
    store.ingest(&[shared]).await.unwrap();
    let gone = UserId("gone".into());
    let erasure = store
        .erase_user(&gone, 2, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    let e = erasure.erased;
    assert_eq!((e.notifications, e.deliveries, e.inbox_counter), (6, 6, 1));
    // The shared event stays: another user's entry refers to it.
    assert_eq!(e.events, 5);
    assert_eq!(erasure.deliveries.len(), 6);
    assert_eq!(count(&db, "notifications").await, 1);
    assert_eq!(count(&db, "events").await, 1);
    assert_eq!(
        store.unread_count(&UserId("stays".into())).await.unwrap(),
        1
    );
    assert!(
        store
            .erase_user(&gone, 2, Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.export_user(&gone).await.unwrap().is_none());
}
