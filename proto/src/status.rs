//! Status codes: the wire form of every error a server can report.

use rkyv::{Archive, Deserialize, Serialize};

/// Outcome class of a request or of one item of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Archive, Serialize, Deserialize)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u16)]
pub enum Status {
    /// No object under that id.
    NotFound,
    /// The server's memory limit does not leave room for the object.
    StoreFull,
    /// A deferred object was not set within the wait the client asked for.
    Timeout,
    /// The request was malformed or inconsistent (sizes not matching the payload, ...).
    BadRequest,
    /// The connection did not present the fleet's token.
    Unauthorized,
    /// The object, or the request (a batch, a count, a field), is larger than anything
    /// this server accepts.
    TooLarge,
    /// `set` on a key that already holds an object.
    AlreadySet,
    /// The server is shutting down.
    ShuttingDown,
    /// A bug or resource failure inside the server.
    Internal,
    /// `Invoke` named a module by a hash the server has not cached: send the module's bytes.
    ModuleUnknown,
    /// The module is not valid WebAssembly, does not fit the host interface (imports other
    /// than `dimstore`'s, no `memory` export), or lacks the function asked for.
    InvalidModule,
    /// The function trapped (unreachable, an out-of-bounds access of its own memory, ...).
    FunctionTrapped,
    /// The function ran past its deadline (fuel or time) and was stopped.
    FunctionDeadline,
    /// The function went over a limit of the sandbox: its memory or its output.
    FunctionLimit,
    /// This server does not run functions (`--functions off`, or built without them).
    FunctionsDisabled,
    /// The object was stored but is gone, and not by a client's evict: the server evicted
    /// it (memory pressure, its time to live or lease ran out, its owner was released or
    /// closed), or a get-and-evict consumed it.
    Evicted,
}

/// An error answer: a status and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Archive, Serialize, Deserialize, thiserror::Error)]
#[rkyv(derive(Debug))]
#[error("{status:?}: {message}")]
pub struct ErrorReply {
    /// Machine-readable class.
    pub status: Status,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorReply {
    /// Builds an error reply.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        ErrorReply {
            status,
            message: message.into(),
        }
    }
}
