//! A best-fit free list over one segment's offsets. Pure bookkeeping: no memory is touched.

use std::collections::{BTreeMap, BTreeSet};

/// Free ranges of a segment, indexed both by offset (to coalesce neighbours) and by size (to
/// find the best fit).
#[derive(Debug, Clone)]
pub struct FreeList {
    by_offset: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free_bytes: u64,
    len: u64,
}

impl FreeList {
    /// A free list for a segment of `len` bytes, entirely free.
    pub fn new(len: u64) -> Self {
        let mut list = FreeList {
            by_offset: BTreeMap::new(),
            by_size: BTreeSet::new(),
            free_bytes: 0,
            len,
        };
        if len > 0 {
            list.insert(0, len);
        }
        list
    }

    /// Takes `size` bytes (already rounded to the allocation granularity) from the smallest
    /// free range that fits; returns the offset.
    pub fn allocate(&mut self, size: u64) -> Option<u64> {
        let &(range_size, offset) = self.by_size.range((size, 0)..).next()?;
        self.remove(offset, range_size);
        if range_size > size {
            self.insert(offset + size, range_size - size);
        }
        Some(offset)
    }

    /// Takes `size` bytes starting at a multiple of `align` (a power of two) from the
    /// smallest free range that holds them so aligned; returns the offset. The bytes skipped
    /// before the aligned start stay free (smaller objects fill them).
    pub fn allocate_aligned(&mut self, size: u64, align: u64) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        let (range_size, offset, start) =
            self.by_size
                .range((size, 0)..)
                .find_map(|&(range_size, offset)| {
                    let start = offset.checked_next_multiple_of(align)?;
                    (start.checked_add(size)? <= offset + range_size)
                        .then_some((range_size, offset, start))
                })?;
        self.remove(offset, range_size);
        if start > offset {
            self.insert(offset, start - offset);
        }
        let end = start + size;
        if offset + range_size > end {
            self.insert(end, offset + range_size - end);
        }
        Some(start)
    }

    /// Returns `offset..offset+size` to the free list, merging it with free neighbours.
    ///
    /// # Panics
    /// If the range overlaps a free range or lies outside the segment: that is a double free
    /// and a bug in the caller.
    pub fn free(&mut self, offset: u64, size: u64) {
        assert!(offset + size <= self.len, "free outside the segment");
        let mut start = offset;
        let mut len = size;
        if let Some((&prev_off, &prev_len)) = self.by_offset.range(..=offset).next_back() {
            assert!(prev_off + prev_len <= offset, "double free at {offset}");
            if prev_off + prev_len == offset {
                self.remove(prev_off, prev_len);
                start = prev_off;
                len += prev_len;
            }
        }
        if let Some((&next_off, &next_len)) = self.by_offset.range(offset..).next() {
            assert!(offset + size <= next_off, "double free at {offset}");
            if offset + size == next_off {
                self.remove(next_off, next_len);
                len += next_len;
            }
        }
        self.insert(start, len);
    }

    /// Bytes free in this segment.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// The largest free range.
    pub fn largest_free(&self) -> u64 {
        self.by_size.iter().next_back().map_or(0, |&(s, _)| s)
    }

    /// Number of separate free ranges (a fragmentation measure).
    pub fn fragments(&self) -> usize {
        self.by_offset.len()
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.free_bytes == self.len
    }

    fn insert(&mut self, offset: u64, len: u64) {
        self.by_offset.insert(offset, len);
        self.by_size.insert((len, offset));
        self.free_bytes += len;
    }

    fn remove(&mut self, offset: u64, len: u64) {
        self.by_offset.remove(&offset);
        self.by_size.remove(&(len, offset));
        self.free_bytes -= len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Alloc(u64),
        /// An allocation of this size aligned to 1024 bytes.
        AllocAligned(u64),
        Free(prop::sample::Index),
    }

    const TEST_ALIGN: u64 = 1024;

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                (1u64..64).prop_map(|n| Op::Alloc(n * 64)),
                (1u64..64).prop_map(|n| Op::AllocAligned(n * 64)),
                any::<prop::sample::Index>().prop_map(Op::Free),
            ],
            0..200,
        )
    }

    /// Whether some free range of `list` could hold `size` bytes at a multiple of `align`
    /// (the brute-force model of `allocate_aligned`).
    fn fits_aligned(list: &FreeList, size: u64, align: u64) -> bool {
        list.by_offset
            .iter()
            .any(|(&o, &l)| o.next_multiple_of(align) + size <= o + l)
    }

    proptest! {
        #[test]
        fn allocations_never_overlap_and_frees_coalesce(ops in ops()) {
            const LEN: u64 = 64 * 1024;
            let mut list = FreeList::new(LEN);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(size) => {
                        if let Some(off) = list.allocate(size) {
                            prop_assert!(off + size <= LEN);
                            for &(o, s) in &live {
                                prop_assert!(off + size <= o || o + s <= off, "overlap");
                            }
                            live.push((off, size));
                        } else {
                            // Best fit only fails when no single free range is big enough.
                            prop_assert!(list.largest_free() < size);
                        }
                    }
                    Op::AllocAligned(size) => {
                        let fits = fits_aligned(&list, size, TEST_ALIGN);
                        if let Some(off) = list.allocate_aligned(size, TEST_ALIGN) {
                            prop_assert_eq!(off % TEST_ALIGN, 0);
                            prop_assert!(off + size <= LEN);
                            for &(o, s) in &live {
                                prop_assert!(off + size <= o || o + s <= off, "overlap");
                            }
                            live.push((off, size));
                        } else {
                            prop_assert!(!fits, "an aligned place was free but not found");
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (o, s) = live.swap_remove(i.index(live.len()));
                        list.free(o, s);
                    }
                    Op::Free(_) => {}
                }
                let used: u64 = live.iter().map(|&(_, s)| s).sum();
                prop_assert_eq!(list.free_bytes() + used, LEN);
                // Coalescing bounds fragmentation: never more free ranges than live
                // allocations + 1.
                prop_assert!(list.fragments() <= live.len() + 1);
                // The two indexes agree.
                prop_assert_eq!(list.by_offset.len(), list.by_size.len());
            }
            for (o, s) in live.drain(..) {
                list.free(o, s);
            }
            prop_assert!(list.is_empty());
            prop_assert_eq!(list.fragments(), 1);
            prop_assert_eq!(list.largest_free(), LEN);
        }
    }

    #[test]
    fn aligned_allocations_leave_the_skipped_bytes_free() {
        let mut list = FreeList::new(16 * 1024);
        assert_eq!(list.allocate(64), Some(0));
        // Best fit that holds 4096 bytes at a 4096 boundary: 4096, not 64.
        assert_eq!(list.allocate_aligned(4096, 4096), Some(4096));
        assert_eq!(list.free_bytes(), 16 * 1024 - 64 - 4096);
        // The 4032 bytes skipped are still there for small objects.
        assert_eq!(list.allocate(4032), Some(64));
        // No aligned room for 12 KiB is left (8192..16384 holds 8 KiB).
        assert_eq!(list.allocate_aligned(12 * 1024, 4096), None);
        assert_eq!(list.allocate_aligned(8192, 4096), Some(8192));
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut list = FreeList::new(1024);
        let a = list.allocate(64).expect("room");
        list.free(a, 64);
        list.free(a, 64);
    }
}
