//! Delivery attempts, a batch at a time.
//!
//! claim many (one statement, each with a lease) → read what they need in
//! one query per kind (profiles, devices) → per delivery, at most
//! `concurrency` at once: expire if its category says so, decide again with
//! today's preferences, contact details and clock, render in the
//! recipient's locale, send through the channel's provider chain → record
//! the outcome with its trace (compare-and-set, group commit) → on failure,
//! schedule the retry and tell the recipient's `user:` room and
//! `admin:events` with `delivery_failed`.
//!
//! Smart delivery sits in the same attempt (see `herald_core::smart`):
//! a held delivery whose event was read meanwhile ends `skipped` (`seen`);
//! a delivery headed for a digest folds the rest of its digest in (or, if
//! another delivery carries that digest, is handed back to it) and sends one
//! message for all of them; a send over its category's throttle goes into the
//! next digest or ends `throttled`.
//!
//! The queue only says "look at these deliveries"; everything an attempt
//! needs is read from the database, so a stale, duplicated or replayed job
//! does no harm: it finds nothing to claim.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use herald_core::channel::Address;
use herald_core::realtime::{Broadcast, RealtimeEvent};
use herald_core::routing::{Decision, Profile};
use herald_core::smart::{DigestGroup, Overflow};
use herald_core::{
    ChannelError, ChannelKind, DeliveryId, EventId, EventKind, Reason, RenderedMessage,
    SharedRouting, UserId, ValidatedEvent,
};
use herald_store::deliveries::{Claimed, Finish, Finished, TraceStep};
use herald_store::smart::{DigestItem, Fold};
use herald_store::{Device, DeviceKind, Store};
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::clock::Clock;
use crate::metrics::DeliveryMetrics;
use crate::providers::{NotSent, ProviderChain, Sent, Step, StepKind};
use crate::queue::Queue;
use crate::retry::RetrySettings;
use crate::templates::{DigestText, Templates};

/// How many events a digest lists by name; the rest it counts.
const DIGEST_ITEMS: usize = 3;
use crate::{Error, sms};

/// The transports, one provider chain per channel kind.
pub type Channels = HashMap<ChannelKind, Arc<ProviderChain>>;

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
    /// Quiet hours began since it was scheduled: it goes out in the
    /// digest at their end.
    Deferred {
        until: DateTime<Utc>,
    },
    /// Over its category's throttle on this channel: into the digest at
    /// `digest_at`, or (none) dropped.
    Throttled {
        reason: String,
        digest_at: Option<DateTime<Utc>>,
    },
    /// Held, and read or acknowledged meanwhile: not sent.
    Seen {
        reason: String,
    },
    /// Another delivery carries its digest and will fold it in; handed
    /// back, due again at `until` in case that carrier's worker dies first.
    Waiting {
        carrier: DeliveryId,
        until: DateTime<Utc>,
    },
    Retrying {
        attempt: u32,
        next: DateTime<Utc>,
        reason: String,
    },
    /// No provider could be tried (every breaker of the chain is open):
    /// not an attempt, so no retry is spent; looked at again at `until`.
    Postponed {
        until: DateTime<Utc>,
        reason: String,
    },
    Failed {
        attempt: u32,
        reason: String,
    },
    /// Its category's `expire_after` passed before it could be sent.
    Expired {
        reason: String,
    },
    /// Its event (or inbox entry) was cancelled while it was claimed; seen
    /// before sending.
    Cancelled {
        reason: String,
    },
    /// Claimed but not attempted: too little of its lease was left when
    /// its turn came. Handed back, due now.
    Released,
    /// The attempt ran but its lease had run out and another worker took the
    /// delivery over; this attempt's result was not recorded.
    LeaseLost,
}

impl Outcome {
    /// The label of metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Skipped => "skipped",
            Outcome::Sent { .. } => "sent",
            Outcome::Suppressed { .. } => "suppressed",
            Outcome::Deferred { .. } => "deferred",
            Outcome::Throttled { .. } => "throttled",
            Outcome::Seen { .. } => "skipped",
            Outcome::Waiting { .. } => "digest_wait",
            Outcome::Retrying { .. } => "retrying",
            Outcome::Postponed { .. } => "postponed",
            Outcome::Failed { .. } => "failed",
            Outcome::Expired { .. } => "expired",
            Outcome::Cancelled { .. } => "cancelled",
            Outcome::Released => "released",
            Outcome::LeaseLost => "lease_lost",
        }
    }
}

/// Everything an attempt needs. Shared by all workers of a process.
#[derive(Debug)]
pub struct Dispatcher {
    pub store: Store,
    /// The table in force; replaced whole when an admin changes it.
    pub routing: SharedRouting,
    pub templates: Arc<Templates>,
    pub channels: Channels,
    pub retry: RetrySettings,
    /// Per event category, how long a delivery stays worth sending.
    pub expire_after: HashMap<String, Duration>,
    /// How long a claim lasts; an attempt that outlives it may be repeated.
    pub lease: Duration,
    pub clock: Arc<dyn Clock>,
    /// Where `delivery_failed` goes; none for a worker without realtime.
    pub broadcast: Option<Arc<dyn Broadcast>>,
    /// Where retries and deferrals are scheduled.
    pub queue: Queue,
    pub metrics: Arc<DeliveryMetrics>,
    /// Sends in flight in this process, at most.
    pub sends: Arc<Semaphore>,
    /// The unsubscribe links of emails and SMS; none: messages carry none.
    pub unsubscribe: Option<crate::unsubscribe::Links>,
}

/// What an attempt went through: the provider chain's steps and the
/// provider that answered last (the one that sent, or refused).
#[derive(Debug, Default)]
struct Log {
    trace: Vec<TraceStep>,
    provider: Option<String>,
    /// How many events the message carries when it is a digest.
    digest: usize,
}

/// What one claimed delivery's attempt needs besides the claim.
struct Context<'a> {
    profile: Option<&'a Profile>,
    devices: &'a [Device],
}

impl Dispatcher {
    /// Runs one attempt of delivery `id`, if it is due and free.
    pub async fn process(&self, id: DeliveryId) -> Result<Outcome, Error> {
        let mut outcomes = self.process_batch(&[id]).await?;
        Ok(outcomes.pop().map_or(Outcome::Skipped, |(_, o)| o))
    }

    /// Runs one attempt of each of `ids` that is due and free, at most
    /// `sends` at a time across the process. Answers for the claimed ones
    /// only; a delivery whose attempt hit a database error is left to its
    /// lease (and logged).
    #[tracing::instrument(skip_all, fields(deliveries = ids.len()))]
    pub async fn process_batch(
        &self,
        ids: &[DeliveryId],
    ) -> Result<Vec<(DeliveryId, Outcome)>, Error> {
        let now = self.clock.now();
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let claimed = self
            .store
            .claim_deliveries(ids, now.timestamp_millis(), lease_ms)
            .await?;
        if claimed.len() < ids.len() {
            self.reschedule_early(ids, &claimed, now).await?;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let recipients: BTreeSet<UserId> = claimed.iter().map(|c| c.recipient.clone()).collect();
        let profiles = self.store.profiles(&recipients).await?;
        let push: BTreeSet<UserId> = claimed
            .iter()
            .filter(|c| c.channel == ChannelKind::Push.as_str())
            .map(|c| c.recipient.clone())
            .collect();
        let devices = self.store.devices_of(&push).await?;
        let batch = tracing::Span::current();
        let attempts = claimed.into_iter().map(|claim| {
            let context = Context {
                profile: profiles.get(&claim.recipient),
                devices: devices.get(&claim.recipient).map_or(&[], Vec::as_slice),
            };
            // Every line of the attempt carries the delivery, its event,
            // channel and attempt, and the provider that answered last
            // once there is one; never an address. In a trace, the attempt
            // continues the publish that made it.
            let span = tracing::info_span!(
                "delivery_attempt",
                delivery_id = %claim.id,
                event_id = %claim.event_id,
                channel = %claim.channel,
                attempt = claim.attempt,
                provider = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            if let Some(traceparent) = &claim.traceparent {
                crate::tracecontext::continue_trace(&span, traceparent, &batch);
            }
            async move {
                let id = claim.id;
                match self.run(claim, context).await {
                    Ok(outcome) => Some((id, outcome)),
                    Err(e) => {
                        tracing::warn!(error = %e, "attempt stopped; its lease will hand it back");
                        None
                    }
                }
            }
            .instrument(span)
        });
        Ok(join_all(attempts).await.into_iter().flatten().collect())
    }

    /// A job can fire before its deliveries are due: the Redis queue counts
    /// whole seconds, and another node's clock may run ahead. Dropping it
    /// would leave the retry to the sweeper; ask again when they are due.
    async fn reschedule_early(
        &self,
        ids: &[DeliveryId],
        claimed: &[Claimed],
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let taken: std::collections::HashSet<DeliveryId> = claimed.iter().map(|c| c.id).collect();
        let rest: Vec<DeliveryId> = ids
            .iter()
            .copied()
            .filter(|id| !taken.contains(id))
            .collect();
        for (id, at) in self.store.due_later(&rest, now.timestamp_millis()).await? {
            self.schedule(id, DateTime::from_timestamp_millis(at).unwrap_or(now))
                .await;
        }
        Ok(())
    }

    /// One claimed delivery: attempt, record, follow up; inside its
    /// `delivery_attempt` span.
    async fn run(&self, claim: Claimed, context: Context<'_>) -> Result<Outcome, Error> {
        let _permit = self
            .sends
            .acquire()
            .await
            .map_err(|_| Error::Queue("the dispatcher is shutting down".into()))?;
        let started = std::time::Instant::now();
        let attempt = u32::try_from(claim.attempt).unwrap_or(u32::MAX);
        let now = self.clock.now();
        let mut log = Log::default();
        let attempted = self.attempt(&claim, &context, now, &mut log).await;
        if let Some(provider) = &log.provider {
            tracing::Span::current().record("provider", provider.as_str());
        }
        let outcome = match attempted {
            Ok(Outcome::LeaseLost) => {
                tracing::warn!("lease ran out before the digest was folded; nothing done");
                self.metrics
                    .record(&claim.channel, &Outcome::LeaseLost, started.elapsed());
                return Ok(Outcome::LeaseLost);
            }
            Ok(outcome) => outcome,
            Err(AttemptError::Channel(err)) => self.failed(&claim, attempt, err, now),
            Err(AttemptError::Store(err)) => return Err(err),
        };
        let finish = self.finish_of(&claim, &outcome, log.provider.clone());
        let mut trace = std::mem::take(&mut log.trace);
        trace.push(TraceStep {
            step: "attempt".to_owned(),
            provider: log.provider,
            outcome: Some(outcome.label().to_owned()),
            detail: detail(&outcome),
        });
        let finished = Finished {
            id: claim.id,
            attempt: claim.attempt,
            finish,
            trace,
            at: self.clock.now().timestamp_millis(),
        };
        let applied = self.store.finish_deliveries(vec![finished]).await?;
        if applied.first() != Some(&true) && matches!(outcome, Outcome::Waiting { .. }) {
            // Its digest's carrier folded it in meanwhile: as it should be.
            self.metrics
                .record(&claim.channel, &outcome, started.elapsed());
            return Ok(outcome);
        }
        if applied.first() != Some(&true) {
            tracing::warn!("lease ran out before the attempt finished; its result is dropped");
            self.metrics
                .record(&claim.channel, &Outcome::LeaseLost, started.elapsed());
            return Ok(Outcome::LeaseLost);
        }
        self.metrics
            .record(&claim.channel, &outcome, started.elapsed());
        tracing::Span::current().record("outcome", outcome.label());
        tracing::info!("delivery attempt recorded");
        if log.digest > 1 && matches!(outcome, Outcome::Sent { .. }) {
            self.metrics
                .digests
                .with_label_values(&[claim.channel.as_str()])
                .inc();
        }
        self.after(&claim, &outcome).await;
        Ok(outcome)
    }

    /// What an outcome writes, and the provider it names.
    fn finish_of(&self, claim: &Claimed, outcome: &Outcome, provider: Option<String>) -> Finish {
        match outcome {
            Outcome::Sent {
                provider_message_id,
            } => Finish::Sent {
                provider,
                provider_message_id: provider_message_id.clone(),
            },
            Outcome::Suppressed { reason } => Finish::Suppressed {
                reason: reason.clone(),
            },
            Outcome::Deferred { until } => Finish::Deferred {
                until: until.timestamp_millis(),
                digest_key: Some(DigestGroup::Quiet.key().to_owned()),
            },
            Outcome::Throttled {
                digest_at: Some(at),
                ..
            } => Finish::Deferred {
                until: at.timestamp_millis(),
                // The category's next digest (throttles count per category).
                digest_key: Some(
                    DigestGroup::Category(claim.kind.category())
                        .key()
                        .to_owned(),
                ),
            },
            Outcome::Throttled {
                reason,
                digest_at: None,
            } => Finish::Throttled {
                reason: reason.clone(),
            },
            Outcome::Seen { reason } => Finish::Seen {
                reason: reason.clone(),
            },
            Outcome::Waiting { until, .. } => Finish::Release {
                at: until.timestamp_millis(),
            },
            Outcome::Retrying { next, reason, .. } => Finish::Retry {
                error: reason.clone(),
                next_attempt_at: next.timestamp_millis(),
                provider,
                counted: true,
            },
            Outcome::Postponed { until, reason } => Finish::Retry {
                error: reason.clone(),
                next_attempt_at: until.timestamp_millis(),
                provider: None,
                counted: false,
            },
            Outcome::Failed { reason, .. } => Finish::Failed {
                error: reason.clone(),
                provider,
            },
            Outcome::Expired { reason } => Finish::Expired {
                reason: reason.clone(),
            },
            Outcome::Cancelled { reason } => Finish::Cancelled {
                reason: reason.clone(),
            },
            Outcome::Released => Finish::Release {
                at: self.clock.now().timestamp_millis(),
            },
            Outcome::Skipped | Outcome::LeaseLost => unreachable!("not produced by an attempt"),
        }
    }

    /// Expire, decide, render, send.
    async fn attempt(
        &self,
        claim: &Claimed,
        context: &Context<'_>,
        now: DateTime<Utc>,
        log: &mut Log,
    ) -> Result<Outcome, AttemptError> {
        if let Some(expired) = self.expired(claim, now) {
            return Ok(expired);
        }
        // A claim waits for its turn; if most of its lease went by, another
        // worker may take it over mid-send. Hand it back instead.
        let deadline = claim.lease_until - i64::try_from(self.lease.as_millis() / 2).unwrap_or(0);
        if now.timestamp_millis() > deadline {
            return Ok(Outcome::Released);
        }
        let channel = ChannelKind::parse(&claim.channel)
            .filter(|c| c.is_external())
            .ok_or_else(|| {
                ChannelError::permanent(format!("`{}` is not a delivery channel", claim.channel))
            })?;
        let event = ValidatedEvent::parse_kind(claim.kind, claim.payload.clone()).map_err(|e| {
            ChannelError::permanent(format!("the stored event no longer validates: {e}"))
        })?;
        let route = self.routing.route(&event);
        let profile = context.profile.cloned().unwrap_or_default();
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
        if let Some(check) = &claim.seen_check {
            let anyone = check == "anyone";
            if self.store.event_seen(claim.notification_id, anyone).await? {
                return Ok(Outcome::Seen {
                    reason: if anyone {
                        "seen: someone the event reached has read it".to_owned()
                    } else {
                        "seen: the recipient read or acknowledged it during the hold".to_owned()
                    },
                });
            }
        }
        let mut digest = None;
        if claim.digest_key.is_some() {
            let at = now.timestamp_millis();
            match self.store.fold_digest(claim.id, claim.attempt, at).await? {
                Fold::Lost => return Ok(Outcome::LeaseLost),
                Fold::Follower { carrier } => {
                    let wait = chrono::Duration::from_std(self.lease).unwrap_or_default();
                    return Ok(Outcome::Waiting {
                        carrier,
                        until: now + wait,
                    });
                }
                Fold::Carrier { items, folded } => {
                    if !folded.is_empty() {
                        self.metrics
                            .attempts
                            .with_label_values(&[claim.channel.as_str(), "digested"])
                            .inc_by(folded.len() as u64);
                    }
                    if items.len() > 1 {
                        digest = Some(items);
                    }
                }
            }
        }
        if let Some(throttle) = route.throttle(channel) {
            let per = chrono::Duration::milliseconds(throttle.per.as_millis());
            let category = claim.kind.category();
            let (count, oldest) = self
                .store
                .throttle_count(
                    claim.id,
                    &claim.recipient,
                    category,
                    channel.as_str(),
                    (now - per).timestamp_millis(),
                )
                .await?;
            if count >= i64::from(throttle.max) {
                let reason = format!(
                    "throttled: at most {} {channel} per {} for {category}",
                    throttle.max, throttle.per
                );
                let digest_at = match throttle.overflow {
                    Overflow::Drop => None,
                    // The category's next digest, else when the window
                    // frees a send.
                    Overflow::Digest => Some(
                        route
                            .next_digest(channel, &profile, now)
                            .or_else(|| {
                                oldest
                                    .and_then(DateTime::from_timestamp_millis)
                                    .map(|t| t + per)
                            })
                            .filter(|t| *t > now)
                            .unwrap_or(now + per),
                    ),
                };
                return Ok(Outcome::Throttled { reason, digest_at });
            }
        }

        let addresses = addresses(channel, &profile.contact, context.devices);
        if addresses.is_empty() {
            return Ok(Outcome::Suppressed {
                reason: Reason::NoContact.as_str().to_owned(),
            });
        }
        let chain = self.channels.get(&channel).ok_or_else(|| {
            ChannelError::permanent(format!("no transport is configured for {channel}"))
        })?;
        let locale = profile
            .contact
            .locale
            .unwrap_or(self.templates.default_locale());
        // Mandatory messages carry no way out.
        let unsubscribe = match (&self.unsubscribe, scheduled) {
            (_, Reason::Mandatory) | (None, _) => None,
            (Some(links), _) => links.url(
                &claim.recipient,
                claim.kind.category(),
                channel,
                claim.id,
                now,
            ),
        };
        let rendered = match &digest {
            Some(items) => {
                log.digest = items.len();
                log.trace.push(TraceStep {
                    step: "digest".to_owned(),
                    provider: None,
                    outcome: None,
                    detail: Some(format!(
                        "one message for {} events ({})",
                        items.len(),
                        claim.digest_key.as_deref().unwrap_or_default()
                    )),
                });
                tracing::info_span!("render", locale = %locale, digest = items.len()).in_scope(
                    || self.render_digest(claim, channel, locale, items, unsubscribe.as_deref()),
                )
            }
            None => tracing::info_span!("render", locale = %locale).in_scope(|| {
                self.templates.render_with(
                    claim.kind,
                    channel,
                    locale,
                    &event.data,
                    unsubscribe.as_deref(),
                )
            }),
        }
        .map_err(|e| ChannelError::permanent(e.to_string()))?;
        // A cancel may have come since the claim: look once more, last
        // thing before the message leaves.
        if let Some(reason) = self.store.cancel_requested(claim.id).await? {
            return Ok(Outcome::Cancelled { reason });
        }
        if channel == ChannelKind::Sms {
            let s = sms::segments(&rendered.text);
            tracing::debug!(encoding = ?s.encoding, segments = s.count, "sms");
        }
        let data = json!({
            "event": claim.kind,
            "eventId": claim.event_id,
            "notificationId": claim.notification_id,
        });
        let mut sent: Vec<Sent> = Vec::new();
        let mut failures: Vec<NotSent> = Vec::new();
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
                list_unsubscribe: (channel == ChannelKind::Email)
                    .then(|| unsubscribe.clone())
                    .flatten(),
            };
            match chain.send(&message).await {
                Ok(ok) => {
                    log.trace.extend(ok.steps.iter().map(step));
                    sent.push(ok);
                }
                Err(not) => {
                    log.trace.extend(not.steps.iter().map(step));
                    if let ChannelError::Gone { reason } = &not.error {
                        self.forget(claim, &message.to, reason).await?;
                    }
                    failures.push(not);
                }
            }
        }
        if let Some(last) = sent.last() {
            // The provider of record is the one that sent.
            log.provider = Some(last.provider.clone());
            let ids: Vec<String> = sent
                .into_iter()
                .filter_map(|s| s.receipt.provider_message_id)
                .collect();
            return Ok(Outcome::Sent {
                provider_message_id: (!ids.is_empty()).then(|| ids.join(",")),
            });
        }
        log.provider = failures.iter().rev().find_map(|f| f.provider.clone());
        if failures.iter().all(|f| f.all_open) {
            // Nothing was tried: wait for the first breaker to let a probe
            // through, spread over the retry window so the probe is not met
            // by every delivery at once.
            let until = failures
                .iter()
                .filter_map(|f| match &f.error {
                    ChannelError::Transient { retry_after, .. } => *retry_after,
                    _ => None,
                })
                .min()
                .unwrap_or_default();
            let policy = self.retry.for_channel(channel);
            let attempt = u32::try_from(claim.attempt).unwrap_or(u32::MAX);
            let delay = policy.delay(attempt, Some(until), &mut rand::rng());
            return Ok(Outcome::Postponed {
                until: now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX),
                reason: failures
                    .first()
                    .map_or("every provider is unavailable", |f| f.error.reason())
                    .to_owned(),
            });
        }
        Err(AttemptError::Channel(combine(
            failures.into_iter().map(|f| f.error).collect(),
        )))
    }

    /// A digest's message: how many events, the most important first
    /// (critical, then high priority, then the newest), in `locale`.
    fn render_digest(
        &self,
        claim: &Claimed,
        channel: ChannelKind,
        locale: herald_core::Locale,
        items: &[DigestItem],
        unsubscribe: Option<&str>,
    ) -> Result<crate::Rendered, Error> {
        // Items come oldest first; reversed, a stable sort keeps the newest
        // first among equals, even those published in the same millisecond.
        let mut ranked: Vec<(u8, i64, &DigestItem)> = items
            .iter()
            .rev()
            .map(|item| (self.importance(item), item.created_at, item))
            .collect();
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
        let category = items[0].kind.category();
        let text = DigestText {
            count: items.len() as i64,
            items: ranked
                .iter()
                .take(DIGEST_ITEMS)
                .map(|(_, _, i)| (i.title.as_str(), i.body.as_str()))
                .collect(),
            category: items
                .iter()
                .all(|i| i.kind.category() == category)
                .then_some(category),
            group: claim.digest_key.as_deref().unwrap_or("quiet"),
        };
        self.templates
            .render_digest(channel, locale, &text, unsubscribe)
    }

    /// 2 for a critical event, 1 for a high-priority one, else 0.
    fn importance(&self, item: &DigestItem) -> u8 {
        let Ok(event) = ValidatedEvent::parse_kind(item.kind, item.payload.clone()) else {
            return 0;
        };
        if self.routing.route(&event).critical {
            return 2;
        }
        let high = ["priority", "level"].iter().any(|f| {
            matches!(
                event.field(f).as_deref(),
                Some("high" | "critical" | "error")
            )
        });
        u8::from(high)
    }

    /// The outcome of a delivery past its category's `expire_after`.
    fn expired(&self, claim: &Claimed, now: DateTime<Utc>) -> Option<Outcome> {
        let category = claim.kind.category();
        let ttl = self.expire_after.get(category)?;
        let from = claim.redriven_at.unwrap_or(claim.created_at);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        (now.timestamp_millis() > from.saturating_add(ttl_ms)).then(|| Outcome::Expired {
            reason: format!(
                "expired: {category} messages are worth sending for {}",
                humanize(*ttl)
            ),
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
        let policy = ChannelKind::parse(&claim.channel)
            .map_or(self.retry.default_policy(), |c| self.retry.for_channel(c));
        match err {
            ChannelError::Transient {
                reason,
                retry_after,
            } if !policy.exhausted(attempt) => {
                let delay = policy.delay(attempt, retry_after, &mut rand::rng());
                let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                tracing::info!(%reason, retry_in_ms = delay.as_millis() as u64, "delivery failed, will retry");
                Outcome::Retrying {
                    attempt,
                    next,
                    reason,
                }
            }
            ChannelError::Transient { reason, .. } => {
                tracing::warn!(%reason, "delivery failed, giving up");
                Outcome::Failed {
                    attempt,
                    reason: format!("gave up after {attempt} attempts: {reason}"),
                }
            }
            ChannelError::Permanent { reason } | ChannelError::Gone { reason } => {
                tracing::warn!(%reason, "delivery failed permanently");
                Outcome::Failed { attempt, reason }
            }
        }
    }

    /// What follows a recorded outcome: schedule the next look, report failures.
    async fn after(&self, claim: &Claimed, outcome: &Outcome) {
        let (next, attempt, reason) = match outcome {
            Outcome::Deferred { until }
            | Outcome::Postponed { until, .. }
            | Outcome::Waiting { until, .. }
            | Outcome::Throttled {
                digest_at: Some(until),
                ..
            } => {
                self.schedule(claim.id, *until).await;
                return;
            }
            Outcome::Released => {
                if let Err(e) = self.queue.enqueue(&[claim.id]).await {
                    tracing::warn!(error = %e, "could not enqueue a released delivery; the sweeper will");
                }
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
            tracing::warn!(error = %e, delivery_id = %id, "could not schedule the next attempt; the sweeper will");
        }
    }
}

/// Where the message goes: the contact's address, or every push device.
fn addresses(
    channel: ChannelKind,
    contact: &herald_core::preferences::Contact,
    devices: &[Device],
) -> Vec<Address> {
    match channel {
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
        _ => devices
            .iter()
            .filter_map(|d| match d.kind {
                DeviceKind::Fcm => Some(Address::Fcm {
                    token: d.token.clone(),
                }),
                DeviceKind::Webpush => {
                    let sub = d.subscription.as_ref()?;
                    Some(Address::WebPush {
                        endpoint: d.token.clone(),
                        p256dh: sub["keys"]["p256dh"].as_str()?.to_owned(),
                        auth: sub["keys"]["auth"].as_str()?.to_owned(),
                    })
                }
            })
            .collect(),
    }
}

/// A provider chain's step as a line of the trace.
fn step(s: &Step) -> TraceStep {
    let (name, detail) = match &s.kind {
        StepKind::Failover { reason } => ("failover", Some(reason.clone())),
        StepKind::BreakerOpen => ("breaker_open", Some("skipped: its breaker is open".into())),
        StepKind::Throttled { waited } => (
            "throttled",
            Some(format!(
                "waited {} ms for its rate limit",
                waited.as_millis()
            )),
        ),
    };
    TraceStep {
        step: name.to_owned(),
        provider: Some(s.provider.clone()),
        outcome: None,
        detail,
    }
}

/// The trace's detail of an outcome: its reason, or when it comes next.
fn detail(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Suppressed { reason }
        | Outcome::Failed { reason, .. }
        | Outcome::Expired { reason }
        | Outcome::Cancelled { reason } => Some(reason.clone()),
        Outcome::Retrying { next, reason, .. }
        | Outcome::Postponed {
            until: next,
            reason,
        } => Some(format!("{reason}; next try at {}", next.to_rfc3339())),
        Outcome::Deferred { until } => Some(format!(
            "quiet hours until {}; then in their digest",
            until.to_rfc3339()
        )),
        Outcome::Throttled {
            reason,
            digest_at: Some(at),
        } => Some(format!("{reason}; in the digest at {}", at.to_rfc3339())),
        Outcome::Throttled {
            reason,
            digest_at: None,
        }
        | Outcome::Seen { reason } => Some(reason.clone()),
        Outcome::Waiting { carrier, .. } => Some(format!(
            "its digest is carried by delivery {carrier}, which folds it in"
        )),
        Outcome::Released => Some("handed back unsent: its lease was running out".into()),
        Outcome::Sent { .. } | Outcome::Skipped | Outcome::LeaseLost => None,
    }
}

/// `7d`, `72h`, `30m`, `45s`.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= secs && s.is_multiple_of(secs) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
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
