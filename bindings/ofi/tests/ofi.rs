//! dimstore-ofi against the real libfabric, no mocks: every test runs over `tcp;ofi_rxm`
//! (127.0.0.1) and `shm`; in one process (two endpoints, one progress loop) and across two
//! processes (this binary run again as the peer).

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use dimstore_ofi::{
    AddressVector, Completion, CompletionQueue, Domain, Endpoint, Fabric, Info, MemoryRegion, Op,
    PeerAddr, Result, WaitError,
};
use support::{hex, pattern, stdin_lines, tell, thread_cpu_time, unhex, watchdog, Peer, Prov};

const MIB8: usize = 8 << 20;
/// Every test is aborted if it runs longer than this.
const LIMIT: Duration = Duration::from_secs(90);
/// Deadline of one operation in the tests.
const OP: Duration = Duration::from_secs(20);

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
    read_8mib_between_endpoints,
    message_round_trip,
    wait_fd_wakes_a_sleeping_loop,
    dropped_op_keeps_its_buffer_until_done,
    read_from_another_process,
);

/// A "node": its own fabric, domain, queue, vector and endpoint.
struct Node {
    domain: Domain,
    cq: CompletionQueue,
    av: AddressVector,
    ep: Endpoint,
}

fn node(prov: Prov) -> Node {
    let info = Info::query(&prov.query()).expect("fi_getinfo");
    let fabric = Fabric::open(info).expect("fabric");
    let domain = Domain::open(&fabric).expect("domain");
    let cq = CompletionQueue::open(&domain, 128).expect("cq");
    let av = AddressVector::open(&domain).expect("av");
    let ep = Endpoint::open(&domain, &cq, &av).expect("ep");
    Node { domain, cq, av, ep }
}

impl Node {
    /// Inserts `other`'s endpoint name into this node's vector.
    fn peer(&self, other: &Node) -> PeerAddr {
        self.av
            .insert(&other.ep.name().expect("name"))
            .expect("insert")
    }
}

/// Waits for `op`, progressing every queue in `queues`.
fn wait_all<B>(op: Op<B>, queues: &[&CompletionQueue], deadline: Instant) -> Result<Completion<B>> {
    op.wait_with(deadline, || {
        for q in queues {
            q.progress()?;
        }
        Ok(())
    })
    .map_err(WaitError::into_error)
}

/// Progresses `queues` until `done()` or the deadline; returns `done()`.
fn progress_until(queues: &[&CompletionQueue], deadline: Instant, done: impl Fn() -> bool) -> bool {
    while !done() && Instant::now() < deadline {
        for q in queues {
            q.progress().expect("progress");
        }
    }
    done()
}

fn read_8mib_between_endpoints(prov: Prov) {
    let _dog = watchdog("read_8mib_between_endpoints", LIMIT);
    let (a, b) = (node(prov), node(prov));
    let both = [&a.cq, &b.cq];
    let src = pattern(MIB8, 1);
    let region = MemoryRegion::register(&a.domain, src.clone()).expect("register");
    assert_eq!(a.domain.live_regions(), 1);
    let (base, key) = (region.remote_address(), region.key().expect("key"));
    let peer = b.peer(&a);
    let deadline = Instant::now() + OP;

    let dst =
        wait_all(b.ep.read(peer, base, key, vec![0u8; MIB8]), &both, deadline).expect("read 8 MiB");
    assert_eq!(dst.len, MIB8);
    assert!(dst.buffer == src, "bytes read differ from the region");
    let off = 12_345;
    let small = wait_all(
        b.ep.read(peer, base + off as u64, key, vec![0u8; 8]),
        &both,
        deadline,
    )
    .expect("read 8 B");
    assert_eq!(small.buffer, src[off..off + 8]);

    // A second region gets a different key (requested per region when needed).
    let other = MemoryRegion::register(&a.domain, vec![7u8; 4096]).expect("register");
    assert_ne!(other.key().expect("key"), key, "two regions share a key");
    drop(other);

    // Informational numbers (both endpoints on one thread).
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        wait_all(b.ep.read(peer, base, key, vec![0u8; 8]), &both, deadline).expect("read");
    }
    let lat = t.elapsed() / n;
    let t = Instant::now();
    let mut buf = dst.buffer;
    for _ in 0..5 {
        buf = wait_all(b.ep.read(peer, base, key, buf), &both, deadline)
            .expect("read")
            .buffer;
    }
    let gbps = 5.0 * MIB8 as f64 / t.elapsed().as_secs_f64() / 1e9;
    eprintln!("ofi {prov:?} one process: read 8 B {lat:?}, 8 MiB {gbps:.2} GB/s");

    drop(region);
    assert_eq!(a.domain.live_regions(), 0, "a memory registration leaked");
}

fn message_round_trip(prov: Prov) {
    let _dog = watchdog("message_round_trip", LIMIT);
    let (a, b) = (node(prov), node(prov));
    let both = [&a.cq, &b.cq];
    let (to_a, to_b) = (b.peer(&a), a.peer(&b));
    let deadline = Instant::now() + OP;
    let recv_a = a.ep.recv(vec![0u8; 64]);
    let recv_b = b.ep.recv(vec![0u8; 64]);
    let ping: &'static [u8] = b"ping";
    wait_all(b.ep.send(to_a, ping), &both, deadline).expect("send ping");
    let got = wait_all(recv_a, &both, deadline).expect("recv ping");
    assert_eq!(&got.buffer[..got.len], b"ping");
    let pong: &'static [u8] = b"pong";
    wait_all(a.ep.send(to_b, pong), &both, deadline).expect("send pong");
    let got = wait_all(recv_b, &both, deadline).expect("recv pong");
    assert_eq!(&got.buffer[..got.len], b"pong");
}

fn wait_fd_wakes_a_sleeping_loop(prov: Prov) {
    let _dog = watchdog("wait_fd_wakes_a_sleeping_loop", LIMIT);
    let (name_tx, name_rx) = mpsc::channel::<Vec<u8>>();
    let sleeper = thread::spawn(move || {
        let me = node(prov);
        // shm (libfabric 1.17) has no FI_WAIT_FD: its loop naps in short slices instead.
        if matches!(prov, Prov::Tcp) {
            assert!(me.cq.wait_fd().is_some(), "no FI_WAIT_FD wait object");
        }
        let mut recv = me.ep.recv(vec![0u8; 64]);
        name_tx
            .send(me.ep.name().expect("name"))
            .expect("send name");
        let (cpu0, t0) = (thread_cpu_time(), Instant::now());
        while !recv.is_complete() && t0.elapsed() < OP {
            me.cq.wait_for_event(Duration::from_secs(5)).expect("wait");
        }
        (recv.is_complete(), t0.elapsed(), thread_cpu_time() - cpu0)
    });
    let me = node(prov);
    let name = name_rx.recv_timeout(OP).expect("sleeper name");
    let pause = Duration::from_millis(300);
    thread::sleep(pause);
    let peer = me.av.insert(&name).expect("insert");
    let msg: &'static [u8] = b"wake";
    me.ep
        .send(peer, msg)
        .wait(Instant::now() + OP)
        .expect("send");
    let (got, wall, cpu) = sleeper.join().expect("sleeper thread");
    assert!(got, "the sleeping loop never got the message");
    assert!(
        wall >= pause - Duration::from_millis(50),
        "woke too early: {wall:?}"
    );
    assert!(
        cpu < wall / 4,
        "the waiting thread used {cpu:?} of CPU in {wall:?}: it spun instead of sleeping"
    );
    eprintln!("ofi {prov:?}: slept {wall:?} using {cpu:?} of CPU until the message came");
}

fn dropped_op_keeps_its_buffer_until_done(prov: Prov) {
    let _dog = watchdog("dropped_op_keeps_its_buffer_until_done", LIMIT);
    let (a, b) = (node(prov), node(prov));
    let both = [&a.cq, &b.cq];
    let region = MemoryRegion::register(&a.domain, pattern(MIB8, 5)).expect("register");
    let peer = b.peer(&a);
    let key = region.key().expect("key");
    // Dropped at once: the queue keeps the buffer until the read completes.
    drop(b.ep.read(peer, region.remote_address(), key, vec![0u8; MIB8]));
    let deadline = Instant::now() + OP;
    assert!(progress_until(&both, deadline, || b.cq.pending_ops() == 0));
    // An address from another vector is refused, not passed to libfabric.
    let foreign = a.peer(&b);
    let err =
        b.ep.read(foreign, region.remote_address(), key, vec![0u8; 8])
            .wait(deadline)
            .expect_err("an address of another vector must be refused");
    assert!(matches!(err, WaitError::Failed { .. }), "{err}");
    drop(region);
    assert_eq!(a.domain.live_regions(), 0);
}

fn read_from_another_process(prov: Prov) {
    let _dog = watchdog("read_from_another_process", LIMIT);
    let mut child = Peer::spawn("peer_process", &[("DIMSTORE_OFI_PEER", prov.name())]);
    let name = unhex(&child.read("NAME"));
    let key: u64 = child.read("KEY").parse().expect("key");
    let base: u64 = child.read("BASE").parse().expect("base");
    let me = node(prov);
    let peer = me.av.insert(&name).expect("insert");
    let deadline = Instant::now() + OP;

    let got = me
        .ep
        .read(peer, base, key, vec![0u8; MIB8])
        .wait(deadline)
        .expect("read 8 MiB");
    assert!(
        got.buffer == pattern(MIB8, 9),
        "bytes read from the peer differ"
    );

    // Message round trip: our name, answered with "pong".
    let recv = me.ep.recv(vec![0u8; 64]);
    me.ep
        .send(peer, me.ep.name().expect("name"))
        .wait(deadline)
        .expect("send");
    let pong = recv.wait(deadline).expect("recv");
    assert_eq!(&pong.buffer[..pong.len], b"pong");

    // Informational numbers: the peer sleeps on its wait fd between requests.
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        me.ep
            .read(peer, base, key, vec![0u8; 8])
            .wait(deadline)
            .expect("read");
    }
    let lat = t.elapsed() / n;
    let t = Instant::now();
    let mut buf = got.buffer;
    for _ in 0..5 {
        buf = me
            .ep
            .read(peer, base, key, buf)
            .wait(deadline)
            .expect("read")
            .buffer;
    }
    let gbps = 5.0 * MIB8 as f64 / t.elapsed().as_secs_f64() / 1e9;
    eprintln!("ofi {prov:?} two processes: read 8 B {lat:?}, 8 MiB {gbps:.2} GB/s");

    // The peer stops, a read starts, the peer dies: the read ends within its deadline.
    child.signal("STOP");
    let read = me.ep.read(peer, base, key, buf);
    let settle = Instant::now() + Duration::from_millis(100);
    while Instant::now() < settle {
        me.cq.progress().expect("progress");
    }
    child.kill();
    // tcp reports the broken connection; shm cannot detect a dead peer (the deadline ends
    // the read).
    let bound = Duration::from_secs(2);
    let t0 = Instant::now();
    let outcome = read
        .wait(t0 + bound)
        .and_then(|c| me.ep.read(peer, base, key, c.buffer).wait(t0 + bound))
        .map(drop)
        .map_err(WaitError::into_error);
    assert!(t0.elapsed() < bound + Duration::from_secs(1), "not bounded");
    assert!(outcome.is_err(), "a read from a dead peer succeeded");
    eprintln!(
        "ofi {prov:?}: reads from a killed peer ended in {:?}: {outcome:?}",
        t0.elapsed()
    );
    drop(me.ep);
    assert_eq!(me.cq.pending_ops(), 0, "operations left after closing");
}

/// Not a test on its own: the peer of `read_from_another_process` when run with
/// `DIMSTORE_OFI_PEER=<provider>`; otherwise it returns at once.
#[test]
fn peer_process() {
    let Ok(name) = std::env::var("DIMSTORE_OFI_PEER") else {
        return;
    };
    let _dog = watchdog("peer_process", LIMIT);
    let me = node(Prov::from_name(&name));
    let region = MemoryRegion::register(&me.domain, pattern(MIB8, 9)).expect("register");
    tell("NAME", hex(&me.ep.name().expect("name")));
    tell("KEY", region.key().expect("key"));
    tell("BASE", region.remote_address());
    let lines = stdin_lines();
    let mut recv = me.ep.recv(vec![0u8; 256]);
    let mut sends = Vec::new();
    // Serve until the parent closes stdin: sleep on the wait fd when idle; answer each
    // message (a peer's name) with "pong" to that peer.
    while !matches!(lines.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
        me.cq
            .wait_for_event(Duration::from_millis(100))
            .expect("wait");
        if recv.is_complete() {
            let done = recv.wait(Instant::now()).expect("recv");
            let from = me.av.insert(&done.buffer[..done.len]).expect("insert");
            let pong: &'static [u8] = b"pong";
            sends.push(me.ep.send(from, pong));
            recv = me.ep.recv(done.buffer);
        }
    }
}
