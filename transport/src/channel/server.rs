//! Requests over a fabric's own messages (UCX active messages): the server's side.
//!
//! A client opens a *channel* from its authenticated TCP connection
//! ([`dimstore_proto::Request::OpenChannel`]). The channel is a session of its own, kept in
//! the service's [`ChannelTable`] until the TCP connection closes (which is how a dead
//! client is noticed: fabrics do not say). Its requests arrive on the fabric thread as
//! messages whose header is the channel id followed by an ordinary frame head (frame header
//! and body); their data is the payload. The fabric thread hands them to an [`RpcHost`],
//! here a [`ServiceHost`], which checks, admits and dispatches them through the request
//! engine ([`MessageEngine`]) to the same [`Service`] as every other transport, and sends the
//! [`RpcReply`] back on the fabric.

use std::sync::{Arc, Mutex, Weak};

use dimstore_engine::{Admitted, Answer, MessageEngine, Outgoing};
use dimstore_proto::{ErrorReply, FrameLimits, Request, RequestLimits, Status};

pub use dimstore_engine::{ChannelGuard, ChannelTable};

use crate::Service;

/// Bytes before the frame head in a request message's header: the channel id.
pub const CHANNEL_PREFIX: usize = 8;

/// A reply to send on the fabric: the frame head (header and body) and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcReply {
    /// Encoded frame header followed by the response body.
    pub head: Vec<u8>,
    /// The payload (small objects; large ones are read one-sided).
    pub payload: Vec<u8>,
}

/// Delivers a reply that was not ready when its request was handled (a get waiting for a
/// deferred object): called with the channel id, from any thread.
pub type LaterReply = Arc<dyn Fn(u64, RpcReply) + Send + Sync>;

/// What a fabric thread asks of the server for requests arriving on channels.
pub trait RpcHost: Send + Sync + 'static {
    /// The client's fabric address of channel `channel`, while it is open.
    fn channel_peer(&self, channel: u64) -> Option<Vec<u8>>;

    /// The fabric addresses of the clients with a channel open (one entry per client, not
    /// per channel: a process's connections share its address).
    fn open_peers(&self) -> Vec<Vec<u8>>;

    /// Counts `bytes` of request payload pulled from a client (rendezvous).
    fn record_pulled(&self, bytes: u64);

    /// Checks a request (frame head, channel, limits) before its `payload_len` bytes of
    /// payload are received, and allocates the memory they land in. `Err(Some(reply))`:
    /// answer with it and drop the payload; `Err(None)`: drop the message (a notice, which
    /// gets no answer).
    fn begin(
        &self,
        channel: u64,
        head: &[u8],
        payload_len: usize,
    ) -> Result<Box<dyn IncomingRequest>, Option<RpcReply>>;

    /// [`begin`](Self::begin) and [`IncomingRequest::finish`] for a payload already here.
    fn handle(
        &self,
        channel: u64,
        head: &[u8],
        payload: &[u8],
        later: &LaterReply,
    ) -> Option<RpcReply> {
        match self.begin(channel, head, payload.len()) {
            Ok(request) => request.finish(Some(payload), later),
            Err(reply) => reply,
        }
    }
}

/// A request admitted by [`RpcHost::begin`], waiting for its payload.
pub trait IncomingRequest {
    /// The memory the whole payload lands in when it is one piece (a put of one object),
    /// for a fabric to receive into directly. It stays at the same address until the
    /// request is finished or dropped. `None`: hand the payload to
    /// [`finish`](Self::finish).
    fn destination(&mut self) -> Option<&mut [u8]>;

    /// Handles the request once its payload is in place: `Some(bytes)` to copy into the
    /// request's memory, `None` if it was received into [`destination`](Self::destination).
    /// Returns the reply, or `None` when there is none now: notices, and replies delivered
    /// later through `later`. Dropping the request instead abandons it (its memory is
    /// freed).
    fn finish(self: Box<Self>, payload: Option<&[u8]>, later: &LaterReply) -> Option<RpcReply>;
}

/// The [`RpcHost`] of a [`Service`]: requests on the service's channels are handled like
/// those of any other transport, deferred replies on a tokio runtime.
pub struct ServiceHost<S: Service> {
    /// Weak: the service owns the transports, which own the host.
    service: Weak<S>,
    engine: MessageEngine,
    transport: &'static str,
    runtime: tokio::runtime::Handle,
}

impl<S: Service> ServiceHost<S> {
    /// A host for `service`'s channels on `transport`, enforcing `limits` on every frame
    /// and `requests` on every request (as the stream transports do); deferred replies run
    /// on `runtime`. The host serves while `service` is alive elsewhere; afterwards it
    /// answers `ShuttingDown`.
    pub fn new(
        service: &Arc<S>,
        limits: FrameLimits,
        requests: RequestLimits,
        transport: &'static str,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        ServiceHost {
            service: Arc::downgrade(service),
            engine: MessageEngine::new(limits, requests),
            transport,
            runtime,
        }
    }
}

impl<S: Service> RpcHost for ServiceHost<S> {
    fn channel_peer(&self, channel: u64) -> Option<Vec<u8>> {
        self.service.upgrade()?.channels()?.peer(channel)
    }

    fn record_pulled(&self, bytes: u64) {
        if let Some(service) = self.service.upgrade() {
            service.record_pulled(self.transport, bytes);
        }
    }

    fn open_peers(&self) -> Vec<Vec<u8>> {
        self.service
            .upgrade()
            .and_then(|s| s.channels().map(ChannelTable::peers))
            .unwrap_or_default()
    }

    fn begin(
        &self,
        channel: u64,
        head: &[u8],
        payload_len: usize,
    ) -> Result<Box<dyn IncomingRequest>, Option<RpcReply>> {
        let head = self
            .engine
            .head::<S::Source>(head, payload_len)
            .map_err(|refusal| Some(message(*refusal)))?;
        let refuse = |status, why| head.refuse::<S::Source>(ErrorReply::new(status, why));
        let Some(service) = self.service.upgrade() else {
            let refusal = refuse(Status::ShuttingDown, "the server is stopping");
            return Err(refusal.map(message));
        };
        let Some(session) = service.channels().and_then(|c| c.session(channel)) else {
            let refusal = refuse(Status::Unauthorized, "unknown or closed channel");
            return Err(refusal.map(message));
        };
        let admitted = {
            let mut guard = session.lock().unwrap_or_else(|e| e.into_inner());
            self.engine
                .admit(&*service, &mut guard, &head)
                .map_err(|refusal| refusal.map(|r| message(*r)))?
        };
        Ok(Box::new(Pending {
            service,
            transport: self.transport,
            runtime: self.runtime.clone(),
            session,
            channel,
            admitted,
        }))
    }
}

/// A request of a [`ServiceHost`] between [`RpcHost::begin`] and its payload's arrival.
struct Pending<S: Service> {
    service: Arc<S>,
    transport: &'static str,
    runtime: tokio::runtime::Handle,
    session: Arc<Mutex<S::Session>>,
    channel: u64,
    admitted: Admitted<S>,
}

impl<S: Service> IncomingRequest for Pending<S> {
    fn destination(&mut self) -> Option<&mut [u8]> {
        self.admitted.destination()
    }

    fn finish(mut self: Box<Self>, payload: Option<&[u8]>, later: &LaterReply) -> Option<RpcReply> {
        if let Some(payload) = payload {
            self.admitted.fill(payload);
        }
        if runs_inline(self.admitted.request()) {
            return (*self).run(later);
        }
        // It may call back into the fabric thread (key export, stats): not on it.
        let (later, runtime, channel) = (Arc::clone(later), self.runtime.clone(), self.channel);
        runtime.spawn_blocking(move || {
            if let Some(reply) = (*self).run(&later) {
                later(channel, reply);
            }
        });
        None
    }
}

impl<S: Service> Pending<S> {
    /// Handles the request: the reply now, or `None` (a notice's, or one sent through
    /// `later` once a deferred outcome is ready).
    fn run(self, later: &LaterReply) -> Option<RpcReply> {
        let Pending {
            service,
            transport,
            runtime,
            session,
            channel,
            admitted,
        } = self;
        let mut guard = session.lock().unwrap_or_else(|e| e.into_inner());
        // A fabric message carries the head apart from the payload: nothing coalesced.
        let answer = admitted.dispatch(&*service, &mut guard, 0);
        drop(guard);
        match answer {
            Answer::Now(outgoing) | Answer::Refused(Some(outgoing)) => {
                Some(sent(&*service, transport, outgoing))
            }
            Answer::Refused(None) | Answer::Silent => None,
            Answer::Later(reply, reply_to) => {
                let later = Arc::clone(later);
                runtime.spawn(async move {
                    if let Some(outgoing) = reply_to.outgoing(reply.await) {
                        later(channel, sent(&*service, transport, outgoing));
                    }
                });
                None
            }
        }
    }
}

/// Requests handled on the fabric thread itself: the data path, which never calls back
/// into a transport. The others (handshakes, key export, stats, shutdown) run on the
/// runtime's blocking pool and answer through [`LaterReply`].
fn runs_inline(request: &Request) -> bool {
    matches!(
        request,
        Request::Get { .. }
            | Request::Put { .. }
            | Request::PutWith { .. }
            | Request::GetAndEvict { .. }
            | Request::Extend { .. }
            | Request::ReleaseOwner { .. }
            | Request::Exists { .. }
            | Request::Evict { .. }
            | Request::NewKeys { .. }
            | Request::Set { .. }
            | Request::Release { .. }
            | Request::Abort { .. }
    )
}

/// `outgoing` as a fabric message, its object bytes counted as sent.
fn sent<S: Service>(
    service: &S,
    transport: &'static str,
    outgoing: Outgoing<S::Source>,
) -> RpcReply {
    let bytes = outgoing.object_bytes();
    if bytes > 0 {
        service.record_sent(transport, bytes);
    }
    message(outgoing)
}

/// `outgoing` as a fabric message: the frame head, then the payload gathered.
fn message<T: AsRef<[u8]>>(outgoing: Outgoing<T>) -> RpcReply {
    let (head, payload) = outgoing.into_message();
    RpcReply { head, payload }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use dimstore_proto::{
        decode_response, encode_request, FrameHeader, FrameKind, ObjectId, Response,
    };
    use rkyv::util::AlignedVec;

    use super::*;
    use crate::{Outcome, PeerInfo, Reply};

    /// Echoes put payloads back, answers exists with `true`, and stats off the fabric
    /// thread; counts requests per session.
    struct Echo {
        channels: Arc<ChannelTable<u32>>,
    }

    impl Service for Echo {
        type Session = u32;
        type Sink = Vec<u8>;
        type Source = Vec<u8>;

        fn open_session(&self, _: &'static str, _: PeerInfo) -> u32 {
            0
        }

        fn authenticated(&self, _: &u32) -> bool {
            true
        }

        fn payload_sinks(
            &self,
            _: &mut u32,
            request: &Request,
            len: u64,
        ) -> Result<Vec<Vec<u8>>, ErrorReply> {
            match request {
                Request::Put { sizes } => Ok(sizes.iter().map(|&s| vec![0; s as usize]).collect()),
                _ if len == 0 => Ok(Vec::new()),
                _ => Err(ErrorReply::new(Status::BadRequest, "no payload here")),
            }
        }

        fn handle(
            &self,
            count: &mut u32,
            request: Request,
            payload: Vec<Vec<u8>>,
        ) -> Outcome<Vec<u8>> {
            *count += 1;
            let response = match request {
                Request::Put { .. } => Response::Put { ids: Vec::new() },
                Request::Exists { ids } => Response::Exists {
                    present: vec![true; ids.len()],
                },
                _ => Response::Done,
            };
            Outcome::Ready(Reply {
                response,
                payload,
                fds: Vec::new(),
            })
        }

        fn record_sent(&self, _: &'static str, _: u64) {}

        fn channels(&self) -> Option<&ChannelTable<u32>> {
            Some(&self.channels)
        }
    }

    fn head(kind: FrameKind, id: u64, request: &Request, payload_len: usize) -> Vec<u8> {
        let mut head = Vec::new();
        FrameHeader::write_head(
            &mut head,
            kind,
            id,
            &encode_request(request),
            payload_len as u64,
        );
        head
    }

    fn response(reply: &RpcReply) -> (FrameHeader, Response) {
        let (header, bytes) =
            FrameHeader::decode_head(&reply.head, &FrameLimits::default()).expect("valid head");
        let mut body = AlignedVec::<16>::new();
        body.extend_from_slice(bytes);
        (header, decode_response(&body).expect("valid body"))
    }

    fn status(reply: Option<RpcReply>) -> Status {
        match response(&reply.expect("a reply")).1 {
            Response::Error(e) => e.status,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn fixture() -> (tokio::runtime::Runtime, Arc<Echo>, ServiceHost<Echo>) {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let service = Arc::new(Echo {
            channels: Arc::default(),
        });
        let host = ServiceHost::new(
            &service,
            FrameLimits {
                max_body: 1 << 20,
                max_payload: 1 << 20,
            },
            RequestLimits {
                max_batch: 16,
                ..RequestLimits::default()
            },
            "test",
            runtime.handle().clone(),
        );
        (runtime, service, host)
    }

    #[test]
    fn requests_on_a_channel_reach_the_service_and_bad_ones_get_typed_errors() {
        let (_runtime, service, host) = fixture();
        let later: LaterReply = Arc::new(|_, _| panic!("no later reply expected"));
        let exists = Request::Exists {
            ids: vec![ObjectId(1), ObjectId(2)],
        };
        // Unknown channel.
        let h = head(FrameKind::Request, 5, &exists, 0);
        assert_eq!(
            status(host.begin(99, &h, 0).err().flatten()),
            Status::Unauthorized
        );
        assert_eq!(
            status(host.handle(99, &h, &[], &later)),
            Status::Unauthorized
        );
        // Notices to an unknown channel are dropped silently.
        let notice = head(FrameKind::Notice, 6, &exists, 0);
        assert!(matches!(host.begin(99, &notice, 0), Err(None)));

        let _guard = service
            .channels
            .open(1, b"client".to_vec(), 0)
            .expect("open");
        assert!(host.begin(1, &h, 0).is_ok());
        let (header, reply) = response(&host.handle(1, &h, &[], &later).expect("reply"));
        assert_eq!(header.request_id, 5, "the reply names its request");
        assert_eq!(
            reply,
            Response::Exists {
                present: vec![true, true]
            }
        );
        // Payloads land in the service's sinks and come back.
        let put = head(
            FrameKind::Request,
            7,
            &Request::Put { sizes: vec![2, 3] },
            5,
        );
        let echoed = host.handle(1, &put, b"hello", &later).expect("reply");
        assert_eq!(echoed.payload, b"hello");
        // Several objects: no single destination. One object: received straight into it.
        let mut two = host.begin(1, &put, 5).expect("admitted");
        assert!(two.destination().is_none());
        drop(two);
        let one = head(FrameKind::Request, 8, &Request::Put { sizes: vec![4] }, 4);
        let mut pending = host.begin(1, &one, 4).expect("admitted");
        pending
            .destination()
            .expect("one piece")
            .copy_from_slice(b"abcd");
        let echoed = pending.finish(None, &later).expect("reply");
        assert_eq!(echoed.payload, b"abcd");
        // Malformed: garbage, wrong payload length, over the limit, a response frame.
        let mut garbage = vec![0xff; 40];
        garbage[8..16].copy_from_slice(&9u64.to_le_bytes());
        assert_eq!(
            status(host.begin(1, &garbage, 0).err().flatten()),
            Status::BadRequest
        );
        assert_eq!(
            status(host.begin(1, &h, 3).err().flatten()),
            Status::BadRequest
        );
        let huge = head(
            FrameKind::Request,
            8,
            &Request::Put {
                sizes: vec![2 << 20],
            },
            2 << 20,
        );
        assert_eq!(
            status(host.begin(1, &huge, 2 << 20).err().flatten()),
            Status::BadRequest
        );
        // Counts over the request limits: refused before the service sees them.
        let too_many = Request::Exists {
            ids: (0..17).map(ObjectId).collect(),
        };
        let too_many = head(FrameKind::Request, 12, &too_many, 0);
        assert_eq!(
            status(host.begin(1, &too_many, 0).err().flatten()),
            Status::TooLarge
        );
        let too_many_keys = head(
            FrameKind::Request,
            13,
            &Request::NewKeys { count: u32::MAX },
            0,
        );
        assert_eq!(
            status(host.handle(1, &too_many_keys, &[], &later)),
            Status::TooLarge
        );
        let wrong_kind = head(FrameKind::Response, 9, &exists, 0);
        assert_eq!(
            status(host.begin(1, &wrong_kind, 0).err().flatten()),
            Status::BadRequest
        );
        let short = head(FrameKind::Request, 10, &exists, 0);
        assert_eq!(
            status(host.handle(1, &short[..20], &[], &later)),
            Status::BadRequest
        );
        assert_eq!(
            *service.channels.session(1).unwrap().lock().unwrap(),
            3,
            "three handled"
        );
    }

    #[test]
    fn requests_off_the_data_path_answer_later_and_a_dropped_service_stops_serving() {
        let (_runtime, service, host) = fixture();
        let _guard = service
            .channels
            .open(1, b"client".to_vec(), 0)
            .expect("open");
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let later: LaterReply = Arc::new(move |channel, reply| {
            let _ = tx.lock().unwrap().send((channel, reply));
        });
        let stats = head(FrameKind::Request, 11, &Request::Stats, 0);
        assert!(
            host.handle(1, &stats, &[], &later).is_none(),
            "not on the fabric thread"
        );
        let (channel, reply) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("later reply");
        assert_eq!(channel, 1);
        let (header, response) = response(&reply);
        assert_eq!((header.request_id, response), (11, Response::Done));
        drop(_guard);
        drop(service);
        // The blocking task may still hold the service for a moment after replying.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match status(host.begin(1, &stats, 0).err().flatten()) {
                Status::ShuttingDown => break,
                other => assert_eq!(other, Status::Unauthorized, "the channel is closed"),
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the service never went"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(host.open_peers().is_empty());
    }
}
