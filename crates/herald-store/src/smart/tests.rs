//! Digest folds, throttle counts and seen checks on both databases.

use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, UserId};

use super::Fold;
use crate::Store;
use crate::deliveries::{Finish, Finished};
use crate::records::{DeliveryStatus, NewDelivery, NewEvent, NewNotification};
use crate::testing::{TestDb, on_both_backends};

on_both_backends!(
    a_digest_is_folded_once_by_one_carrier,
    throttles_count_sends_and_earlier_claims,
    seen_checks_read_the_inbox,
);

const AT: i64 = 1_764_000_000_000;
const END: i64 = AT + 3_600_000;

/// Ingests a points event for `recipient` with one push delivery deferred
/// to `END` for digest `key` (or pending without one).
async fn push(
    store: &Store,
    recipient: &str,
    title: &str,
    key: Option<&str>,
) -> (NotificationId, DeliveryId) {
    let id = EventId::new();
    let mut payload = EventKind::PointsAdded.example();
    payload["guestId"] = recipient.into();
    let (notification, delivery) = (NotificationId::new(), DeliveryId::new());
    store
        .ingest(&[NewEvent {
            id,
            key: None,
            kind: EventKind::PointsAdded,
            hash: id.to_string(),
            payload: payload.to_string(),
            received_at: AT,
            traceparent: None,
            schedule: None,
            fill_email: None,
            notifications: vec![NewNotification {
                id: notification,
                recipient: UserId(recipient.to_owned()),
                title: title.into(),
                body: "b".into(),
                in_inbox: true,
                deliveries: vec![NewDelivery {
                    id: delivery,
                    channel: ChannelKind::Push,
                    status: if key.is_some() {
                        DeliveryStatus::Deferred
                    } else {
                        DeliveryStatus::Pending
                    },
                    reason: "routing_default".into(),
                    next_attempt_at: key.map(|_| END),
                    digest_key: key.map(str::to_owned),
                    seen_check: None,
                }],
            }],
        }])
        .await
        .expect("ingest");
    (notification, delivery)
}

async fn a_digest_is_folded_once_by_one_carrier(db: TestDb) {
    let store = db.store.clone();
    let mut rows = Vec::new();
    for n in 0..4 {
        rows.push(push(&store, "sleeper", &format!("+{n}"), Some("quiet")).await);
    }
    // Another recipient's and another key's rows stay out of it.
    let (_, stranger) = push(&store, "stranger", "x", Some("quiet")).await;
    let (_, other_key) = push(&store, "sleeper", "y", Some("points")).await;
    let ids: Vec<DeliveryId> = rows.iter().map(|r| r.1).collect();
    assert!(
        store
            .claim_deliveries(&ids, AT, 60_000)
            .await
            .unwrap()
            .is_empty(),
        "not due yet"
    );

    // Two workers claim two rows each at the window's end.
    let a = store
        .claim_deliveries(&ids[..2], END, 60_000)
        .await
        .unwrap();
    let b = store
        .claim_deliveries(&ids[2..], END, 60_000)
        .await
        .unwrap();
    assert_eq!((a.len(), b.len()), (2, 2));
    let carrier = *ids.iter().min_by_key(|id| id.to_string()).unwrap();
    let follower = *ids.iter().find(|id| **id != carrier).unwrap();
    assert_eq!(
        store.fold_digest(follower, 1, END).await.unwrap(),
        Fold::Follower { carrier }
    );
    let Fold::Carrier { items, folded } = store.fold_digest(carrier, 1, END).await.unwrap() else {
        panic!("the earliest row carries the digest");
    };
    assert_eq!(folded.len(), 3);
    let titles: Vec<&str> = items.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(titles, ["+0", "+1", "+2", "+3"]);
    // The folded rows' own workers find nothing to do.
    assert_eq!(
        store.fold_digest(follower, 1, END).await.unwrap(),
        Fold::Lost
    );
    let finish = Finished {
        id: follower,
        attempt: 1,
        finish: Finish::Release { at: END },
        trace: Vec::new(),
        at: END,
    };
    assert_eq!(
        store.finish_deliveries(vec![finish]).await.unwrap(),
        [false]
    );
    let record = &store.deliveries(rows[1].0).await.unwrap()[0];
    let record = if record.id == carrier {
        store.deliveries(rows[0].0).await.unwrap()[0].clone()
    } else {
        record.clone()
    };
    assert_eq!(record.status, "digested");
    assert_eq!(record.digest_id, Some(carrier));
    assert_eq!(record.trace[0].outcome.as_deref(), Some("digested"));

    // The carrier's worker dies; its next attempt carries the same items
    // and folds nothing more.
    assert_eq!(
        store.release_expired_leases(END + 120_000).await.unwrap(),
        1
    );
    let again = store
        .claim_deliveries(&[carrier], END + 120_000, 60_000)
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 2);
    let Fold::Carrier { items, folded } =
        store.fold_digest(carrier, 2, END + 120_000).await.unwrap()
    else {
        panic!("still the carrier");
    };
    assert_eq!((items.len(), folded.len()), (4, 0));
    for id in [stranger, other_key] {
        let claimed = store.claim_deliveries(&[id], END, 60_000).await.unwrap();
        let Fold::Carrier { items, .. } = store.fold_digest(id, 1, END).await.unwrap() else {
            panic!("alone in its digest");
        };
        assert_eq!(
            (claimed.len(), items.len()),
            (1, 0),
            "a digest of one is the message"
        );
    }
}

async fn throttles_count_sends_and_earlier_claims(db: TestDb) {
    let store = db.store.clone();
    let guest = UserId("burst".into());
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(push(&store, "burst", &n.to_string(), None).await.1);
    }
    let claimed = store.claim_deliveries(&ids, AT, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 4);
    let mut counts = Vec::new();
    for id in &ids {
        counts.push(
            store
                .throttle_count(*id, &guest, "points", "push", AT - 3_600_000)
                .await
                .unwrap()
                .0,
        );
    }
    counts.sort_unstable();
    assert_eq!(counts, [0, 1, 2, 3], "each counts the claims ahead of it");
    let sent = Finished {
        id: ids[0],
        attempt: 1,
        finish: Finish::Sent {
            provider: None,
            provider_message_id: None,
        },
        trace: Vec::new(),
        at: AT + 10,
    };
    store.finish_deliveries(vec![sent]).await.unwrap();
    let (n, oldest) = store
        .throttle_count(ids[1], &guest, "points", "push", AT - 3_600_000)
        .await
        .unwrap();
    assert!(n >= 1);
    assert_eq!(oldest, Some(AT + 10));
    // Outside the window, or another category, nothing counts.
    let (n, _) = store
        .throttle_count(ids[1], &guest, "card", "push", AT - 3_600_000)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

async fn seen_checks_read_the_inbox(db: TestDb) {
    let store = db.store.clone();
    let (notification, _) = push(&store, "reader", "t", None).await;
    let user = UserId("reader".into());
    assert!(!store.event_seen(notification, false).await.unwrap());
    let event = store
        .notification(&user, notification)
        .await
        .unwrap()
        .unwrap()
        .event_id;
    assert_eq!(
        store
            .mark_seen(&user, &event.to_string(), AT)
            .await
            .unwrap(),
        Some(notification)
    );
    assert!(store.event_seen(notification, false).await.unwrap());
    assert!(store.event_seen(notification, true).await.unwrap());
    assert_eq!(
        store
            .mark_seen(&UserId("nobody".into()), &event.to_string(), AT)
            .await
            .unwrap(),
        None
    );
}
