//! Reliable datagram endpoints (`FI_EP_RDM`): messages to peers in an address vector and
//! one-sided reads of their registered memory.

use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::rc::Rc;

use libfabric_sys::{
    fi_enable, fi_endpoint, fi_ep_bind, fi_getname, fi_read, fi_recv, fi_send, fid_ep,
    FI_ADDR_UNSPEC, FI_ETOOSMALL, FI_RECV, FI_TRANSMIT,
};
use stable_deref_trait::StableDeref;

use crate::av::{AddressVector, AvInner, PeerAddr};
use crate::cq::{CompletionQueue, CqInner};
use crate::error::{check, OfiError, Result};
use crate::fabric::{close_fid, Domain, DomainInner};
use crate::op::Op;

/// An RDM endpoint bound to one completion queue (transmit and receive) and one address
/// vector. Cheap to clone; closed when the last clone and operation are gone.
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) inner: Rc<EndpointInner>,
}

/// The state behind [`Endpoint`].
pub(crate) struct EndpointInner {
    pub(crate) handle: *mut fid_ep,
    cq: Rc<CqInner>,
    av: Rc<AvInner>,
    _domain: Rc<DomainInner>,
}

impl Endpoint {
    /// Opens and enables an endpoint on `domain` with `cq` for its completions and `av`
    /// for its peers.
    pub fn open(domain: &Domain, cq: &CompletionQueue, av: &AddressVector) -> Result<Self> {
        let d = &domain.inner;
        let mut handle: *mut fid_ep = ptr::null_mut();
        // SAFETY: the domain is open and its info entry alive; `handle` is a valid out
        // pointer.
        check("fi_endpoint", unsafe {
            fi_endpoint(d.handle, d.fabric.info.ptr, &mut handle, ptr::null_mut())
        })?;
        let inner = Rc::new(EndpointInner {
            handle,
            cq: Rc::clone(&cq.inner),
            av: Rc::clone(&av.inner),
            _domain: Rc::clone(d),
        });
        // SAFETY: the endpoint, vector and queue are open and of the same domain; binding
        // is done before enabling, as libfabric requires. On error, `inner` closes it.
        unsafe {
            check(
                "fi_ep_bind(av)",
                fi_ep_bind(handle, ptr::addr_of_mut!((*av.inner.handle).fid), 0),
            )?;
            check(
                "fi_ep_bind(cq)",
                fi_ep_bind(
                    handle,
                    ptr::addr_of_mut!((*cq.inner.handle).fid),
                    FI_TRANSMIT | FI_RECV,
                ),
            )?;
            check("fi_enable", fi_enable(handle))?;
        }
        Ok(Self { inner })
    }

    /// This endpoint's name (`fi_getname`), for peers to insert in their address vector.
    pub fn name(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; 64];
        loop {
            let mut len = buf.len();
            // SAFETY: the endpoint is open; `buf` has room for `len` bytes.
            let ret = unsafe {
                fi_getname(
                    ptr::addr_of_mut!((*self.inner.handle).fid),
                    buf.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if ret == -(FI_ETOOSMALL as i32) && len > buf.len() {
                buf.resize(len, 0);
                continue;
            }
            check("fi_getname", ret)?;
            buf.truncate(len);
            return Ok(buf);
        }
    }

    /// Sends `buf` as one message to `dest` (`fi_send`).
    pub fn send<B>(&self, dest: PeerAddr, buf: B) -> Op<B>
    where
        B: StableDeref + Deref<Target = [u8]> + 'static,
    {
        const API: &str = "fi_send";
        if let Err(e) = self.check_peer(API, dest) {
            return Op::failed(Rc::clone(&self.inner.cq), e, buf);
        }
        let (ep, addr, len) = (self.inner.handle, buf.as_ptr(), buf.len());
        self.post(API, (buf, len), move |ctx| {
            // SAFETY: whenever the poster runs, the endpoint is open (the operation holds
            // it); `addr..addr+len` is `buf`, which the operation owns and which does not
            // move until completion; `dest` is in the bound vector.
            unsafe { fi_send(ep, addr.cast(), len, ptr::null_mut(), dest.addr, ctx) }
        })
    }

    /// Posts a receive of one message into `buf` (`fi_recv`, from any peer); the
    /// completion's length is the message's.
    pub fn recv<B>(&self, mut buf: B) -> Op<B>
    where
        B: StableDeref + DerefMut<Target = [u8]> + 'static,
    {
        let (ep, addr, len) = (self.inner.handle, buf.as_mut_ptr(), buf.len());
        self.post("fi_recv", (buf, len), move |ctx| {
            // SAFETY: whenever the poster runs, the endpoint is open (the operation holds
            // it); `addr..addr+len` is `buf`, owned by the operation and unmoved until
            // completion.
            unsafe { fi_recv(ep, addr.cast(), len, ptr::null_mut(), FI_ADDR_UNSPEC, ctx) }
        })
    }

    /// Reads `dst.len()` bytes of `dest`'s registered memory at `remote_addr` (its
    /// region's [`remote_address`](crate::MemoryRegion::remote_address) plus an offset)
    /// with key `key`, straight into `dst` (`fi_read`).
    pub fn read<B>(&self, dest: PeerAddr, remote_addr: u64, key: u64, mut dst: B) -> Op<B>
    where
        B: StableDeref + DerefMut<Target = [u8]> + 'static,
    {
        const API: &str = "fi_read";
        if let Err(e) = self.check_peer(API, dest) {
            return Op::failed(Rc::clone(&self.inner.cq), e, dst);
        }
        let (ep, addr, len) = (self.inner.handle, dst.as_mut_ptr(), dst.len());
        self.post(API, (dst, len), move |ctx| {
            // SAFETY: whenever the poster runs, the endpoint is open (the operation holds
            // it); `addr..addr+len` is `dst`, owned by the operation and unmoved until
            // completion; `dest` is in the bound vector and `remote_addr`/`key` are only
            // read by the provider (a bad pair fails the completion, not this process).
            unsafe {
                fi_read(
                    ep,
                    addr.cast(),
                    len,
                    ptr::null_mut(),
                    dest.addr,
                    remote_addr,
                    key,
                    ctx,
                )
            }
        })
    }

    /// An error unless `dest` belongs to this endpoint's address vector.
    fn check_peer(&self, api: &'static str, dest: PeerAddr) -> Result<()> {
        if dest.av == self.inner.av.handle as usize {
            Ok(())
        } else {
            Err(OfiError::local(
                api,
                22,
                "address of another address vector",
            ))
        }
    }

    /// Registers an operation and posts it with `call(context)`; while the provider
    /// answers `FI_EAGAIN`, the operation retries as it is tested or waited for.
    fn post<B: 'static>(
        &self,
        api: &'static str,
        (buffer, len): (B, usize),
        call: impl Fn(*mut c_void) -> isize + 'static,
    ) -> Op<B> {
        let cq = &self.inner.cq;
        let registered = cq.register(self.id(), api, len);
        Op::post(
            Rc::clone(cq),
            Rc::clone(&self.inner),
            registered,
            buffer,
            Box::new(call),
        )
    }

    /// This endpoint's identity (for its queue's bookkeeping).
    fn id(&self) -> usize {
        self.inner.handle as usize
    }
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        // SAFETY: no operation holds the endpoint any more (each holds an `Rc`), and it is
        // closed once, before its queue and vector (held by this struct).
        unsafe { close_fid("fi_close(ep)", ptr::addr_of_mut!((*self.handle).fid)) };
        // Closed: the provider no longer touches the buffers of dropped operations.
        self.cq.purge(self.handle as usize);
    }
}
