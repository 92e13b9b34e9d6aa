//! Memory registration (`fi_mr_reg`): regions peers read with [`crate::Endpoint::read`].

use std::any::Any;
use std::ffi::c_void;
use std::ops::{BitOr, Deref, DerefMut};
use std::ptr;
use std::rc::Rc;

use libfabric_sys::{
    fi_mr_bind, fi_mr_desc, fi_mr_enable, fi_mr_key, fi_mr_reg, fid_mr, FI_KEY_NOTAVAIL, FI_READ,
    FI_REMOTE_READ, FI_REMOTE_WRITE, FI_WRITE,
};
use stable_deref_trait::StableDeref;

use crate::endpoint::{Endpoint, EndpointInner};
use crate::error::{check, OfiError, Result};
use crate::fabric::{close_fid, Domain, DomainInner};

/// Access rights of a region (`FI_READ`, `FI_REMOTE_READ`, ...), combined with `|`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access(pub u64);

impl Access {
    /// Peers may read the region (`FI_REMOTE_READ`).
    pub const REMOTE_READ: Self = Self(FI_REMOTE_READ);
    /// Peers may write the region (`FI_REMOTE_WRITE`).
    pub const REMOTE_WRITE: Self = Self(FI_REMOTE_WRITE);
    /// Local reads into the region (`FI_READ`).
    pub const READ: Self = Self(FI_READ);
    /// Local writes from the region (`FI_WRITE`).
    pub const WRITE: Self = Self(FI_WRITE);
}

impl BitOr for Access {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A registered memory region; closed (deregistered) on drop, before its buffer is freed.
pub struct MemoryRegion {
    domain: Rc<DomainInner>,
    mr: *mut fid_mr,
    address: *mut u8,
    len: usize,
    /// The endpoint the region is bound to (`FI_MR_ENDPOINT` providers).
    bound: Option<Rc<EndpointInner>>,
    _owner: Option<Box<dyn Any>>,
}

/// A region's local descriptor (`fi_mr_desc`), opaque.
#[derive(Clone, Copy, Debug)]
pub struct Descriptor(*mut c_void);

impl Descriptor {
    /// The raw descriptor, for libfabric calls that take one (e.g. local buffers of
    /// `FI_MR_LOCAL` providers).
    pub fn as_ptr(self) -> *mut c_void {
        self.0
    }
}

impl MemoryRegion {
    /// Registers `buffer` for remote reads; the region owns it and never writes it.
    pub fn register<B>(domain: &Domain, buffer: B) -> Result<Self>
    where
        B: StableDeref + Deref<Target = [u8]> + 'static,
    {
        let (address, len) = (buffer.as_ptr().cast_mut(), buffer.len());
        let mut region = Self::reg(domain, address, len, Access::REMOTE_READ)?;
        region._owner = Some(Box::new(buffer));
        Ok(region)
    }

    /// Registers `buffer` with any `access`, including remote writes (the region owns the
    /// buffer mutably, so nothing else reads it meanwhile).
    pub fn register_mut<B>(domain: &Domain, mut buffer: B, access: Access) -> Result<Self>
    where
        B: StableDeref + DerefMut<Target = [u8]> + 'static,
    {
        let (address, len) = (buffer.as_mut_ptr(), buffer.len());
        let mut region = Self::reg(domain, address, len, access)?;
        region._owner = Some(Box::new(buffer));
        Ok(region)
    }

    /// Registers memory the caller owns (e.g. an arena segment).
    ///
    /// # Safety
    /// `address..address+len` must stay valid and mapped until the region is dropped;
    /// with remote write access, peers may write it at any time meanwhile.
    pub unsafe fn register_raw(
        domain: &Domain,
        address: *mut u8,
        len: usize,
        access: Access,
    ) -> Result<Self> {
        Self::reg(domain, address, len, access)
    }

    /// `fi_mr_reg` with a requested key when the provider does not assign keys.
    fn reg(domain: &Domain, address: *mut u8, len: usize, access: Access) -> Result<Self> {
        let d = &domain.inner;
        let key = d.requested_key();
        let mut mr: *mut fid_mr = ptr::null_mut();
        // SAFETY: the domain is open; the range is memory the region owns (or the caller
        // of `register_raw` guarantees) until the region is closed.
        check("fi_mr_reg", unsafe {
            fi_mr_reg(
                d.handle,
                address.cast_const().cast(),
                len,
                access.0,
                0,
                key,
                0,
                &mut mr,
                ptr::null_mut(),
            )
        })?;
        d.live_regions.set(d.live_regions.get() + 1);
        Ok(Self {
            domain: Rc::clone(d),
            mr,
            address,
            len,
            bound: None,
            _owner: None,
        })
    }

    /// Binds the region to `ep` and enables it, as `FI_MR_ENDPOINT` providers require
    /// before the key is usable (see [`crate::Info::regions_bind_to_endpoint`]).
    pub fn bind(&mut self, ep: &Endpoint) -> Result<()> {
        // SAFETY: the region and the endpoint are open and of the same domain; the region
        // keeps the endpoint alive while bound.
        unsafe {
            check(
                "fi_mr_bind",
                fi_mr_bind(self.mr, ptr::addr_of_mut!((*ep.inner.handle).fid), 0),
            )?;
            check("fi_mr_enable", fi_mr_enable(self.mr))?;
        }
        self.bound = Some(Rc::clone(&ep.inner));
        Ok(())
    }

    /// The remote key peers pass to [`crate::Endpoint::read`].
    pub fn key(&self) -> Result<u64> {
        // SAFETY: the region is open.
        let key = unsafe { fi_mr_key(self.mr) };
        if key == FI_KEY_NOTAVAIL {
            return Err(OfiError::local(
                "fi_mr_key",
                libfabric_sys::FI_EKEYREJECTED,
                "key not available (bind the region to an endpoint first?)",
            ));
        }
        Ok(key)
    }

    /// The local descriptor (`fi_mr_desc`).
    pub fn desc(&self) -> Descriptor {
        // SAFETY: the region is open.
        Descriptor(unsafe { fi_mr_desc(self.mr) })
    }

    /// The address peers use for the region's first byte: its virtual address when the
    /// provider uses virtual addresses (`FI_MR_VIRT_ADDR`), otherwise 0 (offsets).
    pub fn remote_address(&self) -> u64 {
        if self.domain.fabric.info.virtual_addresses() {
            self.address as u64
        } else {
            0
        }
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the region is closed once, before its buffer (a field dropped after this)
        // is freed and before its domain and bound endpoint (held by this struct).
        unsafe { close_fid("fi_close(mr)", ptr::addr_of_mut!((*self.mr).fid)) };
        let d = &self.domain;
        d.live_regions.set(d.live_regions.get() - 1);
    }
}
