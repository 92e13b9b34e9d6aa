//! The object table: ids to sealed objects in arena memory, or to reservations of deferred
//! objects not set yet.
//!
//! Reservations cost table memory without arena memory, so each is charged
//! [`RESERVED_KEY_CHARGE`] against the memory limit until it is set, evicted, or expires
//! (its time to live is fixed per server, so the oldest reservation expires first).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dimstore_arena::{Allocation, Arena, OutOfMemory, Sealed, Writer};
use dimstore_proto::{ErrorReply, ObjectId, Status};
use tokio::sync::Notify;

/// A stored object: shared, read-only arena memory. Each clone is a lease.
pub type Object = Sealed;

/// Bytes of the memory limit a reserved key holds until it is set, evicted or expires: its
/// table entry, its expiry record and its id in the reply, rounded up.
pub const RESERVED_KEY_CHARGE: u64 = 128;

/// Most keys reserved, or reservations expired, under one hold of the table lock: a large
/// batch takes the lock in turns with other requests.
const TABLE_CHUNK: usize = 4096;

/// What the table holds under an id.
#[derive(Debug)]
enum Entry {
    Sealed(Object),
    /// Reserved by `new_key`, dropped at `expires` unless set before.
    Reserved {
        expires: Instant,
    },
}

/// The table behind the lock.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<ObjectId, Entry>,
    /// Reservations by expiry time (oldest first); entries set or evicted meanwhile are
    /// skipped when their time comes.
    expiring: VecDeque<(Instant, ObjectId)>,
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
}

/// Objects of one server.
#[derive(Debug)]
pub struct ObjectStore {
    arena: Arena,
    table: Mutex<Table>,
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
}

impl ObjectStore {
    /// A store whose objects live in `arena`; reserved keys last `reserved_ttl` unless set.
    pub fn new(arena: Arena, instance: u64, reserved_ttl: Duration) -> Self {
        ObjectStore {
            arena,
            table: Mutex::new(Table::default()),
            reserved: AtomicU64::new(0),
            reserved_ttl,
            instance,
            counter: AtomicU64::new(1),
            changed: Notify::new(),
        }
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

    /// Allocates memory for objects of these sizes (all or none).
    pub fn allocate(&self, sizes: &[u64]) -> Result<Vec<Allocation>, ErrorReply> {
        let capacity = self.arena.config().capacity;
        if let Some(&big) = sizes.iter().find(|&&s| s > capacity) {
            return Err(ErrorReply::new(
                Status::TooLarge,
                format!("object of {big} bytes exceeds the memory limit of {capacity} bytes"),
            ));
        }
        let charged = self.reserved_charge();
        if charged > 0 {
            let total = sizes.iter().fold(0u64, |acc, &s| acc.saturating_add(s));
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

    /// Seals received objects under fresh ids.
    pub fn insert(&self, objects: Vec<Allocation>) -> Vec<ObjectId> {
        let mut table = self.table();
        objects
            .into_iter()
            .map(|object| {
                let id = self.next_id();
                table.entries.insert(id, Entry::Sealed(object.seal()));
                id
            })
            .collect()
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
            if let Some(entry @ Entry::Reserved { .. }) = table.entries.get_mut(id) {
                *entry = Entry::Sealed(object.seal());
                self.reserved.fetch_sub(1, Ordering::Relaxed);
            }
        }
        drop(table);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Looks up objects, leasing the ones found.
    pub fn lookup(&self, ids: &[ObjectId]) -> Vec<Lookup> {
        let table = self.table();
        ids.iter()
            .map(|id| match table.entries.get(id) {
                Some(Entry::Sealed(o)) => Lookup::Found(o.clone()),
                Some(Entry::Reserved { .. }) => Lookup::Reserved,
                None => Lookup::Missing,
            })
            .collect()
    }

    /// Which ids name set objects.
    pub fn exists(&self, ids: &[ObjectId]) -> Vec<bool> {
        let table = self.table();
        ids.iter()
            .map(|id| matches!(table.entries.get(id), Some(Entry::Sealed(_))))
            .collect()
    }

    /// Removes objects and reservations. Memory is freed when the last lease ends.
    pub fn evict(&self, ids: &[ObjectId]) -> Vec<bool> {
        let mut table = self.table();
        let mut unreserved = 0;
        let removed: Vec<bool> = ids
            .iter()
            .map(|id| match table.entries.remove(id) {
                Some(Entry::Reserved { .. }) => {
                    unreserved += 1;
                    true
                }
                Some(Entry::Sealed(_)) => true,
                None => false,
            })
            .collect();
        self.reserved.fetch_sub(unreserved, Ordering::Relaxed);
        drop(table);
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

fn out_of_memory(e: OutOfMemory) -> ErrorReply {
    match e {
        OutOfMemory::Full { .. } => ErrorReply::new(Status::StoreFull, e.to_string()),
        OutOfMemory::Segment(_) => ErrorReply::new(Status::StoreFull, e.to_string()),
    }
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

    /// Whether a notification future has completed (polled once, without a runtime).
    fn futures_ready<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        future.poll(&mut cx).is_ready()
    }
}
