//! Who a caller is. Token verification is I/O-free but needs keys from
//! config, so it lives in the server; the shapes live here.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Restaurant,
    Cashier,
    Guest,
    /// Another system (the loyalty platform's backend) publishing events.
    Service,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Restaurant,
        Role::Cashier,
        Role::Guest,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Restaurant => "restaurant",
            Role::Cashier => "cashier",
            Role::Guest => "guest",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Staff belong to one restaurant and must say which.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Restaurant | Role::Cashier)
    }
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub role: Role,
    pub restaurant_id: Option<String>,
}

impl Principal {
    /// May this caller act on `user`'s own resources (inbox, preferences)?
    pub fn is_self_or_admin(&self, user: &str) -> bool {
        self.role == Role::Admin || self.user_id.as_str() == user
    }
}
