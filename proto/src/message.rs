//! Messages: the bodies of request and response frames.
//!
//! Bodies are rkyv archives. A receiver decodes them with [`decode_request`] /
//! [`decode_response`], which validate the archive with bytecheck before touching it: bytes
//! from the network are never accessed unchecked. Every operation is a batch (a single put is
//! a batch of one), so batches cost one round trip and share one code path.
//!
//! Object bytes never go through the serializer: a put's payload is the concatenation of the
//! objects in `sizes` order, a get's reply payload the concatenation of the found objects.

use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::key::ObjectId;
use crate::status::ErrorReply;

/// First request on every connection: who the client is and the fleet token.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Hello {
    /// Fleet token; required when the server was started with one.
    pub token: Option<String>,
    /// Node identity of the client (used to decide "same node").
    pub client_node: String,
    /// Process id of the client, for diagnostics.
    pub client_pid: u32,
    /// On a same-node connection: answer gets with mapped items (the client maps the
    /// server's segments) instead of copying the bytes through the socket.
    pub map: bool,
    /// With `map`: objects smaller than this are copied inline anyway (for small objects a
    /// copy is cheaper than a lease and its release).
    pub map_from: u64,
}

/// The server's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct HelloReply {
    /// Random id of this server instance (changes on restart).
    pub server_id: u64,
    /// Node identity of the server.
    pub node: String,
    /// The control address keys name as owner.
    pub advertised: String,
    /// Server process id.
    pub pid: u32,
    /// Transports the server offers, best first (`"tcp"`, later `"ucx"`, `"ofi"`).
    pub transports: Vec<String>,
    /// Largest single object the server could ever hold (its memory limit).
    pub max_object: u64,
    /// Unix socket same-node clients connect to for mapped access, if offered.
    pub local_socket: Option<String>,
    /// Whether this connection gets mapped replies (same node, same user, asked for).
    pub mapped: bool,
    /// One-sided transports the server exports its memory on, with their addresses (only
    /// sent to authenticated clients: on some providers an address alone grants reads).
    pub one_sided: Vec<OneSidedOffer>,
}

/// A one-sided transport a server offers: clients read object memory with it.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct OneSidedOffer {
    /// Transport name (`"ucx"`, `"ofi"`).
    pub transport: String,
    /// Provider or device detail, for diagnostics (e.g. `tcp;ofi_rxm`).
    pub detail: String,
    /// The server's transport address (UCX worker address, libfabric endpoint name).
    pub address: Vec<u8>,
}

/// How a client reads one arena segment remotely.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SegmentKey {
    /// Segment id.
    pub id: u32,
    /// Remote address of the segment's first byte (as the transport wants it).
    pub address: u64,
    /// Packed remote key (UCX rkey, or a libfabric MR key as 8 little-endian bytes).
    pub key: Vec<u8>,
}

/// How long an object put with [`Request::PutWith`] lives and who owns it. The server
/// enforces it: an object whose time runs out, or whose owner goes, is evicted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct PutOptions {
    /// Evict the objects this many milliseconds after the put (0: no time to live).
    pub ttl_ms: u64,
    /// A lease: evict the objects unless [`Request::Extend`] renews it within this many
    /// milliseconds (0: no lease). Leased objects are never evicted under memory pressure.
    pub lease_ms: u64,
    /// Owner tag: the objects are evicted together when the connection that put them
    /// closes, or on [`Request::ReleaseOwner`] with this tag.
    pub owner: Option<String>,
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Request {
    /// Connection handshake; must come first.
    Hello(Hello),
    /// Store objects of these sizes; the payload holds their bytes back to back.
    Put {
        /// Size of each object, in payload order.
        sizes: Vec<u64>,
    },
    /// Fetch objects. Deferred objects not set yet are waited for up to `wait_ms`.
    Get {
        /// Objects to fetch.
        ids: Vec<ObjectId>,
        /// How long to wait for deferred objects to be set.
        wait_ms: u64,
    },
    /// Ask which objects exist (set deferred objects count as existing).
    Exists {
        /// Objects to check.
        ids: Vec<ObjectId>,
    },
    /// Remove objects. Unknown ids are not an error.
    Evict {
        /// Objects to remove.
        ids: Vec<ObjectId>,
    },
    /// Reserve ids for objects that will be set later.
    NewKeys {
        /// How many ids to reserve.
        count: u32,
    },
    /// Set reserved objects; the payload holds their bytes back to back.
    Set {
        /// Reserved ids, from [`Request::NewKeys`].
        ids: Vec<ObjectId>,
        /// Size of each object, in payload order.
        sizes: Vec<u64>,
    },
    /// Report server statistics.
    Stats,
    /// Stop the server (requires the fleet token when one is set).
    Shutdown,
    /// Same node: send the file descriptors of these arena segments (attached to the reply)
    /// so the client can map them.
    MapSegments {
        /// Segment ids.
        ids: Vec<u32>,
    },
    /// Same node: reserve writable space for objects the client writes in place.
    Create {
        /// Capacity of each reservation.
        sizes: Vec<u64>,
    },
    /// Same node: make reserved objects visible, each with its final length.
    Seal {
        /// Reservation ids from [`Response::Created`].
        reservations: Vec<u64>,
        /// Bytes written in each (at most its capacity).
        lens: Vec<u64>,
    },
    /// Notice: the client no longer reads these mapped objects.
    Release {
        /// Lease ids from [`GetItem::Mapped`].
        leases: Vec<u64>,
    },
    /// Notice: drop reservations that will not be sealed.
    Abort {
        /// Reservation ids.
        reservations: Vec<u64>,
    },
    /// Answer gets of objects of `from` bytes or more on this connection with
    /// [`GetItem::Remote`] items, read one-sided over `transport` (one of
    /// [`HelloReply::one_sided`]).
    UseOneSided {
        /// Transport name.
        transport: String,
        /// Smaller objects still come inline.
        from: u64,
    },
    /// Remote keys of these arena segments on the connection's one-sided transport.
    SegmentKeys {
        /// Segment ids.
        ids: Vec<u32>,
    },
    /// Open a channel on `transport`'s own messages (UCX active messages): later requests
    /// may travel there instead of on this connection. The channel is a session of its own,
    /// authenticated by this one, and closes with it. `address` is the client's address on
    /// that transport, where replies go.
    OpenChannel {
        /// Transport name (one of [`HelloReply::one_sided`]).
        transport: String,
        /// The client's address on that transport.
        address: Vec<u8>,
    },
    /// [`Request::Put`] with lifetimes: a time to live, a lease, an owner.
    PutWith {
        /// Size of each object, in payload order.
        sizes: Vec<u64>,
        /// Lifetime of every object of the batch.
        options: PutOptions,
    },
    /// Fetch objects and evict them in the same step (consume once): of racing getters,
    /// exactly one gets each object, the others find it gone.
    GetAndEvict {
        /// Objects to fetch and evict.
        ids: Vec<ObjectId>,
    },
    /// Evict every object put under this owner tag (answered with [`Response::Released`]).
    ReleaseOwner {
        /// The owner tag of [`PutOptions::owner`].
        owner: String,
    },
    /// Renew the leases of objects put with [`PutOptions::lease_ms`]: they now expire
    /// `lease_ms` from now (answered with [`Response::Exists`]: `true` where renewed).
    Extend {
        /// Leased objects.
        ids: Vec<ObjectId>,
        /// New lease length in milliseconds.
        lease_ms: u64,
    },
    /// Run a function of a WebAssembly module over objects of this server (see [`Invoke`]).
    Invoke(Invoke),
}

/// SHA-256 of a WebAssembly module's bytes: the name a server caches its compiled form by.
pub type ModuleHash = [u8; 32];

/// Run `function` of the module `module` over the objects `ids`, in a sandbox on their
/// owner. The payload holds the module's bytes when `with_module` is set (a server that
/// does not know the hash otherwise answers `ModuleUnknown`, and the client sends it again
/// with the bytes).
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Invoke {
    /// Input objects, in the order the function sees them (`input_count`, `read`).
    pub ids: Vec<ObjectId>,
    /// SHA-256 of the module's bytes.
    pub module: ModuleHash,
    /// The payload is the module's bytes.
    pub with_module: bool,
    /// Exported function to call, of type `() -> i32`.
    pub function: String,
    /// Bytes the function reads with `read_arg`.
    pub arg: Vec<u8>,
    /// Store the output as a new object on this server and answer its id, instead of
    /// returning the bytes.
    pub to_key: bool,
}

/// The answer to an [`Invoke`] whose function ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum Invoked {
    /// The function returned 0; the payload is its output, `size` bytes.
    Output {
        /// Output size.
        size: u64,
    },
    /// The function returned 0; its output was stored as a new object.
    Stored {
        /// The new object's id.
        id: ObjectId,
        /// Its size.
        size: u64,
    },
    /// The function returned `code`, not 0: its own failure, reported to the caller.
    Failed {
        /// The returned value.
        code: i32,
    },
}

/// Per-object outcome of a get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug))]
pub enum GetItem {
    /// Found; `size` bytes of the reply payload belong to this object.
    Found {
        /// Object size.
        size: u64,
    },
    /// No such object.
    NotFound,
    /// Reserved, but not set within the wait.
    NotSet,
    /// Found, and readable in place in the server's segment (same-node connections). The
    /// object stays valid until the client releases `lease`.
    Mapped {
        /// Object size.
        size: u64,
        /// Arena segment holding it.
        segment: u32,
        /// Offset in the segment.
        offset: u64,
        /// Lease to release when done reading.
        lease: u64,
    },
    /// Found, and to be read one-sided from the server's registered segment (connections
    /// that asked with [`Request::UseOneSided`]). The object stays valid until the client
    /// releases `lease`.
    Remote {
        /// Object size.
        size: u64,
        /// Arena segment holding it (its key: [`Request::SegmentKeys`]).
        segment: u32,
        /// Offset in the segment.
        offset: u64,
        /// Lease to release when the read is done.
        lease: u64,
    },
    /// The object was stored but is gone, and not by a client's [`Request::Evict`] (which
    /// answers [`GetItem::NotFound`] afterwards): the server evicted it (memory pressure,
    /// its time to live or lease ran out, its owner was released or closed), or a
    /// [`Request::GetAndEvict`] consumed it. Remembered for a bounded number of recent
    /// evictions; older ones answer `NotFound`.
    Evicted,
}

/// An arena segment as announced to a same-node client (its fd travels with the reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct SegmentInfo {
    /// Segment id.
    pub id: u32,
    /// Length in bytes.
    pub len: u64,
}

/// Writable space reserved for an in-place put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub struct Reservation {
    /// Reservation id, for [`Request::Seal`] / [`Request::Abort`].
    pub id: u64,
    /// Arena segment holding it.
    pub segment: u32,
    /// Offset in the segment.
    pub offset: u64,
    /// Bytes available.
    pub capacity: u64,
}

/// Per-transport counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct TransportStats {
    /// Transport name.
    pub name: String,
    /// Connections open now.
    pub connections: u64,
    /// Connections closed as soon as they were accepted since start: the server held as
    /// many unauthenticated connections, or connections in all, as its limits allow.
    pub refused_connections: u64,
    /// Object bytes sent to clients by this transport.
    pub bytes_served: u64,
    /// Of which moved by one-sided reads of registered memory (counted as the server hands
    /// out the regions: the reads themselves do not involve it).
    pub one_sided_bytes: u64,
    /// Memory registrations alive now (one-sided transports).
    pub registrations: u64,
    /// Request payload bytes the server pulled from clients' buffers (large puts on a
    /// channel, UCX rendezvous) rather than received inline.
    pub pulled_bytes: u64,
}

/// Counters of function invocations ([`Request::Invoke`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct FunctionStats {
    /// Invocations received.
    pub invocations: u64,
    /// Of which failed (a trap, a limit, a nonzero return, an unknown module...).
    pub failures: u64,
    /// Modules received as payload (the client sent the bytes, not only the hash).
    pub modules_received: u64,
    /// Invocations that found their module compiled in the cache.
    pub cache_hits: u64,
    /// Compiled modules cached now.
    pub cached_modules: u64,
    /// Bytes of the cached modules (their WebAssembly size).
    pub cached_bytes: u64,
    /// Invocations running now.
    pub running: u64,
}

/// Server statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct ServerStats {
    /// Server process id.
    pub pid: u32,
    /// Node identity.
    pub node: String,
    /// Control address.
    pub advertised: String,
    /// Random id of this server instance.
    pub server_id: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Objects stored (set).
    pub objects: u64,
    /// Deferred objects reserved but not set.
    pub reserved: u64,
    /// Bytes of object memory in use.
    pub bytes_used: u64,
    /// Configured memory limit.
    pub memory_limit: u64,
    /// Bytes of arena memory mapped (grows in segments).
    pub arena_mapped: u64,
    /// Arena segments mapped.
    pub arena_segments: u64,
    /// Objects stored since start.
    pub puts: u64,
    /// Objects requested since start.
    pub gets: u64,
    /// Of which found.
    pub get_hits: u64,
    /// Objects evicted since start.
    pub evictions: u64,
    /// Puts refused for lack of memory.
    pub store_full: u64,
    /// Requests served since start.
    pub requests: u64,
    /// Objects handed to same-node clients as mappings.
    pub mapped_gets: u64,
    /// Objects copied through a same-node socket (mapping not asked for, refused, or the
    /// object below the client's mapping threshold).
    pub copied_local_gets: u64,
    /// Objects clients hold now (leases of mapped and one-sided reads).
    pub leases: u64,
    /// Leases of one-sided reads the server ended at their deadline since start.
    pub expired_leases: u64,
    /// In-place reservations not sealed yet.
    pub reservations: u64,
    /// Function invocations and their module cache (zero when functions are off).
    pub functions: FunctionStats,
    /// Per-transport counters.
    pub transports: Vec<TransportStats>,
    /// CPU and memory binding of the server's threads (e.g. `cpus 0-1 (numa 0, near eth0)`,
    /// or `none: ...` with the reason).
    pub binding: String,
    /// Service time and bytes per operation and transport (at most
    /// [`crate::MAX_OP_STATS`] entries).
    pub ops: Vec<crate::OpStats>,
    /// Lifetimes and memory pressure (boxed: keeps [`Response`] small).
    pub pressure: Box<PressureStats>,
}

/// Counters of object lifetimes and memory pressure (part of [`ServerStats`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Archive, Serialize, Deserialize)]
pub struct PressureStats {
    /// Eviction policy (`none`, `lru`, `lfu`, `fifo`).
    pub policy: String,
    /// Objects the policy dropped to make room for puts since start.
    pub policy_evictions: u64,
    /// Objects whose time to live or lease ran out since start.
    pub expired: u64,
    /// Objects evicted with their owner (connection closed or released) since start.
    pub owner_evictions: u64,
    /// Objects consumed by get-and-evict since start.
    pub consumed: u64,
    /// Objects with a time to live, a lease or an owner now.
    pub with_lifetime: u64,
    /// Bytes of objects spilled now (on disk only, not in memory).
    pub spilled_bytes: u64,
    /// Objects spilled now.
    pub spilled_objects: u64,
    /// Bytes of spill files kept for objects restored to memory unchanged: spilling one of
    /// them again writes nothing (counted against the spill limit, given up when it is
    /// reached).
    pub spill_kept_bytes: u64,
    /// Objects spilled again by going back to their kept file, without a write, since start.
    pub respills: u64,
    /// Objects read back from spill files since start.
    pub restores: u64,
    /// Spills that failed (disk full, spill limit, I/O error) since start; the objects
    /// stayed in memory.
    pub spill_failures: u64,
    /// Bytes written to spill files since start.
    pub spill_written: u64,
    /// Nanoseconds during which a spill write was in flight (writes overlap; the spill
    /// bandwidth is `spill_written / spill_write_ns`).
    pub spill_write_ns: u64,
    /// Bytes read back since start.
    pub spill_read: u64,
    /// Nanoseconds during which a restore read was in flight.
    pub spill_read_ns: u64,
}

/// A server response.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    Hello(HelloReply),
    /// Ids of the stored objects, in request order.
    Put {
        /// New ids.
        ids: Vec<ObjectId>,
    },
    /// One item per requested id; payload holds the found objects back to back.
    Get {
        /// Outcome per id.
        items: Vec<GetItem>,
    },
    /// Presence per requested id.
    Exists {
        /// `true` where the object exists.
        present: Vec<bool>,
    },
    /// Whether each id named an object that is now gone.
    Evict {
        /// `true` where an object was removed.
        evicted: Vec<bool>,
    },
    /// Reserved ids.
    NewKeys {
        /// New ids.
        ids: Vec<ObjectId>,
    },
    /// The request succeeded and has nothing to return.
    Done,
    /// Statistics.
    Stats(ServerStats),
    /// Segments whose fds are attached, in order.
    Segments {
        /// Segment ids and lengths.
        segments: Vec<SegmentInfo>,
    },
    /// Remote keys, in request order.
    SegmentKeys {
        /// Keys.
        keys: Vec<SegmentKey>,
    },
    /// Reserved space for in-place puts, in request order.
    Created {
        /// Reservations.
        reservations: Vec<Reservation>,
    },
    /// The request failed as a whole.
    Error(ErrorReply),
    /// Answer to [`Request::OpenChannel`]: the channel id its messages carry.
    Channel {
        /// Random id, only told to this connection.
        id: u64,
    },
    /// Answer to [`Request::Invoke`].
    Invoked(Invoked),
    /// Answer to [`Request::ReleaseOwner`].
    Released {
        /// Objects evicted.
        objects: u64,
    },
}

/// A message body that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message body: {0}")]
pub struct DecodeError(pub String);

/// Serializes a request body.
pub fn encode_request(request: &Request) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(request).unwrap_or_else(|e| unreachable_encode(&e))
}

/// Serializes a response body.
pub fn encode_response(response: &Response) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(response).unwrap_or_else(|e| unreachable_encode(&e))
}

/// Serializing into a growable buffer has no failure path for these plain types.
fn unreachable_encode(e: &rancor::Error) -> ! {
    panic!("rkyv serialization into a growable buffer failed: {e}")
}

/// Validates and decodes a request body. `body` must be 16-byte aligned (use an
/// [`AlignedVec`] as the receive buffer); misaligned input is rejected, not misread.
pub fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    rkyv::from_bytes::<Request, rancor::Error>(body).map_err(|e| DecodeError(e.to_string()))
}

/// Validates and decodes a response body (same alignment rule as [`decode_request`]).
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    rkyv::from_bytes::<Response, rancor::Error>(body).map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;
    use proptest::prelude::*;

    fn aligned(bytes: &[u8]) -> AlignedVec {
        let mut v = AlignedVec::new();
        v.extend_from_slice(bytes);
        v
    }

    fn arb_ids() -> impl Strategy<Value = Vec<ObjectId>> {
        proptest::collection::vec(any::<u128>().prop_map(ObjectId), 0..20)
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<Option<String>>(), ".{0,20}", any::<u32>()).prop_map(|(token, node, pid)| {
                Request::Hello(Hello {
                    token,
                    client_node: node,
                    client_pid: pid,
                    map: pid % 2 == 0,
                    map_from: u64::from(pid),
                })
            }),
            proptest::collection::vec(any::<u64>(), 0..20).prop_map(|sizes| Request::Put { sizes }),
            (arb_ids(), any::<u64>()).prop_map(|(ids, wait_ms)| Request::Get { ids, wait_ms }),
            arb_ids().prop_map(|ids| Request::Exists { ids }),
            arb_ids().prop_map(|ids| Request::Evict { ids }),
            any::<u32>().prop_map(|count| Request::NewKeys { count }),
            (arb_ids(), proptest::collection::vec(any::<u64>(), 0..20))
                .prop_map(|(ids, sizes)| Request::Set { ids, sizes }),
            Just(Request::Stats),
            Just(Request::Shutdown),
            proptest::collection::vec(any::<u32>(), 0..5)
                .prop_map(|ids| Request::MapSegments { ids }),
            proptest::collection::vec(any::<u64>(), 0..5)
                .prop_map(|sizes| Request::Create { sizes }),
            (
                proptest::collection::vec(any::<u64>(), 0..5),
                proptest::collection::vec(any::<u64>(), 0..5)
            )
                .prop_map(|(reservations, lens)| Request::Seal { reservations, lens }),
            proptest::collection::vec(any::<u64>(), 0..5)
                .prop_map(|leases| Request::Release { leases }),
            (".{0,5}", proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(transport, address)| Request::OpenChannel { transport, address }),
            proptest::collection::vec(any::<u64>(), 0..5)
                .prop_map(|reservations| Request::Abort { reservations }),
            (
                arb_ids(),
                any::<[u8; 32]>(),
                ".{0,12}",
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(ids, module, function, arg)| Request::Invoke(Invoke {
                    ids,
                    module,
                    with_module: arg.len() % 2 == 0,
                    function,
                    arg,
                    to_key: module[0] % 2 == 0,
                })),
            (
                proptest::collection::vec(any::<u64>(), 0..5),
                any::<(u64, u64, Option<String>)>()
            )
                .prop_map(|(sizes, (ttl_ms, lease_ms, owner))| Request::PutWith {
                    sizes,
                    options: PutOptions {
                        ttl_ms,
                        lease_ms,
                        owner
                    }
                }),
            arb_ids().prop_map(|ids| Request::GetAndEvict { ids }),
            ".{0,10}".prop_map(|owner| Request::ReleaseOwner { owner }),
            (arb_ids(), any::<u64>()).prop_map(|(ids, lease_ms)| Request::Extend { ids, lease_ms }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        let item = prop_oneof![
            any::<u64>().prop_map(|size| GetItem::Found { size }),
            Just(GetItem::NotFound),
            Just(GetItem::NotSet),
            Just(GetItem::Evicted),
            (any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(size, segment, offset, lease)| GetItem::Mapped {
                    size,
                    segment,
                    offset,
                    lease
                }
            ),
        ];
        prop_oneof![
            arb_ids().prop_map(|ids| Response::Put { ids }),
            proptest::collection::vec(item, 0..20).prop_map(|items| Response::Get { items }),
            proptest::collection::vec(any::<bool>(), 0..20)
                .prop_map(|present| Response::Exists { present }),
            Just(Response::Done),
            ".{0,40}".prop_map(|m| Response::Error(ErrorReply::new(Status::StoreFull, m))),
            any::<u64>().prop_map(|id| Response::Channel { id }),
            any::<u64>().prop_map(|size| Response::Invoked(Invoked::Output { size })),
            (any::<u128>(), any::<u64>()).prop_map(|(id, size)| Response::Invoked(
                Invoked::Stored {
                    id: ObjectId(id),
                    size
                }
            )),
            any::<i32>().prop_map(|code| Response::Invoked(Invoked::Failed { code })),
            any::<u64>().prop_map(|objects| Response::Released { objects }),
            (any::<u32>(), ".{0,10}").prop_map(|(pid, node)| Response::Stats(ServerStats {
                pid,
                node,
                transports: vec![TransportStats {
                    name: "tcp".into(),
                    ..Default::default()
                }],
                ops: vec![crate::OpStats {
                    op: "get".into(),
                    transport: "tcp".into(),
                    count: u64::from(pid),
                    p99_ns: 12_345,
                    ..Default::default()
                }],
                ..Default::default()
            })),
        ]
    }

    proptest! {
        #[test]
        fn requests_roundtrip(req in arb_request()) {
            let bytes = encode_request(&req);
            prop_assert_eq!(decode_request(&bytes), Ok(req));
        }

        #[test]
        fn responses_roundtrip(resp in arb_response()) {
            let bytes = encode_response(&resp);
            prop_assert_eq!(decode_response(&bytes), Ok(resp));
        }

        #[test]
        fn random_bodies_are_rejected_or_decoded_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let body = aligned(&bytes);
            let _ = decode_request(&body);
            let _ = decode_response(&body);
        }

        #[test]
        fn corrupted_bodies_never_panic(req in arb_request(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode_request(&req).to_vec();
            if !bytes.is_empty() {
                let i = flip.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            let _ = decode_request(&aligned(&bytes));
        }

        #[test]
        fn truncated_bodies_are_rejected(req in arb_request(), cut in any::<prop::sample::Index>()) {
            let bytes = encode_request(&req);
            let cut = cut.index(bytes.len().max(1));
            let short = aligned(&bytes[..cut]);
            // A strict prefix of an archive is never a valid archive of the same request.
            prop_assert_ne!(decode_request(&short), Ok(req));
        }
    }
}
