//! The object table: ids to sealed objects in arena memory, or to reservations of deferred
//! objects not set yet.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use dimstore_arena::{Allocation, Arena, OutOfMemory, Sealed, Writer};
use dimstore_proto::{ErrorReply, ObjectId, Status};
use tokio::sync::Notify;

/// A stored object: shared, read-only arena memory. Each clone is a lease.
pub type Object = Sealed;

/// What the table holds under an id.
#[derive(Debug)]
enum Entry {
    Sealed(Object),
    Reserved,
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
    table: Mutex<HashMap<ObjectId, Entry>>,
    /// High 64 bits of every id: random per server instance, so ids of a restarted server
    /// never alias the old ones.
    instance: u64,
    counter: AtomicU64,
    /// Woken whenever a deferred object is set or a reservation dropped.
    changed: Notify,
}

impl ObjectStore {
    /// A store whose objects live in `arena`.
    pub fn new(arena: Arena, instance: u64) -> Self {
        ObjectStore {
            arena,
            table: Mutex::new(HashMap::new()),
            instance,
            counter: AtomicU64::new(1),
            changed: Notify::new(),
        }
    }

    /// The arena.
    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    fn table(&self) -> MutexGuard<'_, HashMap<ObjectId, Entry>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> ObjectId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        ObjectId((u128::from(self.instance) << 64) | u128::from(n))
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
                table.insert(id, Entry::Sealed(object.seal()));
                id
            })
            .collect()
    }

    /// Reserves `count` ids for deferred objects.
    pub fn reserve(&self, count: u32) -> Vec<ObjectId> {
        let mut table = self.table();
        (0..count)
            .map(|_| {
                let id = self.next_id();
                table.insert(id, Entry::Reserved);
                id
            })
            .collect()
    }

    /// Checks that every id is reserved and unset (before any memory is spent on a set).
    pub fn check_settable(&self, ids: &[ObjectId]) -> Result<(), ErrorReply> {
        let table = self.table();
        for id in ids {
            match table.get(id) {
                Some(Entry::Reserved) => {}
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
            if !matches!(table.get(id), Some(Entry::Reserved)) {
                drop(table);
                return self.check_settable(ids).and(Err(ErrorReply::new(
                    Status::AlreadySet,
                    format!("object {id} changed while being set"),
                )));
            }
        }
        for (id, object) in ids.iter().zip(objects) {
            table.insert(*id, Entry::Sealed(object.seal()));
        }
        drop(table);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Looks up objects, leasing the ones found.
    pub fn lookup(&self, ids: &[ObjectId]) -> Vec<Lookup> {
        let table = self.table();
        ids.iter()
            .map(|id| match table.get(id) {
                Some(Entry::Sealed(o)) => Lookup::Found(o.clone()),
                Some(Entry::Reserved) => Lookup::Reserved,
                None => Lookup::Missing,
            })
            .collect()
    }

    /// Which ids name set objects.
    pub fn exists(&self, ids: &[ObjectId]) -> Vec<bool> {
        let table = self.table();
        ids.iter()
            .map(|id| matches!(table.get(id), Some(Entry::Sealed(_))))
            .collect()
    }

    /// Removes objects and reservations. Memory is freed when the last lease ends.
    pub fn evict(&self, ids: &[ObjectId]) -> Vec<bool> {
        let mut table = self.table();
        let removed: Vec<bool> = ids.iter().map(|id| table.remove(id).is_some()).collect();
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
        let reserved = table
            .values()
            .filter(|e| matches!(e, Entry::Reserved))
            .count() as u64;
        (table.len() as u64 - reserved, reserved)
    }
}

fn out_of_memory(e: OutOfMemory) -> ErrorReply {
    match e {
        OutOfMemory::Full { .. } => ErrorReply::new(Status::StoreFull, e.to_string()),
        OutOfMemory::Segment(_) => ErrorReply::new(Status::StoreFull, e.to_string()),
    }
}
