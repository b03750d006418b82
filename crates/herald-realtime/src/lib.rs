//! Herald's realtime gateway: one hub, two transports.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | the `[realtime]` settings: every limit, typed and checked |
//! | [`protocol`] | the wire protocol without I/O: rooms, subscription rules, error codes, resume and `action_confirm` shapes |
//! | [`hub`] | connections, rooms and fan-out: each event serialised once, each socket served once, slow sockets cut off |
//! | [`history`] | room streams: offsets, the per-room history resume reads, single-node storage |
//! | [`bus`] | the same streams in Redis, and the reader that fans out events published on any node |
//! | [`durable`] | the realtime log and its epochs in the database: resume after Redis lost its history |
//! | [`session`] | one connection's life on either transport: `connected`, resume, messages in order, the close |
//! | [`socketio`] | Socket.IO v4 at `/socket.io/` (socketioxide): handshake auth, inline message intake |
//! | [`ws`] | the plain JSON WebSocket at `/ws` |
//! | [`origin`] | the Origin allowlist on both endpoints |
//! | [`guard`] | what a client may cost before it shows a token: connect timeout, pending cap, handshake rate per address |
//! | [`actions`] | `action_confirm`: recorded, acked, relayed to a signed webhook with retries |
//! | [`metrics`] | the gateway's Prometheus metrics |
//!
//! The server wires it: [`Hub::start`] with the settings, a token
//! [`Verifier`], the store and the process's metrics registry; [`Hub::router`] for the two endpoints;
//! [`Hub::publish`] after ingest commits; [`Hub::shutdown`] before the
//! process exits. Nothing here knows the server's other routes.

pub mod actions;
pub mod bus;
pub mod config;
pub mod durable;
pub mod guard;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod origin;
pub mod protocol;
pub mod session;
pub mod socketio;
pub mod ws;

use axum::Router;
use axum::routing::get;
use herald_core::auth::Principal;

pub use config::RealtimeConfig;
pub use hub::{Hub, Outgoing, Stats};

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
    /// Origin check: `GET /ws` and `/socket.io/`. Call once; the Socket.IO
    /// engine it builds is the one [`Hub::shutdown`] closes. The guard
    /// reads the client's address from axum's `ConnectInfo<SocketAddr>`:
    /// serve with `into_make_service_with_connect_info`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let (socketio, io) = socketio::router(self);
        if self.inner.io.set(io).is_err() {
            tracing::warn!(
                "Hub::router called twice; shutdown closes the first Socket.IO engine only"
            );
        }
        Router::new()
            .route("/ws", get(ws::upgrade))
            .merge(socketio)
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                origin::check,
            ))
            .layer(axum::middleware::from_fn(own_request_bytes))
            .layer(axum::middleware::from_fn_with_state(
                std::sync::Arc::new(guard::Guard::new(self)),
                guard::check,
            ))
            .with_state(self.clone())
    }
}

/// Copies the handshake request's headers and URIs out of the connection's
/// read buffer. hyper parses a request head into views of that buffer (8 to
/// 16 KiB), and Socket.IO keeps the request head for the socket's whole
/// life: without the copy every idle socket would pin a whole buffer for a
/// few hundred bytes of headers.
async fn own_request_bytes(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::extract::OriginalUri;
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
    let shared = std::mem::take(request.headers_mut());
    let mut owned = HeaderMap::with_capacity(shared.len());
    for (name, value) in &shared {
        let (Ok(name), Ok(mut copy)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) else {
            continue;
        };
        copy.set_sensitive(value.is_sensitive());
        owned.append(name, copy);
    }
    *request.headers_mut() = owned;
    drop(shared);
    if let Ok(uri) = request.uri().to_string().parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    // axum keeps the URI as received in an extension too.
    if let Some(original) = request.extensions_mut().remove::<OriginalUri>()
        && let Ok(uri) = original.0.to_string().parse::<Uri>()
    {
        request.extensions_mut().insert(OriginalUri(uri));
    }
    next.run(request).await
}
