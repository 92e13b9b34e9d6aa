//! The UCP context: one per process, shared by every worker and memory registration.

use std::ffi::CString;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ucx_sys::{
    ucp_cleanup, ucp_config_modify, ucp_config_read, ucp_config_release, ucp_config_t,
    ucp_context_h, ucp_feature, ucp_init, ucp_params_field, ucp_params_t,
};

use crate::error::{check, load, Result, Status, UcxError};

/// How to configure a [`Context`]: UCX reads its `UCX_*` environment variables first, then
/// the explicit settings here override them.
#[derive(Clone, Debug, Default)]
pub struct ContextConfig {
    /// `UCX_TLS`: the transports, e.g. `"tcp"` or `"posix,sysv,cma"`.
    pub tls: Option<String>,
    /// `UCX_NET_DEVICES`: the network devices, e.g. `"lo"`.
    pub net_devices: Option<String>,
    /// Any other UCX setting, by name without the `UCX_` prefix (e.g. `("RNDV_THRESH", "8k")`).
    pub options: Vec<(String, String)>,
    /// Prefix of the environment variables to read (`<prefix>_UCX_*`); `None` reads `UCX_*`.
    pub env_prefix: Option<String>,
}

impl ContextConfig {
    /// A configuration taken from the environment only.
    pub fn from_env() -> Self {
        Self::default()
    }

    /// Sets `UCX_TLS`.
    pub fn tls(mut self, tls: impl Into<String>) -> Self {
        self.tls = Some(tls.into());
        self
    }

    /// Sets `UCX_NET_DEVICES`.
    pub fn net_devices(mut self, devices: impl Into<String>) -> Self {
        self.net_devices = Some(devices.into());
        self
    }

    /// Sets any other UCX option (name without the `UCX_` prefix).
    pub fn option(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((name.into(), value.into()));
        self
    }

    /// Every explicit setting, in the order they are applied.
    fn settings(&self) -> impl Iterator<Item = (&str, &str)> {
        let tls = self.tls.as_deref().map(|v| ("TLS", v));
        let dev = self.net_devices.as_deref().map(|v| ("NET_DEVICES", v));
        tls.into_iter()
            .chain(dev)
            .chain(self.options.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// A UCP context (`ucp_context_h`) with the RMA, active message and wakeup features,
/// created thread-safe so workers on several threads can share it. Cheap to clone; the
/// context is cleaned up when the last clone, worker and memory region are gone.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

/// The shared state behind [`Context`].
pub(crate) struct ContextInner {
    pub(crate) handle: ucp_context_h,
    /// Memory regions mapped and not yet unmapped.
    pub(crate) live_regions: AtomicUsize,
}

// SAFETY: the context is created with `mt_workers_shared = 1`, which makes UCX protect its
// shared state (memory registration, rkey packing) for use from several threads.
unsafe impl Send for ContextInner {}
// SAFETY: as above; every method takes the context's own lock inside UCX.
unsafe impl Sync for ContextInner {}

impl Context {
    /// Creates a context configured from the environment and then `config`. Loads UCX
    /// first: where it is not installed, the error says so
    /// ([`UcxError::is_library_missing`]).
    pub fn new(config: &ContextConfig) -> Result<Self> {
        load()?;
        let ucp_config = UcpConfig::read(config.env_prefix.as_deref())?;
        for (name, value) in config.settings() {
            ucp_config.modify(name, value)?;
        }
        let features = ucp_feature::UCP_FEATURE_RMA
            | ucp_feature::UCP_FEATURE_AM
            | ucp_feature::UCP_FEATURE_WAKEUP;
        let params = ucp_params_t {
            field_mask: u64::from(
                (ucp_params_field::UCP_PARAM_FIELD_FEATURES
                    | ucp_params_field::UCP_PARAM_FIELD_MT_WORKERS_SHARED)
                    .0,
            ),
            features: u64::from(features.0),
            mt_workers_shared: 1,
            ..Default::default()
        };
        let mut handle: ucp_context_h = ptr::null_mut();
        // SAFETY: `params` and the configuration are valid for the call; `handle` is a valid
        // out pointer. `ucp_init` forwards to ucp_init_version with the headers' version.
        check("ucp_init", unsafe {
            ucp_init(&params, ucp_config.0, &mut handle)
        })?;
        Ok(Self {
            inner: Arc::new(ContextInner {
                handle,
                live_regions: AtomicUsize::new(0),
            }),
        })
    }

    /// Number of memory regions of this context that are mapped right now (a leak check).
    pub fn live_regions(&self) -> usize {
        self.inner.live_regions.load(Ordering::SeqCst)
    }
}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: every worker and memory region holds an `Arc` to this context, so none is
        // left; the handle came from ucp_init and is cleaned up exactly once.
        unsafe { ucp_cleanup(self.handle) };
    }
}

/// A `ucp_config_t` read from the environment, released on drop.
struct UcpConfig(*mut ucp_config_t);

impl UcpConfig {
    fn read(env_prefix: Option<&str>) -> Result<Self> {
        let prefix = env_prefix
            .map(|p| cstring("ucp_config_read", p))
            .transpose()?;
        let mut config: *mut ucp_config_t = ptr::null_mut();
        // SAFETY: the prefix is null or a NUL-terminated string alive for the call; a null
        // file name is allowed; `config` is a valid out pointer.
        check("ucp_config_read", unsafe {
            ucp_config_read(
                prefix.as_ref().map_or(ptr::null(), |p| p.as_ptr()),
                ptr::null(),
                &mut config,
            )
        })?;
        Ok(Self(config))
    }

    fn modify(&self, name: &str, value: &str) -> Result<()> {
        let (cname, cvalue) = (
            cstring("ucp_config_modify", name)?,
            cstring("ucp_config_modify", value)?,
        );
        // SAFETY: the configuration came from ucp_config_read; both strings are
        // NUL-terminated and alive for the call.
        check("ucp_config_modify", unsafe {
            ucp_config_modify(self.0, cname.as_ptr(), cvalue.as_ptr())
        })
        .map_err(|e| UcxError {
            message: format!("{} (setting {name}={value})", e.message),
            ..e
        })
    }
}

impl Drop for UcpConfig {
    fn drop(&mut self) {
        // SAFETY: the configuration came from ucp_config_read and is released once; ucp_init
        // does not keep a reference to it.
        unsafe { ucp_config_release(self.0) };
    }
}

/// `s` as a C string, or an error naming `api` if it contains a NUL byte.
pub(crate) fn cstring(api: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| {
        UcxError::local(
            api,
            Status::INVALID_PARAM,
            format!("string contains a NUL byte: {s:?}"),
        )
    })
}
