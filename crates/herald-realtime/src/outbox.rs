//! A connection's outbox: where the hub's fan-out meets the socket.
//!
//! **Write without hand-offs.** Once a WebSocket connection's task has
//! its socket here ([`Outbox::attach`]), [`crate::Hub`]'s dispatch writes
//! each event to the socket itself, from the dispatching task, when the
//! socket can take it at once: a non-blocking write, no wake, no task
//! switch, no queue. It queues the event instead when it cannot write
//! without waiting or without overtaking something:
//!
//! - the connection's task is writing something of its own (the opening
//!   frames, an answer, a replay, a ping) or handling a client message
//!   ([`Outbox::hold`]) — its frames and the events queued meanwhile go
//!   out in one flush when it is done ([`Outbox::release`]);
//! - the socket's buffer did not drain (a slow client): the task takes
//!   over the flush with a waker of its own and drains the queue after it;
//! - there is no socket to write to (a long-polling session, or a
//!   Socket.IO session before it authenticates).
//!
//! The queue is bounded (`outbound_queue`): a connection that fills it is
//! closed as a slow consumer and the queue freed, so memory stays flat. It
//! costs nothing until something is queued. The task is woken only when
//! it has to act: an event queued for a socket that nobody is writing to
//! (the queue went from empty to non-empty), a flush left half done, the
//! kill signal.
//!
//! **Once per socket.** What the connection was sent (so that a replay
//! after a resume never repeats a live event, and no live copy repeats a
//! replayed one) and each room's resume floor live here too, under the
//! same lock, because both the dispatcher and the task send events.
//!
//! **Never across an await.** The lock is a plain mutex held for one
//! non-blocking step at a time — a write, a poll of the socket, a queue
//! operation — and never while waiting; the dispatcher and the task each
//! take it briefly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures::{Sink, Stream};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::history::Delivery;
use crate::protocol::CloseReason;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// `/ws`: `{"event", "data"}` text frames.
    Json,
    /// Socket.IO packets in Engine.IO message packets (`42[…]`, `43n[…]`).
    SocketIo,
}

impl Wire {
    /// An event's frame for this wire, shared with every socket it reaches.
    pub fn frame(self, d: &Delivery) -> Utf8Bytes {
        match self {
            Wire::Json => d.ws_text.clone(),
            Wire::SocketIo => d.socketio_text(),
        }
    }
}

/// Offsets this connection has been sent, so a replay never repeats one.
/// Bounded: it needs to cover one replay plus the queue. Empty (and
/// unallocated) until the first event.
#[derive(Debug)]
struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    fn contains(&self, offset: u64) -> bool {
        self.set.contains(&offset)
    }

    fn insert(&mut self, offset: u64, cap: usize) {
        if self.set.insert(offset) {
            self.order.push_back(offset);
            while self.order.len() > cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What the dispatcher did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Written to the socket (flushed, or left to the task to flush).
    Written,
    /// Queued for the connection's task (or a long poll).
    Queued,
    /// The client has it already, or the connection is closing.
    Skipped,
    /// The queue was full: the connection is now closed as a slow consumer.
    Full,
}

/// A connection's WebSocket, boxed. It moves from the upgrade into the
/// connection's task and on into its outbox; held by value, every async
/// state on the way (the upgrade's, the task's, the session's) would keep
/// room for it inline, some twice, for the connection's whole life.
pub(crate) type Socket = Box<WebSocket>;

#[derive(Debug)]
struct State {
    /// The socket, once the task put it here.
    socket: Option<Socket>,
    /// Events waiting for the task, in offset order.
    queue: VecDeque<Arc<Delivery>>,
    /// The task is writing (or about to write) frames of its own, or a
    /// flush did not finish: events queue instead of being written.
    held: bool,
    /// Why the connection must close; the first reason wins.
    kill: Option<CloseReason>,
    seen: Seen,
    /// Per room, the offset a resume started from: the client had
    /// everything up to it, so a late live copy is not sent again.
    floors: HashMap<String, u64>,
}

/// One connection's outbox; see the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    /// The task's wake-up: the kill signal, a queue it must drain, a flush
    /// it must finish. A permit is kept when the task is not waiting, so
    /// no wake-up is lost.
    wake: Notify,
    wire: Wire,
    /// Events queued at most.
    cap: usize,
    /// Offsets remembered for replays at most.
    seen_cap: usize,
}

impl Outbox {
    /// An outbox held by its task: nothing is written to the socket
    /// before the task's own opening frames.
    pub fn new(wire: Wire, cap: usize, seen_cap: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State {
                socket: None,
                queue: VecDeque::new(),
                held: true,
                kill: None,
                seen: Seen::new(),
                floors: HashMap::new(),
            }),
            wake: Notify::new(),
            wire,
            cap,
            seen_cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    pub fn wire(&self) -> Wire {
        self.wire
    }

    /// Asks the connection to close; the first reason wins.
    pub fn kill(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.kill.is_none() {
            state.kill = Some(reason);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Why the connection was asked to close, if it was.
    pub fn killed(&self) -> Option<CloseReason> {
        self.lock().kill
    }

    /// Resolves when the task has something to do (see [`Outbox::wake`]).
    pub fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// The dispatcher's side: writes `d` to the socket when it can take
    /// it at once, queues it otherwise (see the module docs).
    pub fn offer(&self, d: &Arc<Delivery>) -> Offer {
        let mut state = self.lock();
        let state = &mut *state;
        if state.kill.is_some() {
            return Offer::Skipped;
        }
        if state.queue.is_empty()
            && !state.held
            && let Some(socket) = state.socket.as_mut()
        {
            if skip(&state.seen, &state.floors, d) {
                return Offer::Skipped;
            }
            let mut cx = Context::from_waker(Waker::noop());
            match write_now(socket, self.wire.frame(d), &mut cx) {
                Written::Flushed => {
                    state.seen.insert(d.offset, self.seen_cap);
                    return Offer::Written;
                }
                // The client is not reading fast enough: the task
                // finishes the flush, later events wait for it.
                Written::Buffered => {
                    state.seen.insert(d.offset, self.seen_cap);
                    state.held = true;
                    self.wake.notify_one();
                    return Offer::Written;
                }
                Written::Failed => {
                    state.kill = Some(CloseReason::TransportError);
                    self.wake.notify_one();
                    return Offer::Skipped;
                }
                // Still blocked from before: the task flushes, the
                // event waits in the queue below.
                Written::NotYet => {
                    state.held = true;
                    self.wake.notify_one();
                }
            }
        }
        if state.queue.len() >= self.cap {
            state.kill = Some(CloseReason::SlowConsumer);
            state.queue = VecDeque::new();
            self.wake.notify_one();
            return Offer::Full;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push_back(d.clone());
        // A held socket's task drains the queue before it lets go
        // ([`Outbox::release`]): only a queue nobody writes wakes anyone.
        if was_empty && (state.socket.is_none() || !state.held) {
            self.wake.notify_one();
        }
        Offer::Queued
    }

    /// Takes the queued events the client does not have yet, in order,
    /// and remembers them as sent.
    pub fn drain(&self) -> Vec<Arc<Delivery>> {
        let mut state = self.lock();
        let state = &mut *state;
        if state.queue.is_empty() {
            return Vec::new();
        }
        let queued = std::mem::take(&mut state.queue);
        let mut out = Vec::with_capacity(queued.len());
        for d in queued {
            if !skip(&state.seen, &state.floors, &d) {
                state.seen.insert(d.offset, self.seen_cap);
                out.push(d);
            }
        }
        out
    }

    /// Whether the client was sent `offset` already.
    pub fn was_sent(&self, offset: u64) -> bool {
        self.lock().seen.contains(offset)
    }

    /// Remembers `offset` as sent (a replayed event).
    pub fn mark_sent(&self, offset: u64) {
        self.lock().seen.insert(offset, self.seen_cap);
    }

    /// Raises the resume floors: live copies at or below a room's floor are
    /// not sent again.
    pub fn raise_floors(&self, from: &[(String, u64)]) {
        let mut state = self.lock();
        for (room, offset) in from {
            let floor = state.floors.entry(room.clone()).or_default();
            *floor = (*floor).max(*offset);
        }
    }

    /// The task writes something of its own now: events queue meanwhile.
    pub fn hold(&self) {
        self.lock().held = true;
    }

    /// The task wrote everything: lets the dispatcher write directly
    /// again, unless events were queued meanwhile (then false, and the
    /// task drains and writes them first).
    pub fn release(&self) -> bool {
        let mut state = self.lock();
        if state.queue.is_empty() {
            state.held = false;
            true
        } else {
            false
        }
    }

    /// Puts the connection's socket here: from now on the task reads and
    /// writes it through [`Outbox::next`] and [`Outbox::write`].
    pub fn attach(&self, socket: Socket) {
        self.lock().socket = Some(socket);
    }

    /// Takes the socket back (for the closing handshake).
    pub fn detach(&self) -> Option<Socket> {
        self.lock().socket.take()
    }

    /// The next message from the client.
    pub async fn next(&self) -> Option<Result<Message, axum::Error>> {
        poll_fn(|cx| match self.lock().socket.as_mut() {
            Some(socket) => std::pin::Pin::new(socket).poll_next(cx),
            None => Poll::Ready(None),
        })
        .await
    }

    /// Writes `frames` and flushes them with whatever the dispatcher left
    /// in the socket's buffer: one system call for all of them when the
    /// client keeps up.
    pub async fn write(&self, frames: Vec<Message>) -> Result<(), axum::Error> {
        let mut frames = frames.into_iter().peekable();
        poll_fn(|cx| {
            let mut state = self.lock();
            let Some(socket) = state.socket.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            let mut socket = std::pin::Pin::new(socket);
            while frames.peek().is_some() {
                match socket.as_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
                if let Some(frame) = frames.next() {
                    socket.as_mut().start_send(frame)?;
                }
            }
            socket.as_mut().poll_flush(cx)
        })
        .await
    }
}

/// Whether the client has `d` already.
fn skip(seen: &Seen, floors: &HashMap<String, u64>, d: &Delivery) -> bool {
    seen.contains(d.offset)
        || (!floors.is_empty()
            && d.rooms
                .iter()
                .any(|r| floors.get(r).is_some_and(|f| d.offset <= *f)))
}

/// What a write without waiting did.
enum Written {
    /// On its way to the client.
    Flushed,
    /// In the socket's buffer, which did not drain.
    Buffered,
    /// Not written: the socket is still blocked by an earlier write.
    NotYet,
    Failed,
}

/// One frame, written and flushed without waiting.
fn write_now(socket: &mut WebSocket, frame: Utf8Bytes, cx: &mut Context<'_>) -> Written {
    let mut socket = std::pin::Pin::new(socket);
    match socket.as_mut().poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => return Written::Failed,
        Poll::Pending => return Written::NotYet,
    }
    if socket.as_mut().start_send(Message::Text(frame)).is_err() {
        return Written::Failed;
    }
    match socket.poll_flush(cx) {
        Poll::Ready(Ok(())) => Written::Flushed,
        Poll::Ready(Err(_)) => Written::Failed,
        Poll::Pending => Written::Buffered,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::Stored;

    fn event(offset: u64, room: &str) -> Arc<Delivery> {
        let stored = Stored {
            event: "points_added".into(),
            event_id: format!("e{offset}"),
            rooms: vec![room.to_owned()],
            data: serde_json::value::to_raw_value(&serde_json::json!({"n": offset})).unwrap(),
        };
        Arc::new(Delivery::new(offset, stored))
    }

    fn offsets(ds: &[Arc<Delivery>]) -> Vec<u64> {
        ds.iter().map(|d| d.offset).collect()
    }

    /// Whether the outbox has a wake-up for its task right now.
    async fn woken(outbox: &Outbox) -> bool {
        tokio::time::timeout(Duration::ZERO, outbox.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn without_a_socket_events_queue_in_order_and_the_first_one_wakes_the_poll() {
        let outbox = Outbox::new(Wire::SocketIo, 8, 64);
        assert!(!woken(&outbox).await);
        assert_eq!(outbox.offer(&event(1, "user:a")), Offer::Queued);
        assert_eq!(outbox.offer(&event(2, "user:a")), Offer::Queued);
        assert!(woken(&outbox).await, "the queue went from empty to not");
        assert!(
            !woken(&outbox).await,
            "one wake-up for a batch, not one each"
        );
        assert_eq!(offsets(&outbox.drain()), vec![1, 2]);
        assert!(outbox.drain().is_empty());
        assert_eq!(outbox.offer(&event(3, "user:a")), Offer::Queued);
        assert!(woken(&outbox).await);
    }

    #[tokio::test]
    async fn a_full_queue_closes_the_connection_as_a_slow_consumer_and_frees_it() {
        let outbox = Outbox::new(Wire::Json, 2, 64);
        assert_eq!(outbox.offer(&event(1, "r")), Offer::Queued);
        assert_eq!(outbox.offer(&event(2, "r")), Offer::Queued);
        assert_eq!(outbox.offer(&event(3, "r")), Offer::Full);
        assert_eq!(outbox.killed(), Some(CloseReason::SlowConsumer));
        assert!(outbox.drain().is_empty(), "the queue is freed");
        assert_eq!(outbox.offer(&event(4, "r")), Offer::Skipped);
        // The first reason wins.
        outbox.kill(CloseReason::ServerRestart);
        assert_eq!(outbox.killed(), Some(CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_kill_wakes_the_task_even_when_it_was_not_waiting_yet() {
        let outbox = Outbox::new(Wire::Json, 2, 64);
        outbox.kill(CloseReason::ServerRestart);
        assert!(woken(&outbox).await);
        assert_eq!(outbox.killed(), Some(CloseReason::ServerRestart));
    }

    #[tokio::test]
    async fn what_was_replayed_or_lies_under_a_floor_is_not_sent_again() {
        let outbox = Outbox::new(Wire::Json, 16, 64);
        // A replay sent 5; a resume of room r from 7.
        outbox.mark_sent(5);
        outbox.raise_floors(&[("r".to_owned(), 7)]);
        for (offset, room) in [(5, "s"), (6, "r"), (7, "r"), (8, "r"), (9, "s")] {
            outbox.offer(&event(offset, room));
        }
        assert_eq!(offsets(&outbox.drain()), vec![8, 9]);
        assert!(outbox.was_sent(8) && outbox.was_sent(9));
        // A live copy of what was just sent is skipped too.
        outbox.offer(&event(9, "s"));
        assert!(outbox.drain().is_empty());
    }

    #[tokio::test]
    async fn the_task_lets_go_only_once_nothing_is_queued() {
        let outbox = Outbox::new(Wire::Json, 16, 64);
        // Born held, with no socket: nothing could be written anyway.
        outbox.offer(&event(1, "r"));
        assert!(!outbox.release(), "an event is queued: drain it first");
        assert_eq!(offsets(&outbox.drain()), vec![1]);
        assert!(outbox.release());
        outbox.hold();
        assert!(outbox.release());
    }

    #[test]
    fn seen_offsets_are_bounded() {
        let mut seen = Seen::new();
        for offset in 0..100 {
            seen.insert(offset, 10);
        }
        assert!(!seen.contains(89));
        assert!(seen.contains(90) && seen.contains(99));
        assert_eq!(seen.order.len(), 10);
        assert_eq!(seen.set.len(), 10);
    }
}
