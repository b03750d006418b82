//! herald-channels
