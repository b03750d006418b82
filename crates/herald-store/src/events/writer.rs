//! Group commit: concurrent ingest calls share transactions.
//!
//! [`Store::ingest`](crate::Store::ingest) queues its batch and waits for
//! the answer. Writer lanes take from the one queue: a lane takes a request,
//! then every request already waiting (up to [`MAX_GROUP_EVENTS`] events),
//! and writes the group as one merged batch in one transaction. A hundred
//! single-event requests then cost one transaction and one commit (one
//! fsync) instead of a hundred, and the multi-row statements of
//! [`write`](super::write) get rows enough to be worth it. Each request is
//! answered with its own outcomes, in its own order.
//!
//! When the merged transaction fails (an idempotency conflict, or anything
//! else) it is rolled back, and its requests are written again one by one,
//! each in a transaction of its own, so that every caller gets the answer it
//! would have got alone: a conflict fails only the request that carries it,
//! with its index in that request, and the others are written.
//!
//! SQLite has one lane: it allows one writer anyway. PostgreSQL has a few,
//! which take turns: a lane holds the queue while it gathers a group and
//! writes its statements, and lets go before it commits, so the next lane
//! writes while that commit is flushed and what arrives meanwhile gathers
//! into one group. A group of [`PARALLEL_GROUP_EVENTS`] or more lets go at
//! once: it is worth a transaction of its own, and the next lane may write
//! beside it. Every transaction keeps the lock order of
//! [`write`](super::write), so lanes wait for each other but cannot
//! deadlock; a lane waiting for its turn holds no lock in the database.
//!
//! A request, once queued, is written or not as a unit even if its caller
//! goes away: lanes never drop one, and a caller that stopped waiting only
//! misses the answer. A group is written in a task of its own, so that a
//! bug that panics fails that group's callers, not the lane. The lanes stop
//! when the last [`Store`](crate::Store) clone is dropped: the queue
//! closes, they write what is still in it and end.

use std::ops::Range;
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{backend_of, write};
use crate::directory::cache::DirectoryCache;
use crate::records::{Ingested, NewEvent};
use crate::{Backend, Result};

/// The most events a lane merges into one transaction (a single request
/// larger than this is written alone, whole).
const MAX_GROUP_EVENTS: usize = 4_096;
/// A group at least this large (in events) is written beside others: it
/// outweighs the fixed cost of a transaction (a few round trips and a
/// commit). A smaller one keeps the queue until it commits, so that what
/// arrives meanwhile gathers into the next group instead of splintering into
/// more small transactions.
const PARALLEL_GROUP_EVENTS: usize = 64;
/// Requests that may wait for a lane before callers wait to queue.
const QUEUE_CAPACITY: usize = 4_096;

/// One caller's batch and where its answer goes.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) batch: Vec<NewEvent>,
    pub(crate) reply: oneshot::Sender<Result<Vec<Ingested>>>,
}

/// The queue the lanes share.
#[derive(Debug)]
pub(crate) struct Queue {
    requests: mpsc::Receiver<Request>,
    /// A request that did not fit in the last group: the next one starts
    /// with it, so queue order is kept.
    held: Option<Request>,
}

impl Queue {
    pub(crate) fn new() -> (mpsc::Sender<Request>, Arc<Mutex<Queue>>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let queue = Queue {
            requests: rx,
            held: None,
        };
        (tx, Arc::new(Mutex::new(queue)))
    }
}

/// Starts `lanes` writers on `pool`. They end when every sender is dropped
/// and the queue is empty. What a group changes in the directory (an
/// address filled in) is applied to `directory` once it commits.
pub(crate) fn spawn(
    pool: &AnyPool,
    lanes: usize,
    directory: &Arc<DirectoryCache>,
) -> (mpsc::Sender<Request>, Vec<JoinHandle<()>>) {
    let (tx, queue) = Queue::new();
    let handles = (0..lanes.max(1))
        .map(|_| {
            let (pool, queue) = (pool.clone(), Arc::clone(&queue));
            let directory = Arc::clone(directory);
            tokio::spawn(async move {
                loop {
                    let mut turn = Arc::clone(&queue).lock_owned().await;
                    let Some(group) = next_group(&mut turn, MAX_GROUP_EVENTS).await else {
                        return;
                    };
                    let events: usize = group.iter().map(|r| r.batch.len()).sum();
                    let (pool, directory) = (pool.clone(), Arc::clone(&directory));
                    let written = if events >= PARALLEL_GROUP_EVENTS {
                        drop(turn);
                        tokio::spawn(async move { write_group(&pool, &directory, group, ()).await })
                    } else {
                        tokio::spawn(
                            async move { write_group(&pool, &directory, group, turn).await },
                        )
                    };
                    if let Err(error) = written.await {
                        tracing::error!(%error, "an ingest group failed to write");
                    }
                }
            })
        })
        .collect();
    (tx, handles)
}

/// The next group: one request (waiting for it), then those already queued
/// while they fit in `max_events`. `None` once the queue is closed and empty.
pub(crate) async fn next_group(queue: &mut Queue, max_events: usize) -> Option<Vec<Request>> {
    let first = match queue.held.take() {
        Some(request) => request,
        None => queue.requests.recv().await?,
    };
    let mut events = first.batch.len();
    let mut group = vec![first];
    while events < max_events {
        let Ok(next) = queue.requests.try_recv() else {
            break;
        };
        if events + next.batch.len() > max_events {
            queue.held = Some(next);
            break;
        }
        events += next.batch.len();
        group.push(next);
    }
    Some(group)
}

/// Writes a group in one transaction, or each of its requests in its own
/// when that fails, and answers every request. `turn` is dropped once the
/// group's statements are written, before the commit.
#[tracing::instrument(
    level = "debug",
    skip_all,
    fields(
        requests = group.len(),
        events = group.iter().map(|r| r.batch.len()).sum::<usize>(),
    )
)]
pub(crate) async fn write_group<T>(
    pool: &AnyPool,
    directory: &DirectoryCache,
    group: Vec<Request>,
    turn: T,
) {
    let mut merged = Vec::with_capacity(group.iter().map(|r| r.batch.len()).sum());
    let mut parts: Vec<(Range<usize>, oneshot::Sender<_>)> = Vec::with_capacity(group.len());
    for request in group {
        let start = merged.len();
        merged.extend(request.batch);
        parts.push((start..merged.len(), request.reply));
    }
    let result = in_transaction(pool, directory, &merged, turn).await;
    if parts.len() == 1 {
        let (_, reply) = parts.pop().expect("one part");
        // The caller may have gone: the write stands (or not) all the same.
        let _ = reply.send(result);
        return;
    }
    match result {
        Ok(outcomes) => {
            let mut outcomes = outcomes.into_iter();
            for (range, reply) in parts {
                let _ = reply.send(Ok(outcomes.by_ref().take(range.len()).collect()));
            }
        }
        Err(error) => {
            tracing::debug!(
                %error,
                requests = parts.len(),
                events = merged.len(),
                "a merged ingest failed; writing its requests one by one"
            );
            for (range, reply) in parts {
                let _ = reply.send(in_transaction(pool, directory, &merged[range], ()).await);
            }
        }
    }
}

/// Writes `batch` in a transaction of its own, dropping `turn` before the
/// commit (or the rollback), and applies what it changed in the directory
/// to this node's cache once it ends.
///
/// On SQLite the write carries its own `BEGIN IMMEDIATE` and `COMMIT` in
/// its first and last scripts (see [`script`](super::script)): a common
/// publish is two round trips to the connection's thread, not seven.
/// That connection is the store's one writer (SQLite has one lane, so
/// `turn` guards nothing there), and a write that fails is rolled back
/// here; one abandoned midway closes the connection instead of returning it
/// to the pool with its transaction open.
#[tracing::instrument(level = "debug", skip_all, fields(events = batch.len()))]
async fn in_transaction<T>(
    pool: &AnyPool,
    directory: &DirectoryCache,
    batch: &[NewEvent],
    turn: T,
) -> Result<Vec<Ingested>> {
    let mut conn = pool.acquire().await?;
    if backend_of(&conn) == Backend::Sqlite {
        let mut open = Open(Some(conn));
        let written = write(open.conn(), batch, directory.capacity() > 0).await;
        drop(turn);
        match written {
            Ok(written) => {
                open.settled();
                if let Some(version) = written.file_version {
                    directory.saw_file_version(version);
                }
                directory.invalidate(&written.change);
                Ok(written.outcomes)
            }
            Err(error) => {
                if sqlx::query("ROLLBACK").execute(open.conn()).await.is_ok() {
                    open.settled();
                }
                Err(error)
            }
        }
    } else {
        let mut tx = conn.begin().await?;
        let written = write(&mut tx, batch, false).await;
        drop(turn);
        let written = written?;
        let done = tx.commit().await;
        directory.invalidate(&written.change);
        done?;
        Ok(written.outcomes)
    }
}

/// A SQLite connection with a transaction of ingest's own open on it, until
/// [`Open::settled`]: dropped before that (the write abandoned, or its
/// rollback failed), the connection is closed, and the database rolls the
/// transaction back, instead of going back to the pool still in it.
struct Open(Option<PoolConnection<Any>>);

impl Open {
    fn conn(&mut self) -> &mut AnyConnection {
        self.0.as_mut().expect("the connection is held until drop")
    }

    /// The transaction ended (committed or rolled back): the connection
    /// goes back to the pool as usual.
    fn settled(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(conn) = self.0.as_mut() {
            conn.close_on_drop();
        }
    }
}
