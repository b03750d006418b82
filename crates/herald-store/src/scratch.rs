//! Throwaway PostgreSQL databases, for tests (the `testing` feature): one
//! per test, created on an admin connection and dropped with the
//! [`ScratchDatabase`] that owns it, so tests never see each other's rows.
//! Not part of Herald's production API.

use std::time::Duration;

use sqlx::Connection;

/// A PostgreSQL database of a test's own, dropped (with whatever is still
/// connected to it) when this is.
#[derive(Debug)]
pub struct ScratchDatabase {
    /// The server's `postgres` database, to create and drop through.
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// A new database named `{prefix}{uuid}` on the test PostgreSQL
    /// ([`herald_testkit_core::postgres_base`]). `None` when the server
    /// cannot be reached: the test is skipped ([`herald_testkit_core::skip`]),
    /// unless services are required, which makes it fail.
    pub async fn create(prefix: &str) -> Option<ScratchDatabase> {
        let base = herald_testkit_core::postgres_base();
        let admin_url = format!("{base}/postgres");
        let name = format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        match create_database(&admin_url, &name).await {
            Ok(()) => Some(ScratchDatabase {
                url: format!("{base}/{name}"),
                admin_url,
                name,
            }),
            Err(e) => {
                herald_testkit_core::skip(
                    &format!("PostgreSQL unreachable at {base}"),
                    &e.to_string(),
                );
                None
            }
        }
    }

    /// The database's URL, for `Store::connect`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        drop_database_blocking(self.admin_url.clone(), self.name.clone());
    }
}

/// Creates database `name` through `admin_url` (a database that exists,
/// such as `postgres`). Five seconds to connect: a missing server fails
/// fast instead of stalling the test.
async fn create_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::PgConnection::connect(admin_url),
    )
    .await
    .map_err(|_| sqlx::Error::PoolTimedOut)??;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

/// Drops database `name`, ending whatever is still connected to it. Callable
/// from `Drop` inside a test's runtime: the work runs on a thread and a
/// runtime of its own, and this waits for it.
fn drop_database_blocking(admin_url: String, name: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await
        })
        .map_err(std::io::Error::other)
    })
    .join();
}
