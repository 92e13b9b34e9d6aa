//! Receive buffers: 16-byte aligned (rkyv archives can be accessed in place) and allocated
//! zeroed without a memset. Large ones are huge-page mappings, so filling them costs few page
//! faults.

use dimstore_arena::PageBuffer;

/// From this size on, buffers are huge-page mappings.
const PAGE_BUFFER_FROM: usize = 4 << 20;

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

    /// A buffer holding a copy of `bytes`.
    pub fn copy_from(bytes: &[u8]) -> Self {
        let mut buf = AlignedBuf::zeroed(bytes.len());
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
}
