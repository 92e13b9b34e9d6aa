//! Requests carried whole on a fabric's own messages (UCX active messages), sans-IO.
//!
//! A message holds one frame head (header and body); its payload comes with it or is
//! announced and received later into the request's own memory. Channels are opened from an
//! authenticated connection, so there is no handshake here: the checks are the frame limits,
//! the payload the message really carries, and the request limits.

use dimstore_proto::{ErrorReply, FrameHeader, FrameKind, FrameLimits, RequestLimits};
use rkyv::util::AlignedVec;

use crate::admission::{answers, bad_request};
use crate::{Admitted, Outgoing, Reply, Service};

/// Why a request was not admitted: the answer to send (boxed: it is large and rare), `None`
/// for a notice, which gets none.
pub type Refusal<T> = Option<Box<Outgoing<T>>>;

/// The checks every request message goes through, before and after its channel is known.
#[derive(Debug, Clone, Copy)]
pub struct MessageEngine {
    limits: FrameLimits,
    requests: RequestLimits,
}

/// A request message's frame head that passed the frame checks.
#[derive(Debug)]
pub struct MessageHead<'h> {
    header: FrameHeader,
    body: &'h [u8],
}

impl MessageHead<'_> {
    /// The request's id, echoed by its reply.
    pub fn request_id(&self) -> u64 {
        self.header.request_id
    }

    /// The answer refusing the request with `error`; `None` for a notice, which gets none.
    pub fn refuse<T: AsRef<[u8]>>(&self, error: ErrorReply) -> Option<Outgoing<T>> {
        answers(&self.header).then(|| error_reply(self.header.request_id, error))
    }
}

impl MessageEngine {
    /// Enforcing `limits` on every frame head and `requests` on every request.
    pub fn new(limits: FrameLimits, requests: RequestLimits) -> Self {
        MessageEngine { limits, requests }
    }

    /// Checks a message's frame `head` (header, then exactly its body) against the limits,
    /// its kind (requests and notices only) and the `payload_len` bytes of payload the
    /// message carries or announces. The error is the answer (`BadRequest`, naming the
    /// request id when the header has one).
    pub fn head<'h, T: AsRef<[u8]>>(
        &self,
        head: &'h [u8],
        payload_len: usize,
    ) -> Result<MessageHead<'h>, Box<Outgoing<T>>> {
        let refuse = |why: ErrorReply| {
            let id = FrameHeader::peek_request_id(head).unwrap_or_default();
            Box::new(error_reply(id, why))
        };
        let (header, body) =
            FrameHeader::decode_head(head, &self.limits).map_err(|e| refuse(bad_request(e)))?;
        if header.kind == FrameKind::Response {
            return Err(refuse(bad_request("server accepts only request frames")));
        }
        if header.payload_len != payload_len as u64 {
            return Err(refuse(bad_request(format!(
                "frame header announces {} payload bytes, the message carries {payload_len}",
                header.payload_len
            ))));
        }
        Ok(MessageHead { header, body })
    }

    /// Decodes the request of `head` within the request limits and allocates its payload's
    /// memory in `session`. The error is the answer to send (`None` for a notice).
    pub fn admit<S: Service>(
        &self,
        service: &S,
        session: &mut S::Session,
        head: &MessageHead<'_>,
    ) -> Result<Admitted<S>, Refusal<S::Source>> {
        let mut aligned = AlignedVec::<16>::with_capacity(head.body.len());
        aligned.extend_from_slice(head.body);
        Admitted::admit(service, session, &head.header, &aligned, &self.requests)
            .map_err(|e| head.refuse(e).map(Box::new))
    }
}

/// An error answer without payload.
fn error_reply<T: AsRef<[u8]>>(request_id: u64, error: ErrorReply) -> Outgoing<T> {
    Outgoing::new(request_id, Reply::error(error), 0)
}

#[cfg(test)]
mod tests {
    use dimstore_proto::{ObjectId, Request, Response, Status};

    use super::*;
    use crate::testing::{frame, read_reply, status_of, TestService, TestSession};
    use crate::Answer;

    fn engine() -> MessageEngine {
        MessageEngine::new(
            FrameLimits {
                max_body: 1 << 20,
                max_payload: 1 << 20,
            },
            RequestLimits {
                max_batch: 16,
                ..RequestLimits::default()
            },
        )
    }

    fn greeted() -> TestSession {
        TestSession {
            greeted: true,
            handled: 0,
        }
    }

    /// The frame head of a message: the frame without its payload.
    fn head(kind: FrameKind, id: u64, request: &Request, payload_len: usize) -> Vec<u8> {
        let mut whole = frame(kind, id, request, &vec![0; payload_len]);
        whole.truncate(whole.len() - payload_len);
        whole
    }

    /// Checks, admits and dispatches a request whose payload came with it.
    fn handle(
        service: &TestService,
        session: &mut TestSession,
        head: &[u8],
        payload: &[u8],
    ) -> Option<Outgoing<Vec<u8>>> {
        let engine = engine();
        let checked = match engine.head(head, payload.len()) {
            Ok(checked) => checked,
            Err(refusal) => return Some(*refusal),
        };
        let mut admitted = match engine.admit(service, session, &checked) {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.map(|r| *r),
        };
        admitted.fill(payload);
        match admitted.dispatch(service, session, 0) {
            Answer::Now(outgoing) => Some(outgoing),
            Answer::Refused(outgoing) => outgoing,
            Answer::Silent => None,
            Answer::Later(..) => panic!("not deferred here"),
        }
    }

    #[test]
    fn requests_reach_the_service_and_answer_with_their_ids() {
        let service = TestService::default();
        let mut session = greeted();
        let exists = Request::Exists {
            ids: vec![ObjectId(1), ObjectId(2)],
        };
        let h = head(FrameKind::Request, 5, &exists, 0);
        let reply = handle(&service, &mut session, &h, &[]).expect("a reply");
        assert_eq!(
            read_reply(&reply),
            (
                5,
                Response::Exists {
                    present: vec![true, true]
                },
                Vec::new()
            )
        );
        // Several pieces: filled from one buffer, echoed back apart from the head.
        let put = head(
            FrameKind::Request,
            7,
            &Request::Put { sizes: vec![2, 3] },
            5,
        );
        let echoed = handle(&service, &mut session, &put, b"hello").expect("a reply");
        let (reply_head, payload) = echoed.into_message();
        assert_eq!(payload, b"hello");
        assert_eq!(FrameHeader::peek_request_id(&reply_head), Some(7));
        // One piece: a fabric receives straight into it.
        let one = head(FrameKind::Request, 8, &Request::Put { sizes: vec![4] }, 4);
        let engine = engine();
        let checked = engine.head::<Vec<u8>>(&one, 4).expect("valid");
        let mut admitted = engine.admit(&service, &mut session, &checked).expect("ok");
        admitted
            .destination()
            .expect("one piece")
            .copy_from_slice(b"abcd");
        let Answer::Now(reply) = admitted.dispatch(&service, &mut session, 0) else {
            panic!("answered now")
        };
        assert_eq!(read_reply(&reply).2, b"abcd");
        // A notice is handled, not answered.
        let notice = head(FrameKind::Notice, 9, &exists, 0);
        assert!(handle(&service, &mut session, &notice, &[]).is_none());
        assert_eq!(session.handled, 4);
    }

    #[test]
    fn hostile_messages_get_typed_errors_naming_their_request() {
        let service = TestService::default();
        let mut session = greeted();
        let exists = Request::Exists {
            ids: vec![ObjectId(1)],
        };
        let mut refused = |head: &[u8], payload: &[u8]| {
            let reply = handle(&service, &mut session, head, payload).expect("a refusal");
            (read_reply(&reply).0, status_of(&reply))
        };
        // Garbage with an id in place.
        let mut garbage = vec![0xff; 40];
        garbage[8..16].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(refused(&garbage, &[]), (9, Status::BadRequest));
        // Another payload than the header announces.
        let h = head(FrameKind::Request, 10, &exists, 0);
        assert_eq!(refused(&h, b"abc"), (10, Status::BadRequest));
        // Over the frame limits.
        let huge = Request::Put {
            sizes: vec![2 << 20],
        };
        let huge = head(FrameKind::Request, 11, &huge, 2 << 20);
        assert_eq!(refused(&huge, &vec![0; 2 << 20]), (11, Status::BadRequest));
        // Counts over the request limits.
        let many = Request::Exists {
            ids: (0..17).map(ObjectId).collect(),
        };
        assert_eq!(
            refused(&head(FrameKind::Request, 12, &many, 0), &[]),
            (12, Status::TooLarge)
        );
        let keys = Request::NewKeys { count: u32::MAX };
        assert_eq!(
            refused(&head(FrameKind::Request, 13, &keys, 0), &[]),
            (13, Status::TooLarge)
        );
        // A response frame; a head cut short.
        assert_eq!(
            refused(&head(FrameKind::Response, 14, &exists, 0), &[]),
            (14, Status::BadRequest)
        );
        assert_eq!(refused(&h[..20], &[]), (10, Status::BadRequest));
        // A payload with no place to land, a put the store has no room for.
        assert_eq!(
            refused(&head(FrameKind::Request, 15, &exists, 3), b"abc"),
            (15, Status::BadRequest)
        );
        // Refused notices stay silent.
        let notice = head(FrameKind::Notice, 16, &many, 0);
        assert!(handle(&service, &mut session, &notice, &[]).is_none());
        assert_eq!(session.handled, 0, "none reached the service");
    }
}
