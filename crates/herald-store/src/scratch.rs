//! Throwaway PostgreSQL databases, for tests: one per test, created on an
//! admin connection and dropped when the test is done, so tests never see
//! each other's rows.

use std::time::Duration;

use sqlx::Connection;

/// Creates database `name` through `admin_url` (a database that exists,
/// such as `postgres`). Five seconds to connect: a missing server fails
/// fast instead of stalling the test.
pub async fn create_database(admin_url: &str, name: &str) -> Result<(), sqlx::Error> {
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
pub fn drop_database_blocking(admin_url: String, name: String) {
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
