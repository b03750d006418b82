//! Prometheus metrics of the gateway.
//!
//! They join the registry the server makes for the whole process (one per
//! Herald instance rather than the crate's global one, so several instances
//! in one process — the integration tests — count separately), and
//! `GET /metrics` renders that registry: this node's gateway, delivery
//! workers and providers in one exposition.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::protocol::CloseReason;

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open connections, by transport (`socketio`, `ws`).
    pub connections: IntGaugeVec,
    /// Connections accepted since start, by transport.
    pub connections_total: IntCounterVec,
    /// Rooms with at least one socket on this node.
    pub rooms: IntGauge,
    /// Messages written to clients, by transport.
    pub messages_sent: IntCounterVec,
    /// Events fanned out (each counted once, however many sockets got it).
    pub events_published: IntCounter,
    /// Events not delivered to a socket, by reason (`slow_consumer`).
    pub dropped: IntCounterVec,
    /// Closed connections, by reason.
    pub disconnects: IntCounterVec,
    /// Resume requests, by outcome (`recovered`, `not_recovered`).
    pub resumes: IntCounterVec,
    /// 1 while the cross-node bus works (always 1 on a single node).
    pub bus_up: IntGauge,
    /// `action_confirm` relay attempts, by outcome: `relayed` (accepted),
    /// `retrying` (no answer, 5xx, 408 or 429: tried again), `rejected` (any
    /// other 4xx: final).
    pub relays: IntCounterVec,
    /// Handshakes without a token refused before any session was made, by
    /// reason (`rate`: the client address's allowance; `cap`: too many
    /// sessions pending authentication on this node).
    pub handshakes_refused: IntCounterVec,
    /// Socket.IO sessions holding memory that have not authenticated yet.
    pub pending_handshakes: IntGauge,
    /// Engine.IO sessions open on this node, authenticated or not, on
    /// either transport.
    pub engine_sessions: IntGauge,
    /// A single node's resume window: the bytes it holds (against
    /// `history_bytes`), and its events.
    pub history_bytes: IntGauge,
    pub history_events: IntGauge,
}

impl Metrics {
    /// Registers every metric of the gateway in `registry`.
    ///
    /// # Panics
    ///
    /// If `registry` already holds a gateway's metrics.
    pub fn new(registry: &Registry) -> Metrics {
        let opts = |name: &str, help: &str| Opts::new(format!("herald_realtime_{name}"), help);
        let gauge_vec = |name, help, labels: &[&str]| {
            let m = IntGaugeVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter_vec = |name, help, labels: &[&str]| {
            let m = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let connections = gauge_vec("connections", "Open connections", &["transport"]);
        let connections_total =
            counter_vec("connections_total", "Connections accepted", &["transport"]);
        let messages_sent = counter_vec(
            "messages_sent_total",
            "Messages written to clients",
            &["transport"],
        );
        let dropped = counter_vec(
            "dropped_total",
            "Events not delivered to a socket",
            &["reason"],
        );
        let disconnects = counter_vec("disconnects_total", "Closed connections", &["reason"]);
        let resumes = counter_vec("resumes_total", "Resume requests", &["outcome"]);
        let relays = counter_vec(
            "action_relays_total",
            "action_confirm webhook relays",
            &["outcome"],
        );
        let handshakes_refused = counter_vec(
            "handshakes_refused_total",
            "Handshakes without a token refused before a session was made",
            &["reason"],
        );
        let pending_handshakes = IntGauge::with_opts(opts(
            "pending_handshakes",
            "Socket.IO sessions not authenticated yet",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(pending_handshakes.clone()))
            .expect("unique metric");
        let engine_sessions = IntGauge::with_opts(opts(
            "engine_sessions",
            "Engine.IO sessions open, authenticated or not",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(engine_sessions.clone()))
            .expect("unique metric");
        let rooms = IntGauge::with_opts(opts("rooms", "Rooms with sockets on this node"))
            .expect("valid metric");
        registry
            .register(Box::new(rooms.clone()))
            .expect("unique metric");
        let events_published =
            IntCounter::with_opts(opts("events_published_total", "Events fanned out"))
                .expect("valid metric");
        registry
            .register(Box::new(events_published.clone()))
            .expect("unique metric");
        let history_bytes = IntGauge::with_opts(opts(
            "history_bytes",
            "Bytes of events a single node's resume window holds",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(history_bytes.clone()))
            .expect("unique metric");
        let history_events = IntGauge::with_opts(opts(
            "history_events",
            "Events a single node's resume window holds",
        ))
        .expect("valid metric");
        registry
            .register(Box::new(history_events.clone()))
            .expect("unique metric");
        let bus_up = IntGauge::with_opts(opts("bus_up", "1 while the cross-node bus works"))
            .expect("valid metric");
        registry
            .register(Box::new(bus_up.clone()))
            .expect("unique metric");
        // Every series exists from the start, so a dashboard shows zeros
        // rather than gaps.
        for t in ["socketio", "ws"] {
            connections.with_label_values(&[t]);
            connections_total.with_label_values(&[t]);
            messages_sent.with_label_values(&[t]);
        }
        for r in CloseReason::ALL {
            disconnects.with_label_values(&[r.as_str()]);
        }
        dropped.with_label_values(&["slow_consumer"]);
        for o in ["recovered", "not_recovered"] {
            resumes.with_label_values(&[o]);
        }
        for o in ["relayed", "retrying", "rejected"] {
            relays.with_label_values(&[o]);
        }
        for r in ["rate", "cap"] {
            handshakes_refused.with_label_values(&[r]);
        }
        Metrics {
            connections,
            connections_total,
            rooms,
            messages_sent,
            events_published,
            dropped,
            disconnects,
            resumes,
            bus_up,
            relays,
            handshakes_refused,
            pending_handshakes,
            engine_sessions,
            history_bytes,
            history_events,
        }
    }
}
