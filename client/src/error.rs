//! Errors, one enum per operation; all share [`RequestError`] for what can go wrong on the way.

use std::time::Duration;

use dimstore_proto::{ErrorReply, Key, Status};
use dimstore_transport::{Cause, TransportError};

/// Failure to reach or talk to a server, common to every operation.
///
/// Variants that stand for a failure below (the system, UCX, libfabric) keep it as their
/// [`source`](std::error::Error::source), e.g. a `std::io::Error` or a
/// `dimstore_ucx::UcxError` that can be downcast; their `Display` does not repeat it (print
/// the chain: `anyhow`'s `{:#}`, or [`chain`](crate::chain)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The server could not be reached (dead, wrong address, refused).
    #[error("server {owner} is unreachable")]
    Unreachable {
        /// The server's address.
        owner: String,
        /// What went wrong.
        #[source]
        source: Cause,
    },
    /// No reply within the operation's timeout.
    #[error("server {owner} did not answer within {timeout:?}")]
    Timeout {
        /// The server's address.
        owner: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The connection broke during the operation (server died or reset it).
    #[error("connection to {owner} lost")]
    ConnectionLost {
        /// The server's address.
        owner: String,
        /// What went wrong.
        #[source]
        source: Cause,
    },
    /// The server refused the fleet token.
    #[error("server {owner} refused the fleet token: {message}")]
    Unauthorized {
        /// The server's address.
        owner: String,
        /// The server's explanation.
        message: String,
    },
    /// The server reported an error.
    #[error("server {owner} answered {status:?}: {message}")]
    Server {
        /// The server's address.
        owner: String,
        /// Status class.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The transport asked for (`DIMSTORE_TRANSPORT`) cannot be used with this server.
    #[error("server {owner}: transport {transport} unavailable")]
    TransportUnavailable {
        /// The server's address.
        owner: String,
        /// The transport.
        transport: String,
        /// Why (the library's error when it has one).
        #[source]
        source: Cause,
    },
    /// A one-sided read of object bytes failed.
    #[error("reading from server {owner} over {transport} failed")]
    OneSided {
        /// The server's address.
        owner: String,
        /// The transport.
        transport: String,
        /// The library's error.
        #[source]
        source: Cause,
    },
    /// The owner is not a server of this client's fleet, so the token was not sent to it,
    /// and it refused the connection without one.
    #[error("server {owner} is not in this client's fleet, so the fleet token was not sent to it, and it requires one ({message}); only the fleet file's servers, DIMSTORE_SERVER, this node's own server, DIMSTORE_TRUSTED and servers on DIMSTORE_TRUSTED_HOSTS receive the token")]
    Untrusted {
        /// The server's address.
        owner: String,
        /// The server's explanation.
        message: String,
    },
    /// The server answered with something that does not fit the request.
    #[error("server {owner} sent an unexpected reply")]
    Protocol {
        /// The server's address.
        owner: String,
        /// What was wrong (the transport's error when it found it).
        #[source]
        source: Cause,
    },
}

impl RequestError {
    pub(crate) fn from_transport(owner: &str, timeout: Duration, e: TransportError) -> Self {
        let owner = owner.to_string();
        match e {
            TransportError::Connect { source, .. } => RequestError::Unreachable { owner, source },
            TransportError::Timeout => RequestError::Timeout { owner, timeout },
            TransportError::ConnectionLost(source) => {
                RequestError::ConnectionLost { owner, source }
            }
            TransportError::Unavailable { transport, source } => {
                RequestError::TransportUnavailable {
                    owner,
                    transport,
                    source,
                }
            }
            TransportError::OneSided { transport, source } => RequestError::OneSided {
                owner,
                transport,
                source,
            },
            // A frame or body the peer should not have sent, and whatever a later version
            // of the transport adds: kept whole.
            other => RequestError::Protocol {
                owner,
                source: Cause::new(other),
            },
        }
    }

    pub(crate) fn from_reply(owner: &str, e: ErrorReply) -> Self {
        let owner = owner.to_string();
        match e.status {
            Status::Unauthorized => RequestError::Unauthorized {
                owner,
                message: e.message,
            },
            status => RequestError::Server {
                owner,
                status,
                message: e.message,
            },
        }
    }

    /// The server status, if the server answered with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            RequestError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Why a put failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PutError {
    /// The server's memory limit leaves no room for the object(s).
    #[error("store full: {0}")]
    StoreFull(String),
    /// The object is larger than the server's memory limit.
    #[error("object too large: {0}")]
    TooLarge(String),
    /// The object could not be serialized (typed puts).
    #[error("cannot serialize the object")]
    Serialize(#[source] Cause),
    /// The put's options cannot be honoured (a zero time to live, ...).
    #[error("invalid put options: {0}")]
    Invalid(String),
    /// Reaching or talking to the server failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why a get failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The owner has no object under this key (never stored, or evicted).
    #[error("no object {0}")]
    NotFound(Key),
    /// The key is deferred and was not set within the timeout.
    #[error("deferred object {0} was not set within the timeout")]
    NotSet(Key),
    /// The owner evicted the object (memory pressure, time to live, lease, owner gone, or
    /// consumed by a get-and-evict).
    #[error("object {0} was evicted by its owner")]
    Evicted(Key),
    /// The bytes are not a valid archive of the requested type.
    #[error("object {key} is not a valid archive of the requested type")]
    Invalid {
        /// The key.
        key: Key,
        /// What validation found.
        #[source]
        source: Cause,
    },
    /// Reaching or talking to the owner failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why a set failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetError {
    /// The key already holds an object.
    #[error("object {0} is already set")]
    AlreadySet(Key),
    /// The key was never reserved at its owner (or was evicted).
    #[error("key {0} is not reserved at its owner")]
    NotReserved(Key),
    /// The owner's memory limit leaves no room for the object.
    #[error("store full: {0}")]
    StoreFull(String),
    /// Reaching or talking to the owner failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why no server could be found or started for this node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The fleet file could not be used.
    #[error("fleet file {path}")]
    Fleet {
        /// The file.
        path: String,
        /// What was wrong.
        #[source]
        source: Cause,
    },
    /// No server runs on this node and spawning is disabled.
    #[error("no dimstore server for node `{node}` (runtime dir {runtime_dir}) and spawning is disabled (DIMSTORE_SPAWN=never)")]
    NoServer {
        /// Node identity.
        node: String,
        /// Runtime directory searched.
        runtime_dir: String,
    },
    /// Spawning a server failed.
    #[error("cannot start a dimstore server for node `{node}`")]
    Spawn {
        /// Node identity.
        node: String,
        /// What went wrong.
        #[source]
        source: Cause,
    },
    /// The runtime directory, or a file in it, cannot be trusted or used.
    #[error(transparent)]
    RuntimeDir(#[from] crate::runtime_dir::RuntimeDirError),
    /// The server was found but the handshake failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;
    use std::net::TcpListener;

    use super::*;
    use crate::{chain, ClientConfig, Store};

    #[test]
    fn an_unreachable_server_keeps_the_systems_error_as_the_source() {
        // A port nobody listens on any more.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("address").port()
        };
        let address = format!("127.0.0.1:{port}");
        let e = Store::connect(&address, ClientConfig::default()).expect_err("nobody listens");
        let ConnectError::Request(request @ RequestError::Unreachable { .. }) = &e else {
            panic!("expected Unreachable, got {e:?}");
        };
        let io = request
            .source()
            .and_then(|s| s.downcast_ref::<io::Error>())
            .unwrap_or_else(|| panic!("no io::Error under {}", chain(&e)));
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        // Each cause once, outermost first.
        assert_eq!(
            chain(&e).to_string(),
            format!("server {address} is unreachable: {io}")
        );
    }
}
