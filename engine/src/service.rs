//! The contract between the engine and the server's request handling.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;

use dimstore_proto::{ErrorReply, Request, Response};

use crate::ChannelTable;

/// A response and the payload pieces that follow it on the wire.
#[derive(Debug)]
pub struct Reply<S> {
    /// The response message.
    pub response: Response,
    /// Payload pieces, sent back to back after the message; held until sent.
    pub payload: Vec<S>,
    /// File descriptors passed along (same-node transports only; dropped elsewhere).
    pub fds: Vec<OwnedFd>,
}

impl<S> Reply<S> {
    /// A reply without payload.
    pub fn message(response: Response) -> Self {
        Reply {
            response,
            payload: Vec::new(),
            fds: Vec::new(),
        }
    }

    /// An error reply.
    pub fn error(error: ErrorReply) -> Self {
        Reply::message(Response::Error(error))
    }
}

/// A boxed future producing a reply later.
pub type DeferredReply<S> = Pin<Box<dyn Future<Output = Reply<S>> + Send + 'static>>;

/// How a service answers a request.
// Ready is the per-request hot path and lives on the stack; boxing it to shrink the rare
// Deferred case would allocate on every request.
#[allow(clippy::large_enum_variant)]
pub enum Outcome<S> {
    /// The reply is ready now.
    Ready(Reply<S>),
    /// The reply comes later (a get waiting for a deferred object). The transport keeps
    /// serving the connection's other requests meanwhile.
    Deferred(DeferredReply<S>),
}

/// Who connected.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Address, for logs.
    pub address: String,
    /// The peer process's user id, where the transport can tell (Unix sockets).
    pub uid: Option<u32>,
}

/// The server-side logic the engine dispatches to. One value serves every connection of
/// every transport.
pub trait Service: Send + Sync + 'static {
    /// Per-connection state (authentication, leases, counters). Dropped when the connection
    /// closes.
    type Session: Send + 'static;
    /// Memory an incoming payload is read into.
    type Sink: AsMut<[u8]> + Send + 'static;
    /// Memory an outgoing payload is written from.
    type Source: AsRef<[u8]> + Send + Sync + 'static;

    /// A connection opened on `transport` from `peer`.
    fn open_session(&self, transport: &'static str, peer: PeerInfo) -> Self::Session;

    /// Whether `session` has completed its handshake (a `Hello` with the right token).
    /// Until then a stream connection accepts only a small body without payload per frame,
    /// and is closed if the handshake does not complete within its stall timeout.
    fn authenticated(&self, session: &Self::Session) -> bool;

    /// Where the `payload_len` bytes following `request` must land: pieces whose lengths add
    /// up to `payload_len`. An error is sent back after the payload has been discarded.
    fn payload_sinks(
        &self,
        session: &mut Self::Session,
        request: &Request,
        payload_len: u64,
    ) -> Result<Vec<Self::Sink>, ErrorReply>;

    /// Handles a request whose payload has been received into `payload`.
    fn handle(
        &self,
        session: &mut Self::Session,
        request: Request,
        payload: Vec<Self::Sink>,
    ) -> Outcome<Self::Source>;

    /// Counts object bytes a transport has sent.
    fn record_sent(&self, transport: &'static str, bytes: u64);

    /// Counts request payload bytes a transport pulled from a client's buffer.
    fn record_pulled(&self, transport: &'static str, bytes: u64) {
        let _ = (transport, bytes);
    }

    /// Counts a connection `transport` closed as soon as it was accepted, because the
    /// server holds as many connections as its limits allow.
    fn record_refused(&self, transport: &'static str) {
        let _ = transport;
    }

    /// The channels opened on fabric messages ([`MessageEngine`](crate::MessageEngine)),
    /// for services that offer them.
    fn channels(&self) -> Option<&ChannelTable<Self::Session>> {
        None
    }
}
