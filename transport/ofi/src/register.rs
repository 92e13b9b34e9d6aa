//! Registration of arena segments: the crate's only `unsafe` (`fi_mr_reg` on memory the
//! wrapper does not own).

#![allow(unsafe_code)]

use std::sync::Arc;

use dimstore_arena::Segment;
use dimstore_ofi::{Access, Domain, Endpoint, MemoryRegion, OfiError};

/// A registered segment. The region is declared first, so it is dropped (deregistered)
/// before the `Arc` that keeps the segment mapped.
pub(crate) struct Registration {
    region: MemoryRegion,
    segment: Arc<Segment>,
}

impl Registration {
    /// Registers the whole of `segment` for remote reads (bound to `ep` if given, as
    /// `FI_MR_ENDPOINT` providers require).
    pub(crate) fn new(
        domain: &Domain,
        segment: &Arc<Segment>,
        ep: Option<&Endpoint>,
    ) -> Result<Registration, OfiError> {
        let len = usize::try_from(segment.len()).map_err(|_| {
            OfiError::local("fi_mr_reg", 22, "segment larger than the address space")
        })?;
        let address = segment.base_addr() as *mut u8;
        // SAFETY: `address..address+len` is the segment's whole mapping. The registration
        // holds a clone of the `Arc<Segment>`, so the mapping stays valid until the region
        // is dropped, which happens first (field order). Access is remote read only: peers
        // never write the memory.
        let mut region =
            unsafe { MemoryRegion::register_raw(domain, address, len, Access::REMOTE_READ)? };
        if let Some(ep) = ep {
            region.bind(ep)?;
        }
        Ok(Registration {
            region,
            segment: Arc::clone(segment),
        })
    }

    /// The registered region.
    pub(crate) fn region(&self) -> &MemoryRegion {
        &self.region
    }

    /// Whether nobody but this registration holds the segment any more.
    pub(crate) fn is_orphaned(&self) -> bool {
        Arc::strong_count(&self.segment) == 1
    }
}
