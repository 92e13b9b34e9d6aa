//! Malformed input from the network: every case gets an error reply or a closed connection,
//! the server allocates nothing beyond its limits, and other clients keep being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use dimstore_proto::{
    encode_request, FrameDecoder, FrameKind, FrameLimits, Request, Response, Status, HEADER_LEN,
};
use dimstore_tests::{
    decode_reply, frame_head, pattern, raw_hello, read_replies, ServerOptions, TestServer,
};

/// What the server did with a malformed input.
#[derive(Debug, PartialEq)]
enum Reaction {
    /// An error reply with this status, then the connection closed.
    ErrorThenClosed(Status),
    /// An error reply with this status; the connection stays open.
    Error(Status),
    /// Closed without a reply.
    Closed,
}

fn raw(server: &TestServer) -> TcpStream {
    let s = TcpStream::connect(server.address()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// A whole request frame: head, then `payload`.
fn request(id: u64, r: &Request, payload: &[u8]) -> Vec<u8> {
    let mut out = frame_head(
        FrameKind::Request,
        id,
        &encode_request(r),
        payload.len() as u64,
    );
    out.extend_from_slice(payload);
    out
}

/// Reads replies until the server closes or goes quiet.
fn react(stream: &mut TcpStream) -> Reaction {
    let mut decoder = FrameDecoder::new(FrameLimits::default());
    let mut status = None;
    let mut buf = [0u8; 4096];
    let mut decoder_len = 0usize;
    stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                decoder_len += n;
                decoder.push(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Reaction::Error(status.unwrap_or_else(|| {
                    panic!(
                        "neither a reply nor a close (got {} bytes so far)",
                        decoder_len
                    )
                }));
            }
            Err(_) => break,
        }
        while let Some(f) = decoder.next_frame().expect("server frames are valid") {
            match decode_reply(&f.body) {
                Response::Error(e) => status = Some(e.status),
                other => panic!("expected an error reply, got {other:?}"),
            }
        }
    }
    match status {
        Some(s) => Reaction::ErrorThenClosed(s),
        None => Reaction::Closed,
    }
}

fn send(server: &TestServer, bytes: &[u8]) -> Reaction {
    let mut s = raw(server);
    // The server may close before reading everything; a reset on write is a reaction too.
    if s.write_all(bytes).is_err() {
        return Reaction::Closed;
    }
    // Done sending: a frame cut short by the end of the stream is refused by the close.
    let _ = s.shutdown(std::net::Shutdown::Write);
    react(&mut s)
}

fn assert_still_serving(server: &TestServer) {
    let client = server.client("tcp");
    let key = client.put(b"still here").expect("put after bad input");
    assert_eq!(&client.get(&key).expect("get")[..], b"still here");
}

#[test]
fn every_malformed_frame_gets_an_error_or_a_close_and_others_are_served() {
    let server = TestServer::start(ServerOptions {
        memory_limit: "64MiB".into(),
        ..ServerOptions::default()
    });
    // A well-behaved client connected throughout.
    let bystander = server.client("tcp");
    let kept = bystander.put(&pattern(100_000, 5)).expect("bystander put");

    let good = request(1, &raw_hello("fuzzer"), &[]);

    let mut wrong_magic = good.clone();
    wrong_magic[..4].copy_from_slice(b"HTTP");
    assert_eq!(
        send(&server, &wrong_magic),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );

    let mut wrong_version = good.clone();
    wrong_version[4] = 99;
    assert_eq!(
        send(&server, &wrong_version),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );

    let mut unknown_kind = good.clone();
    unknown_kind[6] = 42;
    assert_eq!(
        send(&server, &unknown_kind),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );

    let response_kind = frame_head(
        FrameKind::Response,
        1,
        &encode_request(&raw_hello("fuzzer")),
        0,
    );
    assert_eq!(
        send(&server, &response_kind),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );

    // Declared lengths far beyond any limit: refused before anything is allocated.
    let rss_before = server.rss_kib();
    let mut huge_payload = good[..HEADER_LEN].to_vec();
    huge_payload[24..32].copy_from_slice(&(1u64 << 63).to_le_bytes());
    assert_eq!(
        send(&server, &huge_payload),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );
    let mut huge_body = good[..HEADER_LEN].to_vec();
    huge_body[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        send(&server, &huge_body),
        Reaction::ErrorThenClosed(Status::BadRequest)
    );
    assert!(
        server.rss_kib() < rss_before + 16 * 1024,
        "declared lengths must not be allocated"
    );

    // Truncated frames: the server waits for the rest, then sees the close.
    for cut in [1, HEADER_LEN - 1, HEADER_LEN + 3, good.len() - 1] {
        let mut s = raw(&server);
        s.write_all(&good[..cut]).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("half close");
        assert_eq!(react(&mut s), Reaction::Closed, "cut at {cut}");
    }

    // Random bytes.
    for seed in 0..20 {
        let junk = pattern(1 + (seed as usize * 97) % 3000, seed);
        let r = send(&server, &junk);
        assert!(
            matches!(r, Reaction::Closed | Reaction::ErrorThenClosed(_)),
            "seed {seed}: {r:?}"
        );
    }

    // A valid header with a garbage body: error reply, and the stream stays in sync.
    let mut s = raw(&server);
    s.write_all(&frame_head(FrameKind::Request, 9, &pattern(64, 3), 0))
        .expect("write");
    s.write_all(&good).expect("write hello");
    let replies = read_replies(&mut s, 2);
    assert!(matches!(&replies[0], (9, Response::Error(e)) if e.status == Status::BadRequest));
    assert!(matches!(&replies[1], (1, Response::Hello(_))));

    // Requests before Hello, sizes that do not match the payload, payload on a get.
    let mut s = raw(&server);
    s.write_all(&request(2, &Request::Stats, &[]))
        .expect("write");
    assert_eq!(react(&mut s), Reaction::Error(Status::BadRequest));
    let mut s = raw(&server);
    s.write_all(&good).expect("hello");
    s.write_all(&request(
        3,
        &Request::Put {
            sizes: vec![10, 10],
        },
        &[1u8; 15],
    ))
    .expect("write");
    s.write_all(&request(
        4,
        &Request::Get {
            ids: vec![],
            wait_ms: 0,
        },
        &[1u8; 8],
    ))
    .expect("write");
    let statuses: Vec<Option<Status>> = read_replies(&mut s, 3)
        .into_iter()
        .map(|(_, reply)| match reply {
            Response::Error(e) => Some(e.status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![None, Some(Status::BadRequest), Some(Status::BadRequest)]
    );

    // The bystander never noticed; the server holds only its object.
    assert_eq!(bystander.get(&kept).expect("bystander get").len(), 100_000);
    assert_still_serving(&server);
    let stats = bystander.stats().expect("stats");
    assert!(
        stats.bytes_used <= 200_000,
        "{} bytes held",
        stats.bytes_used
    );
}

#[test]
fn a_put_stalling_mid_payload_is_dropped_and_its_memory_freed() {
    let server = TestServer::start(ServerOptions {
        memory_limit: "64MiB".into(),
        extra: vec!["--stall-timeout".into(), "300ms".into()],
        ..ServerOptions::default()
    });
    let observer = server.client("tcp");
    let mut s = raw(&server);
    s.write_all(&request(1, &raw_hello("fuzzer"), &[]))
        .expect("hello");
    // Declare 48 MiB, send 1 MiB of it, then go quiet with the connection open.
    let body = encode_request(&Request::Put {
        sizes: vec![48 << 20],
    });
    s.write_all(&frame_head(FrameKind::Request, 2, &body, 48 << 20))
        .expect("put header");
    s.write_all(&vec![0u8; 1 << 20]).expect("first MiB");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut saw_reservation = false;
    loop {
        let used = observer.stats().expect("stats").bytes_used;
        saw_reservation |= used >= 48 << 20;
        if saw_reservation && used == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reservation never released (used {used}, seen {saw_reservation})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The stalled connection was closed (after the Hello reply).
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.read_to_end(&mut rest);
    assert!(server.log().contains("stalled"), "{}", server.log());
    assert_still_serving(&server);
}
