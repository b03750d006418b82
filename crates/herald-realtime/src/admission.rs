//! Admission: the one way into the hub, for both transports.
//!
//! A client is admitted in two steps, the same on `/ws` and Socket.IO:
//!
//! 1. [`check`]: the token is verified (the algorithm and keys the server
//!    configured, through [`Hub::verify`]) and the hub must not be shutting
//!    down. `/ws` does this before the upgrade, so a bad token costs no
//!    socket; Socket.IO at its `CONNECT` packet.
//! 2. [`enter`]: the connection is registered with its auto-joined rooms
//!    (contract §2) and the watermark it resumes from, and gets its
//!    message rate limit ([`rate_limit`]).
//!
//! What a refusal looks like on the wire stays the transport's business:
//! `/ws` answers problem+json before the upgrade, Socket.IO a
//! `connect_error` packet. Both take their words from [`Denied`], so the
//! two transports cannot drift apart on who gets in.

use herald_core::auth::Principal;

use crate::hub::{Hub, Registered, Transport};
use crate::protocol::{ErrorCode, Refusal};
use crate::session::Bucket;

/// A client whose token checked out.
#[derive(Debug)]
pub(crate) struct Credentials {
    pub principal: Principal,
    /// When the token stops being valid (Unix seconds, leeway included).
    pub exp: u64,
}

/// Why a client was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No token at all.
    MissingToken,
    /// The token did not verify; the message is safe to show the client.
    InvalidToken(String),
    /// The hub is shutting down or refused the registration.
    Refused(Refusal),
}

/// The hub's answer while it shuts down: come back shortly.
pub(crate) fn restarting() -> Refusal {
    Refusal::new(
        ErrorCode::ServerError,
        "Herald is restarting; reconnect shortly",
    )
}

/// Step 1: the token, and whether the hub takes connections at all.
pub(crate) fn check(hub: &Hub, token: Option<&str>) -> Result<Credentials, Denied> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or(Denied::MissingToken)?;
    let (principal, exp) = hub.verify(token).map_err(Denied::InvalidToken)?;
    if hub.is_closing() {
        return Err(Denied::Refused(restarting()));
    }
    Ok(Credentials { principal, exp })
}

/// A registered connection, ready for its session.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub registered: Registered,
    pub exp: u64,
}

/// Step 2: registers the connection in the hub (auto-joined rooms, the
/// watermark) and logs it.
pub(crate) fn enter(
    hub: &Hub,
    credentials: Credentials,
    transport: Transport,
) -> Result<Admitted, Denied> {
    let Credentials { principal, exp } = credentials;
    let registered = hub
        .register(principal, transport)
        .map_err(Denied::Refused)?;
    let conn = &registered.conn;
    tracing::info!(
        conn = conn.id,
        user = %conn.principal.user_id.as_str(),
        role = conn.principal.role.as_str(),
        transport = transport.as_str(),
        "realtime connection opened"
    );
    Ok(Admitted { registered, exp })
}

/// The client-message rate limit every connection gets, on either
/// transport: `rate_limit_per_second`, bursts of `rate_limit_burst`.
pub(crate) fn rate_limit(hub: &Hub) -> Bucket {
    let config = hub.config();
    Bucket::new(config.rate_limit_per_second, config.rate_limit_burst)
}
