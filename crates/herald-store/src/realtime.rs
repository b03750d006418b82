//! The realtime log: what sockets were sent, by offset and room, and the
//! epochs of the history those offsets belong to.
//!
//! Redis holds the same history for fast resumes; this copy is what a
//! resume falls back on when Redis lost it (a restart, empty or from a
//! stale snapshot). An offset is the realtime gateway's (`ms × 1000 + n`,
//! increasing across epochs); a frame is the gateway's stored event, kept
//! as text.

use sqlx::{AssertSqlSafe, Row};

use crate::events::{backend_of, values};
use crate::{Result, Store, placeholders};

/// One event as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub offset: i64,
    pub frame: String,
    pub rooms: Vec<String>,
    /// When it was published (epoch ms), for the purge.
    pub at: i64,
}

/// An epoch of the history and why it began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub epoch: String,
    pub start_offset: i64,
    /// `start`, `restart` or `resync` (see the migration).
    pub kind: String,
}

/// Most events one insert writes.
const ROWS: usize = 256;

impl Store {
    /// Adds events to the log; an offset already there is left as it is.
    #[tracing::instrument(level = "debug", skip_all, fields(events = events.len()))]
    pub async fn append_realtime_log(&self, events: &[LoggedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        let backend = backend_of(&tx);
        for chunk in events.chunks(ROWS) {
            let sql = format!(
                "INSERT INTO realtime_log (rt_offset, frame, at) VALUES {} \
                 ON CONFLICT (rt_offset) DO NOTHING",
                values(backend, chunk.len(), 3)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for e in chunk {
                query = query.bind(e.offset).bind(e.frame.as_str()).bind(e.at);
            }
            query.execute(&mut *tx).await?;
            let pairs: Vec<(&str, i64)> = chunk
                .iter()
                .flat_map(|e| e.rooms.iter().map(move |r| (r.as_str(), e.offset)))
                .collect();
            for pairs in pairs.chunks(ROWS) {
                let sql = format!(
                    "INSERT INTO realtime_log_rooms (room, rt_offset) VALUES {} \
                     ON CONFLICT (room, rt_offset) DO NOTHING",
                    values(backend, pairs.len(), 2)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (room, offset) in pairs {
                    query = query.bind(*room).bind(*offset);
                }
                query.execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// The events of `room` with `after < offset <= through`, in offset
    /// order, at most `limit`.
    pub async fn realtime_replay(
        &self,
        room: &str,
        after: i64,
        through: i64,
        limit: u32,
    ) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT l.rt_offset, l.frame FROM realtime_log_rooms r \
             JOIN realtime_log l ON l.rt_offset = r.rt_offset \
             WHERE r.room = $1 AND r.rt_offset > $2 AND r.rt_offset <= $3 \
             ORDER BY r.rt_offset LIMIT $4",
        )
        .bind(room)
        .bind(after)
        .bind(through)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("rt_offset")?, r.try_get("frame")?)))
            .collect()
    }

    /// Records an epoch once (the first node to see it writes it).
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(epoch = %epoch.epoch, kind = %epoch.kind)
    )]
    pub async fn record_epoch(&self, epoch: &Epoch, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO realtime_epochs (epoch, start_offset, kind, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (epoch) DO NOTHING",
        )
        .bind(epoch.epoch.as_str())
        .bind(epoch.start_offset)
        .bind(epoch.kind.as_str())
        .bind(at)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// `epoch` and every epoch that began after it, in order; `None` when
    /// `epoch` was never recorded.
    pub async fn epochs_since(&self, epoch: &str) -> Result<Option<Vec<Epoch>>> {
        let Some(first) = sqlx::query("SELECT start_offset FROM realtime_epochs WHERE epoch = $1")
            .bind(epoch)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let start: i64 = first.try_get("start_offset")?;
        let rows = sqlx::query(
            "SELECT epoch, start_offset, kind FROM realtime_epochs \
             WHERE start_offset >= $1 ORDER BY start_offset, epoch",
        )
        .bind(start)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Epoch {
                    epoch: r.try_get("epoch")?,
                    start_offset: r.try_get("start_offset")?,
                    kind: r.try_get("kind")?,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Forgets logged events published before `before` (epoch ms), a batch
    /// at a time so ingest is never held up; how many went.
    #[tracing::instrument(level = "debug", skip_all, fields(before = before))]
    pub async fn purge_realtime_log(&self, before: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let offsets: Vec<i64> = sqlx::query(
                "SELECT rt_offset FROM realtime_log WHERE at < $1 ORDER BY at LIMIT 500",
            )
            .bind(before)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| r.try_get("rt_offset"))
            .collect::<std::result::Result<_, _>>()?;
            if offsets.is_empty() {
                return Ok(total);
            }
            let list = placeholders(1, offsets.len());
            let mut tx = self.write.begin().await?;
            for table in ["realtime_log_rooms", "realtime_log"] {
                let sql = format!("DELETE FROM {table} WHERE rt_offset IN ({list})");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for o in &offsets {
                    query = query.bind(*o);
                }
                query.execute(&mut *tx).await?;
            }
            tx.commit().await?;
            total += offsets.len() as u64;
        }
    }
}
