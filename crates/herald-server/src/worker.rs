//! `herald worker`: delivery workers, the sweeper and the retention purge,
//! without the API or the realtime gateway (scale-out with a Redis queue).
//!
//! It has no public HTTP surface, only a small listener (`[worker]`,
//! `metrics_host:metrics_port`) for the operators' two questions: `GET
//! /metrics` (this process's registry, behind `server.metrics_token` as on
//! `herald serve`) and `GET /healthz`. Like [`crate::Application`], it is
//! built (and bound) first, so a port in use stops the start with the key's
//! name, and then run until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use herald_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::config::{Secret, Settings};
use crate::delivery::{Components, DeliveryRuntime};
use crate::lifecycle::Purger;
use crate::problem::ApiError;
use crate::routes::{admin, health};
use crate::routing::LiveRouting;
use crate::startup::{listen, load_policy};

/// A built, bound, not yet running `herald worker`.
#[derive(Debug)]
pub struct Worker {
    store: Store,
    delivery: DeliveryRuntime,
    purger: Purger,
    /// The routing table, following changes made over REST as every node does.
    routing: LiveRouting,
    poll: std::time::Duration,
    /// `/metrics` and `/healthz`, unless `worker.metrics` is off.
    listener: Option<TcpListener>,
    metrics: Metrics,
}

/// What the listener's handlers reach.
#[derive(Debug, Clone)]
struct Metrics {
    registry: prometheus::Registry,
    token: Arc<Secret>,
}

impl Worker {
    /// Connects, migrates and binds; `components` as for
    /// [`crate::Application::build_with`].
    pub async fn build(settings: Settings, components: Components) -> Result<Worker, Error> {
        herald_channels::http::install_crypto();
        if settings.delivery.queue_url.expose().starts_with("sqlite:") {
            tracing::warn!(
                "a SQLite queue serves one node: run `herald worker` against a Redis queue"
            );
        }
        let (routing, templates) = load_policy(&settings)?;
        let store = Store::connect(
            settings.database.url.expose(),
            settings.database.max_connections,
        )
        .await?;
        store.migrate().await?;
        let routing =
            LiveRouting::start(store.clone(), routing, settings.routing.file.clone()).await?;
        let w = &settings.worker;
        let listener = if w.metrics {
            Some(listen(&w.metrics_host, w.metrics_port, "worker.metrics_port").await?)
        } else {
            None
        };
        let registry = prometheus::Registry::new();
        let delivery = DeliveryRuntime::build(
            &settings,
            store.clone(),
            routing.shared(),
            templates,
            &components,
            &registry,
        )
        .await?;
        let purger = Purger::new(
            store.clone(),
            settings.retention()?,
            settings.channels.outbox_dir.clone(),
            delivery.dispatcher.clock.clone(),
            &registry,
        );
        Ok(Worker {
            store,
            delivery,
            purger,
            routing,
            poll: settings.routing.poll_interval(),
            listener,
            metrics: Metrics {
                registry,
                token: Arc::new(settings.server.metrics_token.clone()),
            },
        })
    }

    /// Where `/metrics` is served, if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"))
    }

    pub fn delivery(&self) -> &DeliveryRuntime {
        &self.delivery
    }

    /// Runs until `shutdown` resolves; then stops the workers (a send in
    /// flight finishes or its lease hands it back), the purge and the
    /// listener, and closes the database pools.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
        let serving = self.listener.map(|listener| {
            let app = router(self.metrics);
            let stopped = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        });
        let purging = tokio::spawn(self.purger.run(stop.clone()));
        let following = tokio::spawn(self.routing.follow(self.poll, stop.clone()));
        let result = self.delivery.run(stop.clone()).await;
        stop.cancel();
        let _ = purging.await;
        let _ = following.await;
        if let Some(serving) = serving {
            match serving.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the metrics listener failed"),
                Err(e) => tracing::error!(error = %e, "the metrics listener panicked"),
                Ok(Ok(())) => {}
            }
        }
        self.store.close().await;
        result
    }
}

/// The worker's HTTP surface.
fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health::healthz))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(metrics)
}

async fn metrics_handler(
    State(m): State<Metrics>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    admin::exposition(&m.registry, &m.token, &headers)
}
