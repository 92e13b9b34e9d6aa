//! Errors: every libfabric call goes through [`check`], which names the API and keeps the
//! error number and libfabric's text for it (`fi_strerror`).

use std::ffi::{c_int, CStr};
use std::fmt;

use libfabric_sys::{fi_strerror, FI_EAGAIN, FI_ECANCELED, FI_ETIMEDOUT};

/// Result of a libfabric operation.
pub type Result<T, E = OfiError> = std::result::Result<T, E>;

/// A failed libfabric call: which API, the (positive) error number and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfiError {
    /// The libfabric function (or this crate's operation) that failed, e.g. `"fi_mr_reg"`.
    pub api: &'static str,
    /// The error number, positive (`FI_EAGAIN`, `FI_ETIMEDOUT`, errno values, ...).
    pub code: i32,
    /// Human-readable text (libfabric's, plus the provider's detail when there is one).
    pub message: String,
}

impl OfiError {
    /// An error for `api` with libfabric's own text for `code` (sign ignored).
    pub fn new(api: &'static str, code: i64) -> Self {
        let code = i32::try_from(code.unsigned_abs()).unwrap_or(i32::MAX);
        Self {
            api,
            code,
            message: strerror(code),
        }
    }

    /// An error detected by this crate, with its own message.
    pub(crate) fn local(api: &'static str, code: c_int, message: impl Into<String>) -> Self {
        Self {
            api,
            code,
            message: message.into(),
        }
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
        write!(f, "{} failed: {} ({})", self.api, self.message, self.code)
    }
}

impl std::error::Error for OfiError {}

/// libfabric's text for error number `code` (positive).
pub(crate) fn strerror(code: c_int) -> String {
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
