//! Provider selection: `fi_getinfo` for an RDM endpoint with messages and RMA, on the
//! provider, node and service named by configuration.

use std::ffi::{CStr, CString};
use std::ptr;

use libfabric_sys::{
    fi_allocinfo, fi_dupinfo, fi_ep_type, fi_freeinfo, fi_getinfo, fi_info, fi_threading,
    FI_CONTEXT, FI_CONTEXT2, FI_MAJOR_VERSION, FI_MINOR_VERSION, FI_MR_ALLOCATED, FI_MR_ENDPOINT,
    FI_MR_LOCAL, FI_MR_PROV_KEY, FI_MR_VIRT_ADDR, FI_MSG, FI_RMA, FI_SOURCE, FI_VERSION,
};

use crate::error::{check, load, OfiError, Result};

/// What to ask `fi_getinfo` for. Nothing here is specific to one machine: the provider
/// (`"tcp;ofi_rxm"`, `"shm"`, `"verbs;ofi_rxm"`, `"cxi"`), the node and the service come
/// from configuration.
#[derive(Clone, Debug, Default)]
pub struct InfoQuery {
    /// Provider name as `fi_info -p` spells it, e.g. `"tcp;ofi_rxm"`; `None`: any.
    pub provider: Option<String>,
    /// Node (host address): with [`source`](Self::source), the local address to bind,
    /// e.g. `"127.0.0.1"`; it also selects the interface (domain).
    pub node: Option<String>,
    /// Service (port) to bind with `source`, or `None` for an ephemeral one.
    pub service: Option<String>,
    /// `FI_SOURCE`: node/service name the local address (what a server wants).
    pub source: bool,
    /// Domain (interface) name, e.g. `"lo"`; `None`: the provider's choice.
    pub domain: Option<String>,
}

impl InfoQuery {
    /// A query for `provider`.
    pub fn provider(provider: impl Into<String>) -> Self {
        Self {
            provider: Some(provider.into()),
            ..Self::default()
        }
    }

    /// Binds to local address `node` (sets `FI_SOURCE`).
    pub fn source_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self.source = true;
        self
    }

    /// Sets the service (port).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }

    /// Restricts to domain `name`.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }
}

/// One `fi_info` entry: the provider, fabric and domain chosen, and their attributes.
pub struct Info {
    pub(crate) ptr: *mut fi_info,
}

impl Info {
    /// The first entry `fi_getinfo` returns for `query`, for an `FI_EP_RDM` endpoint with
    /// `FI_MSG | FI_RMA`, domain threading, and the memory registration modes this crate
    /// handles (virtual or offset addresses, provider or requested keys, endpoint-bound
    /// regions; never `FI_MR_LOCAL`). Loads libfabric first: where it is not installed,
    /// the error says so ([`OfiError::is_library_missing`]).
    pub fn query(query: &InfoQuery) -> Result<Self> {
        const API: &str = "fi_getinfo";
        load()?;
        let text = |s: &Option<String>| {
            s.as_deref()
                .map(|v| CString::new(v).map_err(|_| OfiError::local(API, 22, "NUL in a string")))
                .transpose()
        };
        let (provider, node, service, domain) = (
            text(&query.provider)?,
            text(&query.node)?,
            text(&query.service)?,
            text(&query.domain)?,
        );
        let hints = Hints::new()?;
        // SAFETY: `hints` and its attribute structs were allocated by fi_allocinfo;
        // fi_freeinfo frees the name strings with free(), so they come from strdup.
        unsafe {
            let h = hints.0;
            (*h).caps = FI_MSG | FI_RMA;
            (*h).mode = FI_CONTEXT | FI_CONTEXT2;
            (*(*h).ep_attr).type_ = fi_ep_type::FI_EP_RDM;
            let d = (*h).domain_attr;
            (*d).threading = fi_threading::FI_THREAD_DOMAIN;
            (*d).mr_mode = FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
            if let Some(p) = &provider {
                (*(*h).fabric_attr).prov_name = libc::strdup(p.as_ptr());
            }
            if let Some(name) = &domain {
                (*d).name = libc::strdup(name.as_ptr());
            }
        }
        let flags = if query.source { FI_SOURCE } else { 0 };
        let mut list: *mut fi_info = ptr::null_mut();
        let ptr_of = |s: &Option<CString>| s.as_ref().map_or(ptr::null(), |c| c.as_ptr());
        // SAFETY: `hints` is a valid fi_info; node and service are null or NUL-terminated
        // strings alive for the call; `list` is a valid out pointer.
        let ret = unsafe {
            fi_getinfo(
                FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION),
                ptr_of(&node),
                ptr_of(&service),
                flags,
                hints.0,
                &mut list,
            )
        };
        check(API, ret).map_err(|e| OfiError {
            message: format!("{} (query {query:?})", e.message),
            ..e
        })?;
        // SAFETY: fi_getinfo succeeded, so `list` is a non-empty list; the first entry is
        // duplicated alone (fi_dupinfo copies one entry) and the list is freed once.
        let first = unsafe {
            let first = fi_dupinfo(list);
            fi_freeinfo(list);
            first
        };
        if first.is_null() {
            return Err(OfiError::local("fi_dupinfo", 12, "out of memory"));
        }
        Ok(Self { ptr: first })
    }

    /// The provider name, e.g. `"tcp;ofi_rxm"`.
    pub fn provider(&self) -> String {
        // SAFETY: the entry is alive and its fabric_attr has a NUL-terminated prov_name.
        unsafe { cstr((*(*self.ptr).fabric_attr).prov_name) }
    }

    /// The fabric name.
    pub fn fabric_name(&self) -> String {
        // SAFETY: as above, for the fabric name.
        unsafe { cstr((*(*self.ptr).fabric_attr).name) }
    }

    /// The domain name (often the interface, e.g. `"lo"`).
    pub fn domain_name(&self) -> String {
        // SAFETY: as above, for the domain name.
        unsafe { cstr((*(*self.ptr).domain_attr).name) }
    }

    /// The largest message, and the largest single RMA transfer, the endpoint accepts
    /// (`ep_attr->max_msg_size`); 0 if the provider leaves it unset.
    pub fn max_msg_size(&self) -> usize {
        // SAFETY: the entry is alive; fi_getinfo always fills its ep_attr (checked for
        // null anyway).
        unsafe {
            let ep = (*self.ptr).ep_attr;
            if ep.is_null() {
                0
            } else {
                (*ep).max_msg_size
            }
        }
    }

    /// The provider's memory registration mode bits (`FI_MR_*`).
    pub fn mr_mode(&self) -> i32 {
        // SAFETY: the entry is alive and has a domain_attr.
        unsafe { (*(*self.ptr).domain_attr).mr_mode }
    }

    /// Whether the provider assigns memory registration keys (`FI_MR_PROV_KEY`); if not,
    /// this crate requests a distinct key per region.
    pub fn provider_assigns_keys(&self) -> bool {
        self.mr_mode() & FI_MR_PROV_KEY != 0
    }

    /// Whether remote addresses are virtual addresses (`FI_MR_VIRT_ADDR`); if not, they
    /// are offsets from the start of the region.
    pub fn virtual_addresses(&self) -> bool {
        self.mr_mode() & FI_MR_VIRT_ADDR != 0
    }

    /// Whether regions must be bound to an endpoint before use (`FI_MR_ENDPOINT`).
    pub fn regions_bind_to_endpoint(&self) -> bool {
        self.mr_mode() & FI_MR_ENDPOINT != 0
    }

    /// Whether local buffers must be registered (`FI_MR_LOCAL`; never chosen by
    /// [`query`](Self::query)).
    pub fn requires_local_registration(&self) -> bool {
        self.mr_mode() & FI_MR_LOCAL != 0
    }
}

impl std::fmt::Debug for Info {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Info")
            .field("provider", &self.provider())
            .field("fabric", &self.fabric_name())
            .field("domain", &self.domain_name())
            .field("mr_mode", &format_args!("{:#x}", self.mr_mode()))
            .finish()
    }
}

impl Drop for Info {
    fn drop(&mut self) {
        // SAFETY: the entry came from fi_dupinfo and is freed exactly once.
        unsafe { fi_freeinfo(self.ptr) };
    }
}

/// Hints from `fi_allocinfo`, freed on drop.
struct Hints(*mut fi_info);

impl Hints {
    fn new() -> Result<Self> {
        // SAFETY: fi_allocinfo returns a zeroed fi_info with its attribute structs
        // allocated, or null.
        let ptr = unsafe { fi_allocinfo() };
        if ptr.is_null() {
            return Err(OfiError::local("fi_allocinfo", 12, "out of memory"));
        }
        Ok(Self(ptr))
    }
}

impl Drop for Hints {
    fn drop(&mut self) {
        // SAFETY: allocated by fi_allocinfo, freed exactly once (with its strdup'ed names).
        unsafe { fi_freeinfo(self.0) };
    }
}

/// The text of a C string (empty for null).
///
/// # Safety
/// `p` must be null or a valid NUL-terminated string.
unsafe fn cstr(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
