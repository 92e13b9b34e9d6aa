//! A segment: one memfd mapped read-write into the server.
//!
//! Same-node clients receive segments' descriptors, so the memfd itself carries the rules
//! (seals, which no descriptor holder can remove): its size is fixed (`F_SEAL_SHRINK`,
//! `F_SEAL_GROW`), so no client can truncate it and fault the server. A shared segment (many
//! objects) is also sealed, once the server has mapped it, against new writable mappings and
//! writes (`F_SEAL_FUTURE_WRITE`, then `F_SEAL_SEAL`): clients can map it read-only only,
//! while the server keeps writing through its own mapping. A writer's segment
//! ([`Segment::for_writer`]: in-place puts of one connection, one object at a time) stays
//! writable for that writer; everyone else gets a read-only descriptor of it
//! ([`Segment::read_only_fd`]).
//!
//! This module is the arena's FFI layer (mmap/munmap through `rustix`); it holds the crate's
//! only `unsafe` code.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{fcntl_add_seals, ftruncate, memfd_create, MemfdFlags, Mode, OFlags, SealFlags};
use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    Memfd(#[source] rustix::io::Errno),
    /// `ftruncate` on the memfd failed.
    #[error("ftruncate of a {len}-byte segment failed")]
    Truncate {
        /// Requested length.
        len: u64,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// `mmap` failed.
    #[error("mmap of a {len}-byte segment failed")]
    Map {
        /// Requested length.
        len: u64,
        /// The errno.
        #[source]
        source: rustix::io::Errno,
    },
    /// Adding seals to the memfd failed.
    #[error("cannot seal the segment's memfd")]
    Seal(#[source] rustix::io::Errno),
}

/// Seals of every segment from its creation: its size never changes.
const SIZE_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW);
/// Seals that end writes by anyone but the server's own mapping, and further sealing.
const WRITE_SEALS: SealFlags = SealFlags::FUTURE_WRITE.union(SealFlags::SEAL);

/// A contiguous shared-memory region backed by a memfd.
///
/// Pages are committed lazily by the kernel when first written, so a mapped but unused
/// segment costs address space, not memory.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    base: NonNull<u8>,
    len: u64,
    /// The writer that may map it writable, for a writer's segment.
    writer: Option<u64>,
}

// SAFETY: the mapping is plain shared memory owned by this value; concurrent access to
// disjoint ranges is coordinated by the arena's allocator, which never hands out overlapping
// ranges, and reads of sealed objects are read-only.
unsafe impl Send for Segment {}
// SAFETY: see `Send`; `&Segment` only exposes raw pointers and the fd.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates and maps a segment of `len` bytes (`len > 0`) that only the server writes:
    /// every descriptor of it maps read-only.
    pub fn new(len: u64) -> Result<Segment, SegmentError> {
        let segment = Self::create(len, None)?;
        fcntl_add_seals(&segment.fd, WRITE_SEALS).map_err(SegmentError::Seal)?;
        Ok(segment)
    }

    /// Creates and maps a segment of `len` bytes (`len > 0`) that writer `writer` (an id
    /// of the caller's choosing) may map writable; its size is sealed.
    pub fn for_writer(len: u64, writer: u64) -> Result<Segment, SegmentError> {
        Self::create(len, Some(writer))
    }

    /// A size-sealed memfd of `len` bytes, mapped read-write.
    fn create(len: u64, writer: Option<u64>) -> Result<Segment, SegmentError> {
        let fd = memfd_create(
            "dimstore-arena",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .map_err(SegmentError::Memfd)?;
        ftruncate(&fd, len).map_err(|source| SegmentError::Truncate { len, source })?;
        let map_len = usize::try_from(len).map_err(|_| SegmentError::Map {
            len,
            source: rustix::io::Errno::NOMEM,
        })?;
        // SAFETY: we map a fresh memfd we own, of exactly `map_len` bytes (just truncated to
        // that size), at an address of the kernel's choosing; nothing else aliases it yet.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                map_len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|source| SegmentError::Map { len, source })?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(SegmentError::Map {
            len,
            source: rustix::io::Errno::NOMEM,
        })?;
        // From here on `Drop` unmaps.
        let segment = Segment {
            fd,
            base,
            len,
            writer,
        };
        fcntl_add_seals(&segment.fd, SIZE_SEALS).map_err(SegmentError::Seal)?;
        Ok(segment)
    }

    /// The writer that may map this segment writable (`None`: a shared segment, read-only
    /// for every client).
    pub fn writer(&self) -> Option<u64> {
        self.writer
    }

    /// A new descriptor of the memfd opened read-only (through `/proc/self/fd`): it cannot be
    /// mapped writable, written, or resized.
    pub fn read_only_fd(&self) -> std::io::Result<OwnedFd> {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        Ok(rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the segment is empty (never true for a created segment).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The memfd, for sharing with same-node clients or registering with a NIC.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Start address of the mapping (for memory registration).
    pub fn base_addr(&self) -> usize {
        self.base.as_ptr() as usize
    }

    /// Read-only view of `len` bytes at `offset`.
    ///
    /// # Safety
    /// `offset..offset+len` must lie inside the segment and no `&mut` view of an overlapping
    /// range may be alive.
    pub(crate) unsafe fn slice(&self, offset: u64, len: u64) -> &[u8] {
        debug_assert!(offset + len <= self.len);
        // SAFETY: the caller guarantees the range is in bounds and not mutably aliased; the
        // mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(offset as usize), len as usize) }
    }

    /// Writable view of `len` bytes at `offset`.
    ///
    /// # Safety
    /// `offset..offset+len` must lie inside the segment and no other view of an overlapping
    /// range may be alive for the returned lifetime.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, offset: u64, len: u64) -> &mut [u8] {
        debug_assert!(offset + len <= self.len);
        // SAFETY: the caller guarantees the range is in bounds and exclusively owned.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(offset as usize), len as usize)
        }
    }

    /// Faults in the pages of `offset..offset+len` in one system call, so that a transfer
    /// into them does not trap once per page. Best effort (needs Linux 5.14).
    pub(crate) fn populate(&self, offset: u64, len: u64) {
        const PAGE: u64 = 4096;
        let start = offset / PAGE * PAGE;
        let end = (offset + len).div_ceil(PAGE) * PAGE;
        if end > start && end <= self.len {
            // SAFETY: the range lies inside this mapping; populating only allocates pages
            // (their contents are unchanged, zero for never-touched ones).
            let _ = unsafe {
                rustix::mm::madvise(
                    self.base.as_ptr().add(start as usize).cast(),
                    (end - start) as usize,
                    rustix::mm::Advice::LinuxPopulateWrite,
                )
            };
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` describe the mapping created in `new`, and no views outlive
        // `self` (they borrow it or hold an `Arc` to it).
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}
