//! The handshake guard: what a client may cost before it has shown a token.
//!
//! A Socket.IO handshake needs no token — the token comes later, in the
//! CONNECT packet — yet the engine allocates a session for it at once. Left
//! alone, a flood of handshakes holds as many sessions as it sends. Three
//! bounds stop that, all checked here, in front of the engine, so a
//! refused handshake allocates nothing:
//!
//! - a **connect timeout** (`connect_timeout_ms`): a session that has not
//!   connected with a valid token by then is closed and freed (by its
//!   WebSocket task, or by the engine's sweeper for long-polling);
//! - a **cap** on sessions pending authentication per node
//!   (`max_pending_handshakes`): past it, 503;
//! - a **rate per client address** (`handshakes_per_second_per_address`
//!   and a burst): past it, 429. `/ws` upgrades without a valid token
//!   count against it too (they are refused before the upgrade anyway).
//!
//! A handshake that carries a valid token (`Authorization: Bearer` on
//! either endpoint, `?token=` on `/ws`) is an authenticated client and
//! passes untouched, so a flood does not lock out the clients it imitates.
//!
//! Pending sessions are counted exactly: each admitted handshake carries a
//! [`Ticket`] in its request's extensions, which the Engine.IO session
//! keeps until it authenticates or ends. The ticket leaves the count when the session
//! authenticates ([`Ticket::settle`]) or when it is dropped with the
//! session — whether the connect timeout closed it, the client left, or the
//! engine refused the request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use herald_core::problem::Code;
use prometheus::IntGauge;

use crate::hub::Hub;
use crate::ws::{bearer, problem};

/// The guard's state: one per router.
pub(crate) struct Guard {
    hub: Hub,
    addresses: Mutex<Addresses>,
}

impl Guard {
    pub(crate) fn new(hub: &Hub) -> Guard {
        Guard {
            hub: hub.clone(),
            addresses: Mutex::new(Addresses {
                map: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

/// One Socket.IO session's place among those pending authentication.
#[derive(Debug)]
pub(crate) struct Ticket {
    pending: IntGauge,
    settled: AtomicBool,
}

impl Ticket {
    /// The session authenticated: it no longer counts as pending.
    pub(crate) fn settle(&self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.pending.dec();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle();
    }
}

/// Handshake allowances by client address, forgotten once whole again.
struct Addresses {
    map: HashMap<IpAddr, Allowance>,
    swept: Instant,
}

/// A token bucket: `tokens` as of `at`.
#[derive(Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: Instant,
}

impl Allowance {
    fn now(self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst)
    }
}

impl Addresses {
    /// Takes one handshake from `ip`'s allowance; `Err` holds how long
    /// until the next one.
    fn take(
        &mut self,
        ip: IpAddr,
        now: Instant,
        rate: f64,
        burst: f64,
        max: usize,
    ) -> Result<(), Duration> {
        if now.duration_since(self.swept) >= Duration::from_secs(1) || self.map.len() >= max {
            self.sweep(now, rate, burst);
        }
        let allowance = match self.map.get(&ip) {
            Some(a) => a.now(now, rate, burst),
            // Untracked past the table's size: the pending cap still holds.
            None if self.map.len() >= max => return Ok(()),
            None => burst,
        };
        if allowance < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - allowance) / rate));
        }
        self.map.insert(
            ip,
            Allowance {
                tokens: allowance - 1.0,
                at: now,
            },
        );
        Ok(())
    }

    /// Forgets every address whose allowance is whole again: remembering
    /// it would change nothing.
    fn sweep(&mut self, now: Instant, rate: f64, burst: f64) {
        self.map.retain(|_, a| a.now(now, rate, burst) < burst);
        self.swept = now;
    }
}

/// What a request is, as far as the guard cares.
enum Kind {
    /// A Socket.IO request that opens a session (no `sid`).
    SocketIoHandshake,
    /// A `/ws` upgrade.
    Ws,
    /// Anything else: an established session's traffic, a preflight.
    Other,
}

fn kind(request: &Request) -> Kind {
    if request.method() == Method::OPTIONS {
        return Kind::Other;
    }
    let path = request.uri().path();
    if path == "/ws" {
        return Kind::Ws;
    }
    if path.starts_with("/socket.io") {
        let has_sid = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.strip_prefix("sid=").is_some_and(|v| !v.is_empty()));
        if !has_sid {
            return Kind::SocketIoHandshake;
        }
    }
    Kind::Other
}

/// The token a request carries before any session exists: a Bearer header,
/// or on `/ws` also `?token=`.
fn token(request: &Request, query_too: bool) -> Option<String> {
    let header = bearer(request.headers());
    if header.is_some() || !query_too {
        return header;
    }
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The client's address: the socket peer, or with `trust_forwarded_for`
/// the rightmost `X-Forwarded-For` entry (what the balancer saw). IPv6
/// addresses count by /64, the block one client usually holds.
fn client_address(request: &Request, trust_forwarded_for: bool) -> Option<IpAddr> {
    let forwarded = trust_forwarded_for
        .then(|| {
            request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        })
        .flatten();
    let ip = forwarded.or_else(|| {
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
    })?;
    Some(match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
        v4 => v4,
    })
}

fn refuse(status: StatusCode, detail: &str, retry_after: Duration) -> Response {
    let code = if status == StatusCode::TOO_MANY_REQUESTS {
        Code::RateLimited
    } else {
        Code::Unavailable
    };
    let mut response = problem(code, detail);
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).unwrap_or(HeaderValue::from_static("1")),
    );
    response
}

/// The middleware in front of both realtime endpoints.
pub(crate) async fn check(
    State(guard): State<Arc<Guard>>,
    mut request: Request,
    next: Next,
) -> Response {
    let kind = kind(&request);
    if matches!(kind, Kind::Other) {
        return next.run(request).await;
    }
    let hub = &guard.hub;
    let config = hub.config();
    let authenticated =
        token(&request, matches!(kind, Kind::Ws)).is_some_and(|t| hub.verify(&t).is_ok());
    if authenticated {
        return next.run(request).await;
    }
    let metrics = hub.metrics();
    if let Some(ip) = client_address(&request, config.trust_forwarded_for) {
        let taken = guard.addresses.lock().expect("addresses lock").take(
            ip,
            Instant::now(),
            f64::from(config.handshakes_per_second_per_address),
            f64::from(config.handshake_burst_per_address),
            config.max_tracked_addresses,
        );
        if let Err(wait) = taken {
            metrics
                .handshakes_refused
                .with_label_values(&["rate"])
                .inc();
            tracing::debug!(%ip, "handshake refused: address over its rate");
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many handshakes from this address; retry later",
                wait,
            );
        }
    }
    if matches!(kind, Kind::SocketIoHandshake) {
        let pending = &metrics.pending_handshakes;
        pending.inc();
        let ticket = Arc::new(Ticket {
            pending: pending.clone(),
            settled: AtomicBool::new(false),
        });
        if pending.get() > config.max_pending_handshakes as i64 {
            // Dropping the ticket takes it out of the count again.
            drop(ticket);
            metrics.handshakes_refused.with_label_values(&["cap"]).inc();
            tracing::debug!("handshake refused: too many sessions pending authentication");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections are authenticating; retry shortly",
                Duration::from_secs(1),
            );
        }
        request.extensions_mut().insert(ticket);
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_is_forgotten_once_whole() {
        let mut table = Addresses {
            map: HashMap::new(),
            swept: Instant::now(),
        };
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(table.take(ip, t0, 2.0, 4.0, 10).is_ok());
        }
        let wait = table.take(ip, t0, 2.0, 4.0, 10).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(table.take(ip, t0 + wait, 2.0, 4.0, 10).is_ok());
        // Whole again after burst / rate: swept away.
        table.sweep(t0 + Duration::from_secs(3), 2.0, 4.0);
        assert!(table.map.is_empty());
    }

    #[test]
    fn the_table_never_outgrows_its_bound() {
        let mut table = Addresses {
            map: HashMap::new(),
            swept: Instant::now(),
        };
        let t0 = Instant::now();
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(table.take(ip, t0, 1.0, 2.0, 16).is_ok());
        }
        assert_eq!(table.map.len(), 16);
    }
}
