//! Fresh databases for the store's own tests: a SQLite file in a temporary
//! directory, or a PostgreSQL database created for the test and dropped
//! with it. PostgreSQL comes from `HERALD_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432`); when it cannot be reached the test
//! is skipped with a note, unless `HERALD_REQUIRE_SERVICES=1` (as in
//! `herald-testkit`).

pub(crate) use crate::Backend;
use crate::Store;

/// A migrated store on a database of its own.
#[derive(Debug)]
pub(crate) struct TestDb {
    pub store: Store,
    /// Removed when dropped.
    _dir: Option<tempfile::TempDir>,
    /// `(admin URL, name)` of a PostgreSQL database to drop.
    database: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database on `backend` with `max_connections`; `None` when
    /// PostgreSQL is unreachable and not required.
    pub async fn new(backend: Backend, max_connections: u32) -> Option<TestDb> {
        let (url, _dir, database) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("herald-store-test-")
                    .tempdir()
                    .expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("herald.db").display());
                (url, Some(dir), None)
            }
            Backend::Postgres => {
                let base = std::env::var("HERALD_TEST_POSTGRES")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
                let admin_url = format!("{base}/postgres");
                let name = format!("herald_store_{}", uuid::Uuid::new_v4().simple());
                if let Err(e) = crate::scratch::create_database(&admin_url, &name).await {
                    let required = std::env::var("HERALD_REQUIRE_SERVICES")
                        .is_ok_and(|v| v == "1" || v == "true");
                    assert!(
                        !required,
                        "PostgreSQL is required but unreachable at {base}: {e}"
                    );
                    eprintln!("skipped: PostgreSQL unreachable at {base}: {e}");
                    return None;
                }
                (format!("{base}/{name}"), None, Some((admin_url, name)))
            }
        };
        let store = Store::connect(&url, max_connections)
            .await
            .expect("store connects");
        store.migrate().await.expect("migrations apply");
        Some(TestDb {
            store,
            _dir,
            database,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.database.take() {
            crate::scratch::drop_database_blocking(admin_url, name);
        }
    }
}
