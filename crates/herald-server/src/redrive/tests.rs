use clap::Parser;
use herald_core::{DeliveryId, EventId};
use herald_store::redrive::Cursor;

use super::*;
use crate::cli::{Cli, Command, DeliveriesCommand};

fn field(e: ValidationError) -> String {
    e.field
}

/// The flags of `herald deliveries list …`, as clap hands them over.
fn list_flags(args: &[&str]) -> (FilterInput, Option<String>, Option<String>) {
    let cli = Cli::try_parse_from(["herald", "deliveries", "list"].iter().chain(args))
        .expect("the command line parses");
    match cli.command {
        Some(Command::Deliveries {
            command:
                DeliveriesCommand::List {
                    filter,
                    limit,
                    cursor,
                    ..
                },
        }) => (filter, cursor, limit),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_status_means_failed_and_expired() {
    let filter = parse_filter(&FilterInput::default(), Purpose::List).unwrap();
    assert_eq!(filter.statuses, vec!["failed", "expired"]);
    let filter = parse_filter(&FilterInput::default(), Purpose::Redrive).unwrap();
    assert_eq!(filter.statuses, vec!["failed", "expired"]);
}

#[test]
fn the_cli_and_the_api_read_a_filter_the_same_way() {
    let (flags, cursor, limit) = list_flags(&[
        "--status",
        "sent, failed,sent",
        "--channel",
        "email",
        "--event",
        "points_added",
        "--event-id",
        "txn-1",
        "--from",
        "2026-11-30T12:00:00+03:00",
        "--to",
        "1796036400000",
        "--error",
        "550",
        "--limit",
        "20",
    ]);
    let mut query = FilterInput::default();
    for (name, value) in [
        ("status", "sent, failed,sent"),
        ("channel", "email"),
        ("event", "points_added"),
        ("eventId", "txn-1"),
        ("from", "2026-11-30T12:00:00+03:00"),
        ("to", "1796036400000"),
        ("error", "550"),
    ] {
        assert!(query.set(name, value.to_owned()), "{name}");
    }
    assert!(!query.set("colour", "red".into()));
    assert_eq!(flags, query);

    let request = list_request(&flags, cursor.as_deref(), limit.as_deref()).unwrap();
    assert_eq!(request.limit, 20);
    assert_eq!(request.cursor, None);
    let f = request.filter;
    assert_eq!(f.statuses, vec!["sent", "failed"]);
    assert_eq!(f.channel.as_deref(), Some("email"));
    assert_eq!(f.event.as_deref(), Some("points_added"));
    // An idempotency key names its event.
    assert_eq!(f.event_id, Some(EventId::from_key("txn-1").to_string()));
    assert_eq!(f.from, Some(1_796_029_200_000));
    assert_eq!(f.to, Some(1_796_036_400_000));
    assert_eq!(f.error.as_deref(), Some("550"));

    // A JSON body's filter may list states and give times as numbers.
    let body: FilterBody = serde_json::from_value(serde_json::json!({
        "status": ["failed"], "from": 5, "to": "1970-01-01T00:00:01Z", "eventId": "txn-1"
    }))
    .unwrap();
    let f = parse_filter(&body.into(), Purpose::Redrive).unwrap();
    assert_eq!(
        (f.statuses, f.from, f.to, f.event_id),
        (
            vec!["failed".to_owned()],
            Some(5),
            Some(1_000),
            Some(EventId::from_key("txn-1").to_string())
        )
    );
}

#[test]
fn bad_input_names_its_field() {
    let bad = |args: &[&str]| {
        let (filter, cursor, limit) = list_flags(args);
        field(list_request(&filter, cursor.as_deref(), limit.as_deref()).unwrap_err())
    };
    assert_eq!(bad(&["--status", "failed,lost"]), "status");
    assert_eq!(bad(&["--channel", "fax"]), "channel");
    assert_eq!(bad(&["--channel", "in_app"]), "channel");
    assert_eq!(bad(&["--event", "points_gifted"]), "event");
    assert_eq!(bad(&["--from", "yesterday"]), "from");
    assert_eq!(bad(&["--from", "2000", "--to", "1000"]), "to");
    assert_eq!(bad(&["--cursor", "not-a-cursor"]), "cursor");
    assert_eq!(bad(&["--limit", "0"]), "limit");
    assert_eq!(bad(&["--limit", "501"]), "limit");
    assert_eq!(bad(&["--limit", "many"]), "limit");
}

#[test]
fn a_redrive_takes_failed_and_expired_only_and_is_bounded() {
    let sent = FilterInput {
        status: Some("failed,sent".into()),
        ..FilterInput::default()
    };
    assert_eq!(
        field(selection(None, Some(&sent), None).unwrap_err()),
        "filter.status"
    );
    let any = FilterInput::default();
    assert_eq!(
        selection(None, Some(&any), None).unwrap(),
        Selection::Filter {
            filter: Box::new(parse_filter(&any, Purpose::Redrive).unwrap()),
            max: MAX_REDRIVE
        }
    );
    assert_eq!(
        field(selection(None, Some(&any), Some(1_001)).unwrap_err()),
        "max"
    );
    assert_eq!(
        field(selection(None, Some(&any), Some(0)).unwrap_err()),
        "max"
    );
    let to = FilterInput {
        from: Some("10".into()),
        to: Some("9".into()),
        ..FilterInput::default()
    };
    assert_eq!(
        field(selection(None, Some(&to), None).unwrap_err()),
        "filter.to"
    );

    let ids: Vec<String> = (0..=MAX_REDRIVE)
        .map(|_| DeliveryId::new().to_string())
        .collect();
    assert_eq!(field(selection(Some(&ids), None, None).unwrap_err()), "ids");
    assert!(matches!(
        selection(Some(&ids[..MAX_REDRIVE as usize]), None, None).unwrap(),
        Selection::Ids(list) if list.len() == MAX_REDRIVE as usize
    ));
    let typo = vec![ids[0].clone(), "nope".to_owned()];
    assert_eq!(
        field(selection(Some(&typo), None, None).unwrap_err()),
        "ids[1]"
    );
    assert_eq!(field(selection(Some(&[]), None, None).unwrap_err()), "ids");
    assert_eq!(field(selection(None, None, None).unwrap_err()), "ids");
    assert_eq!(
        field(selection(Some(&ids[..1]), Some(&any), None).unwrap_err()),
        "filter"
    );
}

#[test]
fn cursors_round_trip_and_strangers_are_refused() {
    let cursor = Cursor {
        updated_at: 1_796_036_400_123,
        id: DeliveryId::new().to_string(),
    };
    assert_eq!(decode_cursor(&encode_cursor(&cursor)).unwrap(), cursor);
    for stranger in ["", "42", "MTIz", "bm90OmFuLWlk"] {
        assert_eq!(
            field(decode_cursor(stranger).unwrap_err()),
            "cursor",
            "{stranger}"
        );
    }
}

#[test]
fn the_cli_takes_ids_or_filter_flags_for_a_retry() {
    let cli = Cli::try_parse_from([
        "herald",
        "deliveries",
        "retry",
        "--status",
        "failed",
        "--channel",
        "sms",
        "--max",
        "10",
    ])
    .unwrap();
    let Some(Command::Deliveries {
        command: DeliveriesCommand::Retry {
            ids, filter, max, ..
        },
    }) = cli.command
    else {
        panic!()
    };
    assert!(ids.is_empty());
    assert_eq!(max, Some(10));
    let Selection::Filter { filter, max } = selection(None, Some(&filter), max).unwrap() else {
        panic!()
    };
    assert_eq!((filter.channel.as_deref(), max), (Some("sms"), 10));
}
