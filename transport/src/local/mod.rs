//! Same-node transport: a Unix domain socket in the runtime directory.
//!
//! Frames are the same as over TCP; in addition the socket carries file descriptors
//! (`SCM_RIGHTS`) so a server can hand its memory segments to clients, and the server learns
//! the client's user id (`SO_PEERCRED`) to decide whether it may map them.

mod client;
mod server;

pub use client::{LocalConnection, LocalConnector, UnixSocket};
pub use server::serve;

/// Name advertised for this transport.
pub const NAME: &str = "local";

/// Most descriptors one reply may carry.
pub const MAX_FDS_PER_REPLY: usize = 32;
