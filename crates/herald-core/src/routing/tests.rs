use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::preferences::QuietHours;
use crate::smart::{DigestGroup, SeenCheck};

fn event(kind: EventKind) -> ValidatedEvent {
    ValidatedEvent::parse_kind(kind, kind.example()).unwrap()
}

fn guest() -> UserId {
    UserId(
        EventKind::PointsAdded.example()["guestId"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

fn reachable() -> Profile {
    Profile {
        preferences: Preferences::default(),
        contact: Contact {
            email: Some("anna@example.com".into()),
            phone: Some("+79161234567".into()),
            ..Contact::default()
        },
        has_device: true,
    }
}

fn noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

fn plan_for(kind: EventKind, profile: Profile) -> RecipientPlan {
    let route = RoutingTable::default_table().route(&event(kind));
    let profiles = HashMap::from([(guest(), profile)]);
    let plans = route.plan(&HashMap::new(), &profiles, noon());
    plans
        .into_iter()
        .find(|p| p.user == guest())
        .expect("guest is addressed")
}

#[test]
fn the_shipped_table_routes_points_added_as_the_contract_says() {
    let route = RoutingTable::default_table().route(&event(EventKind::PointsAdded));
    let g = guest();
    assert_eq!(
        route.rooms,
        vec![
            "restaurant:5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d:points".to_owned(),
            format!("guest:{g}"),
            format!("user:{g}"),
        ]
    );
    assert_eq!(route.inbox, vec![Selector::User(g.clone())]);
    assert_eq!(
        route.deliveries,
        vec![DefaultDelivery {
            to: Selector::User(g),
            channel: ChannelKind::Push,
            mandatory: false,
            hold: None,
            escalation: None,
        }]
    );
    assert!(!route.critical);
}

#[test]
fn conditions_select_critical_alerts_only() {
    let table = RoutingTable::default_table();
    let critical = table.route(&event(EventKind::SystemAlert));
    assert!(critical.critical);
    assert_eq!(critical.deliveries.len(), 2);
    assert!(
        critical
            .deliveries
            .iter()
            .all(|d| d.mandatory && d.to == Selector::Role(Role::Admin))
    );
    let mut info = EventKind::SystemAlert.example();
    info["level"] = json!("info");
    let info = table.route(&ValidatedEvent::parse_kind(EventKind::SystemAlert, info).unwrap());
    assert!(!info.critical);
    assert!(info.deliveries.is_empty());
    assert_eq!(
        info.rooms,
        vec!["admin:events".to_owned(), "admin".to_owned()]
    );
}

#[test]
fn groups_expand_through_members() {
    let route = RoutingTable::default_table().route(&event(EventKind::RestaurantStatusChanged));
    let staff = Selector::Staff("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d".into());
    assert_eq!(route.groups().collect::<Vec<_>>(), vec![&staff, &staff]);
    let members = HashMap::from([(staff, vec![UserId::from("s1"), UserId::from("s2")])]);
    let plans = route.plan(&members, &HashMap::new(), noon());
    assert_eq!(plans.len(), 2);
    for plan in plans {
        assert!(plan.in_inbox());
        // Nobody registered an email address for them.
        assert_eq!(
            plan.decisions[&ChannelKind::Email],
            Decision::Suppress {
                reason: Reason::NoContact
            }
        );
    }
}

#[test]
fn precedence_walks_down_the_documented_list() {
    let mut p = reachable();
    let deliver = |reason| Decision::Deliver {
        reason,
        defer_until: None,
        digest: None,
        hold: None,
    };
    assert_eq!(
        plan_for(EventKind::PointsRedeemed, p.clone()).decisions[&ChannelKind::Email],
        deliver(Reason::RoutingDefault)
    );

    p.preferences
        .overrides
        .insert("points".into(), [(ChannelKind::Email, false)].into());
    assert_eq!(
        plan_for(EventKind::PointsRedeemed, p.clone()).decisions[&ChannelKind::Email],
        Decision::Suppress {
            reason: Reason::CategoryOverride
        }
    );
    p.preferences.overrides.insert(
        "points_redeemed".into(),
        [(ChannelKind::Email, true)].into(),
    );
    assert_eq!(
        plan_for(EventKind::PointsRedeemed, p.clone()).decisions[&ChannelKind::Email],
        deliver(Reason::EventOverride)
    );

    p.preferences.channels.insert(ChannelKind::Email, false);
    assert_eq!(
        plan_for(EventKind::PointsRedeemed, p.clone()).decisions[&ChannelKind::Email],
        Decision::Suppress {
            reason: Reason::ChannelOff
        }
    );
    p.preferences.enabled = false;
    let plan = plan_for(EventKind::PointsRedeemed, p);
    assert!(plan.decisions.values().all(|d| *d
        == Decision::Suppress {
            reason: Reason::GlobalOff
        }));
}

#[test]
fn an_override_can_add_a_channel_the_table_does_not_send() {
    let mut p = reachable();
    p.preferences
        .overrides
        .insert("points_added".into(), [(ChannelKind::Sms, true)].into());
    let plan = plan_for(EventKind::PointsAdded, p);
    assert_eq!(
        plan.decisions[&ChannelKind::Sms],
        Decision::Deliver {
            reason: Reason::EventOverride,
            defer_until: None,
            digest: None,
            hold: None,
        }
    );
    // And nothing else appears uninvited.
    assert!(!plan.decisions.contains_key(&ChannelKind::Email));
}

#[test]
fn quiet_hours_defer_push_but_not_email_nor_critical_events() {
    let mut p = reachable();
    p.preferences.quiet_hours = Some(
        serde_json::from_value::<QuietHours>(json!({"start": "11:00", "end": "13:00"})).unwrap(),
    );
    let plan = plan_for(EventKind::PointsRedeemed, p.clone());
    let one_pm = Utc.with_ymd_and_hms(2026, 11, 26, 13, 0, 0).unwrap();
    assert_eq!(
        plan.decisions[&ChannelKind::Push],
        Decision::Deliver {
            reason: Reason::RoutingDefault,
            defer_until: Some(one_pm),
            digest: Some(DigestGroup::Quiet),
            hold: None,
        }
    );
    assert_eq!(
        plan.decisions[&ChannelKind::Email],
        Decision::Deliver {
            reason: Reason::RoutingDefault,
            defer_until: None,
            digest: None,
            hold: None,
        }
    );
    // A critical alert's SMS to an admin goes out at once.
    let route = RoutingTable::default_table().route(&event(EventKind::SystemAlert));
    let admin = UserId::from("admin-1");
    let members = HashMap::from([(Selector::Role(Role::Admin), vec![admin.clone()])]);
    let plans = route.plan(&members, &HashMap::from([(admin, p)]), noon());
    assert_eq!(
        plans[0].decisions[&ChannelKind::Sms],
        Decision::Deliver {
            reason: Reason::Mandatory,
            defer_until: None,
            digest: None,
            hold: None,
        }
    );
}

#[test]
fn bad_tables_fail_with_the_key_at_fault() {
    let cases = [
        (
            "[events.points_added]\nrooms = [\"guest:{guestID}\"]",
            "events.points_added",
        ),
        (
            "[events.points_gained]\n",
            "events.points_gained: unknown event",
        ),
        (
            "[events.points_added]\ninbox = [\"role:owner\"]",
            "unknown role",
        ),
        (
            "[events.points_added]\ndeliveries = [{ to = \"{guestId}\", channels = [\"in_app\"] }]",
            "deliveries[0].channels",
        ),
        ("[events.points_added]\n", "no entry"),
    ];
    for (src, expected) in cases {
        let err = RoutingTable::from_toml(src).unwrap_err().to_string();
        assert!(err.contains(expected), "{src}: {err}");
    }
}

fn channel() -> impl Strategy<Value = ChannelKind> {
    prop::sample::select(ChannelKind::PREFERENCE.to_vec())
}

fn override_key() -> impl Strategy<Value = String> {
    let mut keys: Vec<String> = EventKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    keys.extend(EventKind::categories().into_iter().map(str::to_owned));
    prop::sample::select(keys)
}

fn preferences() -> impl Strategy<Value = Preferences> {
    (
        any::<bool>(),
        prop::collection::btree_map(channel(), any::<bool>(), 0..4),
        prop::collection::btree_map(
            override_key(),
            prop::collection::btree_map(channel(), any::<bool>(), 0..4),
            0..4,
        ),
        prop::option::of((0u32..24, 0u32..24)),
    )
        .prop_map(|(enabled, channels, overrides, quiet)| Preferences {
            enabled,
            channels,
            overrides,
            quiet_hours: quiet.filter(|(s, e)| s != e).map(|(s, e)| QuietHours {
                start: crate::preferences::ClockTime::new(s, 0).unwrap(),
                end: crate::preferences::ClockTime::new(e, 0).unwrap(),
                timezone: None,
            }),
            digests: Default::default(),
        })
}

fn profile() -> impl Strategy<Value = Profile> {
    (preferences(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(preferences, email, phone, has_device)| Profile {
            preferences,
            contact: Contact {
                email: email.then(|| "a@example.com".to_owned()),
                phone: phone.then(|| "+79161234567".to_owned()),
                ..Contact::default()
            },
            has_device,
        },
    )
}

fn kind() -> impl Strategy<Value = EventKind> {
    prop::sample::select(EventKind::ALL.to_vec())
}

proptest! {
    #[test]
    fn decisions_follow_the_precedence(kind in kind(), profile in profile(), hour in 0u32..24) {
        let route = RoutingTable::default_table().route(&event(kind));
        let admin = UserId::from("admin-1");
        let staff = UserId::from("staff-1");
        let members = HashMap::from([
            (Selector::Role(Role::Admin), vec![admin.clone()]),
            (Selector::Staff("5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d".into()), vec![staff.clone()]),
        ]);
        let profiles: HashMap<UserId, Profile> =
            [guest(), admin, staff].into_iter().map(|u| (u, profile.clone())).collect();
        let now = Utc.with_ymd_and_hms(2026, 11, 26, hour, 30, 0).unwrap();
        let prefs = &profile.preferences;
        for plan in route.plan(&members, &profiles, now) {
            for (&ch, decision) in &plan.decisions {
                let default = route.deliveries.iter().find(|d| d.channel == ch && route.users(&members).contains(&plan.user));
                let mandatory = route.deliveries.iter().any(|d| d.channel == ch && d.mandatory);
                match *decision {
                    Decision::Deliver { reason, defer_until, .. } => {
                        // Anything delivered is reachable, and allowed by the top rule that applies.
                        prop_assert!(profile.reachable(ch));
                        if !mandatory {
                            prop_assert!(prefs.enabled, "{kind} {ch}: global off");
                            prop_assert!(prefs.channels.get(&ch) != Some(&false), "{kind} {ch}: channel off");
                            prop_assert_ne!(prefs.override_for(kind, ch).map(|o| o.0), Some(false));
                        } else {
                            prop_assert_eq!(reason, Reason::Mandatory);
                        }
                        if defer_until.is_some() {
                            prop_assert!(ch.is_intrusive() && !route.critical);
                            prop_assert!(defer_until.unwrap() > now);
                        }
                        // Delivered channels come from the table or an explicit opt-in.
                        prop_assert!(
                            default.is_some() || ch == ChannelKind::InApp
                                || prefs.override_for(kind, ch) == Some((true, true))
                                || prefs.override_for(kind, ch) == Some((true, false))
                        );
                    }
                    Decision::Suppress { reason } => {
                        prop_assert!(!(mandatory && profile.reachable(ch)), "{kind} {ch}: mandatory suppressed by {reason:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn default_preferences_receive_exactly_the_table_defaults(kind in kind()) {
        let route = RoutingTable::default_table().route(&event(kind));
        let profiles = HashMap::from([(guest(), reachable())]);
        for plan in route.plan(&HashMap::new(), &profiles, noon()) {
            let delivered: BTreeSet<ChannelKind> = plan.decisions.iter().filter(|(_, d)| d.delivers()).map(|(c, _)| *c).collect();
            let mut expected: BTreeSet<ChannelKind> = route.deliveries.iter().filter(|d| d.to == Selector::User(plan.user.clone())).map(|d| d.channel).collect();
            if route.inbox.contains(&Selector::User(plan.user.clone())) {
                expected.insert(ChannelKind::InApp);
            }
            prop_assert_eq!(delivered, expected);
        }
    }
}

#[test]
fn the_json_document_reads_back_as_the_same_table() {
    let table = RoutingTable::default_table();
    let doc = table.document().clone();
    assert_eq!(doc["events"]["points_added"]["inbox"], json!(["{guestId}"]));
    // Every default is filled in, so the document shows what applies.
    assert_eq!(
        doc["events"]["points_added"]["deliveries"][0]["mandatory"],
        json!(false)
    );
    let again = RoutingTable::from_json(doc.clone()).unwrap();
    assert_eq!(again.document(), &doc);
    for &kind in EventKind::ALL.iter() {
        assert_eq!(
            again.route(&event(kind)),
            table.route(&event(kind)),
            "{kind}"
        );
    }
}

#[test]
fn bad_json_tables_name_the_path_at_fault() {
    let good = RoutingTable::default_table().document().clone();
    let with = |path: &[&str], value: serde_json::Value| {
        let mut doc = good.clone();
        let mut at = &mut doc;
        for key in &path[..path.len() - 1] {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        at[path[path.len() - 1]] = value;
        doc
    };
    let cases = [
        (
            with(
                &["events", "points_added", "deliveries", "0", "to"],
                json!("role:owner"),
            ),
            "events.points_added.deliveries[0].to",
        ),
        (
            with(
                &["events", "points_added", "deliveries", "0", "channels"],
                json!(["push", "in_app"]),
            ),
            "events.points_added.deliveries[0].channels[1]",
        ),
        (
            with(
                &["events", "points_added", "deliveries", "0", "channels"],
                json!(["pigeon"]),
            ),
            "events.points_added.deliveries[0].channels[0]",
        ),
        (
            with(
                &["events", "points_added", "rooms"],
                json!(["guest:{guestId}", "x:{nope}"]),
            ),
            "events.points_added.rooms[1]",
        ),
        (
            with(
                &["events", "system_alert", "critical_when"],
                json!({"colour": ["red"]}),
            ),
            "events.system_alert.critical_when.colour",
        ),
        (
            with(&["events", "points_added", "extra"], json!(1)),
            "events.points_added.extra",
        ),
        (
            with(&["events", "points_gained"], json!({})),
            "events.points_gained",
        ),
        (json!({"events": {}}), "events.points_added"),
        (json!({}), "events"),
        (json!([1, 2]), ""),
    ];
    for (doc, path) in cases {
        let err = RoutingTable::from_json(doc.clone()).unwrap_err();
        assert_eq!(err.field, path, "{err}");
    }
}

const SMART: &str = r#"
[categories.points]
digest = { every = "1h", channels = ["push"] }
throttle = { sms = { max = 3, per = "1h", overflow = "drop" } }
"#;

fn table_with(extra: &str) -> Result<RoutingTable, Error> {
    RoutingTable::from_toml(&format!("{DEFAULT_ROUTING}\n{extra}"))
}

#[test]
fn a_category_window_digests_its_channels_and_a_users_daily_digest_wins() {
    let table = table_with(SMART).unwrap();
    let route = table.route(&event(EventKind::PointsRedeemed));
    let user = guest();
    let members = HashMap::new();
    let decide = |p: &Profile| {
        route.plan(
            &members,
            &HashMap::from([(user.clone(), p.clone())]),
            noon(),
        )[0]
        .decisions
        .clone()
    };
    let d = decide(&reachable());
    let one_pm = Utc.with_ymd_and_hms(2026, 11, 26, 13, 0, 0).unwrap();
    assert_eq!(
        d[&ChannelKind::Push],
        Decision::Deliver {
            reason: Reason::RoutingDefault,
            defer_until: Some(one_pm),
            digest: Some(DigestGroup::Category("points")),
            hold: None,
        }
    );
    // The window names push only: email goes at once.
    assert!(matches!(
        d[&ChannelKind::Email],
        Decision::Deliver {
            defer_until: None,
            digest: None,
            hold: None,
            ..
        }
    ));
    let mut p = reachable();
    p.preferences.digests.insert(
        "points".into(),
        serde_json::from_value(json!({"at": "18:30"})).unwrap(),
    );
    let evening = Utc.with_ymd_and_hms(2026, 11, 26, 18, 30, 0).unwrap();
    let d = decide(&p);
    for channel in [ChannelKind::Push, ChannelKind::Email] {
        assert_eq!(
            d[&channel],
            Decision::Deliver {
                reason: Reason::RoutingDefault,
                defer_until: Some(evening),
                digest: Some(DigestGroup::Category("points")),
                hold: None,
            }
        );
    }
    assert!(matches!(
        d[&ChannelKind::InApp],
        Decision::Deliver {
            defer_until: None,
            ..
        }
    ));
    assert_eq!(route.throttle(ChannelKind::Sms).unwrap().max, 3);
    // A critical event is neither digested nor throttled.
    let alert = table.route(&event(EventKind::SystemAlert));
    assert!(alert.throttle(ChannelKind::Sms).is_none());
}

#[test]
fn bad_smart_settings_name_their_key() {
    let cases = [
        (
            "[categories.points]\ndigest = { every = \"0m\" }",
            "categories.points.digest.every",
        ),
        (
            "[categories.points]\ndigest = { every = \"soon\" }",
            "categories.points.digest.every",
        ),
        (
            "[categories.pointz]\ndigest = { every = \"1h\" }",
            "categories.pointz",
        ),
        (
            "[categories.points]\nthrottle = { fax = { max = 1, per = \"1h\" } }",
            "categories.points.throttle.fax",
        ),
        (
            "[categories.points]\nthrottle = { sms = { max = 0, per = \"1h\" } }",
            "categories.points.throttle.sms.max",
        ),
        (
            "[categories.points]\nthrottle = { sms = { max = 2, per = \"0s\" } }",
            "categories.points.throttle.sms.per",
        ),
    ];
    for (toml, key) in cases {
        let err = table_with(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
}

#[test]
fn a_shared_table_is_replaced_for_every_clone() {
    let shared = SharedRouting::new(Arc::new(RoutingTable::default_table()));
    let reader = shared.clone();
    let mut doc = RoutingTable::default_table().document().clone();
    doc["events"]["points_added"]["rooms"] = json!(["extra:{guestId}"]);
    shared.replace(Arc::new(RoutingTable::from_json(doc).unwrap()));
    let rooms = reader.route(&event(EventKind::PointsAdded)).rooms;
    assert_eq!(rooms, vec![format!("extra:{}", guest())]);
}

#[test]
fn holds_and_escalation_steps_are_due_later_and_checked_for_seen() {
    let table = RoutingTable::from_toml(
        &DEFAULT_ROUTING
            .replace(
                r#"deliveries = [{ to = "{guestId}", channels = ["push"] }]

[events.points_redeemed]"#,
                r#"deliveries = [{ to = "{guestId}", channels = ["push"], hold = "2m" }]

[events.points_redeemed]"#,
            )
            .replace(
                r#"critical_when = { level = ["critical"] }"#,
                r#"critical_when = { level = ["critical"] }
escalate = [
  { after = "5m", to = "role:admin", channels = ["sms", "push"] },
  { after = "1m", to = "role:admin", channels = ["push"] },
]"#,
            ),
    )
    .unwrap();
    let route = table.route(&event(EventKind::PointsAdded));
    let plans = route.plan(
        &HashMap::new(),
        &HashMap::from([(guest(), reachable())]),
        noon(),
    );
    assert_eq!(
        plans[0].decisions[&ChannelKind::Push],
        Decision::Deliver {
            reason: Reason::RoutingDefault,
            defer_until: Some(noon() + chrono::Duration::minutes(2)),
            digest: None,
            hold: Some(SeenCheck::Recipient),
        }
    );
    let alert = table.route(&event(EventKind::SystemAlert));
    let admin = UserId::from("admin-1");
    let members = HashMap::from([(Selector::Role(Role::Admin), vec![admin.clone()])]);
    let plan = &alert.plan(&members, &HashMap::from([(admin, reachable())]), noon())[0];
    // SMS is already the rule's (now); push is the earlier step's.
    assert!(matches!(
        plan.decisions[&ChannelKind::Sms],
        Decision::Deliver {
            reason: Reason::Mandatory,
            defer_until: None,
            hold: None,
            ..
        }
    ));
    assert_eq!(
        plan.decisions[&ChannelKind::Push],
        Decision::Deliver {
            reason: Reason::Escalation,
            defer_until: Some(noon() + chrono::Duration::minutes(1)),
            digest: None,
            hold: Some(SeenCheck::Anyone),
        }
    );
    // A warning is not critical: no steps.
    let mut warning = EventKind::SystemAlert.example();
    warning["level"] = json!("warning");
    let quiet = table.route(&ValidatedEvent::parse_kind(EventKind::SystemAlert, warning).unwrap());
    assert!(quiet.deliveries.is_empty());

    let err = table_with_events_edit(
        r#"[events.points_added]"#,
        "[events.points_added]\nescalate = [{ after = \"5m\", to = \"{guestId}\", channels = [\"sms\"] }]",
    );
    assert!(err.contains("events.points_added.escalate"), "{err}");
    let err = table_with_events_edit(
        r#"critical_when = { level = ["critical"] }"#,
        "critical_when = { level = [\"critical\"] }\nescalate = [{ after = \"5m\", to = \"{guestId}\", channels = [\"sms\"] }]",
    );
    assert!(err.contains("escalate[0].to"), "{err}");
}

fn table_with_events_edit(from: &str, to: &str) -> String {
    assert!(DEFAULT_ROUTING.contains(from));
    RoutingTable::from_toml(&DEFAULT_ROUTING.replacen(from, to, 1))
        .unwrap_err()
        .to_string()
}
