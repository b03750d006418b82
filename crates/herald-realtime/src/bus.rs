//! The cross-node bus: room streams and fan-out in Redis, so N Herald
//! nodes share rooms and room history.
//!
//! Keys (under `redis_prefix`, `P` below):
//!
//! | key | what |
//! |---|---|
//! | `P:clock` | the last offset issued (see `history` for the offset clock) |
//! | `P:epoch` | the history's identity; a new one after Redis lost its data |
//! | `P:all` | every event, in offset order: what every node's reader follows |
//! | `P:room:{room}` | a room's history, stream ids `{offset}-0`, at most `history_max_events`, expiring `history_max_age` after its last event |
//! | `P:meta:{room}` | the room's horizon `h` (highest offset no longer held) |
//! | `P:ev:{eventId}` | an event's offset, for resuming by `lastEventId` |
//!
//! Publishing is one Lua script per batch, so issuing offsets, appending to
//! the rooms and to `P:all` happen atomically and in one order on every
//! node. Each node reads `P:all` with a blocking `XREAD` from the last id
//! it dispatched — rather than pub/sub, so a reader that reconnects
//! continues where it stopped instead of losing what was sent meanwhile.
//! If the stream was trimmed past that point while the node was cut off,
//! its sockets are asked to reconnect and resume (from history, which is
//! exact). A resume's snapshot is one script too: the head and every
//! room's events after the client's offset, at one instant.
//!
//! The bus is healthy while its reader is reading and Redis answers a
//! `PING`; `/readyz` reports it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use herald_core::retry::Backoff;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Client, Script, Value};

use crate::history::{Delivery, Snapshot, Stored, lost, ms_offset, recoverable};
use crate::hub::Hub;
use crate::protocol::CloseReason;
use crate::{Error, RealtimeConfig};

/// Opens every script: the epoch vouches for the history only while Redis
/// runs as the process that wrote it. A Redis that restarted — empty, or
/// from a snapshot missing whatever came after it — has another `run_id`,
/// and the first script to notice starts a new epoch (`fresh`, made anew
/// for each call, so a restarted Redis never gets an old epoch back).
const VOUCH: &str = r"
local function vouch(p, fresh)
  local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  if redis.call('GET', p .. 'run') ~= run or redis.call('EXISTS', p .. 'epoch') == 0 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local clock = tonumber(redis.call('GET', p .. 'clock') or '0')
    local start = string.format('%.0f', math.max(clock, now * 1000 - 1))
    redis.call('SET', p .. 'run', run)
    redis.call('SET', p .. 'epoch', fresh)
    redis.call('SET', p .. 'clock', start)
    redis.call('SET', p .. 'epoch_start', start)
    redis.call('SET', p .. 'epoch_kind', 'restart')
  end
end
local function epoch(p)
  return {redis.call('GET', p .. 'epoch'), redis.call('GET', p .. 'epoch_start') or '0',
          redis.call('GET', p .. 'epoch_kind') or 'restart'}
end
";

fn script(body: &str) -> Script {
    Script::new(&format!("{VOUCH}{body}"))
}

/// Issues offsets and appends a batch. ARGV: prefix, maxlen, max age (ms),
/// a fresh epoch (used if the history cannot vouch), the cap of `P:all`,
/// then per event: frame, event id, room count, rooms…  Returns the epoch
/// (see [`EpochInfo`]) and the offsets.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
local maxlen = tonumber(ARGV[2])
local age = tonumber(ARGV[3])
vouch(p, ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', p .. 'clock') or '0')
local boundary = (now - age) * 1000
local function s(n) return string.format('%.0f', n) end
local out = {}
local i = 6
while i <= #ARGV do
  local frame = ARGV[i]
  local eid = ARGV[i + 1]
  local n = tonumber(ARGV[i + 2])
  i = i + 3
  local offset = math.max(last + 1, now * 1000)
  last = offset
  local id = s(offset) .. '-0'
  for r = 0, n - 1 do
    local room = ARGV[i + r]
    local key = p .. 'room:' .. room
    local meta = p .. 'meta:' .. room
    if redis.call('EXISTS', key) == 0 then
      redis.call('HSET', meta, 'h', s(math.max(boundary - 1, 0)))
    end
    local len = redis.call('XLEN', key)
    if len >= maxlen then
      local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - maxlen + 1)
      local dropped = tonumber(string.match(old[#old][1], '^(%d+)'))
      local h = tonumber(redis.call('HGET', meta, 'h') or '0')
      if dropped > h then redis.call('HSET', meta, 'h', s(dropped)) end
    end
    redis.call('XADD', key, 'MAXLEN', maxlen, id, 'e', frame)
    redis.call('PEXPIRE', key, age)
    redis.call('PEXPIRE', meta, age)
  end
  i = i + n
  redis.call('SET', p .. 'ev:' .. eid, s(offset), 'PX', age)
  redis.call('XADD', p .. 'all', 'MAXLEN', '~', ARGV[5], id, 'e', frame)
  redis.call('PEXPIRE', p .. 'all', age)
  out[#out + 1] = s(offset)
end
redis.call('SET', p .. 'clock', s(last))
return {epoch(p), out}
",
    )
});

/// The epoch and the head: the clock moved up to Redis's `now`, so every
/// later offset is above it. ARGV: prefix, a fresh epoch.
static POSITION: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
vouch(p, ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = tonumber(redis.call('GET', p .. 'clock') or '0')
local head = math.max(clock, now * 1000 - 1)
redis.call('SET', p .. 'clock', string.format('%.0f', head))
return {epoch(p), string.format('%.0f', head)}
",
    )
});

/// A resume's view at one instant. ARGV: prefix, a fresh epoch, max age
/// (ms), per-room limit, then room/offset pairs. Returns epoch, head, now
/// (ms), and per room {horizon or '', its entries after the offset as
/// `XRANGE` answers them}.
static SNAPSHOT: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
vouch(p, ARGV[2])
local limit = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = tonumber(redis.call('GET', p .. 'clock') or '0')
local head = math.max(clock, now * 1000 - 1)
redis.call('SET', p .. 'clock', string.format('%.0f', head))
local rooms = {}
for i = 5, #ARGV, 2 do
  local key = p .. 'room:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    local horizon = redis.call('HGET', p .. 'meta:' .. ARGV[i], 'h') or '0'
    local entries = redis.call('XRANGE', key, '(' .. ARGV[i + 1] .. '-0', '+', 'COUNT', limit)
    rooms[#rooms + 1] = {horizon, entries}
  else
    rooms[#rooms + 1] = {'', {}}
  end
end
return {redis.call('GET', p .. 'epoch'), string.format('%.0f', head), tostring(now), rooms}
",
    )
});

/// Starts a new epoch and tells every node, through the shared stream, to
/// ask its sockets to resume: this node delivered events while it could not
/// reach Redis, so the history cannot vouch for them. ARGV: prefix, a fresh
/// epoch, the cap of `P:all`, max age (ms). Returns the new epoch.
static RESYNC: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local p = ARGV[1]
vouch(p, ARGV[2])
redis.call('SET', p .. 'epoch', ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', p .. 'clock') or '0')
local offset = math.max(last + 1, now * 1000)
local id = string.format('%.0f', offset)
redis.call('XADD', p .. 'all', 'MAXLEN', '~', ARGV[3], id .. '-0', 'resync', ARGV[2])
redis.call('PEXPIRE', p .. 'all', ARGV[4])
redis.call('SET', p .. 'clock', id)
redis.call('SET', p .. 'epoch_start', id)
redis.call('SET', p .. 'epoch_kind', 'resync')
return epoch(p)
",
    )
});

/// The history's epoch, the offset it began after, and why it began
/// (`restart` or `resync`, as the `realtime_epochs` table records them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochInfo {
    pub epoch: String,
    pub start: u64,
    pub kind: String,
}

impl redis::FromRedisValue for EpochInfo {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let (epoch, start, kind): (String, String, String) =
            redis::FromRedisValue::from_redis_value(v)?;
        let start = start
            .parse()
            .map_err(|_| format!("epoch_start `{start}` is not a number"))?;
        Ok(EpochInfo { epoch, start, kind })
    }
}

/// A fresh epoch: used only if the history cannot vouch for the current one.
fn fresh_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Redis connections and the reader's health.
#[derive(Debug)]
pub(crate) struct RedisBus {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    max_events: usize,
    max_age_ms: u64,
    reading: Arc<AtomicBool>,
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(bus_error)`
fn bus_error(e: redis::RedisError) -> Error {
    Error::Bus(e.to_string())
}

/// `1732600000123004-0` → 1732600000123004.
fn id_offset(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl RedisBus {
    pub async fn connect(config: &RealtimeConfig) -> Result<RedisBus, Error> {
        let client = Client::open(config.redis_url.as_str()).map_err(|e| Error::Config {
            key: "redis_url".into(),
            message: e.to_string(),
        })?;
        let timeout = Some(Duration::from_secs(3));
        let conn = client
            .get_connection_manager_with_config(
                ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2)),
            )
            .await
            .map_err(|e| Error::Bus(format!("cannot reach Redis: {e}")))?;
        Ok(RedisBus {
            client,
            conn,
            prefix: format!("{}:", config.redis_prefix.trim_end_matches(':')),
            max_events: config.history_max_events,
            max_age_ms: config.history_max_age_seconds * 1000,
            reading: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Appends a batch to its rooms and to the shared stream. Every node's
    /// reader (this one's included) dispatches it.
    pub async fn publish(&self, batch: &[Stored]) -> Result<(EpochInfo, Vec<u64>), Error> {
        let mut invocation = PUBLISH.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(self.max_events)
            .arg(self.max_age_ms)
            .arg(fresh_epoch())
            .arg(self.all_cap());
        for event in batch {
            let frame = serde_json::to_string(event).map_err(|e| Error::Bus(e.to_string()))?;
            invocation
                .arg(frame)
                .arg(&event.event_id)
                .arg(event.rooms.len());
            for room in &event.rooms {
                invocation.arg(room);
            }
        }
        let mut conn = self.conn.clone();
        let (epoch, offsets): (EpochInfo, Vec<String>) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(bus_error)?;
        let offsets = offsets
            .iter()
            .map(|o| {
                o.parse()
                    .map_err(|_| Error::Bus(format!("bad offset `{o}`")))
            })
            .collect::<Result<_, _>>()?;
        Ok((epoch, offsets))
    }

    /// How many entries `P:all` keeps (approximately).
    fn all_cap(&self) -> usize {
        (self.max_events * 10).max(10_000)
    }

    /// A new epoch, and every node's sockets asked to resume (see
    /// [`RESYNC`]). Returns the new epoch.
    pub async fn resync(&self) -> Result<EpochInfo, Error> {
        let mut conn = self.conn.clone();
        RESYNC
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(fresh_epoch())
            .arg(self.all_cap())
            .arg(self.max_age_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(bus_error)
    }

    pub async fn position(&self) -> Result<(String, u64), Error> {
        let (epoch, head) = self.position_with_epoch().await?;
        Ok((epoch.epoch, head))
    }

    /// The epoch (with where and why it began) and the head.
    pub async fn position_with_epoch(&self) -> Result<(EpochInfo, u64), Error> {
        let mut conn = self.conn.clone();
        let (epoch, head): (EpochInfo, String) = POSITION
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(fresh_epoch())
            .invoke_async(&mut conn)
            .await
            .map_err(bus_error)?;
        let head = head
            .parse()
            .map_err(|_| Error::Bus(format!("bad clock `{head}`")))?;
        Ok((epoch, head))
    }

    pub async fn snapshot(&self, from: &[(String, u64)]) -> Result<Snapshot, Error> {
        let mut invocation = SNAPSHOT.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(fresh_epoch())
            .arg(self.max_age_ms)
            .arg(self.max_events);
        for (room, offset) in from {
            invocation.arg(room).arg(offset.to_string());
        }
        let mut conn = self.conn.clone();
        let (epoch, head, now_ms, parts): (
            String,
            String,
            String,
            Vec<(String, StreamRangeReply)>,
        ) = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(bus_error)?;
        let bad = |what: &str| Error::Bus(format!("unexpected snapshot reply: {what}"));
        let head: u64 = head.parse().map_err(|_| bad("head"))?;
        let now_ms: i64 = now_ms.parse().map_err(|_| bad("time"))?;
        if parts.len() != from.len() {
            return Err(bad("rooms"));
        }
        let boundary = ms_offset(now_ms - self.max_age_ms as i64);
        let mut rooms = Vec::with_capacity(from.len());
        for ((room, offset), (horizon, entries)) in from.iter().zip(parts) {
            let horizon = if horizon.is_empty() {
                None
            } else {
                Some(horizon.parse::<u64>().map_err(|_| bad("horizon"))?)
            };
            let mut events = Vec::with_capacity(entries.ids.len());
            for entry in entries.ids {
                let offset = id_offset(&entry.id).ok_or_else(|| bad("entry id"))?;
                let Some(Entry::Event(frame)) = entry_of(&entry) else {
                    return Err(bad("a room entry that is not an event"));
                };
                let stored: Stored =
                    serde_json::from_str(&frame).map_err(|e| Error::Bus(e.to_string()))?;
                events.push(Arc::new(Delivery::new(offset, stored)));
            }
            let ok = *offset <= head
                && recoverable(*offset, horizon, events.first().map(|d| d.offset), boundary);
            let verdict = if ok {
                Ok(events)
            } else {
                Err(lost(*offset, head))
            };
            rooms.push((room.clone(), verdict));
        }
        Ok(Snapshot { epoch, head, rooms })
    }

    pub async fn offset_of(&self, event_id: &str) -> Result<Option<u64>, Error> {
        let mut conn = self.conn.clone();
        let offset: Option<String> = redis::cmd("GET")
            .arg(format!("{}ev:{event_id}", self.prefix))
            .query_async(&mut conn)
            .await
            .map_err(bus_error)?;
        Ok(offset.and_then(|o| o.parse().ok()))
    }

    /// Healthy: the reader is reading and Redis answers.
    pub async fn ready(&self) -> Result<(), String> {
        if !self.reading.load(Ordering::SeqCst) {
            return Err("the bus reader is not connected to Redis".into());
        }
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut conn);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis: {e}")),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    /// Follows the shared stream from `start` (the position when the hub
    /// started, which is also the first watermark sockets get).
    pub fn spawn_reader(&self, hub: Hub, start: u64) {
        tokio::spawn(read_loop(
            hub,
            self.client.clone(),
            self.prefix.clone(),
            self.reading.clone(),
            start,
        ));
    }
}

/// How long one `XREAD` blocks; also how often an idle node refreshes its
/// watermark.
const BLOCK_MS: u64 = 2_000;

/// How the reader comes back after Redis failed: Herald's one backoff
/// ([`herald_core::retry`]), doubling from 100 ms up to 5 s with full
/// jitter, so the nodes of a cluster do not reconnect in step; for ever.
const RECONNECT: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(5));

/// Follows `P:all` from the position at start and dispatches every event
/// to this node's sockets, reconnecting with backoff when Redis fails.
async fn read_loop(hub: Hub, client: Client, prefix: String, reading: Arc<AtomicBool>, start: u64) {
    let Some(bus) = hub.bus() else {
        return;
    };
    let mut stop = hub.stop_signal();
    let key = format!("{prefix}all");
    let mut last = start;
    // Connections that failed in a row.
    let mut failures: u32 = 0;
    // The epoch this node's sockets were given; a new one means the history
    // they hold offsets into is gone.
    let mut epoch = bus.position().await.ok().map(|(e, _)| e);
    loop {
        if *stop.borrow() {
            return;
        }
        let connected = async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(
                    &AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(3)))
                        .set_response_timeout(Some(Duration::from_millis(BLOCK_MS + 3_000))),
                )
                .await
                .map_err(|e| e.to_string())?;
            // Detects a gap: entries after our position trimmed while we were away.
            let info: Result<HashMap<String, Value>, _> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query_async(&mut conn)
                .await;
            Ok::<_, String>((conn, info.ok().and_then(max_deleted)))
        };
        let (mut conn, max_deleted) = match connected.await {
            Ok(c) => c,
            Err(e) => {
                reading.store(false, Ordering::SeqCst);
                hub.metrics().bus_up.set(0);
                failures = failures.saturating_add(1);
                let wait = RECONNECT.delay(failures, None, &mut rand::rng());
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "realtime bus: cannot reach Redis");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        if max_deleted.is_some_and(|d| d > last) {
            tracing::warn!(
                "realtime bus: events were trimmed while this node was not reading; asking its sockets to resume"
            );
            hub.kill_all(CloseReason::ServerRestart);
        }
        // Redis restarted (the scripts start a new epoch when its run_id
        // changes): what the sockets were sent may not be in its history.
        if let Ok((now, _)) = bus.position_with_epoch().await {
            hub.note_epoch(&now).await;
            if epoch.as_ref().is_some_and(|e| *e != now.epoch) {
                tracing::warn!(
                    "realtime bus: Redis lost its history (a new epoch); asking this node's sockets to resume"
                );
                hub.kill_all(CloseReason::ServerRestart);
            }
            epoch = Some(now.epoch);
        }
        // This node delivered events on its own while it could not reach
        // Redis: start a new epoch and tell every node.
        hub.heal().await;
        failures = 0;
        reading.store(true, Ordering::SeqCst);
        hub.metrics().bus_up.set(1);
        tracing::info!("realtime bus: reading");
        let options = StreamReadOptions::default()
            .block(BLOCK_MS as usize)
            .count(512);
        loop {
            let (keys, positions) = ([&key], [format!("{last}-0")]);
            let read =
                conn.xread_options::<_, _, Option<StreamReadReply>>(&keys, &positions, &options);
            let reply = tokio::select! {
                reply = read => reply,
                _ = stop.wait_for(|s| *s) => return,
            };
            match reply {
                Ok(None) => {
                    // Idle: move the watermark up to Redis's now, so new
                    // sockets get a recent offset to resume from.
                    if let Ok((_, head)) = bus.position().await {
                        hub.raise_watermark(head);
                    }
                }
                Ok(Some(reply)) => {
                    for entry in reply.keys.iter().flat_map(|k| &k.ids) {
                        let Some(offset) = id_offset(&entry.id) else {
                            continue;
                        };
                        // Past it, readable or not: an entry is read once.
                        last = offset;
                        let Some(entry) = entry_of(entry) else {
                            tracing::error!(
                                offset,
                                "realtime bus: an entry with neither an event nor a resync"
                            );
                            continue;
                        };
                        let frame = match entry {
                            Entry::Event(frame) => frame,
                            Entry::Resync(new) => {
                                tracing::warn!(
                                    "realtime bus: a node delivered events without the bus; asking this node's sockets to resume"
                                );
                                epoch = Some(new);
                                hub.raise_watermark(offset);
                                hub.kill_all(CloseReason::ServerRestart);
                                continue;
                            }
                        };
                        match serde_json::from_str::<Stored>(&frame) {
                            Ok(stored) => hub.dispatch(&Arc::new(Delivery::new(offset, stored))),
                            Err(e) => {
                                tracing::error!(error = %e, offset, "realtime bus: unreadable event")
                            }
                        }
                    }
                }
                Err(e) => {
                    reading.store(false, Ordering::SeqCst);
                    hub.metrics().bus_up.set(0);
                    tracing::warn!(error = %e, "realtime bus: lost Redis; reconnecting");
                    break;
                }
            }
        }
    }
}

/// An entry of the shared stream.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// An event's frame.
    Event(String),
    /// A new epoch began: sockets must resume (see [`RESYNC`]).
    Resync(String),
}

/// What a stream entry holds; `None` if it is neither an event nor a resync.
fn entry_of(entry: &StreamId) -> Option<Entry> {
    if let Some(frame) = entry.get::<String>("e") {
        return Some(Entry::Event(frame));
    }
    entry.get::<String>("resync").map(Entry::Resync)
}

/// `max-deleted-entry-id` of an `XINFO STREAM` reply, as an offset.
fn max_deleted(mut info: HashMap<String, Value>) -> Option<u64> {
    let id: String = redis::from_redis_value(info.remove("max-deleted-entry-id")?).ok()?;
    id_offset(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_offsets() {
        assert_eq!(id_offset("1732600000123004-0"), Some(1_732_600_000_123_004));
        assert_eq!(id_offset("x"), None);
    }

    #[test]
    fn stream_replies_are_read() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            b("P:all"),
            Value::Array(vec![
                Value::Array(vec![b("5-0"), Value::Array(vec![b("e"), b("{}")])]),
                Value::Array(vec![b("6-0"), Value::Array(vec![b("resync"), b("ep2")])]),
                Value::Array(vec![b("7-0"), Value::Array(vec![b("x"), b("y")])]),
            ]),
        ])]);
        let reply: StreamReadReply = redis::from_redis_value(reply).unwrap();
        let entries: Vec<_> = reply.keys[0]
            .ids
            .iter()
            .map(|e| (id_offset(&e.id), entry_of(e)))
            .collect();
        assert_eq!(
            entries,
            vec![
                (Some(5), Some(Entry::Event("{}".to_owned()))),
                (Some(6), Some(Entry::Resync("ep2".to_owned()))),
                (Some(7), None)
            ]
        );
        // RESP2 answers XINFO with a flat array, RESP3 with a map.
        let flat = Value::Array(vec![
            b("length"),
            Value::Int(3),
            b("max-deleted-entry-id"),
            b("7-0"),
        ]);
        assert_eq!(max_deleted(redis::from_redis_value(flat).unwrap()), Some(7));
        let map = Value::Map(vec![(b("max-deleted-entry-id"), b("9-0"))]);
        assert_eq!(max_deleted(redis::from_redis_value(map).unwrap()), Some(9));
        assert_eq!(max_deleted(HashMap::new()), None);
    }
}
