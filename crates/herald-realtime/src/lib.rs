//! Herald's realtime hub: Socket.IO v4 and plain WebSocket transports over
//! one set of rooms, subscription authorisation, resume from a room offset,
//! and the cross-node bus.
//!
//! The crate is part of the workspace layout from the start so that the
//! dependency order (`core` ← `realtime` ← `server`) is fixed; the hub
//! arrives with the realtime gateway.
