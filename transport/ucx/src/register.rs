//! The one place with `unsafe`: registering an arena segment with UCX.

// The workspace denies `unsafe_code`; this module holds the single block that calls
// `MemoryRegion::map_raw`, whose contract is met by keeping the segment alive.
#![allow(unsafe_code)]

use std::sync::Arc;

use dimstore_arena::Segment;
use dimstore_ucx::{Context, MemoryRegion, UcxError};

/// A registered segment: the UCX region and the segment it covers.
///
/// Field order matters: `region` is dropped (unmapped from UCX) before `segment` releases
/// the mapping.
pub(crate) struct Registration {
    region: MemoryRegion,
    segment: Arc<Segment>,
}

impl Registration {
    /// Registers the whole of `segment` on `context`.
    pub(crate) fn new(context: &Context, segment: Arc<Segment>) -> Result<Self, UcxError> {
        let len = usize::try_from(segment.len()).expect("a mapped segment fits the address space");
        let address = segment.base_addr() as *mut u8;
        // SAFETY: `address..address+len` is the segment's whole mapping, valid while the
        // `Segment` lives. The registration keeps an `Arc<Segment>`, and its `region` field
        // is declared (hence dropped) before `segment`, so the memory stays mapped until the
        // region has been unmapped from UCX.
        let region = unsafe { MemoryRegion::map_raw(context, address, len) }?;
        Ok(Registration { region, segment })
    }

    /// The UCX region.
    pub(crate) fn region(&self) -> &MemoryRegion {
        &self.region
    }

    /// The segment kept mapped.
    pub(crate) fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }
}
