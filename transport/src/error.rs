//! Transport errors, and [`Cause`], the lower layer's error they keep as their source.
//!
//! Every variant that stands for a failure of something below (the operating system, UCX,
//! libfabric) keeps that error as its [`source`](std::error::Error::source) instead of its
//! text, so a caller can walk the chain and `downcast_ref` the library's own error type
//! (`std::io::Error`, `dimstore_ucx::UcxError`, `dimstore_ofi::OfiError`). A variant's
//! `Display` does not repeat its source: print the whole chain (`anyhow`'s `{:#}`, or
//! [`chain`]) to see every cause once.

use std::error::Error;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use dimstore_proto::{DecodeError, FrameError};

/// Why a transport operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server could not be reached.
    #[error("cannot connect to {address}")]
    Connect {
        /// Address tried.
        address: String,
        /// What went wrong (usually a `std::io::Error`).
        #[source]
        source: Cause,
    },
    /// The deadline passed before the reply arrived.
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection broke (peer died, reset, or the stream became unusable).
    #[error("connection lost")]
    ConnectionLost(#[source] Cause),
    /// The peer sent a frame this side refuses.
    #[error("protocol violation by peer")]
    Frame(#[from] FrameError),
    /// A transport asked for is not available here (library missing, provider absent,
    /// the server does not offer it).
    #[error("transport {transport} unavailable")]
    Unavailable {
        /// Transport name.
        transport: String,
        /// Why (the library's error when it has one).
        #[source]
        source: Cause,
    },
    /// A one-sided operation failed (the library's error, naming the call).
    #[error("{transport} one-sided read failed")]
    OneSided {
        /// Transport name.
        transport: String,
        /// The library's error (with what this side was doing when it came).
        #[source]
        source: Cause,
    },
    /// The peer's reply does not fit the request (more bytes or items than it can return,
    /// a region outside what it names).
    #[error("reply does not fit the request: {0}")]
    Protocol(String),
    /// The peer sent a body that failed validation.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The error a [`TransportError`] keeps as its source: a library's or the system's error
/// (kept whole, so it can be downcast), or a sentence of this side's own.
///
/// Shared (one allocation, cheap to clone) because one broken connection's error is handed
/// to every call that was waiting on it. It is not itself an error: it dereferences to the
/// error it holds, so that error, not a wrapper, is what `source()` returns.
#[derive(Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `error` whole.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        Cause(Arc::new(error))
    }

    /// `error`, with what this side was doing when it came (`"registering segment 3"`):
    /// displays as the context, with `error` as its source.
    pub fn context(what: impl Into<String>, error: impl Error + Send + Sync + 'static) -> Self {
        Cause::new(error).in_context(what)
    }

    /// This cause under what this side was doing or had set (`"with UCX_TLS=rc"`):
    /// displays as `what`, with this cause as its source.
    pub fn in_context(self, what: impl Into<String>) -> Self {
        Cause::new(Context {
            what: what.into(),
            source: self,
        })
    }
}

impl Deref for Cause {
    type Target = dyn Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

/// A sentence of this side's own (nothing below failed: a condition it detected).
impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause::new(Message(message))
    }
}

/// A sentence of this side's own (nothing below failed: a condition it detected).
impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::from(message.to_owned())
    }
}

impl From<std::io::Error> for Cause {
    fn from(error: std::io::Error) -> Self {
        Cause::new(error)
    }
}

/// A condition this side detected, as an error with no source.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

/// An error with what this side was doing when it came.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct Context {
    what: String,
    #[source]
    source: Cause,
}

/// Displays `error` followed by its sources, `outer: cause: root cause` (what `anyhow`'s
/// `{:#}` prints), for callers that pass errors on as text (logs, the C and Python bindings).
pub fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl fmt::Display + 'a {
    Chain(error)
}

/// See [`chain`].
struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_kept_error_itself_not_a_wrapper() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = TransportError::Connect {
            address: "h:1".into(),
            source: io.into(),
        };
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
        assert_eq!(chain(&e).to_string(), "cannot connect to h:1: refused");
    }

    #[test]
    fn a_context_keeps_its_error_as_the_next_source() {
        let io = std::io::Error::other("no such device");
        let e = TransportError::OneSided {
            transport: "x".into(),
            source: Cause::context("registering segment 3", io),
        };
        let context = e.source().expect("the context");
        assert_eq!(context.to_string(), "registering segment 3");
        let io = context.source().expect("the io error");
        assert!(io.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(
            chain(&e).to_string(),
            "x one-sided read failed: registering segment 3: no such device"
        );
    }

    #[test]
    fn a_sentence_of_this_side_ends_the_chain_and_clones_share_it() {
        let e = TransportError::ConnectionLost("server closed the connection".into());
        let copy = e.clone();
        assert_eq!(e.to_string(), "connection lost");
        assert_eq!(
            chain(&copy).to_string(),
            "connection lost: server closed the connection"
        );
        assert!(e.source().and_then(Error::source).is_none());
    }
}
