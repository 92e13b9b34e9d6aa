//! The object table: ids to sealed objects in arena memory, or to reservations of deferred
//! objects not set yet.
//!
//! Reservations cost table memory without arena memory, so each is charged
//! [`RESERVED_KEY_CHARGE`] against the memory limit until it is set, evicted, or expires
//! (its time to live is fixed per server, so the oldest reservation expires first).
//!
//! Sealed objects may carry a lifetime ([`Lifetime`]): a time to live or a renewable lease
//! (both expire by the deadline queue, swept every second and checked on every lookup) and
//! an owner tag (evicted together when the last session that used the tag closes, or on
//! release). Under an eviction policy, objects that are not pinned by a lease are ranked
//! in an [`Order`] and the coldest ones dropped when a put does not fit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::runtime::RuntimeFlavor;

use dimstore_arena::{Allocation, Arena, OutOfMemory, Sealed, Writer};
use dimstore_proto::{ErrorReply, ObjectId, PressureStats, PutOptions, Status};
use dimstore_transport::chain;
use tokio::sync::Notify;

use crate::eviction::{Evicted, Order, Policy, Rank};
use crate::spill::{KeptFile, SpillDir, SpillError, SpillFile};
use crate::spiller::{Job, SpillTarget, SpillWriter};

/// A stored object: shared, read-only arena memory. Each clone is a lease.
pub type Object = Sealed;

/// Bytes of the memory limit a reserved key holds until it is set, evicted or expires: its
/// table entry, its expiry record and its id in the reply, rounded up.
pub const RESERVED_KEY_CHARGE: u64 = 128;

/// Most keys reserved, or reservations expired, under one hold of the table lock: a large
/// batch takes the lock in turns with other requests.
const TABLE_CHUNK: usize = 4096;

/// Longest a put (or a restore) waits for the spill writer to free memory before it is
/// refused with `StoreFull`.
pub const ROOM_WAIT: Duration = Duration::from_secs(10);

/// How long a stored object lives and who owns it (from [`PutOptions`]).
#[derive(Debug, Clone, Default)]
pub struct Lifetime {
    /// Evicted at this instant, if ever.
    pub expires: Option<Instant>,
    /// The expiry is a lease that [`ObjectStore::extend`] renews; leased objects are pinned
    /// (never evicted by the policy).
    pub leased: bool,
    /// Owner tag: evicted with its owner.
    pub owner: Option<Arc<str>>,
}

impl Lifetime {
    /// The lifetime `options` ask for, counted from `now` (the request limits bound the
    /// durations).
    pub fn from_options(options: &PutOptions, now: Instant) -> Lifetime {
        let after = |ms: u64| (ms > 0).then(|| now + Duration::from_millis(ms));
        let lease = after(options.lease_ms);
        let ttl = after(options.ttl_ms);
        Lifetime {
            // With both, whichever ends first.
            expires: match (ttl, lease) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            leased: lease.is_some(),
            owner: options.owner.as_deref().map(Arc::from),
        }
    }

    fn is_plain(&self) -> bool {
        self.expires.is_none() && self.owner.is_none()
    }
}

/// Where a sealed object's bytes are.
#[derive(Debug)]
enum Data {
    /// In memory; `kept` is its spill file from before it was restored, if still on disk.
    Memory {
        object: Object,
        kept: Option<KeptFile>,
    },
    /// Spilled to disk; shared so a restore can read it without the table lock.
    Disk(Arc<SpillFile>),
}

/// A sealed object in the table.
#[derive(Debug)]
struct Stored {
    data: Data,
    lifetime: Lifetime,
    /// Place in the eviction order (`None`: not evictable by the policy).
    rank: Option<Rank>,
}

/// What the table holds under an id.
#[derive(Debug)]
enum Entry {
    Sealed(Stored),
    /// Reserved by `new_key`, dropped at `expires` unless set before.
    Reserved {
        expires: Instant,
    },
}

/// Why the server (not a client's evict) removed an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Policy,
    Expired,
    Owner,
    Consumed,
}

/// Objects of one owner tag, and the sessions using the tag.
#[derive(Debug, Default)]
struct OwnerGroup {
    ids: HashSet<ObjectId>,
    sessions: u64,
}

/// The table behind the lock.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<ObjectId, Entry>,
    /// Reservations by expiry time (oldest first); entries set or evicted meanwhile are
    /// skipped when their time comes.
    expiring: VecDeque<(Instant, ObjectId)>,
    /// Sealed objects by expiry time (soonest first); stale records (object gone, lease
    /// renewed) are skipped when their time comes.
    deadlines: BinaryHeap<Reverse<(Instant, ObjectId)>>,
    /// Owner tags in use.
    owners: HashMap<Arc<str>, OwnerGroup>,
    /// Objects with a lifetime now.
    with_lifetime: u64,
    /// Eviction order of the evictable objects.
    order: Order,
    /// Ids the server evicted recently.
    evicted: Evicted,
    /// Removals by the server, by cause.
    counts: PressureCounts,
}

/// Objects the server removed, by cause.
#[derive(Debug, Default, Clone, Copy)]
struct PressureCounts {
    policy: u64,
    expired: u64,
    owner: u64,
    consumed: u64,
}

impl Table {
    /// Drops the expiry records of reservations that are gone once they outnumber the live
    /// ones, so the queue stays proportional to what is charged.
    fn compact_expiring(&mut self, reserved: u64) {
        if self.expiring.len() as u64 > 2 * reserved + TABLE_CHUNK as u64 {
            let entries = &self.entries;
            self.expiring.retain(|(at, id)| {
                matches!(entries.get(id), Some(Entry::Reserved { expires }) if expires == at)
            });
        }
    }

    /// Stores a sealed object under a fresh id.
    fn insert_sealed(&mut self, id: ObjectId, object: Object, lifetime: Lifetime) {
        let rank = if lifetime.leased {
            None
        } else {
            self.order.insert(id)
        };
        self.track_lifetime(id, &lifetime);
        self.entries.insert(
            id,
            Entry::Sealed(Stored {
                data: Data::Memory { object, kept: None },
                lifetime,
                rank,
            }),
        );
    }

    fn track_lifetime(&mut self, id: ObjectId, lifetime: &Lifetime) {
        if lifetime.is_plain() {
            return;
        }
        self.with_lifetime += 1;
        if let Some(at) = lifetime.expires {
            self.deadlines.push(Reverse((at, id)));
            if self.deadlines.len() as u64 > 2 * self.with_lifetime + TABLE_CHUNK as u64 {
                let entries = &self.entries;
                self.deadlines.retain(|Reverse((at, id))| {
                    matches!(entries.get(id), Some(Entry::Sealed(s)) if s.lifetime.expires == Some(*at))
                });
            }
        }
        if let Some(owner) = &lifetime.owner {
            self.owners
                .entry(Arc::clone(owner))
                .or_default()
                .ids
                .insert(id);
        }
    }

    /// Removes a sealed object and its bookkeeping; `cause` is set when the server (not a
    /// client) removed it, and remembered for its gets. Returns the object so the caller
    /// drops it (freeing its memory) after releasing the lock.
    fn remove_sealed(&mut self, id: ObjectId, cause: Option<Cause>) -> Option<Data> {
        if !matches!(self.entries.get(&id), Some(Entry::Sealed(_))) {
            return None;
        }
        let Some(Entry::Sealed(stored)) = self.entries.remove(&id) else {
            return None;
        };
        if let Some(rank) = stored.rank {
            self.order.remove(id, rank);
        }
        if !stored.lifetime.is_plain() {
            self.with_lifetime -= 1;
        }
        if let Some(owner) = &stored.lifetime.owner {
            if let Some(group) = self.owners.get_mut(owner) {
                group.ids.remove(&id);
                if group.ids.is_empty() && group.sessions == 0 {
                    self.owners.remove(owner);
                }
            }
        }
        if let Some(cause) = cause {
            self.evicted.remember(id);
            let c = &mut self.counts;
            match cause {
                Cause::Policy => c.policy += 1,
                Cause::Expired => c.expired += 1,
                Cause::Owner => c.owner += 1,
                Cause::Consumed => c.consumed += 1,
            }
        }
        Some(stored.data)
    }

    /// The sealed object under `id` if it is live at `now` (an expired one is removed).
    fn live(&mut self, id: &ObjectId, now: Instant, dropped: &mut Vec<Data>) -> Lookup {
        match self.entries.get(id) {
            Some(Entry::Sealed(s)) if s.lifetime.expires.is_some_and(|at| at <= now) => {
                dropped.extend(self.remove_sealed(*id, Some(Cause::Expired)));
                Lookup::Evicted
            }
            Some(Entry::Sealed(Stored {
                data: Data::Memory { object, .. },
                ..
            })) => Lookup::Found(object.clone()),
            Some(Entry::Sealed(_)) => Lookup::Spilled,
            Some(Entry::Reserved { .. }) => Lookup::Reserved,
            None if self.evicted.contains(id) => Lookup::Evicted,
            None => Lookup::Missing,
        }
    }
}

/// Lookup result for one id.
#[derive(Debug)]
pub enum Lookup {
    /// The object, leased.
    Found(Object),
    /// Reserved by `new_key`, not set yet.
    Reserved,
    /// Unknown id.
    Missing,
    /// Removed by the server (policy, time to live, lease, owner, consumed).
    Evicted,
    /// Spilled to disk ([`ObjectStore::restore`] brings it back).
    Spilled,
}

/// Objects of one server.
#[derive(Debug)]
pub struct ObjectStore {
    arena: Arena,
    /// Shared with the spill writer, which swaps written objects to their files.
    table: Arc<Mutex<Table>>,
    /// Reservations in the table (changed under its lock, read without it).
    reserved: AtomicU64,
    /// How long a reservation lasts unless set.
    reserved_ttl: Duration,
    /// High 64 bits of every id: random per server instance, so ids of a restarted server
    /// never alias the old ones.
    instance: u64,
    counter: AtomicU64,
    /// Woken whenever a deferred object is set or a reservation dropped.
    changed: Notify,
    /// Whether the policy may drop objects to make room.
    policy: Policy,
    /// Where cold objects go when memory is full, if anywhere.
    spill: Option<Spilling>,
}

/// A spill directory and its writer.
#[derive(Debug)]
struct Spilling {
    dir: Arc<SpillDir>,
    writer: SpillWriter,
}

/// Memory use above which cold objects are queued for spilling after a put.
fn high_water(capacity: u64) -> u64 {
    capacity / 10 * 9
}

/// Memory use the spill-ahead after a put aims for.
fn low_water(capacity: u64) -> u64 {
    capacity / 4 * 3
}

/// Runs `wait` (which blocks on the spill writer): on a runtime worker thread, through
/// `block_in_place`, so the runtime moves its other tasks (other connections' requests) to
/// another thread meanwhile.
fn blocking<R>(wait: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// The table as the spill writer sees it.
#[derive(Debug)]
struct TableTarget(Arc<Mutex<Table>>);

impl TableTarget {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `stored` holds exactly `object` in memory.
fn holds(stored: &Stored, object: &Object) -> bool {
    matches!(&stored.data, Data::Memory { object: o, .. } if o.as_slice().as_ptr() == object.as_slice().as_ptr() && o.len() == object.len())
}

impl SpillTarget for TableTarget {
    fn still_wanted(&self, id: ObjectId, object: &Object) -> bool {
        matches!(self.table().entries.get(&id), Some(Entry::Sealed(s)) if holds(s, object))
    }

    fn written(&self, id: ObjectId, object: &Object, result: Result<SpillFile, SpillError>) {
        let file = match result {
            Ok(file) => Arc::new(file),
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot spill: the object stays in memory");
                return;
            }
        };
        let mut table = self.table();
        let Table { entries, order, .. } = &mut *table;
        let freed = match entries.get_mut(&id) {
            Some(Entry::Sealed(stored)) if holds(stored, object) => {
                if let Some(rank) = stored.rank {
                    order.park(id, rank);
                }
                Some(std::mem::replace(&mut stored.data, Data::Disk(file)))
            }
            // Evicted or consumed while being written: the file goes (dropped below).
            _ => None,
        };
        drop(table);
        drop(freed);
    }
}

impl ObjectStore {
    /// A store whose objects live in `arena`; reserved keys last `reserved_ttl` unless set.
    /// Full puts are refused (no eviction policy, see [`ObjectStore::with_eviction`]).
    pub fn new(arena: Arena, instance: u64, reserved_ttl: Duration) -> Self {
        ObjectStore {
            arena,
            table: Arc::default(),
            reserved: AtomicU64::new(0),
            reserved_ttl,
            instance,
            counter: AtomicU64::new(1),
            changed: Notify::new(),
            policy: Policy::None,
            spill: None,
        }
    }

    /// This store, making room for puts that do not fit by evicting under `policy`. Call
    /// before anything is stored.
    pub fn with_eviction(mut self, policy: Policy) -> Self {
        self.policy = policy;
        if policy != Policy::None || self.spill.is_none() {
            self.table().order = Order::new(policy);
        }
        self
    }

    /// This store, spilling the coldest objects (least recently read, unless the eviction
    /// policy ranks otherwise) to `spill` when memory fills, before evicting any: a writer
    /// thread takes them from a queue of at most a quarter of the memory limit. Call
    /// before anything is stored.
    pub fn with_spill(mut self, spill: SpillDir) -> std::io::Result<Self> {
        if self.policy == Policy::None {
            self.table().order = Order::new(Policy::Lru);
        }
        let dir = Arc::new(spill);
        let queue_limit = (self.arena.config().capacity / 4).max(1);
        let target = Arc::new(TableTarget(Arc::clone(&self.table)));
        let writer = SpillWriter::start(Arc::clone(&dir), queue_limit, target)?;
        self.spill = Some(Spilling { dir, writer });
        Ok(self)
    }

    /// The spill directory, if spilling is on.
    pub fn spill(&self) -> Option<&SpillDir> {
        self.spill.as_ref().map(|s| &*s.dir)
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> ObjectId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        ObjectId((u128::from(self.instance) << 64) | u128::from(n))
    }

    /// Bytes of the memory limit reserved keys hold now.
    fn reserved_charge(&self) -> u64 {
        self.reserved
            .load(Ordering::Relaxed)
            .saturating_mul(RESERVED_KEY_CHARGE)
    }

    /// Allocates memory for objects of these sizes (all or none). Under an eviction policy,
    /// the coldest evictable objects are dropped until they fit.
    pub fn allocate(&self, sizes: &[u64]) -> Result<Vec<Allocation>, ErrorReply> {
        let capacity = self.arena.config().capacity;
        if let Some(&big) = sizes.iter().find(|&&s| s > capacity) {
            return Err(ErrorReply::new(
                Status::TooLarge,
                format!("object of {big} bytes exceeds the memory limit of {capacity} bytes"),
            ));
        }
        let total = sizes.iter().fold(0u64, |acc, &s| acc.saturating_add(s));
        let deadline = Instant::now() + ROOM_WAIT;
        loop {
            match self.try_allocate(sizes, total) {
                Err(e) if e.status == Status::StoreFull && self.make_room(total, deadline) => {
                    continue
                }
                Ok(allocations) => {
                    self.spill_ahead();
                    return Ok(allocations);
                }
                other => return other,
            }
        }
    }

    /// Past the high-water mark (9/10 of the limit), queues the coldest objects for the
    /// spill writer until use would be back at the low-water mark (3/4), so that puts find
    /// room without waiting for the disk. Never waits.
    fn spill_ahead(&self) {
        let Some(spilling) = &self.spill else {
            return;
        };
        let capacity = self.arena.config().capacity;
        let used = self.arena.stats().used;
        if used > high_water(capacity) {
            let wanted =
                (used - low_water(capacity)).saturating_sub(spilling.writer.queue().pending());
            if wanted > 0 {
                self.spill_coldest(spilling, wanted);
            }
        }
    }

    fn try_allocate(&self, sizes: &[u64], total: u64) -> Result<Vec<Allocation>, ErrorReply> {
        let capacity = self.arena.config().capacity;
        let charged = self.reserved_charge();
        if charged > 0 {
            let free = capacity
                .saturating_sub(self.arena.stats().used)
                .saturating_sub(charged);
            if total > free {
                return Err(ErrorReply::new(
                    Status::StoreFull,
                    format!(
                        "{total} bytes requested but only {free} of {capacity} bytes are free \
                         ({} reserved keys not set yet hold {charged} bytes)",
                        self.reserved.load(Ordering::Relaxed)
                    ),
                ));
            }
        }
        sizes
            .iter()
            .map(|&size| self.arena.allocate(size).map_err(out_of_memory))
            .collect()
    }

    /// Allocates one segment of its own per size, for `writer` to write in place (see
    /// [`Arena::allocate_for_writer`]); same limits as [`Self::allocate`].
    pub fn allocate_for_writer(
        &self,
        sizes: &[u64],
        writer: &Writer,
    ) -> Result<Vec<Allocation>, ErrorReply> {
        let capacity = self.arena.config().capacity;
        if let Some(&big) = sizes.iter().find(|&&s| s > capacity) {
            return Err(ErrorReply::new(
                Status::TooLarge,
                format!("object of {big} bytes exceeds the memory limit of {capacity} bytes"),
            ));
        }
        sizes
            .iter()
            .map(|&size| {
                self.arena
                    .allocate_for_writer(size, writer)
                    .map_err(out_of_memory)
            })
            .collect()
    }

    /// Frees memory for `wanted` more bytes (at least some): queues the coldest objects for
    /// the spill writer and waits (until `deadline`) for it to free some, else (no spill
    /// directory, the writer failed, or the deadline passed) evicts them under the policy.
    /// `false` when nothing could be freed.
    fn make_room(&self, wanted: u64, deadline: Instant) -> bool {
        let capacity = self.arena.config().capacity;
        let free = capacity
            .saturating_sub(self.arena.stats().used)
            .saturating_sub(self.reserved_charge());
        let needed = wanted.saturating_sub(free).max(1);
        if let Some(spilling) = &self.spill {
            let queue = spilling.writer.queue();
            let seen = queue.progress();
            let more = needed.saturating_sub(queue.pending());
            if more > 0 && self.spill_coldest(spilling, more) > 0 {
                // Objects went back to their kept files: memory is free already.
                return true;
            }
            if queue.pending() > 0 {
                let now = blocking(|| queue.wait_progress(seen, deadline));
                if now.written > seen.written {
                    return true;
                }
                // A failed write (disk full, I/O error) or the deadline: evict instead,
                // or refuse.
            }
        }
        self.policy != Policy::None && self.evict_coldest(needed)
    }

    /// The coldest objects in memory that nobody reads or maps now (only the table holds
    /// them), about `needed` bytes' worth.
    fn coldest_in_memory(table: &Table, needed: u64) -> Vec<(ObjectId, Object)> {
        let mut found = Vec::new();
        let mut bytes = 0u64;
        for id in table.order.coldest() {
            if bytes >= needed {
                break;
            }
            if let Some(Entry::Sealed(Stored {
                data: Data::Memory { object, .. },
                ..
            })) = table.entries.get(&id)
            {
                if object.leases() == 1 {
                    bytes += object.len().max(1);
                    found.push((id, object.clone()));
                }
            }
        }
        found
    }

    /// Drops the coldest evictable objects (not pinned, not read right now); whether any
    /// went.
    fn evict_coldest(&self, needed: u64) -> bool {
        let mut table = self.table();
        let victims = Self::coldest_in_memory(&table, needed);
        let dropped: Vec<Data> = victims
            .iter()
            .filter_map(|&(id, _)| table.remove_sealed(id, Some(Cause::Policy)))
            .collect();
        drop(table);
        drop(victims);
        if !dropped.is_empty() {
            tracing::debug!(objects = dropped.len(), "evicted to make room");
        }
        !dropped.is_empty()
    }

    /// Spills the coldest objects in memory, about `needed` bytes' worth: one restored
    /// earlier goes back to its kept file at once (no write); the others are queued for the
    /// spill writer, as far as the queue and the spill limit take them (kept files of
    /// objects in memory give up their room to them first). A spill limit that is reached
    /// logs a line; the objects stay in memory. Returns the bytes freed at once.
    fn spill_coldest(&self, spilling: &Spilling, needed: u64) -> u64 {
        let mut table = self.table();
        let candidates = Self::coldest_in_memory(&table, needed);
        let mut freed = Vec::new();
        let mut to_write = Vec::new();
        let Table { entries, order, .. } = &mut *table;
        for (id, object) in candidates {
            let Some(Entry::Sealed(stored)) = entries.get_mut(&id) else {
                continue;
            };
            let kept = match &mut stored.data {
                Data::Memory { kept, .. } => kept.take(),
                Data::Disk(_) => None,
            };
            match kept {
                Some(kept) => {
                    if let Some(rank) = stored.rank {
                        order.park(id, rank);
                    }
                    let file = Data::Disk(kept.respill());
                    freed.push(std::mem::replace(&mut stored.data, file));
                }
                None => to_write.push((id, object)),
            }
        }
        drop(table);
        let freed_bytes = freed
            .iter()
            .map(|d| match d {
                Data::Memory { object, .. } => object.len().max(1),
                Data::Disk(_) => 0,
            })
            .sum();
        // The memory goes here, outside the lock.
        drop(freed);
        for (id, object) in to_write {
            let len = object.len();
            if let Err(e) = self.reserve_spill_room(spilling, len) {
                tracing::warn!(error = %chain(&e), "cannot spill: the object stays in memory");
                break;
            }
            if spilling
                .writer
                .queue()
                .push(Job { id, object }, len)
                .is_err()
            {
                spilling.dir.unreserve(len);
                break;
            }
        }
        freed_bytes
    }

    /// Reserves `len` bytes of the spill limit, giving up kept files (of objects in memory,
    /// hottest first) to find them if the limit is reached.
    fn reserve_spill_room(&self, spilling: &Spilling, len: u64) -> Result<(), SpillError> {
        match spilling.dir.try_reserve(len) {
            Err(SpillError::Limit { .. }) => {
                self.drop_kept_files(len);
                spilling.dir.reserve(len)
            }
            other => other,
        }
    }

    /// Removes kept spill files of objects in memory, the most recently read first (the
    /// least likely to be spilled again), until `wanted` bytes are gone; returns the bytes.
    fn drop_kept_files(&self, wanted: u64) -> u64 {
        let mut table = self.table();
        let Table { entries, order, .. } = &mut *table;
        let mut dropped = Vec::new();
        let mut bytes = 0;
        for id in order.hottest() {
            if bytes >= wanted {
                break;
            }
            if let Some(Entry::Sealed(Stored {
                data: Data::Memory { kept, .. },
                ..
            })) = entries.get_mut(&id)
            {
                if let Some(k) = kept.take() {
                    bytes += k.len();
                    dropped.push(k);
                }
            }
        }
        drop(table);
        // The files go here, outside the lock.
        drop(dropped);
        bytes
    }

    /// Brings spilled objects among `found` (the lookup of `ids`) back into memory. A
    /// failure (no memory even after spilling others, a read error) is a typed error; the
    /// object stays on disk.
    pub fn restore(
        &self,
        ids: &[ObjectId],
        mut found: Vec<Lookup>,
    ) -> Result<Vec<Lookup>, ErrorReply> {
        for (id, lookup) in ids.iter().zip(found.iter_mut()) {
            if matches!(lookup, Lookup::Spilled) {
                *lookup = self.restore_one(id)?;
            }
        }
        Ok(found)
    }

    fn restore_one(&self, id: &ObjectId) -> Result<Lookup, ErrorReply> {
        let (Some(spill), Some(file)) = (self.spill(), self.spilled_file(id)) else {
            // Restored (or evicted) meanwhile.
            return Ok(self.lookup(std::slice::from_ref(id)).remove(0));
        };
        let mut allocation = self
            .allocate(&[file.len()])
            .map_err(|e| {
                ErrorReply::new(
                    e.status,
                    format!("cannot restore spilled object {id}: {}", e.message),
                )
            })?
            .remove(0);
        spill.read(&file, allocation.as_mut_slice()).map_err(|e| {
            let e = chain(&e);
            tracing::warn!(error = %e, "cannot restore a spilled object");
            ErrorReply::new(Status::Internal, format!("cannot restore object {id}: {e}"))
        })?;
        let object = allocation.seal();
        let mut table = self.table();
        let Table { entries, order, .. } = &mut *table;
        let restored = match entries.get_mut(id) {
            Some(Entry::Sealed(stored)) if matches!(&stored.data, Data::Disk(f) if Arc::ptr_eq(f, &file)) =>
            {
                if let Some(rank) = &mut stored.rank {
                    order.readmit(*id, rank);
                }
                // The file stays: spilling the unchanged object again needs no write.
                Some(std::mem::replace(
                    &mut stored.data,
                    Data::Memory {
                        object: object.clone(),
                        kept: Some(KeptFile::new(Arc::clone(&file))),
                    },
                ))
            }
            _ => None,
        };
        drop(table);
        drop(restored);
        Ok(Lookup::Found(object))
    }

    fn spilled_file(&self, id: &ObjectId) -> Option<Arc<SpillFile>> {
        match self.table().entries.get(id) {
            Some(Entry::Sealed(Stored {
                data: Data::Disk(file),
                ..
            })) => Some(Arc::clone(file)),
            _ => None,
        }
    }

    /// Seals received objects under fresh ids.
    pub fn insert(&self, objects: Vec<Allocation>) -> Vec<ObjectId> {
        self.insert_with(objects, &Lifetime::default())
    }

    /// Seals received objects under fresh ids, each with `lifetime`. An owner tag must have
    /// been claimed ([`ObjectStore::claim_owner`]) by the putting session.
    pub fn insert_with(&self, objects: Vec<Allocation>, lifetime: &Lifetime) -> Vec<ObjectId> {
        let mut table = self.table();
        objects
            .into_iter()
            .map(|object| {
                let id = self.next_id();
                table.insert_sealed(id, object.seal(), lifetime.clone());
                id
            })
            .collect()
    }

    /// Records that a session puts objects under `owner`: they live until every session
    /// that claimed the tag has unclaimed it, or until released.
    pub fn claim_owner(&self, owner: &Arc<str>) {
        self.table()
            .owners
            .entry(Arc::clone(owner))
            .or_default()
            .sessions += 1;
    }

    /// A session that claimed `owner` closed: the last one evicts the tag's objects.
    /// Returns how many.
    pub fn unclaim_owner(&self, owner: &Arc<str>) -> u64 {
        let mut table = self.table();
        let Some(group) = table.owners.get_mut(owner) else {
            return 0;
        };
        group.sessions = group.sessions.saturating_sub(1);
        if group.sessions > 0 {
            return 0;
        }
        self.evict_owner(table, owner)
    }

    /// Evicts every object put under `owner`; returns how many.
    pub fn release_owner(&self, owner: &str) -> u64 {
        let table = self.table();
        self.evict_owner(table, owner)
    }

    fn evict_owner(&self, mut table: MutexGuard<'_, Table>, owner: &str) -> u64 {
        let ids: Vec<ObjectId> = match table.owners.get_mut(owner) {
            Some(group) => group.ids.drain().collect(),
            None => return 0,
        };
        if table.owners.get(owner).is_some_and(|g| g.sessions == 0) {
            table.owners.remove(owner);
        }
        let dropped: Vec<Data> = ids
            .iter()
            .filter_map(|&id| table.remove_sealed(id, Some(Cause::Owner)))
            .collect();
        drop(table);
        if !dropped.is_empty() {
            self.changed.notify_waiters();
        }
        dropped.len() as u64
    }

    /// Renews the leases of leased objects to `lease` from now; `true` where renewed (not
    /// leased, or gone: `false`).
    pub fn extend(&self, ids: &[ObjectId], lease: Duration) -> Vec<bool> {
        let now = Instant::now();
        let mut table = self.table();
        let mut dropped = Vec::new();
        let renewed = ids
            .iter()
            .map(|id| {
                if !matches!(
                    table.live(id, now, &mut dropped),
                    Lookup::Found(_) | Lookup::Spilled
                ) {
                    return false;
                }
                let at = now + lease;
                match table.entries.get_mut(id) {
                    Some(Entry::Sealed(s)) if s.lifetime.leased => {
                        s.lifetime.expires = Some(at);
                        table.deadlines.push(Reverse((at, *id)));
                        true
                    }
                    _ => false,
                }
            })
            .collect();
        drop(table);
        drop(dropped);
        renewed
    }

    /// Evicts objects whose time to live or lease ran out before `now`; returns how many.
    pub fn expire_objects(&self, now: Instant) -> u64 {
        let mut expired = 0;
        loop {
            let mut table = self.table();
            let mut dropped = Vec::new();
            let mut checked = 0;
            while checked < TABLE_CHUNK {
                match table.deadlines.peek() {
                    Some(&Reverse((at, id))) if at <= now => {
                        table.deadlines.pop();
                        checked += 1;
                        if matches!(table.entries.get(&id), Some(Entry::Sealed(s)) if s.lifetime.expires == Some(at))
                        {
                            dropped.extend(table.remove_sealed(id, Some(Cause::Expired)));
                        }
                    }
                    _ => break,
                }
            }
            drop(table);
            expired += dropped.len() as u64;
            drop(dropped);
            if checked < TABLE_CHUNK {
                break;
            }
        }
        if expired > 0 {
            self.changed.notify_waiters();
        }
        expired
    }

    fn spill_stats(&self) -> PressureStats {
        let Some(spill) = self.spill() else {
            return PressureStats::default();
        };
        let c = spill.counters();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PressureStats {
            spilled_bytes: get(&c.bytes).saturating_sub(get(&c.kept_bytes)),
            spilled_objects: get(&c.objects).saturating_sub(get(&c.kept_objects)),
            spill_kept_bytes: get(&c.kept_bytes),
            respills: get(&c.respills),
            restores: get(&c.restores),
            spill_failures: get(&c.failures),
            spill_written: get(&c.written),
            spill_write_ns: get(&c.write_ns),
            spill_read: get(&c.read),
            spill_read_ns: get(&c.read_ns),
            ..PressureStats::default()
        }
    }

    /// Counters of lifetimes and memory pressure.
    pub fn pressure(&self) -> PressureStats {
        let table = self.table();
        let c = table.counts;
        PressureStats {
            policy: self.policy.name().into(),
            policy_evictions: c.policy,
            expired: c.expired,
            owner_evictions: c.owner,
            consumed: c.consumed,
            with_lifetime: table.with_lifetime,
            ..self.spill_stats()
        }
    }

    /// Reserves `count` ids for deferred objects, each charged [`RESERVED_KEY_CHARGE`]
    /// against the memory limit until set, evicted, or expired: `StoreFull` if the limit
    /// has no room for them. The caller bounds `count` (the request limits).
    pub fn reserve(&self, count: u32) -> Result<Vec<ObjectId>, ErrorReply> {
        let capacity = self.arena.config().capacity;
        let wanted = u64::from(count).saturating_mul(RESERVED_KEY_CHARGE);
        let free = capacity
            .saturating_sub(self.arena.stats().used)
            .saturating_sub(self.reserved_charge());
        if wanted > free {
            return Err(ErrorReply::new(
                Status::StoreFull,
                format!(
                    "{count} reserved keys need {wanted} bytes of the memory limit \
                     ({RESERVED_KEY_CHARGE} each) but only {free} of {capacity} bytes are free"
                ),
            ));
        }
        let expires = Instant::now() + self.reserved_ttl;
        let mut ids = Vec::with_capacity(count as usize);
        while ids.len() < count as usize {
            let now = (count as usize - ids.len()).min(TABLE_CHUNK);
            let mut table = self.table();
            for _ in 0..now {
                let id = self.next_id();
                table.entries.insert(id, Entry::Reserved { expires });
                table.expiring.push_back((expires, id));
                ids.push(id);
            }
            let reserved = self.reserved.fetch_add(now as u64, Ordering::Relaxed) + now as u64;
            table.compact_expiring(reserved);
        }
        Ok(ids)
    }

    /// Drops reservations whose time ran out before `now` (waking gets waiting on them,
    /// which then find nothing); returns how many.
    pub fn expire_reservations(&self, now: Instant) -> u64 {
        let mut expired = 0;
        loop {
            let mut table = self.table();
            let mut checked = 0;
            while checked < TABLE_CHUNK {
                match table.expiring.front() {
                    Some(&(at, id)) if at <= now => {
                        table.expiring.pop_front();
                        checked += 1;
                        if matches!(table.entries.get(&id), Some(Entry::Reserved { expires }) if *expires == at)
                        {
                            table.entries.remove(&id);
                            self.reserved.fetch_sub(1, Ordering::Relaxed);
                            expired += 1;
                        }
                    }
                    _ => break,
                }
            }
            drop(table);
            if checked < TABLE_CHUNK {
                break;
            }
        }
        if expired > 0 {
            self.changed.notify_waiters();
        }
        expired
    }

    /// Checks that every id is reserved and unset (before any memory is spent on a set).
    pub fn check_settable(&self, ids: &[ObjectId]) -> Result<(), ErrorReply> {
        let table = self.table();
        for id in ids {
            match table.entries.get(id) {
                Some(Entry::Reserved { .. }) => {}
                Some(Entry::Sealed(_)) => {
                    return Err(ErrorReply::new(
                        Status::AlreadySet,
                        format!("object {id} is already set"),
                    ))
                }
                None => {
                    return Err(ErrorReply::new(
                        Status::NotFound,
                        format!("object {id} was never reserved here (or was evicted)"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Sets reserved objects (all or none) and wakes waiting gets.
    pub fn set(&self, ids: &[ObjectId], objects: Vec<Allocation>) -> Result<(), ErrorReply> {
        let mut table = self.table();
        // Re-check under the same lock as the update: a concurrent set or evict may have won.
        for id in ids {
            if !matches!(table.entries.get(id), Some(Entry::Reserved { .. })) {
                drop(table);
                return self.check_settable(ids).and(Err(ErrorReply::new(
                    Status::AlreadySet,
                    format!("object {id} changed while being set"),
                )));
            }
        }
        for (id, object) in ids.iter().zip(objects) {
            // A repeated id was set by its first occurrence; later ones are dropped.
            if let Some(Entry::Reserved { .. }) = table.entries.get(id) {
                table.insert_sealed(*id, object.seal(), Lifetime::default());
                self.reserved.fetch_sub(1, Ordering::Relaxed);
            }
        }
        drop(table);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Looks up objects, leasing the ones found (a read, for the eviction order).
    pub fn lookup(&self, ids: &[ObjectId]) -> Vec<Lookup> {
        let now = Instant::now();
        let mut table = self.table();
        let mut dropped = Vec::new();
        let found = ids
            .iter()
            .map(|id| {
                let lookup = table.live(id, now, &mut dropped);
                if let Lookup::Found(_) = lookup {
                    let Table { entries, order, .. } = &mut *table;
                    if let Some(Entry::Sealed(Stored {
                        rank: Some(rank), ..
                    })) = entries.get_mut(id)
                    {
                        order.touch(*id, rank);
                    }
                }
                lookup
            })
            .collect();
        drop(table);
        drop(dropped);
        found
    }

    /// Looks up objects and removes the ones found in the same step: of concurrent callers,
    /// exactly one gets each object.
    pub fn take(&self, ids: &[ObjectId]) -> Vec<Lookup> {
        let now = Instant::now();
        let mut table = self.table();
        let mut dropped = Vec::new();
        let taken = ids
            .iter()
            .map(|id| {
                let lookup = table.live(id, now, &mut dropped);
                if let Lookup::Found(_) = lookup {
                    dropped.extend(table.remove_sealed(*id, Some(Cause::Consumed)));
                }
                lookup
            })
            .collect();
        drop(table);
        drop(dropped);
        taken
    }

    /// Which ids name set objects.
    pub fn exists(&self, ids: &[ObjectId]) -> Vec<bool> {
        let now = Instant::now();
        let table = self.table();
        ids.iter()
            .map(|id| {
                matches!(table.entries.get(id), Some(Entry::Sealed(s))
                    if s.lifetime.expires.is_none_or(|at| at > now))
            })
            .collect()
    }

    /// Removes objects and reservations. Memory is freed when the last lease ends.
    pub fn evict(&self, ids: &[ObjectId]) -> Vec<bool> {
        let mut table = self.table();
        let mut unreserved = 0;
        let mut dropped = Vec::new();
        let removed: Vec<bool> = ids
            .iter()
            .map(|id| match table.entries.get(id) {
                Some(Entry::Reserved { .. }) => {
                    table.entries.remove(id);
                    unreserved += 1;
                    true
                }
                Some(Entry::Sealed(_)) => {
                    dropped.extend(table.remove_sealed(*id, None));
                    true
                }
                None => false,
            })
            .collect();
        self.reserved.fetch_sub(unreserved, Ordering::Relaxed);
        drop(table);
        drop(dropped);
        self.changed.notify_waiters();
        removed
    }

    /// A future that completes at the next set or evict. Create it *before* checking, so a
    /// change between the check and the wait is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// (set objects, reservations) counts.
    pub fn counts(&self) -> (u64, u64) {
        let table = self.table();
        let reserved = self.reserved.load(Ordering::Relaxed);
        (table.entries.len() as u64 - reserved, reserved)
    }
}

/// Any failure to allocate (no room under the limit, or no new segment from the system,
/// and whatever the arena may report later) is "no room" to the client; the text, with its
/// causes, says which.
fn out_of_memory(e: OutOfMemory) -> ErrorReply {
    ErrorReply::new(Status::StoreFull, chain(&e).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dimstore_arena::ArenaConfig;

    fn store(capacity: u64, ttl: Duration) -> ObjectStore {
        let arena = Arena::new(ArenaConfig {
            capacity,
            segment_size: 1 << 20,
        });
        ObjectStore::new(arena, 7, ttl)
    }

    #[test]
    fn reserved_keys_are_charged_against_the_memory_limit() {
        let store = store(1 << 20, Duration::from_secs(3600));
        let fit = ((1 << 20) / RESERVED_KEY_CHARGE) as u32;
        let ids = store.reserve(fit / 2).expect("room");
        assert_eq!(store.counts(), (0, u64::from(fit / 2)));
        // A put needs room next to what the reservations hold.
        let e = store.allocate(&[(1 << 20) / 2 + 1]).expect_err("charged");
        assert_eq!(e.status, Status::StoreFull, "{e}");
        assert!(store.allocate(&[(1 << 20) / 4]).is_ok());
        let e = store.reserve(fit).expect_err("full");
        assert_eq!(e.status, Status::StoreFull, "{e}");
        // Set and evicted reservations are no longer charged.
        let object = store.allocate(&[10]).expect("room");
        store.set(&ids[..1], object).expect("set");
        store.evict(&ids[1..]);
        assert_eq!(store.counts(), (1, 0));
        assert_eq!(store.reserved_charge(), 0);
        assert!(store.reserve(fit / 2).is_ok());
    }

    #[test]
    fn reservations_expire_after_their_ttl_and_wake_waiters() {
        let store = store(1 << 20, Duration::from_secs(60));
        let start = Instant::now();
        let old = store.reserve(3).expect("room");
        let object = store.allocate(&[1]).expect("room");
        store.set(&old[..1], object).expect("set");
        assert_eq!(store.expire_reservations(start), 0, "not yet");
        let changed = store.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let later = start + Duration::from_secs(61);
        assert_eq!(store.expire_reservations(later), 2, "the set one stays");
        assert!(futures_ready(changed.as_mut()), "waiting gets are woken");
        assert!(matches!(
            store.lookup(&old)[..],
            [Lookup::Found(_), Lookup::Missing, Lookup::Missing]
        ));
        assert_eq!(store.counts(), (1, 0));
        let e = store.check_settable(&old[1..2]).expect_err("expired");
        assert_eq!(e.status, Status::NotFound);
    }

    #[test]
    fn large_reservations_expire_in_turns_and_the_queue_stays_bounded() {
        let store = store(64 << 20, Duration::ZERO);
        for _ in 0..8 {
            let ids = store.reserve(TABLE_CHUNK as u32 + 10).expect("room");
            // Evicted right away: their expiry records become stale.
            store.evict(&ids);
        }
        let queued = store.table().expiring.len();
        assert!(queued <= 3 * TABLE_CHUNK, "{queued} expiry records kept");
        store.reserve(3 * TABLE_CHUNK as u32).expect("room");
        assert_eq!(
            store.expire_reservations(Instant::now() + Duration::from_secs(1)),
            3 * TABLE_CHUNK as u64
        );
        assert_eq!(store.counts(), (0, 0));
        assert!(store.table().expiring.is_empty());
    }

    fn put(store: &ObjectStore, size: u64, lifetime: &Lifetime) -> ObjectId {
        let objects = store.allocate(&[size]).expect("room");
        store.insert_with(objects, lifetime)[0]
    }

    #[test]
    fn objects_expire_at_their_ttl_on_lookup_and_by_the_sweep() {
        let store = store(1 << 20, Duration::from_secs(60));
        let now = Instant::now();
        let options = PutOptions {
            ttl_ms: 50,
            ..PutOptions::default()
        };
        let short = put(&store, 64, &Lifetime::from_options(&options, now));
        let swept = put(&store, 64, &Lifetime::from_options(&options, now));
        let plain = put(&store, 64, &Lifetime::default());
        assert!(matches!(store.lookup(&[short])[..], [Lookup::Found(_)]));
        std::thread::sleep(Duration::from_millis(60));
        // Past its time: gone on lookup even before a sweep, reported as evicted.
        assert!(matches!(store.lookup(&[short])[..], [Lookup::Evicted]));
        assert_eq!(store.exists(&[swept, plain]), [false, true]);
        assert_eq!(store.expire_objects(Instant::now()), 1);
        assert!(matches!(
            store.lookup(&[swept, plain])[..],
            [Lookup::Evicted, Lookup::Found(_)]
        ));
        assert_eq!(store.pressure().expired, 2);
        assert_eq!(
            store.arena().stats().used,
            64,
            "only the plain object holds memory"
        );
    }

    #[test]
    fn leases_expire_unless_extended() {
        let store = store(1 << 20, Duration::from_secs(60));
        let start = Instant::now();
        let options = PutOptions {
            lease_ms: 1000,
            ..PutOptions::default()
        };
        let renewed = put(&store, 1, &Lifetime::from_options(&options, start));
        let lapsed = put(&store, 1, &Lifetime::from_options(&options, start));
        let plain = put(&store, 1, &Lifetime::default());
        assert_eq!(
            store.extend(&[renewed, plain], Duration::from_secs(3600)),
            [true, false],
            "only leased objects are extended"
        );
        assert_eq!(store.expire_objects(start + Duration::from_secs(2)), 1);
        assert_eq!(store.exists(&[renewed, lapsed, plain]), [true, false, true]);
        assert_eq!(store.extend(&[lapsed], Duration::from_secs(1)), [false]);
    }

    #[test]
    fn take_hands_each_object_to_exactly_one_caller() {
        let store = std::sync::Arc::new(store(1 << 20, Duration::from_secs(60)));
        let ids: Vec<ObjectId> = (0..200)
            .map(|_| put(&store, 8, &Lifetime::default()))
            .collect();
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                let ids = ids.clone();
                std::thread::spawn(move || {
                    store
                        .take(&ids)
                        .iter()
                        .map(|l| matches!(l, Lookup::Found(_)))
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        let results: Vec<Vec<bool>> = takers
            .into_iter()
            .map(|t| t.join().expect("taker"))
            .collect();
        for i in 0..ids.len() {
            assert_eq!(results.iter().filter(|r| r[i]).count(), 1, "object {i}");
        }
        assert_eq!(store.counts(), (0, 0));
        assert!(matches!(store.lookup(&ids[..1])[..], [Lookup::Evicted]));
        assert_eq!(store.arena().stats().used, 0);
    }

    #[test]
    fn owned_objects_go_with_the_last_session_of_their_owner_or_on_release() {
        let store = store(1 << 20, Duration::from_secs(60));
        let tag: Arc<str> = Arc::from("job-1");
        let owned = Lifetime {
            owner: Some(Arc::clone(&tag)),
            ..Lifetime::default()
        };
        store.claim_owner(&tag);
        store.claim_owner(&tag);
        let a = put(&store, 4, &owned);
        let plain = put(&store, 4, &Lifetime::default());
        assert_eq!(
            store.unclaim_owner(&tag),
            0,
            "another session still owns it"
        );
        assert_eq!(store.exists(&[a]), [true]);
        assert_eq!(store.unclaim_owner(&tag), 1);
        assert_eq!(store.exists(&[a, plain]), [false, true]);
        store.claim_owner(&tag);
        let b = put(&store, 4, &owned);
        assert_eq!(store.release_owner("job-1"), 1);
        assert_eq!(store.release_owner("job-1"), 0);
        assert!(matches!(store.lookup(&[b])[..], [Lookup::Evicted]));
        assert_eq!(store.pressure().owner_evictions, 2);
    }

    #[test]
    fn lru_evicts_the_least_recently_read_and_spares_pinned_and_read_objects() {
        let store = store(1 << 20, Duration::from_secs(60)).with_eviction(Policy::Lru);
        let quarter = (1 << 20) / 4;
        let pinned = Lifetime::from_options(
            &PutOptions {
                lease_ms: 3_600_000,
                ..PutOptions::default()
            },
            Instant::now(),
        );
        let pin = put(&store, quarter, &pinned);
        let a = put(&store, quarter, &Lifetime::default());
        let b = put(&store, quarter, &Lifetime::default());
        let c = put(&store, quarter, &Lifetime::default());
        // Read a, then c: b is the least recently read, then a.
        drop(store.lookup(&[a]));
        drop(store.lookup(&[c]));
        let d = put(&store, quarter, &Lifetime::default());
        assert_eq!(
            store.exists(&[pin, a, b, c, d]),
            [true, true, false, true, true]
        );
        assert!(matches!(store.lookup(&[b])[..], [Lookup::Evicted]));
        // a is next, unless someone is reading it: then c goes.
        let reading = store.lookup(&[a]);
        let e = put(&store, quarter, &Lifetime::default());
        assert_eq!(
            store.exists(&[pin, a, c, d, e]),
            [true, true, false, true, true]
        );
        drop(reading);
        assert_eq!(store.pressure().policy_evictions, 2);
        // Nothing evictable left for an object as large as the memory limit.
        let e = store.allocate(&[1 << 20]).expect_err("pinned object stays");
        assert_eq!(e.status, Status::StoreFull, "{e}");
        assert_eq!(store.exists(&[pin]), [true]);
    }

    #[test]
    fn without_a_policy_a_full_store_refuses() {
        let store = store(1 << 20, Duration::from_secs(60));
        let a = put(&store, 1 << 19, &Lifetime::default());
        let _b = put(&store, 1 << 19, &Lifetime::default());
        let e = store.allocate(&[1]).expect_err("full");
        assert_eq!(e.status, Status::StoreFull);
        assert_eq!(store.exists(&[a]), [true]);
    }

    #[test]
    fn full_memory_spills_the_coldest_and_gets_restore_them() {
        let (_root, store) = spilling_store(1 << 30);
        let quarter = (1 << 20) / 4;
        let ids: Vec<ObjectId> = (0..12u8).map(|i| put_filled(&store, quarter, i)).collect();
        let pressure = store.pressure();
        assert!(pressure.spilled_objects >= 8, "{pressure:?}");
        assert_eq!(pressure.policy_evictions, 0, "spilled, not evicted");
        assert!(store.arena().stats().used <= 1 << 20);
        for (i, id) in ids.iter().enumerate() {
            restore_and_check(&store, *id, i as u8);
        }
        assert!(store.pressure().restores >= 8);
        // Evicting spilled objects removes their files.
        store.evict(&ids);
        assert_eq!(store.pressure().spilled_objects, 0);
        let dir = store.spill().expect("spill").path().to_path_buf();
        assert_eq!(
            std::fs::read_dir(dir).expect("dir").count(),
            1,
            "only the lock"
        );
    }

    /// A store of 1 MiB spilling to a fresh directory (kept alive by the first value) with
    /// a spill limit of `limit` bytes.
    fn spilling_store(limit: u64) -> (tempfile::TempDir, ObjectStore) {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), limit).expect("spill dir");
        let store = store(1 << 20, Duration::from_secs(60))
            .with_spill(spill)
            .expect("spill writer");
        (root, store)
    }

    /// Puts an object of `len` bytes, every byte `fill`, making room by spilling.
    fn put_filled(store: &ObjectStore, len: u64, fill: u8) -> ObjectId {
        let mut a = store.allocate(&[len]).expect("room by spilling");
        a[0].as_mut_slice().fill(fill);
        store.insert(a)[0]
    }

    /// Restores `id` and checks every byte is `fill`.
    fn restore_and_check(store: &ObjectStore, id: ObjectId, fill: u8) {
        let found = store.restore(&[id], store.lookup(&[id])).expect("restore");
        let [Lookup::Found(object)] = &found[..] else {
            panic!("object {fill}: {found:?}");
        };
        assert!(
            object.as_slice().iter().all(|&b| b == fill),
            "object {fill}"
        );
    }

    /// Waits (bounded) until the spill writer has nothing pending.
    fn spills_settle(store: &ObjectStore) {
        let queue = store.spill.as_ref().expect("spilling").writer.queue();
        let deadline = Instant::now() + Duration::from_secs(60);
        while queue.pending() > 0 {
            assert!(Instant::now() < deadline, "the spill writer is stuck");
            queue.wait_progress(queue.progress(), deadline);
        }
    }

    #[test]
    fn a_restored_object_spills_again_to_its_kept_file_without_a_write() {
        let (_root, store) = spilling_store(1 << 30);
        let quarter = (1 << 20) / 4;
        let first = put_filled(&store, quarter, 0);
        for i in 1..8u8 {
            put_filled(&store, quarter, i);
        }
        spills_settle(&store);
        assert!(matches!(store.lookup(&[first])[..], [Lookup::Spilled]));
        let on_disk = store.spilled_file(&first).expect("spilled");
        restore_and_check(&store, first, 0);
        let after_restore = store.pressure();
        assert_eq!(after_restore.spill_kept_bytes, quarter, "{after_restore:?}");
        // Four more objects push everything in memory out, the restored one too.
        for i in 8..12u8 {
            put_filled(&store, quarter, i);
        }
        spills_settle(&store);
        assert!(matches!(store.lookup(&[first])[..], [Lookup::Spilled]));
        let now = store.pressure();
        assert_eq!(now.respills, 1, "{now:?}");
        assert_eq!(now.spill_kept_bytes, 0, "{now:?}");
        assert!(
            Arc::ptr_eq(&store.spilled_file(&first).expect("spilled"), &on_disk),
            "spilled again to the same place in its log, not rewritten"
        );
        restore_and_check(&store, first, 0);
        assert_eq!(store.pressure().spill_kept_bytes, quarter);
        // Evicted, the object lets go of its place on disk (only this test holds it now).
        store.evict(&[first]);
        assert_eq!(store.pressure().spill_kept_bytes, 0);
        assert_eq!(Arc::strong_count(&on_disk), 1);
    }

    #[test]
    fn kept_files_give_their_room_to_new_spills_at_the_spill_limit() {
        let quarter = (1 << 20) / 4;
        // Room on disk for five objects: the seven put need at least three there, and every
        // restore leaves a kept file behind.
        let (_root, store) = spilling_store(5 * quarter);
        let ids: Vec<ObjectId> = (0..7u8).map(|i| put_filled(&store, quarter, i)).collect();
        for round in 0..3 {
            for (i, id) in ids.iter().enumerate() {
                spills_settle(&store);
                let found = store.restore(&[*id], store.lookup(&[*id]));
                let found = found.unwrap_or_else(|e| panic!("round {round}, object {i}: {e}"));
                let [Lookup::Found(object)] = &found[..] else {
                    panic!("round {round}, object {i}: {found:?}");
                };
                assert!(object.as_slice().iter().all(|&b| b == i as u8));
            }
        }
        let pressure = store.pressure();
        assert_eq!(pressure.spill_failures, 0, "{pressure:?}");
        assert!(
            pressure.spill_kept_bytes > 0,
            "restores still keep files: {pressure:?}"
        );
        let c = store.spill().expect("spill").counters();
        assert!(c.bytes.load(Ordering::Relaxed) <= 5 * quarter);
    }

    #[test]
    fn a_full_spill_limit_leaves_objects_in_memory_and_refuses_the_put() {
        let (_root, store) = spilling_store((1 << 20) / 2);
        let quarter = (1 << 20) / 4;
        let ids: Vec<ObjectId> = (0..6)
            .map(|_| {
                let a = store.allocate(&[quarter]).expect("room by spilling");
                store.insert(a)[0]
            })
            .collect();
        let e = store
            .allocate(&[quarter])
            .expect_err("memory and spill limit full");
        assert_eq!(e.status, Status::StoreFull, "{e}");
        assert!(store.pressure().spill_failures >= 1);
        assert_eq!(store.exists(&ids), [true; 6], "nothing lost");
    }

    #[test]
    fn a_failing_spill_disk_refuses_the_put_and_loses_nothing() {
        let (_root, store) = spilling_store(1 << 30);
        let dir = store.spill().expect("spill").path().to_path_buf();
        let quarter = (1 << 20) / 4;
        // Every write fails from now on (the directory is gone).
        std::fs::remove_dir_all(&dir).expect("remove");
        let ids: Vec<ObjectId> = (0..4u8)
            .map(|i| {
                let mut a = store.allocate(&[quarter]).expect("room in memory");
                a[0].as_mut_slice().fill(i);
                store.insert(a)[0]
            })
            .collect();
        let e = store
            .allocate(&[quarter])
            .expect_err("memory full, disk failing");
        assert_eq!(e.status, Status::StoreFull, "{e}");
        assert!(store.pressure().spill_failures >= 1);
        for (i, id) in ids.iter().enumerate() {
            let [Lookup::Found(object)] = &store.lookup(&[*id])[..] else {
                panic!("object {i} lost");
            };
            assert!(object.as_slice().iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn puts_on_a_multi_threaded_runtime_wait_for_the_writer_off_the_workers() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 1 << 30).expect("spill dir");
        let store = Arc::new(
            store(1 << 20, Duration::from_secs(60))
                .with_spill(spill)
                .expect("spill writer"),
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let quarter = (1 << 20) / 4;
        let ids = runtime.block_on(async {
            let mut ids = Vec::new();
            for i in 0..16u8 {
                let store = Arc::clone(&store);
                let id = tokio::spawn(async move { put_filled(&store, quarter, i) })
                    .await
                    .expect("put task");
                ids.push(id);
            }
            ids
        });
        assert!(store.pressure().spilled_objects >= 12);
        for (i, id) in ids.iter().enumerate() {
            restore_and_check(&store, *id, i as u8);
        }
    }

    /// Whether a notification future has completed (polled once, without a runtime).
    fn futures_ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        future.poll(&mut cx).is_ready()
    }
}
