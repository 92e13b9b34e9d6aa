//! A hostile or broken owner cannot crash, bloat or hang a client: a fake owner (a small TCP
//! server in this test that greets like a real one, from another node) lies about reply
//! lengths, trickles, sends garbage or the wrong number of items, closes mid-frame, never
//! answers or never reads; and a real server is stopped (SIGSTOP) in the middle of a get.
//! Every call ends with a typed error, by its deadline when the owner stalls.

use std::io::{IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dimstore::{ClientConfig, GetError, Key, LocalMode, ObjectId, RequestError, SetError, Store};
use dimstore_proto::{
    decode_request, encode_response, FrameHeader, FrameKind, FrameLimits, GetItem, HelloReply,
    Request, Response, SegmentInfo, HEADER_LEN,
};
use dimstore_tests::{frame_head, pattern, rss_kib, test_config, ServerOptions, TestServer};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// The client's per-operation timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How far past its deadline a call may end on this slow, shared machine.
const SLACK: Duration = Duration::from_secs(2);
/// The memory limit the fake owner announces in its Hello.
const MAX_OBJECT: u64 = 64 << 20;
/// Longest a fake owner keeps misbehaving before it gives up (bounds every test).
const OWNER_LIFETIME: Duration = Duration::from_secs(60);

/// A request as the fake owner read it.
struct Received {
    request_id: u64,
    request: Request,
}

/// A fake owner on 127.0.0.1 serving one connection: it answers the Hello like a real
/// server of node `fake-owner` and hands the next request to `misbehave`, its payload (if
/// any) still unread.
struct FakeOwner {
    address: String,
    thread: Option<JoinHandle<()>>,
}

impl FakeOwner {
    fn start(misbehave: impl FnOnce(&mut TcpStream, Received) + Send + 'static) -> FakeOwner {
        FakeOwner::start_as("fake-owner", None, misbehave)
    }

    /// [`start`](Self::start) as node `node`, offering same-node clients `local_socket`.
    fn start_as(
        node: &'static str,
        local_socket: Option<String>,
        misbehave: impl FnOnce(&mut TcpStream, Received) + Send + 'static,
    ) -> FakeOwner {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("address").to_string();
        let advertised = address.clone();
        let thread = std::thread::spawn(move || {
            let Some(mut stream) = accept_within(&listener, OWNER_LIFETIME) else {
                return;
            };
            stream
                .set_read_timeout(Some(OWNER_LIFETIME))
                .expect("read timeout");
            stream
                .set_write_timeout(Some(OWNER_LIFETIME))
                .expect("write timeout");
            let Some(hello) = read_request(&mut stream) else {
                return;
            };
            assert!(matches!(hello.request, Request::Hello(_)), "Hello first");
            let reply = Response::Hello(fake_hello(node, &advertised, local_socket, false));
            let _ = send_reply(&mut stream, hello.request_id, &reply, &[]);
            if let Some((header, request)) = read_request_head(&mut stream) {
                let next = Received {
                    request_id: header.request_id,
                    request,
                };
                misbehave(&mut stream, next);
            }
        });
        FakeOwner {
            address,
            thread: Some(thread),
        }
    }

    /// A fake owner that reads the Hello and never answers it.
    fn never_greeting() -> FakeOwner {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("address").to_string();
        let thread = std::thread::spawn(move || {
            if let Some(mut stream) = accept_within(&listener, OWNER_LIFETIME) {
                stream
                    .set_read_timeout(Some(OWNER_LIFETIME))
                    .expect("read timeout");
                // Until the client hangs up.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            }
        });
        FakeOwner {
            address,
            thread: Some(thread),
        }
    }

    /// A key owned by this fake owner.
    fn key(&self, size: Option<u64>) -> Key {
        Key {
            owner: self.address.clone(),
            id: ObjectId(0x1234),
            size,
        }
    }
}

impl Drop for FakeOwner {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // A failed assertion in the owner fails the test too.
            if let Err(panic) = thread.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// The fake owner's Hello reply.
fn fake_hello(
    node: &str,
    advertised: &str,
    local_socket: Option<String>,
    mapped: bool,
) -> HelloReply {
    HelloReply {
        server_id: 0xfa_4e,
        node: node.into(),
        advertised: advertised.into(),
        pid: std::process::id(),
        transports: vec!["tcp".into()],
        max_object: MAX_OBJECT,
        local_socket,
        mapped,
        one_sided: Vec::new(),
    }
}

fn accept_within(listener: &TcpListener, within: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                return Some(stream);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    None
}

/// Reads one request frame whole (its payload too); `None` once the client is gone.
fn read_request(stream: &mut impl Read) -> Option<Received> {
    let (header, request) = read_request_head(stream)?;
    let mut payload = vec![0u8; header.payload_len as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(Received {
        request_id: header.request_id,
        request,
    })
}

/// Reads a request's header and body, leaving its payload unread.
fn read_request_head(stream: &mut impl Read) -> Option<(FrameHeader, Request)> {
    let mut raw = [0u8; HEADER_LEN];
    stream.read_exact(&mut raw).ok()?;
    let header = FrameHeader::decode(&raw, &FrameLimits::default()).expect("a valid header");
    let mut body = rkyv::util::AlignedVec::<16>::new();
    body.resize(header.body_len as usize, 0);
    stream.read_exact(&mut body).ok()?;
    let request = decode_request(&body).expect("a valid request");
    Some((header, request))
}

fn send_reply(
    stream: &mut impl Write,
    request_id: u64,
    response: &Response,
    payload: &[u8],
) -> std::io::Result<()> {
    let head = frame_head(
        FrameKind::Response,
        request_id,
        &encode_response(response),
        payload.len() as u64,
    );
    stream.write_all(&head)?;
    stream.write_all(payload)
}

/// A store that only reads other nodes' keys, over TCP, with the short test timeout.
fn client() -> Store {
    client_with(|_| {})
}

fn client_with(tweak: impl FnOnce(&mut ClientConfig)) -> Store {
    let mut config = test_config("tcp");
    config.timeout = TIMEOUT;
    config.local = LocalMode::Off;
    tweak(&mut config);
    Store::without_local(config)
}

fn self_rss_kib() -> u64 {
    rss_kib(std::process::id())
}

/// The error of a get that must fail, and how long it took.
fn failed_get(store: &Store, key: &Key) -> (GetError, Duration) {
    let started = Instant::now();
    match store.get(key) {
        Ok(bytes) => panic!("get of {key} succeeded with {} bytes", bytes.len()),
        Err(e) => (e, started.elapsed()),
    }
}

fn assert_protocol_error(e: &GetError, context: &str) {
    assert!(
        matches!(e, GetError::Request(RequestError::Protocol { .. })),
        "{context}: expected a typed protocol error, got {e:?}"
    );
}

fn assert_timeout(e: &GetError, took: Duration, timeout: Duration, context: &str) {
    eprintln!("{context}: {e} after {took:?}");
    assert!(
        matches!(e, GetError::Request(RequestError::Timeout { .. })),
        "{context}: expected a typed Timeout, got {e:?}"
    );
    assert!(
        took <= timeout + SLACK,
        "{context}: the call ended {took:?} after it started, past its {timeout:?} deadline"
    );
}

#[test]
fn a_1_tib_payload_for_an_8_byte_key_is_refused_without_allocating() {
    let owner = FakeOwner::start(|stream, get| {
        // The header announces 1 TiB; nothing follows.
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 1 << 40 }],
        };
        let head = frame_head(
            FrameKind::Response,
            get.request_id,
            &encode_response(&reply),
            1 << 40,
        );
        let _ = stream.write_all(&head);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let before = self_rss_kib();
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "1 TiB announced");
    assert!(took < TIMEOUT, "refused at once, not at the deadline");
    let grown = self_rss_kib().saturating_sub(before);
    assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
}

#[test]
fn a_payload_larger_than_the_key_is_refused_before_it_is_read() {
    // 256 MiB announced for an 8-byte key, and really sent: the client must not take it in.
    const LIE: usize = 256 << 20;
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: LIE as u64 }],
        };
        let head = frame_head(
            FrameKind::Response,
            get.request_id,
            &encode_response(&reply),
            LIE as u64,
        );
        if stream.write_all(&head).is_err() {
            return;
        }
        let chunk = vec![0x5a; 1 << 20];
        for _ in 0..LIE / chunk.len() {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let before = self_rss_kib();
    let (e, _) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "256 MiB sent for an 8-byte key");
    let grown = self_rss_kib().saturating_sub(before);
    assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
}

#[test]
fn a_deferred_key_is_bounded_by_the_owners_announced_max_object() {
    // A reply larger than the memory limit the owner announced, for a key of unknown size,
    // is more than the owner could ever hold.
    let owner = FakeOwner::start(|stream, get| {
        let size = 2 * MAX_OBJECT;
        let reply = Response::Get {
            items: vec![GetItem::Found { size }],
        };
        let head = frame_head(
            FrameKind::Response,
            get.request_id,
            &encode_response(&reply),
            size,
        );
        let _ = stream.write_all(&head);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, took) = failed_get(&client(), &owner.key(None));
    assert_protocol_error(&e, "twice the owner's limit for a deferred key");
    assert!(took < TIMEOUT, "refused at once, not at the deadline");
}

#[test]
fn a_4_gib_body_is_refused() {
    let owner = FakeOwner::start(|stream, get| {
        let mut raw = FrameHeader {
            kind: FrameKind::Response,
            request_id: get.request_id,
            body_len: u32::MAX,
            payload_len: 0,
        }
        .encode()
        .to_vec();
        raw.extend_from_slice(&[0u8; 64]);
        let _ = stream.write_all(&raw);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let before = self_rss_kib();
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "4 GiB body");
    assert!(took < TIMEOUT, "refused at once, not at the deadline");
    let grown = self_rss_kib().saturating_sub(before);
    assert!(grown < 64 << 10, "RSS grew by {grown} KiB");
}

#[test]
fn a_reply_trickled_at_1_byte_per_second_ends_at_the_deadline() {
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 8 }],
        };
        let mut frame = frame_head(
            FrameKind::Response,
            get.request_id,
            &encode_response(&reply),
            8,
        );
        frame.extend_from_slice(&[7u8; 8]);
        let started = Instant::now();
        for byte in frame {
            if started.elapsed() > OWNER_LIFETIME || stream.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert_timeout(&e, took, TIMEOUT, "trickled reply");
}

#[test]
fn garbage_instead_of_a_reply_is_a_protocol_error() {
    let owner = FakeOwner::start(|stream, _| {
        let _ = stream.write_all(&pattern(4096, 3));
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "garbage bytes");
    assert!(took < TIMEOUT, "refused at once");

    // A valid header whose body is not a response.
    let owner = FakeOwner::start(|stream, get| {
        let body = pattern(64, 4);
        let _ = stream.write_all(&frame_head(FrameKind::Response, get.request_id, &body, 0));
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, _) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "garbage body");
}

#[test]
fn the_wrong_number_of_items_is_a_protocol_error() {
    // Two objects for a get of one key.
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 8 }, GetItem::Found { size: 0 }],
        };
        let _ = send_reply(stream, get.request_id, &reply, &[9u8; 8]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, _) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "two items for one key");

    // One item for a batch of two keys.
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 8 }],
        };
        let _ = send_reply(stream, get.request_id, &reply, &[9u8; 8]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let other = Key {
        id: ObjectId(0x5678),
        ..owner.key(Some(8))
    };
    match client().get_batch(&[owner.key(Some(8)), other]) {
        Err(e) => assert_protocol_error(&e, "one item for two keys"),
        Ok(got) => panic!("a short answer was accepted: {got:?}"),
    }

    // No flags for a batch existence check of two keys.
    let owner = FakeOwner::start(|stream, ask| {
        let reply = Response::Exists {
            present: Vec::new(),
        };
        let _ = send_reply(stream, ask.request_id, &reply, &[]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let keys = [owner.key(Some(8)), owner.key(Some(8))];
    match client().exists_batch(&keys) {
        Err(RequestError::Protocol { .. }) => {}
        other => panic!("expected a protocol error, got {other:?}"),
    }

    // An object of another size than its key's.
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 4 }],
        };
        let _ = send_reply(stream, get.request_id, &reply, &[9u8; 4]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, _) = failed_get(&client(), &owner.key(Some(8)));
    assert_protocol_error(&e, "4 bytes for an 8-byte key");
}

#[test]
fn a_late_reply_is_skipped_and_the_connection_stays_in_sync() {
    let object = pattern(8, 9);
    let owner = {
        let object = object.clone();
        FakeOwner::start(move |stream, first| {
            // The second get arrives once the first one timed out...
            let Some((second, _)) = read_request_head(stream) else {
                return;
            };
            // ...then the first one's answer, late and far larger than its key.
            let late = Response::Get {
                items: vec![GetItem::Found { size: 1 << 20 }],
            };
            let _ = send_reply(stream, first.request_id, &late, &vec![1u8; 1 << 20]);
            let reply = Response::Get {
                items: vec![GetItem::Found { size: 8 }],
            };
            let _ = send_reply(stream, second.request_id, &reply, &object);
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        })
    };
    let store = client();
    let key = owner.key(Some(8));
    let quick = store.with_timeout(Duration::from_millis(500));
    let (e, took) = failed_get(&quick, &key);
    assert_timeout(&e, took, quick.timeout(), "first get");
    let got = store
        .get(&key)
        .expect("the second get, after the late reply");
    assert_eq!(&got[..], &object[..]);
}

#[test]
fn an_owner_closing_mid_frame_is_a_lost_connection() {
    let owner = FakeOwner::start(|stream, get| {
        let reply = Response::Get {
            items: vec![GetItem::Found { size: 8 }],
        };
        let head = frame_head(
            FrameKind::Response,
            get.request_id,
            &encode_response(&reply),
            8,
        );
        let _ = stream.write_all(&head[..head.len() - 3]);
        // Dropping the stream closes it.
    });
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert!(
        matches!(e, GetError::Request(RequestError::ConnectionLost { .. })),
        "expected ConnectionLost, got {e:?}"
    );
    assert!(took < TIMEOUT, "noticed at once, not at the deadline");
}

#[test]
fn a_silent_owner_is_a_timeout_at_the_deadline() {
    let owner = FakeOwner::start(|stream, _| {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (e, took) = failed_get(&client(), &owner.key(Some(8)));
    assert_timeout(&e, took, TIMEOUT, "silent owner");
}

#[test]
fn an_owner_that_reads_slowly_cannot_hold_a_set_past_its_deadline() {
    // The owner reads the Set a little at a time: each write makes some progress, which
    // must not extend the deadline.
    let owner = FakeOwner::start(|stream, _| {
        let started = Instant::now();
        let mut sip = vec![0u8; 256 << 10];
        while started.elapsed() < OWNER_LIFETIME {
            std::thread::sleep(Duration::from_millis(100));
            if !matches!(stream.read(&mut sip), Ok(1..)) {
                return;
            }
        }
    });
    let store = client_with(|c| c.timeout = Duration::from_secs(4));
    // Far larger than the socket buffers of both ends together.
    let key = owner.key(None);
    let object = pattern(MAX_OBJECT as usize * 3 / 4, 5);
    let started = Instant::now();
    let result = store.set(&key, &object);
    let took = started.elapsed();
    assert!(
        matches!(result, Err(SetError::Request(RequestError::Timeout { .. }))),
        "expected a typed Timeout, got {result:?}"
    );
    assert!(
        took <= store.timeout() + SLACK,
        "the set ended {took:?} after it started, past its {:?} deadline",
        store.timeout()
    );
}

#[test]
fn a_caller_behind_a_blocked_writer_ends_by_its_own_deadline() {
    // The owner reads nothing after the Set's head: the set's writer blocks until its
    // deadline, and a second call on the same connection must not wait past its own.
    let done = Arc::new(AtomicBool::new(false));
    let owner = {
        let done = Arc::clone(&done);
        FakeOwner::start(move |_, _| {
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < OWNER_LIFETIME {
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let store = client_with(|c| c.timeout = Duration::from_secs(4));
    let key = owner.key(None);
    let object = pattern(MAX_OBJECT as usize * 3 / 4, 6);
    let (set, exists) = std::thread::scope(|scope| {
        let set = scope.spawn(|| store.set(&key, &object));
        // Once the set is under way, a call with a shorter timeout.
        std::thread::sleep(Duration::from_millis(500));
        let quick = store.with_timeout(Duration::from_secs(1));
        let started = Instant::now();
        let exists = quick.exists(&key);
        let took = started.elapsed();
        let set = set.join().expect("set thread");
        (set, (exists, took))
    });
    done.store(true, Ordering::Relaxed);
    let (exists, took) = exists;
    assert!(
        matches!(exists, Err(RequestError::Timeout { .. })),
        "expected a typed Timeout, got {exists:?}"
    );
    assert!(
        took <= Duration::from_secs(1) + SLACK,
        "the second call ended {took:?} after it started, past its 1 s deadline"
    );
    assert!(
        matches!(set, Err(SetError::Request(RequestError::Timeout { .. }))),
        "expected a typed Timeout for the set, got {set:?}"
    );
}

#[test]
fn callers_waiting_for_a_silent_owners_hello_end_by_their_own_deadlines() {
    let owner = FakeOwner::never_greeting();
    let store = client_with(|c| c.timeout = Duration::from_secs(4));
    let key = owner.key(Some(8));
    let quick_timeout = Duration::from_secs(1);
    let ((first, first_took), (second, second_took)) = std::thread::scope(|scope| {
        let first = scope.spawn(|| failed_get(&store, &key));
        // While the first caller waits for the Hello, a caller with a shorter timeout.
        std::thread::sleep(Duration::from_millis(500));
        let second = failed_get(&store.with_timeout(quick_timeout), &key);
        (first.join().expect("first caller"), second)
    });
    assert_timeout(&second, second_took, quick_timeout, "second caller");
    assert_timeout(&first, first_took, store.timeout(), "first caller");
}

#[test]
fn a_same_node_segment_shorter_than_announced_is_never_mapped() {
    // A fake owner on "this" node: its Hello offers a Unix socket, where it answers a
    // mapped get with an object inside a segment it announces as 1 MiB but whose
    // descriptor holds 4 KiB (reading there would kill the client with SIGBUS).
    const NODE: &str = "fake-same-node";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("owner.sock");
    let unix = UnixListener::bind(&path).expect("bind the owner's unix socket");
    unix.set_nonblocking(true).expect("nonblocking");
    let local = std::thread::spawn(move || {
        let deadline = Instant::now() + OWNER_LIFETIME;
        let mut stream = loop {
            match unix.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        stream.set_nonblocking(false).expect("blocking");
        stream
            .set_read_timeout(Some(OWNER_LIFETIME))
            .expect("read timeout");
        while let Some(received) = read_request(&mut stream) {
            let (reply, fd) = match received.request {
                Request::Hello(_) => (Response::Hello(fake_hello(NODE, "local", None, true)), None),
                Request::Get { .. } => (
                    Response::Get {
                        items: vec![GetItem::Mapped {
                            size: 8,
                            segment: 1,
                            offset: 512 << 10,
                            lease: 1,
                        }],
                    },
                    None,
                ),
                Request::MapSegments { .. } => {
                    let fd = rustix::fs::memfd_create("short", rustix::fs::MemfdFlags::CLOEXEC)
                        .expect("memfd");
                    rustix::fs::ftruncate(&fd, 4096).expect("size the memfd");
                    let segments = vec![SegmentInfo {
                        id: 1,
                        len: 1 << 20,
                    }];
                    (Response::Segments { segments }, Some(fd))
                }
                _ => continue,
            };
            let frame = frame_head(
                FrameKind::Response,
                received.request_id,
                &encode_response(&reply),
                0,
            );
            let fds: Vec<_> = fd.iter().map(|fd| fd.as_fd()).collect();
            let mut space = [0u8; rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() {
                assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
            }
            let sent = sendmsg(
                &stream,
                &[IoSlice::new(&frame)],
                &mut control,
                SendFlags::empty(),
            );
            assert_eq!(sent.ok(), Some(frame.len()), "one whole frame per message");
        }
    });
    let socket = path.to_string_lossy().into_owned();
    let owner = FakeOwner::start_as(NODE, Some(socket), |stream, _| {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let store = client_with(|c| {
        c.node = Some(NODE.into());
        c.local = LocalMode::Map;
    });
    let (e, _) = failed_get(&store, &owner.key(Some(8)));
    assert_protocol_error(&e, "a segment shorter than announced");
    drop(store);
    drop(owner);
    local.join().expect("the same-node owner");
}

#[test]
fn a_stopped_owner_is_a_timeout_at_the_deadline() {
    const SIZE: usize = 192 << 20;
    let server = TestServer::start(ServerOptions {
        memory_limit: "512MiB".into(),
        ..ServerOptions::default()
    });
    let writer = server.client("tcp");
    let key = writer.put(&pattern(SIZE, 7)).expect("put");
    // Long enough for the whole object on a slow machine.
    let timeout = Duration::from_secs(8);
    let reader = client_with(|c| c.timeout = timeout);
    for attempt in 0..5 {
        // Stop the owner once the reply has started to land in this process.
        let before = self_rss_kib();
        let started = Instant::now();
        let result = std::thread::scope(|scope| {
            let get = scope.spawn(|| reader.get(&key));
            let mut stopped = false;
            while !get.is_finished() && started.elapsed() < timeout {
                if self_rss_kib().saturating_sub(before) >= 4 << 10 {
                    server.signal(rustix::process::Signal::Stop);
                    stopped = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let result = get.join().expect("get thread");
            (stopped, result, started.elapsed())
        });
        let (stopped, result, took) = result;
        if stopped {
            server.signal(rustix::process::Signal::Cont);
        }
        match result {
            Ok(bytes) => {
                assert_eq!(bytes.len(), SIZE);
                eprintln!("attempt {attempt}: the get finished before the owner stopped");
                continue;
            }
            Err(e) => {
                assert!(stopped, "the get failed without a stop: {e:?}");
                assert_timeout(&e, took, timeout, "stopped owner");
                // The owner serves again once continued.
                let again = reader.get(&key).expect("get after SIGCONT");
                assert_eq!(again.len(), SIZE);
                return;
            }
        }
    }
    panic!("the owner could not be stopped mid-get in 5 attempts");
}
