//! Fresh databases for the store's own tests: a SQLite file in a temporary
//! directory, or a PostgreSQL database of the test's own
//! ([`crate::scratch::ScratchDatabase`]: skipped when PostgreSQL cannot be
//! reached, unless `HERALD_REQUIRE_SERVICES=1`).

pub(crate) use crate::Backend;
use crate::Store;
use crate::scratch::ScratchDatabase;

/// A migrated store on a database of its own.
#[derive(Debug)]
pub(crate) struct TestDb {
    pub store: Store,
    /// For a second store (another node) on the same database.
    pub url: String,
    /// Removed when dropped.
    _dir: Option<tempfile::TempDir>,
    /// Dropped when dropped.
    _database: Option<ScratchDatabase>,
}

impl TestDb {
    /// A fresh database on `backend` with `max_connections`; `None` when
    /// PostgreSQL is unreachable and not required.
    pub async fn new(backend: Backend, max_connections: u32) -> Option<TestDb> {
        let (url, dir, database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("herald-store-test-")
                    .tempdir()
                    .expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let database = ScratchDatabase::create("herald_test_store_").await?;
                (database.url().to_owned(), None, Some(database))
            }
        };
        // With a directory cache, as `herald serve` has: every test then
        // checks that the writes it makes keep it true.
        let options = crate::Options {
            max_connections,
            directory_cache: 1_000,
        };
        let store = Store::connect_with(&url, options)
            .await
            .expect("store connects");
        store.migrate().await.expect("migrations apply");
        Some(TestDb {
            url,
            store,
            _dir: dir,
            _database: database,
        })
    }
}

/// Runs each `async fn name(db: TestDb)` of the calling module on a fresh
/// SQLite and a fresh PostgreSQL database (skipped when PostgreSQL is
/// unreachable and not required).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let backend = $crate::testing::Backend::Sqlite;
                if let Some(db) = $crate::testing::TestDb::new(backend, 8).await {
                    super::$name(db).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let backend = $crate::testing::Backend::Postgres;
                if let Some(db) = $crate::testing::TestDb::new(backend, 8).await {
                    super::$name(db).await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_backends;
