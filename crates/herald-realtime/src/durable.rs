//! The realtime log in the database: what outlives Redis.
//!
//! With several nodes, room history lives in Redis and dies with it (as
//! Socket.IO's recovery and Centrifugo's history do with their stores). So
//! each node also writes what it published — offset, rooms, frame — to the
//! database, and records every epoch of the history with why it began:
//!
//! - `restart`: Redis restarted, empty or from a stale snapshot. Its
//!   history is gone, but every event published before is in the log, so a
//!   resume across it is served from the database up to the new epoch's
//!   start and from Redis after it — recovered, exactly.
//! - `resync`: a node delivered events while it could not reach Redis, or
//!   could not log what it published (the queue to the database overflowed
//!   or the database failed). Those events have no place in the offset
//!   order, so no resume crosses it: the client is told `recovered: false`.
//!
//! Events are logged after Redis gave them their offsets, off the publish
//! path (a writer task, batches). What is published in the instant before
//! a node dies may miss the log; it is in Redis, and only a Redis restart
//! in that same instant would leave a resume without it.
//!
//! The log keeps `history_max_age_seconds`, purged in small batches.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_store::Store;
use herald_store::realtime::{Epoch, LoggedEvent};
use tokio::sync::{mpsc, watch};

use crate::Error;
use crate::bus::{EpochInfo, RedisBus};
use crate::history::{Delivery, Stored, ms_offset};
use crate::hub::now_ms;
use crate::resume::Reason;

/// A resume served across epochs: the current epoch, the head, and the
/// missed events in offset order.
pub(crate) type Recovered = (String, u64, Vec<Arc<Delivery>>);

/// Batches waiting for the writer before the log gives up on completeness
/// (and owes a resync).
const QUEUE: usize = 1_024;
/// How often old entries are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct DurableLog {
    store: Store,
    queue: mpsc::Sender<Vec<LoggedEvent>>,
    /// The last epoch this node recorded.
    recorded: Mutex<Option<String>>,
    /// The log misses something this node published.
    holes: Arc<AtomicBool>,
    max_events: usize,
    max_age_ms: i64,
}

impl DurableLog {
    /// Starts the writer and the purge; they end when `stop` turns true.
    pub fn start(
        store: Store,
        max_events: usize,
        max_age_ms: i64,
        stop: watch::Receiver<bool>,
    ) -> Arc<DurableLog> {
        let (queue, batches) = mpsc::channel(QUEUE);
        let holes = Arc::new(AtomicBool::new(false));
        tokio::spawn(write(store.clone(), batches, holes.clone()));
        tokio::spawn(purge(store.clone(), max_age_ms, stop));
        Arc::new(DurableLog {
            store,
            queue,
            recorded: Mutex::new(None),
            holes,
            max_events,
            max_age_ms,
        })
    }

    /// Logs a published batch with the offsets Redis gave it.
    pub fn append(&self, batch: &[Stored], offsets: &[u64]) {
        let at = now_ms();
        let events: Vec<LoggedEvent> = batch
            .iter()
            .zip(offsets)
            .filter_map(|(stored, &offset)| {
                Some(LoggedEvent {
                    offset: i64::try_from(offset).ok()?,
                    frame: serde_json::to_string(stored).ok()?,
                    rooms: stored.rooms.clone(),
                    at,
                })
            })
            .collect();
        if self.queue.try_send(events).is_err() {
            tracing::warn!(
                "realtime log: the database is behind; the history will start a new epoch"
            );
            self.holes.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the log misses something: the hub starts a new epoch.
    pub fn owes_resync(&self) -> bool {
        self.holes.load(Ordering::SeqCst)
    }

    /// A new epoch began after the holes: they are behind it.
    fn resynced(&self) {
        self.holes.store(false, Ordering::SeqCst);
    }

    /// Records `info` if this node has not yet.
    pub async fn note_epoch(&self, info: &EpochInfo) {
        if self.recorded.lock().expect("epoch lock").as_deref() == Some(info.epoch.as_str()) {
            return;
        }
        if info.kind == "resync" {
            self.resynced();
        }
        let epoch = Epoch {
            epoch: info.epoch.clone(),
            start_offset: i64::try_from(info.start).unwrap_or(i64::MAX),
            kind: info.kind.clone(),
        };
        match self.store.record_epoch(&epoch, now_ms()).await {
            Ok(()) => *self.recorded.lock().expect("epoch lock") = Some(info.epoch.clone()),
            Err(e) => tracing::warn!(error = %e, "realtime log: could not record the epoch"),
        }
    }

    /// What a client at `old` epoch missed, per `(room, offset)`, when the
    /// epochs since then are all Redis restarts: from the log up to the
    /// current epoch's start, then from Redis. Otherwise why that cannot be
    /// vouched for: [`Reason::HistoryLost`] across a resynced epoch,
    /// [`Reason::EpochChanged`] for an unknown epoch, a gap too old or too
    /// long.
    pub async fn recover(
        &self,
        bus: &RedisBus,
        old: &str,
        from: &[(String, u64)],
    ) -> Result<Result<Recovered, Reason>, Error> {
        let db = |e: herald_store::Error| Error::Bus(format!("realtime log: {e}"));
        let (current, _) = bus.position_with_epoch().await?;
        self.note_epoch(&current).await;
        let Some(epochs) = self.store.epochs_since(old).await.map_err(db)? else {
            return Ok(Err(Reason::EpochChanged));
        };
        if epochs.iter().skip(1).any(|e| e.kind == "resync") {
            return Ok(Err(Reason::HistoryLost));
        }
        if !epochs.iter().any(|e| e.epoch == current.epoch) {
            return Ok(Err(Reason::EpochChanged));
        }
        let boundary = ms_offset(now_ms() - self.max_age_ms);
        let limit = u32::try_from(self.max_events).unwrap_or(u32::MAX);
        let through = i64::try_from(current.start).unwrap_or(i64::MAX);
        let mut missed = Vec::new();
        for (room, offset) in from {
            if *offset < boundary {
                return Ok(Err(Reason::EpochChanged));
            }
            let after = i64::try_from(*offset).unwrap_or(i64::MAX);
            let logged = self
                .store
                .realtime_replay(room, after, through, limit + 1)
                .await
                .map_err(db)?;
            if logged.len() > self.max_events {
                return Ok(Err(Reason::EpochChanged));
            }
            for (offset, frame) in logged {
                let stored: Stored =
                    serde_json::from_str(&frame).map_err(|e| Error::Bus(e.to_string()))?;
                missed.push(Arc::new(Delivery::new(offset as u64, stored)));
            }
        }
        // After the current epoch began, Redis holds it all.
        let since: Vec<(String, u64)> = from
            .iter()
            .map(|(room, offset)| (room.clone(), (*offset).max(current.start)))
            .collect();
        let snapshot = bus.snapshot(&since).await?;
        if snapshot.epoch != current.epoch {
            return Ok(Err(Reason::EpochChanged));
        }
        for (_, events) in snapshot.rooms {
            let Ok(events) = events else {
                return Ok(Err(Reason::EpochChanged));
            };
            missed.extend(events);
        }
        missed.sort_by_key(|d| d.offset);
        missed.dedup_by_key(|d| d.offset);
        Ok(Ok((current.epoch, snapshot.head, missed)))
    }
}

/// Writes queued batches, merging what waits into one transaction. A batch
/// that cannot be written after a few tries leaves a hole (see the module
/// docs).
async fn write(
    store: Store,
    mut batches: mpsc::Receiver<Vec<LoggedEvent>>,
    holes: Arc<AtomicBool>,
) {
    while let Some(mut events) = batches.recv().await {
        while events.len() < 4_096 {
            match batches.try_recv() {
                Ok(more) => events.extend(more),
                Err(_) => break,
            }
        }
        let mut tries = 0;
        loop {
            match store.append_realtime_log(&events).await {
                Ok(()) => break,
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(error = %e, "realtime log: write failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, events = events.len(), "realtime log: write failed; the history will start a new epoch");
                    holes.store(true, Ordering::SeqCst);
                    break;
                }
            }
        }
    }
}

async fn purge(store: Store, max_age_ms: i64, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = store.purge_realtime_log(now_ms() - max_age_ms).await {
            tracing::warn!(error = %e, "realtime log: purge failed; trying again later");
        }
    }
}
