//! Test helpers for Herald's integration tests (zero2prod's `helpers.rs`).
//!
//! | module | owns |
//! |---|---|
//! | (root) | [`spawn_app`]: a real Herald on port 0 over a fresh database; [`TestApp`], its client and tokens; [`backend_tests!`] |
//! | [`services`] | the test PostgreSQL and Redis, and Redis servers of a test's own to kill |
//! | [`fakes`] | transports that fail on demand, a recording broadcast |
//! | [`smtp`] | a real SMTP server on a local port, for the SMTP transport's tests |
//! | `herald_testkit_core`, re-exported | [`services_required`], [`skip`] and its end-of-run summary, where the services are, [`eventually`] |
//!
//! A test database is a new SQLite file, or a new PostgreSQL database
//! created for the test and dropped when the [`TestApp`] is. PostgreSQL
//! comes from `HERALD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`), Redis from `HERALD_TEST_REDIS`
//! (default `redis://127.0.0.1:6379`). When one cannot be reached the test
//! (or its PostgreSQL variant) is skipped, and the test binary says how many
//! were in one line as it exits — unless `HERALD_REQUIRE_SERVICES=1`, which
//! turns the skip into a failure (CI sets it).
//!
//! Delivery workers do not run inside a test app unless the test sets
//! `delivery.workers_in_serve`: most tests check what was scheduled, and
//! drive attempts through `app.delivery.dispatcher` themselves.

use std::path::PathBuf;
use std::time::Duration;

pub mod fakes;
pub mod services;
pub mod smtp;

use std::sync::Arc;

pub use herald_testkit_core::{
    eventually, postgres_base, redis_server, redis_url, services_required, skip,
};
pub use services::{PrivateRedis, postgres_available, redis_available};

use herald_core::{ChannelKind, Role};
use herald_delivery::ManualClock;
use herald_server::auth::Authenticator;
use herald_server::config::Secret;
use herald_server::delivery::{Components, DeliveryRuntime, Providers};
use herald_server::{Application, Settings};
use herald_store::Store;
use herald_store::scratch::ScratchDatabase;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

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
    /// Releases scheduled events (`sendAt`); also running on its own.
    pub releaser: herald_server::schedule::Releaser,
    auth: Authenticator,
    /// The directory made for this app, removed with it.
    temp_dir: PathBuf,
    /// The PostgreSQL database, dropped with the app.
    _database: Option<ScratchDatabase>,
    /// Stops the server gracefully (see [`TestApp::shutdown`]).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), herald_server::Error>>>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
    let (url, database) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.join("herald.db").display()),
            None,
        ),
        Backend::Postgres => {
            let Some(database) = ScratchDatabase::create("herald_test_").await else {
                let _ = std::fs::remove_dir_all(&dir);
                return None;
            };
            (database.url().to_owned(), Some(database))
        }
    };

    let mut settings = Settings::load(None).expect("default settings load");
    let secret: String = format!("test-secret-{tag}-{tag}");
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.data_dir = dir.clone();
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
    let releaser = app.releaser().clone();
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
        releaser,
        auth,
        temp_dir: dir,
        _database: database,
        stop: Some(stop),
        server: Some(server),
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The PostgreSQL database goes with its field.
        let _ = std::fs::remove_dir_all(&self.temp_dir);
    }
}

impl TestApp {
    /// The database's URL, so that another node can share it.
    pub fn database_url(&self) -> String {
        match &self._database {
            Some(database) => database.url().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("herald.db").display()),
        }
    }

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

    /// Publishes as [`TestApp::publish`], which must be accepted (202);
    /// the answer's body.
    pub async fn publish_ok(&self, body: &Value) -> Value {
        let res = self.publish(body).await;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        assert_eq!(status, 202, "publish {body}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("publish answered {text}: {e}"))
    }

    /// `GET /v1/admin/stats` as an admin, which must answer 200: this
    /// node's sockets and rooms, its `serverId`, the delivery queue.
    pub async fn stats(&self) -> Value {
        let res = self.get("/v1/admin/stats", &self.admin_token()).await;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "/v1/admin/stats: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("/v1/admin/stats: {e}: {text}"))
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
