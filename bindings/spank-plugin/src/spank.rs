//! A safe face over the SPANK calls the plugin makes. Every call goes through [`check`],
//! which names the API and the status in the error; this module and `lib.rs` (the exported
//! hooks) are the plugin's only unsafe code.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use slurm_spank_sys as sys;

/// A failed SPANK call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{api} failed: {message} ({code})")]
pub struct SpankError {
    /// The SPANK function.
    pub api: &'static str,
    /// Its status (`ESPANK_*`).
    pub code: u32,
    /// Slurm's text for the status.
    pub message: String,
}

impl SpankError {
    /// Whether the status is `ESPANK_ENV_NOEXIST` (a variable that is not set).
    pub fn is_missing(&self) -> bool {
        self.code == sys::slurm_err_t::ESPANK_ENV_NOEXIST.0
    }
}

/// Where the plugin runs (`spank_context()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// `srun`.
    Local,
    /// `slurmstepd`, once per job step and node.
    Remote,
    /// `sbatch` or `salloc`.
    Allocator,
    /// `slurmd` itself.
    Slurmd,
    /// The job prolog or epilog (`slurmstepd spank prolog|epilog`, as root).
    JobScript,
    /// Slurm could not tell.
    Unknown,
}

/// Turns a SPANK status into a result naming `api`.
fn check(api: &'static str, rc: sys::spank_err_t) -> Result<(), SpankError> {
    if rc.0 == sys::ESPANK_SUCCESS {
        return Ok(());
    }
    // SAFETY: spank_strerror takes any status and returns a pointer to a static string
    // (slurm_strerror's table), or null; it is only read here, never freed.
    let text = unsafe { sys::spank_strerror(rc) };
    let message = if text.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: non-null, and Slurm's error strings are NUL-terminated and static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    Err(SpankError {
        api,
        code: rc.0,
        message,
    })
}

/// A C string for Slurm; interior NULs (never in what the plugin passes) are dropped.
fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', "")).unwrap_or_default()
}

/// The context the plugin was loaded in.
pub fn context() -> Context {
    // SAFETY: spank_context takes no arguments and only reads Slurm's global plugin stack.
    let ctx = unsafe { sys::spank_context() };
    match ctx {
        sys::spank_context_e::S_CTX_LOCAL => Context::Local,
        sys::spank_context_e::S_CTX_REMOTE => Context::Remote,
        sys::spank_context_e::S_CTX_ALLOCATOR => Context::Allocator,
        sys::spank_context_e::S_CTX_SLURMD => Context::Slurmd,
        sys::spank_context_e::S_CTX_JOB_SCRIPT => Context::JobScript,
        _ => Context::Unknown,
    }
}

/// How an option takes its argument (getopt's `has_arg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// `--name`.
    None = 0,
    /// `--name=VALUE`, the value required.
    Required = 1,
    /// `--name[=VALUE]`.
    Optional = 2,
}

/// A command-line option the plugin adds to `srun`, `sbatch` and `salloc`.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// Long name, without `--`.
    pub name: &'static CStr,
    /// One word describing the argument (`OPTIONS`), shown as `--name=OPTIONS`.
    pub arginfo: &'static CStr,
    /// Help text for `--help`.
    pub usage: &'static CStr,
    /// How it takes its argument.
    pub arg: ArgKind,
    /// Called with the option's argument (null when none) when Slurm sees the option.
    pub callback: sys::spank_opt_cb_f,
}

impl OptionSpec {
    /// The C structure. Slurm copies it on registration, and only reads the strings.
    fn raw(&self) -> sys::spank_option {
        sys::spank_option {
            name: self.name.as_ptr().cast_mut(),
            arginfo: self.arginfo.as_ptr().cast_mut(),
            usage: self.usage.as_ptr().cast_mut(),
            has_arg: self.arg as c_int,
            val: 0,
            cb: self.callback,
        }
    }
}

/// The handle Slurm passes to a hook, valid for the duration of that hook.
#[derive(Debug)]
pub struct Spank {
    raw: sys::spank_t,
}

impl Spank {
    /// Wraps the handle of the running hook.
    ///
    /// # Safety
    /// `raw` must be the `spank_t` Slurm passed to the hook that is running now, and the
    /// returned value must not outlive that call.
    pub unsafe fn from_raw(raw: sys::spank_t) -> Spank {
        Spank { raw }
    }

    /// Registers a command-line option (only in `slurm_spank_init`).
    ///
    /// # Errors
    /// The status of `spank_option_register`.
    pub fn register_option(&self, spec: &OptionSpec) -> Result<(), SpankError> {
        let mut option = spec.raw();
        // SAFETY: self.raw is the live handle of this hook; `option` points to static C
        // strings and a valid callback, and Slurm copies everything it keeps.
        let rc = unsafe { sys::spank_option_register(self.raw, &mut option) };
        check("spank_option_register", rc)
    }

    /// The option's value if it was given: `Some(None)` without an argument, `Some(Some(v))`
    /// with one, `None` when not given. In the job prolog and epilog, Slurm finds it in the
    /// job's environment.
    pub fn option(&self, spec: &OptionSpec) -> Option<Option<String>> {
        let mut option = spec.raw();
        let mut arg: *mut c_char = std::ptr::null_mut();
        // SAFETY: live handle; `option` as in register_option; `arg` is a valid out pointer
        // that Slurm sets to a string it owns (or leaves null).
        let rc = unsafe { sys::spank_option_getopt(self.raw, &mut option, &mut arg) };
        check("spank_option_getopt", rc).ok()?;
        if arg.is_null() {
            return Some(None);
        }
        // SAFETY: non-null, NUL-terminated, owned by Slurm's option cache for the whole hook;
        // copied out at once.
        let value = unsafe { CStr::from_ptr(arg) }
            .to_string_lossy()
            .into_owned();
        Some(Some(value))
    }

    /// The job id.
    ///
    /// # Errors
    /// When Slurm cannot tell in this context.
    pub fn job_id(&self) -> Result<u32, SpankError> {
        let mut id: u32 = 0;
        // SAFETY: live handle; S_JOB_ID takes one `uint32_t *`, which `&mut id` is.
        let rc = unsafe { sys::spank_get_item(self.raw, sys::spank_item::S_JOB_ID, &mut id) };
        check("spank_get_item(S_JOB_ID)", rc).map(|()| id)
    }

    /// The job owner's user id.
    ///
    /// # Errors
    /// When Slurm cannot tell in this context.
    pub fn job_uid(&self) -> Result<u32, SpankError> {
        let mut uid: libc::uid_t = 0;
        // SAFETY: live handle; S_JOB_UID takes one `uid_t *`, which `&mut uid` is.
        let rc = unsafe { sys::spank_get_item(self.raw, sys::spank_item::S_JOB_UID, &mut uid) };
        check("spank_get_item(S_JOB_UID)", rc).map(|()| uid)
    }

    /// The job owner's primary group id.
    ///
    /// # Errors
    /// When Slurm cannot tell in this context.
    pub fn job_gid(&self) -> Result<u32, SpankError> {
        let mut gid: libc::gid_t = 0;
        // SAFETY: live handle; S_JOB_GID takes one `gid_t *`, which `&mut gid` is.
        let rc = unsafe { sys::spank_get_item(self.raw, sys::spank_item::S_JOB_GID, &mut gid) };
        check("spank_get_item(S_JOB_GID)", rc).map(|()| gid)
    }

    /// A variable of the job step's environment (remote context only); `None` if unset.
    ///
    /// # Errors
    /// Any status but "not set".
    pub fn getenv(&self, name: &str) -> Result<Option<String>, SpankError> {
        let name = c_string(name);
        let mut len = 4096;
        loop {
            let mut buf = vec![0u8; len];
            let size = c_int::try_from(buf.len()).unwrap_or(c_int::MAX);
            // SAFETY: live handle; `name` is NUL-terminated; `buf` is writable for `size`
            // bytes, and Slurm writes at most that many (strlcpy), NUL included.
            let rc = unsafe {
                sys::spank_getenv(self.raw, name.as_ptr(), buf.as_mut_ptr().cast(), size)
            };
            match check("spank_getenv", rc) {
                Ok(()) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
                }
                Err(e) if e.is_missing() => return Ok(None),
                Err(e) if e.code == sys::slurm_err_t::ESPANK_NOSPACE.0 && len < (1 << 20) => {
                    len *= 4;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets a variable in the job step's environment, seen by every task (remote context).
    ///
    /// # Errors
    /// The status of `spank_setenv`.
    pub fn setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let (name, value) = (c_string(name), c_string(value));
        // SAFETY: live handle; both strings NUL-terminated; Slurm copies them.
        let rc = unsafe { sys::spank_setenv(self.raw, name.as_ptr(), value.as_ptr(), 1) };
        check("spank_setenv", rc)
    }

    /// Sets a variable in the job control environment, which the job prolog and epilog see
    /// as `SPANK_<name>` (local and allocator contexts, before the job is allocated).
    ///
    /// # Errors
    /// The status of `spank_job_control_setenv`.
    pub fn job_control_setenv(&self, name: &str, value: &str) -> Result<(), SpankError> {
        let (name, value) = (c_string(name), c_string(value));
        // SAFETY: live handle; both strings NUL-terminated; Slurm copies them.
        let rc =
            unsafe { sys::spank_job_control_setenv(self.raw, name.as_ptr(), value.as_ptr(), 1) };
        check("spank_job_control_setenv", rc)
    }
}

/// Severity of a message for Slurm's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `slurm_error`: shown to the user by srun, and in the daemon logs.
    Error,
    /// `slurm_info`: the daemon logs (and srun's stderr at its default verbosity).
    Info,
    /// `slurm_verbose`: only with `-v`.
    Verbose,
    /// `slurm_debug`.
    Debug,
}

/// Writes `message` to Slurm's log (the calling program's: srun's stderr, slurmd's log).
pub fn log(level: Level, message: &str) {
    let text = c_string(&format!("dimstore: {message}"));
    let format = c"%s".as_ptr();
    // SAFETY: the format is "%s" with exactly one NUL-terminated string argument; the log
    // functions exist in every program that loads SPANK plugins.
    unsafe {
        match level {
            Level::Error => sys::slurm_error(format, text.as_ptr()),
            Level::Info => sys::slurm_info(format, text.as_ptr()),
            Level::Verbose => sys::slurm_verbose(format, text.as_ptr()),
            Level::Debug => sys::slurm_debug(format, text.as_ptr()),
        }
    }
}

/// The file this plugin was loaded from (`dladdr` on one of its own functions).
pub fn plugin_path() -> Option<PathBuf> {
    let mut info = libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    };
    let here = plugin_path as fn() -> Option<PathBuf> as *const c_void;
    // SAFETY: `here` is the address of a function in this shared object and `info` is a
    // valid, writable Dl_info; dladdr only fills it in.
    let found = unsafe { libc::dladdr(here, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the dynamic loader, valid while the
    // object stays loaded (it is: this code runs from it); copied out at once.
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
    path.is_absolute().then_some(path)
}
