//! Errors: every UCX call goes through [`check`] (or [`check_ptr`] for calls that return a
//! status pointer), which names the API and keeps UCX's status and its text.

use std::ffi::CStr;
use std::fmt;
use std::sync::Arc;

use ucx_sys::{ucs_status_ptr_t, ucs_status_string, ucs_status_t, UCS_PTR_IS_PTR, UCS_PTR_STATUS};

/// Result of a UCX operation.
pub type Result<T, E = UcxError> = std::result::Result<T, E>;

/// A UCX status code (`ucs_status_t`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub ucs_status_t);

impl Status {
    /// `UCS_OK`.
    pub const OK: Self = Self(ucs_status_t::UCS_OK);
    /// `UCS_ERR_TIMED_OUT`: also what this crate reports when a deadline passes.
    pub const TIMED_OUT: Self = Self(ucs_status_t::UCS_ERR_TIMED_OUT);
    /// `UCS_ERR_CANCELED`: the operation was canceled (e.g. its endpoint was closed).
    pub const CANCELED: Self = Self(ucs_status_t::UCS_ERR_CANCELED);
    /// `UCS_ERR_INVALID_PARAM`: also what this crate reports for a misuse it detects.
    pub const INVALID_PARAM: Self = Self(ucs_status_t::UCS_ERR_INVALID_PARAM);
    /// `UCS_ERR_NOT_CONNECTED`: also what this crate reports for a closed endpoint.
    pub const NOT_CONNECTED: Self = Self(ucs_status_t::UCS_ERR_NOT_CONNECTED);

    /// The raw status number (negative for errors).
    pub fn code(self) -> i8 {
        self.0 .0
    }

    /// UCX's text for this status (`ucs_status_string`), or a placeholder when UCX cannot
    /// be loaded.
    pub fn text(self) -> &'static str {
        if ucx_sys::load().is_err() {
            return "(no UCX status text: UCX is not loaded)";
        }
        // SAFETY: ucs_status_string accepts any status value and returns a pointer to a
        // static NUL-terminated string (a generic one for unknown values).
        let text = unsafe { CStr::from_ptr(ucs_status_string(self.0)) };
        text.to_str().unwrap_or("(non-UTF-8 UCX status text)")
    }

    /// Whether this status means the peer is gone or unreachable (the connection failed,
    /// the endpoint timed out, or the operation was canceled because its endpoint failed).
    pub fn is_peer_failure(self) -> bool {
        use ucs_status_t as S;
        [
            S::UCS_ERR_CONNECTION_RESET,
            S::UCS_ERR_ENDPOINT_TIMEOUT,
            S::UCS_ERR_UNREACHABLE,
            S::UCS_ERR_REJECTED,
            S::UCS_ERR_CANCELED,
            S::UCS_ERR_IO_ERROR,
            S::UCS_ERR_NOT_CONNECTED,
            S::UCS_ERR_SHMEM_SEGMENT,
        ]
        .contains(&self.0)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.text(), self.code())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// A failed UCX call: which API, the status it returned and a message (UCX's text for the
/// status, or this crate's explanation for a misuse or a deadline it detected itself), or
/// UCX missing from this node ([`UcxError::is_library_missing`], with the loader's error as
/// its source).
#[derive(Clone, Debug)]
pub struct UcxError {
    /// The UCX function (or this crate's operation) that failed, e.g. `"ucp_mem_map"`.
    pub api: &'static str,
    /// The status it returned.
    pub status: Status,
    /// Human-readable text.
    pub message: String,
    /// Why UCX could not be loaded, when that is the error.
    pub(crate) missing: Option<Arc<ucx_sys::LoadError>>,
}

impl PartialEq for UcxError {
    fn eq(&self, other: &Self) -> bool {
        // The load error is described by the message; the loader's own error has no equality.
        (self.api, self.status, &self.message) == (other.api, other.status, &other.message)
    }
}

impl Eq for UcxError {}

impl UcxError {
    /// An error for `api` with UCX's own text for `status`.
    pub fn new(api: &'static str, status: ucs_status_t) -> Self {
        let status = Status(status);
        Self {
            api,
            status,
            message: status.text().to_owned(),
            missing: None,
        }
    }

    /// An error detected by this crate (not returned by UCX), with its own message.
    pub(crate) fn local(api: &'static str, status: Status, message: impl Into<String>) -> Self {
        Self {
            api,
            status,
            message: message.into(),
            missing: None,
        }
    }

    /// UCX could not be loaded: one sentence that says what to do, the loader's error as the
    /// source. Status `UCS_ERR_UNSUPPORTED`.
    pub(crate) fn library_missing(error: ucx_sys::LoadError) -> Self {
        Self {
            api: "dlopen",
            status: Status(ucs_status_t::UCS_ERR_UNSUPPORTED),
            message: format!(
                "UCX is not installed on this node: {error} (install UCX or load its module, \
                 set {} to its path, or choose another transport)",
                ucx_sys::LIBRARY_ENV
            ),
            missing: Some(Arc::new(error)),
        }
    }

    /// Whether the error is UCX missing from this node (its library could not be loaded).
    pub fn is_library_missing(&self) -> bool {
        self.missing.is_some()
    }

    /// A deadline passed before `api` completed.
    pub(crate) fn timed_out(api: &'static str) -> Self {
        Self::local(api, Status::TIMED_OUT, "deadline passed before completion")
    }

    /// Whether the error is a passed deadline.
    pub fn is_timeout(&self) -> bool {
        self.status == Status::TIMED_OUT
    }

    /// Whether the error means the peer is gone (see [`Status::is_peer_failure`]).
    pub fn is_peer_failure(&self) -> bool {
        self.status.is_peer_failure()
    }
}

impl fmt::Display for UcxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_library_missing() {
            return f.write_str(&self.message);
        }
        write!(
            f,
            "{} failed: {} ({})",
            self.api,
            self.message,
            self.status.code()
        )
    }
}

impl std::error::Error for UcxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.missing
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Loads UCX (once per process), or the error that says it is missing: the first thing
/// every entry point of this crate does.
pub(crate) fn load() -> Result<()> {
    ucx_sys::load().map(drop).map_err(UcxError::library_missing)
}

/// The one checked helper for status-returning calls: `Ok(())` for `UCS_OK`, otherwise an
/// error naming `api`.
pub(crate) fn check(api: &'static str, status: ucs_status_t) -> Result<()> {
    if status == ucs_status_t::UCS_OK {
        Ok(())
    } else {
        Err(UcxError::new(api, status))
    }
}

/// The checked helper for calls returning `ucs_status_ptr_t` (the `*_nbx` family):
/// `Ok(None)` when the operation completed in place, `Ok(Some(request))` when it is in
/// flight, an error naming `api` otherwise.
pub(crate) fn check_ptr(
    api: &'static str,
    ptr: ucs_status_ptr_t,
) -> Result<Option<ucs_status_ptr_t>> {
    if UCS_PTR_IS_PTR(ptr) {
        Ok(Some(ptr))
    } else {
        check(api, UCS_PTR_STATUS(ptr)).map(|()| None)
    }
}
