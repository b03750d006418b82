//! Wiring: settings in, a running server out (zero2prod's `startup.rs`).
//!
//! [`Application::build`] does everything that can fail at start — keys,
//! database, migrations, routing table, templates, the listening socket — so
//! a misconfigured Herald stops before it accepts a request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::routing::{delete, get, post};
use herald_core::RoutingTable;
use herald_core::realtime::Broadcast;
use herald_delivery::Queue;
use herald_delivery::Templates;
use herald_realtime::Hub;
use herald_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::Error;
use crate::auth::Authenticator;
use crate::config::{ConfigError, Settings};
use crate::delivery::{Components, DeliveryRuntime};
use crate::ingest::Publisher;
use crate::lifecycle::Purger;
use crate::problem::ApiError;
use crate::routes::{
    admin, admin_routing, audit, console, deliveries, events, health, inbox, openapi, privacy,
    unsubscribe, users, webhooks,
};
use crate::routing::LiveRouting;
use crate::schedule::Releaser;

/// How long a transport may take to answer `check` (at start, on `/readyz`).
pub const CHANNEL_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What every handler can reach: one shared [`Shared`] behind an `Arc`, so
/// that the clone axum makes for each request is one reference count, not
/// a copy of every handle (the store's pools, the queue's storage, the hub).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles behind [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub publisher: Publisher,
    /// The delivery queue (for readiness).
    pub queue: Queue,
    /// The realtime gateway's hub.
    pub realtime: Hub,
    /// The delivery side, for readiness (its transports).
    pub delivery: DeliveryRuntime,
    /// This process's metrics: the gateway's, the delivery workers' and
    /// the providers', for `/metrics`.
    pub metrics: prometheus::Registry,
    /// The routing table in force, replaceable over REST.
    pub routing: LiveRouting,
    /// Scheduling, cancellation and unsubscribe counters.
    pub scheduling: Arc<crate::schedule::SchedulingMetrics>,
}

/// A built, bound, not yet serving Herald.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: AppState,
    delivery: DeliveryRuntime,
    /// The retention purge, run beside the server (`[retention]`).
    purger: Purger,
    /// Releases scheduled events at their `sendAt`, beside the server.
    releaser: Releaser,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Application, Error> {
        Self::build_with(settings, Components::default()).await
    }

    /// Builds with some parts supplied by the caller (tests supply fake
    /// transports and a clock they control).
    pub async fn build_with(
        settings: Settings,
        components: Components,
    ) -> Result<Application, Error> {
        // Every HTTP client in the process (providers, the platform
        // webhook) uses rustls with ring; install it before any is built.
        herald_channels::http::install_crypto();
        let auth = Arc::new(Authenticator::from_settings(&settings.auth)?);
        let (routing, templates) = load_policy(&settings)?;
        let store = Store::connect_with(
            settings.database.url.expose(),
            herald_store::Options {
                max_connections: settings.database.max_connections,
                directory_cache: settings.database.directory_cache,
            },
        )
        .await?;
        store.migrate().await?;
        let routing =
            LiveRouting::start(store.clone(), routing, settings.routing.file.clone()).await?;
        let listener = listen(&settings.server.host, settings.server.port, "server.port").await?;
        // One registry for the whole process, so `/metrics` is one exposition.
        let metrics = prometheus::Registry::new();
        let realtime = Hub::start(
            settings.realtime.clone(),
            auth.clone(),
            store.clone(),
            &metrics,
        )
        .await?;
        let components = Components {
            broadcast: components
                .broadcast
                .or_else(|| Some(Arc::new(realtime.clone()) as Arc<dyn Broadcast>)),
            ..components
        };
        let delivery = DeliveryRuntime::build(
            &settings,
            store.clone(),
            routing.shared(),
            templates.clone(),
            &components,
            &metrics,
        )
        .await?;
        for (kind, result) in delivery.check_channels(CHANNEL_CHECK_TIMEOUT).await {
            if let Err(e) = result {
                tracing::error!(channel = %kind, error = %e, "transport not working; its deliveries will wait and retry");
            }
        }
        let scheduling = Arc::new(crate::schedule::SchedulingMetrics::new(&metrics));
        let send_at = crate::ingest::SendAtLimits {
            past_tolerance: chrono::Duration::seconds(
                i64::try_from(settings.scheduling.past_tolerance_seconds).unwrap_or(i64::MAX),
            ),
            max_ahead: chrono::Duration::days(
                i64::try_from(settings.scheduling.max_ahead_days).unwrap_or(3_650),
            ),
        };
        let publisher = Publisher::new(
            store.clone(),
            routing.shared(),
            templates,
            delivery.queue.clone(),
            delivery.dispatcher.clock.clone(),
        )
        .with_fanout(realtime.clone())
        .with_scheduling(send_at, scheduling.clone());
        let releaser = Releaser {
            store: store.clone(),
            hub: realtime.clone(),
            clock: delivery.dispatcher.clock.clone(),
            batch: settings.scheduling.release_batch,
            metrics: scheduling.clone(),
        };
        let purger = Purger::new(
            store.clone(),
            settings.retention()?,
            settings.channels.outbox_dir.clone(),
            delivery.dispatcher.clock.clone(),
            &metrics,
        );
        Ok(Application {
            listener,
            state: AppState(Arc::new(Shared {
                settings: Arc::new(settings),
                store,
                auth,
                publisher,
                queue: delivery.queue.clone(),
                realtime,
                delivery: delivery.clone(),
                metrics,
                routing,
                scheduling,
            })),
            delivery,
            purger,
            releaser,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn delivery(&self) -> &DeliveryRuntime {
        &self.delivery
    }

    pub fn purger(&self) -> &Purger {
        &self.purger
    }

    pub fn releaser(&self) -> &Releaser {
        &self.releaser
    }

    /// Serves until `shutdown` resolves; then tells realtime clients to
    /// reconnect (with jittered delays), finishes in-flight requests, stops
    /// the delivery workers (if `delivery.workers_in_serve`) and the
    /// retention purge (a batch in flight rolls back), and closes the
    /// database pools.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let store = self.state.store.clone();
        let stop = CancellationToken::new();
        let workers = self
            .state
            .settings
            .delivery
            .workers_in_serve
            .then(|| tokio::spawn(self.delivery.run(stop.clone())));
        let purging = tokio::spawn(self.purger.run(stop.clone()));
        let following = tokio::spawn(
            self.state
                .routing
                .clone()
                .follow(self.state.settings.routing.poll_interval(), stop.clone()),
        );
        let release_every =
            std::time::Duration::from_millis(self.state.settings.scheduling.release_interval_ms);
        let releasing = tokio::spawn(self.releaser.run(release_every, stop.clone()));
        let realtime = self.state.realtime.clone();
        let grace = self.state.settings.realtime.shutdown_grace();
        let app = router(self.state);
        // The peer address rides with each request: the realtime handshake
        // guard limits handshakes per client address.
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            realtime.shutdown(grace).await;
        })
        .await;
        stop.cancel();
        let _ = purging.await;
        let _ = following.await;
        let _ = releasing.await;
        if let Some(workers) = workers {
            match workers.await {
                Ok(result) => result?,
                Err(e) => tracing::error!(error = %e, "delivery workers panicked"),
            }
        }
        store.close().await;
        Ok(served?)
    }
}

/// Binds `host:port`; a port in use stops the start naming `key`.
pub(crate) async fn listen(host: &str, port: u16, key: &str) -> Result<TcpListener, ConfigError> {
    TcpListener::bind((host, port))
        .await
        .map_err(|e| ConfigError::new(key, format!("cannot listen on {host}:{port}: {e}")))
}

/// The routing table and the templates, as configured.
pub fn load_policy(
    settings: &Settings,
) -> Result<(Arc<RoutingTable>, Arc<Templates>), ConfigError> {
    let routing = load_routing(settings)?;
    let templates = Templates::load(&settings.templates.dir, settings.templates.default_locale)
        .map_err(|e| ConfigError::new("templates.dir", e.to_string()))?;
    Ok((Arc::new(routing), Arc::new(templates)))
}

fn load_routing(settings: &Settings) -> Result<RoutingTable, ConfigError> {
    let path = &settings.routing.file;
    let src = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("routing.file", format!("{}: {e}", path.display())))?;
    RoutingTable::from_toml(&src)
        .map_err(|e| ConfigError::new("routing.file", format!("{}: {e}", path.display())))
}

/// The HTTP surface of contract §7, and the realtime endpoints of §3.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let traces = state.settings.telemetry.enabled();
    let realtime = state.realtime.router();
    Router::new()
        .route("/v1/events", post(events::publish))
        .route("/v1/events/{id}/cancel", post(events::cancel))
        .route(
            "/u/{token}",
            get(unsubscribe::page).post(unsubscribe::one_click),
        )
        .route("/v1/notifications", get(inbox::list))
        .route("/v1/notifications/unread-count", get(inbox::unread_count))
        .route("/v1/notifications/read-all", post(inbox::read_all))
        .route(
            "/v1/notifications/{id}",
            get(inbox::get_one).delete(inbox::delete),
        )
        .route("/v1/notifications/{id}/read", post(inbox::read))
        .route("/v1/notifications/{id}/deliveries", get(inbox::deliveries))
        .route(
            "/v1/users/{user}/preferences",
            get(users::get_preferences).put(users::put_preferences),
        )
        .route(
            "/v1/users/{user}/contact",
            get(users::get_contact).put(users::put_contact),
        )
        .route(
            "/v1/users/{user}/devices",
            get(users::list_devices).post(users::add_device),
        )
        .route(
            "/v1/users/{user}/devices/{id}",
            delete(users::delete_device),
        )
        .route("/v1/users/{user}", delete(privacy::erase))
        .route("/v1/users/{user}/export", get(privacy::export))
        .route("/v1/admin/stats", get(admin::stats))
        .route("/v1/admin/connections", get(admin::connections))
        .route("/v1/admin/deliveries", get(deliveries::list))
        .route("/v1/admin/audit", get(audit::list))
        .route(
            "/v1/admin/routing",
            get(admin_routing::get)
                .put(admin_routing::put)
                .delete(admin_routing::revert),
        )
        .route("/v1/admin/deliveries/retry", post(deliveries::retry_many))
        .route(
            "/v1/admin/deliveries/{id}/retry",
            post(deliveries::retry_one),
        )
        .route("/v1/webhooks/twilio", post(webhooks::twilio))
        .route("/v1/webhooks/sendgrid", post(webhooks::sendgrid))
        .route("/console", get(console::page))
        .route("/console/", get(console::page))
        .route("/console/{asset}", get(console::asset))
        .route("/demo", get(console::demo))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/openapi.json", get(openapi::document))
        .merge(realtime)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                crate::problem::Code::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::cors::api,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request<_>| crate::telemetry::http_span(req, traces)),
        )
        // Outermost, so the `http` span finds the request id in place.
        .layer(axum::middleware::from_fn(crate::telemetry::request_id))
        .with_state(state)
}
