//! The request handler every transport drives: authentication, dispatch, statistics.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dimstore_arena::Allocation;
use dimstore_proto::{
    ErrorReply, GetItem, HelloReply, ObjectId, Request, Reservation, Response, SegmentInfo,
    ServerStats, Status, TransportStats, PROTOCOL_VERSION,
};
use dimstore_transport::{Outcome, PeerInfo, Reply, Service};
use tokio::sync::Notify;

use crate::session::{Leases, LiveCounts, Peer, Reservations};
use crate::store::{Lookup, Object, ObjectStore};

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
    /// CPU and memory binding of the server's threads, as reported in stats.
    pub binding: String,
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
    /// Notified when a client asks the server to stop.
    pub shutdown: Arc<Notify>,
    connections: AtomicU64,
    last_activity_ms: AtomicU64,
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
    leases: Leases,
    reservations: Reservations,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.service.connections.fetch_sub(1, Ordering::Relaxed);
        self.service.touch();
        self.service
            .adjust_transport(self.peer.transport, |t| t.connections -= 1);
        tracing::debug!(peer = %self.peer.address, "session closed");
    }
}

impl StoreService {
    /// A service over `store`.
    pub fn new(store: ObjectStore, identity: ServiceIdentity) -> Self {
        let per_transport = identity
            .transports
            .iter()
            .map(|name| TransportStats {
                name: name.clone(),
                ..Default::default()
            })
            .collect();
        StoreService(Arc::new(ServiceState {
            store,
            identity,
            started: Instant::now(),
            counters: Counters::default(),
            live: Arc::default(),
            per_transport: Mutex::new(per_transport),
            shutdown: Arc::new(Notify::new()),
            connections: AtomicU64::new(0),
            last_activity_ms: AtomicU64::new(0),
        }))
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
            evictions: c.evictions.load(Ordering::Relaxed),
            store_full: c.store_full.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            mapped_gets: c.mapped_gets.load(Ordering::Relaxed),
            copied_local_gets: c.copied_local_gets.load(Ordering::Relaxed),
            leases: self.live.leases.load(Ordering::Relaxed),
            reservations: self.live.reservations.load(Ordering::Relaxed),
            transports: self
                .per_transport
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            binding: self.identity.binding.clone(),
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

    fn get(&self, session: &Session, ids: Vec<ObjectId>, wait_ms: u64) -> Outcome<Object> {
        self.counters
            .gets
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        let leases = session
            .mapped
            .then(|| (session.leases.clone(), session.map_from));
        let local = session.peer.transport == crate::LOCAL_TRANSPORT;
        let found = self.store.lookup(&ids);
        if wait_ms == 0 || !found.iter().any(|l| matches!(l, Lookup::Reserved)) {
            return Outcome::Ready(self.get_reply(found, leases.as_ref(), local));
        }
        let service = self.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        Outcome::Deferred(Box::pin(async move {
            loop {
                let changed = service.store.changed();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let found = service.store.lookup(&ids);
                let waiting = found.iter().any(|l| matches!(l, Lookup::Reserved));
                if !waiting || tokio::time::Instant::now() >= deadline {
                    return service.get_reply(found, leases.as_ref(), local);
                }
                let _ = tokio::time::timeout_at(deadline, changed).await;
            }
        }))
    }

    /// Found objects travel as leases on mapped memory (`leases` given) or as payload.
    fn get_reply(
        &self,
        found: Vec<Lookup>,
        leases: Option<&(Leases, u64)>,
        local: bool,
    ) -> Reply<Object> {
        let mut items = Vec::with_capacity(found.len());
        let mut payload = Vec::new();
        let mut hits = 0;
        for lookup in found {
            items.push(match lookup {
                Lookup::Found(object) => {
                    hits += 1;
                    let size = object.len();
                    match (leases, object.location()) {
                        (Some((leases, map_from)), Some((segment, offset)))
                            if size >= *map_from =>
                        {
                            GetItem::Mapped {
                                size,
                                segment,
                                offset,
                                lease: leases.grant(object),
                            }
                        }
                        _ => {
                            payload.push(object);
                            GetItem::Found { size }
                        }
                    }
                }
                Lookup::Reserved => GetItem::NotSet,
                Lookup::Missing => GetItem::NotFound,
            });
        }
        let c = &self.counters;
        c.get_hits.fetch_add(hits, Ordering::Relaxed);
        if leases.is_some() {
            c.mapped_gets
                .fetch_add(hits - payload.len() as u64, Ordering::Relaxed);
        }
        if local {
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
        }))
    }

    /// Same-node requests, refused on connections that may not map.
    fn same_node(&self, session: &mut Session, request: Request) -> Reply<Object> {
        if !session.mapped {
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
                    match segment.fd().try_clone_to_owned() {
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
            Request::Create { sizes } => match self.store.allocate(&sizes) {
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
            leases: Leases::new(Arc::clone(&self.live)),
            reservations: Reservations::new(Arc::clone(&self.live)),
        }
    }

    fn payload_sinks(
        &self,
        session: &mut Session,
        request: &Request,
        payload_len: u64,
    ) -> Result<Vec<Allocation>, ErrorReply> {
        let sizes: &[u64] = match request {
            Request::Put { sizes } if session.greeted => sizes,
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

    fn handle(
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
            Request::Get { ids, wait_ms } => return self.get(session, ids, wait_ms),
            Request::Exists { ids } => Response::Exists {
                present: self.store.exists(&ids),
            },
            Request::Evict { ids } => {
                let evicted = self.store.evict(&ids);
                let n = evicted.iter().filter(|&&e| e).count() as u64;
                self.counters.evictions.fetch_add(n, Ordering::Relaxed);
                Response::Evict { evicted }
            }
            Request::NewKeys { count } => Response::NewKeys {
                ids: self.store.reserve(count),
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
            Request::Shutdown => {
                tracing::info!(peer = %session.peer.address, "shutdown requested by client");
                self.shutdown.notify_one();
                Response::Done
            }
            same_node @ (Request::MapSegments { .. }
            | Request::Create { .. }
            | Request::Seal { .. }
            | Request::Release { .. }
            | Request::Abort { .. }) => return Outcome::Ready(self.same_node(session, same_node)),
        };
        Outcome::Ready(Reply::message(response))
    }

    fn record_sent(&self, transport: &'static str, bytes: u64) {
        self.adjust_transport(transport, |t| t.bytes_served += bytes);
    }
}
