//! A small [`Service`] for the engine's unit tests: a token-checking `Hello`, puts that
//! echo their payload, gets answered later, and a session counting what it handled.

use std::sync::Arc;

use dimstore_proto::{
    decode_response, encode_request, ErrorReply, FrameHeader, FrameKind, FrameLimits, HelloReply,
    Request, Response, Status, HEADER_LEN,
};
use rkyv::util::AlignedVec;

use crate::{ChannelTable, Outcome, Outgoing, PeerInfo, Reply, Service};

/// The token a `Hello` must carry.
pub(crate) const TOKEN: &str = "secret";

/// Largest put the service accepts (bigger ones are refused with `StoreFull`).
pub(crate) const MAX_PUT: u64 = 1 << 20;

/// What a test session saw.
#[derive(Debug, Default)]
pub(crate) struct TestSession {
    pub(crate) greeted: bool,
    pub(crate) handled: u32,
}

#[derive(Default)]
pub(crate) struct TestService {
    pub(crate) channels: Arc<ChannelTable<TestSession>>,
}

impl Service for TestService {
    type Session = TestSession;
    type Sink = Vec<u8>;
    type Source = Vec<u8>;

    fn open_session(&self, _: &'static str, _: PeerInfo) -> TestSession {
        TestSession::default()
    }

    fn authenticated(&self, session: &TestSession) -> bool {
        session.greeted
    }

    fn payload_sinks(
        &self,
        _: &mut TestSession,
        request: &Request,
        len: u64,
    ) -> Result<Vec<Vec<u8>>, ErrorReply> {
        match request {
            Request::Put { .. } if len > MAX_PUT => {
                Err(ErrorReply::new(Status::StoreFull, "store full"))
            }
            Request::Put { sizes } if sizes.iter().sum::<u64>() == len => {
                Ok(sizes.iter().map(|&s| vec![0; s as usize]).collect())
            }
            _ if len == 0 => Ok(Vec::new()),
            _ => Err(ErrorReply::new(Status::BadRequest, "no payload expected")),
        }
    }

    fn handle(
        &self,
        session: &mut TestSession,
        request: Request,
        payload: Vec<Vec<u8>>,
    ) -> Outcome<Vec<u8>> {
        session.handled += 1;
        let refuse = |status| Outcome::Ready(Reply::error(ErrorReply::new(status, "refused")));
        let response = match request {
            Request::Hello(hello) if hello.token.as_deref() == Some(TOKEN) => {
                session.greeted = true;
                Response::Hello(HelloReply {
                    server_id: 1,
                    node: "test".into(),
                    advertised: "test:1".into(),
                    pid: 1,
                    transports: Vec::new(),
                    max_object: MAX_PUT,
                    local_socket: None,
                    mapped: false,
                    one_sided: Vec::new(),
                })
            }
            Request::Hello(_) => return refuse(Status::Unauthorized),
            _ if !session.greeted => return refuse(Status::Unauthorized),
            Request::Put { .. } => Response::Put { ids: Vec::new() },
            Request::Exists { ids } => Response::Exists {
                present: vec![true; ids.len()],
            },
            Request::Get { .. } => {
                return Outcome::Deferred(Box::pin(async {
                    Reply::message(Response::Get { items: Vec::new() })
                }))
            }
            _ => Response::Done,
        };
        Outcome::Ready(Reply {
            response,
            payload,
            fds: Vec::new(),
        })
    }

    fn record_sent(&self, _: &'static str, _: u64) {}

    fn channels(&self) -> Option<&ChannelTable<TestSession>> {
        Some(&self.channels)
    }
}

/// A whole frame: header, body of `request`, then `payload`.
pub(crate) fn frame(kind: FrameKind, id: u64, request: &Request, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    FrameHeader::write_head(
        &mut out,
        kind,
        id,
        &encode_request(request),
        payload.len() as u64,
    );
    out.extend_from_slice(payload);
    out
}

/// A `Hello` carrying `token`.
pub(crate) fn hello(token: &str) -> Request {
    Request::Hello(dimstore_proto::Hello {
        token: Some(token.into()),
        client_node: "test".into(),
        client_pid: 1,
        map: false,
        map_from: 0,
    })
}

/// What an outgoing reply says: its request id, response and whole payload.
pub(crate) fn read_reply(outgoing: &Outgoing<Vec<u8>>) -> (u64, Response, Vec<u8>) {
    let head = outgoing.head();
    let raw: &[u8; HEADER_LEN] = head[..HEADER_LEN].try_into().expect("a header");
    let header = FrameHeader::decode(raw, &FrameLimits::default()).expect("a valid header");
    assert_eq!(header.kind, FrameKind::Response);
    let body_end = HEADER_LEN + header.body_len as usize;
    let mut body = AlignedVec::<16>::new();
    body.extend_from_slice(&head[HEADER_LEN..body_end]);
    let mut payload = head[body_end..].to_vec();
    outgoing.rest().for_each(|p| payload.extend_from_slice(p));
    assert_eq!(payload.len() as u64, header.payload_len);
    let response = decode_response(&body).expect("a valid response");
    (header.request_id, response, payload)
}

/// The status of an error reply.
pub(crate) fn status_of(outgoing: &Outgoing<Vec<u8>>) -> Status {
    match read_reply(outgoing).1 {
        Response::Error(e) => e.status,
        other => panic!("expected an error, got {other:?}"),
    }
}
