//! Loading libfabric keeps the process's SIGINT and SIGTERM handlers, although the PSM
//! libraries Debian's libfabric depends on install their own (which `exit(1)`) when loaded.
//! Its own test binary: libfabric must not be loaded before the test installs its handlers.

// Installing signal handlers and opening the library by hand is what this test is about.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;
use std::process::Command;
use std::ptr;

/// Set in the child that opens libfabric plainly, to show what its constructors do.
const PLAIN_CHILD: &str = "LIBFABRIC_SYS_TEST_PLAIN_DLOPEN";
const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

extern "C" fn test_handler(_: libc::c_int) {}

/// Installs `test_handler` for SIGINT and SIGTERM.
fn install_test_handlers() {
    for signal in SIGNALS {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags); the handler is an
        // `extern "C" fn(c_int)` that does nothing, safe to run at any point.
        let mut action = unsafe { MaybeUninit::<libc::sigaction>::zeroed().assume_init() };
        action.sa_sigaction = test_handler as extern "C" fn(libc::c_int) as usize;
        // SAFETY: `action` is a valid disposition; the old one is not needed.
        let installed = unsafe { libc::sigaction(signal, &action, ptr::null_mut()) };
        assert_eq!(installed, 0);
    }
}

/// The signals whose handler is no longer `test_handler`.
fn replaced_handlers() -> Vec<libc::c_int> {
    SIGNALS
        .into_iter()
        .filter(|&signal| {
            let mut current = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: a query only, into a valid out pointer.
            let queried = unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) };
            assert_eq!(queried, 0);
            // SAFETY: filled by the successful call.
            unsafe { current.assume_init() }.sa_sigaction
                != test_handler as extern "C" fn(libc::c_int) as usize
        })
        .collect()
}

#[test]
fn loading_keeps_the_process_signal_handlers() {
    install_test_handlers();
    if std::env::var_os(PLAIN_CHILD).is_some() {
        // SAFETY: opening libfabric runs its initializers, which have no preconditions.
        let _library =
            unsafe { libloading::Library::new(libfabric_sys::LIBRARY) }.expect("libfabric opens");
        println!("replaced by a plain dlopen: {:?}", replaced_handlers());
        return;
    }
    // What opening libfabric without the loader's care does on this machine.
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "loading_keeps_the_process_signal_handlers",
            "--nocapture",
        ])
        .env(PLAIN_CHILD, "1")
        .output()
        .expect("run the plain-dlopen child");
    assert!(child.status.success(), "{child:?}");
    let plain = String::from_utf8_lossy(&child.stdout);
    let taken_over = !plain.contains("replaced by a plain dlopen: []");
    assert!(plain.contains("replaced by a plain dlopen"), "{plain}");

    libfabric_sys::load().expect("libfabric loads");
    assert_eq!(replaced_handlers(), Vec::<libc::c_int>::new());
    if !taken_over {
        eprintln!("note: this libfabric's dependencies install no signal handlers when loaded");
    }
}
