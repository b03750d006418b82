//! Re-driving failed and expired deliveries, shared by the admin REST API
//! (`routes::deliveries`) and the CLI (`herald deliveries …`): one parser
//! for filters, cursors and bounds, so both refuse the same input with the
//! same field named, and one path from a selection to the queue.
//!
//! A re-drive is bounded: at most [`MAX_REDRIVE`] deliveries per call, by
//! id or by filter. A filter that matches more than the call's `max`
//! changes nothing; the caller narrows it or raises `max`. What was moved
//! is handed to the queue after the database has committed; if the queue
//! is unreachable the sweeper finds the deliveries (due, never enqueued).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, ValidationError};
use herald_delivery::Queue;
use herald_store::Store;
use herald_store::redrive::{
    Cursor, DELIVERY_STATES, DeliveryFilter, RETRYABLE_STATES, RedriveReport,
};
use serde::Deserialize;

use crate::extract::page_limit;

/// Most deliveries one re-drive may move.
pub const MAX_REDRIVE: u32 = 1_000;
/// Page size of the list when none is asked for.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page of the list.
pub const MAX_LIMIT: u32 = 500;

/// A filter as given, every value as text: from a query string, a JSON
/// body or command-line flags. [`parse_filter`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct FilterInput {
    /// Delivery states, comma-separated (default: failed,expired).
    #[arg(long)]
    pub status: Option<String>,
    /// email, sms or push.
    #[arg(long)]
    pub channel: Option<String>,
    /// The provider of the last attempt (smtp, sendgrid, twilio, fcm, …).
    #[arg(long)]
    pub provider: Option<String>,
    /// The routing reason, exactly (routing_default, mandatory, …).
    #[arg(long)]
    pub reason: Option<String>,
    /// Text the last error contains (any case).
    #[arg(long)]
    pub error: Option<String>,
    /// The recipient's user id.
    #[arg(long)]
    pub recipient: Option<String>,
    /// The event's name (points_added, …).
    #[arg(long)]
    pub event: Option<String>,
    /// The event's id, or the idempotency key it was published with.
    #[arg(long)]
    pub event_id: Option<String>,
    /// Last changed at or after: RFC 3339 or epoch milliseconds.
    #[arg(long)]
    pub from: Option<String>,
    /// Last changed at or before: RFC 3339 or epoch milliseconds.
    #[arg(long)]
    pub to: Option<String>,
}

impl FilterInput {
    /// Whether any value was given.
    pub fn is_empty(&self) -> bool {
        *self == FilterInput::default()
    }

    /// Sets the value of API field `name` (`eventId`, not `event_id`);
    /// `false` if there is no such field.
    pub fn set(&mut self, name: &str, value: String) -> bool {
        let slot = match name {
            "status" => &mut self.status,
            "channel" => &mut self.channel,
            "provider" => &mut self.provider,
            "reason" => &mut self.reason,
            "error" => &mut self.error,
            "recipient" => &mut self.recipient,
            "event" => &mut self.event,
            "eventId" => &mut self.event_id,
            "from" => &mut self.from,
            "to" => &mut self.to,
            _ => return false,
        };
        *slot = Some(value);
        true
    }
}

/// A filter in a JSON body: `status` may be a list, times may be numbers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterBody {
    status: Option<OneOrMany>,
    channel: Option<String>,
    provider: Option<String>,
    reason: Option<String>,
    error: Option<String>,
    recipient: Option<String>,
    event: Option<String>,
    event_id: Option<String>,
    from: Option<TextOrNumber>,
    to: Option<TextOrNumber>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Number(i64),
    Text(String),
}

impl TextOrNumber {
    fn text(self) -> String {
        match self {
            TextOrNumber::Number(n) => n.to_string(),
            TextOrNumber::Text(s) => s,
        }
    }
}

impl From<FilterBody> for FilterInput {
    fn from(body: FilterBody) -> Self {
        FilterInput {
            status: body.status.map(|s| match s {
                OneOrMany::One(s) => s,
                OneOrMany::Many(list) => list.join(","),
            }),
            channel: body.channel,
            provider: body.provider,
            reason: body.reason,
            error: body.error,
            recipient: body.recipient,
            event: body.event,
            event_id: body.event_id,
            from: body.from.map(TextOrNumber::text),
            to: body.to.map(TextOrNumber::text),
        }
    }
}

/// What the filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Listing: any delivery state.
    List,
    /// Re-driving: failed and expired only.
    Redrive,
}

/// Checks a filter. Errors name the field as the API spells it (`status`,
/// `channel`, `eventId`, `to`, …). With no `status`, failed and expired.
pub fn parse_filter(
    input: &FilterInput,
    purpose: Purpose,
) -> Result<DeliveryFilter, ValidationError> {
    let given = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let mut statuses: Vec<String> = Vec::new();
    for s in given(&input.status).iter().flat_map(|s| s.split(',')) {
        let s = s.trim();
        if s.is_empty() || statuses.iter().any(|t| t == s) {
            continue;
        }
        if !DELIVERY_STATES.contains(&s) {
            return Err(ValidationError::new(
                "status",
                format!(
                    "`{s}` is not a delivery state ({})",
                    DELIVERY_STATES.join(", ")
                ),
            ));
        }
        if purpose == Purpose::Redrive && !RETRYABLE_STATES.contains(&s) {
            return Err(ValidationError::new(
                "status",
                format!("`{s}`: only failed and expired deliveries can be re-driven"),
            ));
        }
        statuses.push(s.to_owned());
    }
    if statuses.is_empty() {
        statuses = RETRYABLE_STATES.iter().map(|s| (*s).to_owned()).collect();
    }
    let channel = given(&input.channel)
        .map(|c| match ChannelKind::parse(&c) {
            Some(kind) if kind.is_external() => Ok(c),
            _ => Err(ValidationError::new(
                "channel",
                format!("`{c}` is not a delivery channel (email, sms, push)"),
            )),
        })
        .transpose()?;
    let event = given(&input.event)
        .map(|e| {
            EventKind::parse(&e).map(|_| e.clone()).ok_or_else(|| {
                ValidationError::new("event", format!("`{e}` is not an event of the catalog"))
            })
        })
        .transpose()?;
    let from = given(&input.from)
        .map(|t| parse_time("from", &t))
        .transpose()?;
    let to = given(&input.to).map(|t| parse_time("to", &t)).transpose()?;
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        return Err(ValidationError::new("to", "is before `from`"));
    }
    Ok(DeliveryFilter {
        statuses,
        channel,
        provider: given(&input.provider),
        reason: given(&input.reason),
        error: given(&input.error),
        recipient: given(&input.recipient),
        event,
        // An idempotency key names its event as well as the event's id does.
        event_id: given(&input.event_id).map(|k| EventId::from_key(&k).to_string()),
        from,
        to,
    })
}

/// An instant as RFC 3339 (`2026-11-30T12:00:00Z`) or epoch milliseconds.
pub fn parse_time(field: &str, value: &str) -> Result<i64, ValidationError> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ValidationError::new(
                field,
                format!("`{value}` is not an RFC 3339 time or epoch milliseconds"),
            )
        })
}

/// The text a page's cursor travels as.
pub fn encode_cursor(cursor: &Cursor) -> String {
    encode_position(cursor.updated_at, &cursor.id)
}

/// A cursor this API returned, or a `cursor` error.
pub fn decode_cursor(text: &str) -> Result<Cursor, ValidationError> {
    let (updated_at, id) = decode_position(text)?;
    Ok(Cursor { updated_at, id })
}

/// A position in a newest-first admin list (a time, and the row's uuid
/// breaking ties) as the opaque text its `cursor` travels as; the
/// deliveries' and the audit log's lists share it.
pub fn encode_position(at: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{at}:{id}"))
}

/// A position [`encode_position`] wrote, or a `cursor` error.
pub fn decode_position(text: &str) -> Result<(i64, String), ValidationError> {
    let bad = || ValidationError::new("cursor", "is not a cursor this API returned");
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = raw.split_once(':').ok_or_else(bad)?;
    let at = at.parse().map_err(|_| bad())?;
    let id: uuid::Uuid = id.parse().map_err(|_| bad())?;
    Ok((at, id.to_string()))
}

/// A page of the list to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListRequest {
    pub filter: DeliveryFilter,
    pub cursor: Option<Cursor>,
    pub limit: u32,
}

/// Checks a list request: the filter, `cursor` and `limit` (1 to [`MAX_LIMIT`]).
pub fn list_request(
    filter: &FilterInput,
    cursor: Option<&str>,
    limit: Option<&str>,
) -> Result<ListRequest, ValidationError> {
    let filter = parse_filter(filter, Purpose::List)?;
    let cursor = cursor
        .filter(|c| !c.trim().is_empty())
        .map(decode_cursor)
        .transpose()?;
    let limit = match limit.map(str::trim).filter(|l| !l.is_empty()) {
        None => DEFAULT_LIMIT,
        Some(l) => page_limit(l, MAX_LIMIT)?,
    };
    Ok(ListRequest {
        filter,
        cursor,
        limit,
    })
}

/// Which deliveries to re-drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Ids(Vec<DeliveryId>),
    /// What `filter` matches, refused if more than `max`.
    Filter {
        filter: Box<DeliveryFilter>,
        max: u32,
    },
}

/// Checks a re-drive request: `ids` (at most [`MAX_REDRIVE`], each a
/// delivery id) or a filter with `max` (1 to [`MAX_REDRIVE`], default
/// [`MAX_REDRIVE`]), not both. Filter errors are named under `filter`.
pub fn selection(
    ids: Option<&[String]>,
    filter: Option<&FilterInput>,
    max: Option<i64>,
) -> Result<Selection, ValidationError> {
    match (ids, filter) {
        (Some(_), Some(_)) => Err(ValidationError::new(
            "filter",
            "give `ids` or `filter`, not both",
        )),
        (None, None) => Err(ValidationError::new("ids", "give `ids` or `filter`")),
        (Some(ids), None) => {
            if max.is_some() {
                return Err(ValidationError::new("max", "applies to a `filter` only"));
            }
            if ids.is_empty() {
                return Err(ValidationError::new("ids", "is empty"));
            }
            if ids.len() > MAX_REDRIVE as usize {
                return Err(ValidationError::new(
                    "ids",
                    format!("{} ids: at most {MAX_REDRIVE} per re-drive", ids.len()),
                ));
            }
            let parsed = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    id.trim().parse().map_err(|_| {
                        ValidationError::new(
                            format!("ids[{i}]"),
                            format!("`{id}` is not a delivery id"),
                        )
                    })
                })
                .collect::<Result<Vec<DeliveryId>, _>>()?;
            Ok(Selection::Ids(parsed))
        }
        (None, Some(filter)) => {
            let max = match max {
                None => MAX_REDRIVE,
                Some(m) => u32::try_from(m)
                    .ok()
                    .filter(|m| (1..=MAX_REDRIVE).contains(m))
                    .ok_or_else(|| {
                        ValidationError::new("max", format!("must be 1 to {MAX_REDRIVE}"))
                    })?,
            };
            let filter = parse_filter(filter, Purpose::Redrive).map_err(|e| e.within("filter"))?;
            Ok(Selection::Filter {
                filter: Box::new(filter),
                max,
            })
        }
    }
}

/// Why a re-drive did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The selection is refused (a filter matching more than `max`).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("storage: {0}")]
    Store(#[from] herald_store::Error),
}

/// Re-drives `selection` as `actor` at `now` (epoch ms), then hands what
/// moved to `queue`. A queue failure is logged, not returned: the
/// deliveries are committed as due and the sweeper enqueues them.
#[tracing::instrument(skip_all, fields(actor = %actor))]
pub async fn redrive(
    store: &Store,
    queue: &Queue,
    selection: &Selection,
    actor: &str,
    now: i64,
) -> Result<RedriveReport, RedriveError> {
    let ids = match selection {
        Selection::Ids(ids) => ids.clone(),
        Selection::Filter { filter, max } => {
            let ids = store.matching_deliveries(filter, max + 1).await?;
            if ids.len() > *max as usize {
                let count = store.count_deliveries(filter).await?;
                return Err(ValidationError::new(
                    "filter",
                    format!(
                        "matches {count} deliveries, more than max ({max}): narrow it or raise max (at most {MAX_REDRIVE})"
                    ),
                )
                .into());
            }
            ids
        }
    };
    let report = store.redrive(&ids, actor, now).await?;
    if let Err(e) = queue.enqueue(&report.requeued).await {
        tracing::warn!(error = %e, deliveries = report.requeued.len(), "could not enqueue re-driven deliveries; the sweeper will");
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
