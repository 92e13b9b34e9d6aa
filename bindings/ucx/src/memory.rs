//! Memory registration (`ucp_mem_map`), packed remote keys, and remote keys unpacked on an
//! endpoint.

use std::any::Any;
use std::ffi::c_void;
use std::ops::Deref;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use stable_deref_trait::StableDeref;
use ucx_sys::{
    ucp_ep_rkey_unpack, ucp_mem_attr_field, ucp_mem_attr_t, ucp_mem_h, ucp_mem_map,
    ucp_mem_map_params_field, ucp_mem_map_params_t, ucp_mem_query, ucp_mem_unmap,
    ucp_rkey_buffer_release, ucp_rkey_destroy, ucp_rkey_h, ucp_rkey_pack, UCP_MEM_MAP_ALLOCATE,
    UCP_MEM_MAP_PROT_LOCAL_READ, UCP_MEM_MAP_PROT_LOCAL_WRITE, UCP_MEM_MAP_PROT_REMOTE_READ,
};

use crate::context::Context;
use crate::endpoint::{Endpoint, EndpointInner};
use crate::error::{check, Result, Status, UcxError};

/// A memory region registered with UCX (`ucp_mem_map`) for remote reads; unmapped on drop.
/// Peers read it with [`Endpoint::get`] given its [`address`](Self::address) and the key
/// from [`pack_rkey`](Self::pack_rkey).
pub struct MemoryRegion {
    context: Context,
    memh: ucp_mem_h,
    address: *mut u8,
    len: usize,
    owner: Owner,
}

/// Who owns the registered bytes.
enum Owner {
    /// UCX allocated them (`UCP_MEM_MAP_ALLOCATE`) and frees them on unmap.
    Ucx,
    /// The region owns the caller's buffer and drops it after unmapping.
    Buffer(#[allow(dead_code)] Box<dyn Any + Send + Sync>),
    /// The caller guarantees the memory (see [`MemoryRegion::map_raw`]).
    Raw,
}

// SAFETY: the memory handle belongs to a thread-safe context (`mt_workers_shared`), and the
// bytes are only read through `&self` (written only through `&mut self`).
unsafe impl Send for MemoryRegion {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `buffer` for remote reads; the region owns it until dropped (and never
    /// writes to it).
    pub fn map<B>(context: &Context, buffer: B) -> Result<Self>
    where
        B: StableDeref + Deref<Target = [u8]> + Send + Sync + 'static,
    {
        let (address, len) = (buffer.as_ptr().cast_mut(), buffer.len());
        let mut region = Self::register(context, address, len, 0)?;
        region.owner = Owner::Buffer(Box::new(buffer));
        Ok(region)
    }

    /// Allocates `len` bytes with UCX (`UCP_MEM_MAP_ALLOCATE`, zeroed by the allocator's
    /// page mapping or not: fill them before use) and registers them.
    pub fn allocate(context: &Context, len: usize) -> Result<Self> {
        let mut region = Self::register(context, ptr::null_mut(), len, UCP_MEM_MAP_ALLOCATE)?;
        let mut attr = ucp_mem_attr_t {
            field_mask: u64::from(
                (ucp_mem_attr_field::UCP_MEM_ATTR_FIELD_ADDRESS
                    | ucp_mem_attr_field::UCP_MEM_ATTR_FIELD_LENGTH)
                    .0,
            ),
            ..Default::default()
        };
        // SAFETY: the handle was just mapped; `attr` is a valid out structure.
        check("ucp_mem_query", unsafe {
            ucp_mem_query(region.memh, &mut attr)
        })?;
        region.address = attr.address.cast();
        region.len = attr.length.min(len);
        region.owner = Owner::Ucx;
        Ok(region)
    }

    /// Registers memory the caller owns, e.g. a segment of a shared-memory arena.
    ///
    /// # Safety
    /// `address..address+len` must be valid, mapped memory that stays mapped (and is not
    /// freed or remapped) until the returned region is dropped. Peers may read it at any
    /// time meanwhile.
    pub unsafe fn map_raw(context: &Context, address: *mut u8, len: usize) -> Result<Self> {
        let mut region = Self::register(context, address, len, 0)?;
        region.owner = Owner::Raw;
        Ok(region)
    }

    /// `ucp_mem_map` of `address..address+len` with `flags`.
    fn register(context: &Context, address: *mut u8, len: usize, flags: u32) -> Result<Self> {
        let params = ucp_mem_map_params_t {
            field_mask: u64::from(
                (ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
                    | ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_LENGTH
                    | ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_FLAGS
                    | ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_PROT)
                    .0,
            ),
            address: address.cast(),
            length: len,
            flags,
            prot: UCP_MEM_MAP_PROT_LOCAL_READ
                | UCP_MEM_MAP_PROT_LOCAL_WRITE
                | UCP_MEM_MAP_PROT_REMOTE_READ,
            ..Default::default()
        };
        let mut memh: ucp_mem_h = ptr::null_mut();
        // SAFETY: the context is alive; the range is valid memory owned by the region (or
        // guaranteed by the caller of `map_raw`), or null with ALLOCATE.
        check("ucp_mem_map", unsafe {
            ucp_mem_map(context.inner.handle, &params, &mut memh)
        })?;
        context.inner.live_regions.fetch_add(1, Ordering::SeqCst);
        Ok(Self {
            context: context.clone(),
            memh,
            address,
            len,
            owner: Owner::Raw,
        })
    }

    /// The region's start address, as peers pass it to [`Endpoint::get`].
    pub fn address(&self) -> u64 {
        self.address as u64
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The registered bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the region's bytes are valid for `len` bytes while it lives; they are
        // written only through `&mut self` (UCX-allocated regions), never by peers (the
        // region is registered for remote reads only).
        unsafe { std::slice::from_raw_parts(self.address, self.len) }
    }

    /// The registered bytes, writable: only for regions UCX allocated ([`allocate`](Self::allocate)).
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self.owner {
            // SAFETY: UCX allocated these bytes for this region alone; `&mut self` makes
            // this the only reference.
            Owner::Ucx => Some(unsafe { std::slice::from_raw_parts_mut(self.address, self.len) }),
            _ => None,
        }
    }

    /// The region's remote key, packed (`ucp_rkey_pack`): send it to peers, who unpack it
    /// with [`Endpoint::unpack_rkey`].
    pub fn pack_rkey(&self) -> Result<Vec<u8>> {
        let mut buf: *mut c_void = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: the memory handle belongs to this context and is mapped; out pointers
        // are valid.
        check("ucp_rkey_pack", unsafe {
            ucp_rkey_pack(self.context.inner.handle, self.memh, &mut buf, &mut len)
        })?;
        // SAFETY: UCX returned `len` readable bytes at `buf`, alive until released below.
        let packed = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
        // SAFETY: the buffer came from ucp_rkey_pack and is released exactly once.
        unsafe { ucp_rkey_buffer_release(buf) };
        Ok(packed)
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: the handle was mapped in this context and is unmapped exactly once, before
        // the owned buffer (a field dropped after this) is freed.
        let status = unsafe { ucp_mem_unmap(self.context.inner.handle, self.memh) };
        debug_assert!(check("ucp_mem_unmap", status).is_ok());
        self.context
            .inner
            .live_regions
            .fetch_sub(1, Ordering::SeqCst);
    }
}

/// A peer's remote key unpacked on one endpoint (`ucp_ep_rkey_unpack`); destroyed on drop.
/// Operations using it keep it alive until they complete.
pub struct RemoteKey {
    pub(crate) inner: Rc<RkeyInner>,
}

/// The state behind [`RemoteKey`].
pub(crate) struct RkeyInner {
    pub(crate) handle: ucp_rkey_h,
    ep: Rc<EndpointInner>,
}

impl Endpoint {
    /// Unpacks a key of host memory packed by the peer ([`MemoryRegion::pack_rkey`]) for
    /// use on this endpoint. Bytes not shaped like such a key are refused, but UCX trusts
    /// what it is given: accept keys only from authenticated peers.
    pub fn unpack_rkey(&self, packed: &[u8]) -> Result<RemoteKey> {
        const API: &str = "ucp_ep_rkey_unpack";
        self.inner.ensure_open(API)?;
        if let Err(why) = check_packed_key(packed) {
            return Err(UcxError::local(
                API,
                Status::INVALID_PARAM,
                format!("not a packed key of host memory: {why}"),
            ));
        }
        let mut handle: ucp_rkey_h = ptr::null_mut();
        // SAFETY: the endpoint is alive and open; `packed` is readable for the call.
        check(API, unsafe {
            ucp_ep_rkey_unpack(self.inner.handle, packed.as_ptr().cast(), &mut handle)
        })?;
        Ok(RemoteKey {
            inner: Rc::new(RkeyInner {
                handle,
                ep: Rc::clone(&self.inner),
            }),
        })
    }
}

impl RemoteKey {
    /// An error unless this key was unpacked on `ep`.
    pub(crate) fn check_endpoint(&self, ep: &Endpoint, api: &'static str) -> Result<()> {
        if Rc::ptr_eq(&self.inner.ep, &ep.inner) {
            Ok(())
        } else {
            Err(UcxError::local(
                api,
                Status::INVALID_PARAM,
                "remote key was unpacked on another endpoint",
            ))
        }
    }
}

impl Drop for RkeyInner {
    fn drop(&mut self) {
        // SAFETY: the key came from ucp_ep_rkey_unpack, is destroyed once, and no operation
        // uses it any more (each holds an `Rc` to it); its endpoint and worker are alive.
        unsafe { ucp_rkey_destroy(self.handle) };
    }
}

/// `UCS_MEMORY_TYPE_HOST`: the memory type byte of a key of host memory.
const MEMORY_TYPE_HOST: u8 = 0;

/// Rejects bytes that are not shaped like a UCX 1.13 packed key of host memory, so that
/// UCX (which trusts them and is given no length) never reads past them: a memory-domain map
/// (8 bytes, host order), the memory type (1 byte), then one length-prefixed entry per bit
/// of the map.
fn check_packed_key(key: &[u8]) -> Result<(), String> {
    let Some((map, rest)) = key.split_first_chunk::<8>() else {
        return Err(format!("{} bytes, shorter than a key header", key.len()));
    };
    let Some((&mem_type, mut rest)) = rest.split_first() else {
        return Err("no memory type".to_owned());
    };
    if mem_type != MEMORY_TYPE_HOST {
        return Err(format!("memory type {mem_type}, not host memory"));
    }
    for _ in 0..u64::from_ne_bytes(*map).count_ones() {
        let Some((&size, tail)) = rest.split_first() else {
            return Err("fewer entries than its memory-domain map names".to_owned());
        };
        rest = tail
            .get(usize::from(size)..)
            .ok_or("an entry runs past the end of the key")?;
    }
    Ok(())
}
