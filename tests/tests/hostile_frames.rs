//! A frame storm: several connections send 10^5 random and mutated frames (or stop after
//! 60 s) to a real server with a 64 MiB memory limit, some after a valid Hello with the fleet
//! token, some without, reconnecting whenever the server closes on them. Throughout, a good
//! client puts, gets and evicts objects and checks every byte. At the end the server is
//! alive, its resident memory never went above the limit + 64 MiB, and the good client never
//! failed. The RNG seed is printed (`DIMSTORE_STORM_SEED` replays a run).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore_host::server_files::last_lines;
use dimstore_proto::{
    decode_request, encode_request, FrameDecoder, FrameHeader, FrameKind, FrameLimits, Hello,
    ObjectId, Request, HEADER_LEN,
};
use dimstore_tests::{pattern, peak_rss_kib, rss_kib, ServerOptions, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TOKEN: &str = "storm-token";
const MEMORY_LIMIT_MIB: u64 = 64;
/// Frames sent in total, over all connections.
const FRAMES: u64 = 100_000;
/// The storm stops after this long even if fewer frames went out.
const STORM_TIME: Duration = Duration::from_secs(60);
const STORMERS: u64 = 4;
/// Frame limits as the server applies them (its largest body; payloads up to the limit).
const SERVER_LIMITS: FrameLimits = FrameLimits {
    max_body: 16 << 20,
    max_payload: MEMORY_LIMIT_MIB << 20,
};

fn hello(token: Option<&str>) -> Request {
    Request::Hello(Hello {
        token: token.map(str::to_string),
        client_node: "storm".into(),
        client_pid: std::process::id(),
        map: true,
        map_from: 0,
    })
}

fn random_ids(rng: &mut StdRng) -> Vec<ObjectId> {
    (0..rng.gen_range(0..8))
        .map(|_| ObjectId(rng.gen()))
        .collect()
}

fn small_list(rng: &mut StdRng, max: u64) -> Vec<u64> {
    (0..rng.gen_range(0..6))
        .map(|_| rng.gen_range(0..=max))
        .collect()
}

/// A valid request (never `Shutdown`) and its payload; objects stay small so the storm's
/// own puts cannot fill the store.
fn valid_request(rng: &mut StdRng) -> (Request, Vec<u8>) {
    let sized_payload = |sizes: &[u64], rng: &mut StdRng| -> Vec<u8> {
        (0..sizes.iter().sum::<u64>()).map(|_| rng.gen()).collect()
    };
    match rng.gen_range(0..17) {
        0 => (hello(Some(TOKEN)), Vec::new()),
        1 => (hello(Some("wrong-token")), Vec::new()),
        2 => {
            let sizes = small_list(rng, 256);
            let payload = sized_payload(&sizes, rng);
            (Request::Put { sizes }, payload)
        }
        3 => (
            Request::Get {
                ids: random_ids(rng),
                wait_ms: rng.gen_range(0..50),
            },
            Vec::new(),
        ),
        4 => (
            Request::Exists {
                ids: random_ids(rng),
            },
            Vec::new(),
        ),
        5 => (
            Request::Evict {
                ids: random_ids(rng),
            },
            Vec::new(),
        ),
        6 => (
            Request::NewKeys {
                count: rng.gen_range(0..4),
            },
            Vec::new(),
        ),
        7 => {
            let sizes = small_list(rng, 64);
            let payload = sized_payload(&sizes, rng);
            let ids = sizes.iter().map(|_| ObjectId(rng.gen())).collect();
            (Request::Set { ids, sizes }, payload)
        }
        8 => (Request::Stats, Vec::new()),
        9 => (
            Request::MapSegments {
                ids: (0..rng.gen_range(0..3))
                    .map(|_| rng.gen_range(0..4))
                    .collect(),
            },
            Vec::new(),
        ),
        10 => (
            Request::Create {
                sizes: small_list(rng, 4096),
            },
            Vec::new(),
        ),
        11 => (
            Request::Seal {
                reservations: small_list(rng, 8),
                lens: small_list(rng, 64),
            },
            Vec::new(),
        ),
        12 => (
            Request::Release {
                leases: small_list(rng, 8),
            },
            Vec::new(),
        ),
        13 => (
            Request::Abort {
                reservations: small_list(rng, 8),
            },
            Vec::new(),
        ),
        14 => (
            Request::UseOneSided {
                transport: ["ucx", "ofi", "tcp"][rng.gen_range(0..3)].into(),
                from: rng.gen(),
            },
            Vec::new(),
        ),
        15 => (
            Request::SegmentKeys {
                ids: (0..rng.gen_range(0..3))
                    .map(|_| rng.gen_range(0..4))
                    .collect(),
            },
            Vec::new(),
        ),
        _ => (
            Request::OpenChannel {
                transport: "ucx".into(),
                address: (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
            },
            Vec::new(),
        ),
    }
}

fn encode(kind: FrameKind, request: &Request, payload: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let body = encode_request(request);
    let mut frame = Vec::new();
    FrameHeader::write_head(&mut frame, kind, rng.gen(), &body, payload.len() as u64);
    frame.extend_from_slice(payload);
    frame
}

/// A frame as a hostile peer would send it: valid, or a valid one with flipped, inserted or
/// cut bytes, random header lengths, a random body, or plain junk.
fn hostile_frame(rng: &mut StdRng) -> Vec<u8> {
    let (request, payload) = valid_request(rng);
    let kind = if rng.gen_bool(0.1) {
        FrameKind::Notice
    } else {
        FrameKind::Request
    };
    let mut frame = encode(kind, &request, &payload, rng);
    match rng.gen_range(0..10) {
        0..=2 => {}
        3 => {
            for _ in 0..rng.gen_range(1..5) {
                let i = rng.gen_range(0..frame.len());
                frame[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        4 => {
            let at = rng.gen_range(0..=frame.len());
            let junk: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
            frame.splice(at..at, junk);
        }
        5 => frame.truncate(rng.gen_range(0..frame.len())),
        6 => {
            // Random body length: anything, or just around the real one.
            let len: u32 = if rng.gen_bool(0.5) {
                rng.gen()
            } else {
                rng.gen_range(0..(SERVER_LIMITS.max_body + 2))
            };
            frame[16..20].copy_from_slice(&len.to_le_bytes());
        }
        7 => {
            let len: u64 = match rng.gen_range(0..3) {
                0 => rng.gen(),
                1 => rng.gen_range(0..=SERVER_LIMITS.max_payload + 1),
                _ => rng.gen_range(0..4096),
            };
            frame[24..32].copy_from_slice(&len.to_le_bytes());
        }
        8 => {
            for byte in &mut frame[HEADER_LEN..] {
                *byte = rng.gen();
            }
        }
        _ => {
            frame = (0..rng.gen_range(1..128)).map(|_| rng.gen()).collect();
        }
    }
    frame
}

/// Whether the server, reading `stream` as it would, finds a `Shutdown` request in it: an
/// authenticated client may stop the server, so the storm never sends one, even by chance.
fn asks_for_shutdown(stream: &[u8]) -> bool {
    let mut decoder = FrameDecoder::new(SERVER_LIMITS);
    decoder.push(stream);
    while let Ok(Some(frame)) = decoder.next_frame() {
        let mut body = rkyv::util::AlignedVec::<16>::new();
        body.extend_from_slice(&frame.body);
        if frame.header.kind != FrameKind::Response
            && decode_request(&body) == Ok(Request::Shutdown)
        {
            return true;
        }
    }
    false
}

/// One storming thread: connection after connection until the shared frame budget or the
/// deadline is used up. Returns (connections, frames).
fn storm(address: &SocketAddr, seed: u64, sent: &AtomicU64, deadline: Instant) -> (u64, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut connections, mut frames) = (0, 0);
    let mut replies = vec![0u8; 64 << 10];
    while Instant::now() < deadline && sent.load(Ordering::Relaxed) < FRAMES {
        let Ok(mut conn) = TcpStream::connect_timeout(address, Duration::from_secs(1)) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        connections += 1;
        let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
        let _ = conn.set_read_timeout(Some(Duration::from_millis(20)));
        let mut stream = Vec::new();
        let mut batch = 0;
        match rng.gen_range(0..4) {
            // Authenticated, then hostile.
            0 | 1 => {
                stream = encode(FrameKind::Request, &hello(Some(TOKEN)), &[], &mut rng);
                batch += 1;
            }
            // A wrong token first.
            2 => {
                stream = encode(FrameKind::Request, &hello(Some("guess")), &[], &mut rng);
                batch += 1;
            }
            // No Hello at all.
            _ => {}
        }
        let head = stream.len();
        loop {
            stream.truncate(head);
            let n = rng.gen_range(1..64);
            for _ in 0..n {
                stream.extend_from_slice(&hostile_frame(&mut rng));
            }
            if !asks_for_shutdown(&stream) {
                batch += n;
                break;
            }
        }
        sent.fetch_add(batch, Ordering::Relaxed);
        frames += batch;
        // The server may close or stop reading at any point: that ends this connection.
        let _ = conn.write_all(&stream);
        let _ = conn.shutdown(Shutdown::Write);
        let linger = Instant::now() + Duration::from_millis(100);
        while Instant::now() < linger {
            match conn.read(&mut replies) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    (connections, frames)
}

#[test]
fn a_storm_of_hostile_frames_leaves_the_server_serving_within_its_memory() {
    let seed = std::env::var("DIMSTORE_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("frame storm seed {seed} (replay with DIMSTORE_STORM_SEED={seed})");
    let server = TestServer::start(ServerOptions {
        memory_limit: format!("{MEMORY_LIMIT_MIB}MiB"),
        token: Some(TOKEN.into()),
        ..ServerOptions::default()
    });
    let pid = server.pid();
    let good = server.client_with("tcp", |c| c.token = Some(TOKEN.into()));
    let baseline_kib = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let max_rss_kib = Arc::new(AtomicU64::new(baseline_kib));
    let deadline = Instant::now() + STORM_TIME;
    let started = Instant::now();

    let sampler = {
        let (stop, max_rss_kib) = (Arc::clone(&stop), Arc::clone(&max_rss_kib));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max_rss_kib.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let stormers: Vec<_> = (0..STORMERS)
        .map(|i| {
            let sent = Arc::clone(&sent);
            let address: SocketAddr = server.address().parse().expect("server address");
            std::thread::spawn(move || storm(&address, seed.wrapping_add(i), &sent, deadline))
        })
        .collect();

    // The good client, throughout the storm: every round trip exact.
    let mut rounds = 0u64;
    let mut failures = Vec::new();
    while stormers.iter().any(|s| !s.is_finished()) {
        let data = pattern(1 + (rounds as usize * 7919) % (256 << 10), rounds);
        let outcome = good
            .put(&data)
            .map_err(|e| format!("put: {e}"))
            .and_then(|key| {
                let got = good.get(&key).map_err(|e| format!("get: {e}"))?;
                if got[..] != data[..] {
                    return Err(format!("get returned other bytes ({} bytes)", got.len()));
                }
                good.evict(&key).map_err(|e| format!("evict: {e}"))?;
                Ok(())
            });
        if let Err(e) = outcome {
            failures.push(format!("round {rounds}: {e}"));
        }
        rounds += 1;
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the storm did not stop by its deadline + 60 s ({} frames sent, server RSS {} MiB)",
            sent.load(Ordering::Relaxed),
            rss_kib(pid) >> 10
        );
    }
    let (mut connections, mut frames) = (0, 0);
    for stormer in stormers {
        let (c, f) = stormer.join().expect("storm thread");
        connections += c;
        frames += f;
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    let mut server = server;
    // Not exited within a moment (wait_exit polls; a zero bound would not look at all).
    let alive = server.wait_exit(Duration::from_millis(100)).is_none();
    let after = good.stats();
    let peak_kib = peak_rss_kib(pid).max(max_rss_kib.load(Ordering::Relaxed));
    let bound_kib = (MEMORY_LIMIT_MIB + 64) << 10;
    eprintln!(
        "storm: {frames} frames on {connections} connections in {:.1}s (seed {seed}); \
         good client {rounds} rounds, {} failed; RSS {} MiB before, peak {} MiB (bound {} MiB)",
        started.elapsed().as_secs_f64(),
        failures.len(),
        baseline_kib >> 10,
        peak_kib >> 10,
        bound_kib >> 10
    );
    assert!(
        alive,
        "the server died in the storm (seed {seed}); its log ends:\n{}",
        last_lines(&server.log(), 30)
    );
    assert!(
        frames >= FRAMES || started.elapsed() >= STORM_TIME,
        "the storm ended early: {frames} frames"
    );
    assert!(rounds > 0, "the good client never ran");
    assert!(
        failures.is_empty(),
        "the good client failed {} of {rounds} rounds (seed {seed}), first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        peak_kib <= bound_kib,
        "server RSS peaked at {} MiB, over the {MEMORY_LIMIT_MIB} MiB limit + 64 MiB (seed {seed})",
        peak_kib >> 10
    );
    let after = after.expect("stats after the storm");
    assert_eq!(after.memory_limit, MEMORY_LIMIT_MIB << 20);
}
