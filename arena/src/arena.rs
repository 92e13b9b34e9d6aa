//! The arena: segments, accounting against the capacity, and allocation handles.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::allocator::FreeList;
use crate::segment::{Segment, SegmentError};
use crate::ALIGN;

/// Sizing of an [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Most bytes that may be allocated at once (the server's memory limit).
    pub capacity: u64,
    /// Size of a regular segment. Objects of a quarter of this or more get a segment of their
    /// own, released as soon as the object is.
    pub segment_size: u64,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        ArenaConfig {
            capacity: 1 << 30,
            segment_size: 64 << 20,
        }
    }
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutOfMemory {
    /// The capacity does not leave room for the request.
    #[error("{requested} bytes requested but only {available} of {capacity} bytes are free")]
    Full {
        /// Bytes requested (rounded to the allocation granularity).
        requested: u64,
        /// Bytes still free under the capacity.
        available: u64,
        /// The capacity.
        capacity: u64,
    },
    /// A new segment could not be created.
    #[error(transparent)]
    Segment(#[from] SegmentError),
}

/// A snapshot of the arena's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArenaStats {
    /// The capacity.
    pub capacity: u64,
    /// Bytes allocated now (rounded sizes).
    pub used: u64,
    /// Bytes of segments mapped now.
    pub mapped: u64,
    /// Segments mapped now.
    pub segments: u64,
}

/// Object memory: a growing set of shared-memory segments with one capacity.
#[derive(Debug, Clone)]
pub struct Arena {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ArenaConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    slots: BTreeMap<u32, Slot>,
    next_segment_id: u32,
    used: u64,
    mapped: u64,
    /// Bytes of empty dedicated segments kept for reuse.
    spare: u64,
    /// Writers alive now ([`Arena::writer`]); ids are never reused.
    writers: HashSet<u64>,
    next_writer: u64,
}

#[derive(Debug)]
struct Slot {
    segment: Arc<Segment>,
    free: FreeList,
    dedicated: bool,
    /// Pages below this offset have been written before (they are committed).
    touched: u64,
}

/// Ranges from this size on have their never-touched pages faulted in at allocation.
const POPULATE_FROM: u64 = 256 << 10;

/// Page size: the unit a writer's segment is sized (and accounted) in.
const PAGE: u64 = 4096;

/// Ranges from this size on start on a page boundary, so that direct I/O (the spill
/// writer's `O_DIRECT`) can use the object's own memory instead of copying it through a
/// bounce buffer. The bytes skipped before the boundary stay free for smaller objects.
const PAGE_ALIGN_FROM: u64 = 64 << 10;

/// In-place objects from this size on stay in their writer's segment when published (a copy
/// would cost more than the descriptor and mapping the segment keeps); smaller ones move
/// to a shared segment.
const PUBLISH_IN_PLACE_FROM: u64 = 1 << 20;

impl Arena {
    /// An empty arena; segments are created on first use.
    pub fn new(config: ArenaConfig) -> Self {
        Arena {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> ArenaConfig {
        self.shared.config
    }

    /// Current accounting.
    pub fn stats(&self) -> ArenaStats {
        let state = self.shared.lock();
        ArenaStats {
            capacity: self.shared.config.capacity,
            used: state.used,
            mapped: state.mapped,
            segments: state.slots.len() as u64,
        }
    }

    /// The segment with this id, if still mapped (for registration and sharing).
    pub fn segment(&self, id: u32) -> Option<Arc<Segment>> {
        self.shared
            .lock()
            .slots
            .get(&id)
            .map(|s| Arc::clone(&s.segment))
    }

    /// Allocates `len` bytes. The contents are unspecified (recycled memory is not zeroed).
    pub fn allocate(&self, len: u64) -> Result<Allocation, OutOfMemory> {
        if len == 0 {
            return Ok(Allocation {
                shared: Arc::clone(&self.shared),
                place: None,
                len: 0,
            });
        }
        let config = self.shared.config;
        let rounded = len.div_ceil(ALIGN).saturating_mul(ALIGN);
        let mut state = self.shared.lock();
        let available = config.capacity.saturating_sub(state.used);
        if rounded > available {
            return Err(OutOfMemory::Full {
                requested: rounded,
                available,
                capacity: config.capacity,
            });
        }
        let dedicated = rounded >= config.segment_size / 4;
        let found = if dedicated {
            // A spare dedicated segment of about the right size: its pages are warm, and
            // same-node clients may still have it mapped.
            let spare = state
                .slots
                .iter_mut()
                .filter(|(_, slot)| {
                    slot.dedicated && slot.segment.writer().is_none() && slot.free.is_empty()
                })
                .filter(|(_, slot)| (rounded..=rounded * 2).contains(&slot.segment.len()))
                .min_by_key(|(_, slot)| slot.segment.len())
                .and_then(|(&id, slot)| slot.free.allocate(rounded).map(|off| (id, off)));
            if let Some((id, _)) = spare {
                state.spare -= state.slots[&id].segment.len();
            }
            spare
        } else {
            state
                .slots
                .iter_mut()
                .filter(|(_, slot)| !slot.dedicated)
                .find_map(|(&id, slot)| {
                    let offset = if rounded >= PAGE_ALIGN_FROM {
                        slot.free.allocate_aligned(rounded, PAGE)
                    } else {
                        slot.free.allocate(rounded)
                    };
                    offset.map(|off| (id, off))
                })
        };
        let (segment_id, offset) = match found {
            Some(hit) => hit,
            None => {
                let seg_len = if dedicated {
                    rounded.div_ceil(4096) * 4096
                } else {
                    config.segment_size
                };
                state.reclaim_spares(config.capacity, seg_len);
                let segment = Arc::new(Segment::new(seg_len)?);
                let mut free = FreeList::new(seg_len);
                let offset = free.allocate(rounded).ok_or(OutOfMemory::Full {
                    requested: rounded,
                    available,
                    capacity: config.capacity,
                })?;
                let id = state.insert(Slot {
                    segment,
                    free,
                    dedicated,
                    touched: 0,
                });
                (id, offset)
            }
        };
        state.used += rounded;
        let slot = state
            .slots
            .get_mut(&segment_id)
            .expect("the slot just allocated from");
        let end = offset + rounded;
        let fresh = (end > slot.touched && rounded >= POPULATE_FROM)
            .then(|| (offset.max(slot.touched), end));
        slot.touched = slot.touched.max(end);
        let segment = Arc::clone(&slot.segment);
        drop(state);
        // Fault in never-touched pages in one call (outside the lock): a transfer into them
        // then does not trap once per page. Warm pages are left alone.
        if let Some((from, to)) = fresh {
            segment.populate(from, to - from);
        }
        Ok(Allocation {
            shared: Arc::clone(&self.shared),
            place: Some(Place {
                segment,
                segment_id,
                offset,
                rounded,
            }),
            len,
        })
    }

    /// A new writer: a same-node connection that writes objects in place.
    pub fn writer(&self) -> Writer {
        let mut state = self.shared.lock();
        state.next_writer += 1;
        let id = state.next_writer;
        state.writers.insert(id);
        Writer {
            id,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Allocates `len` bytes in a segment of their own that `writer` may map writable (an
    /// in-place put's reservation): no other object shares its pages, so the writer can
    /// write nothing else. Accounted page-rounded. When freed, the segment is kept (as a
    /// reclaimable spare) for this writer's later reservations only, which find its pages
    /// warm; it goes with the writer.
    pub fn allocate_for_writer(
        &self,
        len: u64,
        writer: &Writer,
    ) -> Result<Allocation, OutOfMemory> {
        if len == 0 {
            return self.allocate(0);
        }
        let capacity = self.shared.config.capacity;
        let need = len.div_ceil(PAGE).saturating_mul(PAGE);
        let mut state = self.shared.lock();
        let spare = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.segment.writer() == Some(writer.id) && slot.free.is_empty())
            .filter(|(_, slot)| (need..=need.saturating_mul(2)).contains(&slot.segment.len()))
            .min_by_key(|(_, slot)| slot.segment.len())
            .map(|(&id, slot)| (id, slot.segment.len()));
        let seg_len = spare.map_or(need, |(_, len)| len);
        let available = capacity.saturating_sub(state.used);
        if seg_len > available {
            return Err(OutOfMemory::Full {
                requested: seg_len,
                available,
                capacity,
            });
        }
        let (segment_id, fresh) = match spare {
            Some((id, len)) => {
                state.spare -= len;
                (id, false)
            }
            None => {
                state.reclaim_spares(capacity, seg_len);
                let segment = Arc::new(Segment::for_writer(seg_len, writer.id)?);
                let id = state.insert(Slot {
                    segment,
                    free: FreeList::new(seg_len),
                    dedicated: true,
                    touched: seg_len,
                });
                (id, true)
            }
        };
        let slot = state
            .slots
            .get_mut(&segment_id)
            .expect("the writer's slot just found or made");
        let offset = slot.free.allocate(seg_len).ok_or(OutOfMemory::Full {
            requested: seg_len,
            available,
            capacity,
        })?;
        let segment = Arc::clone(&slot.segment);
        state.used += seg_len;
        drop(state);
        if fresh && seg_len >= POPULATE_FROM {
            segment.populate(offset, seg_len);
        }
        Ok(Allocation {
            shared: Arc::clone(&self.shared),
            place: Some(Place {
                segment,
                segment_id,
                offset,
                rounded: seg_len,
            }),
            len,
        })
    }
}

/// A same-node writer ([`Arena::writer`]): the segments it was given writable serve its own
/// later reservations only. Dropping it unmaps its spare segments; its segments still
/// holding objects are unmapped when those are freed.
#[derive(Debug)]
pub struct Writer {
    id: u64,
    shared: Arc<Shared>,
}

impl Writer {
    /// The writer's id, as [`Segment::writer`] reports it.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.writers.remove(&self.id);
        let spares: Vec<u32> = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.segment.writer() == Some(self.id) && slot.free.is_empty())
            .map(|(&id, _)| id)
            .collect();
        for id in spares {
            if let Some(slot) = state.slots.remove(&id) {
                state.spare -= slot.segment.len();
                state.mapped -= slot.segment.len();
            }
        }
    }
}

impl State {
    /// Unmaps spare segments, the least fitting first, until a new segment of `seg_len`
    /// bytes fits under `capacity` together with everything in use (spares are reclaimable).
    fn reclaim_spares(&mut self, capacity: u64, seg_len: u64) {
        while self.used + self.spare + seg_len > capacity {
            let Some(victim) = self
                .slots
                .iter()
                .filter(|(_, s)| s.dedicated && s.free.is_empty())
                .max_by_key(|(_, s)| s.segment.len())
                .map(|(&id, _)| id)
            else {
                break;
            };
            if let Some(slot) = self.slots.remove(&victim) {
                self.spare -= slot.segment.len();
                self.mapped -= slot.segment.len();
            }
        }
    }

    /// Adds a new segment's slot under a fresh id (skipping ids still in use, should the
    /// 32-bit counter ever wrap: in-place puts can create a segment each).
    fn insert(&mut self, slot: Slot) -> u32 {
        let mut id = self.next_segment_id;
        while self.slots.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_segment_id = id.wrapping_add(1);
        self.mapped += slot.segment.len();
        self.slots.insert(id, slot);
        id
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bookkeeping behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a range. Freed pages stay committed for reuse (an allocator's high-water
    /// mark); an emptied extra regular segment is unmapped; an emptied dedicated segment is
    /// kept as a spare (its warm pages serve the next large object), reclaimed as soon as a
    /// new segment needs the room.
    fn release(&self, place: &Place) {
        // Spares count against the capacity and are unmapped first when room is needed.
        let spare_limit = self.config.capacity;
        let mut state = self.lock();
        state.used -= place.rounded;
        let Some(slot) = state.slots.get_mut(&place.segment_id) else {
            return;
        };
        slot.free.free(place.offset, place.rounded);
        if !slot.free.is_empty() {
            return;
        }
        let (dedicated, len, writer) = (slot.dedicated, slot.segment.len(), slot.segment.writer());
        let keep = if let Some(writer) = writer {
            state.writers.contains(&writer) && state.spare + len <= spare_limit
        } else if dedicated {
            state.spare + len <= spare_limit
        } else {
            place.segment_id == 0
        };
        if keep {
            if dedicated {
                state.spare += len;
            }
        } else if let Some(slot) = state.slots.remove(&place.segment_id) {
            state.mapped -= slot.segment.len();
        }
    }
}

#[derive(Debug)]
struct Place {
    segment: Arc<Segment>,
    segment_id: u32,
    offset: u64,
    rounded: u64,
}

/// A range of arena memory holding (or about to hold) one object.
///
/// Owned uniquely it is writable; shared behind an `Arc` it is read-only, and each clone is a
/// lease that keeps the bytes valid. Dropping the last handle frees the range.
#[derive(Debug)]
pub struct Allocation {
    shared: Arc<Shared>,
    place: Option<Place>,
    len: u64,
}

impl Allocation {
    /// Length of the object in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The object's bytes.
    #[allow(unsafe_code)]
    pub fn as_slice(&self) -> &[u8] {
        match &self.place {
            // SAFETY: the allocator gave this range to this allocation alone, in bounds of
            // the segment that `place` keeps mapped; `&self` rules out a live `&mut` view.
            Some(p) => unsafe { p.segment.slice(p.offset, self.len) },
            None => &[],
        }
    }

    /// The object's bytes, writable: only while the allocation is uniquely owned.
    #[allow(unsafe_code)]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &self.place {
            // SAFETY: the allocator gave this range to this allocation alone, in bounds of
            // the segment that `place` keeps mapped; `&mut self` makes this the only view.
            Some(p) => unsafe { p.segment.slice_mut(p.offset, self.len) },
            None => &mut [],
        }
    }

    /// Shortens the object to `len` bytes (an in-place write that used less than it
    /// reserved); the reserved capacity is freed with the object. `false` if `len` is longer.
    pub fn truncate(&mut self, len: u64) -> bool {
        if len > self.len {
            return false;
        }
        self.len = len;
        true
    }

    /// Where the bytes live: segment id and offset (for registered-memory descriptors and
    /// same-node mapping). `None` for an empty object.
    pub fn location(&self) -> Option<(u32, u64)> {
        self.place.as_ref().map(|p| (p.segment_id, p.offset))
    }

    /// An in-place object as readers will see it, once its writer is done: one under 1 MiB
    /// is moved out of the writer's segment into a shared one (one copy in the server), so
    /// small in-place objects do not each keep a descriptor and a mapping for life, and the
    /// writer's segment is free for its next reservation. Larger ones, other allocations,
    /// and objects the arena has no room to copy are returned unchanged.
    pub fn published(self) -> Allocation {
        let Some(place) = &self.place else {
            return self;
        };
        if place.segment.writer().is_none() || self.len >= PUBLISH_IN_PLACE_FROM {
            return self;
        }
        let arena = Arena {
            shared: Arc::clone(&self.shared),
        };
        match arena.allocate(self.len) {
            Ok(mut moved) => {
                moved.as_mut_slice().copy_from_slice(self.as_slice());
                moved
            }
            Err(_) => self,
        }
    }
}

/// A sealed object: read-only, shared. Every clone is a lease that keeps the bytes valid;
/// the range is freed when the last lease ends.
#[derive(Debug, Clone)]
pub struct Sealed(Arc<Allocation>);

impl Allocation {
    /// Seals the object: from now on it is read-only and can be leased.
    pub fn seal(self) -> Sealed {
        Sealed(Arc::new(self))
    }
}

impl Sealed {
    /// The object's bytes.
    pub fn as_slice(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where the bytes live (segment id, offset).
    pub fn location(&self) -> Option<(u32, u64)> {
        self.0.location()
    }

    /// Leases alive now, counting this one.
    pub fn leases(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl AsRef<[u8]> for Sealed {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Allocation {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsMut<[u8]> for Allocation {
    fn as_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Some(place) = &self.place {
            self.shared.release(place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(capacity: u64) -> Arena {
        Arena::new(ArenaConfig {
            capacity,
            segment_size: 1 << 20,
        })
    }

    #[test]
    fn bytes_written_are_read_back_and_accounted() {
        let arena = arena(8 << 20);
        let mut a = arena.allocate(1000).expect("room");
        a.as_mut_slice().copy_from_slice(&[7u8; 1000]);
        let b = arena.allocate(3 << 20).expect("room");
        let sealed = a.seal();
        assert_eq!(sealed.as_slice(), &[7u8; 1000][..]);
        assert_eq!(arena.stats().used, 1024 + (3 << 20));
        assert_eq!(arena.stats().segments, 2);
        let b_segment = b.location().expect("placed").0;
        drop(b);
        assert_eq!(
            arena.stats().segments,
            2,
            "dedicated segment kept as a spare"
        );
        let again = arena.allocate(3 << 20).expect("room");
        assert_eq!(
            again.location().expect("placed").0,
            b_segment,
            "spare reused"
        );
        drop(again);
        let lease = sealed.clone();
        assert_eq!(lease.leases(), 2);
        drop(sealed);
        assert_eq!(arena.stats().used, 1024, "a lease keeps the bytes");
        drop(lease);
        assert_eq!(arena.stats().used, 0);
    }

    #[test]
    fn objects_from_64_kib_start_on_a_page_in_shared_segments() {
        let arena = arena(8 << 20);
        let small = arena.allocate(100).expect("room");
        let odd = (64 << 10) + 100;
        let big = arena.allocate(odd).expect("room");
        let after = arena.allocate(odd).expect("room");
        for a in [&big, &after] {
            assert_eq!(
                a.location().expect("placed").0,
                small.location().expect("placed").0,
                "shared segment"
            );
            assert_eq!(a.as_slice().as_ptr() as usize % PAGE as usize, 0);
        }
        // The bytes skipped before the first page boundary serve a small object.
        let filler = arena.allocate(1024).expect("room");
        let (segment, offset) = filler.location().expect("placed");
        assert_eq!(segment, small.location().expect("placed").0);
        assert!(offset < PAGE, "placed in the gap, at {offset}");
        // Accounting counts the objects, not the gaps.
        let rounded = odd.div_ceil(ALIGN) * ALIGN;
        assert_eq!(arena.stats().used, 128 + 2 * rounded + 1024);
    }

    #[test]
    fn shared_segments_stay_writable_for_the_server_only() {
        let arena = arena(8 << 20);
        let mut small = arena.allocate(1000).expect("room");
        let big = arena
            .allocate(2 << 20)
            .expect("room (populated, dedicated)");
        small.as_mut_slice().fill(3);
        for a in [&small, &big] {
            let (id, _) = a.location().expect("placed");
            let segment = arena.segment(id).expect("segment");
            assert_eq!(segment.writer(), None);
            let fd = segment.fd().try_clone_to_owned().expect("dup");
            assert_eq!(rustix::fs::ftruncate(&fd, 0), Err(rustix::io::Errno::PERM));
            assert!(crate::MappedSegment::map(fd, segment.len(), true).is_err());
        }
        assert!(small.as_slice().iter().all(|&b| b == 3));
    }

    #[test]
    fn writer_segments_hold_one_object_and_serve_only_their_writer() {
        let arena = arena(64 << 20);
        let writer = arena.writer();
        let neighbour = arena.allocate(100).expect("room");
        let reservation = arena.allocate_for_writer(5000, &writer).expect("room");
        let (id, offset) = reservation.location().expect("placed");
        assert_ne!(Some(id), neighbour.location().map(|l| l.0), "own segment");
        assert_eq!(offset, 0);
        let segment = arena.segment(id).expect("segment");
        assert_eq!(segment.len(), 8192, "page-rounded");
        assert_eq!(segment.writer(), Some(writer.id()));
        drop(segment);
        assert_eq!(arena.stats().used, 128 + 8192);
        // Small: moved into a shared segment; the writer's segment is its spare now.
        let moved = reservation.published();
        assert_ne!(moved.location().expect("placed").0, id);
        assert_eq!(arena.stats().used, 128 + 5056);
        let again = arena.allocate_for_writer(6000, &writer).expect("room");
        assert_eq!(
            again.location().expect("placed").0,
            id,
            "the writer's spare reused"
        );
        drop(again);
        // Never for anyone else: not for shared objects, not for another writer.
        let other = arena.writer();
        let theirs = arena.allocate_for_writer(6000, &other).expect("room");
        assert_ne!(theirs.location().expect("placed").0, id);
        let big = arena.allocate(6000 << 10).expect("room");
        assert_ne!(big.location().expect("placed").0, id);
        // Large: published in place.
        let large = arena.allocate_for_writer(20 << 20, &writer).expect("room");
        let large_id = large.location().expect("placed").0;
        let large = large.published();
        assert_eq!(large.location().expect("placed").0, large_id);
        // The writer gone, its spares go; objects still in its segments keep them.
        drop(writer);
        assert!(
            arena.segment(id).is_none(),
            "spare unmapped with its writer"
        );
        assert!(
            arena.segment(large_id).is_some(),
            "an object keeps its segment"
        );
        drop(large);
        assert!(arena.segment(large_id).is_none(), "then goes");
        drop(theirs);
        drop(other);
        drop((big, moved, neighbour));
        assert_eq!(arena.stats().used, 0);
    }

    #[test]
    fn spares_make_room_for_new_segments() {
        let arena = arena(8 << 20);
        drop(arena.allocate(5 << 20).expect("room"));
        assert_eq!(arena.stats().mapped, 5 << 20, "kept as a spare");
        // 6 MiB does not fit next to the 5 MiB spare: the spare is unmapped first.
        let big = arena
            .allocate(6 << 20)
            .expect("room after reclaiming the spare");
        assert_eq!(arena.stats().mapped, 6 << 20);
        drop(big);
    }

    #[test]
    fn capacity_is_enforced() {
        let arena = arena(1 << 20);
        let _a = arena.allocate(600 << 10).expect("room");
        match arena.allocate(600 << 10) {
            Err(OutOfMemory::Full {
                requested,
                available,
                ..
            }) => {
                assert_eq!(requested, 600 << 10);
                assert_eq!(available, 424 << 10);
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert!(arena.allocate(0).is_ok());
    }

    #[test]
    fn many_threads_allocate_disjoint_ranges() {
        let arena = arena(64 << 20);
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let arena = arena.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..200u32 {
                        let mut a = arena.allocate(u64::from(i % 37) * 100 + 1).expect("room");
                        a.as_mut_slice().fill(t);
                        held.push(a);
                        if i % 3 == 0 {
                            held.swap_remove(0);
                        }
                    }
                    for a in &held {
                        assert!(a.as_slice().iter().all(|&b| b == t));
                    }
                });
            }
        });
        assert_eq!(arena.stats().used, 0);
    }
}
