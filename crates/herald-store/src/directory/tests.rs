//! The directory cache kept true by the store's writes: on this node at
//! once, on another node (a second store on the same PostgreSQL database)
//! once it hears the change.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_core::routing::{Profile, Selector};
use herald_core::{EventId, EventKind, Preferences, Role, UserId};
use herald_testkit_core::eventually;

use crate::directory::NewDevice;
use crate::records::{ContactRecord, DeviceKind, EmailFill, NewEvent};
use crate::testing::{Backend, TestDb, on_both_backends};
use crate::{Options, Store};

on_both_backends!(
    every_write_keeps_this_nodes_cache_true,
    a_filled_in_address_is_written_with_the_event,
);

fn user(id: &str) -> UserId {
    UserId(id.to_owned())
}

async fn profile(store: &Store, id: &str) -> Option<Profile> {
    let users = BTreeSet::from([user(id)]);
    store
        .cached_profiles(&users)
        .await
        .unwrap()
        .remove(&user(id))
}

async fn admins(store: &Store) -> Vec<UserId> {
    let admins = Selector::Role(Role::Admin);
    store
        .cached_members([&admins])
        .await
        .unwrap()
        .remove(&admins)
        .unwrap_or_default()
}

fn record(email: &str, role: Role) -> ContactRecord {
    let mut record = ContactRecord::default();
    record.contact.email = Some(email.to_owned());
    record.role = Some(role);
    record
}

async fn every_write_keeps_this_nodes_cache_true(db: TestDb) {
    let store = &db.store;
    assert!(store.directory_cache().is_armed());
    let ann = user("ann");
    // Unknown, and remembered as such.
    assert_eq!(profile(store, "ann").await, None);
    assert_eq!(admins(store).await, Vec::<UserId>::new());
    let hits = |s: &Store| {
        s.directory_cache()
            .stats
            .hits
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = hits(store);
    assert_eq!(profile(store, "ann").await, None);
    assert!(hits(store) > before, "the second look-up is a hit");

    // Contact: the profile and the groups.
    store
        .put_contact(&ann, &record("ann@example.com", Role::Admin))
        .await
        .unwrap();
    let p = profile(store, "ann").await.expect("ann is known now");
    assert_eq!(p.contact.email.as_deref(), Some("ann@example.com"));
    assert_eq!(admins(store).await, vec![ann.clone()]);
    store
        .put_contact(&ann, &record("ann@example.com", Role::Guest))
        .await
        .unwrap();
    assert_eq!(admins(store).await, Vec::<UserId>::new());

    // Preferences.
    let prefs = Preferences {
        enabled: false,
        ..Preferences::default()
    };
    store.put_preferences(&ann, &prefs).await.unwrap();
    assert!(!profile(store, "ann").await.unwrap().preferences.enabled);

    // An unsubscribe link.
    let changed = store
        .opt_out(&ann, "points", herald_core::ChannelKind::Email, None, 1)
        .await
        .unwrap();
    assert!(changed);
    let p = profile(store, "ann").await.unwrap();
    assert!(p.preferences.overrides.contains_key("points"));

    // Devices: added, removed, and removed as a provider reports it gone.
    assert!(!p.has_device);
    let device = NewDevice {
        kind: DeviceKind::Fcm,
        token: "t1".into(),
        subscription: None,
    };
    let (added, _) = store.add_device(&ann, &device).await.unwrap();
    assert!(profile(store, "ann").await.unwrap().has_device);
    assert!(store.delete_device(&ann, added.id).await.unwrap());
    assert!(!profile(store, "ann").await.unwrap().has_device);
    store.add_device(&ann, &device).await.unwrap();
    assert!(profile(store, "ann").await.unwrap().has_device);
    store.delete_device_by_token(&ann, "t1").await.unwrap();
    assert!(!profile(store, "ann").await.unwrap().has_device);

    // Erased: unknown again, and out of every group.
    store
        .put_contact(&ann, &record("ann@example.com", Role::Admin))
        .await
        .unwrap();
    assert_eq!(admins(store).await, vec![ann.clone()]);
    store
        .erase_user(&ann, 100, Duration::ZERO)
        .await
        .unwrap()
        .expect("ann was known");
    assert_eq!(profile(store, "ann").await, None);
    assert_eq!(admins(store).await, Vec::<UserId>::new());
}

fn welcome(guest: &str, email: &str) -> NewEvent {
    let id = EventId::new();
    NewEvent {
        id,
        key: None,
        kind: EventKind::GuestRegistered,
        payload: "{}".into(),
        hash: id.to_string(),
        received_at: 1,
        traceparent: None,
        notifications: Vec::new(),
        schedule: None,
        fill_email: Some(EmailFill {
            user: user(guest),
            email: email.to_owned(),
        }),
    }
}

async fn a_filled_in_address_is_written_with_the_event(db: TestDb) {
    let store = &db.store;
    assert_eq!(profile(store, "bob").await, None);
    // Two addresses for bob in one batch: the first wins.
    store
        .ingest(&[
            welcome("bob", "bob@example.com"),
            welcome("bob", "other@example.com"),
        ])
        .await
        .unwrap();
    let p = profile(store, "bob").await.expect("bob has a contact now");
    assert_eq!(p.contact.email.as_deref(), Some("bob@example.com"));
    // An address on file wins over one an event names.
    store
        .ingest(&[welcome("bob", "new@example.com")])
        .await
        .unwrap();
    assert_eq!(
        store
            .contact(&user("bob"))
            .await
            .unwrap()
            .unwrap()
            .contact
            .email
            .as_deref(),
        Some("bob@example.com")
    );
    assert_eq!(
        profile(store, "bob")
            .await
            .unwrap()
            .contact
            .email
            .as_deref(),
        Some("bob@example.com")
    );
}

/// Two stores on one PostgreSQL database, as two nodes: what one writes,
/// the other's cache drops once it hears the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_node_hears_every_change() {
    let Some(db) = TestDb::new(Backend::Postgres, 4).await else {
        return;
    };
    let options = Options {
        max_connections: 4,
        directory_cache: 1_000,
    };
    let other = Store::connect_with(&db.url, options).await.unwrap();
    assert!(other.directory_cache().is_armed());
    let cat = user("cat");
    db.store
        .put_contact(&cat, &record("cat@example.com", Role::Admin))
        .await
        .unwrap();
    // The other node caches cat as she is now.
    assert!(profile(&other, "cat").await.unwrap().preferences.enabled);
    assert_eq!(admins(&other).await, vec![cat.clone()]);

    let prefs = Preferences {
        enabled: false,
        ..Preferences::default()
    };
    db.store.put_preferences(&cat, &prefs).await.unwrap();
    eventually(
        "the other node sees the preferences",
        Duration::from_secs(10),
        || async { (!profile(&other, "cat").await.unwrap().preferences.enabled).then_some(()) },
    )
    .await;
    db.store
        .put_contact(&cat, &record("cat@example.com", Role::Guest))
        .await
        .unwrap();
    eventually(
        "the other node sees the membership",
        Duration::from_secs(10),
        || async { admins(&other).await.is_empty().then_some(()) },
    )
    .await;
    assert_eq!(profile(&other, "dan").await, None, "cached as unknown");
    db.store
        .ingest(&[welcome("dan", "dan@example.com")])
        .await
        .unwrap();
    eventually(
        "the other node sees the filled-in address",
        Duration::from_secs(10),
        || async { profile(&other, "dan").await.map(|_| ()) },
    )
    .await;
    db.store
        .erase_user(&cat, 100, Duration::ZERO)
        .await
        .unwrap();
    eventually(
        "the other node forgets an erased user",
        Duration::from_secs(10),
        || async { profile(&other, "cat").await.is_none().then_some(()) },
    )
    .await;
}
