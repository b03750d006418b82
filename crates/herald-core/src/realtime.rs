//! The seam between producers of realtime events (ingest, the delivery
//! workers' `delivery_failed`) and the hub that owns the sockets.
//!
//! Broadcasting is fire-and-forget by design: realtime delivery is a fast
//! path, and what a client misses it recovers by resuming from a room
//! offset or by reading its inbox. The durable record is the database.

use std::fmt;

use serde_json::{Map, Value};

use crate::catalog::EventKind;
use crate::ids::EventId;

/// One event on its way to live sockets.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeEvent {
    pub id: EventId,
    pub kind: EventKind,
    /// Target rooms, from the routing table.
    pub rooms: Vec<String>,
    /// The payload as stored; the hub adds `eventId`.
    pub data: Map<String, Value>,
}

/// Where realtime events go. Implementations must not block: they hand the
/// event over (to the local hub, to the cross-node bus) and return.
pub trait Broadcast: Send + Sync + fmt::Debug {
    fn broadcast(&self, event: RealtimeEvent);
}
