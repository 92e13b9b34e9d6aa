//! The exception classes and the mapping from the client's typed errors onto them.
//!
//! ```text
//! Error
//! ├── NotFound ── NotReserved       no such object / deferred key unknown at its owner
//! │           └─ Evicted           the server removed it (pressure, lifetime, consumed)
//! ├── Timeout ── NotSet             no answer in time / deferred key not set in time
//! ├── ConnectionLost ── Unreachable connection broke / server could not be reached
//! ├── Unauthorized                  the fleet token was refused
//! ├── StoreFull ── TooLarge         no room for the object / larger than the server's limit
//! ├── AlreadySet                    set on a key that holds an object
//! ├── ConnectFailed                 no server found or started for this node
//! ├── TransportError                the transport asked for cannot be used, or a read failed
//! └── ProtocolError                 a server answered something unexpected or failed
//! ```

#![allow(missing_docs)] // the classes are documented by their docstrings below

use dimstore::{ConnectError, GetError, PutError, RequestError, SetError};
use dimstore_proto::Status;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    dimstore,
    Error,
    PyException,
    "Base class of every dimstore error."
);
create_exception!(
    dimstore,
    NotFound,
    Error,
    "The owner has no object under this key (never stored, or evicted)."
);
create_exception!(
    dimstore,
    NotReserved,
    NotFound,
    "set() on a key that its owner never reserved (or that was evicted)."
);
create_exception!(
    dimstore,
    Evicted,
    NotFound,
    "The server removed the object (memory pressure, its time to live or lease, its owner, a consume-once get)."
);
create_exception!(
    dimstore,
    Timeout,
    Error,
    "A server did not answer within the operation's timeout."
);
create_exception!(
    dimstore,
    NotSet,
    Timeout,
    "A deferred key was not set within the timeout."
);
create_exception!(
    dimstore,
    ConnectionLost,
    Error,
    "The connection to a server broke during the operation."
);
create_exception!(
    dimstore,
    Unreachable,
    ConnectionLost,
    "A server could not be reached (dead, wrong address, refused)."
);
create_exception!(
    dimstore,
    Unauthorized,
    Error,
    "The server refused this client's fleet token."
);
create_exception!(
    dimstore,
    StoreFull,
    Error,
    "The server's memory limit leaves no room for the object(s)."
);
create_exception!(
    dimstore,
    TooLarge,
    StoreFull,
    "The object is larger than the server's memory limit."
);
create_exception!(
    dimstore,
    AlreadySet,
    Error,
    "set() on a key that already holds an object."
);
create_exception!(
    dimstore,
    ConnectFailed,
    Error,
    "No server could be found or started for this node."
);
create_exception!(
    dimstore,
    TransportError,
    Error,
    "The transport asked for cannot be used, or a one-sided read failed."
);
create_exception!(
    dimstore,
    ProtocolError,
    Error,
    "A server answered something unexpected, or reported an internal failure."
);

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("NotFound", py.get_type::<NotFound>())?;
    m.add("NotReserved", py.get_type::<NotReserved>())?;
    m.add("Evicted", py.get_type::<Evicted>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("NotSet", py.get_type::<NotSet>())?;
    m.add("ConnectionLost", py.get_type::<ConnectionLost>())?;
    m.add("Unreachable", py.get_type::<Unreachable>())?;
    m.add("Unauthorized", py.get_type::<Unauthorized>())?;
    m.add("StoreFull", py.get_type::<StoreFull>())?;
    m.add("TooLarge", py.get_type::<TooLarge>())?;
    m.add("AlreadySet", py.get_type::<AlreadySet>())?;
    m.add("ConnectFailed", py.get_type::<ConnectFailed>())?;
    m.add("TransportError", py.get_type::<TransportError>())?;
    m.add("ProtocolError", py.get_type::<ProtocolError>())?;
    Ok(())
}

/// The text of an exception: the error with its causes (`outer: cause: root cause`).
fn text(e: &(dyn std::error::Error + 'static)) -> String {
    dimstore::chain(e).to_string()
}

// The client's error enums are `#[non_exhaustive]`: a variant added later becomes the base
// class `Error` (or `ProtocolError`, `ConnectFailed` where the operation says more) until it
// is given a class of its own here.

/// A failure to reach or talk to a server.
pub(crate) fn request(e: RequestError) -> PyErr {
    let text = text(&e);
    match &e {
        RequestError::Unreachable { .. } => Unreachable::new_err(text),
        RequestError::Timeout { .. } => Timeout::new_err(text),
        RequestError::ConnectionLost { .. } => ConnectionLost::new_err(text),
        RequestError::Unauthorized { .. } | RequestError::Untrusted { .. } => {
            Unauthorized::new_err(text)
        }
        RequestError::Server { status, .. } => match status {
            Status::NotFound => NotFound::new_err(text),
            Status::Evicted => Evicted::new_err(text),
            Status::StoreFull => StoreFull::new_err(text),
            Status::TooLarge => TooLarge::new_err(text),
            Status::Timeout => NotSet::new_err(text),
            Status::Unauthorized => Unauthorized::new_err(text),
            Status::AlreadySet => AlreadySet::new_err(text),
            Status::ShuttingDown => ConnectionLost::new_err(text),
            _ => ProtocolError::new_err(text),
        },
        RequestError::TransportUnavailable { .. } | RequestError::OneSided { .. } => {
            TransportError::new_err(text)
        }
        _ => ProtocolError::new_err(text),
    }
}

/// Why a put failed.
pub(crate) fn put(e: PutError) -> PyErr {
    match e {
        PutError::StoreFull(_) => StoreFull::new_err(text(&e)),
        PutError::TooLarge(_) => TooLarge::new_err(text(&e)),
        PutError::Request(e) => request(e),
        other => Error::new_err(text(&other)),
    }
}

/// Why a get failed.
pub(crate) fn get(e: GetError) -> PyErr {
    match e {
        GetError::NotFound(_) => NotFound::new_err(text(&e)),
        GetError::NotSet(_) => NotSet::new_err(text(&e)),
        GetError::Evicted(_) => Evicted::new_err(text(&e)),
        GetError::Request(e) => request(e),
        other => Error::new_err(text(&other)),
    }
}

/// Why a set failed.
pub(crate) fn set(e: SetError) -> PyErr {
    match e {
        SetError::AlreadySet(_) => AlreadySet::new_err(text(&e)),
        SetError::NotReserved(_) => NotReserved::new_err(text(&e)),
        SetError::StoreFull(_) => StoreFull::new_err(text(&e)),
        SetError::Request(e) => request(e),
        other => Error::new_err(text(&other)),
    }
}

/// Why no server could be found or started.
pub(crate) fn connect(e: ConnectError) -> PyErr {
    match e {
        ConnectError::Request(e) => request(e),
        other => ConnectFailed::new_err(text(&other)),
    }
}
