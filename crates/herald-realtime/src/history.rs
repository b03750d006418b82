//! Room streams: offsets, the events a socket receives, and the short
//! history a reconnecting client resumes from.
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
//! (the highest offset of the room's dropped: trimmed by the count window
//! or evicted; for a room first seen after a quiet spell, the age boundary
//! or the last eviction at that moment), and the first event after `o` is
//! within the age window. A room with no history at all is recoverable only
//! from an offset inside the age window and past every eviction — any event
//! after such an offset would still be held. Why a room is not recoverable
//! is a [`Reason`] ([`crate::resume`]).
//!
//! [`MemoryLog`] keeps streams in this process (single node): one
//! byte-bounded window of shared events, rooms holding offsets into it. The
//! Redis bus keeps the same streams in Redis, bounded per room by count,
//! with the same rules (see `bus`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::resume::Reason;

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
/// requested offset — or why the room cannot be recovered.
#[derive(Debug)]
pub struct Snapshot {
    pub epoch: String,
    pub head: u64,
    pub rooms: Vec<(String, RoomReplay)>,
}

/// One room of a [`Snapshot`]: its events after the requested offset, or
/// why it cannot be recovered.
pub type RoomReplay = Result<Vec<Arc<Delivery>>, Reason>;

/// Why a room is not recoverable from `from`, given the stream's head:
/// past the head, the offset is unknown; otherwise the gap is too old.
pub fn lost(from: u64, head: u64) -> Reason {
    if from > head {
        Reason::UnknownOffset
    } else {
        Reason::TooOld
    }
}

/// What one held event costs the window, in bytes: the event and its
/// frames (the Socket.IO frame counted as built, whether or not a
/// Socket.IO socket has asked for it yet), its room names, and each room's
/// reference to it. An estimate of the heap it keeps alive, the same every
/// time it is asked, so what eviction subtracts is what append added.
pub fn weight(d: &Delivery) -> usize {
    const ROOM_REF: usize = std::mem::size_of::<u64>();
    std::mem::size_of::<Delivery>()
        + 2 * std::mem::size_of::<usize>() // the Arc's counts
        + std::mem::size_of::<Arc<Delivery>>() // its slot in the window
        + d.event.len()
        + d.event_id.len()
        + d.rooms
            .iter()
            .map(|r| std::mem::size_of::<String>() + r.len() + ROOM_REF)
            .sum::<usize>()
        + d.data.get().len()
        + 2 * d.ws_text.len()
}

/// One room's stream: offsets into the node's window.
#[derive(Debug)]
struct RoomLog {
    offsets: VecDeque<u64>,
    /// Events at or below this offset may have been dropped.
    horizon: u64,
}

/// Single-node room streams, in memory: one node-wide window of shared
/// events, each room a list of offsets into it.
///
/// Each event is held once — the very `Arc` the fan-out hands to sockets,
/// its frames encoded once — however many rooms it went to. The window is
/// bounded by bytes (`history_bytes`, see [`weight`]): past the budget the
/// oldest events are evicted first, from every room at once, so memory
/// does not grow with rooms × events. A room also keeps at most
/// `max_events` offsets (a replay's length), and [`MemoryLog::sweep`] drops
/// events older than the age window and forgets rooms left empty, so memory
/// follows the traffic of the last `max_age`, not Herald's uptime.
///
/// **Recoverable** (see the module docs) gains one rule: a room from an
/// offset below the highest evicted one is recoverable only while the room
/// is known and its horizon says nothing of it was dropped; a room the
/// window no longer knows may have lost events to eviction, so it is not.
#[derive(Debug)]
pub struct MemoryLog {
    epoch: String,
    last: u64,
    max_events: usize,
    max_age_ms: i64,
    max_bytes: usize,
    /// Every held event, in offset order.
    window: VecDeque<Arc<Delivery>>,
    /// The window's [`weight`].
    bytes: usize,
    /// The highest offset the byte budget evicted (0: none yet).
    evicted: u64,
    rooms: HashMap<String, RoomLog>,
    /// `eventId` → offset, for resuming by `lastEventId`.
    index: HashMap<String, u64>,
    index_order: VecDeque<(u64, String)>,
}

impl MemoryLog {
    pub fn new(max_events: usize, max_age_ms: i64, max_bytes: usize) -> MemoryLog {
        MemoryLog {
            epoch: uuid::Uuid::new_v4().simple().to_string(),
            last: 0,
            max_events,
            max_age_ms,
            max_bytes,
            window: VecDeque::new(),
            bytes: 0,
            evicted: 0,
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

    /// Issues the next offset, appends the event to the window and its
    /// rooms, and evicts what the byte budget no longer holds.
    pub fn append(&mut self, stored: Stored, now_ms: i64) -> Arc<Delivery> {
        let offset = next_offset(self.last, now_ms);
        self.last = offset;
        let delivery = Arc::new(Delivery::new(offset, stored));
        let boundary = ms_offset(now_ms - self.max_age_ms);
        for room in &delivery.rooms {
            let log = self.rooms.entry(room.clone()).or_insert_with(|| RoomLog {
                offsets: VecDeque::new(),
                // Whatever this room held before it was forgotten was
                // older than the window, or evicted from it.
                horizon: boundary.saturating_sub(1).max(self.evicted),
            });
            if log.offsets.len() >= self.max_events
                && let Some(dropped) = log.offsets.pop_front()
            {
                log.horizon = log.horizon.max(dropped);
            }
            log.offsets.push_back(offset);
        }
        self.bytes += weight(&delivery);
        self.window.push_back(delivery.clone());
        self.index.insert(delivery.event_id.clone(), offset);
        self.index_order
            .push_back((offset, delivery.event_id.clone()));
        // The id index is bounded on its own (an id outlives its event, so
        // a resume by a dropped event's id says `too_old`, not
        // `unknown_event`): a generous multiple of one room's window, and
        // never older than the age window.
        let cap = self.max_events.saturating_mul(64).max(1024);
        while self.index_order.len() > cap {
            self.pop_index();
        }
        while self.bytes > self.max_bytes {
            let Some(old) = self.pop_window() else { break };
            self.evicted = self.evicted.max(old);
        }
        delivery
    }

    /// Drops the window's oldest event from it and from its rooms, and
    /// forgets the rooms it leaves empty; returns its offset.
    fn pop_window(&mut self) -> Option<u64> {
        let d = self.window.pop_front()?;
        self.bytes -= weight(&d);
        for room in &d.rooms {
            let Some(log) = self.rooms.get_mut(room) else {
                continue;
            };
            // Oldest first everywhere: the event is the room's first, or
            // the room's count bound dropped it already.
            if log.offsets.front() == Some(&d.offset) {
                log.offsets.pop_front();
            }
            log.horizon = log.horizon.max(d.offset);
            if log.offsets.is_empty() {
                self.rooms.remove(room);
            }
        }
        Some(d.offset)
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
        while self.window.front().is_some_and(|d| d.offset < boundary) {
            self.pop_window();
        }
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

    /// A held event by offset.
    fn held(&self, offset: u64) -> Option<&Arc<Delivery>> {
        let i = self
            .window
            .binary_search_by_key(&offset, |d| d.offset)
            .ok()?;
        self.window.get(i)
    }

    /// Each room's events after its starting offset, or why the room cannot
    /// be recovered. At most `max_events` per room.
    pub fn snapshot(&mut self, from: &[(String, u64)], now_ms: i64) -> Snapshot {
        let head = self.head(now_ms);
        let boundary = ms_offset(now_ms - self.max_age_ms);
        let rooms = from
            .iter()
            .map(|(room, from)| {
                let log = self.rooms.get(room);
                let after: Vec<Arc<Delivery>> = log
                    .map(|l| {
                        l.offsets
                            .iter()
                            .filter(|o| **o > *from)
                            .filter_map(|o| self.held(*o).cloned())
                            .collect()
                    })
                    .unwrap_or_default();
                let ok = *from <= head
                    && match log {
                        Some(l) => recoverable(
                            *from,
                            Some(l.horizon),
                            after.first().map(|d| d.offset),
                            boundary,
                        ),
                        // Unknown: nothing of it is held, so nothing after
                        // `from` may have been dropped, by age or by bytes.
                        None => *from >= boundary && *from >= self.evicted,
                    };
                let verdict = if ok {
                    Ok(after)
                } else if *from <= head && *from < self.evicted {
                    Err(Reason::Evicted)
                } else {
                    Err(lost(*from, head))
                };
                (room.clone(), verdict)
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

    /// The window's size: events held, and their [`weight`] in bytes.
    pub fn held_bytes(&self) -> (usize, usize) {
        (self.window.len(), self.bytes)
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
        let mut log = MemoryLog::new(3, HOUR, usize::MAX);
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
        assert!(snap.rooms[1].1.is_ok());
        let snap = log.snapshot(&[("a".into(), first)], t + 10);
        assert!(snap.rooms[0].1.is_err(), "a dropped events after `first`");
        let head = log.head(t + 10);
        let snap = log.snapshot(&[("a".into(), head)], t + 10);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap().len(), 0);
        assert_eq!(log.offset_of("e2"), Some(offsets[1]));
    }

    #[test]
    fn resume_within_the_age_window() {
        let t = 1_732_600_000_000;
        let mut log = MemoryLog::new(100, HOUR, usize::MAX);
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
            snap.rooms[0].1.is_err(),
            "`old` itself is too old to replay"
        );
        // A quiet room, unknown to the log: only a recent offset is safe.
        let snap = log.snapshot(&[("quiet".into(), later), ("quiet2".into(), old)], now);
        assert!(snap.rooms[0].1.is_ok());
        assert!(snap.rooms[1].1.is_err());
        // Sweeping forgets what aged out, and keeps answering the same way.
        log.sweep(now);
        let snap = log.snapshot(&[("a".into(), old)], now);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap().len(), 1);
        let snap = log.snapshot(&[("a".into(), old - 1)], now);
        assert!(snap.rooms[0].1.is_err(), "the swept event leaves a horizon");
        log.sweep(t + 3 * HOUR);
        assert_eq!(log.room_count(), 0);
        assert_eq!(log.offset_of("later"), None);
    }

    #[test]
    fn offsets_from_the_future_are_not_recovered() {
        let mut log = MemoryLog::new(10, HOUR, usize::MAX);
        let t = 1_732_600_000_000;
        let head = log.append(stored("x", &["a"]), t).offset;
        let snap = log.snapshot(&[("a".into(), head + 1)], t);
        assert!(snap.rooms[0].1.is_err());
        let h = log.head(t);
        let later = log.append(stored("y", &["a"]), t - 50).offset;
        assert!(later > h, "a clock stepping back does not reuse offsets");
    }

    #[test]
    fn an_event_is_held_once_however_many_rooms_it_went_to() {
        let t = 1_732_600_000_000;
        let mut log = MemoryLog::new(1000, HOUR, usize::MAX);
        let rooms: Vec<String> = (0..500).map(|i| format!("user:{i}")).collect();
        let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
        let d = log.append(stored("wide", &refs), t);
        let (events, bytes) = log.held_bytes();
        assert_eq!(events, 1);
        assert_eq!(bytes, weight(&d));
        assert_eq!(log.room_count(), 500);
        // The window and the caller share the one `Arc`: no copy per room.
        assert_eq!(Arc::strong_count(&d), 2);
        let snap = log.snapshot(&[("user:7".into(), d.offset - 1)], t + 1);
        let replay = snap.rooms[0].1.as_ref().unwrap();
        assert!(Arc::ptr_eq(&replay[0], &d), "a replay sends the same frame");
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_first_from_every_room() {
        let t = 1_732_600_000_000;
        let one = weight(&Delivery::new(1, stored("e0", &["a", "b"])));
        // Room for three events like these, not four.
        let mut log = MemoryLog::new(1000, HOUR, 3 * one + one / 2);
        let offsets: Vec<u64> = (0..5)
            .map(|i| {
                log.append(stored(&format!("e{i}"), &["a", "b"]), t + i)
                    .offset
            })
            .collect();
        let (events, bytes) = log.held_bytes();
        assert_eq!(events, 3);
        assert!(bytes <= 3 * one + one / 2);
        let now = t + 10;
        // From the last evicted event on, every room is whole.
        let snap = log.snapshot(&[("a".into(), offsets[1]), ("b".into(), offsets[1])], now);
        for (_, events) in &snap.rooms {
            let got: Vec<u64> = events.as_ref().unwrap().iter().map(|d| d.offset).collect();
            assert_eq!(got, offsets[2..]);
        }
        // Before it, the gap is gone: evicted, which the client hears as too_old.
        let snap = log.snapshot(
            &[("a".into(), offsets[0]), ("b".into(), offsets[1] - 1)],
            now,
        );
        for (_, events) in &snap.rooms {
            assert_eq!(events.as_ref().unwrap_err(), &Reason::Evicted);
            assert_eq!(Reason::Evicted.as_str(), "too_old");
        }
        // A room the window does not know may have lost events to
        // eviction: only offsets from the last evicted one on are safe.
        let snap = log.snapshot(&[("c".into(), offsets[0]), ("d".into(), offsets[1])], now);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap_err(), &Reason::Evicted);
        assert!(snap.rooms[1].1.as_ref().unwrap().is_empty());
        // Beyond the head is unknown, whatever was evicted.
        let head = log.head(now);
        let snap = log.snapshot(&[("a".into(), head + 1)], now);
        assert_eq!(
            snap.rooms[0].1.as_ref().unwrap_err(),
            &Reason::UnknownOffset
        );
    }

    #[test]
    fn a_room_emptied_by_eviction_is_forgotten_and_never_recovered_with_a_gap() {
        let t = 1_732_600_000_000;
        let probe = weight(&Delivery::new(1, stored("q00", &["busy"])));
        let mut log = MemoryLog::new(1000, HOUR, 4 * probe);
        let quiet = log.append(stored("q", &["quiet"]), t).offset;
        let before = quiet - 1;
        for i in 0..10 {
            log.append(stored(&format!("b{i:02}"), &["busy"]), t + 1 + i);
        }
        assert_eq!(log.room_count(), 1, "quiet's only event was evicted");
        let snap = log.snapshot(&[("quiet".into(), before)], t + 20);
        assert!(snap.rooms[0].1.is_err(), "quiet missed `q`, which is gone");
        // The id still resolves, so the client hears too_old rather than
        // unknown_event.
        assert_eq!(log.offset_of("q"), Some(quiet));
        // A quiet room that comes back starts above what was evicted.
        let back = log.append(stored("q2", &["quiet"]), t + 30).offset;
        let snap = log.snapshot(&[("quiet".into(), before)], t + 31);
        assert!(snap.rooms[0].1.is_err());
        let snap = log.snapshot(&[("quiet".into(), back - 1)], t + 31);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn the_count_bound_trims_a_room_not_the_shared_window() {
        let t = 1_732_600_000_000;
        let mut log = MemoryLog::new(2, HOUR, usize::MAX);
        let first = log.append(stored("x0", &["a", "b"]), t).offset;
        log.append(stored("x1", &["a"]), t + 1);
        log.append(stored("x2", &["a"]), t + 2);
        // a holds its last two; x0 stays in the window for b.
        assert_eq!(log.held_bytes().0, 3);
        let snap = log.snapshot(&[("a".into(), first - 1), ("b".into(), first - 1)], t + 3);
        assert_eq!(snap.rooms[0].1.as_ref().unwrap_err(), &Reason::TooOld);
        assert_eq!(snap.rooms[1].1.as_ref().unwrap()[0].offset, first);
        // Age sweeps the window and forgets what it empties.
        log.sweep(t + 2 * HOUR);
        assert_eq!(log.held_bytes(), (0, 0));
        assert_eq!(log.room_count(), 0);
    }
}
