//! The cases of the one-sided contract, each generic over the configuration
//! ([`Harness`]) it runs against; [`one_sided_suite!`](crate::one_sided_suite) makes one
//! `#[test]` of each. A new case is a `pub fn case<H: Harness>(case: &Case<H>)` here plus
//! its name in the macro's list; what a fabric legitimately does differently is a question
//! on [`Harness`] (as [`Harness::forged_key`]), never a branch on the transport's name.

use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use dimstore_ffi_test_support::{hex, pattern};
use dimstore_transport::onesided::{Reader, RemoteRead};
use dimstore_transport::{AlignedBuf, TransportError};

use crate::fixtures::{arena, deadline, mbps, threads_cpu, Object, MIB, OP};
use crate::process::{Case, EXPORTED_SEED};
use crate::{ForgedKeyRead, Harness, ReaderSettings, StoppedExporterRead};

/// Whether `result` is a [`TransportError::OneSided`] error.
fn is_one_sided<T>(result: &Result<T, TransportError>) -> bool {
    matches!(result, Err(TransportError::OneSided { .. }))
}

/// Names, detail, one registration per segment, an 8-byte read at an offset, and one read
/// of three regions of two segments listed out of order, landing at their offsets with the
/// gaps between them untouched (read in several chunks each).
pub fn small_and_scattered_reads<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    assert_eq!(exporter.name(), harness.transport());
    let detail = exporter.detail();
    assert!(detail.contains(harness.detail()), "detail {detail:?}");
    // Small chunks, so that the larger regions are read in several operations.
    let reader = harness
        .reader(ReaderSettings {
            chunk: 64 << 10,
            in_flight: 2,
        })
        .expect("reader");
    assert_eq!(reader.name(), harness.transport());
    let peer = exporter.address();
    let arena = arena(64 * MIB, 8 * MIB);
    let a = Object::new(&arena, &*exporter, 1000, 1);
    let b = Object::new(&arena, &*exporter, 300 << 10, 2);
    // A quarter of the segment size or more: a dedicated segment, another key.
    let c = Object::new(&arena, &*exporter, 3 * MIB, 3);
    assert_eq!(a.segment, b.segment);
    assert_ne!(a.segment, c.segment);
    assert_eq!(
        exporter.live_registrations(),
        2,
        "one registration per segment"
    );

    let got = reader
        .read(
            &peer,
            &[a.read(123, 8, 0)],
            AlignedBuf::zeroed(8),
            deadline(),
        )
        .expect("8-byte read");
    assert_eq!(&got[..], &a.bytes[123..131]);

    let (len_a, len_b, len_c) = (a.bytes.len(), b.bytes.len(), c.bytes.len());
    let (off_c, off_a, off_b) = (16, 16 + len_c + 5, 16 + len_c + 5 + len_a + 11);
    let total = off_b + len_b + 3;
    let reads = [
        b.read(0, len_b, off_b),
        c.read(0, len_c, off_c),
        a.read(0, len_a, off_a),
    ];
    for round in 0..3 {
        let mut target = AlignedBuf::zeroed(total);
        target.as_mut_slice().fill(0xEE);
        let got = reader
            .read(&peer, &reads, target, deadline())
            .unwrap_or_else(|e| panic!("scattered read {round}: {e}"));
        let untouched = |range: std::ops::Range<usize>| got[range].iter().all(|&x| x == 0xEE);
        assert_eq!(got.len(), total);
        assert!(untouched(0..off_c), "gap before c written");
        assert!(got[off_c..off_c + len_c] == c.bytes[..], "region c differs");
        assert!(untouched(off_c + len_c..off_a), "gap after c written");
        assert!(got[off_a..off_a + len_a] == a.bytes[..], "region a differs");
        assert!(untouched(off_a + len_a..off_b), "gap after a written");
        assert!(got[off_b..off_b + len_b] == b.bytes[..], "region b differs");
        assert!(untouched(off_b + len_b..total), "tail written");
    }

    // Informational: the latency of a small read (caller to fabric thread and back).
    let n = 200u32;
    let t = Instant::now();
    let mut buf = AlignedBuf::zeroed(8);
    for _ in 0..n {
        buf = reader
            .read(&peer, &[a.read(0, 8, 0)], buf, deadline())
            .expect("8-byte read");
    }
    assert_eq!(&buf[..], &a.bytes[..8]);
    eprintln!(
        "{}: one process: 8-byte read {:?}",
        case.name(),
        t.elapsed() / n
    );
}

/// Reads that do not fit the target, overlap in it or wrap around the remote address
/// space are refused before anything is read; an empty read returns the target as is; a
/// deadline already passed is a timeout. The reader is fine afterwards.
pub fn misuse_is_refused_before_reading<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(16 * MIB, MIB);
    let a = Object::new(&arena, &*exporter, 4096, 1);
    let b = Object::new(&arena, &*exporter, 4096, 2);

    let outside = reader.read(
        &peer,
        &[a.read(0, 16, 8)],
        AlignedBuf::zeroed(16),
        deadline(),
    );
    assert!(is_one_sided(&outside), "outside the target: {outside:?}");
    let overlapping = [a.read(0, 8, 0), b.read(0, 8, 4)];
    let refused = reader.read(&peer, &overlapping, AlignedBuf::zeroed(16), deadline());
    assert!(is_one_sided(&refused), "overlapping: {refused:?}");
    let wrapping = RemoteRead {
        address: u64::MAX - 3,
        ..a.read(0, 8, 0)
    };
    let refused = reader.read(&peer, &[wrapping], AlignedBuf::zeroed(8), deadline());
    assert!(is_one_sided(&refused), "wrapping around: {refused:?}");

    let mut target = AlignedBuf::zeroed(4);
    target.as_mut_slice().fill(0xEE);
    let empty = reader
        .read(&peer, &[a.read(0, 0, 2)], target, deadline())
        .expect("empty read");
    assert_eq!(&empty[..], &[0xEE; 4]);
    let empty = reader
        .read(&peer, &[], empty, deadline())
        .expect("no regions");
    assert_eq!(&empty[..], &[0xEE; 4]);

    let late = reader.read(
        &peer,
        &[a.read(0, 8, 0)],
        AlignedBuf::zeroed(8),
        Instant::now(),
    );
    assert_eq!(late.err(), Some(TransportError::Timeout));

    assert_eq!(a.read_all(&*reader, &peer), a.bytes);
}

/// A 64 MiB object read in chunks by the process's shared reader (one per process), five
/// times into the same buffer; informational bandwidth.
pub fn large_object_in_chunks<H: Harness>(case: &Case<H>) {
    const LEN: usize = 64 * MIB;
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.shared_reader().expect("shared reader");
    let again = harness.shared_reader().expect("shared reader");
    assert!(
        std::ptr::addr_eq(Arc::as_ptr(&reader), Arc::as_ptr(&again)),
        "one shared reader per process"
    );
    let peer = exporter.address();
    let arena = arena(256 * MIB, 64 * MIB);
    let object = Object::new(&arena, &*exporter, LEN, 5);
    let mut buf = AlignedBuf::zeroed(LEN);
    let mut times = Vec::new();
    for round in 0..5 {
        buf.as_mut_slice().fill(0);
        let t = Instant::now();
        buf = reader
            .read(&peer, &[object.read(0, LEN, 0)], buf, deadline())
            .expect("64 MiB read");
        times.push(t.elapsed());
        assert!(buf[..] == object.bytes[..], "64 MiB read {round} differs");
    }
    let best = times.iter().min().copied().unwrap_or_default();
    eprintln!(
        "{}: one process: 64 MiB reads {times:?}, best {:.0} MB/s",
        case.name(),
        mbps(LEN, best)
    );
}

/// Eight threads reading objects of five sizes twenty times each, half through a reader of
/// their own with small chunks (several per large read), half through the shared reader.
pub fn concurrent_reads_from_many_threads<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let own = harness
        .reader(ReaderSettings {
            chunk: 256 << 10,
            ..ReaderSettings::default()
        })
        .expect("reader");
    let shared = harness.shared_reader().expect("shared reader");
    let peer = exporter.address();
    let arena = arena(128 * MIB, 8 * MIB);
    let objects: Vec<Object> = [8, 4096, 100_000, MIB, 3 * MIB]
        .iter()
        .enumerate()
        .map(|(i, &len)| Object::new(&arena, &*exporter, len, i as u8 + 10))
        .collect();
    thread::scope(|s| {
        for t in 0..8 {
            let reader: &dyn Reader = if t % 2 == 0 { &*own } else { &*shared };
            let (objects, peer) = (&objects, &peer);
            s.spawn(move || {
                for round in 0..20 {
                    let object = &objects[(t + round) % objects.len()];
                    assert!(
                        object.read_all(reader, peer) == object.bytes,
                        "thread {t} read {round} differs"
                    );
                }
            });
        }
    });
}

/// Sweeping keeps the registrations of segments in use and of the arena's spares, and
/// drops those of segments the arena unmapped; reads go on meanwhile.
pub fn sweep_drops_released_segments<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let peer = exporter.address();
    // 8 MiB in 1 MiB segments: a 4 MiB object gets a dedicated segment.
    let arena = arena(8 * MIB, MIB);
    let small = Object::new(&arena, &*exporter, 4096, 1);
    let big = Object::new(&arena, &*exporter, 4 * MIB, 2);
    assert_ne!(small.segment, big.segment);
    assert_eq!(exporter.live_registrations(), 2);
    exporter.sweep();
    assert_eq!(
        exporter.live_registrations(),
        2,
        "segments in use were dropped"
    );
    assert_eq!(big.read_all(&*reader, &peer), big.bytes);

    // The object goes; the arena keeps its dedicated segment as a spare: still registered.
    let big_segment = big.segment;
    drop(big);
    exporter.sweep();
    assert!(arena.segment(big_segment).is_some());
    assert_eq!(exporter.live_registrations(), 2, "a spare was dropped");

    // A larger object needs the room: the arena unmaps the spare; sweep drops it.
    let bigger = Object::new(&arena, &*exporter, 6 * MIB, 3);
    assert!(arena.segment(big_segment).is_none(), "spare not reclaimed");
    assert_eq!(exporter.live_registrations(), 3);
    exporter.sweep();
    assert_eq!(
        exporter.live_registrations(),
        2,
        "the released segment is still registered"
    );
    assert_eq!(bigger.read_all(&*reader, &peer), bigger.bytes);
    assert_eq!(small.read_all(&*reader, &peer), small.bytes);

    // Everything goes.
    drop((small, bigger, arena));
    exporter.sweep();
    assert_eq!(exporter.live_registrations(), 0);
}

/// Keys that are not keys fail with [`TransportError::OneSided`]; a well-formed key that is
/// not the segment's fails too where the fabric checks keys (and neither crashes nor hangs
/// where it does not). The reader is fine afterwards.
///
/// Not tried: a stale key of a segment that was freed and unregistered. Where reads are
/// emulated (UCX over tcp and shared memory), the target copies from the requested
/// address without checking it against its registrations: such a read would crash the
/// server. The server's leases are what keep an object's memory mapped while a client may
/// read it.
pub fn bad_keys_fail_cleanly<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(16 * MIB, MIB);
    let object = Object::new(&arena, &*exporter, 64 << 10, 4);
    let good = object.region.key.clone();
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![1, 2, 3],
        good[..good.len() / 2].to_vec(),
        vec![0xff; 24],
    ];
    for key in &garbage {
        let read = RemoteRead {
            key,
            ..object.read(0, 4096, 0)
        };
        let result = reader.read(&peer, &[read], AlignedBuf::zeroed(4096), deadline());
        assert!(is_one_sided(&result), "key {}: {result:?}", hex(key));
    }
    assert_eq!(object.read_all(&*reader, &peer), object.bytes);

    let (forged, expected) = harness.forged_key(&good);
    assert_ne!(forged, good);
    let read = RemoteRead {
        key: &forged,
        ..object.read(0, 4096, 0)
    };
    let result = reader.read(&peer, &[read], AlignedBuf::zeroed(4096), deadline());
    eprintln!("{}: read with a forged key: {result:?}", case.name());
    match expected {
        ForgedKeyRead::Refused => assert!(is_one_sided(&result), "{result:?}"),
        ForgedKeyRead::Unchecked => {
            assert!(result.is_ok() || is_one_sided(&result), "{result:?}")
        }
    }
    // A failed read may drop the peer from the reader's caches: the next starts clean.
    assert_eq!(object.read_all(&*reader, &peer), object.bytes);
}

/// Forgetting a peer (its endpoint and keys) and reading again reconnects; dropping the
/// exporter while a reader knows it is clean.
pub fn forget_then_read_again<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(16 * MIB, 4 * MIB);
    let object = Object::new(&arena, &*exporter, 64 << 10, 8);
    for _ in 0..3 {
        assert_eq!(object.read_all(&*reader, &peer), object.bytes);
        reader.forget(&peer);
    }
    assert_eq!(object.read_all(&*reader, &peer), object.bytes);
    // Dropping the exporter stops its thread and deregisters everything.
    drop(object);
    drop(exporter);
}

/// Fabric threads keep serving after an idle period; informational: the CPU they use
/// while idle (they sleep on the library's wait fd, or nap where there is none).
pub fn idle_fabric_threads_sleep<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let exporter = harness.exporter().expect("exporter");
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let peer = exporter.address();
    let arena = arena(16 * MIB, 4 * MIB);
    let object = Object::new(&arena, &*exporter, 4096, 11);
    assert_eq!(object.read_all(&*reader, &peer), object.bytes);
    let prefix = format!("dimstore-{}", harness.transport());
    let (cpu0, t0) = (threads_cpu(&prefix), Instant::now());
    thread::sleep(Duration::from_millis(500));
    let (cpu, wall) = (threads_cpu(&prefix).saturating_sub(cpu0), t0.elapsed());
    eprintln!(
        "{}: idle fabric threads used {cpu:?} of CPU in {wall:?}",
        case.name()
    );
    assert_eq!(object.read_all(&*reader, &peer), object.bytes);
}

/// Reads from an exporter in another process: large and small reads; a stopped exporter
/// (a hung node) as the fabric allows; killed (-9) while reads run, the read in progress
/// (or the next) fails within its deadline and so do later ones; a new exporter is read
/// by the same reader after [`Reader::forget`].
pub fn exporter_in_another_process_killed_mid_read<H: Harness>(case: &Case<H>) {
    let harness = &case.harness;
    let reader = harness.reader(ReaderSettings::default()).expect("reader");
    let (server, remote) = case.spawn_exporter();
    let expected = pattern(remote.len, EXPORTED_SEED);
    let region = RemoteRead {
        address: remote.address,
        key: &remote.key,
        len: remote.len,
        offset: 0,
    };
    let read = |deadline: Instant| {
        reader.read(
            &remote.peer,
            &[region],
            AlignedBuf::zeroed(remote.len),
            deadline,
        )
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
        "{}: two processes: {} MiB in {best:?} ({:.0} MB/s)",
        case.name(),
        remote.len / MIB,
        mbps(remote.len, best)
    );

    let small = RemoteRead {
        address: remote.address + 8,
        len: 8,
        ..region
    };
    let n = 200u32;
    let t = Instant::now();
    for _ in 0..n {
        let got = reader
            .read(&remote.peer, &[small], AlignedBuf::zeroed(8), deadline())
            .expect("8-byte read");
        assert_eq!(&got[..], &expected[8..16]);
    }
    eprintln!(
        "{}: two processes: 8-byte read {:?}",
        case.name(),
        t.elapsed() / n
    );

    server.signal("STOP");
    let t = Instant::now();
    let outcome = read(Instant::now() + Duration::from_secs(1));
    eprintln!(
        "{}: read from a stopped exporter: {:?} after {:?}",
        case.name(),
        outcome.as_ref().map(|b| b.len()),
        t.elapsed()
    );
    match harness.stopped_exporter() {
        StoppedExporterRead::TimesOut => assert_eq!(outcome.err(), Some(TransportError::Timeout)),
        StoppedExporterRead::Succeeds => {
            let got = outcome.expect("read from a stopped exporter");
            assert!(got[..] == expected[..]);
        }
    }
    server.signal("CONT");
    let got = read(deadline()).expect("read after the exporter resumed");
    assert!(got[..] == expected[..]);

    // Killed while a loop of reads runs. Where the fabric notices the dead peer the read
    // fails at once; where it cannot (shared memory without peer-failure detection) it
    // ends at its deadline.
    const LOOP_READ: Duration = Duration::from_secs(5);
    let (progress_tx, progress_rx) = mpsc::channel();
    let (error, elapsed) = thread::scope(|s| {
        let looping = s.spawn(|| loop {
            let t = Instant::now();
            let result = read(Instant::now() + LOOP_READ);
            match result {
                Ok(_) => {
                    let _ = progress_tx.send(());
                }
                Err(e) => return (e, t.elapsed()),
            }
        });
        for _ in 0..2 {
            progress_rx.recv_timeout(OP).expect("reads before the kill");
        }
        server.signal("KILL");
        looping.join().expect("read loop")
    });
    eprintln!(
        "{}: read from a killed exporter failed after {elapsed:?}: {error}",
        case.name()
    );
    assert!(
        matches!(
            error,
            TransportError::OneSided { .. } | TransportError::Timeout
        ),
        "{error:?}"
    );
    assert!(
        elapsed <= LOOP_READ + Duration::from_secs(2),
        "the read outlived its deadline: {elapsed:?}"
    );
    // The exporter stays dead: the next read fails too (by its deadline at the latest).
    let again = read(Instant::now() + Duration::from_secs(2));
    assert!(again.is_err(), "a read from a dead exporter succeeded");
    drop(server);
    reader.forget(&remote.peer);

    // A new exporter: the same reader reads from it.
    let (server, remote) = case.spawn_exporter();
    let got = reader
        .read(
            &remote.peer,
            &[RemoteRead {
                address: remote.address,
                key: &remote.key,
                len: remote.len,
                offset: 0,
            }],
            AlignedBuf::zeroed(remote.len),
            deadline(),
        )
        .expect("read from a new exporter");
    assert!(got[..] == expected[..]);
    drop(server);
}
