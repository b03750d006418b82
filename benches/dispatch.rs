//! Micro benches for the per-event work on Herald's ingest path: validating
//! a payload, routing it, planning deliveries against preferences, rendering
//! inbox text. The baseline for later work; run with `cargo bench`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_core::preferences::Contact;
use herald_core::routing::{Profile, Selector};
use herald_core::{EventKind, Locale, Role, RoutingTable, UserId, ValidatedEvent};
use herald_delivery::Templates;
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

criterion_group!(benches, validation, routing, rendering);
criterion_main!(benches);
