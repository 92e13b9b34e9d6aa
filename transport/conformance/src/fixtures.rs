//! What the cases read: objects in an arena, exported, filled with a pattern.

use std::time::{Duration, Instant};

use dimstore_arena::{Allocation, Arena, ArenaConfig};
use dimstore_ffi_test_support::pattern;
use dimstore_transport::onesided::{Exporter, Reader, RemoteRead, RemoteRegion};
use dimstore_transport::AlignedBuf;

/// Deadline of one read in the cases (never reached when things work).
pub(crate) const OP: Duration = Duration::from_secs(20);
pub(crate) const MIB: usize = 1 << 20;

/// An object in an arena, filled with a pattern, and where peers read it.
pub(crate) struct Object {
    /// Keeps the object allocated (and its segment in use) while the object lives.
    _alloc: Allocation,
    pub(crate) bytes: Vec<u8>,
    /// Its segment.
    pub(crate) segment: u32,
    pub(crate) region: RemoteRegion,
    /// Remote address of the object's first byte.
    pub(crate) address: u64,
}

impl Object {
    /// Allocates `len` bytes in `arena`, fills them with pattern `seed` and exports their
    /// segment (twice: a second export must return the same region).
    pub(crate) fn new(arena: &Arena, exporter: &dyn Exporter, len: usize, seed: u8) -> Object {
        let mut alloc = arena.allocate(len as u64).expect("arena room");
        let bytes = pattern(len, seed);
        alloc.as_mut_slice().copy_from_slice(&bytes);
        let (segment, offset) = alloc.location().expect("non-empty object");
        let mapped = arena.segment(segment).expect("segment mapped");
        let region = exporter.export(segment, &mapped).expect("export");
        let again = exporter.export(segment, &mapped).expect("export again");
        assert_eq!(region, again, "a second export must return the same region");
        Object {
            _alloc: alloc,
            bytes,
            segment,
            address: region.address + offset,
            region,
        }
    }

    /// A read of `len` bytes at `at` of the object into the target at `offset`.
    pub(crate) fn read(&self, at: usize, len: usize, offset: usize) -> RemoteRead<'_> {
        RemoteRead {
            address: self.address + at as u64,
            key: &self.region.key,
            len,
            offset,
        }
    }

    /// Reads the whole object through `reader` from `peer` and returns its bytes.
    pub(crate) fn read_all(&self, reader: &dyn Reader, peer: &[u8]) -> Vec<u8> {
        let len = self.bytes.len();
        reader
            .read(
                peer,
                &[self.read(0, len, 0)],
                AlignedBuf::zeroed(len),
                deadline(),
            )
            .expect("read")
            .to_vec()
    }
}

/// An arena of `capacity` bytes in segments of `segment_size`.
pub(crate) fn arena(capacity: usize, segment_size: usize) -> Arena {
    Arena::new(ArenaConfig {
        capacity: capacity as u64,
        segment_size: segment_size as u64,
    })
}

/// The deadline of a read starting now.
pub(crate) fn deadline() -> Instant {
    Instant::now() + OP
}

/// MB/s of `bytes` moved in `elapsed`.
pub(crate) fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9) / 1e6
}

/// CPU time used so far by this process's threads whose name starts with `prefix`.
pub(crate) fn threads_cpu(prefix: &str) -> Duration {
    let mut total = Duration::ZERO;
    let tasks = std::fs::read_dir("/proc/self/task").expect("tasks");
    for entry in tasks.flatten() {
        let dir = entry.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat.split_whitespace().next().and_then(|t| t.parse().ok()) {
            total += Duration::from_nanos(ns);
        }
    }
    total
}
