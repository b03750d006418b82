//! The delivery queue: apalis jobs that say "look at these deliveries".
//!
//! Two storages behind one type: SQLite (`sqlite://data/queue.db`, the
//! embedded default; workers run inside `herald serve`) and Redis
//! (`redis://…`, for several nodes; `herald worker` runs workers alone).
//! The queue is the fast path only. A job carries nothing but delivery
//! ids — up to [`JOB_DELIVERIES`] of them, so a batch published together
//! is claimed with one statement and its queue costs are paid once — every
//! attempt starts by claiming the delivery in the database, and the
//! [`crate::sweeper`] re-enqueues what the queue loses — so a flushed Redis,
//! a killed worker or a crash between commit and enqueue costs latency,
//! never a message.
//!
//! In Redis, apalis-redis 1.0 files every pushed job — due now or later —
//! in its scheduled set, and each fetch first moves *all* the due ones to
//! the active list with one Lua `unpack`, which fails beyond 7,999 values.
//! A backlog of 8,000 due jobs (deliveries enqueued while no worker ran)
//! would kill every worker on its first fetch, and the sweeper, counting
//! those jobs as queued, would never step in. So Herald moves due jobs
//! itself, [`REDIS_CHUNK`] at a time: after each push, and before a worker
//! starts.
//!
//! Finished jobs are purged as the sweeper goes ([`Queue::purge_finished`]):
//! the database keeps each delivery's trace, so the queue keeps nothing
//! once a job is done.
//!
//! Redis restarts. The storage's connection (redis-rs's `ConnectionManager`)
//! reconnects, but only once a command has failed on the dead connection:
//! the first command after a restart fails with `broken pipe`. So every
//! Redis command Herald itself issues here is retried once when it failed
//! on the connection ([`connection_lost`]); the retry runs on the new one.
//! A command that fails twice means Redis is still away, and the error
//! says so. (Pushing twice is safe: a job only names deliveries, which are
//! claimed in the database.)

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::callback::HookCallbackListener;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use herald_core::DeliveryId;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::dispatch::Dispatcher;

/// Most jobs one Redis script pushes or moves: well under what a Lua
/// `unpack` takes (7,999), and short enough that one script never holds
/// Redis for long.
pub const REDIS_CHUNK: usize = 1_000;

/// Moves due jobs from the scheduled set to the active list, a bounded
/// number at a time (see the module docs).
static PROMOTE_DUE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("promote_due.lua")));

/// Most deliveries one job names: what one claim statement takes at once.
pub const JOB_DELIVERIES: usize = 64;

/// Most finished jobs one purge statement or script removes.
const PURGE_CHUNK: usize = 1_000;

/// Removes finished jobs of a Redis queue: their ids from the done and
/// dead sets, their data and their metadata.
static PURGE_FINISHED: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("purge_finished.lua")));

/// The job: which deliveries to look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub deliveries: Vec<DeliveryId>,
}

/// A handle on the queue; cheap to clone.
#[derive(Clone)]
pub enum Queue {
    Sqlite {
        storage: SqliteStorage<DeliveryJob>,
        pool: SqlitePool,
        name: String,
        /// SQLite's update hook, announcing each pushed job: the workers of
        /// this process wake on it instead of waiting for the next poll.
        /// Taken by the first `run_workers`.
        hook: Arc<Mutex<Option<HookCallbackListener>>>,
    },
    Redis {
        storage: RedisStorage<DeliveryJob>,
    },
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queue::Sqlite { .. } => "Queue::Sqlite",
            Queue::Redis { .. } => "Queue::Redis",
        })
    }
}

fn queue_error(e: impl std::fmt::Display) -> Error {
    Error::Queue(e.to_string())
}

/// Whether a Redis command failed on the connection rather than on its own
/// terms: the connection dropped, was refused, or timed out. Worth one retry.
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// As [`connection_lost`], for a push through apalis.
fn push_connection_lost(e: &TaskSinkError<apalis_redis::Error>) -> bool {
    matches!(e, TaskSinkError::PushError(apalis_redis::Error::Database(r)) if connection_lost(r))
}

/// Runs `op`, and once more if it failed on the connection (see the module
/// docs): the second attempt goes out on the reconnected connection.
async fn retry_once<T, E, F, Fut>(what: &str, lost: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match op().await {
        Err(e) if lost(&e) => {
            tracing::debug!(op = what, error = %e, "queue connection lost; retrying once");
            op().await
        }
        done => done,
    }
}

impl Queue {
    /// Opens the queue at `url` (`sqlite://PATH` or `redis://HOST:PORT`);
    /// `name` separates Herald's jobs from anything else in the same
    /// storage. A worker fetches up to `batch` jobs per poll.
    pub async fn connect(url: &str, name: &str, batch: usize) -> Result<Queue, Error> {
        let batch = batch.max(1);
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            let conn = apalis_redis::connect(url).await.map_err(queue_error)?;
            let storage = RedisStorage::new(conn).with_config(
                apalis_redis::Config::default()
                    .queue(name)
                    .batch_size(batch),
            );
            return Ok(Queue::Redis { storage });
        }
        if !url.starts_with("sqlite:") {
            return Err(Error::Queue(format!(
                "`{url}`: a queue URL is sqlite://… or redis://…"
            )));
        }
        if let Some(dir) = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split('?')
            .next()
            .map(std::path::Path::new)
            .and_then(std::path::Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(queue_error)?;
        }
        let url = if url.contains("mode=") {
            url.to_owned()
        } else {
            format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
        };
        let (pool, hook) = SqliteStorage::<()>::connect_with_callback(&url).map_err(queue_error)?;
        // Sets WAL and creates the jobs table.
        SqliteStorage::<()>::setup(&pool)
            .await
            .map_err(queue_error)?;
        let storage = SqliteStorage::new(&pool).with_config(
            apalis_sqlite::Config::default()
                .queue(name)
                .batch_size(batch),
        );
        Ok(Queue::Sqlite {
            storage,
            pool,
            name: name.to_owned(),
            hook: Arc::new(Mutex::new(Some(hook))),
        })
    }

    /// Enqueues deliveries that are due now, [`JOB_DELIVERIES`] to a job.
    /// Into Redis, [`REDIS_CHUNK`] jobs at a time, each chunk moved on to
    /// the active list before the next is pushed: however large the batch,
    /// a worker fetching meanwhile never finds more than a chunk's worth due.
    pub async fn enqueue(&self, ids: &[DeliveryId]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let jobs: Vec<DeliveryJob> = ids
            .chunks(JOB_DELIVERIES)
            .map(|chunk| DeliveryJob {
                deliveries: chunk.to_vec(),
            })
            .collect();
        match self {
            Queue::Sqlite { storage, .. } => {
                storage.clone().push_bulk(jobs).await.map_err(queue_error)
            }
            Queue::Redis { storage } => {
                for chunk in jobs.chunks(REDIS_CHUNK) {
                    retry_once("enqueue", push_connection_lost, || {
                        let mut storage = storage.clone();
                        let jobs = chunk.to_vec();
                        async move { storage.push_bulk(jobs).await }
                    })
                    .await
                    .map_err(queue_error)?;
                    promote_due(storage).await?;
                }
                Ok(())
            }
        }
    }

    /// Enqueues a delivery to be looked at no earlier than `at`.
    pub async fn schedule(
        &self,
        id: DeliveryId,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let delay = (at - now).to_std().unwrap_or_default();
        let task = TaskBuilder::new(DeliveryJob {
            deliveries: vec![id],
        })
        .run_after(delay)
        .build();
        match self {
            Queue::Sqlite { storage, .. } => {
                storage.clone().push_task(task).await.map_err(queue_error)
            }
            Queue::Redis { storage } => retry_once("schedule", push_connection_lost, || {
                let mut storage = storage.clone();
                let task = task.clone();
                async move { storage.push_task(task).await }
            })
            .await
            .map_err(queue_error),
        }
    }

    /// How many jobs wait in the queue (due or scheduled), not counting
    /// those a worker is running.
    pub async fn depth(&self) -> Result<u64, Error> {
        match self {
            Queue::Sqlite { pool, name, .. } => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM Jobs WHERE job_type = ?1 AND status IN ('Pending', 'Queued')",
                )
                .bind(name)
                .fetch_one(pool)
                .await
                .map_err(queue_error)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
            Queue::Redis { storage } => {
                let config = storage.get_config().clone();
                let pipe = redis::pipe()
                    .cmd("LLEN")
                    .arg(config.active_jobs_list())
                    .cmd("ZCARD")
                    .arg(config.scheduled_jobs_set())
                    .clone();
                let (active, scheduled): (u64, u64) = retry_once("depth", connection_lost, || {
                    let mut storage = storage.clone();
                    let pipe = pipe.clone();
                    async move { pipe.query_async(storage.get_connection()).await }
                })
                .await
                .map_err(queue_error)?;
                Ok(active + scheduled)
            }
        }
    }

    /// How many jobs the storage keeps, finished ones included: what the
    /// sweeper's purge keeps small.
    pub async fn stored_jobs(&self) -> Result<u64, Error> {
        match self {
            Queue::Sqlite { pool, name, .. } => {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Jobs WHERE job_type = ?1")
                    .bind(name)
                    .fetch_one(pool)
                    .await
                    .map_err(queue_error)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
            Queue::Redis { storage } => {
                let key = storage.get_config().job_data_hash();
                retry_once("stored_jobs", connection_lost, || {
                    let mut storage = storage.clone();
                    let key = key.clone();
                    async move {
                        redis::cmd("HLEN")
                            .arg(key)
                            .query_async(storage.get_connection())
                            .await
                    }
                })
                .await
                .map_err(queue_error)
            }
        }
    }

    /// A round trip to the storage, for readiness checks.
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Queue::Sqlite { pool, .. } => {
                sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map_err(queue_error)?;
            }
            Queue::Redis { storage } => {
                retry_once("ping", connection_lost, || {
                    let mut storage = storage.clone();
                    async move {
                        redis::cmd("PING")
                            .query_async::<String>(storage.get_connection())
                            .await
                    }
                })
                .await
                .map_err(queue_error)?;
            }
        }
        Ok(())
    }

    /// Removes finished jobs, done or dead, in chunks so neither storage is
    /// held for long; returns how many went. The delivery's row and trace
    /// say what happened, so the queue keeps nothing of a finished job.
    pub async fn purge_finished(&self) -> Result<u64, Error> {
        let mut total = 0;
        match self {
            Queue::Sqlite { pool, name, .. } => loop {
                let done = sqlx::query(
                    "DELETE FROM Jobs WHERE rowid IN (SELECT rowid FROM Jobs \
                         WHERE job_type = ?1 AND status IN ('Done', 'Killed') LIMIT ?2)",
                )
                .bind(name)
                .bind(PURGE_CHUNK as i64)
                .execute(pool)
                .await
                .map_err(queue_error)?;
                total += done.rows_affected();
                if done.rows_affected() < PURGE_CHUNK as u64 {
                    return Ok(total);
                }
            },
            Queue::Redis { storage } => {
                let config = storage.get_config().clone();
                loop {
                    let purged: u64 = retry_once("purge_finished", connection_lost, || {
                        let mut storage = storage.clone();
                        let config = config.clone();
                        async move {
                            PURGE_FINISHED
                                .key(config.done_jobs_set())
                                .key(config.dead_jobs_set())
                                .key(config.job_data_hash())
                                .key(config.job_meta_hash())
                                .arg(PURGE_CHUNK)
                                .invoke_async(storage.get_connection())
                                .await
                        }
                    })
                    .await
                    .map_err(queue_error)?;
                    total += purged;
                    if purged < PURGE_CHUNK as u64 {
                        return Ok(total);
                    }
                }
            }
        }
    }

    /// Runs `concurrency` jobs at a time until `shutdown` resolves; an
    /// attempt in flight then finishes (or its lease hands it to another
    /// worker). The dispatcher's own bound on sends in flight applies
    /// across them. An idle worker looks for jobs every `poll`, and at once when
    /// this process enqueues into a SQLite queue.
    pub async fn run_workers(
        self,
        name: &str,
        dispatcher: Arc<Dispatcher>,
        concurrency: usize,
        poll: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let stop = shutdown.map(Ok::<(), std::io::Error>);
        let strategy = Strategy::new().apply(Ticker::new(poll));
        let result = match self {
            Queue::Sqlite { storage, hook, .. } => {
                let hook = hook.lock().unwrap_or_else(|e| e.into_inner()).take();
                let strategy = match hook {
                    Some(hook) => strategy.stream(hook.ready_chunks(64)),
                    None => strategy,
                };
                WorkerBuilder::new(name)
                    .backend(storage.poll_with_strategy(strategy))
                    .concurrency(concurrency)
                    .data(dispatcher)
                    .build(handle)
                    .run_until(stop)
                    .await
            }
            Queue::Redis { storage } => {
                // Whatever came due while no worker ran (retries, or jobs
                // pushed by an older Herald) goes to the active list first.
                let moved = promote_due(&storage).await?;
                if moved > 0 {
                    tracing::info!(
                        worker = name,
                        jobs = moved,
                        "moved due jobs to the active list"
                    );
                }
                WorkerBuilder::new(name)
                    .backend(storage.poll_with_strategy(strategy))
                    .concurrency(concurrency)
                    .data(dispatcher)
                    .build(handle)
                    .run_until(stop)
                    .await
            }
        };
        result.map_err(queue_error)
    }
}

/// Wakes an idle worker every `period`, so it looks for jobs.
///
/// apalis-core 1.0's `IntervalStrategy` arms its next timer without polling
/// it, and its caller does not poll the strategy again before sleeping, so
/// after the first tick nothing wakes an idle worker until something else
/// does (its heartbeat, half a minute later): jobs pushed by another
/// process, and retries falling due, waited that long. This ticker always
/// leaves its next tick armed, with the waker registered.
struct Ticker(std::sync::Mutex<tokio::time::Interval>);

impl Ticker {
    fn new(period: Duration) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker(std::sync::Mutex::new(interval))
    }
}

impl PollStrategy for Ticker {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        let interval = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut fired = false;
        // Past a tick, poll again: the next one is then armed to wake us.
        while interval.poll_tick(cx).is_ready() {
            fired = true;
        }
        if fired {
            std::task::Poll::Ready(Some(()))
        } else {
            std::task::Poll::Pending
        }
    }
}

/// Moves every due job of a Redis queue from the scheduled set to the
/// active list, [`REDIS_CHUNK`] per script; how many moved. Each script is
/// atomic, so a worker fetching meanwhile (which moves due jobs too) and
/// this never move the same job twice.
async fn promote_due(storage: &RedisStorage<DeliveryJob>) -> Result<u64, Error> {
    let config = storage.get_config().clone();
    // apalis-redis scores jobs in whole seconds of the wall clock.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut total = 0;
    loop {
        let moved: u64 = retry_once("promote_due", connection_lost, || {
            let mut storage = storage.clone();
            let config = config.clone();
            async move {
                PROMOTE_DUE
                    .key(config.scheduled_jobs_set())
                    .key(config.active_jobs_list())
                    .key(config.signal_list())
                    .arg(now)
                    .arg(REDIS_CHUNK)
                    .invoke_async(storage.get_connection())
                    .await
            }
        })
        .await
        .map_err(queue_error)?;
        total += moved;
        if moved < REDIS_CHUNK as u64 {
            return Ok(total);
        }
    }
}

/// The job handler. It never fails the job: what went wrong is recorded on
/// the delivery (or, for a database outage, left to the lease and sweeper),
/// so apalis has nothing to retry.
///
/// The attempts run on a task of their own: if the apalis worker dies under
/// them (its Redis was flushed), they still finish and record their
/// outcomes instead of leaving a sent message looking unsent.
async fn handle(job: DeliveryJob, dispatcher: Data<Arc<Dispatcher>>) -> Result<(), BoxDynError> {
    let dispatcher = Arc::clone(&dispatcher);
    let n = job.deliveries.len();
    let attempts = tokio::spawn(async move { dispatcher.process_batch(&job.deliveries).await });
    match attempts.await {
        Ok(Ok(outcomes)) => tracing::debug!(deliveries = n, attempted = outcomes.len(), "job done"),
        Ok(Err(e)) => {
            tracing::warn!(deliveries = n, error = %e, "job stopped; the sweeper will retry its deliveries");
        }
        Err(e) => tracing::error!(deliveries = n, error = %e, "job panicked"),
    }
    Ok(())
}
