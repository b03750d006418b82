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
use crate::bus::RedisBus;
use crate::durable::DurableLog;
use crate::history::{Delivery, MemoryLog, Snapshot, Stored, next_offset};
use crate::members::Members;
use crate::metrics::Metrics;
use crate::outbox::{Offer, Outbox, Wire};
use crate::protocol::{CloseReason, ErrorCode, Refusal, auto_rooms};
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
pub(crate) enum Log {
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

/// The realtime hub; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: RealtimeConfig,
    pub server_id: String,
    pub verifier: Arc<dyn Verifier>,
    pub metrics: Metrics,
    pub actions: Actions,
    /// Where read receipts are recorded.
    pub store: Store,
    pub log: Log,
    registry: RwLock<Registry>,
    /// Held for one event's whole dispatch, so that two sources (the bus
    /// reader and a publish cut off from the bus) never interleave their
    /// writes to one socket.
    dispatching: Mutex<()>,
    /// The bus was down when this node published (clustered only).
    outage: Outage,
    /// The realtime log in the database (clustered only).
    pub(crate) durable: Option<Arc<DurableLog>>,
    next_id: AtomicU64,
    closing: AtomicBool,
    emptied: Notify,
    /// Background tasks stop when this turns true.
    pub stop: watch::Sender<bool>,
    /// The Engine.IO sessions of `/socket.io/`.
    pub engine: crate::engineio::Engine,
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
            return Err(Refusal::new(
                ErrorCode::ServerError,
                "Herald is restarting; reconnect shortly",
            ));
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

    /// Per room, the events after its starting offset (or `None` where the
    /// room cannot be recovered).
    pub(crate) async fn snapshot(&self, from: &[(String, u64)]) -> Result<Snapshot, Error> {
        match &self.inner.log {
            Log::Memory(log) => Ok(log.lock().expect("history lock").snapshot(from, now_ms())),
            Log::Redis(bus) => bus.snapshot(from).await,
        }
    }

    /// What a client at epoch `old` missed since `from`, when the history
    /// changed epoch only because Redis restarted (see [`crate::durable`]).
    pub(crate) async fn recover_across_epochs(
        &self,
        old: &str,
        from: &[(String, u64)],
    ) -> Result<Option<(String, u64, Vec<Arc<Delivery>>)>, Error> {
        match (&self.inner.log, &self.inner.durable) {
            (Log::Redis(bus), Some(log)) => Ok(log
                .recover(bus, old, from)
                .await?
                .map(|(epoch, head, missed)| (epoch.epoch, head, missed))),
            _ => Ok(None),
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
                    log.lock().expect("history lock").sweep(now_ms());
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
