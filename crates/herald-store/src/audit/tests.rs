use std::time::Duration;

use herald_core::preferences::Contact;
use herald_core::{Locale, Preferences, UserId};
use serde_json::json;

use super::{Actor, AuditCursor, AuditFilter, AuditKind};
use crate::directory::NewDevice;
use crate::lifecycle::{PurgeStep, Retention};
use crate::routing::{NewRouting, RoutingSource, RoutingWrite};
use crate::testing::{TestDb, on_both_backends};
use crate::{ContactRecord, DeviceKind};

on_both_backends!(
    changes_by_an_actor_are_audited_with_before_and_after,
    changes_without_an_actor_are_not_audited,
    pages_and_filters_go_newest_first,
    routing_versions_are_compared_and_set,
    an_erase_empties_the_values_and_the_purge_ages_rows_out,
);

fn admin() -> Actor {
    Actor::new("admin-1", "admin")
}

fn contact(email: &str) -> ContactRecord {
    ContactRecord {
        contact: Contact {
            email: Some(email.into()),
            phone: Some("+79161234567".into()),
            ..Contact::default()
        },
        ..ContactRecord::default()
    }
}

async fn all(db: &TestDb) -> Vec<super::AuditEntry> {
    db.store
        .list_audit(&AuditFilter::default(), None, 100)
        .await
        .unwrap()
        .0
}

async fn changes_by_an_actor_are_audited_with_before_and_after(db: TestDb) {
    let store = &db.store;
    let guest = UserId("guest-1".into());
    let by = admin();
    store
        .put_contact_by(&guest, &contact("anna@example.com"), Some(&by))
        .await
        .unwrap();
    store
        .put_contact_by(&guest, &contact("anya@example.com"), Some(&by))
        .await
        .unwrap();
    let prefs = Preferences {
        enabled: false,
        ..Preferences::default()
    };
    store
        .put_preferences_by(&guest, &prefs, Some(Locale::En), Some(&by))
        .await
        .unwrap();
    let device = NewDevice {
        kind: DeviceKind::Fcm,
        token: "abcdefghijklmnopqrstuvwxyz".into(),
        subscription: None,
    };
    let (added, created) = store
        .add_device_by(&guest, &device, Some(&by))
        .await
        .unwrap();
    assert!(created);
    let (_, created) = store
        .add_device_by(&guest, &device, Some(&by))
        .await
        .unwrap();
    assert!(!created);
    assert!(
        store
            .delete_device_by(&guest, added.id, Some(&by))
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_device_by(&guest, added.id, Some(&by))
            .await
            .unwrap()
    );

    let rows = all(&db).await;
    let summary: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.kind.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("devices", "remove"),
            ("devices", "update"),
            ("devices", "add"),
            ("preferences", "update"),
            ("contact", "update"),
            ("contact", "update"),
        ]
    );
    for r in &rows {
        assert_eq!(r.actor, by);
        assert_eq!(r.target.as_deref(), Some("guest-1"));
    }
    // The contact: the values an auditor needs, unmasked.
    assert_eq!(rows[5].before, None);
    assert_eq!(rows[5].after.as_ref().unwrap()["email"], "anna@example.com");
    assert_eq!(
        rows[4].before.as_ref().unwrap()["email"],
        "anna@example.com"
    );
    assert_eq!(rows[4].after.as_ref().unwrap()["email"], "anya@example.com");
    // Preferences as GET shows them, the locale with them.
    let p = &rows[3];
    assert_eq!(p.before.as_ref().unwrap()["enabled"], true);
    assert_eq!(p.before.as_ref().unwrap()["locale"], json!(null));
    assert_eq!(p.after.as_ref().unwrap()["enabled"], false);
    assert_eq!(p.after.as_ref().unwrap()["locale"], "en");
    // Devices: masked, never the whole token.
    assert_eq!(rows[2].after.as_ref().unwrap()["token"], "abcdefgh***");
    assert_eq!(rows[0].before.as_ref().unwrap()["token"], "abcdefgh***");
    assert_eq!(rows[0].after, None);
    let text = serde_json::to_string(&rows).unwrap();
    assert!(!text.contains("ijklmnop"), "{text}");
}

async fn changes_without_an_actor_are_not_audited(db: TestDb) {
    let store = &db.store;
    let me = UserId("me".into());
    store
        .put_contact(&me, &contact("me@example.com"))
        .await
        .unwrap();
    store
        .put_preferences_by(&me, &Preferences::default(), Some(Locale::Ru), None)
        .await
        .unwrap();
    let device = NewDevice {
        kind: DeviceKind::Fcm,
        token: "token-of-mine".into(),
        subscription: None,
    };
    let (d, _) = store.add_device(&me, &device).await.unwrap();
    assert!(store.delete_device(&me, d.id).await.unwrap());
    assert!(all(&db).await.is_empty());
    // The change itself happened.
    let c = store.contact(&me).await.unwrap().unwrap();
    assert_eq!(c.contact.locale, Some(Locale::Ru));
    assert_eq!(c.contact.email.as_deref(), Some("me@example.com"));
}

async fn pages_and_filters_go_newest_first(db: TestDb) {
    let store = &db.store;
    let (a, s) = (admin(), Actor::new("platform", "service"));
    for i in 0..5 {
        let by = if i % 2 == 0 { &a } else { &s };
        let user = UserId(format!("u{}", i % 2));
        store
            .put_contact_by(&user, &contact(&format!("{i}@example.com")), Some(by))
            .await
            .unwrap();
    }
    let everything = all(&db).await;
    assert_eq!(everything.len(), 5);
    // Two at a time, following the cursor: each row once, newest first.
    let mut seen = Vec::new();
    let mut cursor: Option<AuditCursor> = None;
    loop {
        let (page, next) = store
            .list_audit(&AuditFilter::default(), cursor.as_ref(), 2)
            .await
            .unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|r| r.id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let ids: Vec<String> = everything.iter().map(|r| r.id.clone()).collect();
    assert_eq!(seen, ids);
    let by_actor = AuditFilter {
        actor: Some("platform".into()),
        ..AuditFilter::default()
    };
    let (rows, _) = store.list_audit(&by_actor, None, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.actor.role == "service"));
    let by_target = AuditFilter {
        target: Some("u0".into()),
        kind: Some(AuditKind::Contact),
        ..AuditFilter::default()
    };
    assert_eq!(
        store
            .list_audit(&by_target, None, 10)
            .await
            .unwrap()
            .0
            .len(),
        3
    );
    let routing = AuditFilter {
        kind: Some(AuditKind::Routing),
        ..AuditFilter::default()
    };
    assert!(
        store
            .list_audit(&routing, None, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    let oldest = everything.last().unwrap().at;
    let before = AuditFilter {
        to: Some(oldest - 1),
        ..AuditFilter::default()
    };
    assert!(
        store
            .list_audit(&before, None, 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
    let since = AuditFilter {
        from: Some(oldest),
        ..AuditFilter::default()
    };
    assert_eq!(store.list_audit(&since, None, 10).await.unwrap().0.len(), 5);
}

async fn routing_versions_are_compared_and_set(db: TestDb) {
    let store = &db.store;
    let by = admin();
    assert_eq!(store.routing_version().await.unwrap(), 0);
    assert!(store.latest_routing().await.unwrap().is_none());
    let doc = json!({"events": {}});
    let describe =
        |v: Option<&crate::routing::RoutingVersion>| json!({"version": v.map_or(0, |v| v.version)});
    let put = |expected, document| NewRouting {
        expected,
        document,
        actor: &by,
        action: "replace",
    };
    let RoutingWrite::Stored(v1) = store
        .store_routing(put(Some(0), Some(&doc)), describe)
        .await
        .unwrap()
    else {
        panic!("stored")
    };
    assert_eq!((v1.version, v1.source), (1, RoutingSource::Api));
    // A writer that read version 0 is refused, and told the current one.
    assert_eq!(
        store
            .store_routing(put(Some(0), Some(&doc)), describe)
            .await
            .unwrap(),
        RoutingWrite::Conflict { current: 1 }
    );
    // Without an expected version, it goes after the newest.
    let RoutingWrite::Stored(v2) = store
        .store_routing(put(None, None), describe)
        .await
        .unwrap()
    else {
        panic!("stored")
    };
    assert_eq!(
        (v2.version, v2.source, v2.document),
        (2, RoutingSource::File, None)
    );
    assert_eq!(store.routing_version().await.unwrap(), 2);
    let latest = store.latest_routing().await.unwrap().unwrap();
    assert_eq!(latest.actor, by);
    // Two writers racing for the same next version: one wins.
    let (x, y) = tokio::join!(
        store.store_routing(put(Some(2), Some(&doc)), describe),
        store.store_routing(put(Some(2), Some(&doc)), describe),
    );
    let stored = [x.unwrap(), y.unwrap()]
        .iter()
        .filter(|w| matches!(w, RoutingWrite::Stored(_)))
        .count();
    assert_eq!(stored, 1);
    assert_eq!(store.routing_version().await.unwrap(), 3);
    // Each stored change has its audit row, before and after.
    let routing = AuditFilter {
        kind: Some(AuditKind::Routing),
        ..AuditFilter::default()
    };
    let rows = store.list_audit(&routing, None, 10).await.unwrap().0;
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2].before, Some(json!({"version": 0})));
    assert_eq!(rows[2].after, Some(json!({"version": 1})));
    assert_eq!(rows[2].target, None);
}

async fn an_erase_empties_the_values_and_the_purge_ages_rows_out(db: TestDb) {
    let store = &db.store;
    let (gone, stays) = (UserId("gone".into()), UserId("stays".into()));
    for u in [&gone, &stays] {
        store
            .put_contact_by(u, &contact("x@example.com"), Some(&admin()))
            .await
            .unwrap();
    }
    let export = store.export_user(&gone).await.unwrap().unwrap();
    assert_eq!(export.audit.len(), 1);
    assert_eq!(
        export.audit[0].after.as_ref().unwrap()["email"],
        "x@example.com"
    );
    let erasure = store
        .erase_user(&gone, 10, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(erasure.erased.audit, 1);
    let rows = all(&db).await;
    assert_eq!(rows.len(), 2);
    let of = |u: &str| {
        rows.iter()
            .find(|r| r.target.as_deref() == Some(u))
            .unwrap()
    };
    assert_eq!(
        (of("gone").before.clone(), of("gone").after.clone()),
        (None, None)
    );
    assert!(of("gone").erased_at.is_some());
    assert_eq!(of("gone").actor, admin());
    assert!(of("stays").after.is_some());
    assert!(of("stays").erased_at.is_none());

    // The purge: nothing is old enough a day before; everything after.
    let newest = rows[0].at;
    let (p, _) = store
        .purge_batch(PurgeStep::Audit, rows[1].at, 10)
        .await
        .unwrap();
    assert_eq!(p.audit, 0);
    let retention = Retention {
        audit: Some(1),
        ..Retention::default()
    };
    let p = store
        .purge(&retention, newest + 2, 1, Duration::ZERO, |_| {})
        .await
        .unwrap();
    assert_eq!(p.audit, 2);
    assert!(all(&db).await.is_empty());
}
