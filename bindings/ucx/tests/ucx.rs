//! dimstore-ucx against the real UCX, no mocks: every test runs over `UCX_TLS=tcp`
//! (loopback) and `UCX_TLS=posix,sysv,cma`; in one process (two workers, one progress
//! loop) and across two processes (this binary run again as the peer).

mod support;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use dimstore_ucx::{Context, Endpoint, MemoryRegion, Request, WaitError, Worker, WorkerAddress};
use support::{
    hex, pattern, progress_until, stdin_lines, tell, thread_cpu_time, unhex, wait_all, watchdog,
    Peer, Tls,
};

const MIB8: usize = 8 << 20;
/// Every test is aborted if it runs longer than this.
const LIMIT: Duration = Duration::from_secs(90);
/// Deadline of one operation in the tests.
const OP: Duration = Duration::from_secs(20);

/// Instantiates `$name(tls)` once per transport.
macro_rules! per_transport {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tcp() {
                super::$name(super::Tls::Tcp)
            }
            #[test]
            fn shm() {
                super::$name(super::Tls::Shm)
            }
        }
    )*};
}

per_transport!(
    get_8mib_between_workers,
    active_message_round_trip,
    event_fd_wakes_a_sleeping_worker,
    dropped_request_keeps_its_buffer_until_done,
    get_from_another_process,
);

/// A received message: header and data.
type Message = (Vec<u8>, Vec<u8>);

/// A "node": its own context and worker.
struct Node {
    ctx: Context,
    worker: Worker,
}

fn node(tls: Tls) -> Node {
    let ctx = Context::new(&tls.config()).expect("context");
    let worker = Worker::new(&ctx).expect("worker");
    Node { ctx, worker }
}

fn get_8mib_between_workers(tls: Tls) {
    let _dog = watchdog("get_8mib_between_workers", LIMIT);
    let (a, b) = (node(tls), node(tls));
    let both = [&a.worker, &b.worker];
    let src = pattern(MIB8, 1);
    let region = MemoryRegion::map(&a.ctx, src.clone()).expect("map");
    assert_eq!(a.ctx.live_regions(), 1);
    let packed = region.pack_rkey().expect("pack");

    let ep = Endpoint::connect(&b.worker, &a.worker.address().expect("address")).expect("ep");
    let rkey = ep.unpack_rkey(&packed).expect("unpack");
    let deadline = Instant::now() + OP;
    let dst = wait_all(
        ep.get(region.address(), &rkey, vec![0u8; MIB8]),
        &both,
        deadline,
    )
    .expect("get 8 MiB");
    assert!(dst == src, "bytes read differ from the region");

    let off = 12_345;
    let small = wait_all(
        ep.get(region.address() + off as u64, &rkey, vec![0u8; 8]),
        &both,
        deadline,
    )
    .expect("get 8 B");
    assert_eq!(small, src[off..off + 8]);

    // Informational numbers (both workers on one thread): latency and bandwidth.
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        wait_all(
            ep.get(region.address(), &rkey, vec![0u8; 8]),
            &both,
            deadline,
        )
        .expect("get");
    }
    let lat = t.elapsed() / n;
    let t = Instant::now();
    let mut buf = dst;
    for _ in 0..5 {
        buf = wait_all(ep.get(region.address(), &rkey, buf), &both, deadline).expect("get");
    }
    let gbps = 5.0 * MIB8 as f64 / t.elapsed().as_secs_f64() / 1e9;
    eprintln!("ucx {tls:?} one process: get 8 B {lat:?}, 8 MiB {gbps:.2} GB/s");

    drop(rkey);
    drop(ep);
    assert_eq!(b.worker.live_endpoints(), 0);
    drop(region);
    assert_eq!(a.ctx.live_regions(), 0, "a memory registration leaked");
}

fn active_message_round_trip(tls: Tls) {
    let _dog = watchdog("active_message_round_trip", LIMIT);
    let (a, b) = (node(tls), node(tls));
    let both = [&a.worker, &b.worker];
    // A answers message 1 with message 2: header reversed, same data.
    a.worker
        .set_am_handler(1, |msg| {
            let mut header = msg.header().to_vec();
            header.reverse();
            let data = msg.data().expect("eager data").to_vec();
            let mut reply = msg.reply(2, header, data);
            if let Some(Err(e)) = reply.test() {
                panic!("reply failed: {e}");
            }
        })
        .expect("handler 1");
    // A receives message 3 (large: rendezvous) into a buffer, outside the handler.
    let big: Rc<RefCell<Option<Request<Vec<u8>>>>> = Rc::default();
    let slot = Rc::clone(&big);
    a.worker
        .set_am_handler(3, move |msg| {
            let len = msg.data_len();
            *slot.borrow_mut() = Some(msg.receive(vec![0u8; len]));
        })
        .expect("handler 3");
    // B records replies; waiting inside its handler must be refused (UCX forbids
    // progressing a worker from its own callback), not re-enter UCX.
    let replies: Rc<RefCell<Vec<Message>>> = Rc::default();
    let reentry: Rc<RefCell<Option<String>>> = Rc::default();
    let probe: Rc<RefCell<Option<Endpoint>>> = Rc::default();
    let (sink, seen, ep_in_handler) = (Rc::clone(&replies), Rc::clone(&reentry), Rc::clone(&probe));
    b.worker
        .set_am_handler(2, move |msg| {
            let data = msg.data().unwrap_or_default().to_vec();
            sink.borrow_mut().push((msg.header().to_vec(), data));
            if let Some(ep) = ep_in_handler.borrow().as_ref() {
                let waited = ep.flush().wait(Instant::now() + Duration::from_secs(1));
                *seen.borrow_mut() = Some(format!("{:?}", waited.map_err(|e| e.into_error())));
            }
        })
        .expect("handler 2");

    let ep = Endpoint::connect(&b.worker, &a.worker.address().expect("address")).expect("ep");
    *probe.borrow_mut() = Some(ep.clone());
    let deadline = Instant::now() + OP;
    let data: &'static [u8] = b"payload";
    wait_all(ep.am_send(1, b"head".to_vec(), data), &both, deadline).expect("send");
    assert!(progress_until(&both, deadline, || !replies
        .borrow()
        .is_empty()));
    assert_eq!(replies.borrow()[0], (b"daeh".to_vec(), b"payload".to_vec()));
    let reentry = reentry.borrow_mut().take().expect("handler tried to wait");
    assert!(
        reentry.contains("inside an active message handler"),
        "{reentry}"
    );
    probe.borrow_mut().take();

    let payload = pattern(4 << 20, 3);
    let sent = ep.am_send(3, Vec::new(), payload.clone());
    assert!(progress_until(&both, deadline, || big.borrow().is_some()));
    let receive = big.borrow_mut().take().expect("receive started");
    let got = wait_all(receive, &both, deadline).expect("receive 4 MiB");
    wait_all(sent, &both, deadline).expect("send 4 MiB");
    assert!(got == payload, "4 MiB active message differs");
}

fn event_fd_wakes_a_sleeping_worker(tls: Tls) {
    let _dog = watchdog("event_fd_wakes_a_sleeping_worker", LIMIT);
    // One context shared by two threads, one worker each.
    let ctx = Context::new(&tls.config()).expect("context");
    let (addr_tx, addr_rx) = mpsc::channel::<WorkerAddress>();
    let sleeper_ctx = ctx.clone();
    let sleeper = thread::spawn(move || {
        let worker = Worker::new(&sleeper_ctx).expect("worker");
        let got = Rc::new(Cell::new(false));
        let flag = Rc::clone(&got);
        worker
            .set_am_handler(7, move |_| flag.set(true))
            .expect("handler");
        addr_tx
            .send(worker.address().expect("address"))
            .expect("send address");
        let (cpu0, t0) = (thread_cpu_time(), Instant::now());
        while !got.get() && t0.elapsed() < OP {
            worker.wait_for_event(Duration::from_secs(5)).expect("wait");
            worker.progress();
        }
        (got.get(), t0.elapsed(), thread_cpu_time() - cpu0)
    });
    let worker = Worker::new(&ctx).expect("worker");
    let addr = addr_rx.recv_timeout(OP).expect("sleeper address");
    let pause = Duration::from_millis(300);
    thread::sleep(pause);
    let ep = Endpoint::connect(&worker, &addr).expect("ep");
    let empty: &'static [u8] = b"";
    ep.am_send(7, vec![1], empty)
        .wait(Instant::now() + OP)
        .expect("send");
    let (got, wall, cpu) = sleeper.join().expect("sleeper thread");
    assert!(got, "the sleeping worker never got the message");
    assert!(
        wall >= pause - Duration::from_millis(50),
        "woke too early: {wall:?}"
    );
    assert!(
        cpu < wall / 4,
        "the waiting thread used {cpu:?} of CPU in {wall:?}: it spun instead of sleeping"
    );
    eprintln!("ucx {tls:?}: slept {wall:?} using {cpu:?} of CPU until the message came");
}

fn dropped_request_keeps_its_buffer_until_done(tls: Tls) {
    let _dog = watchdog("dropped_request_keeps_its_buffer_until_done", LIMIT);
    let (a, b) = (node(tls), node(tls));
    let both = [&a.worker, &b.worker];
    let region = MemoryRegion::map(&a.ctx, pattern(MIB8, 5)).expect("map");
    let ep = Endpoint::connect(&b.worker, &a.worker.address().expect("address")).expect("ep");
    let rkey = ep
        .unpack_rkey(&region.pack_rkey().expect("pack"))
        .expect("unpack");
    // Dropped at once: the worker keeps the request and the buffer until it completes.
    drop(ep.get(region.address(), &rkey, vec![0u8; MIB8]));
    let deadline = Instant::now() + OP;
    assert!(progress_until(&both, deadline, || b
        .worker
        .orphaned_requests()
        == 0));
    // A key used on another endpoint is refused, not passed to UCX.
    let other = Endpoint::connect(&b.worker, &a.worker.address().expect("address")).expect("ep");
    let err = other
        .get(region.address(), &rkey, vec![0u8; 8])
        .wait(deadline)
        .expect_err("a foreign key must be refused");
    assert!(matches!(err, WaitError::Failed { .. }), "{err}");
    drop((rkey, ep, other));
    assert_eq!(b.worker.live_endpoints(), 0);
    drop(region);
    assert_eq!(a.ctx.live_regions(), 0);
}

#[test]
fn peer_dropped_mid_get_fails_within_deadline() {
    let _dog = watchdog("peer_dropped_mid_get_fails_within_deadline", LIMIT);
    // Over tcp the read needs the target to progress: it cannot complete while A is idle.
    let (a, b) = (node(Tls::Tcp), node(Tls::Tcp));
    let region = MemoryRegion::map(&a.ctx, pattern(MIB8, 2)).expect("map");
    let ep = Endpoint::connect(&b.worker, &a.worker.address().expect("address")).expect("ep");
    let rkey = ep
        .unpack_rkey(&region.pack_rkey().expect("pack"))
        .expect("unpack");
    let mut get = ep.get(region.address(), &rkey, vec![0u8; MIB8]);
    for _ in 0..100 {
        b.worker.progress();
    }
    assert!(
        !get.is_complete(),
        "the read completed without the target progressing"
    );
    drop(region);
    drop(a);
    let t0 = Instant::now();
    let err = get
        .wait(t0 + OP)
        .expect_err("a read from a dead peer must fail");
    assert!(t0.elapsed() < OP, "failed only at the deadline: {err}");
    assert!(
        matches!(err, WaitError::Failed { .. }) && err.error().is_peer_failure(),
        "not a peer failure: {err}"
    );
    assert!(
        ep.error().is_some(),
        "the endpoint did not record the failure"
    );
    drop((rkey, ep));
    assert_eq!(b.worker.live_endpoints(), 0);
}

fn get_from_another_process(tls: Tls) {
    let _dog = watchdog("get_from_another_process", LIMIT);
    let mut peer = Peer::spawn("peer_process", &[("DIMSTORE_UCX_PEER", tls.name())]);
    let addr = WorkerAddress::from_bytes(unhex(&peer.read("ADDR")));
    let packed = unhex(&peer.read("RKEY"));
    let remote: u64 = peer.read("REGION").parse().expect("region address");
    let me = node(tls);
    let ep = Endpoint::connect(&me.worker, &addr).expect("ep");
    let rkey = ep.unpack_rkey(&packed).expect("unpack");
    let deadline = Instant::now() + OP;

    let dst = ep
        .get(remote, &rkey, vec![0u8; MIB8])
        .wait(deadline)
        .expect("get 8 MiB");
    assert!(dst == pattern(MIB8, 9), "bytes read from the peer differ");

    let got: Rc<RefCell<Option<Vec<u8>>>> = Rc::default();
    let sink = Rc::clone(&got);
    me.worker
        .set_am_handler(2, move |m| *sink.borrow_mut() = Some(m.header().to_vec()))
        .expect("handler");
    let empty: &'static [u8] = b"";
    ep.am_send(1, b"ping".to_vec(), empty)
        .wait(deadline)
        .expect("send");
    assert!(progress_until(&[&me.worker], deadline, || got
        .borrow()
        .is_some()));
    assert_eq!(got.borrow().as_deref(), Some(&b"ping"[..]));

    // Informational numbers: the peer sleeps on its event fd between requests.
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        ep.get(remote, &rkey, vec![0u8; 8])
            .wait(deadline)
            .expect("get");
    }
    let lat = t.elapsed() / n;
    let t = Instant::now();
    let mut buf = dst;
    for _ in 0..5 {
        buf = ep.get(remote, &rkey, buf).wait(deadline).expect("get");
    }
    let gbps = 5.0 * MIB8 as f64 / t.elapsed().as_secs_f64() / 1e9;
    eprintln!("ucx {tls:?} two processes: get 8 B {lat:?}, 8 MiB {gbps:.2} GB/s");

    // The peer stops (a hung node), a read starts, the peer dies: the read (or the next
    // one) ends within its deadline instead of hanging. Over tcp it fails as a peer
    // failure; over shared memory UCX 1.13 cannot detect peer failure, so a read of
    // UCX-allocated shared memory may even succeed (the segment outlives its owner), and
    // an emulated one ends at its deadline.
    peer.signal("STOP");
    let mut get = ep.get(remote, &rkey, buf);
    progress_until(
        &[&me.worker],
        Instant::now() + Duration::from_millis(100),
        || false,
    );
    if matches!(tls, Tls::Tcp) {
        assert!(
            !get.is_complete(),
            "tcp read completed with the target stopped"
        );
    }
    peer.kill();
    let bound = match tls {
        Tls::Tcp => OP,
        Tls::Shm => Duration::from_secs(3),
    };
    let t0 = Instant::now();
    let outcome = get
        .wait(t0 + bound)
        .and_then(|buf| ep.get(remote, &rkey, buf).wait(t0 + bound))
        .map(drop)
        .map_err(WaitError::into_error);
    assert!(t0.elapsed() < bound + Duration::from_secs(1), "not bounded");
    if matches!(tls, Tls::Tcp) {
        let e = outcome
            .as_ref()
            .expect_err("a read from a dead tcp peer must fail");
        assert!(e.is_peer_failure() && !e.is_timeout(), "{e}");
    }
    eprintln!(
        "ucx {tls:?}: reads from a killed peer ended in {:?}: {outcome:?}",
        t0.elapsed()
    );
    drop((rkey, ep));
    assert_eq!(me.worker.live_endpoints(), 0);
}

/// Not a test on its own: the peer of `get_from_another_process` when run with
/// `DIMSTORE_UCX_PEER=<transport>`; otherwise it returns at once.
#[test]
fn peer_process() {
    let Ok(name) = std::env::var("DIMSTORE_UCX_PEER") else {
        return;
    };
    let _dog = watchdog("peer_process", LIMIT);
    let me = node(Tls::from_name(&name));
    // UCX-allocated memory: over shared memory peers then read it directly (posix/sysv
    // segments) instead of through emulation.
    let mut region = MemoryRegion::allocate(&me.ctx, MIB8).expect("allocate");
    region
        .as_mut_slice()
        .expect("UCX-allocated")
        .copy_from_slice(&pattern(MIB8, 9));
    me.worker
        .set_am_handler(1, |m| {
            let empty: &'static [u8] = b"";
            drop(m.reply(2, m.header().to_vec(), empty));
        })
        .expect("handler");
    tell(
        "ADDR",
        hex(me.worker.address().expect("address").as_bytes()),
    );
    tell("RKEY", hex(&region.pack_rkey().expect("pack")));
    tell("REGION", region.address());
    let lines = stdin_lines();
    // Serve until the parent closes stdin: sleep on the event fd when idle.
    while !matches!(lines.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
        me.worker
            .wait_for_event(Duration::from_millis(100))
            .expect("wait");
        me.worker.progress();
    }
}
