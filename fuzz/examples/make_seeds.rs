//! Writes the seed corpus for the fuzz targets: real encoded frames, so the fuzzer starts from
//! inputs that get past the header checks and into the rkyv validation.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds            # -> fuzz/seeds/
//! cargo run --manifest-path fuzz/Cargo.toml --example make_seeds -- OUTDIR
//! ```
//!
//! The seeds are checked in; rerun this after changing the wire format and commit the result.
//! Every file in `<OUTDIR>/frame_decoder/`, `<OUTDIR>/header/` and `<OUTDIR>/server_requests/`
//! is replaced.

use std::fs;
use std::path::{Path, PathBuf};

use dimstore_proto::{
    encode_request, encode_response, ErrorReply, FrameHeader, FrameKind, GetItem, Hello,
    HelloReply, Invoke, Invoked, ObjectId, OneSidedOffer, PutOptions, Request, Reservation,
    Response, SegmentInfo, SegmentKey, ServerStats, Status, TransportStats, HEADER_LEN,
};

/// Control prefix of a `frame_decoder` input: limits byte (4096 / 4096), no chunk lengths.
const WHOLE: [u8; 2] = [0b1111, 0];

fn frame(kind: FrameKind, id: u64, body: &[u8], payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        kind,
        request_id: id,
        body_len: body.len() as u32,
        payload_len: payload.len() as u64,
    };
    let mut out = header.encode().to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(payload);
    out
}

fn request(id: u64, req: &Request, payload: &[u8]) -> Vec<u8> {
    frame(FrameKind::Request, id, &encode_request(req), payload)
}

fn notice(id: u64, req: &Request) -> Vec<u8> {
    frame(FrameKind::Notice, id, &encode_request(req), b"")
}

fn response(id: u64, resp: &Response, payload: &[u8]) -> Vec<u8> {
    frame(FrameKind::Response, id, &encode_response(resp), payload)
}

fn reset_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds"));
    let ids = vec![
        ObjectId(1),
        ObjectId(u128::MAX),
        ObjectId(0x0123_4567_89ab_cdef),
    ];

    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "req-hello",
            request(
                1,
                &Request::Hello(Hello {
                    token: Some("fleet-token".into()),
                    client_node: "n1".into(),
                    client_pid: 4242,
                    map: false,
                    map_from: 0,
                }),
                b"",
            ),
        ),
        (
            "req-use-one-sided",
            request(
                1,
                &Request::UseOneSided {
                    transport: "ucx".into(),
                    from: 65536,
                },
                b"",
            ),
        ),
        (
            "req-put",
            request(
                2,
                &Request::Put {
                    sizes: vec![3, 0, 5],
                },
                b"abcdefgh",
            ),
        ),
        (
            "req-get",
            request(
                3,
                &Request::Get {
                    ids: ids.clone(),
                    wait_ms: 250,
                },
                b"",
            ),
        ),
        (
            "req-exists",
            request(4, &Request::Exists { ids: ids.clone() }, b""),
        ),
        (
            "req-evict",
            request(5, &Request::Evict { ids: ids.clone() }, b""),
        ),
        (
            "req-newkeys",
            request(6, &Request::NewKeys { count: 2 }, b""),
        ),
        (
            "req-set",
            request(
                7,
                &Request::Set {
                    ids: ids[..2].to_vec(),
                    sizes: vec![1, 2],
                },
                b"xyz",
            ),
        ),
        ("req-stats", request(8, &Request::Stats, b"")),
        ("req-shutdown", request(9, &Request::Shutdown, b"")),
        (
            "req-map-segments",
            request(10, &Request::MapSegments { ids: vec![0, 1, 7] }, b""),
        ),
        (
            "req-create",
            request(
                11,
                &Request::Create {
                    sizes: vec![16, 0, 4096],
                },
                b"",
            ),
        ),
        (
            "req-seal",
            request(
                12,
                &Request::Seal {
                    reservations: vec![1, 2],
                    lens: vec![16, 0],
                },
                b"",
            ),
        ),
        (
            "notice-release",
            notice(13, &Request::Release { leases: vec![1, 9] }),
        ),
        (
            "notice-abort",
            notice(
                14,
                &Request::Abort {
                    reservations: vec![3],
                },
            ),
        ),
        (
            "req-segment-keys",
            request(15, &Request::SegmentKeys { ids: vec![0, 2] }, b""),
        ),
        (
            "req-open-channel",
            request(
                16,
                &Request::OpenChannel {
                    transport: "ucx".into(),
                    address: vec![0xab; 24],
                },
                b"",
            ),
        ),
        (
            "req-invoke",
            request(
                17,
                &Request::Invoke(Invoke {
                    ids: ids.clone(),
                    module: [7; 32],
                    with_module: true,
                    function: "sum".into(),
                    arg: vec![1, 2, 3],
                    to_key: false,
                }),
                b"\0asm\x01\0\0\0",
            ),
        ),
        (
            "req-put-with",
            request(
                18,
                &Request::PutWith {
                    sizes: vec![2, 1],
                    options: PutOptions {
                        ttl_ms: 2000,
                        lease_ms: 0,
                        owner: Some("task-7".into()),
                    },
                },
                b"abc",
            ),
        ),
        (
            "req-get-and-evict",
            request(19, &Request::GetAndEvict { ids: ids.clone() }, b""),
        ),
        (
            "req-release-owner",
            request(
                20,
                &Request::ReleaseOwner {
                    owner: "task-7".into(),
                },
                b"",
            ),
        ),
        (
            "req-extend",
            request(
                21,
                &Request::Extend {
                    ids: ids.clone(),
                    lease_ms: 5000,
                },
                b"",
            ),
        ),
        (
            "resp-hello",
            response(
                1,
                &Response::Hello(HelloReply {
                    server_id: 0xdead_beef,
                    node: "n1".into(),
                    advertised: "10.0.0.1:7070".into(),
                    pid: 77,
                    transports: vec!["tcp".into()],
                    max_object: 1 << 30,
                    local_socket: None,
                    mapped: false,
                    one_sided: vec![OneSidedOffer {
                        transport: "ofi".into(),
                        detail: "tcp;ofi_rxm".into(),
                        address: vec![1, 2, 3, 4],
                    }],
                }),
                b"",
            ),
        ),
        (
            "resp-put",
            response(2, &Response::Put { ids: ids.clone() }, b""),
        ),
        (
            "resp-get",
            response(
                3,
                &Response::Get {
                    items: vec![
                        GetItem::Found { size: 4 },
                        GetItem::NotFound,
                        GetItem::NotSet,
                        GetItem::Mapped {
                            size: 8,
                            segment: 0,
                            offset: 64,
                            lease: 1,
                        },
                        GetItem::Remote {
                            size: 1 << 16,
                            segment: 1,
                            offset: 0,
                            lease: 2,
                        },
                    ],
                },
                b"data",
            ),
        ),
        (
            "resp-exists",
            response(
                4,
                &Response::Exists {
                    present: vec![true, false, true],
                },
                b"",
            ),
        ),
        (
            "resp-evict",
            response(
                5,
                &Response::Evict {
                    evicted: vec![false, true],
                },
                b"",
            ),
        ),
        (
            "resp-newkeys",
            response(6, &Response::NewKeys { ids: ids.clone() }, b""),
        ),
        ("resp-done", response(8, &Response::Done, b"")),
        (
            "resp-segments",
            response(
                10,
                &Response::Segments {
                    segments: vec![SegmentInfo {
                        id: 0,
                        len: 1 << 20,
                    }],
                },
                b"",
            ),
        ),
        (
            "resp-segment-keys",
            response(
                15,
                &Response::SegmentKeys {
                    keys: vec![SegmentKey {
                        id: 0,
                        address: 0x7f00_0000_0000,
                        key: vec![1, 2, 3, 4, 5, 6, 7, 8],
                    }],
                },
                b"",
            ),
        ),
        (
            "resp-created",
            response(
                11,
                &Response::Created {
                    reservations: vec![Reservation {
                        id: 1,
                        segment: 0,
                        offset: 4096,
                        capacity: 16,
                    }],
                },
                b"",
            ),
        ),
        (
            "resp-invoked",
            response(17, &Response::Invoked(Invoked::Output { size: 3 }), b"out"),
        ),
        (
            "resp-released",
            response(20, &Response::Released { objects: 2 }, b""),
        ),
        (
            "resp-channel",
            response(16, &Response::Channel { id: 0x5eed }, b""),
        ),
        (
            "resp-stats",
            response(
                8,
                &Response::Stats(ServerStats {
                    pid: 77,
                    node: "n1".into(),
                    advertised: "10.0.0.1:7070".into(),
                    objects: 3,
                    transports: vec![TransportStats {
                        name: "tcp".into(),
                        connections: 1,
                        refused_connections: 0,
                        bytes_served: 12,
                        one_sided_bytes: 0,
                        registrations: 0,
                        pulled_bytes: 0,
                    }],
                    ..Default::default()
                }),
                b"",
            ),
        ),
        (
            "resp-error",
            response(
                9,
                &Response::Error(ErrorReply::new(Status::StoreFull, "no room for 8 bytes")),
                b"",
            ),
        ),
    ];

    let decoder_dir = out.join("frame_decoder");
    let header_dir = out.join("header");
    reset_dir(&decoder_dir)?;
    reset_dir(&header_dir)?;

    for (name, bytes) in &frames {
        let mut input = WHOLE.to_vec();
        input.extend_from_slice(bytes);
        fs::write(decoder_dir.join(format!("{name}.bin")), input)?;
    }
    // A conversation, delivered in uneven chunks (lengths 1, 7, 0 = empty push, 33).
    let mut input = vec![0b1111, 4, 1, 7, 0, 33];
    for (_, bytes) in &frames {
        input.extend_from_slice(bytes);
    }
    fs::write(decoder_dir.join("stream-split.bin"), input)?;

    // Headers: one per kind, and ones with a payload.
    for name in ["req-hello", "req-put", "notice-release", "resp-get"] {
        let (_, bytes) = frames
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a seed of that name");
        fs::write(header_dir.join(format!("{name}.bin")), &bytes[..HEADER_LEN])?;
    }

    server_seeds(&out.join("server_requests"))?;

    println!("seeds written to {}", out.display());
    Ok(())
}

/// Instance id of the `server_requests` target's server (its `ServiceIdentity::server_id`):
/// object ids are this in the high 64 bits and a counter from 1 in the low ones.
const FUZZ_SERVER_ID: u64 = 0x00f0_cc0d;

/// The `n`th object id the `server_requests` target's server hands out.
fn server_object(n: u64) -> ObjectId {
    ObjectId((u128::from(FUZZ_SERVER_ID) << 64) | u128::from(n))
}

fn hello(token: Option<&str>, map: bool) -> Request {
    Request::Hello(Hello {
        token: token.map(str::to_string),
        client_node: "fuzz-node".into(),
        client_pid: 1,
        map,
        map_from: 0,
    })
}

/// Conversations for the `server_requests` target: a config byte (see its input layout),
/// then request frames; a frame's request id picks its session.
fn server_seeds(dir: &Path) -> std::io::Result<()> {
    reset_dir(dir)?;
    // Objects 1-3 from the put, 4-5 reserved by NewKeys and set.
    let stored: Vec<ObjectId> = (1..=5).map(server_object).collect();
    let store_and_read = |session: u64| -> Vec<u8> {
        [
            request(
                session,
                &Request::Put {
                    sizes: vec![3, 0, 5],
                },
                b"abcdefgh",
            ),
            request(session, &Request::NewKeys { count: 2 }, b""),
            request(
                session,
                &Request::Get {
                    ids: stored[3..].to_vec(),
                    wait_ms: 50,
                },
                b"",
            ),
            request(
                session,
                &Request::Set {
                    ids: stored[3..].to_vec(),
                    sizes: vec![2, 1],
                },
                b"xyz",
            ),
            request(
                session,
                &Request::Get {
                    ids: stored.clone(),
                    wait_ms: 0,
                },
                b"",
            ),
            request(
                session,
                &Request::Exists {
                    ids: stored.clone(),
                },
                b"",
            ),
            request(
                session,
                &Request::Evict {
                    ids: stored[..1].to_vec(),
                },
                b"",
            ),
            request(session, &Request::Stats, b""),
        ]
        .concat()
    };
    let conversations: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "store-and-read",
            0,
            [request(0, &hello(None, false), b""), store_and_read(0)].concat(),
        ),
        (
            "no-hello",
            0,
            [
                request(0, &Request::Put { sizes: vec![4] }, b"abcd"),
                request(0, &Request::Stats, b""),
            ]
            .concat(),
        ),
        (
            "token",
            8,
            [
                request(0, &hello(Some("wrong"), false), b""),
                request(0, &hello(Some("fleet-token"), false), b""),
                store_and_read(0),
            ]
            .concat(),
        ),
        (
            "two-sessions",
            1,
            [
                request(0, &hello(None, false), b""),
                request(1, &hello(None, false), b""),
                request(0, &Request::NewKeys { count: 1 }, b""),
                request(
                    1,
                    &Request::Get {
                        ids: vec![server_object(1)],
                        wait_ms: 1000,
                    },
                    b"",
                ),
                request(
                    0,
                    &Request::Set {
                        ids: vec![server_object(1)],
                        sizes: vec![2],
                    },
                    b"hi",
                ),
                request(
                    1,
                    &Request::Get {
                        ids: vec![server_object(1)],
                        wait_ms: 0,
                    },
                    b"",
                ),
                request(0, &Request::Shutdown, b""),
            ]
            .concat(),
        ),
        (
            "same-node-mapped",
            4 | 1,
            [
                request(0, &hello(None, true), b""),
                request(1, &hello(None, false), b""),
                request(0, &Request::Put { sizes: vec![8] }, b"mappable"),
                request(
                    0,
                    &Request::Get {
                        ids: vec![server_object(1)],
                        wait_ms: 0,
                    },
                    b"",
                ),
                request(0, &Request::MapSegments { ids: vec![0, 1] }, b""),
                request(0, &Request::Create { sizes: vec![16, 4] }, b""),
                request(
                    0,
                    &Request::Seal {
                        reservations: vec![1],
                        lens: vec![10],
                    },
                    b"",
                ),
                notice(
                    0,
                    &Request::Abort {
                        reservations: vec![2],
                    },
                ),
                notice(0, &Request::Release { leases: vec![1] }),
                request(1, &Request::Create { sizes: vec![16] }, b""),
                request(
                    1,
                    &Request::Get {
                        ids: vec![server_object(1)],
                        wait_ms: 0,
                    },
                    b"",
                ),
            ]
            .concat(),
        ),
        (
            "channel",
            16,
            [
                request(0, &hello(None, false), b""),
                request(
                    0,
                    &Request::OpenChannel {
                        transport: "ucx".into(),
                        address: vec![7; 16],
                    },
                    b"",
                ),
                // Request id 1 with one session and one channel: the channel.
                request(1, &Request::Put { sizes: vec![2] }, b"ch"),
                request(
                    1,
                    &Request::OpenChannel {
                        transport: "ucx".into(),
                        address: vec![1],
                    },
                    b"",
                ),
                request(
                    0,
                    &Request::UseOneSided {
                        transport: "ucx".into(),
                        from: 0,
                    },
                    b"",
                ),
                request(0, &Request::SegmentKeys { ids: vec![0] }, b""),
                request(
                    1,
                    &Request::Get {
                        ids: vec![server_object(1)],
                        wait_ms: 0,
                    },
                    b"",
                ),
            ]
            .concat(),
        ),
    ];
    for (name, config, frames) in conversations {
        let mut input = vec![config];
        input.extend_from_slice(&frames);
        fs::write(dir.join(format!("{name}.bin")), input)?;
    }
    Ok(())
}
