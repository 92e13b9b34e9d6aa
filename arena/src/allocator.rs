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
        Free(prop::sample::Index),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                (1u64..64).prop_map(|n| Op::Alloc(n * 64)),
                any::<prop::sample::Index>().prop_map(Op::Free),
            ],
            0..200,
        )
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
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut list = FreeList::new(1024);
        let a = list.allocate(64).expect("room");
        list.free(a, 64);
        list.free(a, 64);
    }
}
