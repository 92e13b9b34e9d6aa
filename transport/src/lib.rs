//! dimstore transports.
//!
//! A transport moves [`dimstore_proto`] frames between clients and a server. It is modelled on
//! Mercury/Margo: small RPC messages plus bulk transfers of object memory, where the buffers
//! handed to the transport are owned by the operation until it completes:
//!
//! - on the server, a [`Service`] tells the transport where an incoming payload must land
//!   ([`Service::payload_sinks`], typically fresh arena memory) *before* it is read, and
//!   answers with a [`Reply`] whose payload pieces are leases on object memory that the
//!   transport holds until the bytes have left;
//! - on the client, a [`Connection`] sends a request with borrowed payload pieces and returns
//!   the reply with its payload in a buffer of its own, always within a deadline.
//!
//! TCP ([`tcp`]) is the first implementation: the server writes object bytes straight from
//! arena memory into the socket. RDMA transports implement the same contract with one-sided
//! reads of registered regions.

use std::os::fd::OwnedFd;
use std::time::Instant;

use dimstore_proto::{FrameLimits, Request, Response};

mod accept;
mod buffer;
pub mod channel;
mod error;
mod gate;
pub mod local;
pub mod mux;
pub mod onesided;
mod serve;
pub mod tcp;

pub use buffer::AlignedBuf;
pub use dimstore_engine::{DeferredReply, Outcome, PeerInfo, Reply, Service};
pub use error::{chain, Cause, TransportError};
pub use gate::{Admission, ConnectionGate, ConnectionLimits, Refusal};

/// A reply as a client receives it.
#[derive(Debug)]
pub struct ReplyFrame {
    /// The response message.
    pub response: Response,
    /// The payload, 16-byte aligned so archived objects can be accessed in place.
    pub payload: AlignedBuf,
    /// File descriptors that came with the reply (segments of a same-node server).
    pub fds: Vec<OwnedFd>,
}

/// Largest reply body a client accepts, whatever the request.
pub const MAX_REPLY_BODY: u32 = 16 << 20;

/// Body bytes a reply may take for each item its request names (an id, a size, a key to
/// reserve): a get item, an id or a flag archives to far less.
const REPLY_BODY_PER_ITEM: u32 = 64;

/// Body bytes any reply may take besides its items (an error message, a Hello, stats).
const REPLY_BODY_BASE: u32 = 64 << 10;

/// Body bytes a reply may take per segment key (a packed remote key is a few hundred
/// bytes).
const REPLY_BODY_PER_SEGMENT_KEY: u32 = 4 << 10;

/// What a reply to `request` may legitimately carry: a body sized for the items the request
/// names (at most [`MAX_REPLY_BODY`]) and at most `payload` bytes of payload. A client
/// checks a reply's frame header against it before it allocates anything.
pub fn reply_limits(request: &Request, payload: u64) -> FrameLimits {
    let (items, per_item) = match request {
        Request::Get { ids, .. }
        | Request::Exists { ids }
        | Request::Evict { ids }
        | Request::Set { ids, .. }
        | Request::GetAndEvict { ids }
        | Request::Extend { ids, .. } => (ids.len(), REPLY_BODY_PER_ITEM),
        Request::Put { sizes }
        | Request::PutWith { sizes, .. }
        | Request::Create { sizes }
        | Request::Seal {
            reservations: sizes,
            ..
        } => (sizes.len(), REPLY_BODY_PER_ITEM),
        Request::MapSegments { ids } => (ids.len(), REPLY_BODY_PER_ITEM),
        Request::NewKeys { count } => (*count as usize, REPLY_BODY_PER_ITEM),
        Request::SegmentKeys { ids } => (ids.len(), REPLY_BODY_PER_SEGMENT_KEY),
        _ => (0, 0),
    };
    let items = u32::try_from(items).unwrap_or(u32::MAX);
    FrameLimits {
        max_body: items
            .saturating_mul(per_item)
            .saturating_add(REPLY_BODY_BASE)
            .min(MAX_REPLY_BODY),
        max_payload: payload,
    }
}

/// Opens client connections of one transport.
pub trait Connector: Send + Sync + 'static {
    /// The connection type.
    type Connection: Connection;

    /// The transport's name as advertised in handshakes (`"tcp"`, ...).
    fn name(&self) -> &'static str;

    /// Connects to the server at `address`, giving up at `deadline` (with
    /// [`TransportError::Timeout`]).
    fn connect(&self, address: &str, deadline: Instant)
        -> Result<Self::Connection, TransportError>;
}

/// A client connection to one server, shared by every thread of the process: calls from
/// several threads are multiplexed over it.
pub trait Connection: Send + Sync + 'static {
    /// Sends `request` followed by the `payload` pieces and waits for the reply until
    /// `deadline`. The reply may carry at most `reply_payload` payload bytes (0 for
    /// anything but a get; for a get, what its keys can hold) and a body sized for the
    /// request ([`reply_limits`]): a reply announcing more is refused before anything is
    /// allocated. A call ends by its deadline (plus a scheduling slack), with
    /// [`TransportError::Timeout`] once the deadline passed, whatever the server does.
    fn call(
        &self,
        request: &Request,
        payload: &[&[u8]],
        reply_payload: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError>;

    /// Sends a one-way notice (no reply), e.g. releasing leases.
    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError>;

    /// Whether the connection has failed and must be replaced.
    fn is_broken(&self) -> bool;

    /// Whether the server is known to be gone: broken, or (where the transport can tell
    /// without blocking) closed by the peer while idle.
    fn peer_closed(&self) -> bool {
        self.is_broken()
    }
}

impl<C: Connection + ?Sized> Connection for std::sync::Arc<C> {
    fn call(
        &self,
        request: &Request,
        payload: &[&[u8]],
        reply_payload: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        (**self).call(request, payload, reply_payload, deadline)
    }

    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError> {
        (**self).notify(request, deadline)
    }

    fn is_broken(&self) -> bool {
        (**self).is_broken()
    }

    fn peer_closed(&self) -> bool {
        (**self).peer_closed()
    }
}

#[cfg(test)]
mod tests {
    use dimstore_proto::{encode_response, GetItem, ObjectId, SegmentKey};

    use super::*;

    #[test]
    fn the_largest_legitimate_replies_fit_their_requests_bounds() {
        for n in [0usize, 1, 100, 10_000] {
            let get = Request::Get {
                ids: vec![ObjectId(u128::MAX); n],
                wait_ms: 0,
            };
            let items = vec![
                GetItem::Remote {
                    size: u64::MAX,
                    segment: u32::MAX,
                    offset: u64::MAX,
                    lease: u64::MAX,
                };
                n
            ];
            let body = encode_response(&Response::Get { items });
            let limits = reply_limits(&get, 0);
            assert!(body.len() <= limits.max_body as usize, "{n} get items");

            let new_keys = Request::NewKeys { count: n as u32 };
            let ids = vec![ObjectId(u128::MAX); n];
            let body = encode_response(&Response::NewKeys { ids });
            assert!(body.len() <= reply_limits(&new_keys, 0).max_body as usize);

            let segments = Request::SegmentKeys {
                ids: vec![u32::MAX; n.min(100)],
            };
            let keys = vec![
                SegmentKey {
                    id: u32::MAX,
                    address: u64::MAX,
                    key: vec![0xff; 2048],
                };
                n.min(100)
            ];
            let body = encode_response(&Response::SegmentKeys { keys });
            assert!(body.len() <= reply_limits(&segments, 0).max_body as usize);
        }
        // A payload is allowed only where the caller says so.
        assert_eq!(reply_limits(&Request::Stats, 0).max_payload, 0);
        assert_eq!(
            reply_limits(&Request::NewKeys { count: u32::MAX }, 0).max_body,
            MAX_REPLY_BODY
        );
    }
}
