//! [`Store`]: the client handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use dimstore_proto::{
    GetItem, Hello, HelloReply, Key, ObjectId, Request, RequestLimits, Response, ServerStats,
    Status,
};
use dimstore_transport::local::LocalConnector;
use dimstore_transport::tcp::TcpConnector;
use dimstore_transport::{AlignedBuf, Connection, Connector, ReplyFrame};

use crate::config::ClientConfig;
use crate::error::{ConnectError, GetError, PutError, RequestError, SetError};
use crate::local::{LocalMode, Mappings};
use crate::metrics::{CallStats, ClientMetrics, ClientOp};
use crate::object::{Leases, ObjectBytes};
use crate::spawn::{self, LocalServer};
use crate::trust::Trust;

/// A connected, greeted server.
pub(crate) struct Peer {
    /// TCP, or the Unix socket of a same-node server.
    pub(crate) connection: Arc<dyn Connection>,
    /// The server's handshake answer.
    pub(crate) hello: HelloReply,
    /// Segments mapped from a same-node server (when gets are answered with mappings).
    pub(crate) mappings: Option<Mappings>,
}

impl Peer {
    /// The largest object a reply from this server may carry: what it says it can hold, and
    /// never more than this machine's memory.
    pub(crate) fn largest_object(&self) -> u64 {
        self.hello.max_object.min(crate::config::physical_memory())
    }
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("server", &self.hello.advertised)
            .field("mapped", &self.mappings.is_some())
            .finish()
    }
}

/// A client of a dimstore fleet. Cheap to clone; clones share connections.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
    timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    /// This node's server; `None` for a store that only reads other servers' keys.
    local: Option<LocalServer>,
    /// The token and the servers it may be sent to.
    trust: Trust,
    connector: TcpConnector,
    /// One slot per server; the slot's own lock serialises connecting to that server only.
    peers: Mutex<HashMap<String, Arc<PeerSlot>>>,
    /// Per-operation metrics of this store's calls, when asked for.
    metrics: Option<ClientMetrics>,
}

/// A server's connection, once opened, and the right to open it.
#[derive(Debug, Default)]
struct PeerSlot {
    /// The connection; its lock is only held to look at it or replace it.
    peer: Mutex<Option<Arc<Peer>>>,
    /// Held while connecting: one thread connects, the others wait (each until its
    /// deadline) and then use its connection.
    connecting: Mutex<()>,
}

impl PeerSlot {
    /// The connection, unless there is none yet or it broke.
    fn current(&self) -> Option<Arc<Peer>> {
        let peer = self.peer.lock().unwrap_or_else(|e| e.into_inner());
        peer.as_ref()
            .filter(|p| !p.connection.is_broken())
            .map(Arc::clone)
    }
}

/// Locks `mutex`, waiting for it until `deadline` at most; `None` if it stayed held.
fn lock_by<T>(mutex: &Mutex<T>, deadline: Instant) -> Option<MutexGuard<'_, T>> {
    /// Longest sleep between attempts (it is only held while a server is being connected).
    const POLL: Duration = Duration::from_millis(5);
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            Err(TryLockError::Poisoned(e)) => return Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                std::thread::sleep(left.min(POLL));
            }
        }
    }
}

impl Store {
    /// A store configured from the `DIMSTORE_*` environment: finds this node's server
    /// (through the fleet file or runtime directory) or spawns one.
    pub fn from_env() -> Result<Store, ConnectError> {
        let config = ClientConfig::from_env().map_err(|reason| ConnectError::Fleet {
            path: "environment".into(),
            reason,
        })?;
        Store::with_config(config)
    }

    /// A store with an explicit configuration.
    pub fn with_config(config: ClientConfig) -> Result<Store, ConnectError> {
        let local = spawn::locate(&config)?;
        let address = local.address.clone();
        let store = Store::build(config, Some(local));
        // Fail now, with a clear error, rather than at the first put.
        store.peer_by(&address, Instant::now() + store.timeout)?;
        Ok(store)
    }

    /// A store without a server of its own: it can get, check and evict objects by key
    /// (and set deferred keys) but not put. Nothing is located or spawned.
    pub fn without_local(config: ClientConfig) -> Store {
        Store::build(config, None)
    }

    fn build(config: ClientConfig, local: Option<LocalServer>) -> Store {
        // A store without a server of its own still presents the token to its fleet.
        let trust = match local.clone().or_else(|| spawn::known(&config)) {
            Some(known) => Trust::new(
                known.token,
                known
                    .fleet
                    .into_iter()
                    .chain(config.trusted.iter().cloned()),
                &config.trusted_hosts,
            ),
            None => Trust::new(
                config.token.clone(),
                config.trusted.iter().cloned(),
                &config.trusted_hosts,
            ),
        };
        Store {
            timeout: config.timeout,
            inner: Arc::new(Inner {
                metrics: config.metrics.then(ClientMetrics::default),
                config,
                local,
                trust,
                connector: TcpConnector::default(),
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A store whose local server is at `address`.
    pub fn connect(address: &str, mut config: ClientConfig) -> Result<Store, ConnectError> {
        config.server = Some(address.to_string());
        Store::with_config(config)
    }

    /// The same store with another per-operation timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Store {
        Store {
            inner: Arc::clone(&self.inner),
            timeout,
        }
    }

    /// The per-operation timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Control address of this node's server, if the store has one.
    pub fn local_address(&self) -> Option<&str> {
        self.inner.local.as_ref().map(|l| l.address.as_str())
    }

    /// This client's node identity.
    pub fn node(&self) -> String {
        match &self.inner.local {
            Some(local) => local.node.clone(),
            None => spawn::node_name(&self.inner.config),
        }
    }

    /// Whether constructing this store spawned the node's server.
    pub fn spawned_server(&self) -> bool {
        self.inner.local.as_ref().is_some_and(|l| l.spawned)
    }

    /// The greeted connection to `owner`, with this store's timeout.
    pub(crate) fn peer_now(&self, owner: &str) -> Result<Arc<Peer>, RequestError> {
        self.peer_by(owner, Instant::now() + self.timeout)
    }

    /// Whether gets from this node's server map its memory (same node, mapping allowed).
    pub fn maps_local_objects(&self) -> bool {
        self.local_address()
            .and_then(|owner| self.peer_now(owner).ok())
            .is_some_and(|p| p.mappings.is_some())
    }

    pub(crate) fn local_owner(&self) -> Result<String, RequestError> {
        self.local_address()
            .map(str::to_string)
            .ok_or_else(|| RequestError::Unreachable {
                owner: "(this node)".into(),
                reason: "this store was created without a local server".into(),
            })
    }

    // ---- puts -------------------------------------------------------------------------

    /// Stores `bytes` on this node's server.
    pub fn put(&self, bytes: &[u8]) -> Result<Key, PutError> {
        Ok(self.put_batch(&[bytes])?.remove(0))
    }

    /// Stores several objects on this node's server in one round trip.
    pub fn put_batch(&self, objects: &[&[u8]]) -> Result<Vec<Key>, PutError> {
        self.put_batch_with(objects, &PutOptions::default())
    }

    /// Stores `bytes` on this node's server with a lifetime: a time to live, a lease to
    /// renew with [`Store::extend`], an owner tag (see [`PutOptions`]).
    pub fn put_with(&self, bytes: &[u8], options: &PutOptions) -> Result<Key, PutError> {
        Ok(self.put_batch_with(&[bytes], options)?.remove(0))
    }

    /// Stores several objects with one lifetime in one round trip.
    pub fn put_batch_with(
        &self,
        objects: &[&[u8]],
        options: &PutOptions,
    ) -> Result<Vec<Key>, PutError> {
        let bytes = objects.iter().map(|o| o.len() as u64).sum();
        self.measured(
            ClientOp::Put,
            || self.put_unmeasured(objects, options),
            |_| bytes,
        )
    }

    fn put_unmeasured(
        &self,
        objects: &[&[u8]],
        options: &PutOptions,
    ) -> Result<Vec<Key>, PutError> {
        if objects.len() > max_batch() {
            let mut keys = Vec::with_capacity(objects.len());
            for chunk in objects.chunks(max_batch()) {
                keys.extend(self.put_unmeasured(chunk, options)?);
            }
            return Ok(keys);
        }
        let sizes: Vec<u64> = objects.iter().map(|o| o.len() as u64).collect();
        let owner = self.local_owner()?;
        let peer = self.peer_by(&owner, Instant::now() + self.timeout)?;
        check_fits(&peer, &sizes)?;
        let request = match options.to_wire()? {
            None => Request::Put {
                sizes: sizes.clone(),
            },
            Some(options) => Request::PutWith {
                sizes: sizes.clone(),
                options,
            },
        };
        let (peer, reply) = self.call(&owner, &request, objects).map_err(put_error)?;
        match reply.response {
            Response::Put { ids } if ids.len() == sizes.len() => Ok(ids
                .into_iter()
                .zip(sizes)
                .map(|(id, size)| key(&peer, id, Some(size)))
                .collect()),
            other => Err(unexpected(&owner, &other).into()),
        }
    }

    // ---- gets -------------------------------------------------------------------------

    /// Fetches an object from its owner. A deferred key not set yet is waited for up to the
    /// timeout.
    pub fn get(&self, key: &Key) -> Result<ObjectBytes, GetError> {
        self.measured(
            ClientOp::Get,
            || self.get_one(key, false),
            |o| o.len() as u64,
        )
    }

    /// Fetches an object and evicts it at its owner in the same step (consume once): of
    /// several processes racing for it, exactly one gets it; the others get
    /// [`GetError::Evicted`].
    pub fn get_and_evict(&self, key: &Key) -> Result<ObjectBytes, GetError> {
        self.measured(
            ClientOp::Get,
            || self.get_one(key, true),
            |o| o.len() as u64,
        )
    }

    fn get_one(&self, key: &Key, consume: bool) -> Result<ObjectBytes, GetError> {
        let (peer, reply) = if consume {
            self.get_request(&key.owner, &[key], |ids, _| Request::GetAndEvict { ids })?
        } else {
            self.get_from(&key.owner, &[key])?
        };
        let ReplyFrame {
            response, payload, ..
        } = reply;
        match response {
            Response::Get { items } => match items.as_slice() {
                [GetItem::Found { size }]
                    if *size == payload.len() as u64 && fits_key(key, *size) =>
                {
                    Ok(ObjectBytes::owned(payload))
                }
                &[item @ GetItem::Mapped { size, .. }] if fits_key(key, size) => {
                    let leases = self.leases(&peer, &[item]);
                    Ok(self.mapped(&key.owner, &peer, item, &leases)?)
                }
                [GetItem::NotFound] => Err(GetError::NotFound(key.clone())),
                [GetItem::NotSet] => Err(GetError::NotSet(key.clone())),
                [GetItem::Evicted] => Err(GetError::Evicted(key.clone())),
                _ => Err(unexpected(&key.owner, &Response::Get { items }).into()),
            },
            other => Err(unexpected(&key.owner, &other).into()),
        }
    }

    /// Fetches several objects: one round trip per owner. The result is in key order;
    /// `None` where the owner has no such object (or a deferred one was not set in time).
    pub fn get_batch(&self, keys: &[Key]) -> Result<Vec<Option<ObjectBytes>>, GetError> {
        self.measured(
            ClientOp::Get,
            || self.get_batch_unmeasured(keys),
            |found| found.iter().flatten().map(|o| o.len() as u64).sum(),
        )
    }

    fn get_batch_unmeasured(&self, keys: &[Key]) -> Result<Vec<Option<ObjectBytes>>, GetError> {
        let mut out: Vec<Option<ObjectBytes>> = vec![None; keys.len()];
        for (owner, indices) in group_by_owner(keys) {
            let batch: Vec<&Key> = indices.iter().map(|&i| &keys[i]).collect();
            let (peer, reply) = self.get_from(owner, &batch)?;
            let Response::Get { items } = reply.response else {
                return Err(unexpected(owner, &reply.response).into());
            };
            let sizes_fit = batch.iter().zip(&items).all(|(key, item)| match *item {
                GetItem::Found { size } | GetItem::Mapped { size, .. } => fits_key(key, size),
                _ => true,
            });
            if items.len() != batch.len() || !sizes_fit {
                return Err(unexpected(owner, &Response::Get { items }).into());
            }
            let leases = self.leases(&peer, &items);
            let mut offset = 0usize;
            for (&i, item) in indices.iter().zip(&items) {
                if let GetItem::Found { size } = *item {
                    let end = offset.saturating_add(size as usize);
                    let bytes = reply.payload.get(offset..end).ok_or_else(|| {
                        unexpected(
                            owner,
                            &Response::Get {
                                items: items.clone(),
                            },
                        )
                    })?;
                    out[i] = Some(ObjectBytes::owned(AlignedBuf::copy_from(bytes)));
                    offset = end;
                }
                if let GetItem::Mapped { .. } = *item {
                    out[i] = Some(self.mapped(owner, &peer, *item, &leases)?);
                }
            }
        }
        Ok(out)
    }

    /// The leases granted by one reply, released together when its objects are dropped
    /// (taken before anything can fail, so errors release them too).
    fn leases(&self, peer: &Arc<Peer>, items: &[GetItem]) -> Arc<Leases> {
        let ids = items
            .iter()
            .filter_map(|i| match *i {
                GetItem::Mapped { lease, .. } => Some(lease),
                _ => None,
            })
            .collect();
        Arc::new(Leases {
            ids,
            connection: Arc::clone(&peer.connection),
            timeout: self.timeout,
        })
    }

    /// The object of a mapped get item, viewed in place under `leases`.
    fn mapped(
        &self,
        owner: &str,
        peer: &Arc<Peer>,
        item: GetItem,
        leases: &Arc<Leases>,
    ) -> Result<ObjectBytes, RequestError> {
        let GetItem::Mapped {
            size,
            segment,
            offset,
            ..
        } = item
        else {
            return Err(unexpected(owner, &Response::Get { items: vec![item] }));
        };
        let mappings = peer
            .mappings
            .as_ref()
            .ok_or_else(|| RequestError::Protocol {
                owner: owner.to_string(),
                what: "mapped reply on a connection that did not ask for mapping".into(),
            })?;
        let mapping = mappings.get_or_map(segment, false, || self.fetch_segment(owner, segment))?;
        let bytes = mapping
            .view(offset, size)
            .ok_or_else(|| RequestError::Protocol {
                owner: owner.to_string(),
                what: format!("object at {offset}+{size} lies outside segment {segment}"),
            })?;
        Ok(ObjectBytes::mapped(bytes, Arc::clone(leases)))
    }

    /// Sends a get of `keys` (all owned by `owner`); the reply may carry no more bytes than
    /// the keys can hold.
    fn get_from(
        &self,
        owner: &str,
        keys: &[&Key],
    ) -> Result<(Arc<Peer>, ReplyFrame), RequestError> {
        // The server waits for deferred objects a little less than our deadline, so its
        // NotSet answer arrives before we give up on the connection.
        self.get_request(owner, keys, |ids, wait_ms| Request::Get { ids, wait_ms })
    }

    /// Sends a get-like request (`request(ids, wait_ms)`) of `keys` (all owned by `owner`);
    /// the reply may carry no more bytes than the keys can hold.
    fn get_request(
        &self,
        owner: &str,
        keys: &[&Key],
        request: impl FnOnce(Vec<ObjectId>, u64) -> Request,
    ) -> Result<(Arc<Peer>, ReplyFrame), RequestError> {
        let margin = (self.timeout / 10).min(Duration::from_secs(1));
        let wait_ms = (self.timeout - margin).as_millis() as u64;
        let request = request(keys.iter().map(|k| k.id).collect(), wait_ms);
        self.call_expecting(owner, &request, &[], |peer| {
            // A deferred key's object is at most what its owner can hold, and no reply is
            // larger than this machine's memory.
            let deferred = peer.largest_object();
            keys.iter()
                .map(|k| k.size.unwrap_or(deferred))
                .fold(0u64, u64::saturating_add)
                .min(crate::config::physical_memory())
        })
    }

    // ---- exists / evict ---------------------------------------------------------------

    /// Whether the object exists at its owner.
    pub fn exists(&self, key: &Key) -> Result<bool, RequestError> {
        Ok(self.exists_batch(std::slice::from_ref(key))?[0])
    }

    /// Existence of several objects, one round trip per owner.
    pub fn exists_batch(&self, keys: &[Key]) -> Result<Vec<bool>, RequestError> {
        let exists = || {
            self.per_owner(
                keys,
                |ids| Request::Exists { ids },
                |r| match r {
                    Response::Exists { present } => Some(present),
                    _ => None,
                },
            )
        };
        self.measured(ClientOp::Exists, exists, |_| 0)
    }

    /// Removes the object at its owner; `false` if it was not there.
    pub fn evict(&self, key: &Key) -> Result<bool, RequestError> {
        Ok(self.evict_batch(std::slice::from_ref(key))?[0])
    }

    /// Removes several objects, one round trip per owner.
    pub fn evict_batch(&self, keys: &[Key]) -> Result<Vec<bool>, RequestError> {
        let evict = || {
            self.per_owner(
                keys,
                |ids| Request::Evict { ids },
                |r| match r {
                    Response::Evict { evicted } => Some(evicted),
                    _ => None,
                },
            )
        };
        self.measured(ClientOp::Evict, evict, |_| 0)
    }

    fn per_owner(
        &self,
        keys: &[Key],
        request: impl Fn(Vec<ObjectId>) -> Request,
        extract: impl Fn(Response) -> Option<Vec<bool>>,
    ) -> Result<Vec<bool>, RequestError> {
        let mut out = vec![false; keys.len()];
        for (owner, indices) in group_by_owner(keys) {
            let ids: Vec<ObjectId> = indices.iter().map(|&i| keys[i].id).collect();
            let (_, reply) = self.call(owner, &request(ids), &[])?;
            let shown = format!("{:?}", reply.response);
            let flags = extract(reply.response)
                .filter(|f| f.len() == indices.len())
                .ok_or_else(|| RequestError::Protocol {
                    owner: owner.to_string(),
                    what: shown,
                })?;
            for (&i, flag) in indices.iter().zip(flags) {
                out[i] = flag;
            }
        }
        Ok(out)
    }

    // ---- lifetimes --------------------------------------------------------------------

    /// Evicts every object put with owner tag `owner` on this node's server; returns how
    /// many.
    pub fn release_owner(&self, owner: &str) -> Result<u64, RequestError> {
        let server = self.local_owner()?;
        let request = Request::ReleaseOwner {
            owner: owner.to_string(),
        };
        let (_, reply) = self.call(&server, &request, &[])?;
        match reply.response {
            Response::Released { objects } => Ok(objects),
            other => Err(unexpected(&server, &other)),
        }
    }

    /// Renews the lease of an object put with [`PutOptions::lease`]: it now lives `lease`
    /// from now. `false` if the object is gone (its lease ran out) or was put without one.
    pub fn extend(&self, key: &Key, lease: Duration) -> Result<bool, RequestError> {
        let lease_ms = duration_ms(lease);
        Ok(self.per_owner(
            std::slice::from_ref(key),
            |ids| Request::Extend { ids, lease_ms },
            |r| match r {
                Response::Exists { present } => Some(present),
                _ => None,
            },
        )?[0])
    }

    // ---- deferred objects -------------------------------------------------------------

    /// Reserves a key on this node's server for an object that will be [`Store::set`] later.
    /// A get on it waits (up to its timeout) until it is set.
    pub fn new_key(&self) -> Result<Key, RequestError> {
        Ok(self.new_keys(1)?.remove(0))
    }

    /// Reserves several keys in one round trip (at most 65 536: more is `TooLarge`).
    pub fn new_keys(&self, count: u32) -> Result<Vec<Key>, RequestError> {
        self.measured(ClientOp::NewKeys, || self.new_keys_unmeasured(count), |_| 0)
    }

    fn new_keys_unmeasured(&self, count: u32) -> Result<Vec<Key>, RequestError> {
        let owner = self.local_owner()?;
        let (peer, reply) = self.call(&owner, &Request::NewKeys { count }, &[])?;
        match reply.response {
            Response::NewKeys { ids } if ids.len() == count as usize => {
                Ok(ids.into_iter().map(|id| key(&peer, id, None)).collect())
            }
            other => Err(unexpected(&owner, &other)),
        }
    }

    /// Sets a reserved key's object (at the key's owner, whichever node that is). Returns the
    /// key with its size filled in.
    pub fn set(&self, key: &Key, bytes: &[u8]) -> Result<Key, SetError> {
        let len = bytes.len() as u64;
        self.measured(ClientOp::Set, || self.set_unmeasured(key, bytes), |_| len)
    }

    fn set_unmeasured(&self, key: &Key, bytes: &[u8]) -> Result<Key, SetError> {
        let sizes = vec![bytes.len() as u64];
        let peer = self.peer_by(&key.owner, Instant::now() + self.timeout)?;
        check_fits(&peer, &sizes).map_err(|e| SetError::StoreFull(e.to_string()))?;
        let request = Request::Set {
            ids: vec![key.id],
            sizes,
        };
        let (_, reply) =
            self.call(&key.owner, &request, &[bytes])
                .map_err(|e| match e.status() {
                    Some(Status::AlreadySet) => SetError::AlreadySet(key.clone()),
                    Some(Status::NotFound) => SetError::NotReserved(key.clone()),
                    Some(Status::StoreFull | Status::TooLarge) => {
                        SetError::StoreFull(e.to_string())
                    }
                    _ => SetError::Request(e),
                })?;
        match reply.response {
            Response::Done => Ok(Key {
                size: Some(bytes.len() as u64),
                ..key.clone()
            }),
            other => Err(unexpected(&key.owner, &other).into()),
        }
    }

    // ---- client metrics ---------------------------------------------------------------

    /// Counts, bytes and latency histograms of this store's calls (and its clones') per
    /// operation, or `None` when metrics were not asked for ([`ClientConfig::metrics`]).
    pub fn metrics(&self) -> Option<Vec<CallStats>> {
        self.inner.metrics.as_ref().map(ClientMetrics::snapshot)
    }

    /// Runs `call`, recording its latency, its success's object bytes and failure as `op`
    /// when metrics are on.
    fn measured<T, E>(
        &self,
        op: ClientOp,
        call: impl FnOnce() -> Result<T, E>,
        bytes: impl FnOnce(&T) -> u64,
    ) -> Result<T, E> {
        let Some(metrics) = &self.inner.metrics else {
            return call();
        };
        let started = Instant::now();
        let result = call();
        let elapsed = started.elapsed();
        let moved = result.as_ref().map_or(0, bytes);
        metrics.record(op, elapsed, moved, result.is_err());
        result
    }

    // ---- administration ---------------------------------------------------------------

    /// Statistics of this node's server.
    pub fn stats(&self) -> Result<ServerStats, RequestError> {
        self.stats_of(&self.local_owner()?)
    }

    /// Statistics of the server at `address`.
    pub fn stats_of(&self, address: &str) -> Result<ServerStats, RequestError> {
        let (_, reply) = self.call(address, &Request::Stats, &[])?;
        match reply.response {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(address, &other)),
        }
    }

    /// Asks the server at `address` to stop.
    pub fn shutdown_server(&self, address: &str) -> Result<(), RequestError> {
        let (_, reply) = self.call(address, &Request::Shutdown, &[])?;
        match reply.response {
            Response::Done => Ok(()),
            other => Err(unexpected(address, &other)),
        }
    }

    // ---- plumbing ---------------------------------------------------------------------

    /// Sends one request to `owner` within this store's timeout; its reply carries no
    /// payload.
    pub(crate) fn call(
        &self,
        owner: &str,
        request: &Request,
        payload: &[&[u8]],
    ) -> Result<(Arc<Peer>, ReplyFrame), RequestError> {
        self.call_expecting(owner, request, payload, |_| 0)
    }

    /// Sends one request to `owner` within this store's timeout; its reply may carry at most
    /// `reply_payload(owner's peer)` payload bytes.
    pub(crate) fn call_expecting(
        &self,
        owner: &str,
        request: &Request,
        payload: &[&[u8]],
        reply_payload: impl FnOnce(&Peer) -> u64,
    ) -> Result<(Arc<Peer>, ReplyFrame), RequestError> {
        let deadline = Instant::now() + self.timeout;
        let peer = self.peer_by(owner, deadline)?;
        let reply = peer
            .connection
            .call(request, payload, reply_payload(&peer), deadline)
            .map_err(|e| RequestError::from_transport(owner, self.timeout, e))?;
        if let Response::Error(e) = reply.response {
            return Err(RequestError::from_reply(owner, e));
        }
        Ok((peer, reply))
    }

    /// The greeted connection to `owner`, opened on first use and replaced once broken.
    fn peer_by(&self, owner: &str, deadline: Instant) -> Result<Arc<Peer>, RequestError> {
        let slot = {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(peers.entry(owner.to_string()).or_default())
        };
        if let Some(peer) = slot.current() {
            return Ok(peer);
        }
        // One connection per peer even when many threads start at once; a slow or dead
        // server only delays the callers that need it, each until its own deadline.
        let _connecting = lock_by(&slot.connecting, deadline).ok_or(RequestError::Timeout {
            owner: owner.to_string(),
            timeout: self.timeout,
        })?;
        if let Some(peer) = slot.current() {
            return Ok(peer);
        }
        let fail = |e| RequestError::from_transport(owner, self.timeout, e);
        let connection = self
            .inner
            .connector
            .connect(owner, deadline)
            .map_err(fail)?;
        // Only servers of this fleet see the token; any other owner is greeted without it.
        let token = self.inner.trust.token_for(owner);
        let hello = Request::Hello(Hello {
            token: token.clone(),
            client_node: self.node(),
            client_pid: std::process::id(),
            map: false,
            map_from: 0,
        });
        let reply = connection.call(&hello, &[], 0, deadline).map_err(fail)?;
        let hello = match reply.response {
            Response::Hello(h) => h,
            Response::Error(e)
                if e.status == Status::Unauthorized && self.inner.trust.withheld_from(owner) =>
            {
                return Err(RequestError::Untrusted {
                    owner: owner.to_string(),
                    message: e.message,
                })
            }
            Response::Error(e) => return Err(RequestError::from_reply(owner, e)),
            other => return Err(unexpected(owner, &other)),
        };
        if token.is_some() {
            // A member's keys name the address it advertises.
            self.inner.trust.admit(&hello.advertised);
        }
        let choice = self.inner.config.transport;
        let local = match choice.forced_one_sided() {
            Some(_) => None,
            None => self.same_node_peer(&hello, token, deadline),
        };
        let peer = match local {
            Some(local) => local,
            None => {
                let connection = crate::one_sided::choose(
                    connection,
                    &hello,
                    choice,
                    &self.inner.config,
                    deadline,
                )
                .map_err(fail)?;
                Peer {
                    connection,
                    hello,
                    mappings: None,
                }
            }
        };
        let peer = Arc::new(peer);
        *slot.peer.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&peer));
        Ok(peer)
    }

    /// The Unix-socket connection to a server on this node, when it offers one and it can be
    /// used ("this node" by node identity, never by address); `None` falls back to TCP.
    fn same_node_peer(
        &self,
        tcp_hello: &HelloReply,
        token: Option<String>,
        deadline: Instant,
    ) -> Option<Peer> {
        let mode = self.inner.config.local;
        let path = tcp_hello.local_socket.as_deref()?;
        if mode == LocalMode::Off || tcp_hello.node != self.node() {
            return None;
        }
        let connection = LocalConnector::default().connect(path, deadline).ok()?;
        let hello = Request::Hello(Hello {
            token,
            client_node: self.node(),
            client_pid: std::process::id(),
            map: mode == LocalMode::Map,
            map_from: self.inner.config.local_map_from,
        });
        match connection.call(&hello, &[], 0, deadline).ok()?.response {
            Response::Hello(hello) if hello.server_id == tcp_hello.server_id => Some(Peer {
                connection: Arc::new(connection),
                mappings: hello.mapped.then(Mappings::default),
                hello,
            }),
            _ => None,
        }
    }
}

/// How long an object lives and who owns it; the server enforces it. The default is a
/// plain put: the object lives until evicted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Evicted this long after the put.
    pub ttl: Option<Duration>,
    /// Evicted unless renewed with [`Store::extend`] within this long (ProxyStore's
    /// lease lifetime); a leased object is never evicted under memory pressure.
    pub lease: Option<Duration>,
    /// Owner tag: evicted together when the putting process's connection closes (it
    /// exits or dies) or on [`Store::release_owner`].
    pub owner: Option<String>,
}

impl PutOptions {
    /// The wire form; `None` for a plain put.
    fn to_wire(&self) -> Result<Option<dimstore_proto::PutOptions>, PutError> {
        if *self == PutOptions::default() {
            return Ok(None);
        }
        let ms = |what: &str, d: Option<Duration>| match d.map(duration_ms) {
            Some(0) => Err(PutError::Invalid(format!(
                "a {what} of {d:?} rounds to 0 ms (at least 1 ms)"
            ))),
            Some(ms) => Ok(ms),
            None => Ok(0),
        };
        Ok(Some(dimstore_proto::PutOptions {
            ttl_ms: ms("time to live", self.ttl)?,
            lease_ms: ms("lease", self.lease)?,
            owner: self.owner.clone(),
        }))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn key(peer: &Peer, id: ObjectId, size: Option<u64>) -> Key {
    Key {
        owner: peer.hello.advertised.clone(),
        id,
        size,
    }
}

/// Whether an object of `size` bytes can be `key`'s (a deferred key's size is unknown).
fn fits_key(key: &Key, size: u64) -> bool {
    key.size.is_none_or(|expected| expected == size)
}

fn group_by_owner(keys: &[Key]) -> Vec<(&str, Vec<usize>)> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match groups.iter_mut().find(|(o, _)| *o == key.owner) {
            Some((_, v)) => v.push(i),
            None => groups.push((&key.owner, vec![i])),
        }
    }
    // A server takes at most `max_batch` items per request: longer groups go in several.
    groups
        .into_iter()
        .flat_map(|(owner, indices)| {
            indices
                .chunks(max_batch())
                .map(|chunk| (owner, chunk.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Most items one request may carry (the servers' [`RequestLimits`]).
fn max_batch() -> usize {
    RequestLimits::default().max_batch as usize
}

pub(crate) fn unexpected(owner: &str, response: &Response) -> RequestError {
    RequestError::Protocol {
        owner: owner.to_string(),
        what: format!("{response:?}"),
    }
}

/// Refuses objects the server could never hold before sending them: the server would have to
/// drop the connection rather than read a payload beyond its memory limit.
pub(crate) fn check_fits(peer: &Peer, sizes: &[u64]) -> Result<(), PutError> {
    let limit = peer.hello.max_object;
    if let Some(big) = sizes.iter().find(|&&s| s > limit) {
        return Err(PutError::TooLarge(format!(
            "object of {big} bytes exceeds the memory limit of {limit} bytes of {}",
            peer.hello.advertised
        )));
    }
    let total = sizes.iter().fold(0u64, |a, &s| a.saturating_add(s));
    if total > limit {
        return Err(PutError::StoreFull(format!(
            "batch of {total} bytes exceeds the memory limit of {limit} bytes of {}",
            peer.hello.advertised
        )));
    }
    Ok(())
}

pub(crate) fn put_error(e: RequestError) -> PutError {
    match e.status() {
        Some(Status::StoreFull) => PutError::StoreFull(e.to_string()),
        Some(Status::TooLarge) => PutError::TooLarge(e.to_string()),
        _ => PutError::Request(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(owner: &str, id: u128, size: Option<u64>) -> Key {
        Key {
            owner: owner.into(),
            id: ObjectId(id),
            size,
        }
    }

    #[test]
    fn put_options_go_on_the_wire_in_whole_milliseconds() {
        assert_eq!(PutOptions::default().to_wire().expect("plain"), None);
        let options = PutOptions {
            ttl: Some(Duration::from_micros(2_500)),
            lease: None,
            owner: Some("job".into()),
        };
        assert_eq!(
            options.to_wire().expect("valid"),
            Some(dimstore_proto::PutOptions {
                ttl_ms: 2,
                lease_ms: 0,
                owner: Some("job".into()),
            })
        );
        let owner_only = PutOptions {
            owner: Some("job".into()),
            ..PutOptions::default()
        };
        let wire = owner_only.to_wire().expect("valid").expect("not plain");
        assert_eq!((wire.ttl_ms, wire.lease_ms), (0, 0));
        let huge = PutOptions {
            lease: Some(Duration::MAX),
            ..PutOptions::default()
        };
        let wire = huge.to_wire().expect("valid").expect("not plain");
        assert_eq!(wire.lease_ms, u64::MAX);
    }

    #[test]
    fn a_lifetime_that_rounds_to_zero_is_refused() {
        for options in [
            PutOptions {
                ttl: Some(Duration::from_micros(999)),
                ..PutOptions::default()
            },
            PutOptions {
                lease: Some(Duration::ZERO),
                ..PutOptions::default()
            },
        ] {
            let e = options.to_wire().expect_err("rounds to 0 ms");
            assert!(
                matches!(&e, PutError::Invalid(text) if text.contains("rounds to 0 ms")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_object_fits_its_key_by_size_unless_the_key_is_deferred() {
        assert!(fits_key(&key("a:1", 1, Some(5)), 5));
        assert!(!fits_key(&key("a:1", 1, Some(5)), 6));
        assert!(fits_key(&key("a:1", 1, None), 0));
        assert!(fits_key(&key("a:1", 1, None), u64::MAX));
    }

    #[test]
    fn keys_are_grouped_by_owner_in_first_seen_order() {
        let keys = [
            key("b:1", 1, None),
            key("a:1", 2, None),
            key("b:1", 3, None),
            key("c:1", 4, None),
            key("a:1", 5, None),
        ];
        assert_eq!(
            group_by_owner(&keys),
            [("b:1", vec![0, 2]), ("a:1", vec![1, 4]), ("c:1", vec![3])]
        );
        assert!(group_by_owner(&[]).is_empty());
    }

    #[test]
    fn an_owners_group_is_cut_at_the_servers_batch_limit() {
        let n = max_batch() * 2 + 3;
        let keys: Vec<Key> = (0..n as u128).map(|i| key("a:1", i, Some(1))).collect();
        let groups = group_by_owner(&keys);
        let lens: Vec<usize> = groups.iter().map(|(_, v)| v.len()).collect();
        assert_eq!(lens, [max_batch(), max_batch(), 3]);
        let all: Vec<usize> = groups.into_iter().flat_map(|(_, v)| v).collect();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every key once, in order");
    }

    #[test]
    fn lock_by_gives_up_at_the_deadline_and_takes_a_poisoned_lock() {
        let mutex = Mutex::new(1);
        let held = mutex.lock().expect("free");
        assert!(lock_by(&mutex, Instant::now()).is_none(), "held elsewhere");
        drop(held);
        assert_eq!(lock_by(&mutex, Instant::now()).as_deref(), Some(&1));

        let poisoned = Arc::new(Mutex::new(2));
        let clone = Arc::clone(&poisoned);
        let _ = std::thread::spawn(move || {
            let _guard = clone.lock().expect("free");
            panic!("poison the lock");
        })
        .join();
        assert!(poisoned.is_poisoned());
        assert_eq!(lock_by(&poisoned, Instant::now()).as_deref(), Some(&2));
    }
}
