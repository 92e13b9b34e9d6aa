//! Status codes, the mapping of the client's typed errors onto them, the thread's last error
//! message, and the panic boundary every entry point runs inside.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use client::{ConnectError, GetError, PutError, RequestError, SetError};
use dimstore_proto::Status;

/// Status of a call: `DIMSTORE_OK` (0) or a negative error. Functions return it as an
/// `int`; the values are C enum constants (no macro pitfalls with negative numbers).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dimstore_status {
    /// Success.
    DIMSTORE_OK = 0,
    /// The owner has no object under this key (never stored, or evicted).
    DIMSTORE_E_NOT_FOUND = -1,
    /// The server's memory limit leaves no room for the object (or the object is larger than it).
    DIMSTORE_E_STORE_FULL = -2,
    /// No answer within the operation's timeout (`DIMSTORE_TIMEOUT`).
    DIMSTORE_E_TIMEOUT = -3,
    /// The server refused the fleet token (`DIMSTORE_TOKEN`).
    DIMSTORE_E_UNAUTHORIZED = -4,
    /// The connection to a server broke during the operation, or the server is shutting down.
    DIMSTORE_E_CONNECTION_LOST = -5,
    /// A caller's buffer is too small; the size needed is written back where the call has an
    /// output length (`dimstore_get_into`), and is in the message otherwise.
    DIMSTORE_E_TOO_SMALL = -6,
    /// A NULL pointer, a malformed key text, or an inconsistent argument.
    DIMSTORE_E_BAD_ARGUMENT = -7,
    /// A bug or an unexpected answer (a panic inside the library ends up here too).
    DIMSTORE_E_INTERNAL = -8,
    /// The handle was closed (or never opened).
    DIMSTORE_E_CLOSED = -9,
    /// The handle was opened by the parent of this forked process; open a new one in the child.
    DIMSTORE_E_FORK = -10,
    /// A deferred key (`dimstore_new_key`) was not set within the timeout, or has no size yet.
    DIMSTORE_E_NOT_SET = -11,
    /// `dimstore_set` on a key that already holds an object.
    DIMSTORE_E_ALREADY_SET = -12,
    /// No server could be reached, found or started for this node.
    DIMSTORE_E_UNREACHABLE = -13,
    /// The `DIMSTORE_*` environment or the fleet file is unusable, or the transport asked for is
    /// unavailable.
    DIMSTORE_E_CONFIG = -14,
    /// The server removed the object (memory pressure, its time to live or lease ran out, its
    /// owner went, or a consume-once get took it): distinct from never stored.
    DIMSTORE_E_EVICTED = -15,
}

pub use dimstore_status::*;

/// A failed call: its status and the sentence `dimstore_last_error` will give.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: dimstore_status,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(status: dimstore_status, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_argument(message: impl Into<String>) -> Self {
        Failure::new(DIMSTORE_E_BAD_ARGUMENT, message)
    }

    pub(crate) fn too_small(what: &str, needed: u64, capacity: usize) -> Self {
        Failure::new(
            DIMSTORE_E_TOO_SMALL,
            format!("{what} needs {needed} bytes, the buffer holds {capacity}"),
        )
    }
}

fn server_status(status: Status) -> dimstore_status {
    match status {
        Status::NotFound => DIMSTORE_E_NOT_FOUND,
        Status::StoreFull | Status::TooLarge => DIMSTORE_E_STORE_FULL,
        Status::Timeout => DIMSTORE_E_TIMEOUT,
        Status::BadRequest => DIMSTORE_E_BAD_ARGUMENT,
        Status::Unauthorized => DIMSTORE_E_UNAUTHORIZED,
        Status::AlreadySet => DIMSTORE_E_ALREADY_SET,
        Status::ShuttingDown => DIMSTORE_E_CONNECTION_LOST,
        Status::Internal => DIMSTORE_E_INTERNAL,
        // Functions are not in the C API yet; their statuses reach it only from a server
        // that answers a request with them by mistake.
        Status::ModuleUnknown | Status::InvalidModule | Status::FunctionsDisabled => {
            DIMSTORE_E_BAD_ARGUMENT
        }
        Status::FunctionDeadline => DIMSTORE_E_TIMEOUT,
        Status::Evicted => DIMSTORE_E_EVICTED,
        Status::FunctionTrapped | Status::FunctionLimit => DIMSTORE_E_INTERNAL,
    }
}

/// The message of a failure: the error with its causes (`outer: cause: root cause`).
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    client::chain(e).to_string()
}

// The client's error enums are `#[non_exhaustive]`: a variant added later maps to
// `DIMSTORE_E_INTERNAL` (never to success) until it is given a status of its own here.

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        let status = match &e {
            RequestError::Unreachable { .. } => DIMSTORE_E_UNREACHABLE,
            RequestError::Timeout { .. } => DIMSTORE_E_TIMEOUT,
            RequestError::ConnectionLost { .. } | RequestError::OneSided { .. } => {
                DIMSTORE_E_CONNECTION_LOST
            }
            RequestError::Unauthorized { .. } | RequestError::Untrusted { .. } => {
                DIMSTORE_E_UNAUTHORIZED
            }
            RequestError::Server { status, .. } => server_status(*status),
            RequestError::TransportUnavailable { .. } => DIMSTORE_E_CONFIG,
            RequestError::Protocol { .. } => DIMSTORE_E_INTERNAL,
            _ => DIMSTORE_E_INTERNAL,
        };
        Failure::new(status, message(&e))
    }
}

impl From<GetError> for Failure {
    fn from(e: GetError) -> Self {
        let status = match e {
            GetError::NotFound(_) => DIMSTORE_E_NOT_FOUND,
            GetError::NotSet(_) => DIMSTORE_E_NOT_SET,
            GetError::Evicted(_) => DIMSTORE_E_EVICTED,
            GetError::Invalid { .. } => DIMSTORE_E_INTERNAL,
            GetError::Request(e) => return e.into(),
            _ => DIMSTORE_E_INTERNAL,
        };
        Failure::new(status, message(&e))
    }
}

impl From<PutError> for Failure {
    fn from(e: PutError) -> Self {
        let status = match e {
            PutError::StoreFull(_) | PutError::TooLarge(_) => DIMSTORE_E_STORE_FULL,
            PutError::Serialize(_) => DIMSTORE_E_INTERNAL,
            PutError::Invalid(_) => DIMSTORE_E_BAD_ARGUMENT,
            PutError::Request(e) => return e.into(),
            _ => DIMSTORE_E_INTERNAL,
        };
        Failure::new(status, message(&e))
    }
}

impl From<SetError> for Failure {
    fn from(e: SetError) -> Self {
        let status = match e {
            SetError::AlreadySet(_) => DIMSTORE_E_ALREADY_SET,
            SetError::NotReserved(_) => DIMSTORE_E_NOT_FOUND,
            SetError::StoreFull(_) => DIMSTORE_E_STORE_FULL,
            SetError::Request(e) => return e.into(),
            _ => DIMSTORE_E_INTERNAL,
        };
        Failure::new(status, message(&e))
    }
}

impl From<ConnectError> for Failure {
    fn from(e: ConnectError) -> Self {
        let status = match e {
            ConnectError::Fleet { .. } | ConnectError::RuntimeDir(_) => DIMSTORE_E_CONFIG,
            ConnectError::NoServer { .. } | ConnectError::Spawn { .. } => DIMSTORE_E_UNREACHABLE,
            ConnectError::Request(e) => return e.into(),
            _ => DIMSTORE_E_INTERNAL,
        };
        Failure::new(status, message(&e))
    }
}

/// The symbolic name of a status (`"DIMSTORE_E_NOT_FOUND"`), or `None` for an unknown one.
pub(crate) fn status_name(status: c_int) -> Option<&'static CStr> {
    Some(match status {
        0 => c"DIMSTORE_OK",
        -1 => c"DIMSTORE_E_NOT_FOUND",
        -2 => c"DIMSTORE_E_STORE_FULL",
        -3 => c"DIMSTORE_E_TIMEOUT",
        -4 => c"DIMSTORE_E_UNAUTHORIZED",
        -5 => c"DIMSTORE_E_CONNECTION_LOST",
        -6 => c"DIMSTORE_E_TOO_SMALL",
        -7 => c"DIMSTORE_E_BAD_ARGUMENT",
        -8 => c"DIMSTORE_E_INTERNAL",
        -9 => c"DIMSTORE_E_CLOSED",
        -10 => c"DIMSTORE_E_FORK",
        -11 => c"DIMSTORE_E_NOT_SET",
        -12 => c"DIMSTORE_E_ALREADY_SET",
        -13 => c"DIMSTORE_E_UNREACHABLE",
        -14 => c"DIMSTORE_E_CONFIG",
        -15 => c"DIMSTORE_E_EVICTED",
        _ => return None,
    })
}

thread_local! {
    /// The message of this thread's last failed call.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: String) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// This thread's last error message; valid until this thread's next failing call or its end.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Runs an entry point's body: an error becomes its status (and this thread's last error),
/// a panic becomes `DIMSTORE_E_INTERNAL`; nothing unwinds into the caller's C code.
pub(crate) fn boundary(function: &str, body: impl FnOnce() -> Result<(), Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => DIMSTORE_OK as c_int,
        Ok(Err(failure)) => {
            set_last_error(format!("{function}: {}", failure.message));
            failure.status as c_int
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("{function}: internal error (panic: {what})"));
            DIMSTORE_E_INTERNAL as c_int
        }
    }
}
