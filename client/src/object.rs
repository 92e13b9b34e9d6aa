//! What a get returns: the object's bytes, either owned (fetched through a socket) or mapped
//! in place from a same-node server's memory and pinned there by a lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore_arena::MappedBytes;
use dimstore_proto::Request;
use dimstore_transport::{AlignedBuf, Connection};

/// An object's bytes. Dereferences to `[u8]`; 16-byte aligned either way, so archived values
/// can be read in place.
///
/// On the same node the bytes are the server's own memory, mapped read-only (no copy); the
/// server keeps them valid, even if the object is evicted meanwhile, until this value drops.
#[derive(Debug)]
pub struct ObjectBytes {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Owned(AlignedBuf),
    Mapped {
        bytes: MappedBytes,
        _leases: Arc<Leases>,
    },
}

impl ObjectBytes {
    pub(crate) fn owned(buf: AlignedBuf) -> Self {
        ObjectBytes {
            inner: Inner::Owned(buf),
        }
    }

    pub(crate) fn mapped(bytes: MappedBytes, leases: Arc<Leases>) -> Self {
        ObjectBytes {
            inner: Inner::Mapped {
                bytes,
                _leases: leases,
            },
        }
    }

    /// Whether the bytes are mapped from a same-node server (no copy was made).
    pub fn is_mapped(&self) -> bool {
        matches!(self.inner, Inner::Mapped { .. })
    }

    /// The bytes as a vector (copies).
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_ref().to_vec()
    }
}

impl std::ops::Deref for ObjectBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            Inner::Owned(buf) => buf,
            Inner::Mapped { bytes, .. } => bytes,
        }
    }
}

impl AsRef<[u8]> for ObjectBytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// Cloning copies the bytes into an owned buffer (a mapped clone would need its own lease).
impl Clone for ObjectBytes {
    fn clone(&self) -> Self {
        ObjectBytes::owned(AlignedBuf::copy_from(self))
    }
}

impl PartialEq for ObjectBytes {
    fn eq(&self, other: &Self) -> bool {
        self[..] == other[..]
    }
}

impl Eq for ObjectBytes {}

/// The leases of the mapped objects of one reply, released together (one one-way notice)
/// when the last of those objects is dropped.
pub(crate) struct Leases {
    pub(crate) ids: Vec<u64>,
    pub(crate) connection: Arc<dyn Connection>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Leases({:?})", self.ids)
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        // Best effort: if the connection is gone, the server has released the leases already.
        let _ = self.connection.notify(
            &Request::Release {
                leases: std::mem::take(&mut self.ids),
            },
            Instant::now() + self.timeout,
        );
    }
}
