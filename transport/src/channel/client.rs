//! Requests over a fabric's own messages (UCX active messages): the client's side.
//!
//! A [`ChannelConnection`] sends every request as a fabric message to the server's channel
//! (see [`super::server`]) through a [`Messenger`], and keeps the TCP connection the channel
//! was opened from: the server closes the channel when that connection closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use dimstore_proto::{
    decode_response, encode_request, FrameHeader, FrameKind, FrameLimits, Request, HEADER_LEN,
};
use rkyv::util::AlignedVec;

use super::server::CHANNEL_PREFIX;
use crate::{AlignedBuf, Connection, ReplyFrame, TransportError};

/// A fabric that carries request messages to servers and their replies back.
pub trait Messenger: Send + Sync + 'static {
    /// Transport name (`"ucx"`).
    fn name(&self) -> &'static str;

    /// This process's address on the fabric, where servers send replies.
    fn address(&self) -> Vec<u8>;

    /// A request id unique in this process (replies are matched by it).
    fn next_request_id(&self) -> u64;

    /// Sends a request message (`head`: channel id and frame head; `payload`) to the server
    /// at `peer` and waits until `deadline` for the reply to request `request_id`: its frame
    /// head and payload. A reply whose head or payload exceeds `limits` is refused (with
    /// [`TransportError::Frame`]) before anything is allocated for it. While waiting it asks
    /// `gone` now and then whether the server is known to be dead (fabrics such as shared
    /// memory cannot tell), and then fails with [`TransportError::ConnectionLost`].
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        peer: &[u8],
        head: Vec<u8>,
        payload: Vec<u8>,
        request_id: u64,
        limits: FrameLimits,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<(Vec<u8>, AlignedBuf), TransportError>;

    /// Sends a notice message (no reply) to the server at `peer`.
    fn notify(&self, peer: &[u8], head: Vec<u8>, deadline: Instant) -> Result<(), TransportError>;
}

/// A connection whose requests travel on a server's channel over a [`Messenger`].
pub struct ChannelConnection<C> {
    /// The TCP connection the channel was opened from; kept open for the channel's sake.
    control: C,
    messenger: std::sync::Arc<dyn Messenger>,
    peer: Vec<u8>,
    channel: u64,
    broken: AtomicBool,
}

impl<C: Connection> ChannelConnection<C> {
    /// Sends requests on channel `channel` of the server at `peer` (its fabric address),
    /// opened from `control`.
    pub fn new(
        control: C,
        messenger: std::sync::Arc<dyn Messenger>,
        peer: Vec<u8>,
        channel: u64,
    ) -> Self {
        ChannelConnection {
            control,
            messenger,
            peer,
            channel,
            broken: AtomicBool::new(false),
        }
    }

    /// The message header of `request` with `payload_len` payload bytes: the channel id,
    /// then the frame head.
    fn head(&self, kind: FrameKind, id: u64, request: &Request, payload_len: usize) -> Vec<u8> {
        let body = encode_request(request);
        let mut head = Vec::with_capacity(CHANNEL_PREFIX + HEADER_LEN + body.len());
        head.extend_from_slice(&self.channel.to_le_bytes());
        FrameHeader::write_head(&mut head, kind, id, &body, payload_len as u64);
        head
    }

    /// Marks the connection broken after errors that leave the channel unusable.
    fn note(&self, e: TransportError) -> TransportError {
        if !matches!(e, TransportError::Timeout) {
            self.broken.store(true, Ordering::Relaxed);
        }
        e
    }

    /// Decodes a reply message, checked against `limits`.
    fn reply(
        &self,
        id: u64,
        head: &[u8],
        payload: AlignedBuf,
        limits: &FrameLimits,
    ) -> Result<ReplyFrame, TransportError> {
        let lost = |why: String| TransportError::ConnectionLost(why.into());
        let (header, body_bytes) = FrameHeader::decode_head(head, limits)?;
        if header.kind != FrameKind::Response
            || header.request_id != id
            || header.payload_len != payload.len() as u64
        {
            return Err(lost(format!(
                "reply frame does not match request {id}: {header:?}, {} payload bytes",
                payload.len()
            )));
        }
        let mut body = AlignedVec::<16>::with_capacity(body_bytes.len());
        body.extend_from_slice(body_bytes);
        let response = decode_response(&body)?;
        Ok(ReplyFrame {
            response,
            payload,
            fds: Vec::new(),
        })
    }
}

impl<C: Connection> Connection for ChannelConnection<C> {
    fn call(
        &self,
        request: &Request,
        payload: &[&[u8]],
        reply_payload: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        let id = self.messenger.next_request_id();
        let limits = crate::reply_limits(request, reply_payload);
        let len = payload.iter().map(|p| p.len()).sum();
        // The messenger owns what it sends until the fabric is done with it.
        let mut bytes = Vec::with_capacity(len);
        for piece in payload {
            bytes.extend_from_slice(piece);
        }
        let head = self.head(FrameKind::Request, id, request, len);
        let (head, payload) = self
            .messenger
            .call(&self.peer, head, bytes, id, limits, deadline, &|| {
                self.control.peer_closed()
            })
            .map_err(|e| self.note(e))?;
        self.reply(id, &head, payload, &limits)
            .map_err(|e| self.note(e))
    }

    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError> {
        let id = self.messenger.next_request_id();
        let head = self.head(FrameKind::Notice, id, request, 0);
        self.messenger
            .notify(&self.peer, head, deadline)
            .map_err(|e| self.note(e))
    }

    fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.control.is_broken()
    }

    fn peer_closed(&self) -> bool {
        self.is_broken() || self.control.peer_closed()
    }
}
