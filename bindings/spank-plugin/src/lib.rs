//! `libdimstore_spank.so`: a Slurm SPANK plugin that keeps one dimstore server on every node
//! of a job, for the job's lifetime.
//!
//! ```text
//! # plugstack.conf (or a file it includes):
//! optional /opt/dimstore/lib/libdimstore_spank.so [bin_dir=DIR] [runtime_dir=DIR] [ready_timeout=SECS]
//! ```
//!
//! `srun|sbatch|salloc --dimstore[=memory=8GiB,threads=4] ...` then starts the node's
//! `dimstore-server` once per job on every node the job runs on, exports `DIMSTORE_SERVER`,
//! `DIMSTORE_TOKEN`, `DIMSTORE_RUNTIME_DIR` and `DIMSTORE_SPAWN=never` to the tasks, and
//! stops the server when the job ends. What happens in which hook is in [`hooks`].
//!
//! This crate is an FFI layer (the workspace denies unsafe code elsewhere): the exported
//! symbols and hooks are here, the SPANK calls in [`spank`], each unsafe block with its
//! `SAFETY` argument. Every hook runs inside a panic boundary: a panic is logged and becomes
//! an error return, never an unwind into Slurm's C code.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod hooks;
pub mod job;
mod signals;
pub mod spank;

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use slurm_spank_sys::spank_t;

use crate::spank::{Level, Spank};

/// The plugin's name (`SPANK_PLUGIN(dimstore, 1)` in C); it also names the option's
/// environment variables (`_SLURM_SPANK_OPTION_dimstore_dimstore`).
#[no_mangle]
pub static plugin_name: [u8; 9] = *b"dimstore\0";

/// The plugin type Slurm expects of SPANK plugins.
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// The Slurm version the plugin was built against; Slurm refuses other major releases.
#[no_mangle]
pub static plugin_version: c_uint = slurm_spank_sys::SLURM_VERSION_NUMBER;

/// The plugin's own version (`SPANK_PLUGIN`'s second argument).
#[no_mangle]
pub static spank_plugin_version: c_uint = 1;

/// Runs a hook's body: an error or a panic is logged and returns -1, never unwinds.
fn boundary(hook: &str, body: impl FnOnce() -> Result<(), hooks::HookError>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            spank::log(Level::Error, &format!("{hook}: {}", hooks::with_causes(&e)));
            -1
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            // Logging itself must not panic again: it only formats and calls Slurm.
            let _ = catch_unwind(|| spank::log(Level::Error, &format!("{hook}: bug: {what}")));
            -1
        }
    }
}

/// The plugin's arguments from plugstack.conf.
///
/// # Safety
/// `argv` must point to `ac` valid NUL-terminated strings (or be null with `ac` 0).
unsafe fn plugin_args(ac: c_int, argv: *mut *mut c_char) -> Vec<String> {
    let count = usize::try_from(ac).unwrap_or(0);
    if argv.is_null() || count == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees `count` valid entries at `argv`.
    let entries = unsafe { std::slice::from_raw_parts(argv, count) };
    entries
        .iter()
        .filter(|p| !p.is_null())
        // SAFETY: each non-null entry is a NUL-terminated string owned by Slurm for the
        // duration of the hook; it is copied at once.
        .map(|&p| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        .collect()
}

/// Defines an exported hook that calls `hooks::$body` inside the panic boundary.
macro_rules! hook {
    ($(#[$doc:meta])* $name:ident => $body:path) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// Called by Slurm only: `sp` is the live SPANK handle of this call and `argv` holds
        /// `ac` NUL-terminated plugin arguments.
        #[no_mangle]
        pub unsafe extern "C" fn $name(sp: spank_t, ac: c_int, argv: *mut *mut c_char) -> c_int {
            boundary(stringify!($name), || {
                // SAFETY: Slurm passes this call's own handle, used only during the call.
                let spank = unsafe { Spank::from_raw(sp) };
                // SAFETY: Slurm passes `ac` valid argument strings.
                let args = unsafe { plugin_args(ac, argv) };
                $body(&spank, &args)
            })
        }
    };
}

hook!(
    /// Registers `--dimstore` (srun, sbatch, salloc, slurmstepd).
    slurm_spank_init => hooks::init
);
hook!(
    /// Passes the job's token on (srun, sbatch, salloc), or starts a step's server
    /// (slurmstepd, as root) when the prolog did not.
    slurm_spank_init_post_opt => hooks::init_post_opt
);
hook!(
    /// Exports the node's server to the step's tasks (slurmstepd).
    slurm_spank_user_init => hooks::user_init
);
hook!(
    /// Starts the node's server as the job starts there (as root).
    slurm_spank_job_prolog => hooks::job_prolog
);
hook!(
    /// Stops the node's server as the job ends (as root).
    slurm_spank_job_epilog => hooks::job_epilog
);

/// Called by Slurm when it sees `--dimstore[=OPTIONS]`; rejects unusable options.
///
/// # Safety
/// `optarg` is null or a NUL-terminated string valid for the call.
pub unsafe extern "C" fn option_callback(
    _val: c_int,
    optarg: *const c_char,
    _remote: c_int,
) -> c_int {
    boundary("--dimstore", || {
        let value = if optarg.is_null() {
            None
        } else {
            // SAFETY: non-null and NUL-terminated per the contract; copied at once.
            Some(
                unsafe { CStr::from_ptr(optarg) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        hooks::on_option(value.as_deref())
    })
}
