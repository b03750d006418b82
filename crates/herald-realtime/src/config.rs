//! The `[realtime]` section of Herald's settings: every limit the gateway
//! enforces, typed, with the key named when a value makes no sense.
//!
//! The defaults live in `config/default.toml` next to the other sections;
//! this struct only says what each value means and checks it. The webhook
//! secret and the Redis URL (which may carry a password) never reach a log:
//! `Debug` redacts them.

use std::fmt;
use std::time::Duration;

use herald_core::retry::{Backoff, InvalidBackoff, Knob};
use serde::{Deserialize, Deserializer};

use crate::Error;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// This node's name in `connected.serverId`; empty picks `herald-<random>`.
    pub server_id: String,
    /// `redis://…` to share rooms and room history between nodes; empty runs
    /// a single node with history in memory.
    pub redis_url: String,
    /// Prefix of every Redis key Herald writes, so several deployments (or
    /// test runs) can share one Redis.
    pub redis_prefix: String,
    /// Origins allowed to open a socket (exact match on the `Origin`
    /// header). Empty: only same-origin pages (`Origin` names the host the
    /// request was sent to). `*`: any origin. Requests without an `Origin`
    /// header (non-browser clients) are not cross-site and always pass.
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<String>,
    /// Largest message a client may send, in bytes (WebSocket message,
    /// Socket.IO packet, long-polling request body).
    pub max_message_bytes: usize,
    /// Sustained client messages per second per connection.
    pub rate_limit_per_second: u32,
    /// Messages a connection may send in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Events waiting to be written to one connection; a connection that
    /// falls this far behind is disconnected as a slow consumer.
    pub outbound_queue: usize,
    /// Rooms one connection may subscribe to (auto-joined rooms excluded).
    pub max_subscriptions: usize,
    /// How often the server pings an idle connection.
    pub ping_interval_ms: u64,
    /// How long a ping may go unanswered before the connection is closed.
    pub ping_timeout_ms: u64,
    /// WebSocket read buffer per connection, in bytes.
    pub read_buffer_bytes: usize,
    /// WebSocket write buffer per connection, in bytes (`/ws`; bytes
    /// buffered before a flush).
    pub write_buffer_bytes: usize,
    /// History kept per room for resume: at most this many events…
    pub history_max_events: usize,
    /// …and none older than this.
    pub history_max_age_seconds: u64,
    /// A single node's history, all rooms together, in bytes: each event
    /// held once (its encoded frames, shared by every room it went to),
    /// the oldest evicted first past this budget. A resume from before what
    /// is kept answers `recovered: false` (`too_old`). With `redis_url`
    /// the history lives in Redis, bounded per room by `history_max_events`.
    pub history_bytes: usize,
    /// On shutdown, clients are told to reconnect after this many ms…
    pub reconnect_delay_ms: u64,
    /// …plus a random share of this many, so they do not return at once.
    pub reconnect_jitter_ms: u64,
    /// How long shutdown waits for sockets to take their `disconnected`.
    pub shutdown_grace_ms: u64,
    /// Where `action_confirm` messages are relayed (POST, JSON, signed);
    /// empty: they are recorded and acknowledged but not relayed.
    pub webhook_url: String,
    /// HMAC-SHA256 key for the `X-Herald-Signature` header.
    pub webhook_secret: String,
    /// One webhook attempt may take this long.
    pub webhook_timeout_ms: u64,
    /// A failed relay is tried again after a random wait of up to this
    /// (full jitter), the ceiling doubling per attempt…
    pub webhook_retry_base_ms: u64,
    /// …up to this. A `Retry-After` on a 429 or 503 is a floor; a 4xx
    /// other than 408 and 429 is final and never retried.
    pub webhook_retry_max_ms: u64,
    /// A Socket.IO session that has not connected to its namespace with a
    /// valid token this long after its handshake is closed and freed
    /// (socket.io's `connectTimeout`).
    pub connect_timeout_ms: u64,
    /// Socket.IO sessions on this node that have not authenticated yet;
    /// further handshakes without a token are refused (503) until some
    /// authenticate or time out. This bounds what an unauthenticated
    /// handshake flood can hold, whatever its source addresses.
    pub max_pending_handshakes: usize,
    /// Handshakes without a valid token (Socket.IO, `/ws`) one client
    /// address may open per second, sustained…
    pub handshakes_per_second_per_address: u32,
    /// …and in a burst above that rate. Beyond either: 429.
    pub handshake_burst_per_address: u32,
    /// Client addresses whose handshake rate is tracked at once; the table
    /// forgets an address as soon as its allowance is whole again, and past
    /// this size new addresses are not tracked (the pending cap still holds).
    pub max_tracked_addresses: usize,
    /// Take the client address from the rightmost `X-Forwarded-For` entry
    /// (the one a trusted load balancer appended) instead of the socket
    /// peer. Only behind a balancer that sets it: otherwise a client could
    /// pick its own address.
    pub trust_forwarded_for: bool,
}

/// A list from TOML, or a comma-separated string from an environment variable.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(items) => items,
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl fmt::Debug for RealtimeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "[redacted]" };
        f.debug_struct("RealtimeConfig")
            .field("server_id", &self.server_id)
            .field("redis_url", &redact(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("outbound_queue", &self.outbound_queue)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("ping_interval_ms", &self.ping_interval_ms)
            .field("ping_timeout_ms", &self.ping_timeout_ms)
            .field("read_buffer_bytes", &self.read_buffer_bytes)
            .field("write_buffer_bytes", &self.write_buffer_bytes)
            .field("history_max_events", &self.history_max_events)
            .field("history_max_age_seconds", &self.history_max_age_seconds)
            .field("history_bytes", &self.history_bytes)
            .field("reconnect_delay_ms", &self.reconnect_delay_ms)
            .field("reconnect_jitter_ms", &self.reconnect_jitter_ms)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &redact(&self.webhook_secret))
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("webhook_retry_base_ms", &self.webhook_retry_base_ms)
            .field("webhook_retry_max_ms", &self.webhook_retry_max_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field(
                "handshakes_per_second_per_address",
                &self.handshakes_per_second_per_address,
            )
            .field(
                "handshake_burst_per_address",
                &self.handshake_burst_per_address,
            )
            .field("max_tracked_addresses", &self.max_tracked_addresses)
            .field("trust_forwarded_for", &self.trust_forwarded_for)
            .finish()
    }
}

impl RealtimeConfig {
    /// Checks what the types cannot. Keys are named relative to `[realtime]`.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |key: &str, message: &str| {
            Err(Error::Config {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if !(1024..=16 << 20).contains(&self.max_message_bytes) {
            return bad("max_message_bytes", "must be 1 KiB to 16 MiB");
        }
        if self.rate_limit_per_second == 0 {
            return bad("rate_limit_per_second", "must be at least 1");
        }
        if self.rate_limit_burst == 0 {
            return bad("rate_limit_burst", "must be at least 1");
        }
        if self.outbound_queue == 0 {
            return bad("outbound_queue", "must be at least 1");
        }
        if self.ping_interval_ms == 0 || self.ping_timeout_ms == 0 {
            return bad(
                "ping_interval_ms",
                "ping interval and timeout must be positive",
            );
        }
        if self.read_buffer_bytes < 512 {
            return bad("read_buffer_bytes", "must be at least 512");
        }
        if self.history_max_events == 0 {
            return bad("history_max_events", "must be at least 1");
        }
        if self.history_max_age_seconds == 0 {
            return bad("history_max_age_seconds", "must be at least 1");
        }
        if !(64 << 10..=64 << 30).contains(&self.history_bytes) {
            return bad("history_bytes", "must be 64 KiB to 64 GiB");
        }
        if !self.redis_url.is_empty() && !self.redis_url.starts_with("redis://") {
            return bad("redis_url", "must be empty or start with redis://");
        }
        if self.redis_prefix.is_empty() {
            return bad("redis_prefix", "must not be empty");
        }
        if !self.webhook_url.is_empty() {
            if !(self.webhook_url.starts_with("http://")
                || self.webhook_url.starts_with("https://"))
            {
                return bad("webhook_url", "must be an http:// or https:// URL");
            }
            if self.webhook_secret.len() < 16 {
                return bad(
                    "webhook_secret",
                    "is required (at least 16 bytes) when webhook_url is set",
                );
            }
        }
        if let Err(InvalidBackoff { knob, message }) = self.webhook_retry().check() {
            let key = match knob {
                Knob::Cap => "webhook_retry_max_ms",
                Knob::Base | Knob::Factor | Knob::MaxAttempts => "webhook_retry_base_ms",
            };
            return bad(key, message);
        }
        if self.allowed_origins.iter().any(|o| o.ends_with('/')) {
            return bad(
                "allowed_origins",
                "an origin is scheme://host[:port], without a trailing slash",
            );
        }
        if !(100..=300_000).contains(&self.connect_timeout_ms) {
            return bad("connect_timeout_ms", "must be 100 ms to 5 minutes");
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes", "must be at least 1");
        }
        if self.handshakes_per_second_per_address == 0 {
            return bad("handshakes_per_second_per_address", "must be at least 1");
        }
        if self.handshake_burst_per_address == 0 {
            return bad("handshake_burst_per_address", "must be at least 1");
        }
        if self.max_tracked_addresses == 0 {
            return bad("max_tracked_addresses", "must be at least 1");
        }
        Ok(())
    }

    /// How the `action_confirm` relay backs off: Herald's one policy
    /// ([`herald_core::retry`]), doubling from `webhook_retry_base_ms` up to
    /// `webhook_retry_max_ms`, until the platform answers for good.
    pub fn webhook_retry(&self) -> Backoff {
        Backoff::doubling(
            Duration::from_millis(self.webhook_retry_base_ms),
            Duration::from_millis(self.webhook_retry_max_ms),
        )
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }

    pub fn ping_timeout(&self) -> Duration {
        Duration::from_millis(self.ping_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    pub fn history_max_age(&self) -> Duration {
        Duration::from_secs(self.history_max_age_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RealtimeConfig {
        let file: toml::Table = toml::from_str(include_str!("../../../config/default.toml"))
            .expect("config/default.toml parses");
        file["realtime"].clone().try_into().expect("[realtime]")
    }

    #[test]
    fn the_history_budget_is_checked_and_named() {
        let config = defaults();
        assert!(config.validate().is_ok());
        assert_eq!(config.history_bytes, 64 << 20);
        for bad in [0, (64 << 10) - 1, (64 << 30) + 1] {
            let config = RealtimeConfig {
                history_bytes: bad,
                ..defaults()
            };
            let err = config.validate().unwrap_err();
            assert!(
                matches!(&err, Error::Config { key, .. } if key == "history_bytes"),
                "{bad}: {err}"
            );
            assert!(err.to_string().starts_with("realtime.history_bytes: "));
        }
    }
}
