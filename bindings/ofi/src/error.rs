//! Errors: every libfabric call goes through [`check`], which names the API and keeps the
//! error number and libfabric's text for it (`fi_strerror`).

use std::ffi::{c_int, CStr};
use std::fmt;
use std::sync::Arc;

use libfabric_sys::{fi_strerror, FI_EAGAIN, FI_ECANCELED, FI_ENOSYS, FI_ETIMEDOUT};

/// Result of a libfabric operation.
pub type Result<T, E = OfiError> = std::result::Result<T, E>;

/// A failed libfabric call: which API, the (positive) error number and a message; or
/// libfabric missing from this node ([`OfiError::is_library_missing`], with the loader's
/// error as its source).
#[derive(Clone, Debug)]
pub struct OfiError {
    /// The libfabric function (or this crate's operation) that failed, e.g. `"fi_mr_reg"`.
    pub api: &'static str,
    /// The error number, positive (`FI_EAGAIN`, `FI_ETIMEDOUT`, errno values, ...).
    pub code: i32,
    /// Human-readable text (libfabric's, plus the provider's detail when there is one).
    pub message: String,
    /// Why libfabric could not be loaded, when that is the error.
    pub(crate) missing: Option<Arc<libfabric_sys::LoadError>>,
}

impl PartialEq for OfiError {
    fn eq(&self, other: &Self) -> bool {
        // The load error is described by the message; the loader's own error has no equality.
        (self.api, self.code, &self.message) == (other.api, other.code, &other.message)
    }
}

impl Eq for OfiError {}

impl OfiError {
    /// An error for `api` with libfabric's own text for `code` (sign ignored).
    pub fn new(api: &'static str, code: i64) -> Self {
        let code = i32::try_from(code.unsigned_abs()).unwrap_or(i32::MAX);
        Self {
            api,
            code,
            message: strerror(code),
            missing: None,
        }
    }

    /// An error detected by this crate or its caller (not returned by libfabric), with its
    /// own message.
    pub fn local(api: &'static str, code: c_int, message: impl Into<String>) -> Self {
        Self {
            api,
            code,
            message: message.into(),
            missing: None,
        }
    }

    /// libfabric could not be loaded: one sentence that says what to do, the loader's error
    /// as the source. Code `FI_ENOSYS`.
    pub(crate) fn library_missing(error: libfabric_sys::LoadError) -> Self {
        Self {
            api: "dlopen",
            code: FI_ENOSYS,
            message: format!(
                "libfabric is not installed on this node: {error} (install libfabric or load \
                 its module, set {} to its path, or choose another transport)",
                libfabric_sys::LIBRARY_ENV
            ),
            missing: Some(Arc::new(error)),
        }
    }

    /// Whether the error is libfabric missing from this node (its library could not be
    /// loaded).
    pub fn is_library_missing(&self) -> bool {
        self.missing.is_some()
    }

    /// A deadline passed before `api` completed.
    pub(crate) fn timed_out(api: &'static str) -> Self {
        Self::local(api, FI_ETIMEDOUT, "deadline passed before completion")
    }

    /// Whether the error is a passed deadline.
    pub fn is_timeout(&self) -> bool {
        self.code == FI_ETIMEDOUT
    }

    /// Whether the error is `FI_EAGAIN` (resources busy: progress and retry).
    pub fn is_again(&self) -> bool {
        self.code == FI_EAGAIN
    }

    /// Whether the operation was canceled (e.g. its endpoint was closed).
    pub fn is_canceled(&self) -> bool {
        self.code == FI_ECANCELED
    }
}

impl fmt::Display for OfiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_library_missing() {
            return f.write_str(&self.message);
        }
        write!(f, "{} failed: {} ({})", self.api, self.message, self.code)
    }
}

impl std::error::Error for OfiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.missing
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Loads libfabric (once per process), or the error that says it is missing: the first
/// thing every entry point of this crate does.
pub(crate) fn load() -> Result<()> {
    libfabric_sys::load()
        .map(drop)
        .map_err(OfiError::library_missing)
}

/// libfabric's text for error number `code` (positive), or a placeholder when libfabric
/// cannot be loaded.
pub(crate) fn strerror(code: c_int) -> String {
    if libfabric_sys::load().is_err() {
        return format!("error {code} (no text: libfabric is not loaded)");
    }
    // SAFETY: fi_strerror accepts any error number and returns a pointer to a static
    // NUL-terminated string.
    let text = unsafe { CStr::from_ptr(fi_strerror(code)) };
    text.to_string_lossy().into_owned()
}

/// The one checked helper for calls returning `int`: `Ok(())` for 0 (or any non-negative
/// value), otherwise an error naming `api` (libfabric returns negated error numbers).
pub(crate) fn check(api: &'static str, ret: c_int) -> Result<()> {
    check_len(api, ret as isize).map(drop)
}

/// The checked helper for calls returning `ssize_t`: the non-negative value, or an error
/// naming `api`.
pub(crate) fn check_len(api: &'static str, ret: isize) -> Result<usize> {
    usize::try_from(ret).map_err(|_| OfiError::new(api, ret as i64))
}
