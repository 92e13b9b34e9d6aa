//! Smoke tests against the system libfabric: real library calls, no mocks.

// Calling the C API is what these tests are for.
#![allow(unsafe_code)]

use std::ffi::{c_int, CStr};
use std::ptr;

use libfabric_sys::*;

const API_VERSION: u32 = FI_VERSION(FI_MAJOR_VERSION, FI_MINOR_VERSION);

/// Panics with the API name and libfabric's own text unless `ret` is 0.
fn check(api: &str, ret: c_int) {
    if ret != 0 {
        // SAFETY: fi_strerror accepts any error number and returns a static C string.
        let text = unsafe { CStr::from_ptr(fi_strerror(-ret)) };
        panic!("{api} failed: {} ({ret})", text.to_string_lossy());
    }
}

/// `fi_getinfo` hints: the given endpoint type and caps, restricted to provider `prov`.
/// The caller frees the result with `fi_freeinfo`.
fn hints(prov: &CStr, ep_type: fi_ep_type, caps: u64) -> *mut fi_info {
    // SAFETY: fi_allocinfo (fi_dupinfo(NULL)) returns a zeroed fi_info with all its
    // attribute structs allocated, or null on allocation failure.
    let hints = unsafe { fi_allocinfo() };
    assert!(!hints.is_null(), "fi_allocinfo returned null");
    // SAFETY: `hints` and its attribute pointers were just allocated by libfabric;
    // fi_freeinfo frees `prov_name` with free(), so it must come from strdup.
    unsafe {
        (*hints).caps = caps;
        (*(*hints).ep_attr).type_ = ep_type;
        (*(*hints).domain_attr).mr_mode =
            FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
        (*(*hints).fabric_attr).prov_name = libc::strdup(prov.as_ptr());
    }
    hints
}

/// The provider names of every entry of the `fi_info` list `info`.
fn provider_names(mut info: *const fi_info) -> Vec<String> {
    let mut names = Vec::new();
    while !info.is_null() {
        // SAFETY: `info` is a node of a list returned by fi_getinfo, not yet freed; each
        // entry has a fabric_attr with a NUL-terminated prov_name.
        unsafe {
            names.push(
                CStr::from_ptr((*(*info).fabric_attr).prov_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            info = (*info).next;
        }
    }
    names
}

#[test]
fn tcp_rxm_fabric_domain_and_mr() {
    let hints = hints(c"tcp;ofi_rxm", fi_ep_type::FI_EP_RDM, FI_MSG | FI_RMA);
    let mut info: *mut fi_info = ptr::null_mut();
    // SAFETY: `hints` is a valid fi_info; node is a NUL-terminated string; `info` is a valid
    // out pointer.
    let ret = unsafe {
        fi_getinfo(
            API_VERSION,
            c"127.0.0.1".as_ptr(),
            ptr::null(),
            FI_SOURCE,
            hints,
            &mut info,
        )
    };
    // SAFETY: `hints` came from fi_allocinfo and is freed once.
    unsafe { fi_freeinfo(hints) };
    check("fi_getinfo(tcp;ofi_rxm)", ret);
    let names = provider_names(info);
    assert!(!names.is_empty(), "fi_getinfo returned no entry");
    assert!(
        names[0].contains("tcp"),
        "provider {:?} is not tcp",
        names[0]
    );

    let mut fabric: *mut fid_fabric = ptr::null_mut();
    // SAFETY: `info` is the first entry returned above; its fabric_attr is valid.
    check("fi_fabric", unsafe {
        fi_fabric((*info).fabric_attr, &mut fabric, ptr::null_mut())
    });
    let mut domain: *mut fid_domain = ptr::null_mut();
    // SAFETY: `fabric` is open; `info` is valid; fi_domain is a wrapped static inline.
    check("fi_domain", unsafe {
        fi_domain(fabric, info, &mut domain, ptr::null_mut())
    });

    // SAFETY: `info` is valid and its domain_attr too.
    let prov_key = unsafe { (*(*info).domain_attr).mr_mode } & FI_MR_PROV_KEY != 0;
    let buf = vec![7u8; 1 << 20];
    let requested_key = 0x5eed;
    let mut mr: *mut fid_mr = ptr::null_mut();
    // SAFETY: `buf` stays alive and unmoved until the region is closed below.
    check("fi_mr_reg", unsafe {
        fi_mr_reg(
            domain,
            buf.as_ptr().cast(),
            buf.len(),
            FI_REMOTE_READ,
            0,
            requested_key,
            0,
            &mut mr,
            ptr::null_mut(),
        )
    });
    // SAFETY: `mr` was registered above and is still open.
    let key = unsafe { fi_mr_key(mr) };
    assert_ne!(key, FI_KEY_NOTAVAIL, "fi_mr_key: key not available");
    if !prov_key {
        assert_eq!(key, requested_key, "provider did not use the requested key");
    }

    // SAFETY: each fid is open and closed exactly once, children before parents; `info`
    // is freed once, after the objects opened from it are closed.
    unsafe {
        check("fi_close(mr)", fi_close(ptr::addr_of_mut!((*mr).fid)));
        check(
            "fi_close(domain)",
            fi_close(ptr::addr_of_mut!((*domain).fid)),
        );
        check(
            "fi_close(fabric)",
            fi_close(ptr::addr_of_mut!((*fabric).fid)),
        );
        fi_freeinfo(info);
    }
}

#[test]
fn shm_provider_is_listed() {
    let hints = hints(c"shm", fi_ep_type::FI_EP_RDM, FI_MSG | FI_RMA);
    let mut info: *mut fi_info = ptr::null_mut();
    // SAFETY: `hints` is a valid fi_info; null node and service are allowed; `info` is a
    // valid out pointer.
    let ret = unsafe { fi_getinfo(API_VERSION, ptr::null(), ptr::null(), 0, hints, &mut info) };
    // SAFETY: `hints` came from fi_allocinfo and is freed once.
    unsafe { fi_freeinfo(hints) };
    check("fi_getinfo(shm)", ret);
    let names = provider_names(info);
    // SAFETY: `info` came from fi_getinfo and is freed once.
    unsafe { fi_freeinfo(info) };
    assert!(!names.is_empty(), "fi_getinfo returned no shm entry");
    assert!(
        names.iter().all(|n| n == "shm"),
        "unexpected providers: {names:?}"
    );
}

#[test]
fn version_macros_match_the_library() {
    // SAFETY: fi_version has no preconditions.
    let lib = unsafe { fi_version() };
    assert!(
        FI_MAJOR(lib) >= 1 && lib >= FI_VERSION(1, 15),
        "libfabric {}.{}",
        FI_MAJOR(lib),
        FI_MINOR(lib)
    );
    assert_eq!(FI_MAJOR(API_VERSION), FI_MAJOR_VERSION);
    assert_eq!(FI_MINOR(API_VERSION), FI_MINOR_VERSION);
}
