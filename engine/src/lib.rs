//! The dimstore request engine, sans-IO.
//!
//! Every server transport runs the same protocol on a connection: decode a frame head,
//! check it ([`FrameLimits`](dimstore_proto::FrameLimits), pre-authentication limits, then
//! [`RequestLimits`](dimstore_proto::RequestLimits) on the archive), ask the [`Service`]
//! where the payload lands, dispatch the request and lay out the answer with the request's
//! id. This crate holds that protocol once, as state machines that do no I/O, read no clock
//! and spawn nothing: bytes or messages go in, [`Action`]s come out, and time is passed in
//! as `now` arguments (the quinn-proto pattern).
//!
//! - [`StreamEngine`]: one byte-stream connection (TCP, Unix socket). The driver reads into
//!   [`StreamEngine::recv_buffer`] (the header, the body, the payload's own memory),
//!   reports what arrived, and carries out the actions: replies to send, deferred replies
//!   to await, the close (with its delay after a refused `Hello`), and the deadline to arm
//!   ([`StreamEngine::poll_timeout`]).
//! - [`MessageEngine`]: requests carried whole on a fabric's own messages (a frame head
//!   per message, the payload with it or announced), for channels opened from an
//!   authenticated connection ([`ChannelTable`]).
#![forbid(unsafe_code)]

mod admission;
pub mod channels;
mod message;
mod outgoing;
mod service;
mod stream;

pub use admission::{Admitted, Answer};
pub use channels::{ChannelGuard, ChannelTable};
pub use message::{MessageEngine, MessageHead, Refusal};
pub use outgoing::{Outgoing, ReplyTo, COALESCE_LIMIT};
pub use service::{DeferredReply, Outcome, PeerInfo, Reply, Service};
pub use stream::{
    Action, Closing, ServeOptions, StreamEngine, StreamError, AUTH_FAILURE_DELAY, PROGRESS_CHUNK,
};

#[cfg(test)]
mod testing;
