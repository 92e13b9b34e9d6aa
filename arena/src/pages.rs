//! Large private buffers straight from the kernel: anonymous mappings backed by transparent
//! huge pages where the kernel allows it, so filling 128 MiB costs tens of page faults, not
//! tens of thousands. Zero-filled by the kernel (no memset).
//!
//! Like `segment`, this module is an FFI layer (mmap/madvise/munmap through `rustix`).
#![allow(unsafe_code)]

use std::ptr::NonNull;

use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};

/// Huge-page size the mappings are rounded to.
const HUGE_PAGE: usize = 2 << 20;

/// A zero-initialised, page-aligned, private buffer.
#[derive(Debug)]
pub struct PageBuffer {
    base: NonNull<u8>,
    len: usize,
    mapped: usize,
}

// SAFETY: the mapping is private memory owned by this value alone; access goes through
// `&self` / `&mut self` like a `Vec<u8>`.
unsafe impl Send for PageBuffer {}
// SAFETY: see `Send`; shared references only read.
unsafe impl Sync for PageBuffer {}

impl PageBuffer {
    /// Maps `len` bytes (`len > 0`), asking for transparent huge pages.
    pub fn zeroed(len: usize) -> std::io::Result<PageBuffer> {
        let mapped = len.div_ceil(HUGE_PAGE).max(1) * HUGE_PAGE;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing aliases
        // nothing.
        let ptr = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                mapped,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }?;
        // SAFETY: advice on the mapping just created, of exactly its length; huge pages are a
        // hint, so failure (THP disabled) is ignored.
        let _ = unsafe { madvise(ptr, mapped, Advice::LinuxHugepage) };
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(PageBuffer { base, len, mapped })
    }

    /// Bytes mapped (the length rounded up to whole huge pages).
    pub fn capacity(&self) -> usize {
        self.mapped
    }

    /// Changes the length within the capacity (the bytes keep whatever they held: zeros
    /// where never written); `false` if `len` exceeds the capacity.
    pub fn set_len(&mut self, len: usize) -> bool {
        if len > self.mapped {
            return false;
        }
        self.len = len;
        true
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `base` points to `mapped >= len` bytes owned by `self`, initialised (zeros
        // from the kernel, or bytes written since); `&self` rules out a live `&mut` view.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr(), self.len) }
    }
}

impl Drop for PageBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `zeroed`; no views outlive `self`.
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_writable_and_aligned() {
        let mut b = PageBuffer::zeroed(5 << 20).expect("map");
        assert_eq!(b.as_slice().len(), 5 << 20);
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice().fill(9);
        assert!(b.as_slice().iter().all(|&x| x == 9));
    }
}
