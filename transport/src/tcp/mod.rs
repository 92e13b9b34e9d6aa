//! TCP: the baseline transport. The server is driven by tokio; the client is blocking, with
//! deadlines, so a call costs one write and one read on the calling thread.

mod client;
mod server;

pub use client::{TcpConnection, TcpConnector};
pub use server::{serve, ServeOptions};

/// Name advertised for this transport.
pub const NAME: &str = "tcp";
