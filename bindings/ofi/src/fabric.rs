//! Fabric and domain: the provider instance and one of its interfaces. Everything opened
//! from a domain stays on one thread (domain threading: the types are `!Send`).

use std::cell::Cell;
use std::ptr;
use std::rc::Rc;

use libfabric_sys::{fi_close, fi_domain, fi_fabric, fid, fid_domain, fid_fabric};

use crate::error::{check, Result};
use crate::info::Info;

/// An open fabric (`fi_fabric`), holding the [`Info`] it was opened from.
pub struct Fabric {
    pub(crate) inner: Rc<FabricInner>,
}

/// The state behind [`Fabric`].
pub(crate) struct FabricInner {
    pub(crate) handle: *mut fid_fabric,
    pub(crate) info: Info,
}

/// An open domain (`fi_domain`): registers memory, opens endpoints, queues and vectors.
pub struct Domain {
    pub(crate) inner: Rc<DomainInner>,
}

/// The state behind [`Domain`].
pub(crate) struct DomainInner {
    pub(crate) handle: *mut fid_domain,
    pub(crate) fabric: Rc<FabricInner>,
    /// The next key to request when the provider does not assign keys.
    next_key: Cell<u64>,
    /// Memory regions registered and not yet closed.
    pub(crate) live_regions: Cell<usize>,
}

impl Fabric {
    /// Opens the fabric of `info`.
    pub fn open(info: Info) -> Result<Self> {
        let mut handle: *mut fid_fabric = ptr::null_mut();
        // SAFETY: `info` is a live entry with a fabric_attr; `handle` is a valid out pointer.
        check("fi_fabric", unsafe {
            fi_fabric((*info.ptr).fabric_attr, &mut handle, ptr::null_mut())
        })?;
        Ok(Self {
            inner: Rc::new(FabricInner { handle, info }),
        })
    }

    /// The info the fabric was opened from.
    pub fn info(&self) -> &Info {
        &self.inner.info
    }
}

impl Domain {
    /// Opens the domain of the fabric's info.
    pub fn open(fabric: &Fabric) -> Result<Self> {
        let mut handle: *mut fid_domain = ptr::null_mut();
        // SAFETY: the fabric is open; its info entry is alive (kept by the fabric).
        check("fi_domain", unsafe {
            fi_domain(
                fabric.inner.handle,
                fabric.inner.info.ptr,
                &mut handle,
                ptr::null_mut(),
            )
        })?;
        Ok(Self {
            inner: Rc::new(DomainInner {
                handle,
                fabric: Rc::clone(&fabric.inner),
                next_key: Cell::new(1),
                live_regions: Cell::new(0),
            }),
        })
    }

    /// The info the domain was opened from.
    pub fn info(&self) -> &Info {
        &self.inner.fabric.info
    }

    /// Number of memory regions registered in this domain right now (a leak check).
    pub fn live_regions(&self) -> usize {
        self.inner.live_regions.get()
    }
}

impl DomainInner {
    /// A key for a new region: 0 (ignored) when the provider assigns keys, otherwise a
    /// key distinct from every other region of this domain.
    pub(crate) fn requested_key(&self) -> u64 {
        if self.fabric.info.provider_assigns_keys() {
            return 0;
        }
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        key
    }
}

/// `fi_close` on a fid, for drops (errors cannot be reported there; debug builds assert).
///
/// # Safety
/// `fid` must be an open libfabric object, closed exactly once, after every object opened
/// from or bound to it.
pub(crate) unsafe fn close_fid(api: &'static str, fid: *mut fid) {
    // SAFETY: guaranteed by the caller.
    let ret = unsafe { fi_close(fid) };
    debug_assert!(check(api, ret).is_ok(), "{api} failed: {ret}");
}

impl Drop for FabricInner {
    fn drop(&mut self) {
        // SAFETY: every domain holds an `Rc` to the fabric, so none is left open.
        unsafe { close_fid("fi_close(fabric)", ptr::addr_of_mut!((*self.handle).fid)) };
    }
}

impl Drop for DomainInner {
    fn drop(&mut self) {
        // SAFETY: every region, queue, vector and endpoint holds an `Rc` to the domain,
        // so none is left open.
        unsafe { close_fid("fi_close(domain)", ptr::addr_of_mut!((*self.handle).fid)) };
    }
}
