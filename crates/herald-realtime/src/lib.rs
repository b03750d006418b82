//! Herald's realtime gateway: one hub, two transports.
//!
//! | module | owns |
//! |---|---|
//! | [`admission`] | the one way in for both transports: the token, the registry, the rate limit |
//! | [`config`] | the `[realtime]` settings: every limit, typed and checked |
//! | [`protocol`] | the wire protocol without I/O: rooms, subscription rules, error codes, resume and `action_confirm` shapes |
//! | [`hub`] | connections, rooms and fan-out: each event serialised once, each socket served once, slow sockets cut off |
//! | [`members`] | a room's members: one id inline, a set only for rooms of several sockets |
//! | [`outbox`] | one connection's outbox: the hub writes events to the socket directly when it can take them, queues them (bounded) when not |
//! | [`history`] | room streams: offsets, the history resume reads; single-node storage, one byte-bounded window of shared frames |
//! | [`resume`] | the resume decision: replay what a client missed, or say why not ([`resume::Reason`]) |
//! | [`bus`] | the same streams in Redis, and the reader that fans out events published on any node |
//! | [`durable`] | the realtime log and its epochs in the database: resume after Redis lost its history |
//! | [`session`] | one connection's life on either transport: `connected`, resume, messages in order, the close; the `/ws` session loop |
//! | [`engineio`] | Engine.IO v4 at `/socket.io/`: handshake, WebSocket and long-polling, upgrade, ping, the session table and its sweeper |
//! | [`socketio`] | Socket.IO on Engine.IO: the packet codec, `CONNECT` auth, events and acks into the session |
//! | [`ws`] | the plain JSON WebSocket at `/ws` |
//! | [`origin`] | the Origin allowlist on both endpoints |
//! | [`guard`] | what a client may cost before it shows a token: connect timeout, pending cap, handshake rate per address |
//! | [`receipts`] | `seen` / `read` from sockets: what smart delivery's holds and escalation steps wait for; read state announced to the user's other sockets |
//! | [`actions`] | `action_confirm`: recorded, acked, relayed to a signed webhook with retries |
//! | [`metrics`] | the gateway's Prometheus metrics |
//!
//! The server wires it: [`Hub::start`] with the settings, a token
//! [`Verifier`], the store and the process's metrics registry; [`Hub::router`] for the two endpoints;
//! [`Hub::publish`] after ingest commits; [`Hub::shutdown`] before the
//! process exits. Nothing here knows the server's other routes.

pub mod actions;
pub mod admission;
pub mod bus;
pub mod config;
pub mod durable;
pub mod engineio;
pub mod guard;
pub mod history;
pub mod hub;
pub mod members;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod protocol;
pub mod receipts;
pub mod resume;
pub mod session;
pub mod socketio;
pub mod ws;

use axum::Router;
use axum::routing::get;
use herald_core::auth::Principal;

pub use config::RealtimeConfig;
pub use hub::{Connections, Hub, Outgoing, Stats};

/// Checks tokens for the gateway. The server implements it with its
/// configured algorithm and keys.
pub trait Verifier: Send + Sync + 'static {
    /// Who the token names, and when it stops being valid (Unix seconds,
    /// leeway included), or a message safe to show the client.
    fn verify(&self, token: &str) -> Result<(Principal, u64), String>;
}

/// Why the gateway could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `[realtime]` setting is wrong; `key` is relative to the section.
    #[error("realtime.{key}: {message}")]
    Config { key: String, message: String },
    /// Redis failed or answered something unexpected.
    #[error("realtime bus: {0}")]
    Bus(String),
}

impl Hub {
    /// The two realtime endpoints, behind the handshake guard and the
    /// Origin check: `GET /ws` and `/socket.io/`. Call once: it starts the
    /// sweeper that frees abandoned long-polling sessions. The guard reads
    /// the client's address from axum's `ConnectInfo<SocketAddr>`: serve
    /// with `into_make_service_with_connect_info`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        tokio::spawn(engineio::sweep(self.clone()));
        Router::new()
            .route("/ws", get(ws::upgrade))
            .route(
                "/socket.io/",
                axum::routing::any(engineio::serve).layer(cors(self)),
            )
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                origin::check,
            ))
            .layer(axum::middleware::from_fn_with_state(
                std::sync::Arc::new(guard::Guard::new(self)),
                guard::check,
            ))
            .with_state(self.clone())
    }
}

/// Long-polling from a browser page is a cross-origin XHR when the page is
/// served elsewhere: CORS answers for the origins the allowlist admits (the
/// Origin check in front has refused the others already).
fn cors(hub: &Hub) -> tower_http::cors::CorsLayer {
    use axum::http::{Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = hub.config().allowed_origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            let host = parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            origin
                .to_str()
                .is_ok_and(|o| crate::origin::allowed(o, host, &origins))
        }))
        // `*` admits any page; credentials stay with listed origins.
        .allow_credentials(!crate::origin::any_origin(&hub.config().allowed_origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
}
