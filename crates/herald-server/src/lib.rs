//! Herald's server: REST API, authentication, configuration and the
//! `herald` binary's commands.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | layered, typed settings; secrets that never print |
//! | [`auth`] | token verification and minting; the `Caller` extractor |
//! | [`problem`] | every HTTP error as `application/problem+json`, its code from `herald_core::problem::Code`; store errors mapped once (unreachable → 503) |
//! | [`cors`] | CORS for `/v1/…`, from the realtime allowlist (`realtime.allowed_origins`) |
//! | [`extract`] | JSON bodies, paths and queries with field-named errors; the limits of `herald_core::input` checked once |
//! | [`ingest`] | publishing: envelopes → routed, planned, rendered, stored, enqueued |
//! | [`delivery`] | the queue, transports, workers and sweeper of a process |
//! | [`lifecycle`] | the retention purge job (`[retention]`, metrics, outbox files) and a user's erase |
//! | [`schedule`] | scheduled sends: their release at `sendAt` (inbox, realtime), once across nodes; scheduling, cancel and unsubscribe metrics |
//! | [`redrive`] | re-driving failed deliveries: filters, cursors and bounds shared by REST and CLI |
//! | [`routing`] | the routing table a process runs on: the file, or the newest stored over REST, followed by polling |
//! | [`routes`] | the handlers of contract §7 |
//! | [`startup`] | `Application::build` / `run_until`, the router |
//! | [`telemetry`] | logs with request, event and delivery ids; OTLP traces; the request id |
//! | [`worker`] | `herald worker`: delivery workers without the API, and its `/metrics` listener |
//! | [`cli`] | the `herald` commands: `serve`, `worker`, `migrate`, `token`, `deliveries`, `purge`, `openapi` |

pub mod auth;
pub mod cli;
pub mod config;
pub mod cors;
pub mod delivery;
pub mod extract;
pub mod ingest;
pub mod lifecycle;
pub mod problem;
pub mod redrive;
pub mod routes;
pub mod routing;
pub mod schedule;
pub mod startup;
pub mod telemetry;
pub mod worker;

pub use config::Settings;
pub use startup::{AppState, Application};

/// Why Herald could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("storage: {0}")]
    Store(#[from] herald_store::Error),
    #[error("delivery: {0}")]
    Delivery(#[from] herald_delivery::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Realtime(#[from] herald_realtime::Error),
}
