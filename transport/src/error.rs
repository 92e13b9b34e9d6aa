//! Transport errors.

use dimstore_proto::{DecodeError, FrameError};

/// Why a transport operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The server could not be reached.
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// Address tried.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The deadline passed before the reply arrived.
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection broke (peer died, reset, or the stream became unusable).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer sent a frame this side refuses.
    #[error("protocol violation by peer: {0}")]
    Frame(#[from] FrameError),
    /// A transport asked for is not available here (library missing, provider absent,
    /// the server does not offer it).
    #[error("transport {transport} unavailable: {reason}")]
    Unavailable {
        /// Transport name.
        transport: String,
        /// Why.
        reason: String,
    },
    /// A one-sided operation failed (the library's error, naming the call).
    #[error("{transport} one-sided read failed: {reason}")]
    OneSided {
        /// Transport name.
        transport: String,
        /// The library's error.
        reason: String,
    },
    /// The peer's reply does not fit the request (more bytes or items than it can return,
    /// a region outside what it names).
    #[error("reply does not fit the request: {0}")]
    Protocol(String),
    /// The peer sent a body that failed validation.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
