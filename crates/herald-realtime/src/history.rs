//! Room streams: offsets, the events a socket receives, and the short
//! per-room history a reconnecting client resumes from.
//!
//! **Offsets.** Every event published gets one offset, the same in every
//! room it goes to: `ms × 1000 + n`, a hybrid logical clock (the
//! publication time in milliseconds, then a counter within the
//! millisecond; it never goes backwards). A room's stream is therefore
//! strictly increasing, and one number is a watermark over all the rooms a
//! client is in. Because an offset carries its time, the age window can be
//! checked from the offset alone. Offsets stay below 2⁵³, exact in
//! JavaScript, until the year 2255.
//!
//! **Recoverable.** A room can be resumed from offset `o` when nothing
//! after `o` has left its history: `o` is at or past the room's *horizon*
//! (the highest offset trimmed by the count window; for a room first seen
//! after a quiet spell, the age boundary at that moment), and the first
//! event after `o` is within the age window. A room with no history at all
//! is recoverable only from an offset inside the age window — any event
//! after such an offset would still be held.
//!
//! [`MemoryLog`] keeps streams in this process (single node); the Redis
//! bus keeps the same streams in Redis with the same rules (see `bus`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// One event as sockets receive it, serialised once per broadcast and
/// shared by every socket it goes to.
#[derive(Debug)]
pub struct Delivery {
    pub offset: u64,
    pub event: String,
    pub event_id: String,
    pub rooms: Vec<String>,
    /// The payload plus `eventId`, as JSON.
    pub data: Box<RawValue>,
    /// The complete `/ws` frame.
    pub ws_text: Utf8Bytes,
    /// The complete Socket.IO frame, made by the first Socket.IO socket
    /// the event reaches and shared by the others.
    socketio_text: std::sync::OnceLock<Utf8Bytes>,
}

/// An event as the bus and room histories store it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    pub event: String,
    pub event_id: String,
    pub rooms: Vec<String>,
    pub data: Box<RawValue>,
}

impl Delivery {
    pub fn new(offset: u64, stored: Stored) -> Delivery {
        let Stored {
            event,
            event_id,
            rooms,
            data,
        } = stored;
        let name = serde_json::to_string(&event).expect("strings serialise");
        let ws_text = format!(
            "{{\"event\":{name},\"data\":{},\"offset\":{offset}}}",
            data.get()
        );
        Delivery {
            offset,
            event,
            event_id,
            rooms,
            data,
            ws_text: ws_text.into(),
            socketio_text: std::sync::OnceLock::new(),
        }
    }

    /// The event as a Socket.IO frame: `42["name",data,{"offset":n}]`.
    pub fn socketio_text(&self) -> Utf8Bytes {
        self.socketio_text
            .get_or_init(|| crate::socketio::delivery_text(self).into())
            .clone()
    }
}

/// The millisecond an offset was issued in.
pub fn offset_ms(offset: u64) -> i64 {
    (offset / 1000) as i64
}

/// The smallest offset issued at or after `ms`.
pub fn ms_offset(ms: i64) -> u64 {
    (ms.max(0) as u64) * 1000
}

/// The next offset after `last`, at wall-clock `now_ms`.
pub fn next_offset(last: u64, now_ms: i64) -> u64 {
    (last + 1).max(ms_offset(now_ms))
}

/// Can a room be resumed from `from`? `horizon` is `None` for a room with
/// no history; `first_after` is the offset of the first held event after
/// `from`. `boundary` is the oldest offset inside the age window.
pub fn recoverable(
    from: u64,
    horizon: Option<u64>,
    first_after: Option<u64>,
    boundary: u64,
) -> bool {
    match horizon {
        None => from >= boundary,
        Some(h) => from >= h && first_after.is_none_or(|f| f >= boundary),
    }
}

/// What a resume sees: the head offset and, per room, its events after the
/// requested offset — or `None` when the room cannot be recovered.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: String,
    pub head: u64,
    pub rooms: Vec<(String, Option<Vec<Arc<Delivery>>>)>,
}

/// One room's held events.
#[derive(Debug)]
struct RoomLog {
    entries: VecDeque<Arc<Delivery>>,
    /// Events at or below this offset may have been dropped.
    horizon: u64,
}

/// Single-node room streams, in memory.
///
/// Bounded by `max_events` per room and by age: [`MemoryLog::sweep`]
/// drops events older than the window and forgets rooms left empty, so
/// memory follows the traffic of the last `max_age`, not Herald's uptime.
#[derive(Debug)]
pub struct MemoryLog {
    epoch: String,
    last: u64,
    max_events: usize,
    max_age_ms: i64,
    rooms: HashMap<String, RoomLog>,
    /// `eventId` → offset, for resuming by `lastEventId`.
    index: HashMap<String, u64>,
    index_order: VecDeque<(u64, String)>,
}

impl MemoryLog {
    pub fn new(max_events: usize, max_age_ms: i64) -> MemoryLog {
        MemoryLog {
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            last: 0,
            max_events,
            max_age_ms,
            rooms: HashMap::new(),
            index: HashMap::new(),
            index_order: VecDeque::new(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The stream position now: "just before this millisecond", or the
    /// last offset if the clock ran ahead. The clock moves up to it, so
    /// every later offset is above it even if the wall clock steps back.
    pub fn head(&mut self, now_ms: i64) -> u64 {
        self.last = self.last.max(ms_offset(now_ms).saturating_sub(1));
        self.last
    }

    /// Issues the next offset and appends the event to its rooms.
    pub fn append(&mut self, stored: Stored, now_ms: i64) -> Arc<Delivery> {
        let offset = next_offset(self.last, now_ms);
        self.last = offset;
        let delivery = Arc::new(Delivery::new(offset, stored));
        let boundary = ms_offset(now_ms - self.max_age_ms);
        for room in &delivery.rooms {
            let log = self.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
                entries: VecDeque::new(),
                // Whatever this room held before it was forgotten was
                // older than the window.
                horizon: boundary.saturating_sub(1),
            });
            if log.entries.len() >= self.max_events
                && let Some(dropped) = log.entries.pop_front()
            {
                log.horizon = log.horizon.max(dropped.offset);
            }
            log.entries.push_back(delivery.clone());
        }
        self.index.insert(delivery.event_id.clone(), offset);
        self.index_order
            .push_back((offset, delivery.event_id.clone()));
        // The id index is bounded like the rooms: a generous multiple of
        // one room's window, and never older than the age window.
        let cap = self.max_events.saturating_mul(64).max(1024);
        while self.index_order.len() > cap {
            self.pop_index();
        }
        delivery
    }

    fn pop_index(&mut self) {
        if let Some((offset, id)) = self.index_order.pop_front()
            && self.index.get(&id) == Some(&offset)
        {
            self.index.remove(&id);
        }
    }

    /// Drops events older than the age window and forgets empty rooms.
    pub fn sweep(&mut self, now_ms: i64) {
        let boundary = ms_offset(now_ms - self.max_age_ms);
        self.rooms.retain(|_, log| {
            while let Some(first) = log.entries.front() {
                if first.offset >= boundary {
                    break;
                }
                log.horizon = log.horizon.max(first.offset);
                log.entries.pop_front();
            }
            !log.entries.is_empty()
        });
        while self
            .index_order
            .front()
            .is_some_and(|(offset, _)| *offset < boundary)
        {
            self.pop_index();
        }
    }

    /// The offset of a published event, while it is remembered.
    pub fn offset_of(&self, event_id: &str) -> Option<u64> {
        self.index.get(event_id).copied()
    }

    /// Each room's events after its starting offset, or `None` where the
    /// room cannot be recovered. At most `max_events` per room.
    pub fn snapshot(&mut self, from: &[(String, u64)], now_ms: i64) -> Snapshot {
        let head = self.head(now_ms);
        let boundary = ms_offset(now_ms - self.max_age_ms);
        let rooms = from
            .iter()
            .map(|(room, from)| {
                let log = self.rooms.get(room);
                let after: Vec<Arc<Delivery>> = log
                    .map(|l| {
                        l.entries
                            .iter()
                            .filter(|d| d.offset > *from)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let ok = *from <= head
                    && recoverable(
                        *from,
                        log.map(|l| l.horizon),
                        after.first().map(|d| d.offset),
                        boundary,
                    );
                (room.clone(), ok.then_some(after))
            })
            .collect();
        Snapshot {
            epoch: self.epoch.clone(),
            head,
            rooms,
        }
    }

    /// Rooms with history, for tests and stats.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, rooms: &[&str]) -> Stored {
        Stored {
            event: "points_added".into(),
            event_id: id.into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            data: RawValue::from_string(format!("{{\"eventId\":\"{id}\"}}")).unwrap(),
        }
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn offsets_increase_and_carry_their_time() {
        let t = 1_732_600_000_000;
        let a = next_offset(0, t);
        let b = next_offset(a, t);
        let c = next_offset(b, t - 5);
        assert!(a < b && b < c);
        assert_eq!(offset_ms(a), t);
        assert_eq!(offset_ms(c), t);
        assert!(next_offset(c, t + 1) == ms_offset(t + 1));
        // 2250-01-01 still fits in a JavaScript number.
        assert!(ms_offset(8_835_984_000_000) < 1 << 53);
    }

    #[test]
    fn frames_are_built_once() {
        let d = Delivery::new(42, stored("e1", &["user:a"]));
        let frame: serde_json::Value = serde_json::from_str(d.ws_text.as_str()).unwrap();
        assert_eq!(frame["event"], "points_added");
        assert_eq!(frame["data"]["eventId"], "e1");
        assert_eq!(frame["offset"], 42);
    }

    #[test]
    fn resume_within_the_count_window() {
        let t = 1_732_600_000_000;
        let mut log = MemoryLog::new(3, HOUR);
        let first = log.append(stored("e0", &["a"]), t).offset;
        let offsets: Vec<u64> = (1..5)
            .map(|i| {
                log.append(stored(&format!("e{i}"), &["a", "b"]), t + i)
                    .offset
            })
            .collect();
        // Room a holds the last 3 of 5; b holds the last 3 of 4.
        let snap = log.snapshot(
            &[("a".into(), offsets[0]), ("b".into(), offsets[0])],
            t + 10,
        );
        let a = snap.rooms[0]
            .1
            .as_ref()
            .expect("a recovers from its 2nd event");
        assert_eq!(a.iter().map(|d| d.offset).collect::<Vec<_>>(), offsets[1..]);
        assert!(snap.rooms[1].1.is_some());
        let snap = log.snapshot(&[("a".into(), first)], t + 10);
        assert!(snap.rooms[0].1.is_none(), "a dropped events after `first`");
        let head = log.head(t + 10);
        let snap = log.snapshot(&[("a".into(), head)], t + 10);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap().len(), 0);
        assert_eq!(log.offset_of("e2"), Some(offsets[1]));
    }

    #[test]
    fn resume_within_the_age_window() {
        let t = 1_732_600_000_000;
        let mut log = MemoryLog::new(100, HOUR);
        let old = log.append(stored("old", &["a"]), t).offset;
        let later = log.append(stored("later", &["a"]), t + HOUR / 2).offset;
        // An hour and a bit on, the first is out of the window.
        let now = t + HOUR + 1;
        let snap = log.snapshot(&[("a".into(), old)], now);
        assert_eq!(
            snap.rooms[0].1.as_ref().unwrap().len(),
            1,
            "only `later` was missed"
        );
        let snap = log.snapshot(&[("a".into(), old - 1)], now);
        assert!(
            snap.rooms[0].1.is_none(),
            "`old` itself is too old to replay"
        );
        // A quiet room, unknown to the log: only a recent offset is safe.
        let snap = log.snapshot(&[("quiet".into(), later), ("quiet2".into(), old)], now);
        assert!(snap.rooms[0].1.is_some());
        assert!(snap.rooms[1].1.is_none());
        // Sweeping forgets what aged out, and keeps answering the same way.
        log.sweep(now);
        let snap = log.snapshot(&[("a".into(), old)], now);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap().len(), 1);
        let snap = log.snapshot(&[("a".into(), old - 1)], now);
        assert!(
            snap.rooms[0].1.is_none(),
            "the swept event leaves a horizon"
        );
        log.sweep(t + 3 * HOUR);
        assert_eq!(log.room_count(), 0);
        assert_eq!(log.offset_of("later"), None);
    }

    #[test]
    fn offsets_from_the_future_are_not_recovered() {
        let mut log = MemoryLog::new(10, HOUR);
        let t = 1_732_600_000_000;
        let head = log.append(stored("x", &["a"]), t).offset;
        let snap = log.snapshot(&[("a".into(), head + 1)], t);
        assert!(snap.rooms[0].1.is_none());
        let h = log.head(t);
        let later = log.append(stored("y", &["a"]), t - 50).offset;
        assert!(later > h, "a clock stepping back does not reuse offsets");
    }
}
