//! Slurm's daemons block and ignore signals in the threads that run plugin hooks, and a
//! child inherits both across `exec`: a server started from there would never see the
//! SIGTERM that stops it at the job's end. Commands started by the plugin therefore get a
//! clean signal state first.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Signals whose disposition is reset to the default before `exec` (ignored ones stay
/// ignored across `exec`; handled ones are reset by the kernel anyway).
const RESET: [libc::c_int; 6] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGPIPE,
    libc::SIGUSR1,
];

/// Makes `command` start with no blocked signals and default dispositions for [`RESET`].
pub fn clean_signal_state(command: &mut Command) {
    let reset = || {
        // SAFETY: an all-zero sigset_t is a valid value for sigemptyset to initialise.
        let mut none: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `none` is a valid, writable sigset_t; sigemptyset only writes it.
        unsafe { libc::sigemptyset(&mut none) };
        // SAFETY: sigprocmask is async-signal-safe, as a pre_exec hook requires; `none` is
        // initialised and the old-mask pointer may be null.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for sig in RESET {
            // SAFETY: signal() is async-signal-safe; SIG_DFL is a valid disposition for each
            // of these catchable signals.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec and only calls the
    // async-signal-safe functions above; it allocates nothing and takes no locks.
    unsafe { command.pre_exec(reset) };
}
