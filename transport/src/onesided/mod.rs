//! One-sided data planes (UCX, libfabric): clients read object bytes straight out of the
//! server's registered arena segments.
//!
//! The control messages keep flowing over the TCP connection; only object bytes move
//! one-sided. A server [`Exporter`] registers arena segments whole (once each) and hands out
//! their remote keys; a get on a connection that asked for one-sided replies
//! ([`dimstore_proto::Request::UseOneSided`]) answers with
//! [`dimstore_proto::GetItem::Remote`] items (segment, offset, lease). The client's
//! [`OneSidedConnection`] fetches the segment keys it lacks, reads the bytes with its
//! [`Reader`] into the reply buffer, releases the leases and returns an ordinary reply: the
//! client above it cannot tell the difference.
//!
//! A fabric is one [`OneSidedBackend`] (its name, how to start both sides, when `auto`
//! prefers it), listed once in the `dimstore-backends` registry.
//!
//! Each implementation owns its C objects on one thread per process (the "fabric thread"),
//! which sleeps on the library's wait fd when idle and serves peers' emulated one-sided
//! operations (UCX over tcp, libfabric's manual-progress providers) as they come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore_arena::Segment;

use crate::{AlignedBuf, TransportError};

mod backend;
mod connection;
pub mod plan;
mod target;
mod thread;

pub use backend::{
    auto_order, ClientSide, ControlInterface, LoopbackVariant, OneSidedBackend, RdmaHardware,
};
// Where the client found them before the channels had a module of their own.
pub use crate::channel::{ChannelConnection, Messenger};
pub use connection::OneSidedConnection;
pub use target::{IncomingTarget, ReadChunk, ReadTarget};
pub use thread::{CommandSender, FabricThread, Startup, Wake};

/// Largest piece one read operation moves; longer objects are read in chunks of this size.
pub const DEFAULT_CHUNK: usize = 4 << 20;

/// Read operations in flight per peer at most (over tcp, many large emulated reads in
/// flight collapse the bandwidth).
pub const DEFAULT_IN_FLIGHT: usize = 2;

/// Objects below this size come inline in the get reply rather than by a one-sided read
/// (the read needs an extra round trip plus a release notice).
pub const DEFAULT_ONE_SIDED_FROM: u64 = 64 << 10;

/// How often a caller waiting for a fabric thread's answer asks whether the server is gone.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// What one wait for a fabric thread's answer saw.
#[derive(Debug)]
pub enum Answer<T> {
    /// The answer.
    Ready(T),
    /// Nothing yet.
    Pending,
    /// The fabric thread dropped the request (it stopped).
    Stopped,
}

/// Waits until `give_up` for a fabric thread's answer, `recv` waiting at most the given
/// time each round; between rounds, a `gone` server ends the wait with
/// [`TransportError::ConnectionLost`]. `Stopped` becomes [`TransportError::OneSided`] of
/// `transport`; a wait past `give_up`, [`TransportError::Timeout`].
pub fn wait_for_answer<T>(
    mut recv: impl FnMut(Duration) -> Answer<T>,
    give_up: Instant,
    gone: &dyn Fn() -> bool,
    transport: &str,
) -> Result<T, TransportError> {
    loop {
        let slice = give_up
            .saturating_duration_since(Instant::now())
            .min(LIVENESS_CHECK);
        match recv(slice) {
            Answer::Ready(answer) => return Ok(answer),
            Answer::Stopped => {
                return Err(TransportError::OneSided {
                    transport: transport.to_owned(),
                    source: "the fabric thread stopped during the operation".into(),
                })
            }
            Answer::Pending if Instant::now() >= give_up => return Err(TransportError::Timeout),
            Answer::Pending if gone() => {
                return Err(TransportError::ConnectionLost(
                    "the server closed its connection during the operation".into(),
                ))
            }
            Answer::Pending => {}
        }
    }
}

/// Where a registered segment can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRegion {
    /// Remote address of the first byte, as the transport's read wants it.
    pub address: u64,
    /// Packed remote key.
    pub key: Vec<u8>,
}

/// The server side of a one-sided transport: registers segments for peers to read.
pub trait Exporter: Send + Sync + 'static {
    /// Transport name as advertised (`"ucx"`, `"ofi"`).
    fn name(&self) -> &'static str;

    /// Provider or device detail, for logs and stats (e.g. `tcp;ofi_rxm`, `UCX_TLS=tcp`).
    fn detail(&self) -> String;

    /// The address peers connect to (UCX worker address, libfabric endpoint name).
    fn address(&self) -> Vec<u8>;

    /// Registers segment `id` (once: later calls return the same region) and returns where
    /// peers read it. The registration keeps the segment mapped until [`Exporter::sweep`]
    /// sees that nobody else holds it any more.
    fn export(&self, id: u32, segment: &Arc<Segment>) -> Result<RemoteRegion, TransportError>;

    /// Drops the registrations of segments the arena has released.
    fn sweep(&self);

    /// Registrations alive now.
    fn live_registrations(&self) -> u64;

    /// Starts serving requests on the fabric's own messages for `host` (see [`crate::channel`]).
    /// Transports without request messaging refuse with
    /// [`TransportError::Unavailable`].
    fn serve_rpc(&self, host: Arc<dyn crate::channel::RpcHost>) -> Result<(), TransportError> {
        let _ = host;
        Err(TransportError::Unavailable {
            transport: self.name().to_owned(),
            source: "requests travel on the TCP connection with this transport".into(),
        })
    }
}

/// One region to read.
#[derive(Debug, Clone, Copy)]
pub struct RemoteRead<'a> {
    /// Remote address of the first byte.
    pub address: u64,
    /// The packed remote key of the region's segment.
    pub key: &'a [u8],
    /// Bytes to read.
    pub len: usize,
    /// Where they land in the target buffer.
    pub offset: usize,
}

/// The client side of a one-sided transport: reads registered memory of servers.
pub trait Reader: Send + Sync + 'static {
    /// Transport name (`"ucx"`, `"ofi"`).
    fn name(&self) -> &'static str;

    /// Reads every `reads` region of the peer at `peer` (its advertised address) into
    /// `target` at the region's offset, within `deadline`. On error, the target may have
    /// been partly written; nothing is read after the call returns.
    fn read(
        &self,
        peer: &[u8],
        reads: &[RemoteRead<'_>],
        target: AlignedBuf,
        deadline: Instant,
    ) -> Result<AlignedBuf, TransportError> {
        self.read_watching(peer, reads, target, deadline, &|| false)
    }

    /// [`read`](Self::read), asking `gone` now and then (every [`LIVENESS_CHECK`]) whether
    /// the server is known to be dead, which fabrics such as shared memory cannot tell:
    /// then it fails at once with [`TransportError::ConnectionLost`] instead of at the
    /// deadline (the read's buffer stays with the fabric until its own deadline).
    fn read_watching(
        &self,
        peer: &[u8],
        reads: &[RemoteRead<'_>],
        target: AlignedBuf,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<AlignedBuf, TransportError>;

    /// Forgets the endpoint to `peer` and every key unpacked for it (the server restarted
    /// or its connection broke).
    fn forget(&self, peer: &[u8]);
}
