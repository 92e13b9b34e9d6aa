//! The chunk planner every one-sided [`Reader`](super::Reader) shares: checks a read call's
//! regions against the target and the remote address space, then cuts them into the chunks
//! the fabric moves one operation each. Pure: no fabric, no memory touched.
//!
//! A [`ReadPlan`] holds the regions that move bytes (empty ones are dropped), sorted by
//! target offset, disjoint, inside the target, each remote range ending at or below
//! `u64::MAX`, with their distinct packed keys; [`ReadPlan::into_chunks`] yields them in
//! pieces of at most the reader's chunk size, lazily (a 1 GiB read in 64 KiB chunks is not
//! 16,384 pieces allocated up front).

use super::RemoteRead;

/// Why a read call was refused before anything was read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A region does not fit in the target buffer (or its end overflows `usize`).
    #[error("read of {len} bytes at offset {offset} does not fit a target of {target} bytes")]
    OutsideTarget {
        /// Where the region lands in the target.
        offset: usize,
        /// Its length.
        len: usize,
        /// The target's length.
        target: usize,
    },
    /// A region's remote range runs past the end of the address space.
    #[error("remote range of {len} bytes at address {address:#x} wraps around")]
    AddressWraps {
        /// Remote address of the region's first byte.
        address: u64,
        /// Its length.
        len: usize,
    },
    /// Two regions land on the same target bytes.
    #[error("reads overlap in the target at offset {offset}")]
    Overlap {
        /// Target offset of the later region, which starts inside the earlier one.
        offset: usize,
    },
}

/// One checked region (or chunk of one): `len` bytes at remote `address`, read with key
/// number `key` of the plan, landing at `offset` in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRead {
    /// Remote address of the first byte.
    pub address: u64,
    /// Index of the packed key in [`ReadPlan::keys`].
    pub key: usize,
    /// Bytes to read (never zero).
    pub len: usize,
    /// Where they land in the target.
    pub offset: usize,
}

/// A read call's regions, checked: non-empty, sorted by target offset, disjoint, inside the
/// target, not wrapping around the remote address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPlan {
    keys: Vec<Vec<u8>>,
    reads: Vec<PlannedRead>,
}

impl ReadPlan {
    /// Checks `reads` against a target of `target` bytes.
    pub fn new(reads: &[RemoteRead<'_>], target: usize) -> Result<ReadPlan, PlanError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut planned = Vec::with_capacity(reads.len());
        for read in reads.iter().filter(|r| r.len > 0) {
            let outside = PlanError::OutsideTarget {
                offset: read.offset,
                len: read.len,
                target,
            };
            if read
                .offset
                .checked_add(read.len)
                .is_none_or(|end| end > target)
            {
                return Err(outside);
            }
            let wraps = u64::try_from(read.len)
                .ok()
                .and_then(|len| read.address.checked_add(len))
                .is_none();
            if wraps {
                return Err(PlanError::AddressWraps {
                    address: read.address,
                    len: read.len,
                });
            }
            let key = match keys.iter().position(|k| k == read.key) {
                Some(i) => i,
                None => {
                    keys.push(read.key.to_vec());
                    keys.len() - 1
                }
            };
            planned.push(PlannedRead {
                address: read.address,
                key,
                len: read.len,
                offset: read.offset,
            });
        }
        planned.sort_by_key(|r| r.offset);
        if let Some(pair) = planned
            .windows(2)
            .find(|pair| pair[0].offset + pair[0].len > pair[1].offset)
        {
            return Err(PlanError::Overlap {
                offset: pair[1].offset,
            });
        }
        Ok(ReadPlan {
            keys,
            reads: planned,
        })
    }

    /// The distinct packed keys, in order of first use.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// The regions, sorted by target offset.
    pub fn reads(&self) -> &[PlannedRead] {
        &self.reads
    }

    /// Whether there is nothing to read.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// The keys, and the regions in chunks of at most `max_chunk` bytes (at least 1).
    pub fn into_chunks(self, max_chunk: usize) -> (Vec<Vec<u8>>, Chunks) {
        let chunks = Chunks {
            reads: self.reads,
            max: max_chunk.max(1),
            next: 0,
            done_in_next: 0,
        };
        (self.keys, chunks)
    }
}

/// The chunks of a [`ReadPlan`], in target order, each at most the chunk size: a region
/// longer than that comes in several consecutive chunks.
#[derive(Debug, Clone)]
pub struct Chunks {
    reads: Vec<PlannedRead>,
    max: usize,
    /// The region the next chunk comes from, and how much of it came out already.
    next: usize,
    done_in_next: usize,
}

impl Chunks {
    /// Whether every chunk came out.
    pub fn is_finished(&self) -> bool {
        self.next >= self.reads.len()
    }
}

impl Iterator for Chunks {
    type Item = PlannedRead;

    fn next(&mut self) -> Option<PlannedRead> {
        let read = *self.reads.get(self.next)?;
        let done = self.done_in_next;
        let len = self.max.min(read.len - done);
        self.done_in_next += len;
        if self.done_in_next == read.len {
            self.next += 1;
            self.done_in_next = 0;
        }
        // The plan checked `address + len` and `offset + len`: neither overflows.
        Some(PlannedRead {
            address: read.address + done as u64,
            key: read.key,
            len,
            offset: read.offset + done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(key: &[u8], address: u64, len: usize, offset: usize) -> RemoteRead<'_> {
        RemoteRead {
            address,
            key,
            len,
            offset,
        }
    }

    #[test]
    fn regions_are_sorted_keys_deduplicated_and_empty_reads_dropped() {
        let reads = [
            read(b"k2", 5000, 10, 100),
            read(b"k1", 0, 0, 9999), // empty: dropped, even outside the target
            read(b"k1", 64, 20, 0),
            read(b"k2", 7000, 5, 40),
        ];
        let plan = ReadPlan::new(&reads, 110).expect("valid");
        assert_eq!(plan.keys(), [b"k2".to_vec(), b"k1".to_vec()]);
        let offsets: Vec<_> = plan.reads().iter().map(|r| (r.offset, r.key)).collect();
        assert_eq!(offsets, [(0, 1), (40, 0), (100, 0)]);
    }

    #[test]
    fn nothing_to_read_is_an_empty_plan() {
        assert!(ReadPlan::new(&[], 0).expect("empty").is_empty());
        let (keys, mut chunks) = ReadPlan::new(&[read(b"k", 1, 0, 8)], 4)
            .expect("empty")
            .into_chunks(16);
        assert!(keys.is_empty());
        assert!(chunks.is_finished());
        assert_eq!(chunks.next(), None);
    }

    #[test]
    fn regions_outside_the_target_are_refused() {
        let err = ReadPlan::new(&[read(b"k", 0, 16, 8)], 16).unwrap_err();
        assert_eq!(
            err,
            PlanError::OutsideTarget {
                offset: 8,
                len: 16,
                target: 16
            }
        );
        let err = ReadPlan::new(&[read(b"k", 0, 2, usize::MAX)], usize::MAX).unwrap_err();
        assert!(matches!(err, PlanError::OutsideTarget { .. }), "{err}");
    }

    #[test]
    fn remote_ranges_that_wrap_around_are_refused() {
        let err = ReadPlan::new(&[read(b"k", u64::MAX - 3, 8, 0)], 8).unwrap_err();
        assert_eq!(
            err,
            PlanError::AddressWraps {
                address: u64::MAX - 3,
                len: 8
            }
        );
        // Ending exactly at the top is fine.
        ReadPlan::new(&[read(b"k", u64::MAX - 8, 8, 0)], 8).expect("fits");
    }

    #[test]
    fn overlapping_regions_are_refused_whatever_their_order() {
        let reads = [read(b"a", 0, 8, 4), read(b"b", 100, 8, 0)];
        assert_eq!(
            ReadPlan::new(&reads, 16).unwrap_err(),
            PlanError::Overlap { offset: 4 }
        );
        // Touching is not overlapping.
        ReadPlan::new(&[read(b"a", 0, 8, 8), read(b"b", 100, 8, 0)], 16).expect("adjacent");
    }

    #[test]
    fn long_regions_come_in_consecutive_chunks() {
        let reads = [read(b"a", 1000, 10, 0), read(b"b", 50, 3, 20)];
        let (_, chunks) = ReadPlan::new(&reads, 23).expect("valid").into_chunks(4);
        let got: Vec<_> = chunks
            .map(|c| (c.address, c.key, c.len, c.offset))
            .collect();
        assert_eq!(
            got,
            [
                (1000, 0, 4, 0),
                (1004, 0, 4, 4),
                (1008, 0, 2, 8),
                (50, 1, 3, 20)
            ]
        );
        // A zero chunk size means one byte at a time, not a loop that never ends.
        let (_, chunks) = ReadPlan::new(&reads, 23).expect("valid").into_chunks(0);
        assert_eq!(chunks.count(), 13);
    }

    /// Whether `reads` are acceptable, by brute force: every non-empty one inside the
    /// target and the address space, no two sharing a target byte.
    fn acceptable(reads: &[(u64, usize, usize)], target: usize) -> bool {
        let live: Vec<_> = reads.iter().filter(|r| r.1 > 0).collect();
        let fits = live.iter().all(|&&(address, len, offset)| {
            offset as u128 + len as u128 <= target as u128
                && address as u128 + len as u128 <= u64::MAX as u128
        });
        let disjoint = live.iter().enumerate().all(|(i, a)| {
            live[i + 1..].iter().all(|b| {
                a.2 as u128 + a.1 as u128 <= b.2 as u128 || b.2 as u128 + b.1 as u128 <= a.2 as u128
            })
        });
        fits && disjoint
    }

    /// Addresses near both ends of the address space, lengths and offsets near a small
    /// target and near `usize::MAX`.
    fn region() -> impl Strategy<Value = (u64, usize, usize)> {
        let address = prop_oneof![0..1u64 << 20, (u64::MAX - (1 << 12))..=u64::MAX];
        let len = prop_oneof![0..300usize, (usize::MAX - 8)..=usize::MAX];
        let offset = prop_oneof![0..300usize, (usize::MAX - 8)..=usize::MAX];
        (address, len, offset)
    }

    proptest! {
        #[test]
        fn plans_accept_exactly_the_acceptable_reads_and_chunk_them_faithfully(
            regions in proptest::collection::vec(region(), 0..6),
            keys in proptest::collection::vec(0u8..3, 6),
            target in 0..600usize,
            max_chunk in 0..70usize,
        ) {
            let keys: Vec<[u8; 1]> = keys.iter().map(|&k| [k]).collect();
            let reads: Vec<RemoteRead<'_>> = regions
                .iter()
                .zip(&keys)
                .map(|(&(address, len, offset), key)| read(key, address, len, offset))
                .collect();
            let plan = ReadPlan::new(&reads, target);
            prop_assert_eq!(plan.is_ok(), acceptable(&regions, target), "{:?}", plan);
            let Ok(plan) = plan else { return Ok(()) };

            let planned = plan.reads().to_vec();
            prop_assert!(planned.windows(2).all(|p| p[0].offset + p[0].len <= p[1].offset));
            prop_assert_eq!(planned.len(), reads.iter().filter(|r| r.len > 0).count());
            let mut distinct: Vec<_> = plan.keys().to_vec();
            distinct.sort();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), plan.keys().len());
            for p in &planned {
                let original = reads.iter().find(|r| r.len > 0 && r.offset == p.offset).unwrap();
                prop_assert_eq!(original.address, p.address);
                prop_assert_eq!(original.len, p.len);
                prop_assert_eq!(original.key, &plan.keys()[p.key][..]);
            }

            // The chunks tile each region in order, none longer than the chunk size.
            let (_, chunks) = plan.into_chunks(max_chunk);
            let mut regions_left = planned.iter();
            let mut current: Option<PlannedRead> = None;
            for chunk in chunks {
                prop_assert!(chunk.len >= 1 && chunk.len <= max_chunk.max(1));
                let region = match current {
                    Some(c) if c.len > 0 => c,
                    _ => *regions_left.next().expect("a chunk beyond the regions"),
                };
                prop_assert_eq!((chunk.address, chunk.key, chunk.offset), (region.address, region.key, region.offset));
                current = Some(PlannedRead {
                    address: region.address + chunk.len as u64,
                    len: region.len - chunk.len,
                    offset: region.offset + chunk.len,
                    ..region
                });
            }
            prop_assert!(current.is_none_or(|c| c.len == 0));
            prop_assert!(regions_left.next().is_none(), "regions without chunks");
        }
    }
}
