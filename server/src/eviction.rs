//! Eviction policies: which stored objects go first when a put does not fit, and the
//! bounded memory of ids the server evicted (so their gets answer `Evicted`, not
//! `NotFound`).
//!
//! The store ranks every evictable object in an [`Order`]; objects that are pinned (put
//! with a lease) never get a rank. The order itself knows nothing of leases held by
//! readers: the store skips those when it walks the victims.

use std::collections::{BTreeSet, HashSet, VecDeque};

use dimstore_proto::ObjectId;

/// What to do when a put does not fit (`--eviction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Policy {
    /// Refuse the put with `StoreFull`.
    #[default]
    None,
    /// Drop the least recently read object first (a put counts as the first read).
    Lru,
    /// Drop the least often read object first (ties: least recently read).
    Lfu,
    /// Drop the oldest object first.
    Fifo,
}

impl Policy {
    /// The policy's name, as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Policy::None => "none",
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Fifo => "fifo",
        }
    }
}

/// Where an object stands in the eviction order (smaller goes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    primary: u64,
    secondary: u64,
}

/// The evictable objects, coldest first under the policy.
#[derive(Debug, Default)]
pub struct Order {
    policy: Policy,
    /// Ticks on every put and read: the recency clock.
    clock: u64,
    ranks: BTreeSet<(Rank, ObjectId)>,
}

impl Order {
    /// An empty order under `policy` (`None` ranks nothing).
    pub fn new(policy: Policy) -> Self {
        Order {
            policy,
            ..Order::default()
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Ranks a newly stored object; `None` under the `none` policy.
    pub fn insert(&mut self, id: ObjectId) -> Option<Rank> {
        let now = match self.policy {
            Policy::None => return None,
            _ => self.tick(),
        };
        let rank = match self.policy {
            Policy::Lfu => Rank {
                primary: 0,
                secondary: now,
            },
            _ => Rank {
                primary: now,
                secondary: 0,
            },
        };
        self.ranks.insert((rank, id));
        Some(rank)
    }

    /// Records a read of a ranked object.
    pub fn touch(&mut self, id: ObjectId, rank: &mut Rank) {
        let new = match self.policy {
            Policy::None | Policy::Fifo => return,
            Policy::Lru => Rank {
                primary: self.tick(),
                secondary: 0,
            },
            Policy::Lfu => Rank {
                primary: rank.primary.saturating_add(1),
                secondary: self.tick(),
            },
        };
        self.ranks.remove(&(*rank, id));
        self.ranks.insert((new, id));
        *rank = new;
    }

    /// Takes a ranked object out of the order while it is on disk (spilled), so that looking
    /// for cold objects in memory does not walk past it; it keeps `rank` (an LFU count) for
    /// [`Order::readmit`].
    pub fn park(&mut self, id: ObjectId, rank: Rank) {
        self.ranks.remove(&(rank, id));
    }

    /// Puts a parked object back in the order: it was just read back from disk (a read,
    /// except under FIFO, where it keeps its place).
    pub fn readmit(&mut self, id: ObjectId, rank: &mut Rank) {
        match self.policy {
            Policy::None | Policy::Fifo => {
                self.ranks.insert((*rank, id));
            }
            Policy::Lru | Policy::Lfu => self.touch(id, rank),
        }
    }

    /// Forgets a ranked object (evicted, consumed, expired).
    pub fn remove(&mut self, id: ObjectId, rank: Rank) {
        self.ranks.remove(&(rank, id));
    }

    /// Ranked objects, hottest first.
    pub fn hottest(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.ranks.iter().rev().map(|&(_, id)| id)
    }

    /// Ranked objects, coldest first.
    pub fn coldest(&self) -> impl Iterator<Item = ObjectId> + '_ {
        self.ranks.iter().map(|&(_, id)| id)
    }
}

/// Most evicted ids remembered; older ones answer `NotFound` again.
pub const REMEMBERED_EVICTIONS: usize = 1 << 16;

/// The ids the server evicted most recently, at most [`REMEMBERED_EVICTIONS`].
#[derive(Debug, Default)]
pub struct Evicted {
    order: VecDeque<ObjectId>,
    ids: HashSet<ObjectId>,
}

impl Evicted {
    /// Remembers `id`, forgetting the oldest beyond the bound.
    pub fn remember(&mut self, id: ObjectId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
        }
        while self.order.len() > REMEMBERED_EVICTIONS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
    }

    /// Whether `id` was evicted by the server recently.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.ids.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coldest(order: &Order) -> Vec<u128> {
        order.coldest().map(|id| id.0).collect()
    }

    #[test]
    fn lru_puts_the_least_recently_read_first() {
        let mut order = Order::new(Policy::Lru);
        let mut ranks: Vec<Rank> = (0..3)
            .map(|i| order.insert(ObjectId(i)).expect("ranked"))
            .collect();
        order.touch(ObjectId(0), &mut ranks[0]);
        assert_eq!(coldest(&order), [1, 2, 0]);
        order.touch(ObjectId(1), &mut ranks[1]);
        assert_eq!(coldest(&order), [2, 0, 1]);
        order.remove(ObjectId(2), ranks[2]);
        assert_eq!(coldest(&order), [0, 1]);
    }

    #[test]
    fn parked_objects_leave_the_order_and_come_back_by_policy() {
        for (policy, after) in [
            // A read back from disk is a read under LRU and LFU (object 0 was read twice
            // before, so LFU ranks it above 1 and 2 as well)...
            (Policy::Lru, [1, 2, 0]),
            (Policy::Lfu, [1, 2, 0]),
            // ...and FIFO keeps the place it had.
            (Policy::Fifo, [0, 1, 2]),
        ] {
            let mut order = Order::new(policy);
            let mut ranks: Vec<Rank> = (0..3)
                .map(|i| order.insert(ObjectId(i)).expect("ranked"))
                .collect();
            order.touch(ObjectId(0), &mut ranks[0]);
            order.touch(ObjectId(0), &mut ranks[0]);
            order.park(ObjectId(0), ranks[0]);
            assert_eq!(coldest(&order), [1, 2], "{policy:?}");
            order.readmit(ObjectId(0), &mut ranks[0]);
            assert_eq!(coldest(&order), after, "{policy:?}");
            assert_eq!(
                order.hottest().map(|id| id.0).collect::<Vec<_>>(),
                after.iter().rev().copied().collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn lfu_counts_reads_and_fifo_ignores_them() {
        let mut lfu = Order::new(Policy::Lfu);
        let mut fifo = Order::new(Policy::Fifo);
        let mut ranks: Vec<(Rank, Rank)> = (0..3)
            .map(|i| {
                (
                    lfu.insert(ObjectId(i)).expect("ranked"),
                    fifo.insert(ObjectId(i)).expect("ranked"),
                )
            })
            .collect();
        for (i, reads) in [(0, 2), (1, 1), (2, 3)] {
            for _ in 0..reads {
                lfu.touch(ObjectId(i), &mut ranks[i as usize].0);
                fifo.touch(ObjectId(i), &mut ranks[i as usize].1);
            }
        }
        assert_eq!(coldest(&lfu), [1, 0, 2]);
        assert_eq!(coldest(&fifo), [0, 1, 2]);
        assert!(Order::new(Policy::None).insert(ObjectId(9)).is_none());
    }

    #[test]
    fn evicted_ids_are_remembered_up_to_the_bound() {
        let mut evicted = Evicted::default();
        for i in 0..(REMEMBERED_EVICTIONS as u128 + 10) {
            evicted.remember(ObjectId(i));
        }
        assert!(!evicted.contains(&ObjectId(0)));
        assert!(!evicted.contains(&ObjectId(9)));
        assert!(evicted.contains(&ObjectId(10)));
        assert!(evicted.contains(&ObjectId(REMEMBERED_EVICTIONS as u128 + 9)));
        assert_eq!(evicted.order.len(), REMEMBERED_EVICTIONS);
    }
}
