//! Requests over UCX active messages ([`dimstore_transport::channel`]): [`server`], the
//! exporter's fabric thread receiving requests and sending replies; [`client`], the reader's
//! fabric thread sending requests and matching their replies.

pub(crate) mod client;
pub(crate) mod server;
