//! A server's segment as a same-node client maps it: read-only views of sealed objects, and
//! exclusive writable claims on reservations for in-place puts.
//!
//! FFI layer (mmap/munmap through `rustix`), like `segment`. What makes the views sound is
//! the server's protocol: sealed objects are never written again while a lease on them
//! lives, and a reservation's range belongs to the one client that created it; within this
//! process, claims are checked not to overlap.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

/// A mapping of another process's segment.
#[derive(Debug)]
pub struct MappedSegment {
    base: NonNull<u8>,
    len: u64,
    writable: bool,
    claims: Mutex<Vec<(u64, u64)>>,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; views hand out disjoint
// writable ranges (checked claims) or read-only ranges of sealed objects.
unsafe impl Send for MappedSegment {}
// SAFETY: see `Send`.
unsafe impl Sync for MappedSegment {}

impl MappedSegment {
    /// Maps `len` bytes of the segment behind `fd`, read-only or read-write.
    pub fn map(fd: OwnedFd, len: u64, writable: bool) -> std::io::Result<Arc<MappedSegment>> {
        let map_len = usize::try_from(len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        if map_len == 0 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a new shared mapping of the descriptor at a kernel-chosen address; it
        // aliases no Rust object of this process.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(Arc::new(MappedSegment {
            base,
            len,
            writable,
            claims: Mutex::new(Vec::new()),
            _fd: fd,
        }))
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty (never true for a created mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A read-only view of a sealed object; `None` if out of bounds.
    pub fn view(self: &Arc<Self>, offset: u64, len: u64) -> Option<MappedBytes> {
        (offset.checked_add(len)? <= self.len).then(|| MappedBytes {
            segment: Arc::clone(self),
            offset,
            len,
        })
    }

    /// An exclusive writable view of a reservation; `None` if out of bounds, the mapping is
    /// read-only, or the range overlaps a live claim.
    pub fn claim(self: &Arc<Self>, offset: u64, len: u64) -> Option<MappedBytesMut> {
        let end = offset.checked_add(len)?;
        if !self.writable || end > self.len {
            return None;
        }
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if claims.iter().any(|&(o, l)| offset < o + l && o < end) {
            return None;
        }
        claims.push((offset, len));
        Some(MappedBytesMut {
            segment: Arc::clone(self),
            offset,
            len,
        })
    }
}

impl Drop for MappedSegment {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `map`; every view holds an `Arc` to `self`, so
        // none outlives it.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}

/// Read-only bytes of an object in a mapped segment.
#[derive(Debug, Clone)]
pub struct MappedBytes {
    segment: Arc<MappedSegment>,
    offset: u64,
    len: u64,
}

impl std::ops::Deref for MappedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: bounds checked in `view`; the mapping lives as long as `segment`; the
        // server does not write a sealed object while the lease that produced this view lives.
        unsafe {
            std::slice::from_raw_parts(
                self.segment.base.as_ptr().add(self.offset as usize),
                self.len as usize,
            )
        }
    }
}

/// Exclusive writable bytes of a reservation in a mapped segment.
#[derive(Debug)]
pub struct MappedBytesMut {
    segment: Arc<MappedSegment>,
    offset: u64,
    len: u64,
}

impl std::ops::Deref for MappedBytesMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: bounds checked in `claim`; the claim makes this the only view in this
        // process, and the server hands the range to one client only.
        unsafe {
            std::slice::from_raw_parts(
                self.segment.base.as_ptr().add(self.offset as usize),
                self.len as usize,
            )
        }
    }
}

impl std::ops::DerefMut for MappedBytesMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` makes the borrow exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.segment.base.as_ptr().add(self.offset as usize),
                self.len as usize,
            )
        }
    }
}

impl Drop for MappedBytesMut {
    fn drop(&mut self) {
        let mut claims = self
            .segment
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        claims.retain(|&c| c != (self.offset, self.len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Segment;

    #[test]
    fn a_client_mapping_sees_the_servers_bytes_and_claims_do_not_overlap() {
        let server = Segment::for_writer(1 << 20, 1).expect("segment");
        let fd = server.fd().try_clone_to_owned().expect("dup");
        let mapped = MappedSegment::map(fd, server.len(), true).expect("map");
        let mut claim = mapped.claim(4096, 100).expect("claim");
        claim.fill(7);
        assert!(mapped.claim(4100, 10).is_none(), "overlap refused");
        assert!(mapped.claim((1 << 20) - 10, 20).is_none(), "bounds");
        drop(claim);
        let view = mapped.view(4096, 100).expect("view");
        assert!(view.iter().all(|&b| b == 7));
        assert!(
            mapped.claim(4100, 10).is_some(),
            "released claim frees the range"
        );
        let fd = server.fd().try_clone_to_owned().expect("dup");
        let read_only = MappedSegment::map(fd, server.len(), false).expect("map");
        assert!(
            read_only.claim(0, 1).is_none(),
            "read-only mappings are not claimable"
        );
        assert_eq!(read_only.view(4096, 1).expect("view")[0], 7);
    }

    #[test]
    fn shared_segments_map_read_only_and_writer_segments_only_for_their_writer() {
        let shared = Segment::new(1 << 20).expect("segment");
        let fd = shared.fd().try_clone_to_owned().expect("dup");
        assert_eq!(
            rustix::fs::ftruncate(&fd, 0),
            Err(rustix::io::Errno::PERM),
            "size sealed"
        );
        assert_eq!(
            rustix::io::write(&fd, b"x"),
            Err(rustix::io::Errno::PERM),
            "writes sealed"
        );
        assert!(MappedSegment::map(fd, shared.len(), true).is_err());
        let writer = Segment::for_writer(1 << 20, 7).expect("segment");
        assert_eq!(writer.writer(), Some(7));
        let fd = writer.fd().try_clone_to_owned().expect("dup");
        assert_eq!(
            rustix::fs::ftruncate(&fd, 0),
            Err(rustix::io::Errno::PERM),
            "size sealed"
        );
        let written = MappedSegment::map(fd, writer.len(), true).expect("writable for its writer");
        written.claim(0, 4).expect("claim").copy_from_slice(b"mine");
        let read_only = writer.read_only_fd().expect("reopen");
        assert!(rustix::io::write(&read_only, b"x").is_err());
        assert!(rustix::fs::ftruncate(&read_only, 0).is_err());
        let clone = read_only.try_clone().expect("dup");
        assert!(MappedSegment::map(clone, writer.len(), true).is_err());
        let reader = MappedSegment::map(read_only, writer.len(), false).expect("read-only");
        assert_eq!(&reader.view(0, 4).expect("view")[..], b"mine");
    }
}
