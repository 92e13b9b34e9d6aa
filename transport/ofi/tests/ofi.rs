//! The libfabric data plane against the real libfabric, no mocks: every test runs over
//! `tcp;ofi_rxm` (127.0.0.1) and `shm`, with arena segments exported by an [`OfiExporter`]
//! and read back by an [`OfiReader`], in one process and across two (this binary run again
//! as the exporter).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dimstore_arena::{Allocation, Arena, ArenaConfig};
use dimstore_ffi_test_support::{hex, pattern, stdin_lines, tell, unhex, watchdog, Peer};
use dimstore_transport::onesided::{Exporter, Reader, RemoteRead, RemoteRegion};
use dimstore_transport::{AlignedBuf, TransportError};
use dimstore_transport_ofi::{shared_reader, OfiConfig, OfiExporter, OfiReader};

/// Every test is aborted if it runs longer than this.
const LIMIT: Duration = Duration::from_secs(120);
/// Deadline of one read in the tests.
const OP: Duration = Duration::from_secs(20);
const MIB: usize = 1 << 20;

/// The providers every test runs over.
#[derive(Clone, Copy, Debug)]
enum Prov {
    /// `tcp;ofi_rxm` bound to 127.0.0.1.
    Tcp,
    /// `shm`.
    Shm,
}

impl Prov {
    fn config(self) -> OfiConfig {
        match self {
            Prov::Tcp => OfiConfig::new("tcp;ofi_rxm", Some("127.0.0.1")),
            Prov::Shm => OfiConfig::new("shm", None),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Prov::Tcp => "tcp",
            Prov::Shm => "shm",
        }
    }

    fn from_name(name: &str) -> Self {
        match name {
            "tcp" => Prov::Tcp,
            _ => Prov::Shm,
        }
    }
}

/// Instantiates `$name(prov)` once per provider.
macro_rules! per_provider {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tcp_rxm() {
                super::$name(super::Prov::Tcp)
            }
            #[test]
            fn shm() {
                super::$name(super::Prov::Shm)
            }
        }
    )*};
}

per_provider!(
    small_and_scattered_reads,
    large_read_in_chunks,
    concurrent_reads_from_many_threads,
    read_from_another_process_killed_mid_read,
    sweep_drops_released_segments,
    wrong_key_is_a_typed_error,
    forget_then_read_again,
    idle_fabric_threads_sleep,
);

/// An arena of `capacity` with `segment` sized regular segments.
fn arena(capacity: usize, segment: usize) -> Arena {
    Arena::new(ArenaConfig {
        capacity: capacity as u64,
        segment_size: segment as u64,
    })
}

/// An allocation of `len` bytes holding `pattern(len, seed)`.
fn object(arena: &Arena, len: usize, seed: u8) -> Allocation {
    let mut a = arena.allocate(len as u64).expect("allocate");
    a.as_mut_slice().copy_from_slice(&pattern(len, seed));
    a
}

/// Exports the segment of `a`; returns the region and the object's remote address.
fn export(exporter: &OfiExporter, arena: &Arena, a: &Allocation) -> (RemoteRegion, u64) {
    let (id, offset) = a.location().expect("non-empty");
    let segment = arena.segment(id).expect("segment mapped");
    let region = exporter.export(id, &segment).expect("export");
    let again = exporter.export(id, &segment).expect("export again");
    assert_eq!(region, again, "a second export must return the same region");
    let address = region.address + offset;
    (region, address)
}

fn deadline() -> Instant {
    Instant::now() + OP
}

fn small_and_scattered_reads(prov: Prov) {
    let _dog = watchdog("small_and_scattered_reads", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    assert_eq!(exporter.name(), "ofi");
    eprintln!("exporter detail: {}", exporter.detail());
    let reader = OfiReader::start(&prov.config()).expect("reader");
    let arena = arena(64 * MIB, 4 * MIB);
    let a = object(&arena, 1000, 1);
    let b = object(&arena, 300_000, 2);
    let c = object(&arena, 2 * MIB, 3); // a dedicated segment of its own
    assert_ne!(a.location().unwrap().0, c.location().unwrap().0);
    let (ra, addr_a) = export(&exporter, &arena, &a);
    let (rb, addr_b) = export(&exporter, &arena, &b);
    let (rc, addr_c) = export(&exporter, &arena, &c);
    assert_eq!(
        exporter.live_registrations(),
        2,
        "one registration per segment"
    );
    let peer = exporter.address();

    // 8 bytes at an offset.
    let got = reader
        .read(
            &peer,
            &[RemoteRead {
                address: addr_a + 123,
                key: &ra.key,
                len: 8,
                offset: 0,
            }],
            AlignedBuf::zeroed(8),
            deadline(),
        )
        .expect("read 8 B");
    assert_eq!(&got[..], &a.as_slice()[123..131]);

    // Three regions (two segments) in one read, listed out of order, landing at their
    // offsets; the gap between them stays untouched.
    let (la, lb, lc) = (a.as_slice().len(), b.as_slice().len(), c.as_slice().len());
    let gap = 16;
    let total = la + lb + lc + gap;
    let reads = [
        RemoteRead {
            address: addr_c,
            key: &rc.key,
            len: lc,
            offset: la + lb + gap,
        },
        RemoteRead {
            address: addr_a,
            key: &ra.key,
            len: la,
            offset: 0,
        },
        RemoteRead {
            address: addr_b,
            key: &rb.key,
            len: lb,
            offset: la,
        },
    ];
    let mut fill = AlignedBuf::zeroed(total);
    fill.as_mut_slice().fill(0xEE);
    let got = reader
        .read(&peer, &reads, fill, deadline())
        .expect("scattered read");
    assert!(got[..la] == *a.as_slice(), "first region differs");
    assert!(got[la..la + lb] == *b.as_slice(), "second region differs");
    assert!(
        got[la + lb..la + lb + gap].iter().all(|&x| x == 0xEE),
        "gap written"
    );
    assert!(
        got[la + lb + gap..] == *c.as_slice(),
        "third region differs"
    );

    // Overlapping or out-of-bounds target ranges are refused before anything is read.
    let bad = reader.read(
        &peer,
        &[RemoteRead {
            address: addr_a,
            key: &ra.key,
            len: 16,
            offset: 8,
        }],
        AlignedBuf::zeroed(16),
        deadline(),
    );
    assert!(
        matches!(bad, Err(TransportError::OneSided { .. })),
        "{bad:?}"
    );

    // Informational: small-read latency.
    let n = 200;
    let t = Instant::now();
    let mut buf = AlignedBuf::zeroed(8);
    for _ in 0..n {
        let r = [RemoteRead {
            address: addr_a,
            key: &ra.key,
            len: 8,
            offset: 0,
        }];
        buf = reader.read(&peer, &r, buf, deadline()).expect("read");
    }
    eprintln!("ofi {prov:?}: read 8 B {:?} per read", t.elapsed() / n);
}

fn large_read_in_chunks(prov: Prov) {
    let _dog = watchdog("large_read_in_chunks", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let reader = shared_reader(&prov.config()).expect("reader");
    let again = shared_reader(&prov.config()).expect("reader");
    assert!(
        Arc::ptr_eq(&reader, &again),
        "one reader per process and provider"
    );
    let len = 64 * MIB;
    let arena = arena(256 * MIB, 64 * MIB);
    let obj = object(&arena, len, 7);
    let (region, address) = export(&exporter, &arena, &obj);
    let peer = exporter.address();
    let reads = [RemoteRead {
        address,
        key: &region.key,
        len,
        offset: 0,
    }];
    let got = reader
        .read(&peer, &reads, AlignedBuf::zeroed(len), deadline())
        .expect("read 64 MiB");
    assert!(got[..] == *obj.as_slice(), "64 MiB read differs");
    // Informational bandwidth.
    let rounds = 5;
    let t = Instant::now();
    let mut buf = got;
    for _ in 0..rounds {
        buf = reader.read(&peer, &reads, buf, deadline()).expect("read");
    }
    let mbps = (rounds * len) as f64 / t.elapsed().as_secs_f64() / 1e6;
    eprintln!(
        "ofi {prov:?}: 64 MiB in {} B chunks: {mbps:.0} MB/s",
        reader.chunk()
    );
}

fn concurrent_reads_from_many_threads(prov: Prov) {
    let _dog = watchdog("concurrent_reads_from_many_threads", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let mut config = prov.config();
    config.chunk = 256 << 10; // several chunks per large read
    let reader = OfiReader::start(&config).expect("reader");
    let arena = arena(128 * MIB, 8 * MIB);
    let sizes = [8, 4096, 100_000, 3 * MIB];
    let objects: Vec<Allocation> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| object(&arena, n, i as u8 + 10))
        .collect();
    let remote: Vec<(RemoteRegion, u64)> = objects
        .iter()
        .map(|o| export(&exporter, &arena, o))
        .collect();
    let remote = Arc::new(remote);
    let objects = Arc::new(
        objects
            .iter()
            .map(|o| o.as_slice().to_vec())
            .collect::<Vec<_>>(),
    );
    let peer = exporter.address();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (reader, remote, objects, peer) = (
                Arc::clone(&reader),
                Arc::clone(&remote),
                Arc::clone(&objects),
                peer.clone(),
            );
            thread::spawn(move || {
                for round in 0..20 {
                    let i = (t + round) % remote.len();
                    let (region, address) = &remote[i];
                    let len = objects[i].len();
                    let reads = [RemoteRead {
                        address: *address,
                        key: &region.key,
                        len,
                        offset: 0,
                    }];
                    let got = reader
                        .read(&peer, &reads, AlignedBuf::zeroed(len), deadline())
                        .expect("concurrent read");
                    assert!(
                        got[..] == objects[i][..],
                        "thread {t} round {round} differs"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
}

fn read_from_another_process_killed_mid_read(prov: Prov) {
    let _dog = watchdog("read_from_another_process_killed_mid_read", LIMIT);
    let mut child = Peer::spawn(
        "exporter_process",
        &[("DIMSTORE_OFI_EXPORTER", prov.name())],
    );
    let peer = unhex(&child.read("ADDRESS"));
    let key = unhex(&child.read("KEY"));
    let address: u64 = child.read("AT").parse().expect("address");
    let len: usize = child.read("LEN").parse().expect("len");
    let reader = OfiReader::start(&prov.config()).expect("reader");
    let reads = [RemoteRead {
        address,
        key: &key,
        len,
        offset: 0,
    }];
    let got = reader
        .read(&peer, &reads, AlignedBuf::zeroed(len), deadline())
        .expect("read from the other process");
    assert!(
        got[..] == pattern(len, 9)[..],
        "bytes from the other process differ"
    );
    let t = Instant::now();
    let got = reader
        .read(&peer, &reads, got, deadline())
        .expect("read again");
    eprintln!(
        "ofi {prov:?} two processes: {len} B at {:.0} MB/s",
        len as f64 / t.elapsed().as_secs_f64() / 1e6
    );

    // Kill -9 the exporter while a loop of large reads runs: a read ends in an error
    // within its deadline, never a hang (the watchdog bounds the test).
    let pid = child.pid();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
    let mut buf = got;
    let mut ok_reads = 0;
    let error = loop {
        let bound = Duration::from_secs(3);
        let started = Instant::now();
        match reader.read(&peer, &reads, buf, started + bound) {
            Ok(b) => {
                buf = b;
                ok_reads += 1;
            }
            Err(e) => {
                eprintln!(
                    "ofi {prov:?}: read from a killed exporter failed after {:?} \
                     ({ok_reads} reads succeeded): {e}",
                    started.elapsed()
                );
                break e;
            }
        }
    };
    killer.join().expect("killer");
    child.kill();
    assert!(
        matches!(
            error,
            TransportError::OneSided { .. } | TransportError::Timeout
        ),
        "{error:?}"
    );
    // The peer stays dead: the next read fails too (bounded by its deadline).
    let again = reader.read(
        &peer,
        &reads,
        AlignedBuf::zeroed(len),
        Instant::now() + Duration::from_secs(2),
    );
    assert!(again.is_err(), "a read from a dead exporter succeeded");
}

/// Not a test on its own: the exporter process of `read_from_another_process_killed_mid_read`
/// when run with `DIMSTORE_OFI_EXPORTER=<provider>`; otherwise it returns at once.
#[test]
fn exporter_process() {
    let Ok(name) = std::env::var("DIMSTORE_OFI_EXPORTER") else {
        return;
    };
    let _dog = watchdog("exporter_process", LIMIT);
    let exporter = OfiExporter::start(&Prov::from_name(&name).config()).expect("exporter");
    let arena = arena(128 * MIB, 64 * MIB);
    let len = 32 * MIB;
    let mut obj = arena.allocate(len as u64).expect("allocate");
    obj.as_mut_slice().copy_from_slice(&pattern(len, 9));
    let (region, address) = export(&exporter, &arena, &obj);
    tell("ADDRESS", hex(&exporter.address()));
    tell("KEY", hex(&region.key));
    tell("AT", address);
    tell("LEN", len);
    // Serve (the fabric thread does) until the parent closes stdin or kills us.
    let lines = stdin_lines();
    while lines.recv().is_ok() {}
}

fn sweep_drops_released_segments(prov: Prov) {
    let _dog = watchdog("sweep_drops_released_segments", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let reader = OfiReader::start(&prov.config()).expect("reader");
    // 8 MiB capacity, 1 MiB regular segments: a 6 MiB object gets a dedicated segment.
    let arena = arena(8 * MIB, MIB);
    let small = object(&arena, 1000, 4);
    let big = object(&arena, 6 * MIB, 5);
    let (big_id, _) = big.location().unwrap();
    let (region, address) = export(&exporter, &arena, &big);
    export(&exporter, &arena, &small);
    assert_eq!(exporter.live_registrations(), 2);
    let reads = [RemoteRead {
        address,
        key: &region.key,
        len: 6 * MIB,
        offset: 0,
    }];
    let got = reader
        .read(
            &exporter.address(),
            &reads,
            AlignedBuf::zeroed(6 * MIB),
            deadline(),
        )
        .expect("read");
    assert!(got[..] == *big.as_slice());

    exporter.sweep();
    assert_eq!(exporter.live_registrations(), 2, "nothing released yet");
    // Freed, the dedicated segment is kept as a spare; a larger object that does not fit
    // beside it makes the arena unmap it.
    drop(big);
    exporter.sweep();
    assert_eq!(
        exporter.live_registrations(),
        2,
        "the arena still holds the spare"
    );
    let bigger = arena.allocate(7 * MIB as u64).expect("allocate");
    assert!(
        arena.segment(big_id).is_none(),
        "the spare segment was not reclaimed"
    );
    exporter.sweep();
    assert_eq!(
        exporter.live_registrations(),
        1,
        "the released segment is still registered"
    );
    drop((bigger, small));
}

fn wrong_key_is_a_typed_error(prov: Prov) {
    let _dog = watchdog("wrong_key_is_a_typed_error", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let reader = OfiReader::start(&prov.config()).expect("reader");
    let arena = arena(16 * MIB, 4 * MIB);
    let obj = object(&arena, 4096, 6);
    let (region, address) = export(&exporter, &arena, &obj);
    let peer = exporter.address();
    let good = u64::from_le_bytes(region.key.clone().try_into().unwrap());
    let wrong = (good ^ 0x5a5a_0000_1234).to_le_bytes();
    let read = |key: &[u8], len: usize| {
        reader.read(
            &peer,
            &[RemoteRead {
                address,
                key,
                len,
                offset: 0,
            }],
            AlignedBuf::zeroed(len),
            deadline(),
        )
    };
    // A key of the wrong length never reaches libfabric.
    let short = read(&[1, 2, 3], 8);
    assert!(
        matches!(short, Err(TransportError::OneSided { .. })),
        "{short:?}"
    );
    let bad = read(&wrong, 4096);
    eprintln!("ofi {prov:?}: read with a wrong key: {bad:?}");
    match prov {
        // tcp;ofi_rxm checks keys at the target.
        Prov::Tcp => assert!(
            matches!(bad, Err(TransportError::OneSided { .. })),
            "a wrong key must fail with a typed error: {bad:?}"
        ),
        // shm (libfabric 1.17) reads by virtual address through CMA and does not check
        // the key: only "no crash, no hang" holds.
        Prov::Shm => assert!(
            matches!(bad, Ok(_) | Err(TransportError::OneSided { .. })),
            "{bad:?}"
        ),
    }
    // The peer was dropped from the cache; the next read starts clean and succeeds.
    let ok = read(&region.key, 4096).expect("read with the right key");
    assert!(ok[..] == *obj.as_slice());
}

fn forget_then_read_again(prov: Prov) {
    let _dog = watchdog("forget_then_read_again", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let reader = OfiReader::start(&prov.config()).expect("reader");
    let arena = arena(16 * MIB, 4 * MIB);
    let obj = object(&arena, 64 << 10, 8);
    let (region, address) = export(&exporter, &arena, &obj);
    let peer = exporter.address();
    let reads = [RemoteRead {
        address,
        key: &region.key,
        len: 64 << 10,
        offset: 0,
    }];
    for _ in 0..3 {
        let got = reader
            .read(&peer, &reads, AlignedBuf::zeroed(64 << 10), deadline())
            .expect("read");
        assert!(got[..] == *obj.as_slice());
        reader.forget(&peer);
    }
    // A deadline already passed is a timeout, not a read.
    let late = reader.read(&peer, &reads, AlignedBuf::zeroed(64 << 10), Instant::now());
    assert!(matches!(late, Err(TransportError::Timeout)), "{late:?}");
    // Dropping the exporter stops its thread and deregisters everything.
    drop(exporter);
}

#[test]
fn missing_provider_is_unavailable() {
    let _dog = watchdog("missing_provider_is_unavailable", LIMIT);
    let config = OfiConfig::new("no-such-provider;ofi_rxm", Some("127.0.0.1"));
    let err = OfiExporter::start(&config).expect_err("a missing provider must fail");
    eprintln!("{err}");
    match &err {
        TransportError::Unavailable { transport, source } => {
            assert_eq!(transport, "ofi");
            assert!(
                source.to_string().contains("no-such-provider;ofi_rxm"),
                "{source}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let err = OfiReader::start(&config).expect_err("a missing provider must fail");
    assert!(matches!(err, TransportError::Unavailable { .. }), "{err:?}");
}

/// CPU time used so far by this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> Duration {
    let mut total = Duration::ZERO;
    for entry in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let dir = entry.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        if let Some(ns) = stat.split_whitespace().next().and_then(|t| t.parse().ok()) {
            total += Duration::from_nanos(ns);
        }
    }
    total
}

fn idle_fabric_threads_sleep(prov: Prov) {
    let _dog = watchdog("idle_fabric_threads_sleep", LIMIT);
    let exporter = OfiExporter::start(&prov.config()).expect("exporter");
    let reader = OfiReader::start(&prov.config()).expect("reader");
    let arena = arena(16 * MIB, 4 * MIB);
    let obj = object(&arena, 4096, 11);
    let (region, address) = export(&exporter, &arena, &obj);
    let reads = [RemoteRead {
        address,
        key: &region.key,
        len: 4096,
        offset: 0,
    }];
    let got = reader
        .read(
            &exporter.address(),
            &reads,
            AlignedBuf::zeroed(4096),
            deadline(),
        )
        .expect("read");
    assert!(got[..] == *obj.as_slice());
    // Informational only (other tests' fabric threads may come and go meanwhile): CPU the
    // fabric threads use while idle. With a wait fd they sleep in poll; shm has none, so its
    // exporter naps 1 ms.
    let (cpu0, t0) = (threads_cpu("dimstore-ofi"), Instant::now());
    thread::sleep(Duration::from_millis(500));
    let (cpu, wall) = (
        threads_cpu("dimstore-ofi").saturating_sub(cpu0),
        t0.elapsed(),
    );
    eprintln!("ofi {prov:?}: idle fabric threads used {cpu:?} of CPU in {wall:?}");
    // Still serving after the idle period.
    let got = reader
        .read(&exporter.address(), &reads, got, deadline())
        .expect("read after idling");
    assert!(got[..] == *obj.as_slice());
}
