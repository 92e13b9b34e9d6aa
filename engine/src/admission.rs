//! The steps every request takes, whatever carries it: a checked header and body become an
//! admitted request (decoded within the request limits, its payload's memory allocated by
//! the service), which is then dispatched.

use dimstore_proto::{
    decode_request_within, ErrorReply, FrameHeader, FrameKind, Request, RequestLimits, Response,
    Status,
};

use crate::{DeferredReply, Outcome, Outgoing, ReplyTo, Service};

/// A request that passed every check and whose payload memory is allocated: it waits for
/// its payload, then is [dispatched](Self::dispatch).
pub struct Admitted<S: Service> {
    request_id: u64,
    answers: bool,
    request: Request,
    sinks: Vec<S::Sink>,
}

/// What a dispatched request produced.
pub enum Answer<T> {
    /// A reply to send now.
    Now(Outgoing<T>),
    /// A reply refusing the peer's credentials (`Unauthorized`); `None` for a notice.
    Refused(Option<Outgoing<T>>),
    /// Nothing to send (a notice).
    Silent,
    /// A reply that comes later: await it, then lay it out with the [`ReplyTo`].
    Later(DeferredReply<T>, ReplyTo),
}

impl<S: Service> Admitted<S> {
    /// Decodes `body` (16-byte aligned) of the frame `header` within `requests`, then asks
    /// `service` where the payload lands. The error is the answer to send, after the
    /// payload was dropped (if the frame asks for one: see [`answers`]).
    pub(crate) fn admit(
        service: &S,
        session: &mut S::Session,
        header: &FrameHeader,
        body: &[u8],
        requests: &RequestLimits,
    ) -> Result<Self, ErrorReply> {
        let request = decode_request_within(body, requests)?;
        let sinks = service.payload_sinks(session, &request, header.payload_len)?;
        Ok(Admitted {
            request_id: header.request_id,
            answers: answers(header),
            request,
            sinks,
        })
    }

    /// The request.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The request's id, echoed by its reply.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// The memory the payload lands in, piece by piece (lengths add up to the payload's).
    pub(crate) fn sinks_mut(&mut self) -> &mut [S::Sink] {
        &mut self.sinks
    }

    /// The length of payload piece `index`, if there is one.
    pub(crate) fn sink_len(&mut self, index: usize) -> Option<usize> {
        self.sinks.get_mut(index).map(|s| s.as_mut().len())
    }

    /// The memory the whole payload lands in when it is one piece (a put of one object),
    /// for a fabric to receive into directly; `None` otherwise.
    pub fn destination(&mut self) -> Option<&mut [u8]> {
        match &mut self.sinks[..] {
            [only] => Some(only.as_mut()),
            _ => None,
        }
    }

    /// Copies a payload received in one piece into the request's memory.
    pub fn fill(&mut self, mut payload: &[u8]) {
        for sink in &mut self.sinks {
            let sink = sink.as_mut();
            let (now, after) = payload.split_at(sink.len().min(payload.len()));
            sink[..now.len()].copy_from_slice(now);
            payload = after;
        }
    }

    /// Hands the request and its payload to `service`; replies are laid out with payloads
    /// up to `coalesce_limit` bytes copied into their head.
    pub fn dispatch(
        self,
        service: &S,
        session: &mut S::Session,
        coalesce_limit: usize,
    ) -> Answer<S::Source> {
        let Admitted {
            request_id,
            answers,
            request,
            sinks,
        } = self;
        let reply_to = ReplyTo::new(request_id, answers, coalesce_limit);
        match service.handle(session, request, sinks) {
            Outcome::Ready(reply) if refuses_peer(&reply.response) => {
                Answer::Refused(reply_to.outgoing(reply))
            }
            Outcome::Ready(reply) => match reply_to.outgoing(reply) {
                Some(outgoing) => Answer::Now(outgoing),
                None => Answer::Silent,
            },
            Outcome::Deferred(later) => Answer::Later(later, reply_to),
        }
    }
}

/// Whether a frame gets an answer: requests do, notices do not.
pub(crate) fn answers(header: &FrameHeader) -> bool {
    header.kind == FrameKind::Request
}

/// Whether `response` refuses the peer's credentials.
fn refuses_peer(response: &Response) -> bool {
    matches!(response, Response::Error(e) if e.status == Status::Unauthorized)
}

/// A `BadRequest` saying why.
pub(crate) fn bad_request(why: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(Status::BadRequest, why.to_string())
}
