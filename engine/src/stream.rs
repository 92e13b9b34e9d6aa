//! One byte-stream connection (TCP, Unix socket), sans-IO.
//!
//! A connection is hostile until its `Hello` succeeded: until then frames are held to
//! [`FrameLimits::pre_auth`] (a small body, no payload), the `Hello` must arrive within the
//! stall timeout of connecting, and a refused `Hello` is answered, and the connection
//! closed, only after [`AUTH_FAILURE_DELAY`]. Once a frame has started it must flow: each
//! [`PROGRESS_CHUNK`] of it within the stall timeout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use dimstore_proto::{FrameError, FrameHeader, FrameKind, FrameLimits, RequestLimits, HEADER_LEN};
use rkyv::util::AlignedVec;

use crate::admission::{answers, bad_request};
use crate::{Admitted, Answer, DeferredReply, Outgoing, Reply, ReplyTo, Service, COALESCE_LIMIT};

/// How long a refused `Hello` waits before its answer and the close: a peer guessing tokens
/// gets one guess per connection and per delay.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);

/// Once a frame has started, this many bytes of it (or the rest of the part being read,
/// if less) must arrive within each stall timeout.
pub const PROGRESS_CHUNK: usize = 4 << 20;

/// Bytes of a refused request's payload dropped per read.
const DISCARD_CHUNK: usize = 64 << 10;

/// How a server treats its stream peers.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Limits enforced on every frame header of an authenticated connection before anything
    /// is allocated (before authentication: [`FrameLimits::pre_auth`]).
    pub limits: FrameLimits,
    /// Bounds on the counts inside each request, checked before it is decoded.
    pub requests: RequestLimits,
    /// Once a frame has started, each chunk of it must arrive within this time; each chunk
    /// of a reply must be taken by the peer within it; and a new connection must complete
    /// its `Hello` within it. Otherwise the connection is closed (and memory reserved for a
    /// payload or pinned by the session freed). Authenticated connections idle between
    /// frames are not affected.
    pub stall_timeout: Duration,
}

/// Why the engine ended a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A frame header the limits refuse: the stream cannot be resynchronised.
    #[error("refused frame")]
    Frame(#[from] FrameError),
    /// The peer closed the connection in the middle of a frame.
    #[error("peer closed the connection in the middle of a frame")]
    Truncated,
    /// A frame stopped flowing.
    #[error("peer stalled for {0:?} in the middle of a frame")]
    Stalled(Duration),
    /// No successful `Hello` in time.
    #[error("no Hello within {0:?} of connecting")]
    NoHello(Duration),
    /// The `Hello` was refused.
    #[error("Hello refused (wrong or missing token)")]
    Unauthorized,
}

/// The last thing a connection does.
#[derive(Debug)]
pub struct Closing<T> {
    /// A reply to send before closing.
    pub last: Option<Outgoing<T>>,
    /// Send it (and close) no earlier than this.
    pub not_before: Option<Instant>,
    /// Why: `Ok` when the peer closed between frames or sent a response frame.
    pub end: Result<(), StreamError>,
}

/// What the driver of a [`StreamEngine`] must do, in order.
pub enum Action<T> {
    /// Send this reply. Its payload pieces are leases: hold them until the bytes left.
    Send(Outgoing<T>),
    /// Await this reply without holding up the connection, then send what the
    /// [`ReplyTo`] makes of it (nothing for a notice).
    Defer(DeferredReply<T>, ReplyTo),
    /// Close the connection (after sending the last reply, if any). Nothing follows.
    Close(Closing<T>),
}

/// The part of a frame being read.
enum Stage<S: Service> {
    /// A header: `filled` of its bytes arrived.
    Header {
        raw: [u8; HEADER_LEN],
        filled: usize,
    },
    /// The body of the frame `header`.
    Body {
        header: FrameHeader,
        body: AlignedVec<16>,
        filled: usize,
    },
    /// The payload of an admitted request, landing in its sinks.
    Payload {
        admitted: Admitted<S>,
        sink: usize,
        filled: usize,
    },
    /// The payload of a refused request, dropped; then `refusal` is the answer.
    Discard {
        request_id: u64,
        answers: bool,
        left: u64,
        refusal: dimstore_proto::ErrorReply,
    },
    /// Closed: nothing more is read.
    Closed,
}

/// The stall deadline of the frame being read.
#[derive(Debug, Default)]
struct Progress {
    /// Bytes that must still arrive by `by`.
    left: usize,
    by: Option<Instant>,
}

/// The protocol state of one stream connection: its session, the frame being read, the
/// deadlines, and the actions its driver must carry out.
pub struct StreamEngine<S: Service> {
    session: S::Session,
    options: ServeOptions,
    authenticated: bool,
    hello_by: Instant,
    stage: Stage<S>,
    progress: Progress,
    scratch: Vec<u8>,
    actions: VecDeque<Action<S::Source>>,
}

impl<S: Service> StreamEngine<S> {
    /// A connection opened at `now` with `session`.
    pub fn new(service: &S, session: S::Session, options: ServeOptions, now: Instant) -> Self {
        StreamEngine {
            authenticated: service.authenticated(&session),
            session,
            options,
            hello_by: now + options.stall_timeout,
            stage: Stage::Header {
                raw: [0; HEADER_LEN],
                filled: 0,
            },
            progress: Progress::default(),
            scratch: Vec::new(),
            actions: VecDeque::new(),
        }
    }

    /// The connection's session.
    pub fn session(&self) -> &S::Session {
        &self.session
    }

    /// Where the next bytes read off the connection go: the rest of a header or body, the
    /// payload's own memory, or scratch space for a refused payload. Empty once closed.
    pub fn recv_buffer(&mut self) -> &mut [u8] {
        match &mut self.stage {
            Stage::Header { raw, filled } => &mut raw[*filled..],
            Stage::Body { body, filled, .. } => &mut body[*filled..],
            Stage::Payload {
                admitted,
                sink,
                filled,
            } => &mut admitted.sinks_mut()[*sink].as_mut()[*filled..],
            Stage::Discard { left, .. } => {
                let len = usize::try_from(*left).map_or(DISCARD_CHUNK, |l| l.min(DISCARD_CHUNK));
                if self.scratch.len() < len {
                    self.scratch.resize(len, 0);
                }
                &mut self.scratch[..len]
            }
            Stage::Closed => &mut [],
        }
    }

    /// `n` bytes were read into [`recv_buffer`](Self::recv_buffer) at `now`.
    pub fn received(&mut self, service: &S, n: usize, now: Instant) {
        match &mut self.stage {
            Stage::Header { filled, .. }
            | Stage::Body { filled, .. }
            | Stage::Payload { filled, .. } => *filled += n,
            Stage::Discard { left, .. } => *left -= n as u64,
            Stage::Closed => return,
        }
        if n >= self.progress.left {
            let rest = self.part_left();
            self.arm(rest, now);
        } else {
            self.progress.left -= n;
        }
        self.step(service, now);
    }

    /// The peer closed its side (end of stream).
    pub fn peer_closed(&mut self) {
        let end = match self.stage {
            Stage::Header { filled: 0, .. } => Ok(()),
            Stage::Closed => return,
            _ => Err(StreamError::Truncated),
        };
        self.close(None, None, end);
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called if nothing arrives
    /// before: the `Hello` deadline, or the stall deadline of a frame that started. `None`:
    /// an authenticated connection between frames may idle forever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.stage, Stage::Closed) {
            return None;
        }
        let hello = (!self.authenticated).then_some(self.hello_by);
        match (hello, self.progress.by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: closes the connection if a deadline of
    /// [`poll_timeout`](Self::poll_timeout) is over at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.stage, Stage::Closed) {
            return;
        }
        let stall = self.options.stall_timeout;
        if !self.authenticated && now >= self.hello_by {
            self.close(None, None, Err(StreamError::NoHello(stall)));
        } else if self.progress.by.is_some_and(|by| now >= by) {
            self.close(None, None, Err(StreamError::Stalled(stall)));
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action<S::Source>> {
        self.actions.pop_front()
    }

    /// Whether the connection is closed (the [`Action::Close`] was queued).
    pub fn is_closed(&self) -> bool {
        matches!(self.stage, Stage::Closed)
    }

    /// Bytes of the part being read still to come.
    fn part_left(&mut self) -> usize {
        match &mut self.stage {
            // Between frames nothing is due; once a header started, its rest is.
            Stage::Header { filled: 0, .. } | Stage::Closed => 0,
            Stage::Header { filled, .. } => HEADER_LEN - *filled,
            Stage::Body { body, filled, .. } => body.len() - *filled,
            Stage::Payload {
                admitted,
                sink,
                filled,
            } => admitted.sink_len(*sink).map_or(0, |len| len - *filled),
            Stage::Discard { left, .. } => usize::try_from(*left).unwrap_or(usize::MAX),
        }
    }

    /// Starts the stall deadline for the next `part_left` bytes (none if 0).
    fn arm(&mut self, part_left: usize, now: Instant) {
        self.progress = if part_left == 0 {
            Progress::default()
        } else {
            Progress {
                left: part_left.min(PROGRESS_CHUNK),
                by: Some(now + self.options.stall_timeout),
            }
        };
    }

    /// Moves on through every part that is complete.
    fn step(&mut self, service: &S, now: Instant) {
        loop {
            let stage = std::mem::replace(&mut self.stage, Stage::Closed);
            self.stage = match stage {
                Stage::Header { raw, filled } if filled == HEADER_LEN => match self.header(&raw) {
                    Some(header) => {
                        let mut body = AlignedVec::<16>::with_capacity(header.body_len as usize);
                        body.resize(header.body_len as usize, 0);
                        Stage::Body {
                            header,
                            body,
                            filled: 0,
                        }
                    }
                    None => return,
                },
                Stage::Body {
                    header,
                    body,
                    filled,
                } if filled == body.len() => {
                    let admitted = Admitted::admit(
                        service,
                        &mut self.session,
                        &header,
                        &body,
                        &self.options.requests,
                    );
                    match admitted {
                        Ok(admitted) => Stage::Payload {
                            admitted,
                            sink: 0,
                            filled: 0,
                        },
                        Err(refusal) => Stage::Discard {
                            request_id: header.request_id,
                            answers: answers(&header),
                            left: header.payload_len,
                            refusal,
                        },
                    }
                }
                Stage::Payload {
                    mut admitted,
                    sink,
                    filled,
                } => match admitted.sink_len(sink) {
                    Some(len) if filled < len => {
                        self.stage = Stage::Payload {
                            admitted,
                            sink,
                            filled,
                        };
                        return;
                    }
                    Some(_) => Stage::Payload {
                        admitted,
                        sink: sink + 1,
                        filled: 0,
                    },
                    None => {
                        self.stage = Stage::Header {
                            raw: [0; HEADER_LEN],
                            filled: 0,
                        };
                        self.progress = Progress::default();
                        self.dispatch(service, admitted, now);
                        if self.is_closed() {
                            return;
                        }
                        continue;
                    }
                },
                Stage::Discard {
                    request_id,
                    answers,
                    left: 0,
                    refusal,
                } => {
                    if answers {
                        let reply = Reply::error(refusal);
                        let outgoing = Outgoing::new(request_id, reply, COALESCE_LIMIT);
                        self.actions.push_back(Action::Send(outgoing));
                    }
                    Stage::Header {
                        raw: [0; HEADER_LEN],
                        filled: 0,
                    }
                }
                waiting => {
                    self.stage = waiting;
                    if self.progress.by.is_none() {
                        let rest = self.part_left();
                        self.arm(rest, now);
                    }
                    return;
                }
            };
            // A new part starts: its deadline starts now.
            self.progress = Progress::default();
        }
    }

    /// A complete header, checked against the limits that apply now; `None` if the
    /// connection closes over it.
    fn header(&mut self, raw: &[u8; HEADER_LEN]) -> Option<FrameHeader> {
        const PRE_AUTH: FrameLimits = FrameLimits::pre_auth();
        let limits = if self.authenticated {
            &self.options.limits
        } else {
            &PRE_AUTH
        };
        match FrameHeader::decode(raw, limits) {
            Ok(header) if header.kind == FrameKind::Response => {
                let id = header.request_id;
                let refusal = bad_request("server accepts only request frames");
                let last = Outgoing::new(id, Reply::error(refusal), COALESCE_LIMIT);
                self.close(Some(last), None, Ok(()));
                None
            }
            Ok(header) => Some(header),
            Err(e) => {
                // The stream cannot be resynchronised: say why, then close.
                let id = FrameHeader::peek_request_id(raw).unwrap_or_default();
                let last = Outgoing::new(id, Reply::error(bad_request(&e)), COALESCE_LIMIT);
                self.close(Some(last), None, Err(e.into()));
                None
            }
        }
    }

    /// Hands a request whose payload arrived to the service.
    fn dispatch(&mut self, service: &S, admitted: Admitted<S>, now: Instant) {
        let answer = admitted.dispatch(service, &mut self.session, COALESCE_LIMIT);
        self.authenticated = service.authenticated(&self.session);
        match answer {
            Answer::Now(outgoing) => self.actions.push_back(Action::Send(outgoing)),
            Answer::Silent => {}
            Answer::Later(reply, reply_to) => {
                self.actions.push_back(Action::Defer(reply, reply_to))
            }
            Answer::Refused(last) => {
                // One guess per connection, and not a quick one.
                let not_before = Some(now + AUTH_FAILURE_DELAY);
                self.close(last, not_before, Err(StreamError::Unauthorized));
            }
        }
    }

    fn close(
        &mut self,
        last: Option<Outgoing<S::Source>>,
        not_before: Option<Instant>,
        end: Result<(), StreamError>,
    ) {
        self.stage = Stage::Closed;
        self.progress = Progress::default();
        self.actions.push_back(Action::Close(Closing {
            last,
            not_before,
            end,
        }));
    }
}

#[cfg(test)]
mod tests {
    use dimstore_proto::{ObjectId, Request, Response, Status};

    use super::*;
    use crate::testing::{frame, hello, read_reply, status_of, TestService, MAX_PUT, TOKEN};
    use crate::PeerInfo;

    const STALL: Duration = Duration::from_secs(10);

    /// A connection as its driver sees it: bytes in at a given time, actions out.
    struct Conn {
        service: TestService,
        engine: StreamEngine<TestService>,
        opened: Instant,
    }

    impl Conn {
        fn new() -> Conn {
            let service = TestService::default();
            let session = service.open_session("test", peer());
            let options = ServeOptions {
                limits: FrameLimits {
                    max_body: 64 << 10,
                    max_payload: 4 * MAX_PUT,
                },
                requests: RequestLimits {
                    max_batch: 16,
                    ..RequestLimits::default()
                },
                stall_timeout: STALL,
            };
            let opened = Instant::now();
            let engine = StreamEngine::new(&service, session, options, opened);
            Conn {
                service,
                engine,
                opened,
            }
        }

        fn greeted() -> Conn {
            let mut conn = Conn::new();
            conn.feed(&frame(FrameKind::Request, 1, &hello(TOKEN), &[]), 1);
            let replies = conn.replies();
            assert!(matches!(read_reply(&replies[0]).1, Response::Hello(_)));
            assert!(conn.engine.session().greeted);
            conn
        }

        /// Delivers `bytes` in reads of at most `split` bytes, all at `opened`.
        fn feed(&mut self, bytes: &[u8], split: usize) {
            let now = self.opened;
            self.feed_at(bytes, split, now);
        }

        fn feed_at(&mut self, mut bytes: &[u8], split: usize, now: Instant) {
            while !bytes.is_empty() && !self.engine.is_closed() {
                let buf = self.engine.recv_buffer();
                let n = buf.len().min(bytes.len()).min(split);
                buf[..n].copy_from_slice(&bytes[..n]);
                self.engine.received(&self.service, n, now);
                bytes = &bytes[n..];
            }
        }

        fn actions(&mut self) -> Vec<Action<Vec<u8>>> {
            std::iter::from_fn(|| self.engine.poll_action()).collect()
        }

        /// The replies queued; panics on any other action.
        fn replies(&mut self) -> Vec<Outgoing<Vec<u8>>> {
            self.actions()
                .into_iter()
                .map(|action| match action {
                    Action::Send(outgoing) => outgoing,
                    Action::Defer(..) => panic!("unexpected deferred reply"),
                    Action::Close(c) => panic!("unexpected close: {:?}", c.end),
                })
                .collect()
        }

        /// The one action left, which must be the close.
        fn closing(&mut self) -> Closing<Vec<u8>> {
            let mut actions = self.actions();
            assert_eq!(actions.len(), 1, "one action: the close");
            match actions.remove(0) {
                Action::Close(closing) => {
                    assert!(self.engine.is_closed());
                    assert!(self.engine.recv_buffer().is_empty(), "nothing more is read");
                    closing
                }
                _ => panic!("expected the close"),
            }
        }
    }

    fn peer() -> PeerInfo {
        PeerInfo {
            address: "test".into(),
            uid: None,
        }
    }

    fn exists(n: u128) -> Request {
        Request::Exists {
            ids: (0..n).map(ObjectId).collect(),
        }
    }

    #[test]
    fn requests_are_answered_in_order_with_their_ids_however_the_bytes_are_split() {
        for split in [1, 7, 33, usize::MAX] {
            let mut conn = Conn::greeted();
            let mut wire = frame(
                FrameKind::Request,
                41,
                &Request::Put {
                    sizes: vec![3, 0, 5],
                },
                b"abcdefgh",
            );
            wire.extend(frame(FrameKind::Request, 42, &exists(2), &[]));
            wire.extend(frame(FrameKind::Notice, 43, &exists(1), &[]));
            wire.extend(frame(FrameKind::Request, 44, &Request::Stats, &[]));
            conn.feed(&wire, split);
            let replies: Vec<_> = conn.replies().iter().map(read_reply).collect();
            assert_eq!(replies.len(), 3, "the notice gets no reply");
            assert_eq!(replies[0].0, 41);
            assert_eq!(replies[0].2, b"abcdefgh", "the payload landed in the sinks");
            assert_eq!(
                (replies[1].0, &replies[1].1),
                (
                    42,
                    &Response::Exists {
                        present: vec![true, true]
                    }
                )
            );
            assert_eq!((replies[2].0, &replies[2].1), (44, &Response::Done));
            assert_eq!(conn.engine.session().handled, 5);
            assert_eq!(conn.engine.poll_timeout(), None, "idle between frames");
        }
    }

    #[test]
    fn oversized_frames_before_hello_are_refused_before_anything_is_allocated() {
        let mut conn = Conn::new();
        let big = Request::Put {
            sizes: vec![1; 2048],
        };
        conn.feed(&frame(FrameKind::Request, 7, &big, &[]), usize::MAX);
        let closing = conn.closing();
        assert!(matches!(
            closing.end,
            Err(StreamError::Frame(FrameError::BodyTooLarge { .. }))
        ));
        let last = closing.last.expect("told why");
        assert_eq!(read_reply(&last).0, 7, "the refusal names the request");
        assert_eq!(status_of(&last), Status::BadRequest);

        // No payload before the Hello either, however small.
        let mut conn = Conn::new();
        conn.feed(
            &frame(FrameKind::Request, 8, &hello(TOKEN), b"x"),
            usize::MAX,
        );
        let closing = conn.closing();
        assert!(matches!(
            closing.end,
            Err(StreamError::Frame(FrameError::PayloadTooLarge { .. }))
        ));
        assert_eq!(read_reply(&closing.last.expect("told why")).0, 8);
    }

    #[test]
    fn frames_over_the_limits_close_an_authenticated_connection_too() {
        let mut conn = Conn::greeted();
        let header = FrameHeader {
            kind: FrameKind::Request,
            request_id: 9,
            body_len: 64,
            payload_len: u64::MAX,
        };
        conn.feed(&header.encode(), usize::MAX);
        let closing = conn.closing();
        assert!(matches!(
            closing.end,
            Err(StreamError::Frame(FrameError::PayloadTooLarge { .. }))
        ));
        let header = FrameHeader {
            body_len: u32::MAX,
            payload_len: 0,
            ..header
        };
        let mut conn = Conn::greeted();
        conn.feed(&header.encode(), usize::MAX);
        assert!(matches!(
            conn.closing().end,
            Err(StreamError::Frame(FrameError::BodyTooLarge { .. }))
        ));
    }

    #[test]
    fn refused_payloads_are_discarded_and_the_connection_goes_on() {
        let mut conn = Conn::greeted();
        // A payload the request has no place for.
        let mut wire = frame(FrameKind::Request, 10, &exists(1), &[9; 100]);
        // A put the service refuses (store full), its payload dropped, not stored.
        let too_big = vec![1u8; MAX_PUT as usize + 1];
        let put = Request::Put {
            sizes: vec![too_big.len() as u64],
        };
        wire.extend(frame(FrameKind::Request, 11, &put, &too_big));
        // Counts over the request limits (the batch bound; NewKeys 2^32 - 1).
        wire.extend(frame(FrameKind::Request, 12, &exists(17), &[]));
        wire.extend(frame(
            FrameKind::Request,
            13,
            &Request::NewKeys { count: u32::MAX },
            &[],
        ));
        // A body that is not a request.
        let mut garbage_body = Vec::new();
        FrameHeader::write_head(&mut garbage_body, FrameKind::Request, 14, &[0xee; 40], 3);
        garbage_body.extend_from_slice(b"abc");
        wire.extend(garbage_body);
        wire.extend(frame(FrameKind::Request, 15, &exists(1), &[]));
        conn.feed(&wire, 4096);
        let replies = conn.replies();
        let got: Vec<_> = replies
            .iter()
            .map(|r| (read_reply(r).0, read_reply(r).1))
            .collect();
        let statuses: Vec<_> = replies[..5].iter().map(status_of).collect();
        assert_eq!(
            statuses,
            [
                Status::BadRequest,
                Status::StoreFull,
                Status::TooLarge,
                Status::TooLarge,
                Status::BadRequest
            ]
        );
        let ids: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(
            ids,
            [10, 11, 12, 13, 14, 15],
            "each refusal names its request"
        );
        assert_eq!(
            got[5].1,
            Response::Exists {
                present: vec![true]
            }
        );
        assert_eq!(
            conn.engine.session().handled,
            2,
            "Hello and the last exists"
        );
    }

    #[test]
    fn a_wrong_token_is_answered_late_and_closes_the_connection() {
        let mut conn = Conn::new();
        let mut wire = frame(FrameKind::Request, 3, &hello("guess"), &[]);
        wire.extend(frame(FrameKind::Request, 4, &hello(TOKEN), &[]));
        conn.feed(&wire, usize::MAX);
        let closing = conn.closing();
        assert!(matches!(closing.end, Err(StreamError::Unauthorized)));
        assert_eq!(closing.not_before, Some(conn.opened + AUTH_FAILURE_DELAY));
        let last = closing.last.expect("answered");
        assert_eq!(
            (read_reply(&last).0, status_of(&last)),
            (3, Status::Unauthorized)
        );
        assert!(
            !conn.engine.session().greeted,
            "the second guess was never read"
        );
    }

    #[test]
    fn a_request_before_hello_is_refused_like_a_wrong_token() {
        let mut conn = Conn::new();
        conn.feed(&frame(FrameKind::Request, 5, &exists(1), &[]), usize::MAX);
        let closing = conn.closing();
        assert!(matches!(closing.end, Err(StreamError::Unauthorized)));
        assert_eq!(
            status_of(&closing.last.expect("answered")),
            Status::Unauthorized
        );
    }

    #[test]
    fn garbage_is_answered_with_the_id_it_names_then_the_connection_closes() {
        let mut conn = Conn::greeted();
        let mut garbage = [0xffu8; HEADER_LEN];
        garbage[8..16].copy_from_slice(&77u64.to_le_bytes());
        conn.feed(&garbage, 5);
        let closing = conn.closing();
        assert!(matches!(
            closing.end,
            Err(StreamError::Frame(FrameError::BadMagic(_)))
        ));
        let last = closing.last.expect("told why");
        assert_eq!(
            (read_reply(&last).0, status_of(&last)),
            (77, Status::BadRequest)
        );

        // A response frame is refused too (the peer is not a client), cleanly.
        let mut conn = Conn::greeted();
        conn.feed(
            &frame(FrameKind::Response, 6, &Request::Stats, &[]),
            usize::MAX,
        );
        let closing = conn.closing();
        assert!(closing.end.is_ok());
        assert_eq!(read_reply(&closing.last.expect("told why")).0, 6);
    }

    #[test]
    fn the_hello_is_due_within_the_stall_timeout_of_connecting() {
        let mut conn = Conn::new();
        let due = conn.opened + STALL;
        assert_eq!(conn.engine.poll_timeout(), Some(due));
        conn.engine.handle_timeout(due - Duration::from_millis(1));
        assert!(conn.actions().is_empty(), "not yet");
        // A frame that started does not move the Hello deadline.
        conn.feed_at(b"DI", usize::MAX, conn.opened + STALL / 2);
        assert_eq!(conn.engine.poll_timeout(), Some(due));
        conn.engine.handle_timeout(due);
        assert!(matches!(
            conn.closing().end,
            Err(StreamError::NoHello(STALL))
        ));

        // After the Hello, the connection may idle.
        let conn = Conn::greeted();
        assert_eq!(conn.engine.poll_timeout(), None);
    }

    #[test]
    fn a_frame_that_stops_flowing_closes_the_connection() {
        let mut conn = Conn::greeted();
        let wire = frame(
            FrameKind::Request,
            20,
            &Request::Put { sizes: vec![64] },
            &[1; 64],
        );
        let later = conn.opened + STALL * 3;
        conn.feed_at(&wire[..wire.len() - 10], usize::MAX, later);
        assert_eq!(conn.engine.poll_timeout(), Some(later + STALL));
        // A trickle does not move the deadline: the whole chunk is due by it.
        conn.feed_at(
            &wire[wire.len() - 10..wire.len() - 5],
            usize::MAX,
            later + STALL / 2,
        );
        assert_eq!(conn.engine.poll_timeout(), Some(later + STALL));
        conn.engine.handle_timeout(later + STALL);
        assert!(matches!(
            conn.closing().end,
            Err(StreamError::Stalled(STALL))
        ));
    }

    #[test]
    fn the_peer_closing_mid_frame_is_an_error_between_frames_not() {
        let mut conn = Conn::greeted();
        conn.engine.peer_closed();
        assert!(conn.closing().end.is_ok());
        let mut conn = Conn::greeted();
        conn.feed(
            &frame(FrameKind::Request, 1, &exists(1), &[])[..40],
            usize::MAX,
        );
        conn.engine.peer_closed();
        assert!(matches!(conn.closing().end, Err(StreamError::Truncated)));
    }

    #[test]
    fn deferred_replies_name_their_request() {
        let mut conn = Conn::greeted();
        let get = Request::Get {
            ids: vec![ObjectId(1)],
            wait_ms: 1000,
        };
        conn.feed(&frame(FrameKind::Request, 30, &get, &[]), usize::MAX);
        conn.feed(&frame(FrameKind::Request, 31, &exists(1), &[]), usize::MAX);
        let mut actions = conn.actions().into_iter();
        let Some(Action::Defer(_, reply_to)) = actions.next() else {
            panic!("the get is deferred")
        };
        assert!(
            matches!(actions.next(), Some(Action::Send(_))),
            "the connection goes on"
        );
        let reply = Reply::message(Response::Get { items: Vec::new() });
        let outgoing = reply_to.outgoing(reply).expect("a request is answered");
        assert_eq!(read_reply(&outgoing).0, 30);
    }
}
