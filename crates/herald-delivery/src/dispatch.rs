//! One delivery attempt, start to finish.
//!
//! claim (compare-and-set, with a lease) → decide again with today's
//! preferences, contact details and clock → render in the recipient's
//! locale → send through the channel → record the outcome (again by
//! compare-and-set) → on failure, schedule the retry and tell the
//! recipient's `user:` room and `admin:events` with `delivery_failed`.
//!
//! The queue only says "look at delivery X"; everything the attempt needs
//! is read from the database, so a stale, duplicated or replayed job does no
//! harm: it finds nothing to claim.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::channel::{Address, Receipt};
use herald_core::realtime::{Broadcast, RealtimeEvent};
use herald_core::routing::Decision;
use herald_core::{
    Channel, ChannelError, ChannelKind, DeliveryId, EventId, EventKind, Reason, RenderedMessage,
    RoutingTable, ValidatedEvent,
};
use herald_store::deliveries::{Claimed, Finish};
use herald_store::{DeviceKind, Store};
use serde_json::json;

use crate::clock::Clock;
use crate::metrics::DeliveryMetrics;
use crate::queue::Queue;
use crate::retry::RetryPolicy;
use crate::templates::Templates;
use crate::{Error, sms};

/// The transports, one per channel kind.
pub type Channels = HashMap<ChannelKind, Arc<dyn Channel>>;

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to do: already handled, in flight elsewhere, or not yet due.
    Skipped,
    Sent {
        provider_message_id: Option<String>,
    },
    /// Preferences or contact details say no, now.
    Suppressed {
        reason: String,
    },
    /// Quiet hours began since it was scheduled.
    Deferred {
        until: DateTime<Utc>,
    },
    Retrying {
        attempt: u32,
        next: DateTime<Utc>,
        reason: String,
    },
    Failed {
        attempt: u32,
        reason: String,
    },
    /// The attempt ran but its lease had run out and another worker took the
    /// delivery over; this attempt's result was not recorded.
    LeaseLost,
}

/// Everything an attempt needs. Shared by all workers of a process.
#[derive(Debug)]
pub struct Dispatcher {
    pub store: Store,
    pub routing: Arc<RoutingTable>,
    pub templates: Arc<Templates>,
    pub channels: Channels,
    pub retry: RetryPolicy,
    /// How long a claim lasts; an attempt that outlives it may be repeated.
    pub lease: Duration,
    pub clock: Arc<dyn Clock>,
    /// Where `delivery_failed` goes; none for a worker without realtime.
    pub broadcast: Option<Arc<dyn Broadcast>>,
    /// Where retries and deferrals are scheduled.
    pub queue: Queue,
    pub metrics: Arc<DeliveryMetrics>,
}

impl Dispatcher {
    /// Runs one attempt of delivery `id`, if it is due and free.
    #[tracing::instrument(skip_all, fields(delivery = %id))]
    pub async fn process(&self, id: DeliveryId) -> Result<Outcome, Error> {
        let now = self.clock.now();
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let Some(claim) = self
            .store
            .claim_delivery(id, now.timestamp_millis(), lease_ms)
            .await?
        else {
            // A job can fire before its delivery is due: the Redis queue
            // counts whole seconds, and another node's clock may run ahead.
            // Dropping it would leave the retry to the sweeper; ask again
            // when it is due.
            if let Some(at) = self.store.due_later(id, now.timestamp_millis()).await? {
                self.schedule(id, DateTime::from_timestamp_millis(at).unwrap_or(now))
                    .await;
            }
            return Ok(Outcome::Skipped);
        };
        let started = std::time::Instant::now();
        let attempt = u32::try_from(claim.attempt).unwrap_or(u32::MAX);
        let outcome = match self.attempt(&claim, now).await {
            Ok(outcome) => outcome,
            Err(AttemptError::Channel(err)) => self.failed(&claim, attempt, err, now),
            Err(AttemptError::Store(err)) => return Err(err),
        };
        let finish = match &outcome {
            Outcome::Sent {
                provider_message_id,
            } => Finish::Sent {
                provider_message_id: provider_message_id.clone(),
            },
            Outcome::Suppressed { reason } => Finish::Suppressed {
                reason: reason.clone(),
            },
            Outcome::Deferred { until } => Finish::Deferred {
                until: until.timestamp_millis(),
            },
            Outcome::Retrying { next, reason, .. } => Finish::Retry {
                error: reason.clone(),
                next_attempt_at: next.timestamp_millis(),
            },
            Outcome::Failed { reason, .. } => Finish::Failed {
                error: reason.clone(),
            },
            Outcome::Skipped | Outcome::LeaseLost => unreachable!("not produced by an attempt"),
        };
        let finished_at = self.clock.now().timestamp_millis();
        if !self
            .store
            .finish_delivery(id, claim.attempt, &finish, finished_at)
            .await?
        {
            tracing::warn!(
                attempt,
                "lease ran out before the attempt finished; its result is dropped"
            );
            self.metrics
                .record(&claim.channel, &Outcome::LeaseLost, started.elapsed());
            return Ok(Outcome::LeaseLost);
        }
        self.metrics
            .record(&claim.channel, &outcome, started.elapsed());
        self.after(&claim, &outcome).await;
        Ok(outcome)
    }

    /// Decide, render, send.
    async fn attempt(&self, claim: &Claimed, now: DateTime<Utc>) -> Result<Outcome, AttemptError> {
        let channel = ChannelKind::parse(&claim.channel)
            .filter(|c| c.is_external())
            .ok_or_else(|| {
                ChannelError::permanent(format!("`{}` is not a delivery channel", claim.channel))
            })?;
        let event = ValidatedEvent::parse_kind(claim.kind, claim.payload.clone()).map_err(|e| {
            ChannelError::permanent(format!("the stored event no longer validates: {e}"))
        })?;
        let route = self.routing.route(&event);
        let users = BTreeSet::from([claim.recipient.clone()]);
        let profile = self
            .store
            .profiles(&users)
            .await?
            .remove(&claim.recipient)
            .unwrap_or_default();
        let scheduled = Reason::parse(&claim.reason).unwrap_or(Reason::RoutingDefault);
        match route.recheck(channel, scheduled, &profile, now) {
            None => {
                return Ok(Outcome::Suppressed {
                    reason: "no_longer_routed".to_owned(),
                });
            }
            Some(Decision::Suppress { reason }) => {
                return Ok(Outcome::Suppressed {
                    reason: reason.as_str().to_owned(),
                });
            }
            Some(Decision::Deliver {
                defer_until: Some(until),
                ..
            }) => return Ok(Outcome::Deferred { until }),
            Some(Decision::Deliver {
                defer_until: None, ..
            }) => {}
        }

        let addresses = self.addresses(claim, channel, &profile.contact).await?;
        if addresses.is_empty() {
            return Ok(Outcome::Suppressed {
                reason: Reason::NoContact.as_str().to_owned(),
            });
        }
        let transport = self.channels.get(&channel).ok_or_else(|| {
            ChannelError::permanent(format!("no transport is configured for {channel}"))
        })?;
        let locale = profile
            .contact
            .locale
            .unwrap_or(self.templates.default_locale());
        let rendered = self
            .templates
            .render(claim.kind, channel, locale, &event.data)
            .map_err(|e| ChannelError::permanent(e.to_string()))?;
        if channel == ChannelKind::Sms {
            let s = sms::segments(&rendered.text);
            tracing::debug!(encoding = ?s.encoding, segments = s.count, "sms");
        }
        let data = json!({
            "event": claim.kind,
            "eventId": claim.event_id,
            "notificationId": claim.notification_id,
        });
        let mut receipts: Vec<Receipt> = Vec::new();
        let mut errors: Vec<ChannelError> = Vec::new();
        let many = addresses.len() > 1;
        for (i, to) in addresses.into_iter().enumerate() {
            let message = RenderedMessage {
                channel,
                to,
                subject: rendered.subject.clone(),
                text: rendered.text.clone(),
                html: rendered.html.clone(),
                data: data.clone(),
                // Stable across retries, so providers that dedupe can.
                idempotency_key: if many {
                    format!("{}.{i}", claim.id)
                } else {
                    claim.id.to_string()
                },
            };
            match transport.send(&message).await {
                Ok(receipt) => receipts.push(receipt),
                Err(err) => {
                    if let ChannelError::Gone { reason } = &err {
                        self.forget(claim, &message.to, reason).await?;
                    }
                    errors.push(err);
                }
            }
        }
        if !receipts.is_empty() {
            let ids: Vec<String> = receipts
                .into_iter()
                .filter_map(|r| r.provider_message_id)
                .collect();
            return Ok(Outcome::Sent {
                provider_message_id: (!ids.is_empty()).then(|| ids.join(",")),
            });
        }
        Err(AttemptError::Channel(combine(errors)))
    }

    /// Where the message goes: the contact's address, or every push device.
    async fn addresses(
        &self,
        claim: &Claimed,
        channel: ChannelKind,
        contact: &herald_core::preferences::Contact,
    ) -> Result<Vec<Address>, AttemptError> {
        Ok(match channel {
            ChannelKind::Email => contact
                .email
                .iter()
                .map(|e| Address::Email { email: e.clone() })
                .collect(),
            ChannelKind::Sms => contact
                .phone
                .iter()
                .map(|p| Address::Phone { phone: p.clone() })
                .collect(),
            _ => self
                .store
                .devices(&claim.recipient)
                .await?
                .into_iter()
                .filter_map(|d| match d.kind {
                    DeviceKind::Fcm => Some(Address::Fcm { token: d.token }),
                    DeviceKind::Webpush => {
                        let sub = d.subscription?;
                        Some(Address::WebPush {
                            endpoint: d.token,
                            p256dh: sub["keys"]["p256dh"].as_str()?.to_owned(),
                            auth: sub["keys"]["auth"].as_str()?.to_owned(),
                        })
                    }
                })
                .collect(),
        })
    }

    /// The provider says a push address no longer exists: remove the
    /// device, so no later message tries it. Email and phone are the
    /// user's contact details and stay; the delivery just fails.
    async fn forget(
        &self,
        claim: &Claimed,
        to: &Address,
        reason: &str,
    ) -> Result<(), AttemptError> {
        let token = match to {
            Address::Fcm { token } => token,
            Address::WebPush { endpoint, .. } => endpoint,
            Address::Email { .. } | Address::Phone { .. } => return Ok(()),
        };
        if let Some(device) = self
            .store
            .delete_device_by_token(&claim.recipient, token)
            .await?
        {
            tracing::info!(%device, %reason, "push address gone; device removed");
        }
        Ok(())
    }

    /// A failed send: retry later, or give up.
    fn failed(
        &self,
        claim: &Claimed,
        attempt: u32,
        err: ChannelError,
        now: DateTime<Utc>,
    ) -> Outcome {
        match err {
            ChannelError::Transient {
                reason,
                retry_after,
            } if !self.retry.exhausted(attempt) => {
                let delay = self.retry.delay(attempt, retry_after, &mut rand::rng());
                let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                tracing::info!(attempt, channel = %claim.channel, %reason, retry_in_ms = delay.as_millis() as u64, "delivery failed, will retry");
                Outcome::Retrying {
                    attempt,
                    next,
                    reason,
                }
            }
            ChannelError::Transient { reason, .. } => {
                tracing::warn!(attempt, channel = %claim.channel, %reason, "delivery failed, giving up");
                Outcome::Failed {
                    attempt,
                    reason: format!("gave up after {attempt} attempts: {reason}"),
                }
            }
            ChannelError::Permanent { reason } | ChannelError::Gone { reason } => {
                tracing::warn!(attempt, channel = %claim.channel, %reason, "delivery failed permanently");
                Outcome::Failed { attempt, reason }
            }
        }
    }

    /// What follows a recorded outcome: schedule the next look, report failures.
    async fn after(&self, claim: &Claimed, outcome: &Outcome) {
        let (next, attempt, reason) = match outcome {
            Outcome::Deferred { until } => {
                self.schedule(claim.id, *until).await;
                return;
            }
            Outcome::Retrying {
                attempt,
                next,
                reason,
            } => {
                self.schedule(claim.id, *next).await;
                (Some(*next), *attempt, reason)
            }
            Outcome::Failed { attempt, reason } => (None, *attempt, reason),
            _ => return,
        };
        let Some(broadcast) = &self.broadcast else {
            return;
        };
        let payload = json!({
            "notificationId": claim.notification_id,
            "recipient": claim.recipient,
            "channel": claim.channel,
            "reason": reason,
            "retryCount": attempt,
            "nextRetry": next.map(|t| t.timestamp_millis()),
            "timestamp": self.clock.now().timestamp_millis(),
        });
        match ValidatedEvent::parse_kind(EventKind::DeliveryFailed, payload) {
            Ok(event) => {
                let rooms = self.routing.route(&event).rooms;
                broadcast.broadcast(RealtimeEvent {
                    id: EventId::new(),
                    kind: EventKind::DeliveryFailed,
                    rooms,
                    data: event.data,
                });
            }
            Err(e) => tracing::error!(error = %e, "delivery_failed did not validate"),
        }
    }

    async fn schedule(&self, id: DeliveryId, at: DateTime<Utc>) {
        // The row already says when; if the queue is unreachable the
        // sweeper finds the delivery once it falls due.
        if let Err(e) = self.queue.schedule(id, at, self.clock.now()).await {
            tracing::warn!(error = %e, delivery = %id, "could not schedule the next attempt; the sweeper will");
        }
    }
}

/// Why an attempt stopped short of an outcome of its own.
enum AttemptError {
    /// The send (or what it needs) failed: an outcome follows from the error.
    Channel(ChannelError),
    /// The database failed: the claim stays until its lease runs out.
    Store(Error),
}

impl From<ChannelError> for AttemptError {
    fn from(e: ChannelError) -> Self {
        AttemptError::Channel(e)
    }
}

impl From<herald_store::Error> for AttemptError {
    fn from(e: herald_store::Error) -> Self {
        AttemptError::Store(Error::Store(e))
    }
}

/// Several devices failed: transient if any was (the longest Retry-After
/// wins), else the first permanent reason.
fn combine(errors: Vec<ChannelError>) -> ChannelError {
    let mut transient: Option<(String, Option<Duration>)> = None;
    let mut permanent: Option<String> = None;
    for err in errors {
        match err {
            ChannelError::Transient {
                reason,
                retry_after,
            } => {
                let after = transient.as_ref().and_then(|t| t.1).max(retry_after);
                let reason = transient.map_or(reason, |t| t.0);
                transient = Some((reason, after));
            }
            ChannelError::Permanent { reason } | ChannelError::Gone { reason } => {
                permanent.get_or_insert(reason);
            }
        }
    }
    match (transient, permanent) {
        (Some((reason, retry_after)), _) => ChannelError::Transient {
            reason,
            retry_after,
        },
        (None, Some(reason)) => ChannelError::Permanent { reason },
        (None, None) => ChannelError::permanent("no address to send to"),
    }
}
