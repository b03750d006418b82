//! herald-realtime
