//! Test helpers for Herald's integration tests (zero2prod's `helpers.rs`).
//!
//! [`spawn_app`] starts a real Herald on port 0 over a fresh database:
//! a new SQLite file, or a new PostgreSQL database created for the test and
//! dropped when the [`TestApp`] is. PostgreSQL comes from
//! `HERALD_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`).
//! When it cannot be reached the PostgreSQL variant of a test is skipped
//! with a note, unless `HERALD_REQUIRE_SERVICES=1`, which turns the skip into
//! a failure (CI sets it).
//!
//! [`smtp::SmtpSink`] is a real SMTP server on a local port for the SMTP
//! transport's tests.
//!
//! Delivery workers do not run inside a test app unless the test sets
//! `delivery.workers_in_serve`: most tests check what was scheduled, and
//! drive attempts through `app.delivery.dispatcher` themselves.

use std::path::PathBuf;
use std::time::Duration;

pub mod fakes;
pub mod smtp;

use std::sync::Arc;

use herald_core::{ChannelKind, Role};
use herald_delivery::ManualClock;
use herald_server::auth::Authenticator;
use herald_server::config::Secret;
use herald_server::delivery::{Components, DeliveryRuntime, Providers};
use herald_server::{Application, Settings};
use herald_store::Store;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use sqlx::Connection;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running Herald and a client for it.
#[derive(Debug)]
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub backend: Backend,
    /// The HS256 secret, for tests that forge tokens.
    pub secret: String,
    /// Where this app keeps its files (SQLite database, queue, outbox).
    pub data_dir: PathBuf,
    /// The delivery side: dispatcher, sweeper, queue.
    pub delivery: DeliveryRuntime,
    /// The fake transports, when the app was spawned with them.
    pub fakes: Option<Fakes>,
    auth: Authenticator,
    cleanup: Cleanup,
    /// Stops the server gracefully (see [`TestApp::shutdown`]).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), herald_server::Error>>>,
}

#[derive(Debug)]
enum Cleanup {
    Dir(PathBuf),
    Database { admin_url: String, name: String },
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether a missing service fails the test instead of skipping it
/// (`HERALD_REQUIRE_SERVICES=1`, as CI sets).
pub fn services_required() -> bool {
    std::env::var("HERALD_REQUIRE_SERVICES").is_ok_and(|v| v == "1" || v == "true")
}

fn postgres_base() -> String {
    std::env::var("HERALD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// Starts Herald on `backend`. `None` only when PostgreSQL is unreachable
/// and services are not required.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// Fake transports and a controlled clock, for delivery tests.
#[derive(Debug, Clone)]
pub struct Fakes {
    pub email: fakes::FakeChannel,
    pub sms: fakes::FakeChannel,
    pub push: fakes::FakeChannel,
    /// `None`: the wall clock (for tests where workers run on their own).
    pub clock: Option<Arc<ManualClock>>,
    /// Records realtime events from the workers; `None` sends them to the
    /// app's realtime hub, as in production.
    pub broadcast: Option<fakes::RecordingBroadcast>,
}

impl Fakes {
    /// Fakes on a manual clock that starts at `start`.
    pub fn new(start: chrono::DateTime<chrono::Utc>) -> Fakes {
        Fakes {
            clock: Some(Arc::new(ManualClock::new(start))),
            ..Fakes::live()
        }
    }

    /// Fakes on the wall clock.
    pub fn live() -> Fakes {
        Fakes {
            email: fakes::FakeChannel::new(ChannelKind::Email),
            sms: fakes::FakeChannel::new(ChannelKind::Sms),
            push: fakes::FakeChannel::new(ChannelKind::Push),
            clock: None,
            broadcast: Some(fakes::RecordingBroadcast::default()),
        }
    }

    /// Sends the workers' realtime events to the app's hub instead of
    /// recording them.
    #[must_use]
    pub fn with_realtime(mut self) -> Fakes {
        self.broadcast = None;
        self
    }

    /// The realtime events recorded so far.
    pub fn broadcasts(&self) -> Vec<herald_core::realtime::RealtimeEvent> {
        self.broadcast
            .as_ref()
            .expect("these fakes send to the hub")
            .events()
    }

    /// The manual clock; panics for [`Fakes::live`].
    pub fn clock(&self) -> &ManualClock {
        self.clock
            .as_deref()
            .expect("these fakes run on the wall clock")
    }

    fn components(&self) -> Components {
        let mut channels = Providers::new();
        for (kind, fake) in [
            (ChannelKind::Email, &self.email),
            (ChannelKind::Sms, &self.sms),
            (ChannelKind::Push, &self.push),
        ] {
            let transport: Arc<dyn herald_core::Channel> = Arc::new(fake.clone());
            channels.insert(kind, vec![("fake".to_owned(), transport)]);
        }
        Components {
            channels: Some(channels),
            clock: self
                .clock
                .clone()
                .map(|c| c as Arc<dyn herald_delivery::Clock>),
            broadcast: self
                .broadcast
                .clone()
                .map(|b| Arc::new(b) as Arc<dyn herald_core::realtime::Broadcast>),
        }
    }
}

/// As [`spawn_app`], letting the test adjust settings first.
pub async fn spawn_app_with(
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    spawn(backend, adjust, None).await
}

/// As [`spawn_app_with`], with fake transports, a manual clock and a
/// recording broadcast.
pub async fn spawn_app_with_fakes(
    backend: Backend,
    fakes: Fakes,
    adjust: impl FnOnce(&mut Settings),
) -> Option<TestApp> {
    spawn(backend, adjust, Some(fakes)).await
}

async fn spawn(
    backend: Backend,
    adjust: impl FnOnce(&mut Settings),
    fakes: Option<Fakes>,
) -> Option<TestApp> {
    if std::env::var_os("HERALD_TEST_LOG").is_some() {
        let mut log = Settings::load(None).expect("default settings load").log;
        log.filter = "info,sqlx=warn".into();
        herald_server::telemetry::init(&log);
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let dir = std::env::temp_dir().join(format!("herald-test-{tag}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (url, cleanup) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.join("herald.db").display()),
            Cleanup::Dir(dir.clone()),
        ),
        Backend::Postgres => {
            let base = postgres_base();
            let admin_url = format!("{base}/postgres");
            let name = format!("herald_test_{tag}");
            match herald_store::scratch::create_database(&admin_url, &name).await {
                Ok(()) => (
                    format!("{base}/{name}"),
                    Cleanup::Database { admin_url, name },
                ),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    assert!(
                        !services_required(),
                        "PostgreSQL is required (HERALD_REQUIRE_SERVICES=1) but unreachable at {base}: {e}"
                    );
                    eprintln!("skipped: PostgreSQL unreachable at {base}: {e}");
                    return None;
                }
            }
        }
    };

    let mut settings = Settings::load(None).expect("default settings load");
    let secret: String = format!("test-secret-{tag}-{tag}");
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.data_dir = dir;
    settings.database.url = Secret::new(url);
    settings.database.max_connections = 8;
    settings.auth.secret = Secret::new(secret.clone());
    settings.delivery.queue_url = Secret::new(format!(
        "sqlite://{}",
        settings.server.data_dir.join("queue.db").display()
    ));
    settings.channels.outbox_dir = settings.server.data_dir.join("outbox");
    // Tests drive delivery attempts themselves unless they turn workers on.
    settings.delivery.workers_in_serve = false;
    settings.routing.file = repo_root().join("config/routing.toml");
    settings.templates.dir = repo_root().join("templates");
    adjust(&mut settings);
    settings.validate().expect("test settings are valid");

    let auth = Authenticator::from_settings(&settings.auth).expect("auth settings");
    let data_dir = settings.server.data_dir.clone();
    let components = fakes.as_ref().map(Fakes::components).unwrap_or_default();
    let app = Application::build_with(settings, components)
        .await
        .expect("Herald builds");
    let delivery = app.delivery().clone();
    let address = format!("http://{}", app.local_addr());
    let store = app.state().store.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    Some(TestApp {
        address,
        client,
        store,
        backend,
        secret,
        data_dir,
        delivery,
        fakes,
        auth,
        cleanup,
        stop: Some(stop),
        server: Some(server),
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database { admin_url, name } => {
                herald_store::scratch::drop_database_blocking(admin_url.clone(), name.clone());
            }
        }
    }
}

/// Whether the test PostgreSQL answers (always true, or a panic, when
/// services are required).
pub async fn postgres_available() -> bool {
    let url = format!("{}/postgres", postgres_base());
    let ok = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
        .is_ok_and(|c| c.is_ok());
    assert!(
        ok || !services_required(),
        "PostgreSQL is required but unreachable at {url}"
    );
    ok
}

impl TestApp {
    /// Where the development outbox writes.
    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }

    /// Shuts the server down as SIGTERM would, and waits until it has.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server shuts down cleanly");
        }
    }

    /// A token for `sub` with `role`, valid for an hour.
    pub fn token(&self, role: Role, sub: &str, restaurant: Option<&str>) -> String {
        self.auth
            .mint(role, sub, restaurant, Duration::from_secs(3600))
            .expect("tokens mint")
    }

    pub fn admin_token(&self) -> String {
        self.token(Role::Admin, "admin-1", None)
    }

    pub fn service_token(&self) -> String {
        self.token(Role::Service, "loyalty-platform", None)
    }

    /// A request with a bearer token (none when `token` is empty).
    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let req = self
            .client
            .request(method, format!("{}{path}", self.address));
        if token.is_empty() {
            req
        } else {
            req.bearer_auth(token)
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.request(Method::GET, path, token)
            .send()
            .await
            .expect("request")
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Response {
        self.request(method, path, token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Publishes one event or an array as the platform's service.
    pub async fn publish(&self, body: &Value) -> Response {
        self.send_json(Method::POST, "/v1/events", &self.service_token(), body)
            .await
    }

    /// Registers a user's directory entry and contact details, as the platform would.
    pub async fn register(&self, user: &str, role: Role, restaurant: Option<&str>, contact: Value) {
        let mut body = contact;
        body["role"] = Value::from(role.as_str());
        if let Some(r) = restaurant {
            body["restaurantId"] = Value::from(r);
        }
        let res = self
            .send_json(
                Method::PUT,
                &format!("/v1/users/{user}/contact"),
                &self.service_token(),
                &body,
            )
            .await;
        assert_eq!(
            res.status(),
            200,
            "register {user}: {}",
            res.text().await.unwrap_or_default()
        );
    }

    /// `user`'s whole inbox, newest first, following cursors.
    pub async fn inbox(&self, token: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor = String::new();
        loop {
            let res = self
                .get(
                    &format!("/v1/notifications?limit=100&cursor={cursor}"),
                    token,
                )
                .await;
            assert_eq!(res.status(), 200);
            let page: Value = res.json().await.expect("json");
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["nextCursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => return items,
            }
        }
    }
}

/// Runs an async test body once per database:
///
/// ```text
/// backend_tests! {
///     async fn publishes(app) { … }
/// }
/// ```
///
/// makes `publishes::sqlite` and `publishes::postgres`.
#[macro_export]
macro_rules! backend_tests {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn run($app: $crate::TestApp) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::spawn_app($crate::Backend::Sqlite).await.expect("sqlite always runs");
                    run(app).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(app) = $crate::spawn_app($crate::Backend::Postgres).await {
                        run(app).await
                    }
                }
            }
        )*
    };
}

/// Polls `check` until it yields a value or `within` passes: for awaiting
/// work other tasks do (a worker sending, a sweeper recovering). Panics
/// with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}
