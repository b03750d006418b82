//! Claims and finishes on both databases, and the store's readers of
//! computed columns.

use std::collections::BTreeSet;

use herald_core::preferences::Contact;
use herald_core::{
    ChannelKind, DeliveryId, EventId, EventKind, Locale, NotificationId, Role, UserId,
};

use super::{Finish, Finished, TraceStep};
use crate::Store;
use crate::actions::{ActionRecord, ActionStatus};
use crate::directory::NewDevice;
use crate::records::{
    ContactRecord, DeliveryStatus, DeviceKind, NewDelivery, NewEvent, NewNotification,
};
use crate::testing::{TestDb, on_both_backends};

on_both_backends!(
    only_the_current_attempt_of_a_delivery_finishes,
    computed_columns_are_read_by_name,
    a_claim_carries_the_traceparent_of_its_publish,
);

const AT: i64 = 1_764_000_000_000;

/// Ingests an event for `recipient` with one pending email delivery.
async fn pending(store: &Store, recipient: &str) -> (NotificationId, DeliveryId) {
    pending_traced(store, recipient, None).await
}

/// As [`pending`], the event published under `traceparent`.
async fn pending_traced(
    store: &Store,
    recipient: &str,
    traceparent: Option<&str>,
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
            schedule: None,
            fill_email: None,
            received_at: AT,
            traceparent: traceparent.map(str::to_owned),
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
    (notification, delivery)
}

fn finished(id: DeliveryId, attempt: i64, finish: Finish, outcome: &str) -> Finished {
    Finished {
        id,
        attempt,
        finish,
        trace: vec![TraceStep {
            step: "attempt".into(),
            provider: Some("smtp".into()),
            outcome: Some(outcome.into()),
            detail: None,
        }],
        at: AT + 5_000,
    }
}

fn sent() -> Finish {
    Finish::Sent {
        provider: Some("smtp".into()),
        provider_message_id: None,
    }
}

async fn a_claim_carries_the_traceparent_of_its_publish(db: TestDb) {
    let store = db.store.clone();
    let traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (_, with) = pending_traced(&store, "guest-traced", Some(traced)).await;
    let (_, without) = pending(&store, "guest-untraced").await;
    let mut claimed = store
        .claim_deliveries(&[with, without], AT, 60_000)
        .await
        .unwrap();
    claimed.sort_by_key(|c| c.id != with);
    assert_eq!(claimed[0].id, with);
    assert_eq!(claimed[0].traceparent.as_deref(), Some(traced));
    assert_eq!(claimed[1].traceparent, None);
}

async fn only_the_current_attempt_of_a_delivery_finishes(db: TestDb) {
    let store = db.store.clone();
    // Attempt 1's lease runs out, attempt 2 claims the delivery, and both
    // finish in one write: only attempt 2 counts, with its trace alone.
    let (notification, delivery) = pending(&store, "guest-late").await;
    let first = store
        .claim_deliveries(&[delivery], AT, 1_000)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].attempt, 1);
    assert_eq!(store.release_expired_leases(AT + 2_000).await.unwrap(), 1);
    let second = store
        .claim_deliveries(&[delivery], AT + 2_000, 1_000)
        .await
        .unwrap();
    assert_eq!(second[0].attempt, 2);
    let failed = Finish::Failed {
        error: "SMTP 550".into(),
        provider: Some("smtp".into()),
    };
    let applied = store
        .finish_deliveries(vec![
            finished(delivery, 1, sent(), "sent"),
            finished(delivery, 2, failed, "failed"),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [false, true]);
    let record = &store.deliveries(notification).await.unwrap()[0];
    assert_eq!(record.status, "failed");
    let attempts: Vec<i64> = record.trace.iter().map(|t| t.attempt).collect();
    assert_eq!(attempts, [2], "the late finish left no trace");

    // The same finish twice in one write applies once.
    let (notification, delivery) = pending(&store, "guest-twice").await;
    let claimed = store
        .claim_deliveries(&[delivery], AT, 1_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let applied = store
        .finish_deliveries(vec![
            finished(delivery, 1, sent(), "sent"),
            finished(delivery, 1, sent(), "sent"),
        ])
        .await
        .unwrap();
    assert_eq!(applied, [true, false]);
    let record = &store.deliveries(notification).await.unwrap()[0];
    assert_eq!(record.status, "sent");
    assert_eq!(record.trace.len(), 1);
}

async fn computed_columns_are_read_by_name(db: TestDb) {
    let store = db.store.clone();
    let guest = UserId("guest-1".into());
    pending(&store, guest.as_str()).await;
    assert_eq!(store.unread_count(&guest).await.unwrap(), 1);
    assert_eq!(
        store.delivery_backlog().await.unwrap(),
        [("pending".to_owned(), 1)]
    );

    // A user with a contact, and one known only by a device.
    let contact = ContactRecord {
        contact: Contact {
            email: Some("guest@example.com".into()),
            phone: None,
            locale: Some(Locale::En),
            timezone: Some("Europe/Moscow".into()),
        },
        role: Some(Role::Guest),
        restaurant_id: None,
    };
    store.put_contact(&guest, &contact).await.unwrap();
    assert_eq!(store.contact(&guest).await.unwrap(), Some(contact.clone()));
    let device_only = UserId("guest-2".into());
    let (device, created) = store
        .add_device(
            &device_only,
            &NewDevice {
                kind: DeviceKind::Fcm,
                token: "token-2".into(),
                subscription: None,
            },
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(store.devices(&device_only).await.unwrap(), [device]);
    let users = BTreeSet::from([guest.clone(), device_only.clone(), UserId("nobody".into())]);
    let profiles = store.profiles(&users).await.unwrap();
    assert_eq!(profiles.len(), 2, "{profiles:?}");
    assert_eq!(profiles[&guest].contact, contact.contact);
    assert!(!profiles[&guest].has_device);
    assert!(profiles[&device_only].has_device);
    assert_eq!(profiles[&device_only].contact, Contact::default());

    assert_eq!(store.next_action_due().await.unwrap(), None);
    let action = ActionRecord {
        user_id: guest.as_str().into(),
        action_id: "a-1".into(),
        role: "guest".into(),
        restaurant_id: None,
        action: "accept".into(),
        amount: "10".into(),
        status: ActionStatus::Pending,
        attempts: 0,
        created_at: 0,
        last_error: None,
        response: None,
    };
    store.record_action(&action, true).await.unwrap();
    assert!(store.next_action_due().await.unwrap().is_some());
    let stored = store
        .action("guest-1", "a-1")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (stored.status, stored.amount),
        (ActionStatus::Pending, "10".into())
    );
}
