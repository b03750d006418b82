//! Publishing: from a producer's envelopes to durable inbox entries and
//! pending deliveries.
//!
//! validate → route (the table) → look up recipients (the store) → plan
//! (preferences) → render inbox text (templates) → one transaction. A batch
//! is validated whole before anything is written, and written whole or not
//! at all; recipients and profiles are looked up once per batch, through
//! the store's directory cache, so a publish whose recipients are known
//! reads nothing from the database. Its one hop to the database is the
//! write, which concurrent publishes share (the store's group commit); an
//! address that `guest_registered` fills in is part of that write.
//!
//! After the transaction commits, every newly accepted event (not a
//! duplicate) is handed to the realtime hub for its rooms; the hub reaches
//! every node. An event with `sendAt` is written at once too (so its id is
//! taken), but its deliveries fall due at `sendAt`, and its inbox entries
//! and fan-out wait for its release ([`crate::schedule`]). Fan-out cannot fail the publish: the events are durable and
//! in the inbox already.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use herald_core::ids::MAX_KEY_LEN;
use herald_core::routing::{Decision, Profile, Route, Selector};
use herald_core::{
    ChannelKind, DeliveryId, EventId, Locale, NotificationId, SharedRouting, UserId,
    ValidatedEvent, ValidationError,
};
use herald_delivery::{Clock, InboxText, Queue, Templates};
use herald_realtime::{Hub, Outgoing};
use herald_store::{
    DeliveryStatus, EmailFill, Ingested, NewDelivery, NewEvent, NewNotification, Schedule, Store,
};
use serde::Deserialize;
use serde_json::Value;
use tracing::Instrument;

use crate::extract::from_value;
use crate::problem::ApiError;

/// What a producer sends: one event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    /// The idempotency key: the same id is one event, however often sent.
    #[serde(default)]
    id: Option<String>,
    event: String,
    data: Value,
    /// RFC 3339: deliver (and show in the inbox, and fan out) then.
    #[serde(default, rename = "sendAt")]
    send_at: Option<Value>,
}

/// What `sendAt` may be, relative to now.
#[derive(Debug, Clone, Copy)]
pub struct SendAtLimits {
    /// How far back a `sendAt` may be and still be sent at once.
    pub past_tolerance: chrono::Duration,
    /// How far ahead it may be.
    pub max_ahead: chrono::Duration,
}

impl Default for SendAtLimits {
    fn default() -> Self {
        SendAtLimits {
            past_tolerance: chrono::Duration::minutes(5),
            max_ahead: chrono::Duration::days(366),
        }
    }
}

impl SendAtLimits {
    /// The instant `raw` names, if later than `now`: `None` to send at once
    /// (absent, or a moment ago within the tolerance).
    fn check(
        &self,
        raw: Option<&Value>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ValidationError> {
        let raw = match raw {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(ValidationError::new(
                    "sendAt",
                    "must be an RFC 3339 date-time string such as 2026-12-24T09:00:00+03:00",
                ));
            }
        };
        let at = chrono::DateTime::parse_from_rfc3339(raw)
            .map_err(|_| {
                ValidationError::new(
                    "sendAt",
                    format!(
                        "`{raw}` is not an RFC 3339 date-time such as 2026-12-24T09:00:00+03:00"
                    ),
                )
            })?
            .with_timezone(&chrono::Utc);
        if at < now - self.past_tolerance {
            return Err(ValidationError::new(
                "sendAt",
                format!(
                    "is in the past by more than {} seconds",
                    self.past_tolerance.num_seconds()
                ),
            ));
        }
        if at > now + self.max_ahead {
            return Err(ValidationError::new(
                "sendAt",
                format!("is more than {} days ahead", self.max_ahead.num_days()),
            ));
        }
        Ok((at > now).then_some(at))
    }
}

/// Turns envelopes into stored events.
#[derive(Debug, Clone)]
pub struct Publisher {
    store: Store,
    /// The table in force; replaced whole when an admin changes it.
    routing: SharedRouting,
    templates: Arc<Templates>,
    queue: Queue,
    clock: Arc<dyn Clock>,
    /// Where accepted events fan out to sockets, when the gateway runs.
    fanout: Option<Hub>,
    send_at: SendAtLimits,
    /// Counts scheduled events.
    metrics: Option<Arc<crate::schedule::SchedulingMetrics>>,
}

/// One event, checked and routed, waiting to be written.
struct Prepared {
    id: EventId,
    key: Option<String>,
    event: ValidatedEvent,
    route: Route,
    /// `sendAt`, when later than now.
    send_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Publisher {
    pub fn new(
        store: Store,
        routing: SharedRouting,
        templates: Arc<Templates>,
        queue: Queue,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Publisher {
            store,
            routing,
            templates,
            queue,
            clock,
            fanout: None,
            send_at: SendAtLimits::default(),
            metrics: None,
        }
    }

    /// Checks `sendAt` against `limits`, and counts scheduled events into `metrics`.
    #[must_use]
    pub fn with_scheduling(
        mut self,
        limits: SendAtLimits,
        metrics: Arc<crate::schedule::SchedulingMetrics>,
    ) -> Self {
        self.send_at = limits;
        self.metrics = Some(metrics);
        self
    }

    /// Fans accepted events out through `hub` after they commit.
    #[must_use]
    pub fn with_fanout(mut self, hub: Hub) -> Self {
        self.fanout = Some(hub);
        self
    }

    /// Publishes envelopes (JSON values, so each error can name its item).
    /// `batch` says whether the caller sent an array, so errors read `[3].data.amount`
    /// rather than `data.amount`.
    #[tracing::instrument(
        name = "ingest",
        skip_all,
        fields(events = items.len(), batch, event_id = tracing::field::Empty, event = tracing::field::Empty)
    )]
    pub async fn publish(&self, items: Vec<Value>, batch: bool) -> Result<Vec<Ingested>, ApiError> {
        let now = self.clock.now();
        let prepared = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let prefix = if batch {
                    format!("[{i}]")
                } else {
                    String::new()
                };
                self.prepare(item, now)
                    .map_err(|e| ApiError::invalid(e.within(&prefix)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The ids that matter: on the span for one event, one line each
        // for a batch (its span says how many).
        if let [one] = prepared.as_slice() {
            let span = tracing::Span::current();
            span.record("event_id", tracing::field::display(&one.id));
            span.record("event", one.event.kind.as_str());
        } else {
            for p in &prepared {
                tracing::debug!(event_id = %p.id, event = p.event.kind.as_str(), "in the batch");
            }
        }

        // Deliveries continue this span's trace (when traces are on).
        let traceparent = herald_delivery::tracecontext::traceparent(&tracing::Span::current());
        let (events, outgoing) = self
            .plan(prepared, now, traceparent)
            .instrument(tracing::info_span!("route"))
            .await?;
        let persisted = self
            .store
            .ingest(&events)
            .instrument(tracing::info_span!("persist"))
            .await;
        let outcomes = persisted.map_err(|err| match err {
            herald_store::Error::IdempotencyConflict { index, .. } => {
                let field = if batch {
                    format!("[{index}].id")
                } else {
                    "id".to_owned()
                };
                ApiError::from(err).field(field)
            }
            other => other.into(),
        })?;
        if let Some(hub) = &self.fanout {
            // `outgoing` holds the events that fan out now (not the
            // scheduled ones), in batch order.
            let accepted: Vec<Outgoing> = events
                .iter()
                .zip(&outcomes)
                .filter(|(event, _)| event.schedule.is_none())
                .zip(outgoing)
                .filter(|((_, outcome), _)| matches!(outcome, Ingested::Accepted(_)))
                .map(|(_, out)| out)
                .collect();
            hub.publish(accepted).await;
        }
        if let Some(metrics) = &self.metrics {
            let scheduled = events
                .iter()
                .zip(&outcomes)
                .filter(|(e, o)| e.schedule.is_some() && matches!(o, Ingested::Accepted(_)))
                .count();
            metrics.scheduled.inc_by(scheduled as u64);
        }
        self.enqueue(&events, &outcomes)
            .instrument(tracing::info_span!("enqueue"))
            .await;
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, Ingested::Accepted(_)))
            .count();
        tracing::info!(
            accepted,
            duplicates = outcomes.len() - accepted,
            "published"
        );
        Ok(outcomes)
    }

    /// Routes, plans and renders prepared events into what the store
    /// writes, and what the hub fans out once they are written.
    async fn plan(
        &self,
        prepared: Vec<Prepared>,
        now: chrono::DateTime<chrono::Utc>,
        traceparent: Option<String>,
    ) -> Result<(Vec<NewEvent>, Vec<Outgoing>), ApiError> {
        let groups: Vec<Selector> = prepared
            .iter()
            .flat_map(|p| p.route.groups().cloned())
            .collect();
        let members = self.store.cached_members(&groups).await?;
        let users: BTreeSet<_> = prepared
            .iter()
            .flat_map(|p| p.route.users(&members))
            .collect();
        let mut profiles = self.store.cached_profiles(&users).await?;
        let fills: Vec<Option<EmailFill>> = prepared
            .iter()
            .map(|p| fill_contact(p, &mut profiles))
            .collect();

        let mut events = Vec::with_capacity(prepared.len());
        let mut outgoing = Vec::with_capacity(prepared.len());
        for (p, fill_email) in prepared.into_iter().zip(fills) {
            // A scheduled event is planned for its time: quiet hours then.
            let at = p.send_at.unwrap_or(now);
            let plans = p.route.plan(&members, &profiles, at);
            let mut rendered: HashMap<Locale, InboxText> = HashMap::new();
            let mut notifications = Vec::with_capacity(plans.len());
            for plan in plans {
                let deliveries: Vec<NewDelivery> = plan
                    .decisions
                    .iter()
                    .filter(|(c, _)| c.is_external())
                    .map(|(&channel, decision)| delivery(channel, decision))
                    .collect();
                if deliveries.is_empty() && !plan.in_inbox() {
                    continue;
                }
                let locale = profiles
                    .get(&plan.user)
                    .and_then(|p| p.contact.locale)
                    .unwrap_or(self.templates.default_locale());
                let text = match rendered.get(&locale) {
                    Some(text) => text.clone(),
                    None => {
                        let text = self
                            .templates
                            .render_inbox(p.event.kind, locale, &p.event.data)
                            .map_err(ApiError::internal)?;
                        rendered.insert(locale, text.clone());
                        text
                    }
                };
                notifications.push(NewNotification {
                    id: NotificationId::new(),
                    in_inbox: plan.in_inbox(),
                    recipient: plan.user,
                    title: text.title,
                    body: text.body,
                    deliveries,
                });
            }
            // A scheduled event fans out when it is released, not now.
            if self.fanout.is_some() && p.send_at.is_none() {
                outgoing.push(Outgoing {
                    event: p.event.kind.as_str().to_owned(),
                    event_id: p.id.to_string(),
                    rooms: p.route.rooms.clone(),
                    data: p.event.data.clone(),
                });
            }
            events.push(NewEvent {
                id: p.id,
                key: p.key,
                kind: p.event.kind,
                payload: Value::Object(p.event.data).to_string(),
                hash: p.event.hash,
                received_at: now.timestamp_millis(),
                traceparent: traceparent.clone(),
                notifications,
                schedule: p.send_at.map(|at| Schedule {
                    at: at.timestamp_millis(),
                    rooms: p.route.rooms.clone(),
                }),
                fill_email,
            });
        }
        Ok((events, outgoing))
    }

    /// Hands the new events' open deliveries to the queue. The events are
    /// already durable: if the queue is unreachable the sweeper enqueues
    /// them later, so a failure here is logged, not returned.
    async fn enqueue(&self, events: &[NewEvent], outcomes: &[Ingested]) {
        let mut due = Vec::new();
        let mut later = Vec::new();
        let fresh = events
            .iter()
            .zip(outcomes)
            .filter(|(_, o)| matches!(o, Ingested::Accepted(_)));
        for (event, d) in fresh.flat_map(|(e, _)| {
            e.notifications
                .iter()
                .flat_map(move |n| n.deliveries.iter().map(move |d| (e, d)))
        }) {
            match (d.status, d.next_attempt_at) {
                (DeliveryStatus::Pending, _) => match &event.schedule {
                    None => due.push(d.id),
                    Some(s) => later.push((d.id, s.at)),
                },
                (DeliveryStatus::Deferred, Some(at)) => later.push((d.id, at)),
                _ => {}
            }
        }
        if let Err(e) = self.queue.enqueue(&due).await {
            tracing::warn!(error = %e, deliveries = due.len(), "could not enqueue; the sweeper will");
        }
        let now = self.clock.now();
        for (id, at) in later {
            let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or(now);
            if let Err(e) = self.queue.schedule(id, at, now).await {
                tracing::warn!(error = %e, delivery_id = %id, "could not schedule; the sweeper will");
            }
        }
    }

    fn prepare(
        &self,
        item: Value,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Prepared, ValidationError> {
        if !item.is_object() {
            return Err(ValidationError::new(
                "",
                "an event is an object with `event` and `data`",
            ));
        }
        let envelope: Envelope = from_value(item)?;
        if let Some(key) = &envelope.id
            && (key.is_empty() || key.len() > MAX_KEY_LEN)
        {
            return Err(ValidationError::new(
                "id",
                format!("must be 1 to {MAX_KEY_LEN} characters"),
            ));
        }
        let send_at = self.send_at.check(envelope.send_at.as_ref(), now)?;
        let mut event = ValidatedEvent::parse(&envelope.event, envelope.data)?;
        event.stamp(send_at.unwrap_or(now).timestamp_millis());
        let route = self.routing.route(&event);
        Ok(Prepared {
            id: envelope
                .id
                .as_deref()
                .map_or_else(EventId::new, EventId::from_key),
            key: envelope.id,
            event,
            route,
            send_at,
        })
    }
}

/// `guest_registered` names the guest's email: it becomes their contact
/// address when Herald has none, before routing looks, so the welcome
/// email has somewhere to go. An address on file wins. Routing sees it in
/// `profiles` at once; the store writes it with the event, in the same
/// transaction (and only where the stored contact still has none).
fn fill_contact(p: &Prepared, profiles: &mut HashMap<UserId, Profile>) -> Option<EmailFill> {
    if p.event.kind != herald_core::EventKind::GuestRegistered {
        return None;
    }
    let guest = p.event.data.get("guestId").and_then(Value::as_str)?;
    // (The catalog has checked that it looks like an address.)
    let email = p.event.data.get("email").and_then(Value::as_str)?;
    let user = UserId(guest.to_owned());
    let profile = profiles.entry(user.clone()).or_default();
    if profile.contact.email.as_deref().is_none_or(str::is_empty) {
        profile.contact.email = Some(email.to_owned());
    }
    Some(EmailFill {
        user,
        email: email.to_owned(),
    })
}

fn delivery(channel: ChannelKind, decision: &Decision) -> NewDelivery {
    let digest_key = match *decision {
        Decision::Deliver {
            digest: Some(group),
            ..
        } => Some(group.key().to_owned()),
        _ => None,
    };
    let seen_check = match *decision {
        Decision::Deliver {
            hold: Some(check), ..
        } => Some(check.as_str().to_owned()),
        _ => None,
    };
    let (status, next_attempt_at) = match *decision {
        Decision::Deliver {
            defer_until: None, ..
        } => (DeliveryStatus::Pending, None),
        Decision::Deliver {
            defer_until: Some(t),
            ..
        } => (DeliveryStatus::Deferred, Some(t.timestamp_millis())),
        Decision::Suppress { .. } => (DeliveryStatus::Suppressed, None),
    };
    NewDelivery {
        id: DeliveryId::new(),
        channel,
        status,
        reason: decision.reason().as_str().to_owned(),
        next_attempt_at,
        digest_key,
        seen_check,
    }
}
