//! Smoke tests against the system UCX: real library calls, no mocks.
//!
//! Transports are chosen with `ucp_config_modify` (not environment variables), so the
//! tests stay correct when the harness runs them on several threads at once.

// Calling the C API is what these tests are for.
#![allow(unsafe_code)]

use std::ffi::{c_void, CStr};
use std::ptr;
use std::time::{Duration, Instant};

use ucx_sys::*;

const BUF_LEN: usize = 1 << 20;

/// Panics with the API name and UCX's own text for the status unless it is `UCS_OK`.
fn check(api: &str, status: ucs_status_t) {
    if status != ucs_status_t::UCS_OK {
        // SAFETY: ucs_status_string accepts any status value and returns a pointer to a
        // static NUL-terminated string.
        let text = unsafe { CStr::from_ptr(ucs_status_string(status)) };
        panic!("{api} failed: {} ({})", text.to_string_lossy(), status.0);
    }
}

/// A UCP context and one worker, both restricted to loopback TCP and `self`.
struct Ucp {
    context: ucp_context_h,
    worker: ucp_worker_h,
}

impl Ucp {
    fn new() -> Self {
        let mut config: *mut ucp_config_t = ptr::null_mut();
        // SAFETY: null env_prefix and filename are allowed; `config` is a valid out pointer.
        check("ucp_config_read", unsafe {
            ucp_config_read(ptr::null(), ptr::null(), &mut config)
        });
        for (name, value) in [(c"TLS", c"tcp,self"), (c"NET_DEVICES", c"lo")] {
            // SAFETY: `config` came from ucp_config_read; both strings are NUL-terminated.
            check("ucp_config_modify", unsafe {
                ucp_config_modify(config, name.as_ptr(), value.as_ptr())
            });
        }

        let params = ucp_params_t {
            field_mask: u64::from(ucp_params_field::UCP_PARAM_FIELD_FEATURES.0),
            features: u64::from((ucp_feature::UCP_FEATURE_RMA | ucp_feature::UCP_FEATURE_AM).0),
            ..Default::default()
        };
        let mut context: ucp_context_h = ptr::null_mut();
        // SAFETY: `params` and `config` are valid for the call; `ucp_init` is the static
        // inline wrapper compiled by the build script, forwarding to ucp_init_version.
        check("ucp_init", unsafe {
            ucp_init(&params, config, &mut context)
        });
        // SAFETY: ucp_init has returned, so the configuration is no longer needed.
        unsafe { ucp_config_release(config) };

        let wparams = ucp_worker_params_t {
            field_mask: u64::from(ucp_worker_params_field::UCP_WORKER_PARAM_FIELD_THREAD_MODE.0),
            thread_mode: ucs_thread_mode_t::UCS_THREAD_MODE_SINGLE,
            ..Default::default()
        };
        let mut worker: ucp_worker_h = ptr::null_mut();
        // SAFETY: `context` is a live context; `wparams` and `worker` are valid pointers.
        check("ucp_worker_create", unsafe {
            ucp_worker_create(context, &wparams, &mut worker)
        });
        Self { context, worker }
    }

    /// Registers `buf` for remote access.
    fn map(&self, buf: &mut [u8]) -> ucp_mem_h {
        let params = ucp_mem_map_params_t {
            field_mask: u64::from(
                (ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_ADDRESS
                    | ucp_mem_map_params_field::UCP_MEM_MAP_PARAM_FIELD_LENGTH)
                    .0,
            ),
            address: buf.as_mut_ptr().cast(),
            length: buf.len(),
            ..Default::default()
        };
        let mut memh: ucp_mem_h = ptr::null_mut();
        // SAFETY: the region is valid, and the caller unmaps it before `buf` is dropped.
        check("ucp_mem_map", unsafe {
            ucp_mem_map(self.context, &params, &mut memh)
        });
        memh
    }

    /// Packs the remote key of `memh`; returns its bytes.
    fn pack(&self, memh: ucp_mem_h) -> Vec<u8> {
        let mut rkey_buf: *mut c_void = ptr::null_mut();
        let mut rkey_len = 0usize;
        // SAFETY: `memh` belongs to this context; out pointers are valid.
        check("ucp_rkey_pack", unsafe {
            ucp_rkey_pack(self.context, memh, &mut rkey_buf, &mut rkey_len)
        });
        assert!(!rkey_buf.is_null());
        // SAFETY: UCX returned a buffer of `rkey_len` bytes, alive until released below.
        let packed =
            unsafe { std::slice::from_raw_parts(rkey_buf.cast::<u8>(), rkey_len) }.to_vec();
        // SAFETY: the buffer came from ucp_rkey_pack and is released exactly once.
        unsafe { ucp_rkey_buffer_release(rkey_buf) };
        packed
    }

    /// Progresses the worker until the request `req` (result of a `*_nbx` call) completes.
    fn wait(&self, api: &str, req: ucs_status_ptr_t) {
        if !UCS_PTR_IS_PTR(req) {
            check(api, UCS_PTR_STATUS(req));
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: the worker is live and used from this thread only.
            unsafe { ucp_worker_progress(self.worker) };
            // SAFETY: `req` is a live request handle (UCS_PTR_IS_PTR) not yet freed.
            let status = unsafe { ucp_request_check_status(req) };
            if status != ucs_status_t::UCS_INPROGRESS {
                // SAFETY: the request has completed and is freed exactly once.
                unsafe { ucp_request_free(req) };
                check(api, status);
                return;
            }
            assert!(Instant::now() < deadline, "{api} did not complete in 10 s");
        }
    }
}

impl Drop for Ucp {
    fn drop(&mut self) {
        // SAFETY: handles came from ucp_worker_create / ucp_init, are destroyed once, worker first.
        unsafe {
            ucp_worker_destroy(self.worker);
            ucp_cleanup(self.context);
        }
    }
}

#[test]
fn init_map_and_pack_rkey() {
    let ucp = Ucp::new();
    let mut buf = vec![0u8; BUF_LEN];
    let memh = ucp.map(&mut buf);
    let packed = ucp.pack(memh);
    assert!(!packed.is_empty(), "packed rkey is empty");
    // SAFETY: `memh` was mapped in this context and is unmapped once, before `buf` drops.
    check("ucp_mem_unmap", unsafe { ucp_mem_unmap(ucp.context, memh) });
}

#[test]
fn rma_get_from_own_worker() {
    let ucp = Ucp::new();
    let mut src: Vec<u8> = (0..BUF_LEN).map(|i| (i % 251) as u8).collect();
    let memh = ucp.map(&mut src);
    let packed = ucp.pack(memh);

    let mut addr: *mut ucp_address_t = ptr::null_mut();
    let mut addr_len = 0usize;
    // SAFETY: the worker is live; out pointers are valid.
    check("ucp_worker_get_address", unsafe {
        ucp_worker_get_address(ucp.worker, &mut addr, &mut addr_len)
    });
    let ep_params = ucp_ep_params_t {
        field_mask: u64::from(ucp_ep_params_field::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS.0),
        address: addr,
        ..Default::default()
    };
    let mut ep: ucp_ep_h = ptr::null_mut();
    // SAFETY: `addr` is this worker's address, valid until released below.
    check("ucp_ep_create", unsafe {
        ucp_ep_create(ucp.worker, &ep_params, &mut ep)
    });
    // SAFETY: the address came from ucp_worker_get_address and is released once.
    unsafe { ucp_worker_release_address(ucp.worker, addr) };

    let mut rkey: ucp_rkey_h = ptr::null_mut();
    // SAFETY: `packed` holds a key packed by ucp_rkey_pack in this process.
    check("ucp_ep_rkey_unpack", unsafe {
        ucp_ep_rkey_unpack(ep, packed.as_ptr().cast(), &mut rkey)
    });

    let mut dst = vec![0u8; BUF_LEN];
    let param = ucp_request_param_t::default();
    // SAFETY: `dst` outlives the request (waited for below); the remote range is the
    // mapped `src` buffer and `rkey` was unpacked on this endpoint.
    let req = unsafe {
        ucp_get_nbx(
            ep,
            dst.as_mut_ptr().cast(),
            dst.len(),
            src.as_ptr() as u64,
            rkey,
            &param,
        )
    };
    ucp.wait("ucp_get_nbx", req);
    assert!(
        dst == src,
        "data read with ucp_get_nbx differs from the source"
    );

    // SAFETY: `rkey` is destroyed once, before its endpoint closes.
    unsafe { ucp_rkey_destroy(rkey) };
    // SAFETY: `ep` is live and closed once; the close request is waited for.
    let req = unsafe { ucp_ep_close_nbx(ep, &param) };
    ucp.wait("ucp_ep_close_nbx", req);
    // SAFETY: no operation uses `memh` any more; `src` is still alive.
    check("ucp_mem_unmap", unsafe { ucp_mem_unmap(ucp.context, memh) });
}

#[test]
fn ptr_status_helpers_match_ucx_macros() {
    assert!(!UCS_PTR_IS_PTR(ptr::null::<c_void>()));
    assert_eq!(UCS_PTR_STATUS(ptr::null::<c_void>()), ucs_status_t::UCS_OK);
    let err = ucs_status_t::UCS_ERR_NO_MEMORY.0 as isize as *const c_void;
    assert!(UCS_PTR_IS_ERR(err));
    assert!(!UCS_PTR_IS_PTR(err));
    assert_eq!(UCS_PTR_STATUS(err), ucs_status_t::UCS_ERR_NO_MEMORY);
    let req = 0x1000usize as *const c_void;
    assert!(UCS_PTR_IS_PTR(req) && !UCS_PTR_IS_ERR(req));
    assert_eq!(UCS_PTR_STATUS(req), ucs_status_t::UCS_INPROGRESS);
}

#[test]
fn library_version_is_supported() {
    let (mut major, mut minor, mut release) = (0, 0, 0);
    // SAFETY: the three out pointers are valid.
    unsafe { ucp_get_version(&mut major, &mut minor, &mut release) };
    assert!(
        UCP_VERSION(major, minor) >= UCP_VERSION(1, 12),
        "UCX {major}.{minor}.{release}"
    );
    assert!(UCP_VERSION(major, minor) >= UCP_VERSION(UCP_API_MAJOR, UCP_API_MINOR));
}
