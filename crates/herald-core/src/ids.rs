//! Identifiers.
//!
//! Users are identified by whatever the platform puts in a token's `sub`
//! (usually a UUID, but Herald does not insist). Everything Herald creates is
//! a UUID: v7 where time order helps an index, v5 where an id must be derived
//! from a producer's idempotency key.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The namespace for event ids derived from non-UUID idempotency keys.
const EVENT_KEY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1d_2f0e_8c4a_4d7e_9a35_21c0_f4e8_b7d1);

/// The longest idempotency key Herald accepts.
pub const MAX_KEY_LEN: usize = 200;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// One published event; also the `eventId` clients see.
    EventId
);
uuid_id!(
    /// One inbox entry: an event as it concerns one recipient.
    NotificationId
);
uuid_id!(
    /// One (notification, channel) delivery.
    DeliveryId
);
uuid_id!(
    /// One registered push device (FCM token or Web Push subscription).
    DeviceId
);

impl EventId {
    /// The event id for a producer's idempotency key: the key itself when it
    /// is a UUID, otherwise a UUID v5 derived from it, so the same key always
    /// names the same event.
    pub fn from_key(key: &str) -> Self {
        match Uuid::parse_str(key) {
            Ok(id) => Self(id),
            Err(_) => Self(Uuid::new_v5(&EVENT_KEY_NAMESPACE, key.as_bytes())),
        }
    }
}

/// A user, as named by a token's `sub` or by an event's `guestId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_keys_are_used_as_is_and_others_are_derived_stably() {
        let id = Uuid::new_v4();
        assert_eq!(EventId::from_key(&id.to_string()).0, id);
        let a = EventId::from_key("txn-42");
        assert_eq!(a, EventId::from_key("txn-42"));
        assert_ne!(a, EventId::from_key("txn-43"));
    }
}
