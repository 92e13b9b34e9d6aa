//! Receive buffers: 16-byte aligned (rkyv archives can be accessed in place) and allocated
//! zeroed without a memset. Large ones are huge-page mappings, so filling them costs few page
//! faults, and a few of them are recycled: a dropped large buffer goes to a small
//! per-process pool that [`AlignedBuf::for_overwrite`] takes from, so repeated large gets
//! write into warm memory instead of faulting in (and zeroing) fresh pages every time.

use std::sync::Mutex;

use dimstore_arena::PageBuffer;

/// From this size on, buffers are huge-page mappings.
const PAGE_BUFFER_FROM: usize = 4 << 20;

/// Most bytes of idle buffers the pool keeps per process.
const POOL_BYTES: usize = 256 << 20;

/// Most idle buffers the pool keeps.
const POOL_BUFFERS: usize = 4;

/// Large buffers dropped recently, ready for reuse.
static POOL: Mutex<Vec<PageBuffer>> = Mutex::new(Vec::new());

/// Takes a pooled buffer of `len` bytes (capacity at least `len`, at most twice it).
fn take_pooled(len: usize) -> Option<PageBuffer> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i)?;
    let mut buffer = pool.swap_remove(best);
    buffer.set_len(len).then_some(buffer)
}

/// Keeps `buffer` for reuse if the pool has room; otherwise it is unmapped.
fn return_to_pool(buffer: PageBuffer) {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let held: usize = pool.iter().map(PageBuffer::capacity).sum();
    if pool.len() < POOL_BUFFERS && held + buffer.capacity() <= POOL_BYTES {
        pool.push(buffer);
    }
}

/// An owned, 16-byte aligned byte buffer.
#[derive(Default)]
pub struct AlignedBuf {
    storage: Storage,
}

#[derive(Debug)]
enum Storage {
    Heap { words: Vec<u128>, len: usize },
    Pages(PageBuffer),
}

impl Default for Storage {
    fn default() -> Self {
        Storage::Heap {
            words: Vec::new(),
            len: 0,
        }
    }
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Self {
        if len >= PAGE_BUFFER_FROM {
            if let Ok(pages) = PageBuffer::zeroed(len) {
                return AlignedBuf {
                    storage: Storage::Pages(pages),
                };
            }
        }
        AlignedBuf {
            storage: Storage::Heap {
                words: vec![0u128; len.div_ceil(16)],
                len,
            },
        }
    }

    /// A buffer of `len` bytes whose contents are unspecified (a recycled buffer keeps the
    /// bytes of its last use), for callers that overwrite all of it: a receive, a read.
    pub fn for_overwrite(len: usize) -> Self {
        if len >= PAGE_BUFFER_FROM {
            if let Some(pages) = take_pooled(len) {
                return AlignedBuf {
                    storage: Storage::Pages(pages),
                };
            }
        }
        AlignedBuf::zeroed(len)
    }

    /// [`for_overwrite`](Self::for_overwrite), or `None` when the memory cannot be had
    /// (instead of aborting the process): for lengths that come from a peer.
    pub fn try_for_overwrite(len: usize) -> Option<Self> {
        if len >= PAGE_BUFFER_FROM {
            if let Some(pages) = take_pooled(len) {
                return Some(AlignedBuf {
                    storage: Storage::Pages(pages),
                });
            }
            if let Ok(pages) = PageBuffer::zeroed(len) {
                return Some(AlignedBuf {
                    storage: Storage::Pages(pages),
                });
            }
        }
        let mut words = Vec::new();
        words.try_reserve_exact(len.div_ceil(16)).ok()?;
        words.resize(len.div_ceil(16), 0u128);
        Some(AlignedBuf {
            storage: Storage::Heap { words, len },
        })
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut buf = AlignedBuf::for_overwrite(bytes.len());
        buf.as_mut_slice().copy_from_slice(bytes);
        buf
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.storage {
            Storage::Heap { words, len } => &bytemuck::cast_slice(words)[..*len],
            Storage::Pages(pages) => pages.as_slice(),
        }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Storage::Heap { words, len } => &mut bytemuck::cast_slice_mut(words)[..*len],
            Storage::Pages(pages) => pages.as_mut_slice(),
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Storage::Pages(pages) = std::mem::take(&mut self.storage) {
            return_to_pool(pages);
        }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        AlignedBuf::copy_from(self.as_slice())
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for AlignedBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for AlignedBuf {}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_sized() {
        for len in [0usize, 1, 15, 16, 17, 1 << 20, 5 << 20] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_slice().as_ptr() as usize % 16, 0);
            assert!(b.iter().all(|&x| x == 0));
            b.as_mut_slice().fill(7);
            assert!(AlignedBuf::copy_from(&b).iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn large_buffers_are_recycled_and_sized_exactly() {
        // Sizes no other test of this crate uses: the pool is per process.
        let mut first = AlignedBuf::zeroed(22 << 20);
        first.as_mut_slice().fill(9);
        let address = first.as_slice().as_ptr() as usize;
        drop(first);
        // Same size class: the dropped mapping comes back, with its old bytes.
        let again = AlignedBuf::for_overwrite((22 << 20) - 5);
        assert_eq!(again.len(), (22 << 20) - 5);
        assert!(again.iter().all(|&x| x == 9), "recycled, not fresh");
        assert_eq!(again.as_slice().as_ptr() as usize, address);
        assert_eq!(again.as_slice().as_ptr() as usize % 16, 0);
        // A much smaller request does not take a much larger buffer.
        drop(again);
        let small = AlignedBuf::for_overwrite(10 << 20);
        assert_ne!(small.as_slice().as_ptr() as usize, address);
        // zeroed() never hands out recycled bytes.
        assert!(AlignedBuf::zeroed(22 << 20).iter().all(|&x| x == 0));
    }
}
