//! Undoing signal handlers that libraries loaded with libfabric install.
//!
//! Debian's libfabric links the PSM providers, whose `libpsm_infinipath` installs SIGINT and
//! SIGTERM handlers from its load-time constructor: they reset the signal and `exit(1)`.
//! libfabric-sys opens libfabric at runtime and keeps the process's dispositions across
//! that, so this crate no longer brings them in; but a process into which libfabric is
//! linked by something else (an MPI library, a Python extension) inherits them before
//! `main`. A program that handles these signals itself (e.g. through tokio, which chains to
//! the handler it replaces) should first put the default dispositions back, or a SIGTERM
//! ends it with status 1 and skips its own cleanup.

use std::mem::MaybeUninit;
use std::ptr;

/// Signals the PSM constructor takes over.
const TAKEN: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Restores the default disposition of SIGINT and SIGTERM where a handler is installed (the
/// library's). Call at the start of `main`, before installing handlers of one's own; ignored
/// signals stay ignored. Returns the signals that were reset.
pub fn restore_default_signal_handlers() -> Vec<libc::c_int> {
    let mut reset = Vec::new();
    for signal in TAKEN {
        let mut current = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: querying only (null new action); `current` is a valid out pointer.
        if unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) } != 0 {
            continue;
        }
        // SAFETY: sigaction succeeded and filled the structure.
        let handler = unsafe { current.assume_init() }.sa_sigaction;
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            continue;
        }
        // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask and no flags.
        let default = unsafe { MaybeUninit::<libc::sigaction>::zeroed().assume_init() };
        // SAFETY: `default` is a valid action; the old action is not needed.
        if unsafe { libc::sigaction(signal, &default, ptr::null_mut()) } == 0 {
            reset.push(signal);
        }
    }
    reset
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_handlers_are_replaced_by_the_default() {
        // Whatever the loader installed, afterwards both signals have a default (or ignored)
        // disposition.
        restore_default_signal_handlers();
        for signal in TAKEN {
            let mut current = MaybeUninit::<libc::sigaction>::zeroed();
            // SAFETY: query only (null new action), into a valid out pointer.
            let queried = unsafe { libc::sigaction(signal, ptr::null(), current.as_mut_ptr()) };
            assert_eq!(queried, 0);
            // SAFETY: filled by the successful call.
            let handler = unsafe { current.assume_init() }.sa_sigaction;
            assert!(handler == libc::SIG_DFL || handler == libc::SIG_IGN);
        }
        assert!(
            restore_default_signal_handlers().is_empty(),
            "nothing left to reset"
        );
    }
}
