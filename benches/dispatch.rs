//! Micro benches for the per-event work on Herald's ingest path: validating
//! a payload, routing it, planning deliveries against preferences, rendering
//! inbox text, encoding the realtime frame. Run with `cargo bench`; the
//! load harness (`crates/herald-bench`) measures the whole path.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_core::preferences::Contact;
use herald_core::routing::{Profile, Selector};
use herald_core::{EventKind, Locale, Role, RoutingTable, UserId, ValidatedEvent};
use herald_delivery::Templates;
use herald_realtime::history::{Delivery, Stored};
use serde_json::Value;

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    let data = EventKind::PointsAdded.example();
    group.bench_function("points_added: validate + serialise", |b| {
        b.iter(|| {
            let event = ValidatedEvent::parse("points_added", black_box(data.clone())).unwrap();
            black_box(Value::Object(event.data).to_string())
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let table = RoutingTable::default_table();
    let now = Utc::now();
    let mut group = c.benchmark_group("route");
    group.throughput(Throughput::Elements(1));

    let points =
        ValidatedEvent::parse_kind(EventKind::PointsAdded, EventKind::PointsAdded.example())
            .unwrap();
    let guest = UserId(points.data["guestId"].as_str().unwrap().to_owned());
    let profiles = HashMap::from([(
        guest,
        Profile {
            contact: Contact {
                email: Some("anna@example.com".into()),
                ..Contact::default()
            },
            has_device: true,
            ..Profile::default()
        },
    )]);
    group.bench_function("points_added: route + plan, one guest", |b| {
        b.iter(|| {
            let route = table.route(black_box(&points));
            black_box(route.plan(&HashMap::new(), &profiles, now))
        })
    });

    let alert =
        ValidatedEvent::parse_kind(EventKind::SystemAlert, EventKind::SystemAlert.example())
            .unwrap();
    let admins: Vec<UserId> = (0..20).map(|i| UserId(format!("admin-{i}"))).collect();
    let members = HashMap::from([(Selector::Role(Role::Admin), admins)]);
    group.bench_function("system_alert: route + plan, 20 admins", |b| {
        b.iter(|| {
            let route = table.route(black_box(&alert));
            black_box(route.plan(&members, &HashMap::new(), now))
        })
    });
    group.finish();
}

fn rendering(c: &mut Criterion) {
    let templates = Templates::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        Locale::Ru,
    )
    .unwrap();
    let points =
        ValidatedEvent::parse_kind(EventKind::PointsAdded, EventKind::PointsAdded.example())
            .unwrap();
    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    group.bench_function("points_added: inbox text, ru", |b| {
        b.iter(|| {
            black_box(
                templates
                    .render_inbox(EventKind::PointsAdded, Locale::Ru, black_box(&points.data))
                    .unwrap(),
            )
        })
    });
    group.finish();
}

/// What a broadcast costs before it reaches any socket: the payload
/// serialised once with its `eventId`, and the `/ws` frame built once; every
/// socket in the rooms then shares that `Arc`.
fn framing(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    let event =
        ValidatedEvent::parse_kind(EventKind::PointsAdded, EventKind::PointsAdded.example())
            .unwrap();
    group.bench_function("points_added: encode once for every socket", |b| {
        b.iter(|| {
            let mut data = black_box(event.data.clone());
            data.insert(
                "eventId".to_owned(),
                Value::String("0192f4c3-8a2e-7c1d-9b5a-3e4f5a6b7c8d".to_owned()),
            );
            let stored = Stored {
                event: "points_added".to_owned(),
                event_id: "0192f4c3-8a2e-7c1d-9b5a-3e4f5a6b7c8d".to_owned(),
                rooms: vec!["guest:g".to_owned(), "user:g".to_owned()],
                data: serde_json::value::to_raw_value(&data).unwrap(),
            };
            black_box(Delivery::new(42, stored))
        })
    });
    group.finish();
}

criterion_group!(benches, validation, routing, rendering, framing);
criterion_main!(benches);
