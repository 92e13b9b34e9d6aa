//! A read target split into chunks that one-sided operations fill independently.
//!
//! Transport libraries take ownership of the buffer an operation writes until the operation
//! completes (or is abandoned and later drained). A [`ReadTarget`] shares one
//! [`AlignedBuf`] among [`ReadChunk`]s covering disjoint ranges of it; each chunk keeps the
//! whole buffer alive, so a chunk whose operation outlives an error still writes into live
//! memory. Once every chunk is gone the buffer comes back with [`ReadTarget::finish`].

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut, Range};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::channel::IncomingRequest;
use crate::AlignedBuf;

/// The buffer, shared by the chunks writing disjoint ranges of it.
struct Shared(UnsafeCell<AlignedBuf>);

// SAFETY: the buffer is only accessed through chunks of disjoint ranges (each chunk is
// handed to one operation) and, at `finish`, by the sole owner left.
unsafe impl Sync for Shared {}

/// A buffer being filled by one-sided reads.
pub struct ReadTarget {
    shared: Arc<Shared>,
    len: usize,
    /// End of the highest range handed out so far: ranges are handed out in increasing,
    /// non-overlapping order.
    handed_out: usize,
}

impl ReadTarget {
    /// A target filling `buf`.
    pub fn new(buf: AlignedBuf) -> Self {
        let len = buf.len();
        ReadTarget {
            shared: Arc::new(Shared(UnsafeCell::new(buf))),
            len,
            handed_out: 0,
        }
    }

    /// Length of the whole buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk covering `range`; `None` if it is out of bounds or starts below the end of
    /// a range handed out before (chunks never overlap).
    pub fn chunk(&mut self, range: Range<usize>) -> Option<ReadChunk> {
        if range.start < self.handed_out || range.start > range.end || range.end > self.len {
            return None;
        }
        self.handed_out = range.end;
        // SAFETY: only the base pointer is taken (no reference to the buffer is formed);
        // the heap or page mapping behind it does not move while the Arc keeps it.
        let base = unsafe { (*self.shared.0.get()).as_mut_slice().as_mut_ptr() };
        // SAFETY: `range.start <= len`, so the offset stays inside (or one past) the buffer.
        let ptr = unsafe { base.add(range.start) };
        Some(ReadChunk {
            _shared: Arc::clone(&self.shared),
            ptr: NonNull::new(ptr).unwrap_or(NonNull::dangling()),
            len: range.len(),
        })
    }

    /// The filled buffer, once no chunk is alive; otherwise the target back.
    pub fn finish(self) -> Result<AlignedBuf, ReadTarget> {
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => Ok(shared.0.into_inner()),
            Err(shared) => Err(ReadTarget { shared, ..self }),
        }
    }
}

/// A writable range of a [`ReadTarget`], owned by one operation.
pub struct ReadChunk {
    _shared: Arc<Shared>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a chunk is the only accessor of its range (ranges never overlap and the target
// hands each out once); the memory lives as long as the chunk holds the Arc.
unsafe impl Send for ReadChunk {}
// SAFETY: shared access only reads the chunk's own range.
unsafe impl Sync for ReadChunk {}

impl Deref for ReadChunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is inside the live buffer and owned by this chunk alone.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for ReadChunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the bytes live in the shared buffer, not in the chunk: moving the chunk does not
// move them, and they stay put while the chunk (holding the Arc) lives.
unsafe impl stable_deref_trait::StableDeref for ReadChunk {}

// SAFETY: an AlignedBuf's bytes live in a Vec's heap allocation or in a page mapping; neither
// moves when the AlignedBuf moves, and Deref/DerefMut never reallocate them.
unsafe impl stable_deref_trait::StableDeref for AlignedBuf {}

/// A request's own payload memory (see [`IncomingRequest::destination`]) as a receive
/// buffer a fabric can own until the receive completes: the payload lands in place, with
/// no copy.
pub struct IncomingTarget {
    request: Box<dyn IncomingRequest>,
    ptr: NonNull<u8>,
    len: usize,
}

impl IncomingTarget {
    /// `request`'s destination as a receive buffer; the request back if it has none.
    pub fn new(
        mut request: Box<dyn IncomingRequest>,
    ) -> Result<IncomingTarget, Box<dyn IncomingRequest>> {
        let Some(destination) = request.destination() else {
            return Err(request);
        };
        let len = destination.len();
        let ptr = NonNull::new(destination.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Ok(IncomingTarget { request, ptr, len })
    }

    /// The request, to finish once the receive has completed.
    pub fn into_request(self) -> Box<dyn IncomingRequest> {
        self.request
    }
}

impl Deref for IncomingTarget {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is the request's destination, which stays at its address
        // while the request lives (the trait's contract) and is reached only through this
        // wrapper, which owns the request.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for IncomingTarget {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the bytes are the request's destination, which does not move when the wrapper
// (or the boxed request) moves, and stays valid while the wrapper owns the request.
unsafe impl stable_deref_trait::StableDeref for IncomingTarget {}

impl std::fmt::Debug for IncomingTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IncomingTarget({} bytes)", self.len)
    }
}

impl std::fmt::Debug for ReadTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadTarget({} bytes)", self.len)
    }
}

impl std::fmt::Debug for ReadChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadChunk({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fill_disjoint_ranges_and_finish_returns_the_buffer() {
        let mut target = ReadTarget::new(AlignedBuf::zeroed(10));
        let mut a = target.chunk(0..4).unwrap();
        assert!(target.chunk(2..6).is_none(), "overlap refused");
        let mut b = target.chunk(4..10).unwrap();
        assert!(target.chunk(9..11).is_none(), "out of bounds refused");
        a.fill(1);
        b.fill(2);
        let target = target.finish().expect_err("chunks alive");
        drop((a, b));
        let buf = target.finish().ok().unwrap();
        assert_eq!(&buf[..], &[1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    }
}
