//! Per-connection state: authentication, the leases on objects clients read in place
//! (same node) or one-sided (remote), and the reservations same-node clients write in place.
//! All are released when the connection closes, so a client that dies never pins memory;
//! one-sided leases also expire, so a client that hangs with its connection open does not
//! pin memory forever either.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use dimstore_arena::{Allocation, Sealed};

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Transport name (`tcp`, `local`).
    pub transport: &'static str,
    /// Address, for logs.
    pub address: String,
    /// Whether the peer may map this server's memory (same node, same user).
    pub may_map: bool,
}

/// Live leases and reservations across all sessions, for statistics.
#[derive(Debug, Default)]
pub struct LiveCounts {
    /// Leases held now.
    pub leases: AtomicU64,
    /// Reservations open now.
    pub reservations: AtomicU64,
    /// Leases expired since start.
    pub expired_leases: AtomicU64,
    /// Lease tables holding leases that expire, for [`LiveCounts::expire_leases`].
    expiring: Mutex<Vec<Weak<Mutex<LeaseTable>>>>,
}

impl LiveCounts {
    /// Ends every expiring lease whose deadline is before `now`, in every session.
    pub fn expire_leases(&self, now: Instant) {
        let mut tables = self.expiring.lock().unwrap_or_else(|e| e.into_inner());
        tables.retain(|weak| {
            let Some(table) = weak.upgrade() else {
                return false;
            };
            let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
            let before = table.held.len();
            table
                .held
                .retain(|_, (_, deadline)| deadline.is_none_or(|d| d > now));
            let expired = (before - table.held.len()) as u64;
            self.leases.fetch_sub(expired, Ordering::Relaxed);
            self.expired_leases.fetch_add(expired, Ordering::Relaxed);
            table.listed = table.held.values().any(|(_, d)| d.is_some());
            table.listed
        });
    }
}

/// Most leases one session holds at once; gets beyond it answer objects inline (a client
/// that never releases would otherwise grow the table without bound).
pub const MAX_LEASES_PER_SESSION: usize = 1 << 18;

/// Objects a same-node client reads in place; shared with deferred gets of the session.
#[derive(Debug, Clone)]
pub struct Leases {
    inner: Arc<Mutex<LeaseTable>>,
    live: Arc<LiveCounts>,
}

#[derive(Debug, Default)]
struct LeaseTable {
    next: u64,
    /// Pinned objects, with the deadline of leases that expire.
    held: HashMap<u64, (Sealed, Option<Instant>)>,
    /// Whether the table is listed in [`LiveCounts`] for expiry.
    listed: bool,
}

impl Leases {
    /// An empty table counting into `live`.
    pub fn new(live: Arc<LiveCounts>) -> Self {
        Leases {
            inner: Arc::default(),
            live,
        }
    }

    fn table(&self) -> MutexGuard<'_, LeaseTable> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `object` until [`Leases::release`] (or until `expires`, if given, by
    /// [`LiveCounts::expire_leases`]); returns the lease id, or `None` when the session
    /// holds [`MAX_LEASES_PER_SESSION`] already.
    pub fn grant(&self, object: Sealed, expires: Option<Instant>) -> Option<u64> {
        let mut table = self.table();
        if table.held.len() >= MAX_LEASES_PER_SESSION {
            return None;
        }
        table.next += 1;
        let id = table.next;
        table.held.insert(id, (object, expires));
        self.live.leases.fetch_add(1, Ordering::Relaxed);
        if expires.is_some() && !table.listed {
            table.listed = true;
            drop(table);
            self.live
                .expiring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Arc::downgrade(&self.inner));
        }
        Some(id)
    }

    /// Ends leases; unknown ids are ignored (a client may release twice).
    pub fn release(&self, ids: &[u64]) {
        let mut table = self.table();
        for id in ids {
            if table.held.remove(id).is_some() {
                self.live.leases.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        // The last handle (the session's) releases whatever the client still held.
        if Arc::strong_count(&self.inner) == 1 {
            let n = self.table().held.len() as u64;
            self.live.leases.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// Most reservations one connection may hold open at once: each is a segment (a descriptor
/// and a mapping) of its own in the server.
pub const MAX_OPEN_RESERVATIONS: usize = 1024;

/// Space a same-node client is writing in place, not visible to readers until sealed.
#[derive(Debug)]
pub struct Reservations {
    next: u64,
    open: HashMap<u64, Allocation>,
    live: Arc<LiveCounts>,
}

impl Reservations {
    /// An empty table counting into `live`.
    pub fn new(live: Arc<LiveCounts>) -> Self {
        Reservations {
            next: 0,
            open: HashMap::new(),
            live,
        }
    }

    /// Reservations open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Keeps `allocation` open under a new id.
    pub fn open(&mut self, allocation: Allocation) -> u64 {
        self.next += 1;
        self.open.insert(self.next, allocation);
        self.live.reservations.fetch_add(1, Ordering::Relaxed);
        self.next
    }

    /// Takes reservations out (all or none): `None` if any id is unknown.
    pub fn take(&mut self, ids: &[u64]) -> Option<Vec<Allocation>> {
        if !ids.iter().all(|id| self.open.contains_key(id)) {
            return None;
        }
        let taken: Vec<Allocation> = ids.iter().filter_map(|id| self.open.remove(id)).collect();
        if taken.len() != ids.len() {
            // Duplicate ids: put back what was taken and refuse.
            for (id, a) in ids.iter().zip(taken) {
                self.open.insert(*id, a);
            }
            return None;
        }
        self.live
            .reservations
            .fetch_sub(taken.len() as u64, Ordering::Relaxed);
        Some(taken)
    }

    /// Drops reservations (their memory returns to the arena).
    pub fn abort(&mut self, ids: &[u64]) {
        for id in ids {
            if self.open.remove(id).is_some() {
                self.live.reservations.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Reservations {
    fn drop(&mut self) {
        self.live
            .reservations
            .fetch_sub(self.open.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dimstore_arena::{Arena, ArenaConfig};

    fn arena() -> Arena {
        Arena::new(ArenaConfig {
            capacity: 64 << 20,
            segment_size: 1 << 20,
        })
    }

    /// Many threads granting and releasing concurrently: counts stay exact and every byte
    /// comes back once the last lease ends.
    #[test]
    fn lease_table_under_concurrency() {
        let arena = arena();
        let live = Arc::new(LiveCounts::default());
        let leases = Leases::new(Arc::clone(&live));
        let object = {
            let mut a = arena.allocate(4096).expect("room");
            a.as_mut_slice().fill(1);
            a.seal()
        };
        std::thread::scope(|s| {
            for t in 0..8 {
                let leases = leases.clone();
                let object = object.clone();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..2000 {
                        mine.push(leases.grant(object.clone(), None).expect("room"));
                        if i % 3 == t % 3 {
                            let id = mine.swap_remove(0);
                            leases.release(&[id, id]);
                        }
                    }
                    leases.release(&mine);
                });
            }
        });
        assert_eq!(live.leases.load(Ordering::Relaxed), 0);
        drop(object);
        drop(leases);
        assert_eq!(arena.stats().used, 0, "no lease leaked");
    }

    #[test]
    fn closing_a_session_releases_leases_and_reservations() {
        let arena = arena();
        let live = Arc::new(LiveCounts::default());
        let leases = Leases::new(Arc::clone(&live));
        let mut reservations = Reservations::new(Arc::clone(&live));
        leases.grant(arena.allocate(100).expect("room").seal(), None);
        let object = arena.allocate(10).expect("room").seal();
        for _ in 1..MAX_LEASES_PER_SESSION {
            leases.grant(object.clone(), None).expect("under the cap");
        }
        assert_eq!(leases.grant(object, None), None, "capped");
        let kept = reservations.open(arena.allocate(200).expect("room"));
        reservations.open(arena.allocate(300).expect("room"));
        assert!(
            reservations.take(&[kept, kept]).is_none(),
            "duplicates refused"
        );
        assert_eq!(live.reservations.load(Ordering::Relaxed), 2);
        drop(leases);
        drop(reservations);
        assert_eq!(live.leases.load(Ordering::Relaxed), 0);
        assert_eq!(live.reservations.load(Ordering::Relaxed), 0);
        assert_eq!(arena.stats().used, 0);
    }
}
