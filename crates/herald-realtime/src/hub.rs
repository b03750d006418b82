//! The hub: who is connected, which rooms they are in, and the one place
//! events fan out from.
//!
//! **Ordering.** Events reach sockets from a single ordered source: on a
//! single node, [`Hub::publish`] appends and dispatches under the history
//! lock; with Redis, the bus reader dispatches the shared stream in offset
//! order (and one event's dispatch finishes before the next begins). Each
//! event goes through every target's [`Outbox`]: written to the socket
//! there and then by the dispatching task when the socket can take it,
//! queued otherwise — behind anything queued before it, so one socket sees
//! its events in offset order. A slow socket slows nobody else: when its
//! bounded queue is full it is disconnected (`slow_consumer`) and its
//! queue freed — memory stays flat.
//!
//! **Once per socket.** A socket in several of an event's rooms is found
//! once: targets are deduplicated before anything is sent. The event is
//! serialised once per broadcast ([`Delivery`]); every socket gets the
//! same frame. A `/ws` socket is written that very frame; Socket.IO
//! sockets share one packet too, the payload spliced into it by the first
//! socket that sends it ([`Delivery::socketio_text`]).
//!
//! **Rooms.** Most rooms have one member (`user:…`, `guest:…`): a room's
//! [`Members`] are a single id until a second socket joins, and a room's
//! name is one allocation shared by the room and its members' entries.
//!
//! **Shutdown.** [`Hub::shutdown`] refuses new connections, tells every
//! socket `disconnected {reason: "server_restart", reconnectDelay}` with a
//! jittered delay, waits for the sessions to end, then closes the
//! Engine.IO sessions still open; clients see a transport close and
//! reconnect.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use herald_core::auth::Principal;
use herald_store::Store;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

use crate::actions::Actions;
use crate::bus::{EpochInfo, RedisBus};
use crate::durable::{DurableLog, Recovered};
use crate::history::{Delivery, MemoryLog, Snapshot, Stored, next_offset};
use crate::members::Members;
use crate::metrics::Metrics;
use crate::outbox::{Offer, Outbox, Wire};
use crate::protocol::{CloseReason, Refusal, auto_rooms};
use crate::resume::Reason;
use crate::{Error, RealtimeConfig, Verifier};

pub(crate) type ConnId = u64;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    SocketIo,
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::SocketIo => "socketio",
            Transport::Ws => "ws",
        }
    }
}

/// An event accepted by ingest, on its way to the rooms of its route.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The catalog name (`points_added`).
    pub event: String,
    /// The stored event's id; clients see it as `data.eventId`.
    pub event_id: String,
    /// The rooms of the route (contract §4).
    pub rooms: Vec<String>,
    /// The validated payload.
    pub data: Map<String, Value>,
}

/// One connected socket, as the hub sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    pub id: ConnId,
    pub principal: Principal,
    pub transport: Transport,
    /// Where its events go: the socket itself, or a queue (see [`Outbox`]).
    pub outbox: Outbox,
}

impl Conn {
    /// Asks the connection's session to close; the first reason wins.
    pub fn kill(&self, reason: CloseReason) {
        self.outbox.kill(reason);
    }

    /// Why the connection was asked to close, if it was.
    pub fn killed(&self) -> Option<CloseReason> {
        self.outbox.killed()
    }
}

/// What [`Hub::register`] hands the transport.
#[derive(Debug)]
pub(crate) struct Registered {
    pub conn: Arc<Conn>,
    /// The last offset dispatched before the connection joined its rooms:
    /// everything after it reaches the connection.
    pub watermark: u64,
    pub rooms: Vec<String>,
}

#[derive(Debug)]
struct Entry {
    conn: Arc<Conn>,
    /// Its rooms; the names are shared with [`Registry::rooms`].
    rooms: Vec<Arc<str>>,
    /// Epoch milliseconds, for [`Hub::connections`].
    connected_at: i64,
}

#[derive(Debug, Default)]
struct Registry {
    conns: HashMap<ConnId, Entry>,
    rooms: HashMap<Arc<str>, Members>,
    users: HashMap<String, usize>,
    watermark: u64,
}

/// How long a publish waits for the bus before delivering to this node's
/// sockets alone: a Redis that does not answer must not hold up ingest.
const BUS_PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// While cut off, how often a publish tries the bus again.
const BUS_RETRY: Duration = Duration::from_secs(1);

/// Whether this node delivered events the shared history does not hold.
#[derive(Debug, Default)]
struct Outage {
    /// Since when, if so; and when the bus was last tried.
    state: Mutex<Option<(std::time::Instant, std::time::Instant)>>,
    /// The last offset this node issued on its own.
    last: Mutex<u64>,
}

impl Outage {
    fn cut_off(&self) {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().expect("outage lock");
        let since = state.map_or(now, |(since, _)| since);
        *state = Some((since, now));
    }

    fn is_cut_off(&self) -> bool {
        self.state.lock().expect("outage lock").is_some()
    }

    fn healed(&self) {
        *self.state.lock().expect("outage lock") = None;
    }

    /// Whether a publish should try the bus: always when it works, and
    /// every [`BUS_RETRY`] while it does not.
    fn try_bus(&self) -> bool {
        let mut state = self.state.lock().expect("outage lock");
        match &mut *state {
            None => true,
            Some((_, tried)) if tried.elapsed() >= BUS_RETRY => {
                *tried = std::time::Instant::now();
                true
            }
            Some(_) => false,
        }
    }
}

/// Where room streams live.
#[derive(Debug)]
enum Log {
    Memory(Mutex<MemoryLog>),
    Redis(RedisBus),
}

/// `GET /v1/admin/stats`: this node's sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub server_id: String,
    /// Distinct users with at least one socket.
    pub connected_users: usize,
    pub total_sockets: usize,
    /// Rooms with at least one socket.
    pub rooms: usize,
    pub transports: TransportStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransportStats {
    pub socketio: usize,
    pub ws: usize,
}

/// `GET /v1/admin/connections`: a page of this node's connected users,
/// by user id, each with their sockets (oldest first) and rooms. A copy
/// taken under the registry's read lock; nothing in it is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    pub server_id: String,
    /// Distinct users with a socket on this node, on every page.
    pub total_users: usize,
    pub users: Vec<UserSockets>,
    /// The last user id of this page when more follow (pass it as `after`).
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSockets {
    pub user_id: String,
    pub role: &'static str,
    pub restaurant_id: Option<String>,
    pub sockets: Vec<SocketInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SocketInfo {
    /// This node's number for the socket (not stable across restarts).
    pub id: u64,
    pub transport: &'static str,
    /// Epoch milliseconds.
    pub connected_at: i64,
    /// Sorted.
    pub rooms: Vec<String>,
}

/// The realtime hub; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// The hub's state. Private: the bus, the action relay and the transports
/// see it only through [`Hub`]'s methods (dispatch, join/leave, the
/// watermark, the shutdown signal, the engine's session table, verify).
struct Inner {
    config: RealtimeConfig,
    server_id: String,
    verifier: Arc<dyn Verifier>,
    metrics: Metrics,
    actions: Actions,
    /// Where read receipts are recorded.
    store: Store,
    log: Log,
    registry: RwLock<Registry>,
    /// Held for one event's whole dispatch, so that two sources (the bus
    /// reader and a publish cut off from the bus) never interleave their
    /// writes to one socket.
    dispatching: Mutex<()>,
    /// The bus was down when this node published (clustered only).
    outage: Outage,
    /// The realtime log in the database (clustered only).
    durable: Option<Arc<DurableLog>>,
    next_id: AtomicU64,
    closing: AtomicBool,
    emptied: Notify,
    /// Background tasks stop when this turns true.
    stop: watch::Sender<bool>,
    /// The Engine.IO sessions of `/socket.io/`.
    engine: crate::engineio::Engine,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("server_id", &self.server_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Hub {
    /// Builds the hub: connects the bus when Redis is configured (and
    /// starts its reader), and the `action_confirm` relay when a webhook is.
    /// Its metrics join `metrics`, the process's registry.
    pub async fn start(
        config: RealtimeConfig,
        verifier: Arc<dyn Verifier>,
        store: Store,
        metrics: &prometheus::Registry,
    ) -> Result<Hub, Error> {
        config.validate()?;
        let server_id = if config.server_id.is_empty() {
            format!("herald-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
        } else {
            config.server_id.clone()
        };
        let metrics = Metrics::new(metrics);
        let (stop, _) = watch::channel(false);
        let log = if config.redis_url.is_empty() {
            metrics.bus_up.set(1);
            Log::Memory(Mutex::new(MemoryLog::new(
                config.history_max_events,
                (config.history_max_age_seconds * 1000) as i64,
                config.history_bytes,
            )))
        } else {
            Log::Redis(RedisBus::connect(&config).await?)
        };
        let durable = matches!(log, Log::Redis(_)).then(|| {
            DurableLog::start(
                store.clone(),
                config.history_max_events,
                (config.history_max_age_seconds * 1000) as i64,
                stop.subscribe(),
            )
        });
        let actions = Actions::new(store.clone(), &config)?;
        let hub = Hub {
            inner: Arc::new(Inner {
                config,
                server_id,
                verifier,
                metrics,
                actions,
                store,
                log,
                registry: RwLock::new(Registry::default()),
                dispatching: Mutex::new(()),
                outage: Outage::default(),
                durable,
                next_id: AtomicU64::new(1),
                closing: AtomicBool::new(false),
                emptied: Notify::new(),
                stop,
                engine: crate::engineio::Engine::default(),
            }),
        };
        match &hub.inner.log {
            Log::Memory(_) => {
                tokio::spawn(sweep_memory(hub.clone()));
            }
            Log::Redis(bus) => {
                let (epoch, head) = bus.position_with_epoch().await?;
                if let Some(log) = &hub.inner.durable {
                    log.note_epoch(&epoch).await;
                }
                hub.raise_watermark(head);
                bus.spawn_reader(hub.clone(), head);
            }
        }
        hub.inner.actions.spawn_relay(hub.clone());
        tracing::info!(
            server_id = %hub.inner.server_id,
            bus = if hub.is_clustered() { "redis" } else { "memory" },
            "realtime hub started"
        );
        Ok(hub)
    }

    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.inner.config
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Who a token names and when it stops being valid, or a message safe
    /// to show the client: the one check both transports (through
    /// [`crate::admission`]) and the handshake guard make.
    pub(crate) fn verify(&self, token: &str) -> Result<(Principal, u64), String> {
        self.inner.verifier.verify(token)
    }

    /// The Engine.IO sessions of `/socket.io/`.
    pub(crate) fn engine(&self) -> &crate::engineio::Engine {
        &self.inner.engine
    }

    /// Turns true when the hub shuts down: background tasks (the bus
    /// reader, the engine's sweeper, the action relay) end on it.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.subscribe()
    }

    /// The `action_confirm` recorder and relay.
    pub(crate) fn actions(&self) -> &Actions {
        &self.inner.actions
    }

    /// Where read receipts are recorded.
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The Redis bus, when the hub is clustered.
    pub(crate) fn bus(&self) -> Option<&RedisBus> {
        match &self.inner.log {
            Log::Redis(bus) => Some(bus),
            Log::Memory(_) => None,
        }
    }

    /// Records an epoch of the shared history in the database's realtime
    /// log (clustered only; see [`crate::durable`]).
    pub(crate) async fn note_epoch(&self, epoch: &EpochInfo) {
        if let Some(log) = &self.inner.durable {
            log.note_epoch(epoch).await;
        }
    }

    /// The resume window's size, as `/metrics` shows it.
    fn count_history(&self, log: &MemoryLog) {
        let (events, bytes) = log.held_bytes();
        self.inner.metrics.history_events.set(events as i64);
        self.inner.metrics.history_bytes.set(bytes as i64);
    }

    fn is_clustered(&self) -> bool {
        matches!(self.inner.log, Log::Redis(_))
    }

    /// Fans accepted events out to their rooms, on every node. Called after
    /// the events are committed; a broken bus is logged and counted (the
    /// events are durable and in the inbox either way) and `/readyz` says so.
    pub async fn publish(&self, events: Vec<Outgoing>) {
        let stored: Vec<Stored> = events
            .into_iter()
            .filter(|e| !e.rooms.is_empty())
            .filter_map(|mut e| {
                e.data
                    .insert("eventId".to_owned(), Value::String(e.event_id.clone()));
                let data = serde_json::value::to_raw_value(&e.data)
                    .map_err(
                        |err| tracing::error!(error = %err, "event payload does not serialise"),
                    )
                    .ok()?;
                Some(Stored {
                    event: e.event,
                    event_id: e.event_id,
                    rooms: e.rooms,
                    data,
                })
            })
            .collect();
        if stored.is_empty() {
            return;
        }
        match &self.inner.log {
            Log::Memory(log) => {
                let now = now_ms();
                let mut log = log.lock().expect("history lock");
                for s in stored {
                    let delivery = log.append(s, now);
                    self.dispatch(&delivery);
                }
                self.count_history(&log);
            }
            Log::Redis(bus) => {
                if !self.inner.outage.try_bus() {
                    self.fan_out_locally(stored);
                    return;
                }
                let published =
                    tokio::time::timeout(BUS_PUBLISH_TIMEOUT, bus.publish(&stored)).await;
                match published {
                    Ok(Ok((epoch, offsets))) => {
                        if let Some(log) = &self.inner.durable {
                            log.note_epoch(&epoch).await;
                            log.append(&stored, &offsets);
                        }
                        self.heal().await;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, events = stored.len(), "realtime bus unavailable: delivering to this node's sockets only");
                        self.fan_out_locally(stored);
                    }
                    Err(_) => {
                        tracing::error!(
                            events = stored.len(),
                            "realtime bus did not answer: delivering to this node's sockets only"
                        );
                        self.fan_out_locally(stored);
                    }
                }
            }
        }
    }

    /// The bus is down: this node's sockets still get the events, with
    /// offsets of this node's own, and the node remembers that the shared
    /// history misses them. Sockets on other nodes (and, later, these) are
    /// asked to resume once the bus is back ([`Hub::heal`]).
    fn fan_out_locally(&self, stored: Vec<Stored>) {
        self.inner.metrics.bus_up.set(0);
        self.inner.outage.cut_off();
        let now = now_ms();
        for s in stored {
            // One at a time, so offsets stay in dispatch order.
            let mut last = self.inner.outage.last.lock().expect("outage lock");
            let watermark = self.inner.registry.read().expect("registry lock").watermark;
            *last = next_offset((*last).max(watermark), now);
            self.dispatch(&Arc::new(Delivery::new(*last, s)));
        }
    }

    /// After an outage in which this node delivered events on its own: a
    /// new epoch, and every node's sockets asked to resume, so that no
    /// resume claims a history that misses those events. Tried again (by
    /// the next publish or the bus reader) until it succeeds.
    pub(crate) async fn heal(&self) {
        let Log::Redis(bus) = &self.inner.log else {
            return;
        };
        let log_has_holes = self.inner.durable.as_ref().is_some_and(|l| l.owes_resync());
        if !self.inner.outage.is_cut_off() && !log_has_holes {
            return;
        }
        match tokio::time::timeout(BUS_PUBLISH_TIMEOUT, bus.resync()).await {
            Ok(Ok(epoch)) => {
                self.inner.outage.healed();
                self.inner.metrics.bus_up.set(1);
                if let Some(log) = &self.inner.durable {
                    log.note_epoch(&epoch).await;
                }
                tracing::warn!(epoch = %epoch.epoch, "realtime history: new epoch; every node's sockets asked to resume");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "realtime bus: could not start a new epoch yet")
            }
            Err(_) => tracing::warn!("realtime bus: no answer to the new epoch yet"),
        }
    }

    /// Hands one event to every local socket in its rooms. Called in offset
    /// order by a single source at a time (see the module docs).
    #[tracing::instrument(
        name = "realtime_dispatch",
        skip_all,
        fields(
            event_id = %delivery.event_id,
            event = %delivery.event,
            offset = delivery.offset,
            rooms = delivery.rooms.len(),
            sockets = tracing::field::Empty,
        )
    )]
    pub(crate) fn dispatch(&self, delivery: &Arc<Delivery>) {
        let _one_at_a_time = self.inner.dispatching.lock().expect("dispatch lock");
        // The targets, under the registry lock; the writes after it, so
        // that sockets come and go meanwhile.
        let targets: Vec<Arc<Conn>> = {
            let mut reg = self.inner.registry.write().expect("registry lock");
            reg.watermark = reg.watermark.max(delivery.offset);
            let mut ids: Vec<ConnId> = Vec::new();
            for room in &delivery.rooms {
                if let Some(members) = reg.rooms.get(room.as_str()) {
                    ids.reserve(members.len());
                    members.for_each(|id| ids.push(id));
                }
            }
            if delivery.rooms.len() > 1 {
                ids.sort_unstable();
                ids.dedup();
            }
            ids.iter()
                .filter_map(|id| reg.conns.get(id).map(|e| e.conn.clone()))
                .collect()
        };
        tracing::Span::current().record("sockets", targets.len());
        let metrics = &self.inner.metrics;
        let (mut written, mut full) = ([0u64; 2], 0u64);
        for conn in &targets {
            match conn.outbox.offer(delivery) {
                Offer::Written => written[conn.transport as usize] += 1,
                Offer::Full => full += 1,
                Offer::Queued | Offer::Skipped => {}
            }
        }
        for t in [Transport::SocketIo, Transport::Ws] {
            if written[t as usize] > 0 {
                metrics
                    .messages_sent
                    .with_label_values(&[t.as_str()])
                    .inc_by(written[t as usize]);
            }
        }
        if full > 0 {
            metrics
                .dropped
                .with_label_values(&["slow_consumer"])
                .inc_by(full);
        }
        metrics.events_published.inc();
    }

    /// Moves the watermark up (the bus reader, when idle, to Redis's head).
    pub(crate) fn raise_watermark(&self, offset: u64) {
        let mut reg = self.inner.registry.write().expect("registry lock");
        reg.watermark = reg.watermark.max(offset);
    }

    /// Asks every local connection to close.
    pub(crate) fn kill_all(&self, reason: CloseReason) {
        let reg = self.inner.registry.read().expect("registry lock");
        for entry in reg.conns.values() {
            entry.conn.kill(reason);
        }
    }

    /// Adds a connection and its auto-joined rooms.
    pub(crate) fn register(
        &self,
        principal: Principal,
        transport: Transport,
    ) -> Result<Registered, Refusal> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(crate::admission::restarting());
        }
        let config = &self.inner.config;
        let wire = match transport {
            Transport::SocketIo => Wire::SocketIo,
            Transport::Ws => Wire::Json,
        };
        // Offsets remembered for replays: one replay plus the queue.
        let seen = config.history_max_events + config.outbound_queue + 64;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let rooms = auto_rooms(&principal);
        let conn = Arc::new(Conn {
            id,
            principal,
            transport,
            outbox: Outbox::new(wire, config.outbound_queue, seen),
        });
        let mut reg = self.inner.registry.write().expect("registry lock");
        *reg.users
            .entry(conn.principal.user_id.as_str().to_owned())
            .or_default() += 1;
        reg.conns.insert(
            id,
            Entry {
                conn: conn.clone(),
                rooms: Vec::new(),
                connected_at: now_ms(),
            },
        );
        for room in &rooms {
            join_locked(&mut reg, id, room);
        }
        // On a single node offsets follow this clock, so "just before now"
        // is a watermark no later event can fall under; with Redis, only
        // the reader's position is (Redis's clock issues the offsets).
        let watermark = match self.inner.log {
            Log::Memory(_) => reg
                .watermark
                .max(crate::history::ms_offset(now_ms()).saturating_sub(1)),
            Log::Redis(_) => reg.watermark,
        };
        self.inner.metrics.rooms.set(reg.rooms.len() as i64);
        drop(reg);
        let t = transport.as_str();
        self.inner.metrics.connections.with_label_values(&[t]).inc();
        self.inner
            .metrics
            .connections_total
            .with_label_values(&[t])
            .inc();
        Ok(Registered {
            conn,
            watermark,
            rooms,
        })
    }

    /// Joins a room; false when the connection was already in it.
    pub(crate) fn join(&self, id: ConnId, room: &str) -> bool {
        let mut reg = self.inner.registry.write().expect("registry lock");
        let joined = join_locked(&mut reg, id, room);
        self.inner.metrics.rooms.set(reg.rooms.len() as i64);
        joined
    }

    pub(crate) fn leave(&self, id: ConnId, room: &str) {
        let mut reg = self.inner.registry.write().expect("registry lock");
        leave_locked(&mut reg, id, room);
        self.inner.metrics.rooms.set(reg.rooms.len() as i64);
    }

    /// Removes a connection once its session has ended.
    pub(crate) fn unregister(&self, conn: &Conn, reason: CloseReason) {
        let mut reg = self.inner.registry.write().expect("registry lock");
        let Some(entry) = reg.conns.remove(&conn.id) else {
            return;
        };
        for room in entry.rooms {
            if let Some(members) = reg.rooms.get_mut(&room)
                && members.remove(conn.id)
            {
                reg.rooms.remove(&room);
            }
        }
        let user = conn.principal.user_id.as_str();
        if let Some(n) = reg.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                reg.users.remove(user);
            }
        }
        self.inner.metrics.rooms.set(reg.rooms.len() as i64);
        let empty = reg.conns.is_empty();
        drop(reg);
        let m = &self.inner.metrics;
        m.connections
            .with_label_values(&[conn.transport.as_str()])
            .dec();
        m.disconnects.with_label_values(&[reason.as_str()]).inc();
        tracing::info!(
            conn = conn.id,
            user = %conn.principal.user_id.as_str(),
            transport = conn.transport.as_str(),
            reason = reason.as_str(),
            "realtime connection closed"
        );
        if empty {
            self.inner.emptied.notify_waiters();
        }
    }

    /// This node's sockets.
    pub fn stats(&self) -> Stats {
        let reg = self.inner.registry.read().expect("registry lock");
        let by = |t: Transport| reg.conns.values().filter(|e| e.conn.transport == t).count();
        Stats {
            server_id: self.inner.server_id.clone(),
            connected_users: reg.users.len(),
            total_sockets: reg.conns.len(),
            rooms: reg.rooms.len(),
            transports: TransportStats {
                socketio: by(Transport::SocketIo),
                ws: by(Transport::Ws),
            },
        }
    }

    /// Up to `limit` users with a socket here, by user id, after `after`.
    pub fn connections(&self, after: Option<&str>, limit: usize) -> Connections {
        let reg = self.inner.registry.read().expect("registry lock");
        let mut by_user: std::collections::BTreeMap<&str, Vec<&Entry>> = Default::default();
        for entry in reg.conns.values() {
            let user = entry.conn.principal.user_id.as_str();
            if after.is_none_or(|a| user > a) {
                by_user.entry(user).or_default().push(entry);
            }
        }
        let more = by_user.len() > limit;
        let users: Vec<UserSockets> = by_user
            .into_iter()
            .take(limit)
            .map(|(user, mut entries)| {
                entries.sort_by_key(|e| (e.connected_at, e.conn.id));
                let principal = &entries[0].conn.principal;
                UserSockets {
                    user_id: user.to_owned(),
                    role: principal.role.as_str(),
                    restaurant_id: principal.restaurant_id.clone(),
                    sockets: entries
                        .iter()
                        .map(|e| {
                            let mut rooms: Vec<String> =
                                e.rooms.iter().map(|r| r.to_string()).collect();
                            rooms.sort();
                            SocketInfo {
                                id: e.conn.id,
                                transport: e.conn.transport.as_str(),
                                connected_at: e.connected_at,
                                rooms,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Connections {
            server_id: self.inner.server_id.clone(),
            total_users: reg.users.len(),
            next_after: more
                .then(|| users.last().map(|u| u.user_id.clone()))
                .flatten(),
            users,
        }
    }

    /// Whether fan-out works: always on a single node; with Redis, whether
    /// the bus answers and its reader is running.
    pub async fn ready(&self) -> Result<(), String> {
        match &self.inner.log {
            Log::Memory(_) => Ok(()),
            Log::Redis(bus) => bus.ready().await,
        }
    }

    /// The history's epoch and head.
    pub(crate) async fn position(&self) -> Result<(String, u64), Error> {
        match &self.inner.log {
            Log::Memory(log) => {
                let mut log = log.lock().expect("history lock");
                let head = log.head(now_ms());
                Ok((log.epoch().to_owned(), head))
            }
            Log::Redis(bus) => bus.position().await,
        }
    }

    /// Per room, the events after its starting offset, or why the room
    /// cannot be recovered.
    pub(crate) async fn snapshot(&self, from: &[(String, u64)]) -> Result<Snapshot, Error> {
        match &self.inner.log {
            Log::Memory(log) => Ok(log.lock().expect("history lock").snapshot(from, now_ms())),
            Log::Redis(bus) => bus.snapshot(from).await,
        }
    }

    /// What a client at epoch `old` missed since `from`, when the history
    /// changed epoch only because Redis restarted (see [`crate::durable`]);
    /// otherwise why not.
    pub(crate) async fn recover_across_epochs(
        &self,
        old: &str,
        from: &[(String, u64)],
    ) -> Result<Result<Recovered, Reason>, Error> {
        match (&self.inner.log, &self.inner.durable) {
            (Log::Redis(bus), Some(log)) => log.recover(bus, old, from).await,
            // One node's history lives as long as its process: another
            // epoch is a history that is gone.
            _ => Ok(Err(Reason::EpochChanged)),
        }
    }

    /// The offset of a published event, while history remembers it.
    pub(crate) async fn offset_of(&self, event_id: &str) -> Result<Option<u64>, Error> {
        match &self.inner.log {
            Log::Memory(log) => Ok(log.lock().expect("history lock").offset_of(event_id)),
            Log::Redis(bus) => bus.offset_of(event_id).await,
        }
    }

    /// A jittered reconnect delay for `disconnected`.
    pub(crate) fn reconnect_delay(&self) -> u64 {
        let c = &self.inner.config;
        c.reconnect_delay_ms + rand::random_range(0..=c.reconnect_jitter_ms)
    }

    /// Closes every connection with `server_restart` and stops the
    /// background tasks. Waits at most `grace` for sessions to finish.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.store(true, Ordering::SeqCst);
        tracing::info!(
            sockets = self.stats().total_sockets,
            "realtime shutdown: telling clients to reconnect"
        );
        self.kill_all(CloseReason::ServerRestart);
        let drained = async {
            loop {
                let wait = self.inner.emptied.notified();
                if self
                    .inner
                    .registry
                    .read()
                    .expect("registry lock")
                    .conns
                    .is_empty()
                {
                    return;
                }
                wait.await;
            }
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!("realtime shutdown: some sessions did not finish in time");
        }
        self.inner.engine.close_all();
        self.inner.stop.send_replace(true);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }
}

fn join_locked(reg: &mut Registry, id: ConnId, room: &str) -> bool {
    let Some(entry) = reg.conns.get_mut(&id) else {
        return false;
    };
    if entry.rooms.iter().any(|r| &**r == room) {
        return false;
    }
    match reg.rooms.get_key_value(room).map(|(name, _)| name.clone()) {
        Some(name) => {
            if let Some(members) = reg.rooms.get_mut(room) {
                members.insert(id);
            }
            entry.rooms.push(name);
        }
        None => {
            let name: Arc<str> = room.into();
            reg.rooms.insert(name.clone(), Members::One(id));
            entry.rooms.push(name);
        }
    }
    true
}

fn leave_locked(reg: &mut Registry, id: ConnId, room: &str) {
    if let Some(entry) = reg.conns.get_mut(&id) {
        entry.rooms.retain(|r| &**r != room);
    }
    if let Some(members) = reg.rooms.get_mut(room)
        && members.remove(id)
    {
        reg.rooms.remove(room);
    }
}

/// Drops aged-out history on a single node, a few times per window.
async fn sweep_memory(hub: Hub) {
    let every = Duration::from_secs((hub.inner.config.history_max_age_seconds / 8).clamp(1, 300));
    let mut stop = hub.inner.stop.subscribe();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Log::Memory(log) = &hub.inner.log {
                    let mut log = log.lock().expect("history lock");
                    log.sweep(now_ms());
                    hub.count_history(&log);
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Events produced away from ingest (the delivery workers'
/// `delivery_failed`) reach sockets the same way: handed to the hub, which
/// numbers them, keeps them for resume and fans them out on every node.
impl herald_core::realtime::Broadcast for Hub {
    fn broadcast(&self, event: herald_core::realtime::RealtimeEvent) {
        let hub = self.clone();
        let outgoing = Outgoing {
            event: event.kind.as_str().to_owned(),
            event_id: event.id.to_string(),
            rooms: event.rooms,
            data: event.data,
        };
        tokio::spawn(async move { hub.publish(vec![outgoing]).await });
    }
}

/// The registry, through the hub's own interface: no network, no Redis;
/// a single-node hub as `config/default.toml` configures it.
#[cfg(test)]
mod tests {
    use herald_core::{Role, UserId};

    use super::*;
    use crate::protocol::ErrorCode;

    struct NoTokens;

    impl Verifier for NoTokens {
        fn verify(&self, _: &str) -> Result<(Principal, u64), String> {
            Err("no tokens in these tests".into())
        }
    }

    fn config() -> RealtimeConfig {
        let file: toml::Table = toml::from_str(include_str!("../../../config/default.toml"))
            .expect("config/default.toml parses");
        file["realtime"]
            .clone()
            .try_into()
            .expect("the [realtime] defaults are a RealtimeConfig")
    }

    async fn hub_with(config: RealtimeConfig) -> Hub {
        let store = Store::connect("sqlite::memory:", 1)
            .await
            .expect("in-memory SQLite");
        Hub::start(
            config,
            Arc::new(NoTokens),
            store,
            &prometheus::Registry::new(),
        )
        .await
        .expect("a single-node hub starts")
    }

    fn who(role: Role, id: &str) -> Principal {
        Principal {
            user_id: UserId(id.into()),
            role,
            restaurant_id: matches!(role, Role::Restaurant | Role::Cashier).then(|| "r1".into()),
        }
    }

    fn event(id: &str, rooms: &[&str]) -> Outgoing {
        Outgoing {
            event: "system_alert".into(),
            event_id: id.into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            data: Map::new(),
        }
    }

    /// The event ids waiting in a connection's outbox (no socket is
    /// attached in these tests, so the hub queues everything).
    fn drain(registered: &Registered) -> Vec<String> {
        registered
            .conn
            .outbox
            .drain()
            .iter()
            .map(|d| d.event_id.clone())
            .collect()
    }

    #[tokio::test]
    async fn register_and_unregister_keep_users_sockets_and_rooms_counted() {
        let hub = hub_with(config()).await;
        let g1 = hub
            .register(who(Role::Guest, "g1"), Transport::SocketIo)
            .unwrap();
        let g2 = hub.register(who(Role::Guest, "g1"), Transport::Ws).unwrap();
        let admin = hub
            .register(who(Role::Admin, "a1"), Transport::SocketIo)
            .unwrap();
        let staff = hub
            .register(who(Role::Cashier, "c1"), Transport::Ws)
            .unwrap();
        assert_eq!(g1.rooms, ["user:g1"]);
        assert_eq!(admin.rooms, ["user:a1", "admin"]);
        assert_eq!(staff.rooms, ["user:c1", "restaurant:r1"]);
        assert_ne!(g1.conn.id, g2.conn.id);
        let stats = hub.stats();
        assert_eq!(stats.connected_users, 3, "g1 twice is one user");
        assert_eq!(stats.total_sockets, 4);
        assert_eq!(stats.rooms, 5);
        assert_eq!(stats.transports, TransportStats { socketio: 2, ws: 2 });

        hub.unregister(&g1.conn, CloseReason::ClientDisconnect);
        let stats = hub.stats();
        assert_eq!(stats.connected_users, 3, "g1 still has a socket");
        assert_eq!(stats.rooms, 5, "user:g1 still has a member");
        hub.unregister(&g2.conn, CloseReason::ClientDisconnect);
        // Twice is harmless.
        hub.unregister(&g2.conn, CloseReason::ClientDisconnect);
        let stats = hub.stats();
        assert_eq!(stats.connected_users, 2);
        assert_eq!(stats.total_sockets, 2);
        assert_eq!(stats.rooms, 4, "user:g1 is gone with its last member");
        assert_eq!(stats.transports, TransportStats { socketio: 1, ws: 1 });
    }

    #[tokio::test]
    async fn join_and_leave_change_membership_once() {
        let hub = hub_with(config()).await;
        let a = hub.register(who(Role::Guest, "a"), Transport::Ws).unwrap();
        let b = hub.register(who(Role::Guest, "b"), Transport::Ws).unwrap();
        assert!(hub.join(a.conn.id, "guest:a"));
        assert!(!hub.join(a.conn.id, "guest:a"), "already in it");
        assert!(hub.join(b.conn.id, "guest:a"));
        assert!(!hub.join(999_999, "guest:a"), "no such connection");
        assert_eq!(hub.stats().rooms, 3);
        hub.leave(a.conn.id, "guest:a");
        assert_eq!(hub.stats().rooms, 3, "b is still in guest:a");
        hub.leave(b.conn.id, "guest:a");
        assert_eq!(hub.stats().rooms, 2);
        // Leaving a room one is not in changes nothing.
        hub.leave(b.conn.id, "guest:a");
        hub.leave(b.conn.id, "user:a");
        assert_eq!(hub.stats().rooms, 2);
        // A connection's rooms go with it.
        assert!(hub.join(a.conn.id, "admin:events"));
        hub.unregister(&a.conn, CloseReason::ClientDisconnect);
        assert_eq!(hub.stats().rooms, 1);
    }

    #[tokio::test]
    async fn dispatch_reaches_each_member_once_and_nobody_else() {
        let hub = hub_with(config()).await;
        let a = hub.register(who(Role::Guest, "a"), Transport::Ws).unwrap();
        let b = hub
            .register(who(Role::Guest, "b"), Transport::SocketIo)
            .unwrap();
        let admin = hub
            .register(who(Role::Admin, "root"), Transport::Ws)
            .unwrap();
        hub.join(a.conn.id, "guest:a");
        hub.publish(vec![
            // a is in both rooms: it gets the event once.
            event("e1", &["user:a", "guest:a"]),
            event("e2", &["admin", "user:b"]),
            event("e3", &["user:nobody"]),
        ])
        .await;
        assert_eq!(drain(&a), ["e1"]);
        assert_eq!(drain(&b), ["e2"]);
        assert_eq!(drain(&admin), ["e2"]);
        // After leaving, a room's events no longer arrive.
        hub.leave(a.conn.id, "guest:a");
        hub.publish(vec![event("e4", &["guest:a"])]).await;
        assert!(drain(&a).is_empty());
        // Every event is held for resume, reached anyone or not.
        assert_eq!(hub.metrics().history_events.get(), 4);
        assert!(hub.metrics().history_bytes.get() > 0);
        // A connection registered later starts above what was dispatched.
        let c = hub.register(who(Role::Guest, "c"), Transport::Ws).unwrap();
        let (_, head) = hub.position().await.unwrap();
        assert!(c.watermark >= a.watermark && c.watermark <= head);
        let offset = hub.offset_of("e4").await.unwrap().expect("e4 is held");
        assert!(c.watermark >= offset);
    }

    #[tokio::test]
    async fn a_full_queue_cuts_off_its_slow_consumer_alone() {
        let mut config = config();
        config.outbound_queue = 2;
        let hub = hub_with(config).await;
        let slow = hub.register(who(Role::Guest, "s"), Transport::Ws).unwrap();
        let fast = hub.register(who(Role::Guest, "f"), Transport::Ws).unwrap();
        for i in 0..3 {
            hub.publish(vec![event(&format!("e{i}"), &["user:s", "user:f"])])
                .await;
            drain(&fast);
        }
        assert_eq!(slow.conn.killed(), Some(CloseReason::SlowConsumer));
        assert_eq!(fast.conn.killed(), None);
    }

    #[tokio::test]
    async fn kill_all_then_shutdown_closes_every_connection_and_refuses_new_ones() {
        let hub = hub_with(config()).await;
        let a = hub.register(who(Role::Guest, "a"), Transport::Ws).unwrap();
        let b = hub
            .register(who(Role::Admin, "b"), Transport::SocketIo)
            .unwrap();
        hub.kill_all(CloseReason::Timeout);
        assert_eq!(a.conn.killed(), Some(CloseReason::Timeout));
        assert_eq!(b.conn.killed(), Some(CloseReason::Timeout));
        let woken = tokio::time::timeout(Duration::ZERO, a.conn.outbox.notified()).await;
        assert!(woken.is_ok(), "the connection's task is woken to close");
        // The first reason wins.
        hub.kill_all(CloseReason::ServerRestart);
        assert_eq!(a.conn.killed(), Some(CloseReason::Timeout));
        // Shutdown waits for the sessions to leave; here they leave at once.
        let hub2 = hub.clone();
        let (a_conn, b_conn) = (a.conn.clone(), b.conn.clone());
        let leave = tokio::spawn(async move {
            hub2.unregister(&a_conn, CloseReason::ServerRestart);
            hub2.unregister(&b_conn, CloseReason::ServerRestart);
        });
        let mut stop = hub.stop_signal();
        hub.shutdown(Duration::from_secs(30)).await;
        leave.await.unwrap();
        assert_eq!(hub.stats().total_sockets, 0);
        assert!(
            *stop.borrow_and_update(),
            "background tasks are told to stop"
        );
        assert!(hub.is_closing());
        let refused = hub
            .register(who(Role::Guest, "late"), Transport::Ws)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::ServerError);
    }
}
