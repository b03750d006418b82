//! Resume: what a reconnecting client missed, or why it cannot have it.
//!
//! A client hands back where it left off — an offset (per room or for all),
//! or the id of the last event it saw — and the history's epoch it got them
//! in. [`find`] turns that into either a [`Replay`] (every missed event of
//! every room the connection is in, in offset order, once) or a
//! [`NotRecovered`] with its [`Reason`]. Nothing in between: a resume is
//! never answered `recovered` with a gap (contract §6).
//!
//! Where the events come from:
//!
//! - the same epoch: the history's snapshot (the node's byte-bounded window
//!   on a single node, Redis streams with several);
//! - another epoch, clustered: the database's realtime log up to the new
//!   epoch's start and Redis after it, when only Redis restarts lie between
//!   (see [`crate::durable`]).
//!
//! The reasons are an enum; their wire strings (the `resumed.reason`
//! values of the README) are written in one place, [`Reason::as_str`].
//! Some reasons tell apart what the client need not: an event evicted by
//! the byte budget and one aged out are both `too_old` to the client, and
//! differ in the log line.

use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::history::Delivery;
use crate::hub::Hub;
use crate::protocol::{ResumeOutcome, ResumeRequest};

/// Why a resume is answered `recovered: false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The gap is older than the history window: past a room's count or
    /// the age window.
    TooOld,
    /// The gap's start left the node's window to the byte budget
    /// (`history_bytes`).
    Evicted,
    /// The history's epoch changed since the client's offsets (Redis lost
    /// its history and the database's log cannot bridge it, or the epoch is
    /// unknown).
    EpochChanged,
    /// A node delivered events while it could not reach the bus; those
    /// events have no place in the shared order, so no resume crosses the
    /// epoch that followed.
    HistoryLost,
    /// `lastEventId` names an event the history does not remember.
    UnknownEvent,
    /// An offset beyond the stream's head.
    UnknownOffset,
    /// The request names rooms the client may not join.
    Unauthorized,
    /// Redis or the database could not be read.
    HistoryUnavailable,
}

impl Reason {
    /// The wire string (`resumed.reason`); the one place they are spelt.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooOld | Reason::Evicted => "too_old",
            Reason::EpochChanged | Reason::HistoryLost => "epoch_changed",
            Reason::UnknownEvent => "unknown_event",
            Reason::UnknownOffset => "unknown_offset",
            Reason::Unauthorized => "unauthorized",
            Reason::HistoryUnavailable => "history_unavailable",
        }
    }

    /// Every reason, for tests and metrics.
    pub const ALL: [Reason; 8] = [
        Reason::TooOld,
        Reason::Evicted,
        Reason::EpochChanged,
        Reason::HistoryLost,
        Reason::UnknownEvent,
        Reason::UnknownOffset,
        Reason::Unauthorized,
        Reason::HistoryUnavailable,
    ];
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What a resume replays.
#[derive(Debug)]
pub(crate) struct Replay {
    pub epoch: String,
    pub head: u64,
    /// Per room, the offset the replay started after: the client had
    /// everything up to it.
    pub from: Vec<(String, u64)>,
    /// The missed events, in offset order, each once.
    pub missed: Vec<Arc<Delivery>>,
}

/// Why a resume replays nothing.
#[derive(Debug)]
pub(crate) struct NotRecovered {
    pub reason: Reason,
    pub epoch: String,
    /// Where to resume from next time.
    pub head: u64,
    /// The rooms concerned.
    pub rooms: Vec<String>,
}

impl NotRecovered {
    fn new(reason: Reason, epoch: String, head: u64, rooms: Vec<String>) -> NotRecovered {
        NotRecovered {
            reason,
            epoch,
            head,
            rooms,
        }
    }

    /// The history could not be read.
    fn unavailable(e: &crate::Error, epoch: String, head: u64) -> NotRecovered {
        tracing::warn!(error = %e, "resume: history unavailable");
        NotRecovered::new(Reason::HistoryUnavailable, epoch, head, Vec::new())
    }

    /// The answer, counted and logged.
    pub fn outcome(self, hub: &Hub, conn: u64) -> ResumeOutcome {
        hub.metrics()
            .resumes
            .with_label_values(&["not_recovered"])
            .inc();
        tracing::info!(conn, reason = ?self.reason, "resume: not recovered");
        ResumeOutcome {
            recovered: false,
            replayed: 0,
            reason: Some(self.reason),
            offset: self.head,
            epoch: self.epoch,
            rooms: self.rooms,
        }
    }
}

impl Replay {
    /// The answer once `replayed` events were sent, counted and logged.
    /// `watermark` is the connection's: the next resume starts after both.
    pub fn outcome(self, hub: &Hub, conn: u64, replayed: usize, watermark: u64) -> ResumeOutcome {
        hub.metrics()
            .resumes
            .with_label_values(&["recovered"])
            .inc();
        tracing::info!(conn, replayed, "resume: recovered");
        ResumeOutcome {
            recovered: true,
            replayed,
            reason: None,
            offset: self.head.max(watermark),
            epoch: self.epoch,
            rooms: Vec::new(),
        }
    }
}

/// Decides a resume for a connection in `rooms` (subscriptions restored
/// already). `refused` are rooms of the request it may not join;
/// `watermark` is where the connection's live stream began.
pub(crate) async fn find(
    hub: &Hub,
    request: &ResumeRequest,
    rooms: &[String],
    refused: Vec<String>,
    watermark: u64,
) -> Result<Replay, NotRecovered> {
    let (epoch, head) = hub
        .position()
        .await
        .map_err(|e| NotRecovered::unavailable(&e, String::new(), watermark))?;
    if !refused.is_empty() {
        return Err(NotRecovered::new(
            Reason::Unauthorized,
            epoch,
            head,
            refused,
        ));
    }
    let base = match &request.last_event_id {
        Some(id) => match hub.offset_of(id).await {
            Ok(Some(offset)) => Some(offset),
            Ok(None) => {
                return Err(NotRecovered::new(
                    Reason::UnknownEvent,
                    epoch,
                    head,
                    Vec::new(),
                ));
            }
            Err(e) => return Err(NotRecovered::unavailable(&e, epoch, head)),
        },
        None => request.offset,
    };
    let mut from: Vec<(String, u64)> = rooms
        .iter()
        .filter_map(|room| {
            request
                .offsets
                .get(room)
                .copied()
                .or(base)
                .map(|o| (room.clone(), o))
        })
        .collect();
    from.sort();
    let all_rooms = |from: &[(String, u64)]| from.iter().map(|(room, _)| room.clone()).collect();
    match request.epoch.as_ref().filter(|e| **e != epoch) {
        // The history changed epoch since the client's offsets: served
        // from the database when only Redis restarts lie between.
        Some(old) => match hub.recover_across_epochs(old, &from).await {
            Ok(Ok((epoch, head, missed))) => Ok(Replay {
                epoch,
                head,
                from,
                missed,
            }),
            // Every room the client is in may miss something.
            Ok(Err(reason)) => Err(NotRecovered::new(reason, epoch, head, all_rooms(&from))),
            Err(e) => Err(NotRecovered::unavailable(&e, epoch, head)),
        },
        None => {
            let snapshot = hub
                .snapshot(&from)
                .await
                .map_err(|e| NotRecovered::unavailable(&e, epoch.clone(), head))?;
            if snapshot.epoch != epoch {
                return Err(NotRecovered::new(
                    Reason::EpochChanged,
                    snapshot.epoch,
                    snapshot.head,
                    all_rooms(&from),
                ));
            }
            let mut reason = None;
            let mut lost = Vec::new();
            let mut missed = Vec::new();
            for (room, events) in snapshot.rooms {
                match events {
                    Ok(events) => missed.extend(events),
                    Err(why) => {
                        // An offset from the future says more than an old one.
                        reason = Some(match reason {
                            Some(r)
                                if r == Reason::UnknownOffset || why != Reason::UnknownOffset =>
                            {
                                r
                            }
                            _ => why,
                        });
                        lost.push(room);
                    }
                }
            }
            if let Some(reason) = reason {
                return Err(NotRecovered::new(reason, epoch, snapshot.head, lost));
            }
            missed.sort_by_key(|d| d.offset);
            missed.dedup_by_key(|d| d.offset);
            Ok(Replay {
                epoch,
                head: snapshot.head,
                from,
                missed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reasons_render_to_the_readme_strings() {
        let wire: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        let documented: HashSet<&str> = [
            "too_old",
            "epoch_changed",
            "unknown_event",
            "unknown_offset",
            "unauthorized",
            "history_unavailable",
        ]
        .into();
        assert_eq!(wire, documented);
        assert_eq!(
            serde_json::to_value(Reason::Evicted).unwrap(),
            serde_json::json!("too_old")
        );
        assert_eq!(
            serde_json::to_value(Reason::HistoryLost).unwrap(),
            serde_json::json!("epoch_changed")
        );
    }
}
