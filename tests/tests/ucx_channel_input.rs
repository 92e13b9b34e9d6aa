//! Malformed UCX active messages on the request channel, against a real server over UCX
//! on loopback (UCX_TLS=tcp). The test speaks the wire protocol by hand: a plain TCP control
//! connection (Hello, then `OpenChannel` with this test's own UCX worker address) and raw
//! active messages to the server's worker (header = channel id + frame head, data =
//! payload). It proves that
//!
//! - a well-formed request on an unknown channel id gets `Status::Unauthorized`;
//! - a garbage frame head, a garbage body, a response-kind frame and a payload whose length
//!   differs from the one the header announces each get `Status::BadRequest`, addressed to
//!   the request id found in the frame head; a `NewKeys` of 2^32-1 gets `Status::TooLarge`;
//! - a message too short to carry a channel id is dropped without a reply;
//! - a connection opens at most 4 channels, and a channel with an empty client address or
//!   on a transport without channels is refused (`BadRequest`, saying why);
//! - after all of these the channel still answers valid requests (handled on the fabric
//!   thread, `Exists`, and off it, `Stats`), a bystander client connected throughout and a
//!   new client are both served, and once the TCP control connection is dropped the channel
//!   is closed with it: its id gets `Unauthorized`.
//!
//! Every wait is bounded by a deadline; no assertion is about timing.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use dimstore::ObjectId;
use dimstore_proto::{
    encode_request, FrameHeader, FrameKind, FrameLimits, Request, Response, Status, HEADER_LEN,
};
use dimstore_tests::{
    decode_reply, frame_head, pattern, prepare, raw_hello, ServerOptions, TestServer,
};
use dimstore_transport::tcp::TcpConnector;
use dimstore_transport::{Connection, Connector};
use dimstore_ucx::{AmMessage, Context, ContextConfig, Endpoint, Worker, WorkerAddress};

/// Active message id of requests (client to server).
const AM_REQUEST: u16 = 1;
/// Active message id of replies (server to client).
const AM_REPLY: u16 = 2;
/// Bound of every wait for something that must happen.
const WAIT: Duration = Duration::from_secs(5);
/// How long to listen for a reply that must not come.
const QUIET: Duration = Duration::from_secs(1);

/// A reply received on the test's worker.
#[derive(Debug)]
struct Reply {
    request_id: u64,
    response: Response,
    payload_len: usize,
}

/// This test's UCX side: a worker that collects replies, and an endpoint to the server.
struct Fabric {
    worker: Worker,
    ep: Endpoint,
    replies: Rc<RefCell<Vec<Reply>>>,
    _context: Context,
}

impl Fabric {
    fn new(server_address: &[u8]) -> Fabric {
        let context = Context::new(&ContextConfig::from_env()).expect("UCX context");
        let worker = Worker::new(&context).expect("UCX worker");
        let replies: Rc<RefCell<Vec<Reply>>> = Rc::default();
        let sink = Rc::clone(&replies);
        worker
            .set_am_handler(AM_REPLY, move |message: AmMessage<'_>| {
                sink.borrow_mut().push(parse_reply(&message));
            })
            .expect("reply handler");
        let ep = Endpoint::connect(&worker, &WorkerAddress::from_bytes(server_address.to_vec()))
            .expect("endpoint to the server");
        Fabric {
            worker,
            ep,
            replies,
            _context: context,
        }
    }

    fn address(&self) -> Vec<u8> {
        self.worker.address().expect("worker address").into_bytes()
    }

    /// Sends one request message and waits (bounded) until the send completed.
    fn send(&self, header: Vec<u8>, data: Vec<u8>) {
        self.ep
            .am_send(AM_REQUEST, header, data)
            .wait(Instant::now() + WAIT)
            .expect("request message sent");
    }

    /// Progresses the worker for a moment, sleeping on its event fd when idle.
    fn progress(&self) {
        if self.worker.progress() == 0 {
            let _ = self.worker.wait_for_event(Duration::from_millis(10));
        }
    }

    /// The reply to `request_id`, progressing until it arrives or `within` passes.
    fn reply_to(&self, request_id: u64, within: Duration) -> Option<Reply> {
        let deadline = Instant::now() + within;
        loop {
            {
                let mut replies = self.replies.borrow_mut();
                if let Some(i) = replies.iter().position(|r| r.request_id == request_id) {
                    return Some(replies.remove(i));
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.progress();
        }
    }

    /// Every reply that arrives within `within` (progressing all along).
    fn listen(&self, within: Duration) -> Vec<Reply> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            self.progress();
        }
        self.replies.borrow_mut().drain(..).collect()
    }
}

/// Checks and decodes a reply message: a response frame head whose lengths match.
fn parse_reply(message: &AmMessage<'_>) -> Reply {
    let head = message.header();
    let raw: &[u8; HEADER_LEN] = head
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .expect("a reply header starts with a frame header");
    let header = FrameHeader::decode(raw, &FrameLimits::default()).expect("valid frame header");
    assert_eq!(header.kind, FrameKind::Response, "replies are responses");
    assert_eq!(
        head.len(),
        HEADER_LEN + header.body_len as usize,
        "the reply header carries the whole body"
    );
    assert_eq!(
        header.payload_len,
        message.data_len() as u64,
        "the reply's data is its announced payload"
    );
    Reply {
        request_id: header.request_id,
        response: decode_reply(&head[HEADER_LEN..]),
        payload_len: message.data_len(),
    }
}

/// A request message's header: channel id, then the frame head of `request`.
fn request_header(channel: u64, request_id: u64, request: &Request, payload_len: u64) -> Vec<u8> {
    with_channel(
        channel,
        &frame_head(
            FrameKind::Request,
            request_id,
            &encode_request(request),
            payload_len,
        ),
    )
}

fn with_channel(channel: u64, head: &[u8]) -> Vec<u8> {
    let mut header = channel.to_le_bytes().to_vec();
    header.extend_from_slice(head);
    header
}

/// The status of an error reply; panics (with the server log) on anything else.
fn error_status(reply: Option<Reply>, what: &str, server: &TestServer) -> Status {
    match reply {
        Some(Reply {
            response: Response::Error(e),
            payload_len: 0,
            ..
        }) => e.status,
        Some(other) => panic!("{what}: expected an error reply, got {other:?}"),
        None => panic!(
            "{what}: no reply within {WAIT:?}\nserver log:\n{}",
            server.log()
        ),
    }
}

/// `Exists` for a present and a missing object on `channel`: `[true, false]`.
fn assert_exists_works(
    fabric: &Fabric,
    server: &TestServer,
    channel: u64,
    id: u64,
    kept: ObjectId,
) {
    let request = Request::Exists {
        ids: vec![kept, ObjectId(0x5eed)],
    };
    fabric.send(request_header(channel, id, &request, 0), Vec::new());
    match fabric.reply_to(id, WAIT) {
        Some(Reply {
            response: Response::Exists { present },
            ..
        }) => assert_eq!(present, vec![true, false]),
        other => panic!(
            "exists on the channel: {other:?}\nserver log:\n{}",
            server.log()
        ),
    }
}

#[test]
fn malformed_channel_messages_get_typed_errors_and_others_are_served() {
    prepare("ucx-tcp");
    let server = TestServer::start(ServerOptions {
        extra: vec!["--one-sided".into(), "ucx".into()],
        ..ServerOptions::default()
    });
    // A well-behaved client (itself on a UCX channel) connected throughout.
    let bystander = server.client("ucx-tcp");
    let kept_bytes = pattern(10_000, 7);
    let kept = bystander.put(&kept_bytes).expect("bystander put");

    // Hello and OpenChannel by hand on a plain TCP connection (no channel of its own).
    let control = TcpConnector::default()
        .connect(server.address(), Instant::now() + WAIT)
        .expect("connect");
    // Sends a request without payload and returns its reply (bounded by `WAIT`).
    let call = |request: &Request| {
        control
            .call(request, &[], 0, Instant::now() + WAIT)
            .expect("control reply within the wait")
            .response
    };
    let hello = match call(&raw_hello("ucx-fuzzer")) {
        Response::Hello(hello) => hello,
        other => panic!("hello: {other:?}"),
    };
    let offer = hello
        .one_sided
        .iter()
        .find(|o| o.transport == "ucx")
        .unwrap_or_else(|| panic!("the server offers no ucx: {:?}", hello.one_sided));
    let fabric = Fabric::new(&offer.address);
    let channel = match call(&Request::OpenChannel {
        transport: "ucx".into(),
        address: fabric.address(),
    }) {
        Response::Channel { id } => id,
        other => panic!("open channel: {other:?}"),
    };
    // Baseline: the channel works before anything malformed is sent.
    assert_exists_works(&fabric, &server, channel, 1, kept.id);
    // A connection opens a bounded number of channels (4); then a typed refusal.
    let mut refused = None;
    for _ in 0..8 {
        match call(&Request::OpenChannel {
            transport: "ucx".into(),
            address: fabric.address(),
        }) {
            Response::Channel { .. } => {}
            Response::Error(e) => {
                refused = Some(e);
                break;
            }
            other => panic!("open channel: {other:?}"),
        }
    }
    let refused = refused.expect("a limit on channels per connection");
    assert_eq!(refused.status, Status::BadRequest, "{refused:?}");
    assert!(refused.message.contains("channels open"), "{refused:?}");
    // Nor is an empty address, or a transport without channels, accepted.
    for (transport, address, why) in [
        ("ucx", Vec::new(), "client address"),
        ("ofi", fabric.address(), "takes no requests"),
    ] {
        match call(&Request::OpenChannel {
            transport: transport.into(),
            address,
        }) {
            Response::Error(e) => {
                assert_eq!(e.status, Status::BadRequest, "{e:?}");
                assert!(e.message.contains(why), "{e:?}");
            }
            other => panic!("open channel on {transport}: {other:?}"),
        }
    }

    // 1. A valid request on a channel id nobody opened.
    let unknown = channel.wrapping_add(1);
    let exists = Request::Exists { ids: vec![] };
    fabric.send(request_header(unknown, 10, &exists, 0), Vec::new());
    assert_eq!(
        error_status(fabric.reply_to(10, WAIT), "unknown channel", &server),
        Status::Unauthorized
    );

    // 2. The right channel id followed by 40 bytes of garbage: the reply goes to the
    // request id the garbage has where a frame header keeps it (bytes 8..16).
    fabric.send(with_channel(channel, &[0xff; 40]), Vec::new());
    assert_eq!(
        error_status(
            fabric.reply_to(u64::MAX, WAIT),
            "garbage frame head",
            &server
        ),
        Status::BadRequest
    );
    // A valid frame header with a body that is not a request.
    let garbage_body = frame_head(FrameKind::Request, 11, &[0xff; 24], 0);
    fabric.send(with_channel(channel, &garbage_body), Vec::new());
    assert_eq!(
        error_status(fabric.reply_to(11, WAIT), "garbage body", &server),
        Status::BadRequest
    );
    // A response frame sent as a request.
    let response_kind = frame_head(FrameKind::Response, 12, &encode_request(&exists), 0);
    fabric.send(with_channel(channel, &response_kind), Vec::new());
    assert_eq!(
        error_status(fabric.reply_to(12, WAIT), "response-kind frame", &server),
        Status::BadRequest
    );

    // 3. The header announces 10 payload bytes, the message carries 3.
    fabric.send(request_header(channel, 13, &exists, 10), vec![1, 2, 3]);
    assert_eq!(
        error_status(
            fabric.reply_to(13, WAIT),
            "payload length mismatch",
            &server
        ),
        Status::BadRequest
    );

    // A count beyond the request limits: refused before the server reserves anything.
    let too_many = Request::NewKeys { count: u32::MAX };
    fabric.send(request_header(channel, 16, &too_many, 0), Vec::new());
    assert_eq!(
        error_status(fabric.reply_to(16, WAIT), "NewKeys of 2^32-1", &server),
        Status::TooLarge
    );

    // 4. A header too short to hold a channel id: dropped, no reply at all.
    assert!(fabric.listen(Duration::ZERO).is_empty(), "no reply pending");
    fabric.send(vec![1, 2, 3], Vec::new());
    let unexpected = fabric.listen(QUIET);
    assert!(
        unexpected.is_empty(),
        "a message without a channel id got replies: {unexpected:?}"
    );

    // 5. The channel still answers valid requests: on the fabric thread (Exists) and off
    // it (Stats, answered later on the server's endpoint to this worker).
    assert_exists_works(&fabric, &server, channel, 14, kept.id);
    fabric.send(request_header(channel, 15, &Request::Stats, 0), Vec::new());
    match fabric.reply_to(15, WAIT) {
        Some(Reply {
            response: Response::Stats(stats),
            ..
        }) => assert_eq!(stats.pid, server.pid()),
        other => panic!(
            "stats on the channel: {other:?}\nserver log:\n{}",
            server.log()
        ),
    }

    // 6. Everyone else is still served: the bystander, and a new client.
    assert_eq!(
        &bystander.get(&kept).expect("bystander get")[..],
        &kept_bytes[..]
    );
    let newcomer = server.client("ucx-tcp");
    let key = newcomer.put(b"still here").expect("put after bad input");
    assert_eq!(&newcomer.get(&key).expect("get")[..], b"still here");

    // The channel closes with its TCP connection: its id becomes unknown.
    drop(control);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut request_id = 100;
    loop {
        fabric.send(request_header(channel, request_id, &exists, 0), Vec::new());
        match fabric.reply_to(request_id, WAIT) {
            Some(Reply {
                response: Response::Error(e),
                ..
            }) if e.status == Status::Unauthorized => break,
            // Not closed yet: the server has not seen the connection end.
            Some(Reply {
                response: Response::Exists { .. },
                ..
            }) => {}
            other => panic!(
                "old channel after its connection closed: {other:?}\nserver log:\n{}",
                server.log()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the channel stayed open after its TCP connection closed"
        );
        request_id += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        &bystander.get(&kept).expect("bystander get at the end")[..],
        &kept_bytes[..]
    );
}
