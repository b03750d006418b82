use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::Row;

use super::{Cursor, DeliveryFilter};
use crate::Store;
use crate::records::{DeliveryStatus, NewDelivery, NewEvent, NewNotification};
use crate::testing::{TestDb, on_both_backends};

on_both_backends!(
    redrive_lists_filter_and_page_without_overlap,
    redrive_moves_failed_and_expired_once_and_traces_it,
);

/// One stored delivery, as a test arranges it.
#[derive(Debug, Clone, Copy)]
struct Arranged {
    id: DeliveryId,
    notification: NotificationId,
    event: EventId,
}

/// Writes an event of `kind` for `recipient` with one email delivery, then
/// puts the delivery in `status` with `error`, last changed at `updated_at`.
async fn delivery(
    store: &Store,
    kind: EventKind,
    recipient: &str,
    status: &str,
    error: Option<&str>,
    updated_at: i64,
) -> Arranged {
    let id = EventId::new();
    let mut payload = kind.example();
    payload["guestId"] = recipient.into();
    let payload = payload.to_string();
    let notification = NotificationId::new();
    let delivery = DeliveryId::new();
    store
        .ingest(&[NewEvent {
            id,
            key: Some(id.to_string()),
            kind,
            hash: id.to_string(),
            payload,
            schedule: None,
            fill_email: None,
            received_at: 1_764_000_000_000,
            traceparent: None,
            notifications: vec![NewNotification {
                id: notification,
                recipient: UserId(recipient.to_owned()),
                title: "t".into(),
                body: "b".into(),
                in_inbox: true,
                deliveries: vec![NewDelivery {
                    id: delivery,
                    channel: ChannelKind::Email,
                    status: DeliveryStatus::Pending,
                    reason: "routing_default".into(),
                    next_attempt_at: None,
                    digest_key: None,
                    seen_check: None,
                }],
            }],
        }])
        .await
        .expect("ingest");
    sqlx::query(
        "UPDATE deliveries SET status = $1, last_error = $2, updated_at = $3, attempts = 3, \
                next_attempt_at = NULL, enqueued_at = 5 WHERE id = $4",
    )
    .bind(status)
    .bind(error)
    .bind(updated_at)
    .bind(delivery.to_string())
    .execute(&store.write)
    .await
    .expect("arrange");
    Arranged {
        id: delivery,
        notification,
        event: id,
    }
}

fn failed_or_expired() -> DeliveryFilter {
    DeliveryFilter {
        statuses: vec!["failed".into(), "expired".into()],
        ..DeliveryFilter::default()
    }
}

async fn ids(store: &Store, filter: &DeliveryFilter) -> Vec<DeliveryId> {
    let (items, next) = store.list_deliveries(filter, None, 100).await.unwrap();
    assert_eq!(next, None);
    assert_eq!(
        store.count_deliveries(filter).await.unwrap(),
        items.len() as u64,
        "count agrees with the list for {filter:?}"
    );
    items.into_iter().map(|d| d.id).collect()
}

async fn redrive_lists_filter_and_page_without_overlap(db: TestDb) {
    let store = db.store.clone();
    let (a, b) = ("guest-a", "guest-b");
    let rejected = Some("SMTP 550: mailbox_unavailable (rejected)");
    let a1 = delivery(&store, EventKind::PointsAdded, a, "failed", rejected, 1_000).await;
    // Same time as a1: the id breaks the tie.
    let a2 = delivery(&store, EventKind::PointsAdded, a, "failed", rejected, 1_000).await;
    let a3 = delivery(&store, EventKind::PointsRedeemed, a, "expired", None, 2_000).await;
    let a4 = delivery(&store, EventKind::PointsAdded, a, "sent", None, 3_000).await;
    let b1 = delivery(
        &store,
        EventKind::PointsAdded,
        b,
        "failed",
        Some("timeout"),
        4_000,
    )
    .await;
    let b2 = delivery(
        &store,
        EventKind::PointsAdded,
        b,
        "failed",
        Some("100%_off"),
        5_000,
    )
    .await;
    sqlx::query("UPDATE deliveries SET provider = 'sendgrid' WHERE id = $1")
        .bind(b1.id.to_string())
        .execute(&store.write)
        .await
        .unwrap();

    // Newest first; equal times by id, descending.
    let all = ids(&store, &failed_or_expired()).await;
    let (first, second) = if a1.id > a2.id { (a1, a2) } else { (a2, a1) };
    assert_eq!(all, vec![b2.id, b1.id, a3.id, first.id, second.id]);

    // Pages of two: the same rows in the same order, none twice.
    let mut paged = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        let (items, next) = store
            .list_deliveries(&failed_or_expired(), cursor.as_ref(), 2)
            .await
            .unwrap();
        pages += 1;
        paged.extend(items.iter().map(|d| d.id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!((pages, paged), (3, all.clone()));

    let with = |f: fn(&mut DeliveryFilter)| {
        let mut filter = failed_or_expired();
        f(&mut filter);
        filter
    };
    let store = &store;
    assert_eq!(
        ids(store, &with(|f| f.recipient = Some("guest-b".into()))).await,
        vec![b2.id, b1.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.provider = Some("sendgrid".into()))).await,
        vec![b1.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.error = Some("REJECTED".into()))).await,
        vec![first.id, second.id]
    );
    // `%` and `_` are literal.
    assert_eq!(
        ids(store, &with(|f| f.error = Some("0%_".into()))).await,
        vec![b2.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.error = Some("%".into()))).await,
        vec![b2.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.event = Some("points_redeemed".into()))).await,
        vec![a3.id]
    );
    let mut by_event = failed_or_expired();
    by_event.event_id = Some(b1.event.to_string());
    assert_eq!(ids(store, &by_event).await, vec![b1.id]);
    assert_eq!(
        ids(
            store,
            &with(|f| {
                f.from = Some(2_000);
                f.to = Some(4_000);
            })
        )
        .await,
        vec![b1.id, a3.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.statuses = vec!["expired".into()])).await,
        vec![a3.id]
    );
    assert_eq!(
        ids(store, &with(|f| f.channel = Some("sms".into()))).await,
        Vec::<DeliveryId>::new()
    );
    assert_eq!(
        ids(store, &with(|f| f.reason = Some("routing_default".into()))).await,
        all
    );
    // No status: every state.
    assert_eq!(
        ids(store, &DeliveryFilter::default()).await.len(),
        6,
        "{a4:?} included"
    );
    assert_eq!(
        store
            .matching_deliveries(&failed_or_expired(), 2)
            .await
            .unwrap(),
        vec![b2.id, b1.id]
    );
    let one = store.admin_delivery(b1.id).await.unwrap().unwrap();
    assert_eq!(
        (
            one.notification_id,
            one.event.as_str(),
            one.recipient.as_str()
        ),
        (b1.notification, "points_added", "guest-b")
    );
}

async fn redrive_moves_failed_and_expired_once_and_traces_it(db: TestDb) {
    let store = db.store.clone();
    let failed = delivery(
        &store,
        EventKind::PointsAdded,
        "g",
        "failed",
        Some("bad address"),
        10,
    )
    .await;
    let expired = delivery(&store, EventKind::PointsAdded, "g", "expired", None, 10).await;
    let sent = delivery(&store, EventKind::PointsAdded, "g", "sent", None, 10).await;
    let retrying = delivery(
        &store,
        EventKind::PointsAdded,
        "g",
        "retrying",
        Some("503"),
        10,
    )
    .await;
    let unknown = DeliveryId::new();
    let now = 1_800_000_000_000;

    let report = store
        .redrive(
            &[
                failed.id,
                expired.id,
                sent.id,
                retrying.id,
                unknown,
                failed.id,
            ],
            "admin:ops",
            now,
        )
        .await
        .unwrap();
    assert_eq!(report.requeued, vec![failed.id, expired.id]);
    assert_eq!(report.already_queued, vec![retrying.id]);
    assert_eq!(report.not_retryable.len(), 1);
    assert_eq!(
        (
            report.not_retryable[0].id,
            report.not_retryable[0].status.as_str()
        ),
        (sent.id, "sent")
    );
    assert_eq!(report.unknown, vec![unknown]);

    let row = sqlx::query(
        "SELECT status, attempts, next_attempt_at, enqueued_at, redriven_at, updated_at \
         FROM deliveries WHERE id = $1",
    )
    .bind(failed.id.to_string())
    .fetch_one(&store.read)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("status"), "pending");
    assert_eq!(row.get::<i64, _>("attempts"), 0);
    assert_eq!(row.get::<Option<i64>, _>("next_attempt_at"), Some(now));
    assert_eq!(row.get::<Option<i64>, _>("enqueued_at"), None);
    assert_eq!(row.get::<Option<i64>, _>("redriven_at"), Some(now));
    assert_eq!(row.get::<i64, _>("updated_at"), now);

    let trace = |n: NotificationId| {
        let store = store.clone();
        async move { store.deliveries(n).await.unwrap().remove(0).trace }
    };
    let steps = trace(failed.notification).await;
    assert_eq!(steps.len(), 1);
    assert_eq!(
        (
            steps[0].step.as_str(),
            steps[0].outcome.as_deref(),
            steps[0].detail.as_deref(),
            steps[0].actor.as_deref(),
            steps[0].at,
            steps[0].attempt
        ),
        (
            "redrive",
            Some("pending"),
            Some("was failed: bad address"),
            Some("admin:ops"),
            now,
            0
        )
    );
    assert_eq!(
        trace(expired.notification).await[0].detail.as_deref(),
        Some("was expired")
    );
    assert!(trace(sent.notification).await.is_empty());

    // Again: both are open now, nothing moves, nothing is traced twice.
    let again = store
        .redrive(&[failed.id, expired.id], "cli", now + 1)
        .await
        .unwrap();
    assert!(again.requeued.is_empty());
    assert_eq!(again.already_queued, vec![failed.id, expired.id]);
    assert_eq!(trace(failed.notification).await.len(), 1);
}
