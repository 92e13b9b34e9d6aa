//! The request handler every transport drives: authentication, dispatch, statistics.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dimstore_arena::{Allocation, Writer};
use dimstore_proto::{
    ErrorReply, GetItem, HelloReply, Invoke, Invoked, ObjectId, OneSidedOffer, Request,
    Reservation, Response, SegmentInfo, SegmentKey, ServerStats, Status, TransportStats,
    PROTOCOL_VERSION,
};
use dimstore_transport::channel::{ChannelGuard, ChannelTable};
use dimstore_transport::onesided::Exporter;
use dimstore_transport::{Outcome, PeerInfo, Reply, Service};
use tokio::sync::Notify;

use crate::functions::{FunctionConfig, Functions, Ran};
use crate::metrics::{Op, RequestMetrics, Sample};
use crate::session::{Leases, LiveCounts, Peer, Reservations, MAX_OPEN_RESERVATIONS};
use crate::store::{Lifetime, Lookup, Object, ObjectStore};

/// Channels one connection may open (a client process needs one per server; more would only
/// let a client multiply sessions).
const MAX_CHANNELS_PER_CONNECTION: usize = 4;

/// Longest client fabric address a channel accepts (UCX worker addresses are a few hundred
/// bytes).
const MAX_CHANNEL_ADDRESS: usize = 64 << 10;

/// Longest a get waits for deferred objects, whatever the client asks (with the default
/// `--reserved-ttl`, reservations expire long before).
const MAX_GET_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Identity and policy of the server, fixed at start.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    /// Node identity.
    pub node: String,
    /// Control address keys name.
    pub advertised: String,
    /// Fleet token every connection must present, if any.
    pub token: Option<String>,
    /// Random id of this server instance.
    pub server_id: u64,
    /// Transports offered, best first.
    pub transports: Vec<String>,
    /// Unix socket for same-node clients, if offered.
    pub local_socket: Option<String>,
    /// One-sided transports, told to authenticated clients.
    pub one_sided: Vec<OneSidedOffer>,
    /// How long a one-sided read may hold its lease before the server ends it.
    pub lease_timeout: Duration,
    /// CPU and memory binding of the server's threads, as reported in stats.
    pub binding: String,
    /// Limits of the function sandbox; `None`: functions are off.
    pub functions: Option<FunctionConfig>,
}

/// The dimstore request handler: a cheap handle shared by every transport and session.
#[derive(Debug, Clone)]
pub struct StoreService(Arc<ServiceState>);

impl std::ops::Deref for StoreService {
    type Target = ServiceState;
    fn deref(&self) -> &ServiceState {
        &self.0
    }
}

/// State behind a [`StoreService`].
#[derive(Debug)]
pub struct ServiceState {
    store: ObjectStore,
    identity: ServiceIdentity,
    started: Instant,
    counters: Counters,
    live: Arc<LiveCounts>,
    per_transport: Mutex<Vec<TransportStats>>,
    exporters: Exporters,
    /// One-sided transports whose own messages carry requests ([`Request::OpenChannel`]).
    rpc_transports: Mutex<Vec<&'static str>>,
    /// Channels open on those transports.
    channels: Arc<ChannelTable<Session>>,
    /// Notified when a client asks the server to stop.
    pub shutdown: Arc<Notify>,
    connections: AtomicU64,
    last_activity_ms: AtomicU64,
    /// Service time and bytes per operation and transport.
    metrics: RequestMetrics,
    /// Clients' WebAssembly functions ([`Request::Invoke`]).
    functions: Functions,
}

/// The one-sided transports' server sides, in the order of [`ServiceIdentity::one_sided`].
#[derive(Default)]
pub struct Exporters(pub Vec<Arc<dyn Exporter>>);

impl std::fmt::Debug for Exporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|e| e.name()))
            .finish()
    }
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    get_hits: AtomicU64,
    mapped_gets: AtomicU64,
    copied_local_gets: AtomicU64,
    evictions: AtomicU64,
    store_full: AtomicU64,
    requests: AtomicU64,
}

/// Per-connection state.
#[derive(Debug)]
pub struct Session {
    service: StoreService,
    peer: Peer,
    greeted: bool,
    /// Gets are answered with mappings (same node, same user, asked for).
    mapped: bool,
    /// Smaller objects are copied inline even on a mapped session.
    map_from: u64,
    /// Gets are answered with remote regions for this one-sided transport.
    one_sided: Option<OneSidedUse>,
    leases: Leases,
    reservations: Reservations,
    /// This connection as an in-place writer, from its first `Create` (after the
    /// reservations: the writer's spare segments go once they are freed).
    writer: Option<Writer>,
    /// Whether this is a channel's session (counted with the connection it came from).
    is_channel: bool,
    /// Channels opened from this connection; they close with it.
    channels: Vec<ChannelGuard<Session>>,
    /// When the request being received arrived (set before its payload is read).
    request_started: Option<Instant>,
    /// Owner tags this session put objects under: their objects go when it closes (unless
    /// another session still uses the tag).
    owners: HashSet<Arc<str>>,
}

/// How a get's found objects travel, fixed per session.
struct ReplyPolicy {
    /// Mapped, from this size on.
    mapped: Option<u64>,
    /// One-sided, from the transport's threshold on.
    one_sided: Option<OneSidedUse>,
    /// Leases pinning mapped or remote objects.
    leases: Leases,
    /// When leases of one-sided reads granted now expire.
    lease_deadline: Instant,
    /// A same-node socket (copies are counted).
    local: bool,
}

/// A session's one-sided transport.
#[derive(Debug, Clone, Copy)]
struct OneSidedUse {
    /// Index into [`Exporters`].
    exporter: usize,
    /// Smaller objects come inline.
    from: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Channels first: their sessions end with this one.
        self.channels.clear();
        for owner in self.owners.drain() {
            let evicted = self.service.store.unclaim_owner(&owner);
            if evicted > 0 {
                tracing::info!(peer = %self.peer.address, owner = %owner, evicted, "owner's connection closed: its objects evicted");
            }
        }
        if !self.is_channel {
            self.service.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.service.touch();
        self.service
            .adjust_transport(self.peer.transport, |t| t.connections -= 1);
        if let Some(used) = self.one_sided {
            let name = self.service.exporters.0[used.exporter].name();
            if name != self.peer.transport {
                self.service.adjust_transport(name, |t| t.connections -= 1);
            }
        }
        tracing::debug!(peer = %self.peer.address, "session closed");
    }
}

impl StoreService {
    /// A service over `store`, exporting its memory with `exporters` (one per
    /// [`ServiceIdentity::one_sided`] offer).
    pub fn new(store: ObjectStore, identity: ServiceIdentity, exporters: Exporters) -> Self {
        let per_transport = identity
            .transports
            .iter()
            .map(String::as_str)
            .chain(exporters.0.iter().map(|e| e.name()))
            .map(|name| TransportStats {
                name: name.to_string(),
                ..Default::default()
            })
            .collect::<Vec<TransportStats>>();
        let metrics = RequestMetrics::new(per_transport.iter().map(|t| t.name.clone()));
        let functions = Functions::new(identity.functions.clone());
        StoreService(Arc::new(ServiceState {
            functions,
            store,
            identity,
            started: Instant::now(),
            counters: Counters::default(),
            live: Arc::default(),
            per_transport: Mutex::new(per_transport),
            exporters,
            rpc_transports: Mutex::new(Vec::new()),
            channels: Arc::default(),
            shutdown: Arc::new(Notify::new()),
            connections: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
            metrics,
        }))
    }

    /// The one-sided transports' server sides.
    pub fn exporters(&self) -> &Exporters {
        &self.exporters
    }

    /// Whether the store holds no object and no reservation.
    pub fn is_empty(&self) -> bool {
        self.store.counts() == (0, 0)
    }

    /// Open connections now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Time since the last request or connection change.
    pub fn idle_for(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_activity_ms.load(Ordering::Relaxed)))
    }

    /// Current statistics.
    pub fn stats(&self) -> ServerStats {
        let arena = self.store.arena().stats();
        let (objects, reserved) = self.store.counts();
        let c = &self.counters;
        let pressure = self.store.pressure();
        let server_evictions = pressure.policy_evictions
            + pressure.expired
            + pressure.owner_evictions
            + pressure.consumed;
        ServerStats {
            pid: std::process::id(),
            node: self.identity.node.clone(),
            advertised: self.identity.advertised.clone(),
            server_id: self.identity.server_id,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            objects,
            reserved,
            bytes_used: arena.used,
            memory_limit: arena.capacity,
            arena_mapped: arena.mapped,
            arena_segments: arena.segments,
            puts: c.puts.load(Ordering::Relaxed),
            gets: c.gets.load(Ordering::Relaxed),
            get_hits: c.get_hits.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed) + server_evictions,
            store_full: c.store_full.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            mapped_gets: c.mapped_gets.load(Ordering::Relaxed),
            copied_local_gets: c.copied_local_gets.load(Ordering::Relaxed),
            leases: self.live.leases.load(Ordering::Relaxed),
            expired_leases: self.live.expired_leases.load(Ordering::Relaxed),
            reservations: self.live.reservations.load(Ordering::Relaxed),
            transports: self.transport_stats(),
            binding: self.identity.binding.clone(),
            ops: self.metrics.summaries(),
            functions: self.functions.stats(),
            pressure: Box::new(pressure),
        }
    }

    /// Service time and bytes per operation and transport.
    pub fn request_metrics(&self) -> &RequestMetrics {
        &self.metrics
    }

    /// Records a finished request (its reply is ready): object bytes received (`bytes_in`)
    /// plus those the reply delivers, unless it failed.
    fn record_request(
        &self,
        transport: &str,
        op: Op,
        started: Instant,
        bytes_in: u64,
        reply: &Reply<Object>,
    ) {
        let bytes_out = match &reply.response {
            Response::Get { items } => items
                .iter()
                .map(|item| match item {
                    GetItem::Found { size }
                    | GetItem::Mapped { size, .. }
                    | GetItem::Remote { size, .. } => *size,
                    GetItem::NotFound | GetItem::NotSet | GetItem::Evicted => 0,
                })
                .sum(),
            _ => 0,
        };
        // A refused request carried no object, whatever it declared.
        let failed = matches!(reply.response, Response::Error(_));
        self.metrics.record(
            transport,
            Sample {
                op,
                elapsed: started.elapsed(),
                bytes: if failed {
                    0
                } else {
                    bytes_in.saturating_add(bytes_out)
                },
                failed,
            },
        );
    }

    /// Per-transport counters, with the one-sided transports' live registrations.
    fn transport_stats(&self) -> Vec<TransportStats> {
        self.sweep_registrations();
        let mut all = self
            .per_transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for exporter in &self.exporters.0 {
            if let Some(t) = all.iter_mut().find(|t| t.name == exporter.name()) {
                t.registrations = exporter.live_registrations();
            }
        }
        all
    }

    /// Ends one-sided leases past their deadline (a reader that hangs with its connection
    /// open); an object evicted meanwhile is freed then.
    pub fn expire_leases(&self) {
        self.live.expire_leases(Instant::now());
    }

    /// Drops reserved keys whose time to live ran out; gets waiting on them answer
    /// `NotFound`.
    pub fn expire_reservations(&self) {
        let expired = self.store.expire_reservations(Instant::now());
        if expired > 0 {
            tracing::info!(expired, "reserved keys expired unset");
        }
    }

    /// Evicts objects whose time to live or lease ran out.
    pub fn expire_objects(&self) {
        let expired = self.store.expire_objects(Instant::now());
        if expired > 0 {
            tracing::debug!(expired, "objects expired");
        }
    }

    /// Drops the registrations of segments the arena has let go.
    pub fn sweep_registrations(&self) {
        for exporter in &self.exporters.0 {
            exporter.sweep();
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    fn adjust_transport(&self, name: &str, f: impl FnOnce(&mut TransportStats)) {
        let mut all = self.per_transport.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = all.iter_mut().find(|t| t.name == name) {
            f(t);
        }
    }

    /// Consume-once get: found objects are evicted in the same step.
    fn get_and_evict(&self, session: &Session, ids: Vec<ObjectId>) -> Outcome<Object> {
        self.counters
            .gets
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let policy = self.reply_policy(session);
        if !self
            .store
            .lookup(&ids)
            .iter()
            .any(|l| matches!(l, Lookup::Spilled))
        {
            return Outcome::Ready(self.get_reply(self.store.take(&ids), &policy));
        }
        // Spilled objects come back into memory first (off this thread), then go to one
        // caller.
        let service = self.clone();
        Outcome::Deferred(Box::pin(async move {
            match service.restored(ids.clone()).await {
                Ok(_) => service.get_reply(service.store.take(&ids), &policy),
                Err(e) => Reply::error(e),
            }
        }))
    }

    /// Looks `ids` up, bringing spilled ones back into memory on the blocking pool: disk
    /// reads (and waits for the spill writer to make room) never hold a runtime worker or
    /// the table lock.
    async fn restored(&self, ids: Vec<ObjectId>) -> Result<Vec<Lookup>, ErrorReply> {
        let found = self.store.lookup(&ids);
        if !found.iter().any(|l| matches!(l, Lookup::Spilled)) {
            return Ok(found);
        }
        let service = self.clone();
        tokio::task::spawn_blocking(move || service.store.restore(&ids, found))
            .await
            .unwrap_or_else(|e| {
                Err(ErrorReply::new(
                    Status::Internal,
                    format!("restoring spilled objects failed: {e}"),
                ))
            })
    }

    fn reply_policy(&self, session: &Session) -> ReplyPolicy {
        ReplyPolicy {
            mapped: session.mapped.then_some(session.map_from),
            one_sided: session.one_sided,
            leases: session.leases.clone(),
            lease_deadline: Instant::now() + self.identity.lease_timeout,
            local: session.peer.transport == crate::LOCAL_TRANSPORT,
        }
    }

    /// A put with lifetimes: claims the owner tag for this session, then stores.
    fn put_with(
        &self,
        session: &mut Session,
        options: &dimstore_proto::PutOptions,
        payload: Vec<Allocation>,
    ) -> Response {
        let lifetime = Lifetime::from_options(options, Instant::now());
        if let Some(owner) = &lifetime.owner {
            if session.owners.insert(Arc::clone(owner)) {
                self.store.claim_owner(owner);
            }
        }
        self.counters
            .puts
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        Response::Put {
            ids: self.store.insert_with(payload, &lifetime),
        }
    }

    fn get(&self, session: &Session, ids: Vec<ObjectId>, wait_ms: u64) -> Outcome<Object> {
        self.counters
            .gets
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let policy = self.reply_policy(session);
        let found = self.store.lookup(&ids);
        if found.iter().any(|l| matches!(l, Lookup::Spilled)) {
            // Reading spilled objects back waits for the disk: on the blocking pool, so
            // other requests on this thread go on.
            let service = self.clone();
            return Outcome::Deferred(Box::pin(async move {
                match service.restored(ids).await {
                    Ok(found) => service.get_reply(found, &policy),
                    Err(e) => Reply::error(e),
                }
            }));
        }
        if wait_ms == 0 || !found.iter().any(|l| matches!(l, Lookup::Reserved)) {
            return Outcome::Ready(self.get_reply(found, &policy));
        }
        let service = self.clone();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(wait_ms).min(MAX_GET_WAIT);
        Outcome::Deferred(Box::pin(async move {
            loop {
                let changed = service.store.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let found = match service.restored(ids.clone()).await {
                    Ok(found) => found,
                    Err(e) => return Reply::error(e),
                };
                let waiting = found.iter().any(|l| matches!(l, Lookup::Reserved));
                if !waiting || tokio::time::Instant::now() >= deadline {
                    return service.get_reply(found, &policy);
                }
                let _ = tokio::time::timeout_at(deadline, changed).await;
            }
        }))
    }

    /// Found objects travel as leases on mapped memory, as remote regions to read
    /// one-sided, or as payload.
    fn get_reply(&self, found: Vec<Lookup>, policy: &ReplyPolicy) -> Reply<Object> {
        let mut items = Vec::with_capacity(found.len());
        let mut payload = Vec::new();
        let (mut hits, mut mapped, mut one_sided_bytes) = (0, 0, 0);
        for lookup in found {
            items.push(match lookup {
                Lookup::Found(object) => {
                    hits += 1;
                    let size = object.len();
                    // A session holding the most leases it may gets further objects inline.
                    let leased = match (policy.mapped, policy.one_sided, object.location()) {
                        (Some(map_from), _, Some((segment, offset))) if size >= map_from => {
                            policy.leases.grant(object.clone(), None).map(|lease| {
                                mapped += 1;
                                GetItem::Mapped {
                                    size,
                                    segment,
                                    offset,
                                    lease,
                                }
                            })
                        }
                        (_, Some(used), Some((segment, offset))) if size >= used.from => policy
                            .leases
                            .grant(object.clone(), Some(policy.lease_deadline))
                            .map(|lease| {
                                one_sided_bytes += size;
                                GetItem::Remote {
                                    size,
                                    segment,
                                    offset,
                                    lease,
                                }
                            }),
                        _ => None,
                    };
                    leased.unwrap_or_else(|| {
                        payload.push(object);
                        GetItem::Found { size }
                    })
                }
                Lookup::Reserved => GetItem::NotSet,
                Lookup::Missing => GetItem::NotFound,
                Lookup::Evicted => GetItem::Evicted,
                // Spilled again between its restore and this reply (a consume-once get
                // under heavy pressure): the client may retry.
                Lookup::Spilled => GetItem::NotSet,
            });
        }
        let c = &self.counters;
        c.get_hits.fetch_add(hits, Ordering::Relaxed);
        c.mapped_gets.fetch_add(mapped, Ordering::Relaxed);
        if let (Some(used), true) = (policy.one_sided, one_sided_bytes > 0) {
            let name = self.exporters.0[used.exporter].name();
            self.adjust_transport(name, |t| {
                t.one_sided_bytes += one_sided_bytes;
                t.bytes_served += one_sided_bytes;
            });
        }
        if policy.local {
            c.copied_local_gets
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
        Reply {
            response: Response::Get { items },
            payload,
            fds: Vec::new(),
        }
    }

    fn greet(&self, session: &mut Session, request: &Request) -> Result<Response, ErrorReply> {
        let Request::Hello(hello) = request else {
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!("the first request must be Hello (protocol v{PROTOCOL_VERSION})"),
            ));
        };
        if let Some(expected) = &self.identity.token {
            if hello.token.as_deref() != Some(expected.as_str()) {
                // A second Hello with a wrong token revokes the first one.
                session.greeted = false;
                tracing::warn!(peer = %session.peer.address, "connection refused: wrong fleet token");
                return Err(ErrorReply::new(
                    Status::Unauthorized,
                    "wrong or missing fleet token (set DIMSTORE_TOKEN or use the fleet file)",
                ));
            }
        }
        session.greeted = true;
        session.mapped = hello.map && session.peer.may_map;
        session.map_from = hello.map_from;
        Ok(Response::Hello(HelloReply {
            server_id: self.identity.server_id,
            node: self.identity.node.clone(),
            advertised: self.identity.advertised.clone(),
            pid: std::process::id(),
            transports: self.identity.transports.clone(),
            max_object: self.store.arena().config().capacity,
            local_socket: self.identity.local_socket.clone(),
            mapped: session.mapped,
            one_sided: self.identity.one_sided.clone(),
        }))
    }

    /// Switches the session's gets to one-sided replies.
    fn use_one_sided(
        &self,
        session: &mut Session,
        transport: &str,
        from: u64,
    ) -> Result<Response, ErrorReply> {
        let Some(exporter) = self.exporters.0.iter().position(|e| e.name() == transport) else {
            let offered: Vec<&str> = self.exporters.0.iter().map(|e| e.name()).collect();
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!("this server does not offer one-sided transport {transport:?} (it offers {offered:?})"),
            ));
        };
        // A channel's session is counted on its transport already.
        let own = session.peer.transport;
        if let Some(old) = session.one_sided {
            let name = self.exporters.0[old.exporter].name();
            if name != own {
                self.adjust_transport(name, |t| t.connections -= 1);
            }
        }
        let name = self.exporters.0[exporter].name();
        if name != own {
            self.adjust_transport(name, |t| t.connections += 1);
        }
        session.one_sided = Some(OneSidedUse { exporter, from });
        Ok(Response::Done)
    }

    /// Records that `transport`'s exporter now serves requests on its own messages, so
    /// clients may open channels on it.
    pub fn serve_rpc_on(&self, transport: &'static str) {
        self.rpc_transports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(transport);
    }

    /// Opens a channel on `transport` for `session`'s client, whose address there is
    /// `address`: a session of its own, authenticated by this one, closed with it.
    fn open_channel(
        &self,
        session: &mut Session,
        transport: &str,
        address: Vec<u8>,
    ) -> Result<Response, ErrorReply> {
        if session.is_channel {
            return Err(ErrorReply::new(
                Status::BadRequest,
                "channels are opened from TCP connections, not from channels",
            ));
        }
        let Some(name) = self
            .rpc_transports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .find(|t| *t == transport)
        else {
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!("this server takes no requests over {transport:?}"),
            ));
        };
        if address.is_empty() || address.len() > MAX_CHANNEL_ADDRESS {
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!(
                    "a client address of {} bytes (1 to {MAX_CHANNEL_ADDRESS})",
                    address.len()
                ),
            ));
        }
        if session.channels.len() >= MAX_CHANNELS_PER_CONNECTION {
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!("this connection has {MAX_CHANNELS_PER_CONNECTION} channels open already"),
            ));
        }
        let mut channel = self.open_session(
            name,
            PeerInfo {
                address: format!("{} ({name} channel)", session.peer.address),
                uid: None,
            },
        );
        // Counted once, with the connection it came from.
        self.connections.fetch_sub(1, Ordering::Relaxed);
        channel.is_channel = true;
        channel.greeted = true;
        loop {
            match self.channels.open(rand::random(), address.clone(), channel) {
                Ok(guard) => {
                    let id = guard.id();
                    session.channels.push(guard);
                    tracing::debug!(peer = %session.peer.address, transport = name, "channel opened");
                    return Ok(Response::Channel { id });
                }
                Err(back) => channel = back,
            }
        }
    }

    /// Remote keys of arena segments on the session's one-sided transport (registered on
    /// first use).
    fn segment_keys(&self, session: &Session, ids: &[u32]) -> Result<Response, ErrorReply> {
        let Some(used) = session.one_sided else {
            return Err(ErrorReply::new(
                Status::BadRequest,
                "segment keys need a connection that asked for one-sided replies",
            ));
        };
        let exporter = &self.exporters.0[used.exporter];
        let mut keys = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(segment) = self.store.arena().segment(id) else {
                return Err(ErrorReply::new(
                    Status::NotFound,
                    format!("segment {id} is not mapped (any more)"),
                ));
            };
            let region = exporter.export(id, &segment).map_err(|e| {
                ErrorReply::new(
                    Status::Internal,
                    format!("cannot register segment {id}: {e}"),
                )
            })?;
            keys.push(SegmentKey {
                id,
                address: region.address,
                key: region.key,
            });
        }
        Ok(Response::SegmentKeys { keys })
    }

    /// Runs a client's function over objects of this store, off the runtime's workers; the
    /// inputs stay leased (an evict meanwhile frees nothing) until it ends.
    fn invoke(&self, invoke: Invoke, payload: Vec<Allocation>) -> Outcome<Object> {
        let found = self.store.lookup(&invoke.ids);
        if !found.iter().any(|l| matches!(l, Lookup::Spilled)) {
            return self.invoke_over(invoke, payload, found);
        }
        // Spilled inputs come back from disk on the blocking pool first (as for a get).
        let service = self.clone();
        Outcome::Deferred(Box::pin(async move {
            match service.restored(invoke.ids.clone()).await {
                Ok(found) => match service.invoke_over(invoke, payload, found) {
                    Outcome::Ready(reply) => reply,
                    Outcome::Deferred(later) => later.await,
                },
                Err(e) => Reply::error(e),
            }
        }))
    }

    /// Runs the function over the inputs `found` for `invoke.ids`.
    fn invoke_over(
        &self,
        invoke: Invoke,
        payload: Vec<Allocation>,
        found: Vec<Lookup>,
    ) -> Outcome<Object> {
        let mut inputs = Vec::with_capacity(invoke.ids.len());
        for (id, found) in invoke.ids.iter().zip(found) {
            let refused = match found {
                Lookup::Found(object) => {
                    inputs.push(object);
                    continue;
                }
                Lookup::Reserved | Lookup::Missing => ErrorReply::new(
                    Status::NotFound,
                    format!("no object {id:?} to invoke a function on"),
                ),
                Lookup::Evicted => ErrorReply::new(
                    Status::Evicted,
                    format!("object {id:?} is gone: evicted by the server or consumed by a get-and-evict"),
                ),
                Lookup::Spilled => ErrorReply::new(
                    Status::Internal,
                    format!("object {id:?} was spilled again while being restored; retry"),
                ),
            };
            return Outcome::Ready(Reply::error(refused));
        }
        let to_key = invoke.to_key;
        let call = match self.functions.prepare(invoke, payload) {
            Ok(call) => call,
            Err(e) => return Outcome::Ready(Reply::error(e.into())),
        };
        let service = self.clone();
        Outcome::Deferred(Box::pin(async move {
            match service.functions.run(call, inputs).await {
                Ok(Ran::Output(output)) => service.invoked(&output, to_key),
                Ok(Ran::Failed(code)) => {
                    Reply::message(Response::Invoked(Invoked::Failed { code }))
                }
                Err(e) => Reply::error(e.into()),
            }
        }))
    }

    /// A function's output: returned as payload, or stored as a new object.
    fn invoked(&self, output: &[u8], to_key: bool) -> Reply<Object> {
        let size = output.len() as u64;
        let mut allocation = match self.store.allocate(&[size]) {
            Ok(mut allocations) => allocations.remove(0),
            Err(e) => return Reply::error(e),
        };
        allocation.as_mut_slice().copy_from_slice(output);
        if to_key {
            self.counters.puts.fetch_add(1, Ordering::Relaxed);
            let id = self.store.insert(vec![allocation]).remove(0);
            return Reply::message(Response::Invoked(Invoked::Stored { id, size }));
        }
        Reply {
            response: Response::Invoked(Invoked::Output { size }),
            payload: vec![allocation.seal()],
            fds: Vec::new(),
        }
    }

    /// Same-node requests, refused on connections that may not map.
    fn same_node(&self, session: &mut Session, request: Request) -> Reply<Object> {
        // Leases of one-sided reads are released the same way as mapped ones.
        let one_sided_release =
            matches!(request, Request::Release { .. }) && session.one_sided.is_some();
        if !(session.mapped || one_sided_release) {
            return Reply::error(ErrorReply::new(
                Status::BadRequest,
                "mapping requests need a same-node, same-user connection that asked for mapping",
            ));
        }
        match request {
            Request::MapSegments { ids } => {
                let mut segments = Vec::with_capacity(ids.len());
                let mut fds: Vec<OwnedFd> = Vec::with_capacity(ids.len());
                for id in ids {
                    let Some(segment) = self.store.arena().segment(id) else {
                        return Reply::error(ErrorReply::new(
                            Status::NotFound,
                            format!("segment {id} is not mapped (any more)"),
                        ));
                    };
                    // Shared segments are sealed against writable mappings; a writer's
                    // segment (in-place puts) is writable for that connection only.
                    let own = session.writer.as_ref().map(Writer::id);
                    let fd = match segment.writer() {
                        Some(writer) if Some(writer) != own => segment.read_only_fd(),
                        _ => segment.fd().try_clone_to_owned(),
                    };
                    match fd {
                        Ok(fd) => fds.push(fd),
                        Err(e) => {
                            return Reply::error(ErrorReply::new(
                                Status::Internal,
                                format!("cannot share segment {id}: {e}"),
                            ))
                        }
                    }
                    segments.push(SegmentInfo {
                        id,
                        len: segment.len(),
                    });
                }
                Reply {
                    response: Response::Segments { segments },
                    payload: Vec::new(),
                    fds,
                }
            }
            Request::Create { sizes }
                if session.reservations.len() + sizes.len() > MAX_OPEN_RESERVATIONS =>
            {
                Reply::error(ErrorReply::new(
                    Status::BadRequest,
                    format!(
                        "at most {MAX_OPEN_RESERVATIONS} reservations may be open per connection \
                         ({} are, {} more asked)",
                        session.reservations.len(),
                        sizes.len()
                    ),
                ))
            }
            Request::Create { sizes } => match self.store.allocate_for_writer(
                &sizes,
                session
                    .writer
                    .get_or_insert_with(|| self.store.arena().writer()),
            ) {
                Ok(allocations) => {
                    let reservations = allocations
                        .into_iter()
                        .map(|a| {
                            let (segment, offset) = a.location().unwrap_or((u32::MAX, 0));
                            let capacity = a.len();
                            Reservation {
                                id: session.reservations.open(a),
                                segment,
                                offset,
                                capacity,
                            }
                        })
                        .collect();
                    Reply::message(Response::Created { reservations })
                }
                Err(e) => {
                    if e.status == Status::StoreFull {
                        self.counters.store_full.fetch_add(1, Ordering::Relaxed);
                    }
                    Reply::error(e)
                }
            },
            Request::Seal { reservations, lens } => {
                if reservations.len() != lens.len() {
                    return Reply::error(ErrorReply::new(
                        Status::BadRequest,
                        "seal names a different number of reservations and lengths",
                    ));
                }
                let Some(mut allocations) = session.reservations.take(&reservations) else {
                    return Reply::error(ErrorReply::new(
                        Status::NotFound,
                        "unknown or repeated reservation (already sealed or aborted?)",
                    ));
                };
                for (a, &len) in allocations.iter_mut().zip(&lens) {
                    if !a.truncate(len) {
                        return Reply::error(ErrorReply::new(
                            Status::BadRequest,
                            format!("sealed length {len} exceeds the reservation of {}", a.len()),
                        ));
                    }
                }
                // Small ones move to a shared segment, freeing the writer's for its next.
                let allocations: Vec<Allocation> =
                    allocations.into_iter().map(Allocation::published).collect();
                self.counters
                    .puts
                    .fetch_add(allocations.len() as u64, Ordering::Relaxed);
                Reply::message(Response::Put {
                    ids: self.store.insert(allocations),
                })
            }
            Request::Release { leases } => {
                session.leases.release(&leases);
                Reply::message(Response::Done)
            }
            Request::Abort { reservations } => {
                session.reservations.abort(&reservations);
                Reply::message(Response::Done)
            }
            other => Reply::error(ErrorReply::new(
                Status::BadRequest,
                format!("not a same-node request: {other:?}"),
            )),
        }
    }
}

impl Service for StoreService {
    type Session = Session;
    type Sink = Allocation;
    type Source = Object;

    fn open_session(&self, transport: &'static str, peer: PeerInfo) -> Session {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.adjust_transport(transport, |t| t.connections += 1);
        let may_map = transport == crate::LOCAL_TRANSPORT
            && peer.uid == Some(rustix::process::geteuid().as_raw());
        tracing::debug!(peer = %peer.address, transport, may_map, "session opened");
        Session {
            service: self.clone(),
            peer: Peer {
                transport,
                address: peer.address,
                may_map,
            },
            greeted: false,
            mapped: false,
            map_from: 0,
            one_sided: None,
            leases: Leases::new(Arc::clone(&self.live)),
            reservations: Reservations::new(Arc::clone(&self.live)),
            writer: None,
            is_channel: false,
            channels: Vec::new(),
            request_started: None,
            owners: HashSet::new(),
        }
    }

    fn authenticated(&self, session: &Session) -> bool {
        session.greeted
    }

    fn payload_sinks(
        &self,
        session: &mut Session,
        request: &Request,
        payload_len: u64,
    ) -> Result<Vec<Allocation>, ErrorReply> {
        let started = Instant::now();
        session.request_started = Some(started);
        let sinks = self.sinks(session, request, payload_len);
        if sinks.is_err() {
            // Refused before its payload is read: `handle` never sees it.
            let sample = Sample {
                op: Op::of(request),
                elapsed: started.elapsed(),
                bytes: 0,
                failed: true,
            };
            self.metrics.record(session.peer.transport, sample);
        }
        sinks
    }

    fn handle(
        &self,
        session: &mut Session,
        request: Request,
        payload: Vec<Allocation>,
    ) -> Outcome<Object> {
        let started = session.request_started.take().unwrap_or_else(Instant::now);
        let op = Op::of(&request);
        let bytes_in = match &request {
            Request::Seal { lens, .. } => lens.iter().fold(0u64, |a, &l| a.saturating_add(l)),
            _ => payload.iter().map(|a| a.len()).sum(),
        };
        let transport = session.peer.transport;
        match self.dispatch(session, request, payload) {
            Outcome::Ready(reply) => {
                self.record_request(transport, op, started, bytes_in, &reply);
                Outcome::Ready(reply)
            }
            Outcome::Deferred(later) => {
                let service = self.clone();
                Outcome::Deferred(Box::pin(async move {
                    let reply = later.await;
                    service.record_request(transport, op, started, bytes_in, &reply);
                    reply
                }))
            }
        }
    }

    fn record_sent(&self, transport: &'static str, bytes: u64) {
        self.adjust_transport(transport, |t| t.bytes_served += bytes);
    }

    fn record_pulled(&self, transport: &'static str, bytes: u64) {
        self.adjust_transport(transport, |t| t.pulled_bytes += bytes);
    }

    fn record_refused(&self, transport: &'static str) {
        self.adjust_transport(transport, |t| t.refused_connections += 1);
    }

    fn channels(&self) -> Option<&ChannelTable<Session>> {
        Some(&self.channels)
    }
}

impl StoreService {
    /// Where a put's or set's payload lands (fresh arena allocations), or why it is refused.
    fn sinks(
        &self,
        session: &Session,
        request: &Request,
        payload_len: u64,
    ) -> Result<Vec<Allocation>, ErrorReply> {
        let sizes: &[u64] = match request {
            Request::Put { sizes } | Request::PutWith { sizes, .. } if session.greeted => sizes,
            Request::Set { ids, sizes } if session.greeted => {
                if ids.len() != sizes.len() {
                    return Err(ErrorReply::new(
                        Status::BadRequest,
                        format!("set names {} ids but {} sizes", ids.len(), sizes.len()),
                    ));
                }
                self.store.check_settable(ids)?;
                sizes
            }
            Request::Invoke(Invoke {
                with_module: true, ..
            }) if session.greeted => {
                self.functions
                    .check_module_len(payload_len)
                    .map_err(ErrorReply::from)?;
                return self.store.allocate(&[payload_len]);
            }
            _ if payload_len == 0 => return Ok(Vec::new()),
            _ => {
                return Err(ErrorReply::new(
                    Status::BadRequest,
                    "only put and set carry a payload",
                ))
            }
        };
        let total = sizes.iter().try_fold(0u64, |acc, &s| acc.checked_add(s));
        if total != Some(payload_len) {
            return Err(ErrorReply::new(
                Status::BadRequest,
                format!("object sizes add up to {total:?} but the payload has {payload_len} bytes"),
            ));
        }
        self.store.allocate(sizes).inspect_err(|e| {
            if e.status == Status::StoreFull {
                self.counters.store_full.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Answers one request of an open session.
    fn dispatch(
        &self,
        session: &mut Session,
        request: Request,
        payload: Vec<Allocation>,
    ) -> Outcome<Object> {
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        self.touch();
        if !session.greeted {
            let response = self
                .greet(session, &request)
                .unwrap_or_else(Response::Error);
            return Outcome::Ready(Reply::message(response));
        }
        let response = match request {
            Request::Hello(_) => self
                .greet(session, &request)
                .unwrap_or_else(Response::Error),
            Request::Put { .. } => {
                self.counters
                    .puts
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                Response::Put {
                    ids: self.store.insert(payload),
                }
            }
            Request::PutWith { options, .. } => self.put_with(session, &options, payload),
            Request::Get { ids, wait_ms } => return self.get(session, ids, wait_ms),
            Request::GetAndEvict { ids } => return self.get_and_evict(session, ids),
            Request::ReleaseOwner { owner } => {
                let objects = self.store.release_owner(&owner);
                tracing::debug!(peer = %session.peer.address, owner, objects, "owner released");
                Response::Released { objects }
            }
            Request::Extend { ids, lease_ms } => Response::Exists {
                present: self.store.extend(&ids, Duration::from_millis(lease_ms)),
            },
            Request::Exists { ids } => Response::Exists {
                present: self.store.exists(&ids),
            },
            Request::Evict { ids } => {
                let evicted = self.store.evict(&ids);
                let n = evicted.iter().filter(|&&e| e).count() as u64;
                self.counters.evictions.fetch_add(n, Ordering::Relaxed);
                Response::Evict { evicted }
            }
            Request::NewKeys { count } => match self.store.reserve(count) {
                Ok(ids) => Response::NewKeys { ids },
                Err(e) => {
                    self.counters.store_full.fetch_add(1, Ordering::Relaxed);
                    Response::Error(e)
                }
            },
            Request::Set { ids, .. } => {
                let n = payload.len() as u64;
                match self.store.set(&ids, payload) {
                    Ok(()) => {
                        self.counters.puts.fetch_add(n, Ordering::Relaxed);
                        Response::Done
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Stats => Response::Stats(self.stats()),
            Request::UseOneSided { transport, from } => self
                .use_one_sided(session, &transport, from)
                .unwrap_or_else(Response::Error),
            Request::SegmentKeys { ids } => self
                .segment_keys(session, &ids)
                .unwrap_or_else(Response::Error),
            Request::OpenChannel { transport, address } => self
                .open_channel(session, &transport, address)
                .unwrap_or_else(Response::Error),
            Request::Shutdown => {
                tracing::info!(peer = %session.peer.address, "shutdown requested by client");
                self.shutdown.notify_one();
                Response::Done
            }
            Request::Invoke(invoke) => return self.invoke(invoke, payload),
            same_node @ (Request::MapSegments { .. }
            | Request::Create { .. }
            | Request::Seal { .. }
            | Request::Release { .. }
            | Request::Abort { .. }) => return Outcome::Ready(self.same_node(session, same_node)),
        };
        Outcome::Ready(Reply::message(response))
    }
}
