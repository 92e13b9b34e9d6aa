//! Requests carried on a fabric's own messages (UCX active messages) instead of the TCP
//! connection: two-sided RPC next to the one-sided data planes of [`crate::onesided`].
//!
//! A client opens a *channel* from its authenticated TCP connection
//! ([`dimstore_proto::Request::OpenChannel`]); the server keeps it in the service's
//! [`ChannelTable`] until that connection closes. [`server`]: the fabric thread hands each
//! request message to an [`RpcHost`], which checks, admits and dispatches it through the
//! request engine ([`dimstore_engine::MessageEngine`]). [`client`]: a [`ChannelConnection`]
//! sends requests through a fabric's [`Messenger`] and reads the replies like any other
//! connection's.

pub mod client;
pub mod server;

pub use client::{ChannelConnection, Messenger};
pub use server::{
    ChannelGuard, ChannelTable, IncomingRequest, LaterReply, RpcHost, RpcReply, ServiceHost,
    CHANNEL_PREFIX,
};
