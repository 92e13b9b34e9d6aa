//! Isolation from hostile or buggy peers (issue 16, points 9 and 10): one-sided transports
//! listen only on the control interface and are named only after the token check; same-node
//! clients get segment descriptors they can neither truncate nor map writable, and an
//! in-place put can write only its own reservation. Real server processes; the raw
//! descriptors are taken straight off the same-node socket, as a buggy client would hold them.

// The listener and offer tests need a one-sided backend; their helpers idle without one.
#![cfg_attr(
    not(any(feature = "ucx", feature = "ofi")),
    allow(dead_code, unused_imports)
)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dimstore::Key;
use dimstore_arena::MappedSegment;
use dimstore_proto::{GetItem, Hello, Request, Response, Status};
use dimstore_tests::{pattern, ServerOptions, TestServer};
use dimstore_transport::local::{LocalConnection, LocalConnector};
use dimstore_transport::tcp::TcpConnector;
use dimstore_transport::{Connection, Connector, ReplyFrame};
use rustix::fs::{fallocate, fcntl_get_seals, ftruncate, FallocateFlags, SealFlags};
use rustix::io::Errno;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses of the TCP sockets `pid` listens on, from `/proc/<pid>/net/tcp{,6}` joined
/// with the socket inodes among its descriptors.
fn listening_sockets(pid: u32) -> Vec<(IpAddr, u16)> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut found = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            let (ip, port) = f[1].split_once(':').expect("address:port");
            found.push((
                parse_proc_ip(ip),
                u16::from_str_radix(port, 16).expect("port"),
            ));
        }
    }
    found
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in host (little-endian) order.
fn parse_proc_ip(hex: &str) -> IpAddr {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).expect("hex"))
        .map(u32::swap_bytes)
        .collect();
    match words[..] {
        [a] => IpAddr::V4(Ipv4Addr::from(a)),
        [a, b, c, d] => {
            let bytes: Vec<u8> = [a, b, c, d].iter().flat_map(|w| w.to_be_bytes()).collect();
            IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(bytes).expect("16 bytes"),
            ))
        }
        _ => panic!("unexpected address {hex}"),
    }
}

/// Whether this machine has an address outside loopback (else the listener test cannot
/// tell "control interface only" from "every interface").
fn has_external_address() -> bool {
    let text = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    let v6 = text
        .lines()
        .any(|l| !l.ends_with(" lo") && !l.starts_with("fe80"));
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    v6 || route.lines().skip(1).any(|l| !l.starts_with("lo"))
}

/// A server listening on loopback with `--one-sided <one_sided>` and no fabric interface
/// configured by the environment.
fn server_with_one_sided(one_sided: &str, token: Option<&str>) -> TestServer {
    for name in [
        "UCX_NET_DEVICES",
        "UCX_TLS",
        "DIMSTORE_OFI_NODE",
        "DIMSTORE_OFI_PROVIDER",
        "DIMSTORE_ONE_SIDED",
    ] {
        std::env::remove_var(name);
    }
    TestServer::start(ServerOptions {
        token: token.map(str::to_owned),
        extra: vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--one-sided".into(),
            one_sided.into(),
        ],
        ..ServerOptions::default()
    })
}

#[cfg(any(feature = "ucx", feature = "ofi"))]
#[test]
fn one_sided_listeners_stay_on_the_control_interface() {
    if !has_external_address() {
        let message = "no address outside loopback here: the listener test cannot fail";
        assert!(!dimstore_tests::under_ci(), "{message}");
        eprintln!("WARNING: {message}");
    }
    // All servers start before any client: a client's own UCX listeners would be inherited
    // by servers this process starts later.
    // Each backend of this build alone, then all of them.
    let every = dimstore::backends::names();
    let servers: Vec<(&str, Vec<&str>, TestServer)> = every
        .iter()
        .map(|name| (*name, vec![*name]))
        .chain([("auto", every.clone())])
        .map(|(one_sided, transports)| {
            (
                one_sided,
                transports,
                server_with_one_sided(one_sided, None),
            )
        })
        .collect();
    for (one_sided, transports, server) in &servers {
        for t in transports {
            assert!(
                server.ready.transports.iter().any(|r| r == t),
                "--one-sided {one_sided}: {t} did not start: {:?}",
                server.ready.transports
            );
        }
        let listening = listening_sockets(server.pid());
        assert!(
            listening.len() > 1,
            "--one-sided {one_sided}: expected the transports' listeners besides the control one: {listening:?}"
        );
        let outside: Vec<_> = listening
            .iter()
            .filter(|(ip, _)| !ip.is_loopback())
            .collect();
        assert!(
            outside.is_empty(),
            "--one-sided {one_sided} with --listen 127.0.0.1 listens beyond loopback: {outside:?} (all: {listening:?})"
        );
    }
    // Still serving over the restricted transports, byte-exact.
    for (_, transports, server) in &servers {
        for t in transports {
            let store = server.client(t);
            let data = pattern(1 << 20, 9);
            let key = store.put(&data).expect("put");
            assert_eq!(&store.get(&key).expect("get")[..], &data[..], "over {t}");
        }
    }
}

#[cfg(any(feature = "ucx", feature = "ofi"))]
#[test]
fn one_sided_addresses_are_given_only_after_the_token_check() {
    let server = server_with_one_sided("auto", Some("the-token"));
    let hello = |token: Option<&str>| {
        let deadline = Instant::now() + TIMEOUT;
        let connection = TcpConnector::default()
            .connect(server.address(), deadline)
            .expect("connect");
        connection.call(
            &Request::Hello(Hello {
                token: token.map(str::to_owned),
                client_node: "elsewhere".into(),
                client_pid: std::process::id(),
                map: false,
                map_from: 0,
            }),
            &[],
            0,
            deadline,
        )
    };
    for wrong in [None, Some("not-the-token")] {
        // Refused: an error reply, or the connection closed; never the offers.
        if let Ok(reply) = hello(wrong) {
            match reply.response {
                Response::Error(e) => assert_eq!(e.status, Status::Unauthorized),
                other => panic!("a Hello with token {wrong:?} was answered {other:?}"),
            }
        }
    }
    match hello(Some("the-token")).expect("hello").response {
        Response::Hello(reply) => assert!(
            !reply.one_sided.is_empty() && reply.one_sided.iter().all(|o| !o.address.is_empty()),
            "the authenticated Hello carries the offers: {:?}",
            reply.one_sided
        ),
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// A raw same-node connection that asked for mapped gets, as a client holding the
/// descriptors itself would open it.
fn raw_local(server: &TestServer) -> LocalConnection {
    let dir = server.dir.path().join("run").join(&server.ready.node);
    let socket: PathBuf = std::fs::read_dir(&dir)
        .expect("runtime dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("the server's local socket");
    let deadline = Instant::now() + TIMEOUT;
    let connection = LocalConnector::default()
        .connect(socket.to_str().expect("utf-8 path"), deadline)
        .expect("connect");
    let reply = call(
        &connection,
        Request::Hello(Hello {
            token: None,
            client_node: server.ready.node.clone(),
            client_pid: std::process::id(),
            map: true,
            map_from: 0,
        }),
    );
    assert!(
        matches!(reply.response, Response::Hello(ref h) if h.mapped),
        "mapping granted: {:?}",
        reply.response
    );
    connection
}

fn call(connection: &LocalConnection, request: Request) -> ReplyFrame {
    connection
        .call(&request, &[], 0, Instant::now() + TIMEOUT)
        .expect("call")
}

/// The descriptor and length of segment `id`, or the server's refusal.
fn map_segment(connection: &LocalConnection, id: u32) -> Result<(OwnedFd, u64), String> {
    let mut reply = call(connection, Request::MapSegments { ids: vec![id] });
    match (reply.response, reply.fds.pop()) {
        (Response::Segments { segments }, Some(fd)) => Ok((fd, segments[0].len)),
        (other, _) => Err(format!("{other:?}")),
    }
}

#[test]
fn segment_descriptors_cannot_be_truncated_or_mapped_writable() {
    let server = TestServer::start(ServerOptions::default());
    let store = server.client("local");
    // A regular segment (small objects), a dedicated one (a quarter of the default 64 MiB
    // segment size or more), and a writer's (a large object put in place by `store`).
    let mut objects: Vec<(Key, Vec<u8>)> = [100, 64 << 10, 3 << 20, 20 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let data = pattern(len, i as u64);
            (store.put(&data).expect("put"), data)
        })
        .collect();
    let in_place = pattern(17 << 20, 7);
    let mut reservation = store.create(in_place.len() as u64).expect("create");
    reservation.copy_from_slice(&in_place);
    objects.push((reservation.seal().expect("seal"), in_place));
    let raw = raw_local(&server);
    let reply = call(
        &raw,
        Request::Get {
            ids: objects.iter().map(|(k, _)| k.id).collect(),
            wait_ms: 0,
        },
    );
    let Response::Get { items } = reply.response else {
        panic!("get: {:?}", reply.response);
    };
    let mut places = Vec::new();
    let mut leases = Vec::new();
    for item in items {
        let GetItem::Mapped {
            segment,
            offset,
            size,
            lease,
        } = item
        else {
            panic!("expected a mapped item, got {item:?}");
        };
        places.push((segment, offset, size));
        leases.push(lease);
    }
    let segments: HashSet<u32> = places.iter().map(|p| p.0).collect();
    assert!(
        segments.len() >= 3,
        "objects in several segments: {places:?}"
    );
    for &segment in &segments {
        let (fd, len) = map_segment(&raw, segment).expect("segment descriptor");
        // Sealed: no descriptor of the memfd, however reopened, can resize it.
        let seals = fcntl_get_seals(&fd).expect("seals");
        assert!(
            seals.contains(SealFlags::SHRINK | SealFlags::GROW),
            "segment {segment} has seals {seals:?}"
        );
        assert!(
            ftruncate(&fd, 0).is_err(),
            "segment {segment} could be truncated"
        );
        assert!(
            ftruncate(&fd, len + 4096).is_err(),
            "segment {segment} could grow"
        );
        assert!(
            rustix::io::pwrite(&fd, b"overwritten", 0).is_err(),
            "segment {segment} could be written through its descriptor"
        );
        let punch = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        assert!(
            fallocate(&fd, punch, 0, len).is_err(),
            "segment {segment} could have its pages punched out"
        );
        let clone = fd.try_clone().expect("dup");
        assert!(
            MappedSegment::map(clone, len, true).is_err(),
            "segment {segment} could be mapped writable"
        );
        // Read-only mappings are what gets are for, and they see the objects.
        let view = MappedSegment::map(fd, len, false).expect("read-only mapping");
        for ((_, data), &(s, offset, size)) in objects.iter().zip(&places) {
            if s == segment {
                assert_eq!(&view.view(offset, size).expect("in bounds")[..], &data[..]);
            }
        }
    }
    raw.notify(&Request::Release { leases }, Instant::now() + TIMEOUT)
        .expect("release");
    // After the attempts, every object is still served byte-exact, mapped and over TCP.
    let tcp = server.client("tcp");
    for (key, data) in &objects {
        assert_eq!(&store.get(key).expect("mapped get")[..], &data[..]);
        assert_eq!(&tcp.get(key).expect("tcp get")[..], &data[..]);
    }
}

#[test]
fn an_in_place_put_writes_only_its_reservation() {
    let server = TestServer::start(ServerOptions::default());
    let store = server.client("local");
    let neighbours: Vec<(Key, Vec<u8>)> = [100, 5000, 64 << 10]
        .into_iter()
        .enumerate()
        .map(|(i, len)| {
            let data = pattern(len, 100 + i as u64);
            (store.put(&data).expect("put"), data)
        })
        .collect();
    // The library's reservation is exactly what was asked for.
    let mut reservation = store.create(10_000).expect("create");
    assert!(reservation.is_mapped());
    assert_eq!(reservation.len(), 10_000);
    reservation.fill(0x5a);
    let library_key = reservation.seal().expect("seal");

    let writer = raw_local(&server);
    let reply = call(
        &writer,
        Request::Create {
            sizes: vec![10_000],
        },
    );
    let Response::Created { reservations } = reply.response else {
        panic!("create: {:?}", reply.response);
    };
    let reserved = reservations[0];
    // Another connection, even of the same user, cannot write it.
    let other = raw_local(&server);
    if let Ok((fd, len)) = map_segment(&other, reserved.segment) {
        assert!(
            MappedSegment::map(fd, len, true).is_err(),
            "another connection can map a reservation writable"
        );
    }
    // The writer maps everything its descriptor allows, writable, and fills it.
    let (fd, len) = map_segment(&writer, reserved.segment).expect("the writer's descriptor");
    assert_eq!(ftruncate(&fd, 0), Err(Errno::PERM), "reservation truncated");
    let mapping = MappedSegment::map(fd, len, true).expect("writable for its writer");
    let mut everything = mapping.claim(0, len).expect("whole mapping");
    everything.fill(0xee);
    let reply = call(
        &writer,
        Request::Seal {
            reservations: vec![reserved.id],
            lens: vec![10_000],
        },
    );
    let Response::Put { ids } = reply.response else {
        panic!("seal: {:?}", reply.response);
    };
    // Writes after the seal do not reach the published object.
    everything.fill(0x11);
    drop(everything);
    let sealed = Key {
        owner: server.address().to_owned(),
        id: ids[0],
        size: Some(10_000),
    };
    let tcp = server.client("tcp");
    for s in [&store, &tcp] {
        for (key, data) in &neighbours {
            let got = s.get(key).expect("neighbour");
            assert!(
                got[..] == data[..],
                "a neighbour of {} bytes overwritten",
                data.len()
            );
        }
        assert!(
            s.get(&library_key).expect("get").iter().all(|&b| b == 0x5a),
            "the library's in-place object overwritten"
        );
        assert!(
            s.get(&sealed).expect("get").iter().all(|&b| b == 0xee),
            "the sealed object changed after its seal"
        );
    }
}

#[test]
fn open_reservations_per_connection_are_bounded() {
    let server = TestServer::start(ServerOptions::default());
    let raw = raw_local(&server);
    // Each reservation is a segment (a descriptor, a mapping) of its own in the server:
    // 1024 may be open on one connection, not one more.
    for _ in 0..16 {
        let reply = call(&raw, Request::Create { sizes: vec![1; 64] });
        assert!(
            matches!(reply.response, Response::Created { ref reservations } if reservations.len() == 64),
            "{:?}",
            reply.response
        );
    }
    let reply = call(&raw, Request::Create { sizes: vec![1] });
    match reply.response {
        Response::Error(e) => assert_eq!(e.status, Status::BadRequest, "{}", e.message),
        other => panic!("reservation 1025 was granted: {other:?}"),
    }
    // The server serves everyone else meanwhile, and the memory returns with the connection.
    let store = server.client("local");
    let key = store.put(b"still here").expect("put");
    assert_eq!(&store.get(&key).expect("get")[..], b"still here");
    let before = store.stats().expect("stats").arena_segments;
    assert!(before > 1024, "a segment per reservation: {before}");
    drop(raw);
    dimstore_tests::wait_stats(&store, "reservations of a closed connection freed", |s| {
        s.reservations == 0 && s.arena_segments < 8
    });
}
