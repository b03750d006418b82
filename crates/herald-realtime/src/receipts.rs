//! Read receipts from sockets: `seen {eventId}` and `read {eventId}`.
//!
//! A client that showed an event live says so, and smart delivery listens:
//! a push held for a grace period is skipped (`seen`) once its recipient
//! has acknowledged the event, and an escalation step once anyone it
//! reached has read it (`herald_core::smart`).
//!
//! - `seen` records when the user first acknowledged the event (the
//!   entry stays unread: they saw it go by, they did not open it);
//! - `read` marks the user's inbox entry read, as
//!   `POST /v1/notifications/{id}/read` does (the same store call), and
//!   announces it to the user's other sockets ([`announce`]).
//!
//! Both answer `{ok, notificationId}`; an event the user has no entry for
//! is `NOT_FOUND`.

use herald_core::{NotificationId, UserId};
use herald_store::Store;
use serde_json::{Map, Value, json};

use crate::hub::{Hub, Outgoing, now_ms};
use crate::protocol::{ErrorCode, Refusal};

/// The event that tells a user's sockets entries were read:
/// `{ids, all, unreadCount}`.
pub const NOTIFICATIONS_READ: &str = "notifications_read";
/// The event that tells a user's sockets an entry is gone: `{id, unreadCount}`.
pub const NOTIFICATION_DELETED: &str = "notification_deleted";

/// `seen` or `read`, from the user `user`, with `data` = `{eventId}`.
pub(crate) async fn receipt(
    hub: &Hub,
    store: &Store,
    user: &UserId,
    kind: &str,
    data: &Value,
) -> Result<Value, Refusal> {
    let event = data
        .get("eventId")
        .and_then(Value::as_str)
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .ok_or_else(|| Refusal::bad_request(format!("{kind} takes {{eventId}}, a uuid")))?;
    let unavailable = |e: herald_store::Error| {
        tracing::warn!(error = %e, "could not record a read receipt");
        Refusal::new(ErrorCode::ServerError, "could not record it; try again")
    };
    let notification = if kind == "seen" {
        store
            .mark_seen(user, event, now_ms())
            .await
            .map_err(unavailable)?
    } else {
        match store
            .notification_of_event(user, event)
            .await
            .map_err(unavailable)?
        {
            Some(id) => {
                let newly = store
                    .notification(user, id)
                    .await
                    .map_err(unavailable)?
                    .is_some_and(|n| !n.read);
                store.mark_read(user, id).await.map_err(unavailable)?;
                if newly {
                    announce(hub, store, user, InboxChange::Read(&[id]))
                        .await
                        .map_err(unavailable)?;
                }
                Some(id)
            }
            None => None,
        }
    };
    let id = notification.ok_or_else(|| {
        Refusal::new(
            ErrorCode::NotFound,
            format!("no inbox entry for event {event}"),
        )
    })?;
    Ok(json!({ "ok": true, "notificationId": id }))
}

/// A change to a user's inbox that their other tabs and devices must see.
#[derive(Debug, Clone, Copy)]
pub enum InboxChange<'a> {
    /// These entries are read now.
    Read(&'a [NotificationId]),
    /// Every entry is read now.
    ReadAll,
    /// This entry is gone.
    Deleted(NotificationId),
}

/// Tells every socket of `user`, on every node, about `change`, with the
/// unread count after it: `notifications_read {ids, all, unreadCount}` or
/// `notification_deleted {id, unreadCount}`. The one place read state is
/// announced, whoever changed it (REST or a socket's `read`).
pub async fn announce(
    hub: &Hub,
    store: &Store,
    user: &UserId,
    change: InboxChange<'_>,
) -> Result<(), herald_store::Error> {
    let unread = store.unread_count(user).await?;
    let mut data = Map::new();
    let event = match change {
        InboxChange::Read(ids) => {
            data.insert("ids".to_owned(), json!(ids));
            data.insert("all".to_owned(), json!(false));
            NOTIFICATIONS_READ
        }
        InboxChange::ReadAll => {
            data.insert("ids".to_owned(), json!([]));
            data.insert("all".to_owned(), json!(true));
            NOTIFICATIONS_READ
        }
        InboxChange::Deleted(id) => {
            data.insert("id".to_owned(), json!(id));
            NOTIFICATION_DELETED
        }
    };
    data.insert("unreadCount".to_owned(), json!(unread));
    hub.publish(vec![Outgoing {
        event: event.to_owned(),
        event_id: uuid::Uuid::new_v4().to_string(),
        rooms: vec![format!("user:{}", user.as_str())],
        data,
    }])
    .await;
    Ok(())
}
