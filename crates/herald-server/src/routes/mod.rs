//! HTTP handlers, one module per resource of contract §7, and `webhooks`
//! for providers reporting delivery status.

pub mod admin;
pub mod admin_routing;
pub mod audit;
pub mod console;
pub mod deliveries;
pub mod events;
pub mod health;
pub mod inbox;
pub mod openapi;
pub mod privacy;
pub mod unsubscribe;
pub mod users;
pub mod webhooks;
