//! Ingest: the one transaction that makes an event durable.
//!
//! Group commit: every commit waits for a disk flush, and one HTTP request
//! often carries one event, so [`Store::ingest`] does not commit each batch
//! on its own. Batches queue for a few writer lanes (`writer`), which merge
//! what is waiting into one batch, one transaction and one commit, and
//! answer each caller with its own outcomes. If the merged transaction
//! fails (say one batch reuses an event id with another payload), it rolls
//! back and its batches are written again one by one, each in its own
//! transaction: every caller gets exactly the answer it would get alone,
//! and a conflict fails only the batch that carries it.
//!
//! A batch is all or nothing. Each table is written with a few multi-row
//! statements, not one statement per row: every statement is a round trip,
//! and at thousands of events a second the round trips cost more than the
//! writing. On SQLite the statements that do not wait for each other's
//! rows travel together, as one `script`: a common publish is two round
//! trips to the connection's thread, `BEGIN` and `COMMIT` included.
//! Statements are cut by rows so that their bind parameters stay
//! under SQLite's limit (32,766; PostgreSQL's is 65,535), and come in a few
//! shapes (a power of two of rows, padded with NULL rows that are filtered
//! out) so that every batch size finds its statement prepared already.
//!
//! Events go in with `ON CONFLICT (id) DO NOTHING RETURNING id`. An id that
//! does not come back was published before: the event is a duplicate (same
//! payload hash: nothing more is written for it) or a conflict (different
//! hash: the whole batch rolls back). Of events sharing an id within one
//! batch, the first is written and the later ones are its duplicates or
//! conflicts. Concurrent publishes of one id serialise on the primary key,
//! so exactly one of them writes inbox entries.
//!
//! Lock order: events are inserted in id order, then inbox counters are
//! bumped in user-id order (one upsert row per recipient, taking as many
//! sequence numbers as the batch has entries for them, handed out in batch
//! order). Two transactions touching the same ids or users take their locks
//! in the same order, so they wait for each other instead of deadlocking.
//! The counters are bumped beside the events, before it is known which
//! events are new; an event seen before gives its numbers back in the same
//! transaction, so inbox sequences have no gaps.

use std::collections::{BTreeMap, HashMap, HashSet};

use herald_core::{EventId, EventKind, UserId};

use crate::directory::cache::{Change as DirectoryChange, announce};
use crate::directory::fill_email_in;
use sqlx::{AnyConnection, AssertSqlSafe, Column as _, Row};
use tokio::sync::oneshot;

use crate::records::{DeliveryStatus, EmailFill, EventRecord, Ingested, NewEvent, NewNotification};
use crate::{Backend, Error, Result, Store};

mod script;
pub(crate) mod writer;

use script::{Binds, Script};
use writer::Request;

/// The most bind parameters in one statement: SQLite's limit (PostgreSQL's
/// is 65,535).
const MAX_BINDS: usize = 32_766;
/// The most rows one statement writes, whatever its width: keeps statements
/// (and what a database parses and plans at once) a reasonable size.
const MAX_ROWS: usize = 1_024;

impl Store {
    /// Writes a batch of events with their inbox entries and deliveries, in
    /// one transaction, which batches written at the same time may share
    /// (see the module docs). Returns one outcome per event, in batch order,
    /// or the error this batch alone would meet.
    ///
    /// Once queued, the batch is written even if this future is dropped.
    #[tracing::instrument(level = "debug", skip_all, fields(events = batch.len()))]
    pub async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<Ingested>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            batch: batch.to_vec(),
            reply,
        };
        self.ingest
            .send(request)
            .await
            .map_err(|_| Error::WriterStopped)?;
        answer.await.map_err(|_| Error::WriterStopped)?
    }
}

/// What [`write`] wrote.
pub(crate) struct Written {
    /// One per event, in batch order.
    pub(crate) outcomes: Vec<Ingested>,
    /// What changed in the directory (announced in the transaction; the
    /// caller applies it to this node's cache once the transaction ends).
    pub(crate) change: DirectoryChange,
    /// SQLite's `PRAGMA data_version` at the transaction's start, when
    /// [`write`] was asked for it.
    pub(crate) file_version: Option<i64>,
}

/// Writes `batch` on `conn`: all of it, or an error after which the
/// caller rolls back. On SQLite the write is its own transaction,
/// `BEGIN IMMEDIATE` riding in its first script and `COMMIT` in its last
/// (two round trips fewer), and `file_version` reads `PRAGMA data_version`
/// in the first; on PostgreSQL the caller's transaction holds it. A
/// common publish costs two scripts (see
/// [`script`]): the events with their recipients' sequence numbers, then
/// everything those number; two more where an id was seen before (its
/// stored record, and its numbers given back), one per address filled in.
async fn write(
    conn: &mut AnyConnection,
    batch: &[NewEvent],
    file_version: bool,
) -> Result<Written> {
    let backend = backend_of(conn);
    let own = backend == Backend::Sqlite;
    let ask_file_version = own && file_version;
    let ids: Vec<String> = batch.iter().map(|ev| ev.id.to_string()).collect();
    // Events are written in id order, so concurrent batches sharing ids
    // wait on each other instead of deadlocking. The sort is stable: of the
    // events sharing an id, the first in the batch is the one written.
    let mut order: Vec<usize> = (0..batch.len()).collect();
    order.sort_by_key(|&i| batch[i].id);
    let mut firsts = order.clone();
    firsts.dedup_by_key(|i| batch[*i].id);

    let mut script = Script::new(backend);
    if own {
        script.statement("BEGIN IMMEDIATE");
    }
    if ask_file_version {
        script.statement("PRAGMA data_version");
    }
    insert_events(&mut script, batch, &ids, &firsts);
    // Every event is taken to be new (one seen before is the exception):
    // its recipients' sequence numbers are taken in the same script.
    let taken = counts(firsts.iter().map(|&i| &batch[i]));
    bump_counters(&mut script, &taken);
    let mut file_version = None;
    let mut inserted = HashSet::with_capacity(firsts.len());
    let mut last = HashMap::with_capacity(taken.len());
    for row in script.fetch(conn).await? {
        match row.column(0).name() {
            "data_version" => file_version = Some(row.try_get::<i64, _>(0)?),
            "id" => {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
            _ => {
                last.insert(
                    row.try_get::<String, _>("user_id")?,
                    row.try_get::<i64, _>("last_seq")?,
                );
            }
        }
    }
    if last.len() != taken.len() || file_version.is_none() && ask_file_version {
        return Err(Error::Corrupt("an ingest statement returned no row".into()));
    }
    let seen: Vec<&str> = firsts
        .iter()
        .map(|&i| ids[i].as_str())
        .filter(|id| !inserted.contains(*id))
        .collect();
    let stored = existing(conn, backend, &seen).await?;

    // Each event is new, a duplicate (of an earlier event or of the first
    // with its id in this batch: same hash) or a conflict (different hash).
    // The first conflict in id order fails the batch.
    let mut outcomes: Vec<Option<Ingested>> = vec![None; batch.len()];
    let mut fresh = Vec::new();
    let mut first: Option<usize> = None;
    for &i in &order {
        let ev = &batch[i];
        let leader = match first {
            Some(f) if batch[f].id == ev.id => f,
            _ => {
                first = Some(i);
                i
            }
        };
        let outcome = if inserted.contains(&ids[i]) {
            let record = record(&batch[leader]);
            if leader == i {
                fresh.push(i);
                Ingested::Accepted(record)
            } else if batch[leader].hash == ev.hash {
                Ingested::Duplicate(record)
            } else {
                return Err(conflict(i, &ids[i]));
            }
        } else {
            let (record, hash) = stored
                .get(&ids[i])
                .ok_or(Error::Database(sqlx::Error::RowNotFound))?;
            if *hash != ev.hash {
                return Err(conflict(i, &ids[i]));
            }
            Ingested::Duplicate(record.clone())
        };
        outcomes[i] = Some(outcome);
    }

    // The numbers taken for events seen before go back, from the top of
    // each recipient's block (nothing else took any since: the counter's
    // row is locked until this transaction ends).
    let given_back = counts(
        firsts
            .iter()
            .filter(|&&i| !inserted.contains(&ids[i]))
            .map(|&i| &batch[i]),
    );
    if !given_back.is_empty() {
        let mut script = Script::new(backend);
        for &(user, count) in &given_back {
            let sql = format!(
                "UPDATE inbox_counters SET last_seq = last_seq - {} WHERE user_id = {}",
                params(backend, 1, 1),
                params(backend, 2, 1)
            );
            script.statement(&sql).bind(count).bind(user.as_str());
            *last
                .get_mut(user.as_str())
                .expect("every recipient's counter came back") -= count;
        }
        script.fetch(conn).await?;
    }

    // Sequence numbers: a block per recipient, in user order; within a
    // recipient, in batch order.
    fresh.sort_unstable();
    let mut per_user: BTreeMap<&UserId, Vec<(usize, &NewNotification)>> = BTreeMap::new();
    for &i in &fresh {
        for n in &batch[i].notifications {
            per_user.entry(&n.recipient).or_default().push((i, n));
        }
    }
    let mut entries = Vec::new();
    for (user, notifications) in &per_user {
        let count = notifications.len() as i64;
        let first_seq = last[user.as_str()] - count + 1;
        for (k, &(i, n)) in notifications.iter().enumerate() {
            entries.push((&batch[i], &ids[i], n, first_seq + k as i64));
        }
    }
    let change = fill_emails(conn, batch).await?;

    let mut script = Script::new(backend);
    insert_notifications(&mut script, &entries);
    insert_deliveries(&mut script, &entries);
    let scheduled: Vec<&NewEvent> = fresh
        .iter()
        .map(|&i| &batch[i])
        .filter(|ev| ev.schedule.is_some())
        .collect();
    insert_schedules(&mut script, &scheduled);
    if own {
        script.statement("COMMIT");
    }
    if !script.is_empty() {
        script.fetch(conn).await?;
    }
    let outcomes = outcomes
        .into_iter()
        .map(|o| o.expect("every event has an outcome"))
        .collect();
    Ok(Written {
        outcomes,
        change,
        file_version,
    })
}

/// The addresses events named for users who have none on file
/// ([`NewEvent::fill_email`]), written in user order (after the counters,
/// so the lock order holds), for duplicates as well: a publish whose event
/// was seen before still fills in an address missing since. Returns the
/// users whose contact changed, announced to other nodes.
async fn fill_emails(conn: &mut AnyConnection, batch: &[NewEvent]) -> Result<DirectoryChange> {
    let mut fills: Vec<&EmailFill> = batch
        .iter()
        .filter_map(|ev| ev.fill_email.as_ref())
        .collect();
    // Stable: of two addresses for one user, the first in the batch wins.
    fills.sort_by(|a, b| a.user.cmp(&b.user));
    let mut change = DirectoryChange::default();
    let now = crate::now_ms();
    for fill in fills {
        if change.users.last() == Some(&fill.user) {
            continue;
        }
        if fill_email_in(conn, &fill.user, &fill.email, now).await? {
            change.users.push(fill.user.clone());
        }
    }
    announce(conn, &change).await?;
    Ok(change)
}

/// The database a connection speaks to.
pub(crate) fn backend_of(conn: &AnyConnection) -> Backend {
    if conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
        Backend::Sqlite
    } else {
        Backend::Postgres
    }
}

fn record(ev: &NewEvent) -> EventRecord {
    EventRecord {
        id: ev.id,
        event: ev.kind,
        received_at: ev.received_at,
    }
}

fn conflict(index: usize, event_id: &str) -> Error {
    Error::IdempotencyConflict {
        index,
        event_id: event_id.to_owned(),
    }
}

/// What a column holds, so that the NULLs padding a statement to its shape
/// are typed as its values are.
#[derive(Debug, Clone, Copy)]
enum Column {
    Text,
    Int,
}

/// A table as ingest writes it: `INSERT INTO …` with the columns bound per
/// row, all `NOT NULL` in the first.
#[derive(Debug)]
struct Table {
    insert: &'static str,
    columns: &'static [Column],
}

const EVENTS: Table = Table {
    insert: "INSERT INTO events \
             (id, idempotency_key, kind, payload, payload_hash, received_at, traceparent)",
    columns: &[
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Int,
        Column::Text,
    ],
};

const COUNTERS: Table = Table {
    insert: "INSERT INTO inbox_counters (user_id, last_seq)",
    columns: &[Column::Text, Column::Int],
};

const NOTIFICATIONS: Table = Table {
    insert: "INSERT INTO notifications \
             (id, recipient_id, seq, event_id, kind, category, title, body, in_inbox, created_at)",
    columns: &[
        Column::Text,
        Column::Text,
        Column::Int,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Int,
        Column::Int,
    ],
};

const DELIVERIES: Table = Table {
    insert: "INSERT INTO deliveries \
             (id, notification_id, recipient_id, channel, status, reason, next_attempt_at, \
              enqueued_at, created_at, updated_at, digest_key, digest_at, seen_check)",
    columns: &[
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Int,
        Column::Int,
        Column::Int,
        Column::Int,
        Column::Text,
        Column::Int,
        Column::Text,
    ],
};

impl Table {
    /// The most rows one statement writes: a power of two, within
    /// [`MAX_ROWS`] and [`MAX_BINDS`].
    fn rows_per_statement(&self) -> usize {
        let most = (MAX_BINDS / self.columns.len()).min(MAX_ROWS);
        1 << most.ilog2()
    }

    /// Adds to `script` a statement for `rows` rows, followed by `tail`
    /// (`ON CONFLICT …`), with the binds of `bind` and the NULL rows that
    /// pad it to its shape.
    ///
    /// A statement is prepared for a power of two of rows, the rows it does
    /// not need padded with NULLs and filtered out (`WHERE column1 IS NOT
    /// NULL`): a handful of shapes per table then serve every batch size and
    /// stay in each connection's statement cache, where a statement per row
    /// count would be parsed and planned anew (on PostgreSQL, a round trip
    /// more) nearly every time.
    fn push(
        &self,
        script: &mut Script,
        rows: usize,
        tail: &str,
        bind: impl FnOnce(&mut Binds<'_>),
    ) {
        let shape = rows.next_power_of_two();
        let sql = format!(
            "{} SELECT * FROM (VALUES {}) AS v WHERE column1 IS NOT NULL {tail}",
            self.insert,
            values(script.backend(), shape, self.columns.len())
        );
        let mut binds = script.statement(&sql);
        bind(&mut binds);
        for _ in rows..shape {
            for column in self.columns {
                match column {
                    Column::Text => binds.bind(None::<&str>),
                    Column::Int => binds.bind(None::<i64>),
                };
            }
        }
    }
}

/// `rows` tuples of `columns` parameters: `($1, $2), ($3, $4), …` on
/// PostgreSQL, `(?, ?), (?, ?), …` on SQLite. SQLite finds a numbered
/// parameter by scanning the statement's list of names, which makes binding
/// thousands of them quadratic; anonymous ones are bound by position.
pub(crate) fn values(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * (columns * 7 + 4));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&params(backend, r * columns + 1, columns));
        sql.push(')');
    }
    sql
}

/// `n` parameters numbered from `from`, comma-separated (see [`values`]).
pub(crate) fn params(backend: Backend, from: usize, n: usize) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(n * 7);
    for i in from..from + n {
        if i > from {
            sql.push_str(", ");
        }
        match backend {
            Backend::Postgres => write!(sql, "${i}").expect("writing to a String"),
            Backend::Sqlite => sql.push('?'),
        }
    }
    sql
}

/// Inserts the events at `firsts` (distinct ids, in id order); each that
/// was new comes back as a row with its `id`.
fn insert_events(script: &mut Script, batch: &[NewEvent], ids: &[String], firsts: &[usize]) {
    for chunk in firsts.chunks(EVENTS.rows_per_statement()) {
        let tail = "ON CONFLICT (id) DO NOTHING RETURNING id";
        EVENTS.push(script, chunk.len(), tail, |binds| {
            for &i in chunk {
                let ev = &batch[i];
                binds
                    .bind(ids[i].as_str())
                    .bind(ev.key.as_deref())
                    .bind(ev.kind.as_str())
                    .bind(ev.payload.as_str())
                    .bind(ev.hash.as_str())
                    .bind(ev.received_at)
                    .bind(ev.traceparent.as_deref());
            }
        });
    }
}

/// An event as [`existing`] reads it back.
#[derive(Debug, sqlx::FromRow)]
struct StoredEvent {
    id: String,
    kind: String,
    payload_hash: String,
    received_at: i64,
}

/// The stored record and payload hash of each of `ids`.
async fn existing(
    conn: &mut AnyConnection,
    backend: Backend,
    ids: &[&str],
) -> Result<HashMap<String, (EventRecord, String)>> {
    let mut stored = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(MAX_ROWS) {
        // Padded with NULLs to a power of two, as statements are.
        let shape = chunk.len().next_power_of_two();
        let sql = format!(
            "SELECT id, kind, payload_hash, received_at FROM events WHERE id IN ({})",
            params(backend, 1, shape)
        );
        let mut query = sqlx::query_as::<_, StoredEvent>(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        for _ in chunk.len()..shape {
            query = query.bind(None::<&str>);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let record = EventRecord {
                id: row
                    .id
                    .parse::<EventId>()
                    .map_err(|_| Error::Corrupt(format!("event id `{}`", row.id)))?,
                event: kind(&row.kind)?,
                received_at: row.received_at,
            };
            stored.insert(row.id, (record, row.payload_hash));
        }
    }
    Ok(stored)
}

/// How many inbox entries `events` hold for each recipient, in user order.
fn counts<'a>(events: impl Iterator<Item = &'a NewEvent>) -> Vec<(&'a UserId, i64)> {
    let mut counts: BTreeMap<&UserId, i64> = BTreeMap::new();
    for ev in events {
        for n in &ev.notifications {
            *counts.entry(&n.recipient).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// Takes `count` sequence numbers for each user of `taken` (in user
/// order); each user's last number comes back as a row (`user_id`,
/// `last_seq`).
fn bump_counters(script: &mut Script, taken: &[(&UserId, i64)]) {
    for chunk in taken.chunks(COUNTERS.rows_per_statement()) {
        let tail = "ON CONFLICT (user_id) \
                    DO UPDATE SET last_seq = inbox_counters.last_seq + excluded.last_seq \
                    RETURNING user_id, last_seq";
        COUNTERS.push(script, chunk.len(), tail, |binds| {
            for (user, count) in chunk {
                binds.bind(user.as_str()).bind(*count);
            }
        });
    }
}

/// An inbox entry to write: its event, the event's id, the entry, its seq.
type Entry<'a> = (&'a NewEvent, &'a String, &'a NewNotification, i64);

fn insert_notifications(script: &mut Script, entries: &[Entry<'_>]) {
    for chunk in entries.chunks(NOTIFICATIONS.rows_per_statement()) {
        NOTIFICATIONS.push(script, chunk.len(), "", |binds| {
            for &(ev, event_id, n, seq) in chunk {
                binds
                    .bind(n.id.to_string())
                    .bind(n.recipient.as_str())
                    .bind(seq)
                    .bind(event_id.as_str())
                    .bind(ev.kind.as_str())
                    .bind(ev.kind.category())
                    .bind(n.title.as_str())
                    .bind(n.body.as_str())
                    // A scheduled event's entries wait for its release.
                    .bind(match (n.in_inbox, &ev.schedule) {
                        (false, _) => IN_INBOX_NO,
                        (true, None) => IN_INBOX_YES,
                        (true, Some(_)) => IN_INBOX_SCHEDULED,
                    })
                    // A scheduled entry is as old as its `sendAt`: the
                    // retention of unread entries counts from there.
                    .bind(due_from(ev));
            }
        });
    }
}

fn insert_deliveries(script: &mut Script, entries: &[Entry<'_>]) {
    let deliveries: Vec<_> = entries
        .iter()
        .flat_map(|&(ev, _, n, _)| n.deliveries.iter().map(move |d| (ev, n, d)))
        .collect();
    for chunk in deliveries.chunks(DELIVERIES.rows_per_statement()) {
        DELIVERIES.push(script, chunk.len(), "", |binds| {
            for &(ev, n, d) in chunk {
                binds
                    .bind(d.id.to_string())
                    .bind(n.id.to_string())
                    .bind(n.recipient.as_str())
                    .bind(d.channel.as_str())
                    .bind(d.status.as_str())
                    .bind(d.reason.as_str())
                    // An open delivery is due from the moment it exists,
                    // or from its event's `sendAt`.
                    .bind(match d.status {
                        DeliveryStatus::Pending => Some(due_from(ev)),
                        _ => d.next_attempt_at,
                    })
                    // The publisher enqueues a job for each open delivery
                    // once this commits, due now (or at `sendAt`) or when
                    // the deferral ends.
                    .bind(match d.status {
                        DeliveryStatus::Pending => Some(due_from(ev)),
                        DeliveryStatus::Deferred => d.next_attempt_at,
                        DeliveryStatus::Suppressed => None,
                    })
                    .bind(ev.received_at)
                    .bind(ev.received_at)
                    .bind(d.digest_key.as_deref())
                    // A digest goes out when the deferral ends.
                    .bind(d.digest_key.as_ref().and(d.next_attempt_at))
                    .bind(d.seen_check.as_deref());
            }
        });
    }
}

/// When an event's pending deliveries fall due: at once, or at `sendAt`.
fn due_from(ev: &NewEvent) -> i64 {
    ev.schedule.as_ref().map_or(ev.received_at, |s| s.at)
}

/// `notifications.in_inbox`: the user opted out of the inbox (the entry
/// exists for its deliveries), it is in the inbox, or it will be once its
/// scheduled event is released.
pub(crate) const IN_INBOX_NO: i64 = 0;
pub(crate) const IN_INBOX_YES: i64 = 1;
pub(crate) const IN_INBOX_SCHEDULED: i64 = 2;

const RELEASES: Table = Table {
    insert: "INSERT INTO event_releases (event_id, due_at, rooms, lease_until, created_at)",
    columns: &[
        Column::Text,
        Column::Int,
        Column::Text,
        Column::Int,
        Column::Int,
    ],
};

const TRACE: Table = Table {
    insert: "INSERT INTO delivery_trace \
             (delivery_id, at, attempt, n, step, provider, outcome, detail, actor)",
    columns: &[
        Column::Text,
        Column::Int,
        Column::Int,
        Column::Int,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
        Column::Text,
    ],
};

/// What scheduled events owe besides their rows: a release (their inbox
/// entries and realtime fan-out wait for it), and a `scheduled` line in
/// the trace of each open delivery, saying until when it waits.
fn insert_schedules(script: &mut Script, events: &[&NewEvent]) {
    let releases: Vec<(&NewEvent, &crate::records::Schedule)> = events
        .iter()
        .filter_map(|ev| ev.schedule.as_ref().map(|s| (*ev, s)))
        .collect();
    for chunk in releases.chunks(RELEASES.rows_per_statement()) {
        RELEASES.push(script, chunk.len(), "", |binds| {
            for &(ev, schedule) in chunk {
                binds
                    .bind(ev.id.to_string())
                    .bind(schedule.at)
                    .bind(serde_json::to_string(&schedule.rooms).expect("rooms serialise"))
                    .bind(None::<i64>)
                    .bind(ev.received_at);
            }
        });
    }
    let open: Vec<(&NewEvent, &crate::records::NewDelivery, String)> = releases
        .iter()
        .flat_map(|&(ev, schedule)| {
            let due = chrono::DateTime::from_timestamp_millis(schedule.at)
                .map_or_else(|| schedule.at.to_string(), |t| t.to_rfc3339());
            ev.notifications
                .iter()
                .flat_map(|n| &n.deliveries)
                .filter(|d| d.status != DeliveryStatus::Suppressed)
                .map(move |d| (ev, d, format!("sendAt {due}")))
        })
        .collect();
    for chunk in open.chunks(TRACE.rows_per_statement()) {
        TRACE.push(script, chunk.len(), "", |binds| {
            for (ev, d, detail) in chunk {
                binds
                    .bind(d.id.to_string())
                    .bind(ev.received_at)
                    .bind(0_i64)
                    .bind(0_i64)
                    .bind("scheduled")
                    .bind(None::<&str>)
                    .bind(d.status.as_str())
                    .bind(detail.as_str())
                    .bind(None::<&str>);
            }
        });
    }
}

pub(crate) fn kind(name: &str) -> Result<EventKind> {
    EventKind::parse(name).ok_or_else(|| Error::Corrupt(format!("unknown event kind `{name}`")))
}

#[cfg(test)]
mod tests;
