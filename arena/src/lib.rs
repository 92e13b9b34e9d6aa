//! Object memory for dimstore.
//!
//! Object bytes live in large memfd-backed shared-memory [`Segment`]s, not in per-object heap
//! buffers: the same pages can later be mapped by same-node clients and registered with RDMA
//! NICs, so one copy of the bytes serves every reader. The [`Arena`] grows segment by segment
//! as needed, accounts every allocated byte against its capacity (the server's memory limit)
//! and hands out [`Allocation`]s:
//!
//! - an `Allocation` owned uniquely is writable (`as_mut_slice`): that is an object being
//!   received, invisible to readers;
//! - sealed ([`Allocation::seal`]) it is read-only and shared: every clone of the [`Sealed`]
//!   handle is a lease that keeps the bytes alive while a transfer reads them;
//! - dropping the last handle returns the range to the allocator (and the pages to the kernel).

mod allocator;
mod arena;
mod mapping;
mod pages;
mod segment;

pub use allocator::FreeList;
pub use arena::{Allocation, Arena, ArenaConfig, ArenaStats, OutOfMemory, Sealed, Writer};
pub use mapping::{MappedBytes, MappedBytesMut, MappedSegment};
pub use pages::PageBuffer;
pub use segment::{Segment, SegmentError};

/// Allocation granularity: every object starts on a 64-byte boundary (a cache line, and enough
/// for any rkyv archive's alignment).
pub const ALIGN: u64 = 64;
