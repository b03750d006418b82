//! Publishing: from a producer's envelopes to durable inbox entries and
//! pending deliveries.
//!
//! validate → route (the table) → look up recipients (the store) → plan
//! (preferences) → render inbox text (templates) → one transaction. A batch
//! is validated whole before anything is written, and written whole or not
//! at all; recipients and profiles are looked up once per batch.
//!
//! After the transaction commits, every newly accepted event (not a
//! duplicate) is handed to the realtime hub for its rooms; the hub reaches
//! every node. Fan-out cannot fail the publish: the events are durable and
//! in the inbox already.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use herald_core::ids::MAX_KEY_LEN;
use herald_core::routing::{Decision, Route, Selector};
use herald_core::{
    ChannelKind, DeliveryId, EventId, Locale, NotificationId, RoutingTable, ValidatedEvent,
    ValidationError,
};
use herald_delivery::{Clock, InboxText, Queue, Templates};
use herald_realtime::{Hub, Outgoing};
use herald_store::{DeliveryStatus, Ingested, NewDelivery, NewEvent, NewNotification, Store};
use serde::Deserialize;
use serde_json::Value;

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
}

/// Turns envelopes into stored events.
#[derive(Debug, Clone)]
pub struct Publisher {
    store: Store,
    routing: Arc<RoutingTable>,
    templates: Arc<Templates>,
    queue: Queue,
    clock: Arc<dyn Clock>,
    /// Where accepted events fan out to sockets, when the gateway runs.
    fanout: Option<Hub>,
}

/// One event, checked and routed, waiting to be written.
struct Prepared {
    id: EventId,
    key: Option<String>,
    event: ValidatedEvent,
    route: Route,
}

impl Publisher {
    pub fn new(
        store: Store,
        routing: Arc<RoutingTable>,
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
        }
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
                self.prepare(item, now.timestamp_millis())
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

        self.fill_contacts(&prepared).await?;
        let groups: Vec<Selector> = prepared
            .iter()
            .flat_map(|p| p.route.groups().cloned())
            .collect();
        let members = self.store.members(&groups).await?;
        let users: BTreeSet<_> = prepared
            .iter()
            .flat_map(|p| p.route.users(&members))
            .collect();
        let profiles = self.store.profiles(&users).await?;

        let mut events = Vec::with_capacity(prepared.len());
        let mut outgoing = Vec::with_capacity(prepared.len());
        for p in prepared {
            let plans = p.route.plan(&members, &profiles, now);
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
            if self.fanout.is_some() {
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
                notifications,
            });
        }
        let outcomes = self.store.ingest(&events).await.map_err(|err| match err {
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
            let accepted: Vec<Outgoing> = outcomes
                .iter()
                .zip(outgoing)
                .filter(|(outcome, _)| matches!(outcome, Ingested::Accepted(_)))
                .map(|(_, out)| out)
                .collect();
            hub.publish(accepted).await;
        }
        self.enqueue(&events, &outcomes).await;
        Ok(outcomes)
    }

    /// `guest_registered` names the guest's email: it becomes their
    /// contact address when Herald has none, before routing looks, so the
    /// welcome email has somewhere to go. An address on file wins.
    async fn fill_contacts(&self, prepared: &[Prepared]) -> Result<(), ApiError> {
        for p in prepared {
            if p.event.kind != herald_core::EventKind::GuestRegistered {
                continue;
            }
            let (Some(guest), Some(email)) = (
                p.event.data.get("guestId").and_then(Value::as_str),
                p.event.data.get("email").and_then(Value::as_str),
            ) else {
                continue;
            };
            // (The catalog has checked that it looks like an address.)
            self.store
                .fill_contact_email(&herald_core::UserId(guest.to_owned()), email)
                .await?;
        }
        Ok(())
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
        for d in fresh
            .flat_map(|(e, _)| &e.notifications)
            .flat_map(|n| &n.deliveries)
        {
            match (d.status, d.next_attempt_at) {
                (DeliveryStatus::Pending, _) => due.push(d.id),
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
                tracing::warn!(error = %e, delivery = %id, "could not schedule; the sweeper will");
            }
        }
    }

    fn prepare(&self, item: Value, now_ms: i64) -> Result<Prepared, ValidationError> {
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
        let mut event = ValidatedEvent::parse(&envelope.event, envelope.data)?;
        event.stamp(now_ms);
        let route = self.routing.route(&event);
        Ok(Prepared {
            id: envelope
                .id
                .as_deref()
                .map_or_else(EventId::new, EventId::from_key),
            key: envelope.id,
            event,
            route,
        })
    }
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
