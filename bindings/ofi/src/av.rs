//! Address vectors: peers' endpoint names inserted once, then addressed by `fi_addr_t`.

use std::ptr;
use std::rc::Rc;

use libfabric_sys::{
    fi_addr_t, fi_av_attr, fi_av_insert, fi_av_open, fi_av_remove, fi_av_type, fid_av,
};

use crate::error::{check, OfiError, Result};
use crate::fabric::{close_fid, Domain, DomainInner};

/// Room given to an address on insertion: names shorter than the provider's format are
/// padded with zeros, so a short (or hostile) name is never read past its end.
const NAME_ROOM: usize = 512;

/// An address vector (`fi_av_open`).
pub struct AddressVector {
    pub(crate) inner: Rc<AvInner>,
}

/// The state behind [`AddressVector`].
pub(crate) struct AvInner {
    pub(crate) handle: *mut fid_av,
    _domain: Rc<DomainInner>,
}

/// A peer's address in one address vector (valid only with endpoints bound to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    pub(crate) addr: fi_addr_t,
    pub(crate) av: usize,
}

impl AddressVector {
    /// Opens an address vector of the provider's preferred type on `domain`.
    pub fn open(domain: &Domain) -> Result<Self> {
        let mut attr = fi_av_attr {
            type_: fi_av_type::FI_AV_UNSPEC,
            count: 64,
            ..Default::default()
        };
        let mut handle: *mut fid_av = ptr::null_mut();
        // SAFETY: the domain is open; `attr` and `handle` are valid for the call.
        check("fi_av_open", unsafe {
            fi_av_open(domain.inner.handle, &mut attr, &mut handle, ptr::null_mut())
        })?;
        Ok(Self {
            inner: Rc::new(AvInner {
                handle,
                _domain: Rc::clone(&domain.inner),
            }),
        })
    }

    /// Inserts a peer's endpoint name (from its [`crate::Endpoint::name`]).
    pub fn insert(&self, name: &[u8]) -> Result<PeerAddr> {
        const API: &str = "fi_av_insert";
        if name.is_empty() || name.len() >= NAME_ROOM {
            return Err(OfiError::local(
                API,
                22,
                format!("bad name length {}", name.len()),
            ));
        }
        let mut padded = name.to_vec();
        padded.resize(NAME_ROOM, 0);
        let mut addr: fi_addr_t = 0;
        // SAFETY: the vector is open; `padded` holds one address (zero-padded, so the
        // provider reads only initialized bytes) and `addr` room for one result.
        let n = unsafe {
            fi_av_insert(
                self.inner.handle,
                padded.as_ptr().cast(),
                1,
                &mut addr,
                0,
                ptr::null_mut(),
            )
        };
        check(API, n)?;
        if n != 1 {
            return Err(OfiError::local(API, 22, "address not inserted"));
        }
        Ok(PeerAddr {
            addr,
            av: self.id(),
        })
    }

    /// Removes a peer inserted before.
    pub fn remove(&self, peer: PeerAddr) -> Result<()> {
        const API: &str = "fi_av_remove";
        if peer.av != self.id() {
            return Err(OfiError::local(API, 22, "address of another vector"));
        }
        let mut addr = peer.addr;
        // SAFETY: the vector is open; `addr` is one address inserted in it.
        check(API, unsafe {
            fi_av_remove(self.inner.handle, &mut addr, 1, 0)
        })
    }

    /// This vector's identity (for checking addresses).
    pub(crate) fn id(&self) -> usize {
        self.inner.handle as usize
    }
}

impl Drop for AvInner {
    fn drop(&mut self) {
        // SAFETY: every endpoint bound to the vector holds an `Rc` to it, so all are
        // closed; the vector is closed once.
        unsafe { close_fid("fi_close(av)", ptr::addr_of_mut!((*self.handle).fid)) };
    }
}
