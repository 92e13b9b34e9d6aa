//! The dimstore wire protocol, sans-IO.
//!
//! Everything that crosses a connection is defined here and nothing else: no sockets, no
//! runtime, no clock, no `unsafe`. A frame is a fixed 32-byte [`FrameHeader`], an rkyv-archived
//! message body (validated with bytecheck on receipt, see [`message`]) and an optional raw
//! payload (object bytes, never copied through the serializer).
//!
//! Keys ([`Key`]) are what users see: they name the owning server and the object.
#![forbid(unsafe_code)]

pub mod discovery;
pub mod frame;
pub mod key;
pub mod limits;
// rkyv's derive emits undocumented helper types for enum variants; every item written
// here is documented by hand.
#[allow(missing_docs)]
pub mod message;
pub mod op_stats;
pub mod status;

pub use discovery::ReadyFile;
pub use frame::{FrameDecoder, FrameError, FrameHeader, FrameKind, FrameLimits, HEADER_LEN};
pub use key::{Key, KeyParseError, ObjectId};
pub use limits::{
    decode_request_within, LimitError, RequestError, RequestLimits, MAX_LIFETIME_MS,
    PRE_AUTH_MAX_BODY,
};
pub use message::{
    decode_request, decode_response, encode_request, encode_response, DecodeError, FunctionStats,
    GetItem, Hello, HelloReply, Invoke, Invoked, ModuleHash, OneSidedOffer, PressureStats,
    PutOptions, Request, Reservation, Response, SegmentInfo, SegmentKey, ServerStats,
    TransportStats,
};
pub use op_stats::{format_nanos, OpStats, MAX_OP_STATS};
pub use status::{ErrorReply, Status};

/// Protocol version carried in every frame header; a peer speaking another version is refused.
pub const PROTOCOL_VERSION: u16 = 2;
