//! dimstore-transport-ucx against the real UCX, no mocks.
//!
//! UCX reads its environment when a context is created, so every test body runs in a child
//! process (this binary run again, as the `child` test) with `UCX_TLS=tcp UCX_NET_DEVICES=lo`
//! or `UCX_TLS=posix,sysv,cma`; each test function below exists once per setting (`tcp`,
//! `shm`). Servers in another process are this binary run once more (`exporter_process`).
//! Every child is bounded by a watchdog and killed by its parent if it overruns.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use dimstore_arena::{Allocation, Arena, ArenaConfig};
use dimstore_ffi_test_support::{hex, pattern, stdin_lines, tell, unhex, watchdog, Peer};
use dimstore_transport::onesided::{Exporter, Reader, RemoteRead, RemoteRegion};
use dimstore_transport::{AlignedBuf, TransportError};
use dimstore_transport_ucx::{shared_reader, UcxConfig, UcxExporter, UcxReader, NAME};

/// A child process running one test body is aborted after this.
const LIMIT: Duration = Duration::from_secs(120);
/// Deadline of one read in the tests (never reached when things work).
const OP: Duration = Duration::from_secs(20);
const MIB: usize = 1 << 20;

/// The UCX transports every test runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    /// `UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`: reads are emulated with active messages.
    Tcp,
    /// `UCX_TLS=posix,sysv,cma`: reads are process_vm_readv (cma).
    Shm,
}

impl Tls {
    fn current() -> Tls {
        match std::env::var("UCX_TLS").as_deref() {
            Ok("tcp") => Tls::Tcp,
            _ => Tls::Shm,
        }
    }
}

/// Instantiates `$name` once per transport (each in its own child process), and the
/// dispatcher the child uses to find the body.
macro_rules! per_tls {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn tcp() {
                    super::in_child(stringify!($name), &[("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")]);
                }
                #[test]
                fn shm() {
                    super::in_child(stringify!($name), &[("UCX_TLS", "posix,sysv,cma")]);
                }
            }
        )*
        fn dispatch(name: &str) {
            match name {
                $(stringify!($name) => $name(),)*
                "unavailable" => unavailable(),
                other => panic!("no test body named {other}"),
            }
        }
    };
}

per_tls!(
    small_and_scattered_reads,
    large_object_in_chunks,
    concurrent_reads_share_one_reader,
    sweep_drops_released_segments,
    bad_keys_fail_cleanly,
    exporter_in_another_process_killed_mid_read,
);

/// Runs the test body `name` in a child process with `env` (UCX settings), bounded in time;
/// fails if the child fails.
fn in_child(name: &str, env: &[(&str, &str)]) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = Command::new(exe);
    command
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env("DIMSTORE_UCX_TEST_CHILD", name)
        .env_remove("UCX_TLS")
        .env_remove("UCX_NET_DEVICES")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn the child test process");
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let readers: Vec<_> = pipes
        .into_iter()
        .flatten()
        .map(|mut pipe| {
            thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        })
        .collect();
    let deadline = Instant::now() + LIMIT + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let output: Vec<String> = readers
        .into_iter()
        .map(|r| r.join().unwrap_or_default())
        .collect();
    // Shown by the harness when this test fails (or with --nocapture).
    println!("--- child {name} {env:?} ---\n{}", output.join("\n"));
    let status = status.unwrap_or_else(|| panic!("child {name} {env:?} ran past {LIMIT:?}"));
    assert!(status.success(), "child {name} {env:?} failed: {status}");
    assert!(
        output[0].contains("1 passed"),
        "child {name} did not run its test"
    );
}

/// Not a test on its own: the body named by `DIMSTORE_UCX_TEST_CHILD` (set by `in_child`);
/// otherwise it returns at once.
#[test]
fn child() {
    let Ok(name) = std::env::var("DIMSTORE_UCX_TEST_CHILD") else {
        return;
    };
    let _dog = watchdog(&name, LIMIT);
    eprintln!(
        "{name}: UCX_TLS={}",
        std::env::var("UCX_TLS").unwrap_or_default()
    );
    dispatch(&name);
}

#[test]
fn unusable_ucx_reports_unavailable() {
    in_child("unavailable", &[("UCX_TLS", "no_such_transport")]);
}

// ---------------------------------------------------------------------------------------
// Helpers

/// An object in an arena, filled with a pattern, and where peers read it.
struct Object {
    alloc: Allocation,
    bytes: Vec<u8>,
    segment: u32,
    region: RemoteRegion,
    /// Remote address of the object's first byte.
    address: u64,
}

impl Object {
    /// Allocates `len` bytes in `arena`, fills them with pattern `seed` and exports their
    /// segment.
    fn new(arena: &Arena, exporter: &UcxExporter, len: usize, seed: u8) -> Object {
        let mut alloc = arena.allocate(len as u64).expect("arena room");
        let bytes = pattern(len, seed);
        alloc.as_mut_slice().copy_from_slice(&bytes);
        let (segment, offset) = alloc.location().expect("non-empty object");
        let seg = arena.segment(segment).expect("segment mapped");
        let region = exporter.export(segment, &seg).expect("export");
        Object {
            alloc,
            bytes,
            segment,
            address: region.address + offset,
            region,
        }
    }

    /// A read of `len` bytes at `at` of the object into the target at `offset`.
    fn read(&self, at: usize, len: usize, offset: usize) -> RemoteRead<'_> {
        RemoteRead {
            address: self.address + at as u64,
            key: &self.region.key,
            len,
            offset,
        }
    }
}

fn arena(capacity: usize, segment_size: usize) -> Arena {
    Arena::new(ArenaConfig {
        capacity: capacity as u64,
        segment_size: segment_size as u64,
    })
}

fn deadline() -> Instant {
    Instant::now() + OP
}

/// Reads `len` bytes of `object` (through `reader` from `peer`) and returns them.
fn read_all(reader: &UcxReader, peer: &[u8], object: &Object) -> Vec<u8> {
    let len = object.bytes.len();
    reader
        .read(
            peer,
            &[object.read(0, len, 0)],
            AlignedBuf::zeroed(len),
            deadline(),
        )
        .expect("read")
        .to_vec()
}

/// MB/s of `bytes` moved in `elapsed`.
fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

// ---------------------------------------------------------------------------------------
// Test bodies (run in a child process, one UCX setting each)

fn small_and_scattered_reads() {
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    assert_eq!(exporter.name(), NAME);
    assert!(
        exporter.detail().contains("UCX_TLS="),
        "{}",
        exporter.detail()
    );
    // Small chunks, so that the larger regions are read in several gets.
    let reader = UcxReader::start(&UcxConfig {
        chunk: 64 << 10,
        in_flight: 2,
        ..UcxConfig::default()
    })
    .expect("reader");
    let peer = exporter.address();
    let arena = arena(64 * MIB, 8 * MIB);
    let a = Object::new(&arena, &exporter, 1000, 1);
    let b = Object::new(&arena, &exporter, 300 << 10, 2);
    // A dedicated segment (a quarter of the segment size or more): another key.
    let c = Object::new(&arena, &exporter, 3 * MIB, 3);
    assert_eq!(a.segment, b.segment);
    assert_ne!(a.segment, c.segment);
    assert_eq!(exporter.live_registrations(), 2);
    // Exporting again returns the same registration.
    let again = exporter
        .export(a.segment, &arena.segment(a.segment).expect("segment"))
        .expect("export again");
    assert_eq!(again, a.region);
    assert_eq!(exporter.live_registrations(), 2);

    // 8 bytes at an offset.
    let got = reader
        .read(
            &peer,
            &[a.read(100, 8, 0)],
            AlignedBuf::zeroed(8),
            deadline(),
        )
        .expect("8-byte read");
    assert_eq!(&got[..], &a.bytes[100..108]);

    // Several regions of two segments in one read, listed out of order, with gaps.
    let (len_a, len_b, len_c) = (a.bytes.len(), b.bytes.len(), c.bytes.len());
    let (off_c, off_a, off_b) = (16, 16 + len_c + 5, 16 + len_c + 5 + len_a + 11);
    let total = off_b + len_b + 3;
    let reads = [
        b.read(0, len_b, off_b),
        c.read(0, len_c, off_c),
        a.read(0, len_a, off_a),
    ];
    for round in 0..3 {
        let got = reader
            .read(&peer, &reads, AlignedBuf::zeroed(total), deadline())
            .unwrap_or_else(|e| panic!("scattered read {round}: {e}"));
        assert_eq!(got.len(), total);
        assert!(got[..off_c].iter().all(|&x| x == 0), "gap written");
        assert!(got[off_c..off_c + len_c] == c.bytes[..], "region c differs");
        assert!(got[off_c + len_c..off_a].iter().all(|&x| x == 0));
        assert!(got[off_a..off_a + len_a] == a.bytes[..], "region a differs");
        assert!(got[off_b..off_b + len_b] == b.bytes[..], "region b differs");
        assert!(got[off_b + len_b..].iter().all(|&x| x == 0));
    }

    // Misuse is refused before anything is read.
    let refused = reader.read(
        &peer,
        &[a.read(0, 16, 8)],
        AlignedBuf::zeroed(16),
        deadline(),
    );
    assert!(
        matches!(refused, Err(TransportError::OneSided { .. })),
        "{refused:?}"
    );
    let overlapping = [a.read(0, 8, 0), b.read(0, 8, 4)];
    let refused = reader.read(&peer, &overlapping, AlignedBuf::zeroed(16), deadline());
    assert!(
        matches!(refused, Err(TransportError::OneSided { .. })),
        "{refused:?}"
    );
    // Nothing to read: the target comes back as is; a passed deadline is a timeout.
    let empty = reader
        .read(&peer, &[], AlignedBuf::zeroed(4), deadline())
        .expect("empty read");
    assert_eq!(empty.len(), 4);
    let late = reader.read(
        &peer,
        &[a.read(0, 8, 0)],
        AlignedBuf::zeroed(8),
        Instant::now(),
    );
    assert!(matches!(late, Err(TransportError::Timeout)), "{late:?}");

    // Forgetting the peer reconnects on the next read.
    reader.forget(&peer);
    assert_eq!(read_all(&reader, &peer, &b), b.bytes);
    drop((a, b, c));
}

fn large_object_in_chunks() {
    const LEN: usize = 64 * MIB;
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    // The defaults, unless DIMSTORE_UCX_CHUNK / DIMSTORE_UCX_IN_FLIGHT say otherwise.
    let config = UcxConfig::from_env();
    let reader = UcxReader::start(&config).expect("reader");
    assert_eq!(reader.config(), config);
    let peer = exporter.address();
    let arena = arena(256 * MIB, 64 * MIB);
    let object = Object::new(&arena, &exporter, LEN, 5);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let got = reader
            .read(
                &peer,
                &[object.read(0, LEN, 0)],
                AlignedBuf::zeroed(LEN),
                deadline(),
            )
            .expect("64 MiB read");
        times.push(t.elapsed());
        assert!(got[..] == object.bytes[..], "64 MiB read differs");
    }
    let best = times.iter().min().copied().unwrap_or_default();
    eprintln!(
        "ucx {:?} one process: 64 MiB reads, chunk {} KiB, {} in flight: {times:?}, best {:.0} MB/s",
        Tls::current(),
        config.chunk >> 10,
        config.in_flight,
        mbps(LEN, best)
    );
}

fn concurrent_reads_share_one_reader() {
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    let reader = shared_reader(&UcxConfig::default()).expect("shared reader");
    let again = shared_reader(&UcxConfig::default()).expect("shared reader");
    assert!(Arc::ptr_eq(&reader, &again), "one reader per process");
    let peer = exporter.address();
    let arena = arena(64 * MIB, 8 * MIB);
    let objects: Arc<Vec<Object>> = Arc::new(
        [100, 5000, 1 << 20, 3 * MIB]
            .iter()
            .enumerate()
            .map(|(i, &len)| Object::new(&arena, &exporter, len, i as u8 + 10))
            .collect(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (reader, objects, peer) = (Arc::clone(&reader), Arc::clone(&objects), peer.clone());
            thread::spawn(move || {
                for i in 0..25 {
                    let object = &objects[(t + i) % objects.len()];
                    assert!(
                        read_all(&reader, &peer, object) == object.bytes,
                        "thread {t} read {i} differs"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
}

fn sweep_drops_released_segments() {
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    let reader = UcxReader::start(&UcxConfig::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(8 * MIB, MIB);
    let small = Object::new(&arena, &exporter, 4096, 1);
    let big = Object::new(&arena, &exporter, 4 * MIB, 2);
    assert_ne!(small.segment, big.segment);
    assert_eq!(exporter.live_registrations(), 2);
    exporter.sweep();
    assert_eq!(
        exporter.live_registrations(),
        2,
        "segments in use were dropped"
    );
    assert_eq!(read_all(&reader, &peer, &big), big.bytes);

    // The object goes; the arena keeps its dedicated segment as a spare: still registered.
    let big_segment = big.segment;
    drop(big.alloc);
    exporter.sweep();
    assert!(arena.segment(big_segment).is_some());
    assert_eq!(exporter.live_registrations(), 2);

    // A larger object needs the room: the arena unmaps the spare; sweep drops it.
    let bigger = Object::new(&arena, &exporter, 6 * MIB, 3);
    assert!(arena.segment(big_segment).is_none(), "spare not reclaimed");
    assert_eq!(exporter.live_registrations(), 3);
    exporter.sweep();
    assert_eq!(exporter.live_registrations(), 2);
    assert_eq!(read_all(&reader, &peer, &bigger), bigger.bytes);
    assert_eq!(read_all(&reader, &peer, &small), small.bytes);

    // Everything goes.
    drop((small, bigger, arena));
    exporter.sweep();
    assert_eq!(exporter.live_registrations(), 0);
}

fn bad_keys_fail_cleanly() {
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    let reader = UcxReader::start(&UcxConfig::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(16 * MIB, MIB);
    let object = Object::new(&arena, &exporter, 64 << 10, 4);
    let good = object.region.key.clone();
    let mut wrong_type = good.clone();
    wrong_type[8] = 7;
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![1, 2, 3],
        good[..good.len().min(8)].to_vec(),
        vec![0xff; 24],
        wrong_type,
    ];
    for key in &garbage {
        let read = RemoteRead {
            key,
            ..object.read(0, 4096, 0)
        };
        let result = reader.read(&peer, &[read], AlignedBuf::zeroed(4096), deadline());
        assert!(
            matches!(result, Err(TransportError::OneSided { .. })),
            "key {}: {result:?}",
            hex(key)
        );
    }
    // The reader is fine afterwards.
    assert_eq!(read_all(&reader, &peer, &object), object.bytes);

    // Not tried: a stale key of a segment that was freed and unregistered. With these
    // transports UCX emulates the read with active messages, and the target copies from
    // the requested address without checking it against its registrations (over tcp and
    // shared memory alike): such a read would crash the server. The server's leases are
    // what keep an object's memory mapped while a client may read it.
}

fn exporter_in_another_process_killed_mid_read() {
    let tls = Tls::current();
    let reader = UcxReader::start(&UcxConfig::default()).expect("reader");
    let (server, remote) = spawn_exporter();
    let (peer, key, address, len) = remote;
    let expected = pattern(len, 7);
    let read = |deadline: Instant| {
        let region = RemoteRead {
            address,
            key: &key,
            len,
            offset: 0,
        };
        reader.read(&peer, &[region], AlignedBuf::zeroed(len), deadline)
    };
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let got = read(deadline()).expect("read from the other process");
        best = best.min(t.elapsed());
        assert!(
            got[..] == expected[..],
            "bytes from the other process differ"
        );
    }
    eprintln!(
        "ucx {tls:?} two processes: {} MiB in {best:?} ({:.0} MB/s)",
        len / MIB,
        mbps(len, best)
    );

    let small = RemoteRead {
        address: address + 8,
        key: &key,
        len: 8,
        offset: 0,
    };
    let n = 200u32;
    let t = Instant::now();
    for _ in 0..n {
        let got = reader
            .read(&peer, &[small], AlignedBuf::zeroed(8), deadline())
            .expect("8-byte read");
        assert_eq!(&got[..], &expected[8..16]);
    }
    eprintln!(
        "ucx {tls:?} two processes: 8-byte read {:?} (caller to fabric thread and back)",
        t.elapsed() / n
    );

    // A stopped server (a hung node): over tcp the read needs the server to progress, so it
    // ends at its deadline; cma reads a stopped process's memory all the same.
    server.signal("STOP");
    let t = Instant::now();
    let outcome = read(Instant::now() + Duration::from_secs(1));
    eprintln!(
        "ucx {tls:?}: read from a stopped server: {:?} after {:?}",
        outcome.as_ref().map(|b| b.len()),
        t.elapsed()
    );
    if tls == Tls::Tcp {
        assert!(
            matches!(outcome, Err(TransportError::Timeout)),
            "{outcome:?}"
        );
    }
    server.signal("CONT");
    let got = read(deadline()).expect("read after the server resumed");
    assert!(got[..] == expected[..]);

    // Killed (-9) while reads are running: the read in progress (or the next) fails
    // within its deadline. Over tcp UCX notices the dead peer (an error at once); over
    // shared memory it cannot (UCX 1.13 has no peer-failure detection there), so the read
    // ends at its deadline.
    const LOOP_READ: Duration = Duration::from_secs(5);
    let (progress_tx, progress_rx) = mpsc::channel();
    let outcome = thread::scope(|s| {
        let looping = s.spawn(|| loop {
            let t = Instant::now();
            let result = read(Instant::now() + LOOP_READ);
            let elapsed = t.elapsed();
            match result {
                Ok(_) => {
                    let _ = progress_tx.send(());
                }
                Err(e) => return (e, elapsed),
            }
        });
        for _ in 0..2 {
            progress_rx.recv_timeout(OP).expect("reads before the kill");
        }
        server.signal("KILL");
        looping.join().expect("read loop")
    });
    eprintln!(
        "ucx {tls:?}: read from a killed server failed after {:?}: {}",
        outcome.1, outcome.0
    );
    assert!(
        outcome.1 <= LOOP_READ + Duration::from_secs(2),
        "not bounded"
    );
    drop(server);
    reader.forget(&peer);

    // A new server: the same reader reads from it.
    let (server, (peer, key, address, len)) = spawn_exporter();
    let got = reader
        .read(
            &peer,
            &[RemoteRead {
                address,
                key: &key,
                len,
                offset: 0,
            }],
            AlignedBuf::zeroed(len),
            deadline(),
        )
        .expect("read from a new server");
    assert!(got[..] == expected[..]);
    drop(server);
}

/// Where a server process's object is: its address, key, remote address and length.
type Remote = (Vec<u8>, Vec<u8>, u64, usize);

/// Starts `exporter_process` (same UCX environment) and learns where its object is.
fn spawn_exporter() -> (Peer, Remote) {
    let mut peer = Peer::spawn("exporter_process", &[("DIMSTORE_UCX_EXPORTER", "1")]);
    let remote = (
        unhex(&peer.read("ADDR")),
        unhex(&peer.read("KEY")),
        peer.read("AT").parse().expect("remote address"),
        peer.read("LEN").parse().expect("length"),
    );
    (peer, remote)
}

/// Not a test on its own: a server process for `exporter_in_another_process_killed_mid_read`
/// when run with `DIMSTORE_UCX_EXPORTER` set; otherwise it returns at once.
#[test]
fn exporter_process() {
    if std::env::var_os("DIMSTORE_UCX_EXPORTER").is_none() {
        return;
    }
    let _dog = watchdog("exporter_process", LIMIT);
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    let arena = arena(128 * MIB, 64 * MIB);
    let object = Object::new(&arena, &exporter, 32 * MIB, 7);
    tell("ADDR", hex(&exporter.address()));
    tell("KEY", hex(&object.region.key));
    tell("AT", object.address);
    tell("LEN", object.bytes.len());
    // The fabric thread serves reads; wait until the parent closes stdin.
    let lines = stdin_lines();
    while lines.recv().is_ok() {}
}

fn unavailable() {
    let exporter = UcxExporter::start(&UcxConfig::default());
    eprintln!("exporter with UCX_TLS=no_such_transport: {exporter:?}");
    assert!(
        matches!(&exporter, Err(TransportError::Unavailable { transport, .. }) if transport == NAME),
        "{exporter:?}"
    );
    let reader = UcxReader::start(&UcxConfig::default());
    assert!(
        matches!(&reader, Err(TransportError::Unavailable { .. })),
        "{reader:?}"
    );
}
