//! Routing policy: who hears about an event, where, and why.
//!
//! Two steps, both pure:
//!
//! 1. [`RoutingTable::route`] reads the routing table (`config/routing.toml`)
//!    for the event: the realtime rooms to fan out to, who gets an inbox
//!    entry, and the default (recipient, channel) deliveries. Recipients are
//!    [`Selector`]s: a user named by a payload field, every user of a role,
//!    or a restaurant's staff. Expanding a group is the store's job.
//! 2. [`Route::plan`] applies each recipient's preferences and contact
//!    details, yielding a [`Decision`] per (recipient, channel).
//!
//! ## Precedence
//!
//! For one recipient and channel, the first rule that applies wins:
//!
//! 1. **mandatory** — the routing table marks the delivery mandatory: deliver;
//! 2. **global off** — the user switched everything off: suppress;
//! 3. **channel off** — the user switched this channel off: suppress;
//! 4. **event × channel override** — the user's word for this event, then
//!    for its category: deliver or suppress as it says;
//! 5. **routing default** — deliver if the routing table says so.
//!
//! A channel switch can only narrow; an override can also add a channel the
//! table does not send by default. Then two checks follow a "deliver": no
//! address for the channel means `no_contact`, and push or SMS inside the
//! user's quiet hours waits until they end unless the event is critical.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::catalog::{EventKind, ValidatedEvent};
use crate::channel::ChannelKind;
use crate::error::{Error, ValidationError};
use crate::ids::UserId;
use crate::preferences::{Contact, Preferences};
use crate::smart::{CategoryPolicy, CategorySpec, DigestGroup, Period, SeenCheck, Throttle};

/// What the routing table says about one (recipient, channel) it sends.
#[derive(Debug, Clone, Copy, Default)]
struct Spec {
    mandatory: bool,
    /// Held this long; skipped if seen (by the recipient, or by anyone for
    /// an escalation step) by then.
    hold: Option<(Period, SeenCheck)>,
    escalation: bool,
}

/// The routing table Herald ships with: contract §4's defaults.
pub const DEFAULT_ROUTING: &str = include_str!("../../../config/routing.toml");

/// The compiled routing table. Built at start from the file, or from a
/// JSON document of the same shape an admin stored over REST; either way
/// an invalid table is refused with the event and key at fault.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    routes: HashMap<EventKind, EventRules>,
    /// The table as it was written, every default filled in: what
    /// `GET /v1/admin/routing` answers and an audit row records.
    document: serde_json::Value,
    categories: HashMap<&'static str, CategoryPolicy>,
}

/// The routing file's shape. TOML and JSON documents both parse into it,
/// so both are checked by the same rules.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RoutingFile {
    events: BTreeMap<String, EventSpec>,
    /// Digest windows and throttles per category (see [`crate::smart`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    categories: BTreeMap<String, CategorySpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    #[serde(default)]
    rooms: Vec<String>,
    #[serde(default)]
    inbox: Vec<String>,
    #[serde(default)]
    deliveries: Vec<DeliverySpec>,
    #[serde(default)]
    critical_when: BTreeMap<String, Vec<String>>,
    /// Steps taken while a critical event stays unread.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    escalate: Vec<EscalationSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct DeliverySpec {
    to: String,
    channels: Vec<ChannelKind>,
    #[serde(default)]
    when: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    mandatory: bool,
    /// Hold these channels this long (`2m`) and skip them if the recipient
    /// has seen the event by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hold: Option<String>,
}

/// One escalation step: `after` the event, to `to` on `channels`, unless
/// anyone the event reached has read it by then. Channels are read as
/// text so that an unknown one is refused naming its key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EscalationSpec {
    after: String,
    to: String,
    channels: Vec<String>,
}

#[derive(Debug, Clone)]
struct EventRules {
    rooms: Vec<Template>,
    inbox: Vec<Target>,
    deliveries: Vec<DeliveryRule>,
    critical_when: Condition,
    escalate: Vec<EscalationRule>,
}

#[derive(Debug, Clone)]
struct DeliveryRule {
    to: Target,
    channels: Vec<ChannelKind>,
    when: Condition,
    mandatory: bool,
    hold: Option<Period>,
}

#[derive(Debug, Clone)]
struct EscalationRule {
    after: Period,
    to: Target,
    channels: Vec<ChannelKind>,
}

/// A string with `{field}` placeholders filled from the payload.
#[derive(Debug, Clone)]
struct Template(Vec<Part>);

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Field(String),
}

impl Template {
    fn parse(src: &str, kind: EventKind) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("`{src}` has an unclosed `{{`"))?;
            let field = &rest[open + 1..open + close];
            if !kind.fields().contains(&field) {
                return Err(format!(
                    "`{src}` names `{field}`, which {kind} does not have"
                ));
            }
            parts.push(Part::Field(field.to_owned()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Template(parts))
    }

    /// `None` when a placeholder's field is absent from this payload.
    fn render(&self, event: &ValidatedEvent) -> Option<String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Field(f) => out.push_str(&event.field(f)?),
            }
        }
        Some(out)
    }
}

/// Who a rule addresses, before group expansion.
#[derive(Debug, Clone)]
enum Target {
    /// `{guestId}`: the user a payload field names.
    User(Template),
    /// `role:admin`: every user of that role.
    Role(Role),
    /// `staff:{restaurantId}`: restaurant and cashier users of that restaurant.
    Staff(Template),
}

impl Target {
    fn parse(src: &str, kind: EventKind) -> Result<Target, String> {
        if let Some(role) = src.strip_prefix("role:") {
            return Role::parse(role)
                .map(Target::Role)
                .ok_or_else(|| format!("`{src}`: unknown role `{role}`"));
        }
        if let Some(restaurant) = src.strip_prefix("staff:") {
            return Template::parse(restaurant, kind).map(Target::Staff);
        }
        if !src.starts_with('{') {
            return Err(format!(
                "`{src}`: a recipient is `{{field}}`, `role:NAME` or `staff:{{field}}`"
            ));
        }
        Template::parse(src, kind).map(Target::User)
    }

    fn select(&self, event: &ValidatedEvent) -> Option<Selector> {
        Some(match self {
            Target::User(t) => Selector::User(UserId(t.render(event)?)),
            Target::Role(r) => Selector::Role(*r),
            Target::Staff(t) => Selector::Staff(t.render(event)?),
        })
    }
}

/// `field ∈ values` for every entry; empty means always.
#[derive(Debug, Clone, Default)]
struct Condition(Vec<(String, Vec<String>)>);

impl Condition {
    fn parse(
        spec: &BTreeMap<String, Vec<String>>,
        kind: EventKind,
    ) -> Result<Condition, ValidationError> {
        for field in spec.keys() {
            if !kind.fields().contains(&field.as_str()) {
                return Err(ValidationError::new(
                    field.as_str(),
                    format!("condition on `{field}`, which {kind} does not have"),
                ));
            }
        }
        Ok(Condition(spec.clone().into_iter().collect()))
    }

    fn holds(&self, event: &ValidatedEvent) -> bool {
        self.0
            .iter()
            .all(|(field, allowed)| event.field(field).is_some_and(|v| allowed.contains(&v)))
    }
}

impl RoutingTable {
    /// The table Herald ships with.
    pub fn default_table() -> RoutingTable {
        RoutingTable::from_toml(DEFAULT_ROUTING).expect("the shipped routing table is valid")
    }

    /// Parses and checks a routing file. Every catalog event must have an
    /// entry (an empty one is fine), so that a misspelt name cannot silently
    /// route an event nowhere.
    pub fn from_toml(src: &str) -> Result<RoutingTable, Error> {
        let file: RoutingFile = toml::from_str(src).map_err(|e| Error::Routing(e.to_string()))?;
        Self::compile_file(&file).map_err(|e| Error::Routing(e.to_string()))
    }

    /// Parses and checks a table given as JSON in the file's shape (what
    /// [`RoutingTable::document`] returns), by the same rules as
    /// [`RoutingTable::from_toml`]. The error names the field at fault as
    /// a path from the document's root (`events.points_added.deliveries[0].to`).
    pub fn from_json(document: serde_json::Value) -> Result<RoutingTable, ValidationError> {
        if !document.is_object() {
            return Err(ValidationError::new(
                "",
                "a routing table is an object: {\"events\": {…}}",
            ));
        }
        let file: RoutingFile = serde_path_to_error::deserialize(document).map_err(|e| {
            ValidationError::from_serde(&e.path().to_string(), e.inner().to_string())
        })?;
        Self::compile_file(&file)
    }

    fn compile_file(file: &RoutingFile) -> Result<RoutingTable, ValidationError> {
        let mut routes = HashMap::new();
        for (name, spec) in &file.events {
            let at = format!("events.{name}");
            let kind = EventKind::parse(name)
                .ok_or_else(|| ValidationError::new(at.as_str(), "unknown event"))?;
            let rules = compile(kind, spec).map_err(|e| e.within(&at))?;
            routes.insert(kind, rules);
        }
        if let Some(missing) = EventKind::ALL.iter().find(|k| !routes.contains_key(k)) {
            return Err(ValidationError::new(
                format!("events.{missing}"),
                "no entry: every event of the catalog needs one (an empty one is fine)",
            ));
        }
        let known = EventKind::categories();
        let mut categories = HashMap::new();
        for (name, spec) in &file.categories {
            let at = format!("categories.{name}");
            let category = known.iter().find(|c| **c == name).ok_or_else(|| {
                ValidationError::new(
                    at.as_str(),
                    format!("unknown category ({})", known.join(", ")),
                )
            })?;
            let policy = crate::smart::compile_category(spec).map_err(|e| keyed(e).within(&at))?;
            categories.insert(*category, policy);
        }
        let document = serde_json::to_value(file).expect("a routing table serialises");
        Ok(RoutingTable {
            routes,
            categories,
            document,
        })
    }

    /// The table in the file's shape, as JSON: `{"events": {name: {rooms,
    /// inbox, deliveries, critical_when, escalate}}, "categories": {…}}`,
    /// every default filled in. [`RoutingTable::from_json`] reads it back.
    pub fn document(&self) -> &serde_json::Value {
        &self.document
    }

    /// What the table says about `event`, before anyone's preferences.
    pub fn route(&self, event: &ValidatedEvent) -> Route {
        let rules = &self.routes[&event.kind];
        let mut rooms: Vec<String> = Vec::with_capacity(rules.rooms.len());
        for room in rules.rooms.iter().filter_map(|t| t.render(event)) {
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        let inbox = rules.inbox.iter().filter_map(|t| t.select(event)).collect();
        let mut deliveries = Vec::new();
        for rule in rules.deliveries.iter().filter(|r| r.when.holds(event)) {
            if let Some(selector) = rule.to.select(event) {
                for &channel in &rule.channels {
                    deliveries.push(DefaultDelivery {
                        to: selector.clone(),
                        channel,
                        mandatory: rule.mandatory,
                        hold: rule.hold,
                        escalation: None,
                    });
                }
            }
        }
        let critical = !rules.critical_when.0.is_empty() && rules.critical_when.holds(event);
        for step in rules.escalate.iter().filter(|_| critical) {
            if let Some(selector) = step.to.select(event) {
                for &channel in &step.channels {
                    deliveries.push(DefaultDelivery {
                        to: selector.clone(),
                        channel,
                        mandatory: true,
                        hold: None,
                        escalation: Some(step.after),
                    });
                }
            }
        }
        Route {
            kind: event.kind,
            rooms,
            inbox,
            deliveries,
            critical,
            policy: self
                .categories
                .get(event.kind.category())
                .cloned()
                .unwrap_or_default(),
        }
    }
}

fn compile(kind: EventKind, spec: &EventSpec) -> Result<EventRules, ValidationError> {
    let at = |field: String| move |message: String| ValidationError::new(field, message);
    let rooms = spec
        .rooms
        .iter()
        .enumerate()
        .map(|(i, r)| Template::parse(r, kind).map_err(at(format!("rooms[{i}]"))))
        .collect::<Result<_, _>>()?;
    let inbox = spec
        .inbox
        .iter()
        .enumerate()
        .map(|(i, t)| Target::parse(t, kind).map_err(at(format!("inbox[{i}]"))))
        .collect::<Result<_, _>>()?;
    let mut deliveries = Vec::new();
    for (i, d) in spec.deliveries.iter().enumerate() {
        if let Some((j, c)) = d
            .channels
            .iter()
            .enumerate()
            .find(|(_, c)| !c.is_external())
        {
            return Err(ValidationError::new(
                format!("deliveries[{i}].channels[{j}]"),
                format!("`{c}` is not a delivery channel (email, sms, push)"),
            ));
        }
        deliveries.push(DeliveryRule {
            to: Target::parse(&d.to, kind).map_err(at(format!("deliveries[{i}].to")))?,
            channels: d.channels.clone(),
            when: Condition::parse(&d.when, kind)
                .map_err(|e| e.within(&format!("deliveries[{i}].when")))?,
            mandatory: d.mandatory,
            hold: d
                .hold
                .as_deref()
                .map(Period::parse_positive)
                .transpose()
                .map_err(at(format!("deliveries[{i}].hold")))?,
        });
    }
    if !spec.escalate.is_empty() && spec.critical_when.is_empty() {
        return Err(ValidationError::new(
            "escalate",
            "escalation is for critical events; add `critical_when`",
        ));
    }
    let mut escalate = Vec::new();
    for (i, step) in spec.escalate.iter().enumerate() {
        let mut channels = Vec::new();
        for (j, name) in step.channels.iter().enumerate() {
            let channel = ChannelKind::parse(name)
                .filter(|c| c.is_external())
                .ok_or_else(|| {
                    ValidationError::new(
                        format!("escalate[{i}].channels[{j}]"),
                        format!("`{name}` is not a delivery channel (email, sms, push)"),
                    )
                })?;
            channels.push(channel);
        }
        if channels.is_empty() {
            return Err(ValidationError::new(
                format!("escalate[{i}].channels"),
                "name at least one channel",
            ));
        }
        escalate.push(EscalationRule {
            after: Period::parse_positive(&step.after)
                .map_err(at(format!("escalate[{i}].after")))?,
            to: Target::parse(&step.to, kind).map_err(at(format!("escalate[{i}].to")))?,
            channels,
        });
    }
    Ok(EventRules {
        rooms,
        inbox,
        deliveries,
        critical_when: Condition::parse(&spec.critical_when, kind)
            .map_err(|e| e.within("critical_when"))?,
        escalate,
    })
}

/// A smart-delivery key's error (`digest.every: must be …`) as a
/// validation error naming that key.
fn keyed(error: String) -> ValidationError {
    match error.split_once(": ") {
        Some((key, message)) => ValidationError::new(key, message),
        None => ValidationError::new("", error),
    }
}

/// A recipient as the routing table names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    User(UserId),
    Role(Role),
    /// Staff of the restaurant with this id.
    Staff(String),
}

/// One default delivery from the routing table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultDelivery {
    pub to: Selector,
    pub channel: ChannelKind,
    pub mandatory: bool,
    /// Held this long, skipped if the recipient has seen the event by then.
    pub hold: Option<Period>,
    /// An escalation step, due this long after the event unless anyone it
    /// reached has read it.
    pub escalation: Option<Period>,
}

/// An event's route before preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: EventKind,
    /// Realtime rooms, deduplicated, in table order.
    pub rooms: Vec<String>,
    /// Who gets an inbox entry.
    pub inbox: Vec<Selector>,
    pub deliveries: Vec<DefaultDelivery>,
    /// Critical events pass quiet hours, digests and throttles.
    pub critical: bool,
    /// The routing file's digest window and throttles for the event's category.
    pub policy: CategoryPolicy,
}

/// What Herald knows of a recipient when it plans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub preferences: Preferences,
    pub contact: Contact,
    /// Whether the user has at least one push device registered.
    pub has_device: bool,
}

impl Profile {
    fn reachable(&self, channel: ChannelKind) -> bool {
        match channel {
            ChannelKind::Email => self.contact.email.is_some(),
            ChannelKind::Sms => self.contact.phone.is_some(),
            ChannelKind::Push => self.has_device,
            ChannelKind::InApp | ChannelKind::Realtime => true,
        }
    }
}

/// Why a decision went the way it did; recorded on every delivery row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Mandatory,
    RoutingDefault,
    EventOverride,
    CategoryOverride,
    GlobalOff,
    ChannelOff,
    NoContact,
    /// An escalation step of a critical event: mandatory, like the event.
    Escalation,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Mandatory,
        Reason::RoutingDefault,
        Reason::EventOverride,
        Reason::CategoryOverride,
        Reason::GlobalOff,
        Reason::ChannelOff,
        Reason::NoContact,
        Reason::Escalation,
    ];

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Mandatory => "mandatory",
            Reason::RoutingDefault => "routing_default",
            Reason::EventOverride => "event_override",
            Reason::CategoryOverride => "category_override",
            Reason::GlobalOff => "global_off",
            Reason::ChannelOff => "channel_off",
            Reason::NoContact => "no_contact",
            Reason::Escalation => "escalation",
        }
    }
}

/// The outcome for one (recipient, channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Deliver {
        reason: Reason,
        /// Set when quiet hours or a digest window hold the delivery
        /// back: send no earlier.
        defer_until: Option<DateTime<Utc>>,
        /// The digest the delivery waits for, with `defer_until` its end.
        digest: Option<DigestGroup>,
        /// Held (or an escalation step): skipped if the event was seen
        /// by `defer_until`.
        hold: Option<SeenCheck>,
    },
    Suppress {
        reason: Reason,
    },
}

impl Decision {
    pub fn delivers(&self) -> bool {
        matches!(self, Decision::Deliver { .. })
    }

    pub fn reason(&self) -> Reason {
        match *self {
            Decision::Deliver { reason, .. } | Decision::Suppress { reason } => reason,
        }
    }
}

/// Everything one recipient gets from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientPlan {
    pub user: UserId,
    /// One decision per channel considered, `in_app` (the inbox) included,
    /// in channel order.
    pub decisions: BTreeMap<ChannelKind, Decision>,
}

impl RecipientPlan {
    /// Whether the event shows in this recipient's inbox.
    pub fn in_inbox(&self) -> bool {
        self.decisions
            .get(&ChannelKind::InApp)
            .is_some_and(Decision::delivers)
    }
}

impl Route {
    /// The group selectors whose members the caller must look up.
    pub fn groups(&self) -> impl Iterator<Item = &Selector> {
        self.inbox
            .iter()
            .chain(self.deliveries.iter().map(|d| &d.to))
            .filter(|s| !matches!(s, Selector::User(_)))
    }

    /// Applies preferences. `members` expands group selectors (absent means
    /// nobody); `profiles` holds what is known of each user (absent means
    /// defaults and no contact details).
    pub fn plan(
        &self,
        members: &HashMap<Selector, Vec<UserId>>,
        profiles: &HashMap<UserId, Profile>,
        now: DateTime<Utc>,
    ) -> Vec<RecipientPlan> {
        let expand = |s: &Selector| expand(s, members);
        // Per user: channel → what the table says, for its defaults. An
        // escalation step only adds a channel no rule sends the user.
        let mut defaults: BTreeMap<UserId, BTreeMap<ChannelKind, Spec>> = BTreeMap::new();
        for s in &self.inbox {
            for u in expand(s) {
                defaults
                    .entry(u)
                    .or_default()
                    .entry(ChannelKind::InApp)
                    .or_default();
            }
        }
        for d in self.deliveries.iter().filter(|d| d.escalation.is_none()) {
            for u in expand(&d.to) {
                let spec = defaults.entry(u).or_default().entry(d.channel).or_default();
                spec.mandatory |= d.mandatory;
                if let Some(hold) = d.hold {
                    spec.hold = Some((hold, SeenCheck::Recipient));
                }
            }
        }
        for d in &self.deliveries {
            let Some(after) = d.escalation else { continue };
            for u in expand(&d.to) {
                let spec = defaults
                    .entry(u)
                    .or_default()
                    .entry(d.channel)
                    .or_insert(Spec {
                        mandatory: true,
                        hold: Some((after, SeenCheck::Anyone)),
                        escalation: true,
                    });
                // Of two steps on one channel, the earlier.
                if let Some((held, SeenCheck::Anyone)) = spec.hold
                    && spec.escalation
                    && after < held
                {
                    spec.hold = Some((after, SeenCheck::Anyone));
                }
            }
        }
        let fallback = Profile::default();
        defaults
            .into_iter()
            .map(|(user, defaults)| {
                let profile = profiles.get(&user).unwrap_or(&fallback);
                let mut decisions = BTreeMap::new();
                for channel in ChannelKind::PREFERENCE {
                    let spec = defaults.get(&channel).copied();
                    if let Some(d) = self.decide(channel, spec, profile, now, true) {
                        decisions.insert(channel, d);
                    }
                }
                RecipientPlan { user, decisions }
            })
            .collect()
    }

    /// Decides one (recipient, channel) again at send time, for a delivery
    /// that was scheduled for `scheduled`: what the table said then is
    /// read back from that reason (a mandatory delivery stays mandatory, an
    /// opt-in by override stays an opt-in), and today's preferences,
    /// contact details and clock decide. `None` means the table no longer
    /// sends it and no override asks for it.
    pub fn recheck(
        &self,
        channel: ChannelKind,
        scheduled: Reason,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let default = match scheduled {
            Reason::Mandatory => Some(Spec {
                mandatory: true,
                ..Spec::default()
            }),
            Reason::Escalation => Some(Spec {
                mandatory: true,
                escalation: true,
                hold: None,
            }),
            Reason::EventOverride | Reason::CategoryOverride => None,
            _ => Some(Spec::default()),
        };
        self.decide(channel, default, profile, now, false)
    }

    /// The throttle on `channel` for this event's category; none for a
    /// critical event.
    pub fn throttle(&self, channel: ChannelKind) -> Option<Throttle> {
        if self.critical {
            return None;
        }
        self.policy.throttle.get(&channel).copied()
    }

    /// When the next digest of this event's category goes out to this
    /// recipient on `channel`: their daily digest, else the routing file's
    /// window. `None` when the category has no digest for them.
    pub fn next_digest(
        &self,
        channel: ChannelKind,
        profile: &Profile,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if self.critical || !channel.is_external() {
            return None;
        }
        let category = self.kind.category();
        if let Some(daily) = profile.preferences.digests.get(category) {
            return Some(daily.next(now, profile.contact.timezone.as_deref()));
        }
        self.policy
            .digest
            .as_ref()
            .filter(|w| w.channels.contains(&channel))
            .map(|w| w.ends_after(now))
    }

    /// One (recipient, channel). `default` is what the table says when it
    /// sends this channel; `None` when only an override could add it.
    /// `scheduling` is true when the delivery is being planned: only then
    /// does a category's digest window apply (at send time the delivery is
    /// already at its window's end).
    fn decide(
        &self,
        channel: ChannelKind,
        default: Option<Spec>,
        profile: &Profile,
        now: DateTime<Utc>,
        scheduling: bool,
    ) -> Option<Decision> {
        let prefs = &profile.preferences;
        let suppress = |reason| Some(Decision::Suppress { reason });
        let reason = if default.is_some_and(|d| d.escalation) {
            Reason::Escalation
        } else if default.is_some_and(|d| d.mandatory) {
            Reason::Mandatory
        } else if !prefs.enabled {
            return default.and(suppress(Reason::GlobalOff));
        } else if prefs.channels.get(&channel) == Some(&false) {
            return default.and(suppress(Reason::ChannelOff));
        } else {
            match prefs.override_for(self.kind, channel) {
                Some((true, by_event)) => override_reason(by_event),
                Some((false, by_event)) => {
                    return default.and(suppress(override_reason(by_event)));
                }
                None if default.is_some() => Reason::RoutingDefault,
                None => return None,
            }
        };
        if !profile.reachable(channel) {
            return suppress(Reason::NoContact);
        }
        let mut defer_until = match &prefs.quiet_hours {
            Some(q) if channel.is_intrusive() && !self.critical => {
                q.ends_after(now, profile.contact.timezone.as_deref())
            }
            _ => None,
        };
        // What quiet hours hold back goes out as one digest at their end;
        // a category window that ends later takes it instead.
        let mut digest = defer_until.map(|_| DigestGroup::Quiet);
        if scheduling
            && let Some(end) = self.next_digest(channel, profile, now)
            && defer_until.is_none_or(|quiet| end > quiet)
        {
            defer_until = Some(end);
            digest = Some(DigestGroup::Category(self.kind.category()));
        }
        // A hold (or an escalation step) is due at its end unless quiet
        // hours or a digest keep it longer; it is skipped if seen by then.
        let mut hold = None;
        if scheduling && let Some((period, check)) = default.and_then(|d| d.hold) {
            let until = now + chrono::Duration::milliseconds(period.as_millis());
            hold = Some(check);
            if defer_until.is_none_or(|t| until > t) {
                defer_until = Some(until);
                digest = None;
            }
        }
        Some(Decision::Deliver {
            reason,
            defer_until,
            digest,
            hold,
        })
    }
}

fn override_reason(by_event: bool) -> Reason {
    if by_event {
        Reason::EventOverride
    } else {
        Reason::CategoryOverride
    }
}

fn expand(selector: &Selector, members: &HashMap<Selector, Vec<UserId>>) -> Vec<UserId> {
    match selector {
        Selector::User(u) => vec![u.clone()],
        group => members.get(group).cloned().unwrap_or_default(),
    }
}

impl Route {
    /// Every user this route addresses once groups are expanded: the users
    /// whose profiles [`Route::plan`] needs.
    pub fn users(&self, members: &HashMap<Selector, Vec<UserId>>) -> BTreeSet<UserId> {
        self.inbox
            .iter()
            .chain(self.deliveries.iter().map(|d| &d.to))
            .flat_map(|s| expand(s, members))
            .collect()
    }
}

/// The running routing table, shared by everything that routes (ingest,
/// the delivery workers) and replaced whole while they run: an admin's
/// `PUT /v1/admin/routing` applies on every node without a restart.
///
/// A reader takes the table current at that moment and keeps it for the
/// event at hand, so one event is routed by one table from start to end;
/// the next event sees the replacement. Clones share the one slot.
#[derive(Debug, Clone)]
pub struct SharedRouting(Arc<ArcSwap<RoutingTable>>);

impl SharedRouting {
    pub fn new(table: Arc<RoutingTable>) -> SharedRouting {
        SharedRouting(Arc::new(ArcSwap::new(table)))
    }

    /// The table in force now.
    pub fn load(&self) -> Arc<RoutingTable> {
        self.0.load_full()
    }

    /// Puts `table` in force for every clone.
    pub fn replace(&self, table: Arc<RoutingTable>) {
        self.0.store(table);
    }

    /// What the table in force says about `event` (see [`RoutingTable::route`]).
    pub fn route(&self, event: &ValidatedEvent) -> Route {
        self.0.load().route(event)
    }
}

#[cfg(test)]
mod tests;
