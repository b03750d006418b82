//! Herald's storage: the database is the source of truth.
//!
//! | module | owns |
//! |---|---|
//! | [`records`] | the rows Herald reads and writes, as plain structs |
//! | [`deliveries`] | delivery state: claims in batches with a lease, finishes by compare-and-set with their trace, both by group commit (`deliveries::writer`); sweep |
//! | [`events`] | ingest: events, inbox entries and deliveries in one transaction of multi-row statements; concurrent batches share it (group commit, `events::writer`) |
//! | [`inbox`] | the notification centre: listing, unread count, read, delete, delivery traces |
//! | [`directory`] | contacts, roles, preferences and devices; group expansion for routing; the cache ingest reads them through, kept true by every write here (and, on PostgreSQL, by LISTEN/NOTIFY across nodes: `directory::cache`) |
//! | [`redrive`] | the admin's list of failed and expired deliveries; re-drive by compare-and-set, traced |
//! | [`smart`] | digests folded exactly once, throttle counts, whether an event was seen (holds, escalation) |
//! | [`realtime`] | the realtime log (events by offset and room) and its epochs: what a resume falls back on when Redis lost its history |
//! | [`scheduling`] | scheduled events (`sendAt`): their release, once across nodes; cancelling an event's (or an inbox entry's) open deliveries |
//! | [`actions`] | `action_confirm` records from realtime clients, and their webhook outbox |
//! | [`lifecycle`] | retention purges in small batches; a user's erase and export |
//! | [`audit`] | the admin audit log: changes to someone else's preferences, contact, devices, and to routing; written in the change's transaction |
//! | [`routing`] | the routing table's stored versions (replaced over REST), by compare-and-set |
//! | `scratch` | throwaway PostgreSQL databases for tests; only with the `testing` feature, outside the production API |
//!
//! One [`Store`] speaks to SQLite (the embedded default) or PostgreSQL,
//! chosen by the URL's scheme, through sqlx's `Any` driver. The schema
//! (`migrations/`) and every query are written once in the SQL both understand (`$1`
//! placeholders, `ON CONFLICT`, `RETURNING`); ids are text, times are epoch
//! milliseconds, flags are 0/1, so no type differs between the two.
//!
//! SQLite allows one writer at a time. Rather than let concurrent
//! transactions race for the lock and fail with `SQLITE_BUSY`, the store
//! keeps a single-connection pool for writes and a wider one for reads (WAL
//! lets them run side by side). On PostgreSQL both are the same pool.
//!
//! Ingest does not open a transaction per call: calls queue for writer
//! lanes (tasks the store starts), which merge what waits into one
//! transaction and one commit. A commit is a disk flush (`synchronous =
//! FULL` on SQLite), so under load this, not the SQL, sets the pace. The
//! lanes stop when the last clone of the store is dropped.

pub mod actions;
pub mod audit;
pub mod deliveries;
pub mod directory;
pub mod events;
pub mod inbox;
pub mod lifecycle;
pub mod realtime;
pub mod records;
pub mod redrive;
pub mod routing;
pub mod scheduling;
#[cfg(any(test, feature = "testing"))]
pub mod scratch;
pub mod smart;
#[cfg(test)]
mod testing;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use directory::cache::DirectoryCache;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use records::*;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL `{0}`: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// An event id was published before with a different payload. `index`
    /// is its position in the batch.
    #[error("event {event_id} was already published with a different payload")]
    IdempotencyConflict { index: usize, event_id: String },
    /// An `action_confirm` id was recorded before with another action or amount.
    #[error("action {action_id} was already confirmed with a different action or amount")]
    ActionConflict { action_id: String },
    /// The ingest writer did not answer: the runtime is shutting down, or
    /// writing this batch's group panicked (a bug). The batch may or may not
    /// have been written; publishing it again is safe.
    #[error("the ingest writer has stopped")]
    WriterStopped,
    /// A stored value Herald cannot read back: a bug or a hand-edited row.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether the database could not be reached (or dropped the
    /// connection), rather than refusing the statement: the same request
    /// may succeed once it is back. The pool opens fresh connections by
    /// itself, so nothing else is needed to recover. The HTTP layer answers
    /// these 503 with `Retry-After`, everything else it does not know 500.
    ///
    /// - the pool: no connection within its acquire timeout (the server
    ///   refuses or does not answer), or the pool closed (shutting down);
    /// - the socket: I/O and TLS failures;
    /// - PostgreSQL: connection exceptions (class 08), an administrator's
    ///   shutdown or termination, a server starting or stopping, the
    ///   database dropped (57P0x), too many connections (53300), and a
    ///   database that does not accept connections (55000: `ALLOW_CONNECTIONS
    ///   false`, or being dropped; Herald's statements raise it for nothing
    ///   else);
    /// - SQLite: the file cannot be opened (`SQLITE_CANTOPEN`), the disk
    ///   fails or is full (`SQLITE_IOERR`, `SQLITE_FULL`), or another
    ///   process holds the lock past the busy timeout (`SQLITE_BUSY`).
    pub fn is_unavailable(&self) -> bool {
        let Error::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else {
                    return false;
                };
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    code.starts_with("08")
                        || code.starts_with("57P0")
                        || code == "53300"
                        || code == "55000"
                } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    // The extended result code; its low byte is the primary one.
                    const BUSY: i32 = 5;
                    const IOERR: i32 = 10;
                    const FULL: i32 = 13;
                    const CANTOPEN: i32 = 14;
                    code.parse::<i32>()
                        .is_ok_and(|c| matches!(c & 0xff, BUSY | IOERR | FULL | CANTOPEN))
                } else {
                    false
                }
            }
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The database `url` names (`sqlite:…`, `postgres:…`, `postgresql:…`),
    /// if Herald stores in it.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// A handle to Herald's database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    /// The queue of the ingest writer lanes ([`events::writer`]); they stop
    /// when the last clone of it is dropped.
    ingest: tokio::sync::mpsc::Sender<events::writer::Request>,
    /// The queue of the delivery writer lanes (claims and finishes by group
    /// commit, [`deliveries`]); they stop with the last clone too.
    deliveries: tokio::sync::mpsc::Sender<deliveries::writer::Request>,
    /// What ingest reads of the directory, kept true by every write that
    /// changes it ([`directory::cache`]).
    directory: std::sync::Arc<directory::cache::DirectoryCache>,
    /// Dropped with the last clone: stops the PostgreSQL listener that
    /// hears other nodes' directory changes.
    _listening: Option<std::sync::Arc<tokio::sync::oneshot::Sender<()>>>,
}

/// How to connect; see [`Store::connect_with`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The pool's size (SQLite: the readers'; there is one writer).
    pub max_connections: u32,
    /// Users (and group members) the directory cache holds; 0 turns it
    /// off. On PostgreSQL a cache also holds a connection of its own, that
    /// listens for other nodes' changes.
    pub directory_cache: usize,
}

/// The most ingest writer lanes on PostgreSQL.
const MAX_INGEST_LANES: u32 = 4;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

impl Store {
    /// Connects to `url` (`sqlite://data/herald.db`, `postgres://…`), with
    /// no directory cache (processes that do not ingest). A SQLite
    /// file and its directory are created when missing, and put in WAL mode.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Store::connect_with(
            url,
            Options {
                max_connections,
                directory_cache: 0,
            },
        )
        .await
    }

    /// Connects as [`Store::connect`], with a directory cache of
    /// `options.directory_cache`. On PostgreSQL the cache is armed once its
    /// listener listens (before this returns).
    pub async fn connect_with(url: &str, options: Options) -> Result<Store> {
        let Options {
            max_connections,
            directory_cache,
        } = options;
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(url).ok_or_else(|| Error::UnsupportedUrl(url.to_owned()))?;
        let options = AnyConnectOptions::from_str(&sqlite_create_mode(url, backend))?;
        let pool = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(Duration::from_secs(10))
                // A SQLite connection is a file handle on this machine's
                // connection thread: it cannot go stale, and the ping sqlx
                // sends by default would cost every acquire a hand-off to
                // that thread and back. A PostgreSQL connection can die
                // with its server or the network: it is checked.
                .test_before_acquire(backend == Backend::Postgres)
                .after_connect(move |conn, _| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            conn.execute("PRAGMA busy_timeout = 10000; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON")
                                .await?;
                        }
                        Ok(())
                    })
                })
        };
        match backend {
            Backend::Sqlite => {
                if let Some(dir) = sqlite_dir(url) {
                    std::fs::create_dir_all(dir).map_err(|e| Error::Database(e.into()))?;
                }
                let write = pool(1).connect_with(options.clone()).await?;
                // WAL is a property of the file: set once, it stays.
                write.execute("PRAGMA journal_mode = WAL").await?;
                let read = pool(max_connections.max(1)).connect_with(options).await?;
                // One process writes a SQLite file (`herald worker` beside
                // `herald serve` is the one exception, see the cache's
                // docs): every change passes through this store.
                let directory = Arc::new(DirectoryCache::new(directory_cache, true));
                // One writer connection, one lane.
                let (ingest, _) = events::writer::spawn(&write, 1, &directory);
                let deliveries = deliveries::writer::spawn(&write, 1);
                Ok(Store {
                    read,
                    write,
                    ingest,
                    deliveries,
                    directory,
                    _listening: None,
                })
            }
            Backend::Postgres => {
                let max_connections = max_connections.max(2);
                let pool = pool(max_connections).connect_with(options).await?;
                // A few lanes, so that one group commits while the next is
                // written; at most half the pool, the rest stays for reads.
                let lanes = (max_connections / 2).clamp(1, MAX_INGEST_LANES);
                let directory = Arc::new(DirectoryCache::new(directory_cache, false));
                let listening = if directory_cache > 0 {
                    Some(Arc::new(
                        directory::cache::listen(url, Arc::clone(&directory)).await?,
                    ))
                } else {
                    None
                };
                let (ingest, _) = events::writer::spawn(&pool, lanes as usize, &directory);
                let deliveries = deliveries::writer::spawn(&pool, lanes as usize);
                Ok(Store {
                    read: pool.clone(),
                    write: pool,
                    ingest,
                    deliveries,
                    directory,
                    _listening: listening,
                })
            }
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.write).await?;
        Ok(())
    }

    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    /// The directory cache ingest reads through.
    pub fn directory_cache(&self) -> &DirectoryCache {
        &self.directory
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// SQLite URLs open read-write-create unless they say otherwise.
fn sqlite_create_mode(url: &str, backend: Backend) -> String {
    if backend == Backend::Sqlite && !url.contains("mode=") && !url.contains(":memory:") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}mode=rwc")
    } else {
        url.to_owned()
    }
}

/// The directory of a SQLite file URL, if it has one.
fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    std::path::Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(std::path::Path::to_path_buf)
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An id read back from a text column.
pub(crate) fn parse_id<T: FromStr>(text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::Corrupt(format!("`{text}` is not an id")))
}

/// An id column of `row`, by name.
pub(crate) fn parse_named<T: FromStr>(row: &sqlx::any::AnyRow, column: &str) -> Result<T> {
    use sqlx::Row;
    parse_id(&row.try_get::<String, _>(column)?)
}

/// `$from, $from+1, …` placeholders for an `IN (…)` list of `n` values.
pub(crate) fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file_and_directory() {
        assert_eq!(
            sqlite_create_mode("sqlite://data/herald.db", Backend::Sqlite),
            "sqlite://data/herald.db?mode=rwc"
        );
        assert_eq!(
            sqlite_create_mode("sqlite://x.db?mode=ro", Backend::Sqlite),
            "sqlite://x.db?mode=ro"
        );
        assert_eq!(sqlite_dir("sqlite://data/herald.db"), Some("data".into()));
        assert_eq!(sqlite_dir("sqlite://herald.db"), None);
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_told_from_a_refused_statement() {
        let db = crate::testing::TestDb::new(Backend::Sqlite, 2)
            .await
            .expect("sqlite always runs");
        let refused = Error::from(
            sqlx::query("SELEKT 1")
                .execute(&db.store.read)
                .await
                .unwrap_err(),
        );
        assert!(!refused.is_unavailable(), "{refused}");
        db.store.close().await;
        let closed = db.store.ping().await.unwrap_err();
        assert!(closed.is_unavailable(), "{closed}");

        // A file that cannot be opened: SQLITE_CANTOPEN.
        let dir = tempfile::tempdir().expect("temp dir");
        let absent = format!(
            "sqlite://{}?mode=ro",
            dir.path().join("absent.db").display()
        );
        let cannot_open = Store::connect(&absent, 1).await.unwrap_err();
        assert!(cannot_open.is_unavailable(), "{cannot_open}");
    }
}
