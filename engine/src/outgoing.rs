//! Replies laid out for sending: the frame head naming the request, then the payload.

use std::os::fd::OwnedFd;

use dimstore_proto::{encode_response, FrameHeader, FrameKind, Response};

use crate::Reply;

/// Payloads up to this size are copied into a stream reply's head and sent in one write.
pub const COALESCE_LIMIT: usize = 64 << 10;

/// A reply to one request, laid out for sending: [`head`](Self::head) (frame header and
/// body, plus the payload when it was small enough to coalesce), then the pieces of
/// [`rest`](Self::rest), which stay leases on object memory until the value is dropped.
#[derive(Debug)]
pub struct Outgoing<T> {
    head: Vec<u8>,
    coalesced: bool,
    reply: Reply<T>,
}

impl<T: AsRef<[u8]>> Outgoing<T> {
    /// `reply` to request `request_id`; a payload of at most `coalesce_limit` bytes is
    /// copied into the head.
    pub fn new(request_id: u64, reply: Reply<T>, coalesce_limit: usize) -> Self {
        let payload_len = payload_len(&reply);
        let coalesced = payload_len <= coalesce_limit;
        let body = encode_response(&reply.response);
        let mut head = Vec::with_capacity(
            dimstore_proto::HEADER_LEN + body.len() + if coalesced { payload_len } else { 0 },
        );
        FrameHeader::write_head(
            &mut head,
            FrameKind::Response,
            request_id,
            &body,
            payload_len as u64,
        );
        if coalesced {
            for piece in &reply.payload {
                head.extend_from_slice(piece.as_ref());
            }
        }
        Outgoing {
            head,
            coalesced,
            reply,
        }
    }

    /// The frame header and body (and the payload, if coalesced).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The payload pieces still to send after the head.
    pub fn rest(&self) -> impl Iterator<Item = &[u8]> {
        let pieces = if self.coalesced {
            &[][..]
        } else {
            &self.reply.payload[..]
        };
        pieces.iter().map(AsRef::as_ref)
    }

    /// File descriptors to pass along with the head (same-node transports).
    pub fn fds(&self) -> &[OwnedFd] {
        &self.reply.fds
    }

    /// The response sent.
    pub fn response(&self) -> &Response {
        &self.reply.response
    }

    /// Object bytes the reply carries, to count as sent once it left (0 for an error).
    pub fn object_bytes(&self) -> u64 {
        if matches!(self.reply.response, Response::Error(_)) {
            0
        } else {
            payload_len(&self.reply) as u64
        }
    }

    /// The head and, if not coalesced, the payload pieces gathered into one buffer.
    pub fn into_message(self) -> (Vec<u8>, Vec<u8>) {
        let payload = self.rest().flatten().copied().collect();
        (self.head, payload)
    }
}

fn payload_len<T: AsRef<[u8]>>(reply: &Reply<T>) -> usize {
    reply.payload.iter().map(|p| p.as_ref().len()).sum()
}

/// Where a deferred reply goes once it is ready: the request it answers.
#[derive(Debug, Clone, Copy)]
pub struct ReplyTo {
    request_id: u64,
    answers: bool,
    coalesce_limit: usize,
}

impl ReplyTo {
    pub(crate) fn new(request_id: u64, answers: bool, coalesce_limit: usize) -> Self {
        ReplyTo {
            request_id,
            answers,
            coalesce_limit,
        }
    }

    /// The request's id.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The reply laid out for sending; `None` for a notice, which gets no answer.
    pub fn outgoing<T: AsRef<[u8]>>(self, reply: Reply<T>) -> Option<Outgoing<T>> {
        self.answers
            .then(|| Outgoing::new(self.request_id, reply, self.coalesce_limit))
    }
}
