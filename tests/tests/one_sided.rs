//! One-sided transports beyond the shared suite: an owner killed during a 256 MiB read, an
//! evict racing a read, stale keys after an owner restarts on the same address, `auto`
//! picking a one-sided transport, and a forced transport the owner does not offer. Each runs
//! over UCX (UCX_TLS=tcp) and libfabric (tcp;ofi_rxm). UCX alone: requests travel as active
//! messages, a dead owner over shared memory is a lost connection, and idle fabric threads
//! sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore::{ConnectError, GetError, RequestError, Store, TransportChoice};
use dimstore_proto::{GetItem, Request, Response};
use dimstore_tests::{
    pattern, prepare, proc_stat_fields, raw_hello, test_config, transport_name, transport_row,
    wait_stats, wait_stats_within, ServerOptions, TestServer,
};
use dimstore_transport::tcp::TcpConnector;
use dimstore_transport::{Connection, Connector};

macro_rules! per_transport {
    ($($module:ident => $transport:literal),* $(,)?) => {
        $(
            mod $module {
                #[test]
                fn owner_killed_during_a_large_read() {
                    super::owner_killed_during_a_large_read($transport);
                }
                #[test]
                fn evict_during_a_read_waits_for_it() {
                    super::evict_during_a_read_waits_for_it($transport);
                }
                #[test]
                fn restarted_owner_never_serves_through_stale_keys() {
                    super::restarted_owner_never_serves_through_stale_keys($transport);
                }
                #[test]
                fn auto_picks_the_one_sided_transport() {
                    super::auto_picks_the_one_sided_transport($transport);
                }
                #[test]
                fn a_hung_reader_loses_its_lease_at_the_deadline() {
                    super::a_hung_reader_loses_its_lease_at_the_deadline($transport);
                }
                #[test]
                fn forced_transport_not_offered_is_a_clear_error() {
                    super::forced_transport_not_offered_is_a_clear_error($transport);
                }
            }
        )*
    };
}

per_transport!(ucx => "ucx-tcp", ofi => "ofi-tcp");

const BIG: usize = 256 << 20;

fn server(node: &str, extra: &[&str]) -> TestServer {
    TestServer::start(ServerOptions {
        node: node.into(),
        memory_limit: "600MiB".into(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..ServerOptions::default()
    })
}

/// Waits (bounded) until the owner has handed out at least `bytes` for one-sided reads:
/// the reader's transfer has begun.
fn wait_until_read_starts(owner: &Store, transport: &str, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = owner.stats().expect("owner stats");
        let served =
            transport_row(&stats, transport_name(transport)).map_or(0, |t| t.one_sided_bytes);
        if served >= bytes {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the read never started: {stats:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// kill -9 of the owner while a 256 MiB object is being read: the get ends with a typed
/// error within its timeout (or, if the read won the race, with the right bytes), and the
/// reader keeps working with other servers.
pub fn owner_killed_during_a_large_read(transport: &str) {
    prepare(transport);
    // Small chunks, one in flight: the transfer lasts long enough to be interrupted.
    std::env::set_var("DIMSTORE_UCX_CHUNK", "262144");
    std::env::set_var("DIMSTORE_OFI_CHUNK", "262144");
    std::env::set_var("DIMSTORE_UCX_IN_FLIGHT", "1");
    std::env::set_var("DIMSTORE_OFI_IN_FLIGHT", "1");
    let timeout = Duration::from_secs(5);
    let data = Arc::new(pattern(BIG, 3));
    let mut interrupted = 0;
    for attempt in 0..3 {
        let mut owner = server("n0", &[]);
        let other = server("n1", &[]);
        let producer = owner.client(transport);
        let consumer = other.client(transport).with_timeout(timeout);
        let key = producer.put(&data).expect("put 256 MiB");
        let local_key = consumer
            .put(b"still here")
            .expect("put on the reader's node");
        let reading = {
            let (consumer, key) = (consumer.clone(), key.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let result = consumer.get(&key);
                (result, started.elapsed())
            })
        };
        wait_until_read_starts(&producer, transport, BIG as u64);
        owner.kill();
        let (result, took) = reading.join().expect("reader thread");
        assert!(
            took < timeout + Duration::from_secs(5),
            "attempt {attempt}: the get must end by its timeout, took {took:?}"
        );
        match result {
            Ok(bytes) => assert!(
                bytes[..] == data[..],
                "a completed read has the right bytes"
            ),
            Err(GetError::Request(
                RequestError::OneSided { .. }
                | RequestError::ConnectionLost { .. }
                | RequestError::Timeout { .. }
                | RequestError::Unreachable { .. },
            )) => interrupted += 1,
            Err(other) => {
                panic!("attempt {attempt}: expected a typed transport error, got {other:?}")
            }
        }
        assert_eq!(
            &consumer
                .get(&local_key)
                .expect("the reader's own node still serves")[..],
            b"still here"
        );
        if interrupted > 0 {
            break;
        }
    }
    assert!(interrupted > 0, "no attempt interrupted a read in flight");
}

/// An evict arriving while a 256 MiB object is read: the read completes with the right
/// bytes (the lease defers the free), then the object is gone (typed NotFound) and its
/// memory returns.
pub fn evict_during_a_read_waits_for_it(transport: &str) {
    prepare(transport);
    std::env::set_var("DIMSTORE_UCX_CHUNK", "1048576");
    std::env::set_var("DIMSTORE_OFI_CHUNK", "1048576");
    let owner = server("n0", &[]);
    let other = server("n1", &[]);
    let producer = owner.client(transport);
    let consumer = other.client(transport);
    let data = Arc::new(pattern(BIG, 4));
    let key = producer.put(&data).expect("put");
    let reading = {
        let (consumer, key) = (consumer.clone(), key.clone());
        std::thread::spawn(move || consumer.get(&key))
    };
    wait_until_read_starts(&producer, transport, BIG as u64);
    assert!(producer.evict(&key).expect("evict"), "the object was there");
    let got = reading
        .join()
        .expect("reader")
        .expect("the read in flight completes");
    assert!(got[..] == data[..], "bytes intact despite the evict");
    match consumer.get(&key) {
        Err(GetError::NotFound(_)) => {}
        other => panic!("a read after the evict must be NotFound, got {other:?}"),
    }
    wait_stats(&producer, "memory never returned", |s| {
        s.leases == 0 && s.bytes_used == 0
    });
}

/// The owner dies and a new one starts on the same address: the client's keys (rkeys,
/// segment addresses) belonged to the old process and must never be used against the new
/// one. Gets of new objects return their bytes; the old object is NotFound.
pub fn restarted_owner_never_serves_through_stale_keys(transport: &str) {
    prepare(transport);
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        probe.local_addr().expect("addr").port()
    };
    let listen = format!("127.0.0.1:{port}");
    let other = server("n1", &[]);
    let consumer = other.client(transport);
    let old = pattern(4 << 20, 5);
    let old_key = {
        let mut first = server("n0", &["--listen", &listen]);
        let key = first.client(transport).put(&old).expect("put");
        assert_eq!(&consumer.get(&key).expect("get")[..], &old[..]);
        first.kill();
        key
    };
    let second = server("n0", &["--listen", &listen]);
    let new = pattern(4 << 20, 6);
    let new_key = second
        .client(transport)
        .put(&new)
        .expect("put on the new owner");
    assert_eq!(new_key.owner, old_key.owner, "same address");
    // The first call may find the old connection broken; the next one reconnects.
    let got = match consumer.get(&new_key) {
        Ok(bytes) => bytes,
        Err(GetError::Request(RequestError::ConnectionLost { .. })) => {
            consumer.get(&new_key).expect("get after reconnecting")
        }
        Err(e) => panic!("unexpected error after the restart: {e}"),
    };
    assert_eq!(&got[..], &new[..], "bytes of the new owner's object");
    match consumer.get(&old_key) {
        Err(GetError::NotFound(_)) => {}
        other => panic!("the old object is gone with its owner, got {other:?}"),
    }
}

/// `DIMSTORE_TRANSPORT=auto` takes the owner's one-sided transport for a remote node when
/// the node has RDMA hardware (asserted here by `rdma_hardware`), and stays on TCP without.
pub fn auto_picks_the_one_sided_transport(transport: &str) {
    prepare(transport);
    let owner = server("n0", &[]);
    let other = server("n1", &[]);
    let key = owner
        .client(transport)
        .put(&pattern(1 << 20, 9))
        .expect("put");
    let served = |consumer: &Store| {
        let stats = consumer.stats_of(&key.owner).expect("stats");
        transport_row(&stats, transport_name(transport))
            .expect("transport row")
            .one_sided_bytes
    };
    let without = other.client_with(transport, |c| {
        c.transport = TransportChoice::Auto;
        c.rdma_hardware = Some(false);
    });
    assert_eq!(without.get(&key).expect("get").len(), 1 << 20);
    assert_eq!(served(&without), 0, "no RDMA hardware: TCP");
    let with = other.client_with(transport, |c| {
        c.transport = TransportChoice::Auto;
        c.rdma_hardware = Some(true);
    });
    assert_eq!(with.get(&key).expect("get").len(), 1 << 20);
    assert_eq!(served(&with), 1 << 20, "RDMA hardware: one-sided");
}

/// A forced transport the owner does not offer fails the connection with a typed error
/// naming it, instead of silently using TCP.
pub fn forced_transport_not_offered_is_a_clear_error(transport: &str) {
    prepare(transport);
    let owner = server("n0", &["--one-sided", "none"]);
    match Store::connect(owner.address(), test_config(transport)) {
        Err(ConnectError::Request(RequestError::TransportUnavailable {
            transport: name,
            source,
            ..
        })) => {
            assert_eq!(name, transport_name(transport));
            assert!(source.to_string().contains("does not offer"), "{source}");
        }
        Ok(_) => panic!("connected although the owner offers no {transport}"),
        Err(e) => panic!("expected TransportUnavailable, got {e}"),
    }
}

/// A reader that takes a one-sided lease and then hangs, its connection open, never reading
/// nor releasing: the lease ends at the server's `--lease-timeout`, and an object evicted
/// meanwhile is freed then.
pub fn a_hung_reader_loses_its_lease_at_the_deadline(transport: &str) {
    prepare(transport);
    let owner = server("n0", &["--lease-timeout", "1s"]);
    let producer = owner.client(transport);
    let key = producer.put(&pattern(1 << 20, 12)).expect("put");
    let deadline = || Instant::now() + Duration::from_secs(10);
    let hung = TcpConnector::default()
        .connect(owner.address(), deadline())
        .expect("connect");
    assert!(matches!(
        hung.call(&raw_hello("elsewhere"), &[], 0, deadline())
            .expect("hello")
            .response,
        Response::Hello(_)
    ));
    let use_one_sided = Request::UseOneSided {
        transport: transport_name(transport).into(),
        from: 0,
    };
    assert_eq!(
        hung.call(&use_one_sided, &[], 0, deadline())
            .expect("use")
            .response,
        Response::Done
    );
    let get = Request::Get {
        ids: vec![key.id],
        wait_ms: 0,
    };
    match hung.call(&get, &[], 0, deadline()).expect("get").response {
        Response::Get { items } => assert!(
            matches!(items[..], [GetItem::Remote { .. }]),
            "a remote item with a lease: {items:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(producer.evict(&key).expect("evict"));
    let stats = producer.stats().expect("stats");
    assert_eq!(stats.leases, 1, "the hung reader's lease pins the object");
    assert!(stats.bytes_used > 0, "evicted but still pinned: {stats:?}");
    let stats = wait_stats_within(
        &producer,
        Duration::from_secs(20),
        "the lease never expired",
        |s| s.leases == 0,
    );
    assert_eq!(stats.expired_leases, 1, "{stats:?}");
    assert_eq!(stats.bytes_used, 0, "freed with the lease: {stats:?}");
    assert!(!hung.is_broken(), "the connection itself stays open");
}

/// Over UCX, requests travel as active messages on a channel opened from the TCP
/// connection: small objects come back inline in the channel's replies (counted on the ucx
/// row, nothing on tcp), large puts are pulled by the server and large gets read one-sided,
/// and the channel's session ends with the client's TCP connection. With
/// `DIMSTORE_UCX_REQUESTS=tcp` requests stay on the TCP connection instead.
#[test]
fn ucx_requests_travel_on_active_messages() {
    prepare("ucx-tcp");
    let owner = server("n0", &[]);
    let row = |stats: &dimstore_proto::ServerStats, name: &str| {
        transport_row(stats, name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} row in {stats:?}"))
    };
    let small = pattern(1000, 3);
    let big = pattern(8 << 20, 4);
    {
        let client = owner.client("ucx-tcp");
        let small_key = client.put(&small).expect("small put");
        let big_key = client.put(&big).expect("big put");
        assert_eq!(&client.get(&small_key).expect("small get")[..], &small[..]);
        assert_eq!(&client.get(&big_key).expect("big get")[..], &big[..]);
        let stats = client.stats().expect("stats");
        let (ucx, tcp) = (row(&stats, "ucx"), row(&stats, "tcp"));
        assert_eq!(ucx.connections, 1, "one channel session: {stats:?}");
        assert_eq!(ucx.one_sided_bytes, 8 << 20, "{stats:?}");
        assert_eq!(
            ucx.bytes_served - ucx.one_sided_bytes,
            1000,
            "the small object came inline in a channel reply: {stats:?}"
        );
        assert_eq!(tcp.bytes_served, 0, "nothing moved on TCP: {stats:?}");
        assert_eq!(stats.puts, 2, "{stats:?}");
        assert_eq!(
            ucx.pulled_bytes,
            8 << 20,
            "the big put was pulled from the client's buffer, the small one came with its message: {stats:?}"
        );
    }
    // The client is gone: its TCP connection closed, and the channel with it.
    let watcher = owner.client("tcp");
    wait_stats(&watcher, "channel never closed", |s| {
        row(s, "ucx").connections == 0
    });
    std::env::set_var("DIMSTORE_UCX_REQUESTS", "tcp");
    let client = owner.client("ucx-tcp");
    let key = client.put(&small).expect("put over tcp");
    assert_eq!(&client.get(&key).expect("get")[..], &small[..]);
    // The server counts bytes once their write returned, which may be after the client
    // already read them: wait (bounded) for the count rather than race it.
    let stats = wait_stats(&watcher, "the inline reply was never counted", |s| {
        row(s, "tcp").bytes_served >= 1000
    });
    assert_eq!(
        row(&stats, "tcp").bytes_served,
        1000,
        "the small object came inline on TCP: {stats:?}"
    );
    assert_eq!(row(&stats, "ucx").connections, 1, "{stats:?}");
}

/// Over UCX shared memory a dead owner is not detected by UCX (its reads are served by the
/// owner's progress, which stops): the reader learns it from the owner's TCP connection
/// closing, and the get fails as a lost connection long before its (long) timeout, not as
/// a timeout.
#[test]
fn ucx_shm_read_from_a_killed_owner_is_a_lost_connection() {
    prepare("ucx-shm");
    std::env::set_var("DIMSTORE_UCX_CHUNK", "262144");
    std::env::set_var("DIMSTORE_UCX_IN_FLIGHT", "1");
    let data = pattern(BIG, 7);
    let mut owner = server("n0", &[]);
    let other = server("n1", &[]);
    let producer = owner.client("ucx-shm");
    let consumer = other
        .client("ucx-shm")
        .with_timeout(Duration::from_secs(60));
    let key = producer.put(&data).expect("put 256 MiB");
    let reading = {
        let (consumer, key) = (consumer.clone(), key.clone());
        std::thread::spawn(move || consumer.get(&key))
    };
    wait_until_read_starts(&producer, "ucx-shm", BIG as u64);
    owner.kill();
    match reading.join().expect("reader thread") {
        Err(GetError::Request(RequestError::ConnectionLost { .. })) => {}
        // The read may have finished just before the kill.
        Ok(bytes) => assert!(
            bytes[..] == data[..],
            "a completed read has the right bytes"
        ),
        Err(other) => panic!("expected a lost connection, got {other:?}"),
    }
}

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat` (in USER_HZ
/// ticks of 10 ms, as on every Linux architecture dimstore runs on).
fn cpu_time(pid: u32) -> Duration {
    let fields = proc_stat_fields(pid).expect("stat");
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Idle UCX fabric threads sleep: after traffic (requests on a channel, a one-sided read), a
/// server and a client that do nothing use a small fraction of a core, not a spinning one.
#[test]
fn idle_ucx_fabric_threads_do_not_burn_a_core() {
    prepare("ucx-tcp");
    let owner = server("n0", &[]);
    let client = owner.client("ucx-tcp");
    let key = client.put(&pattern(1 << 20, 5)).expect("put");
    assert_eq!(client.get(&key).expect("get").len(), 1 << 20);
    std::thread::sleep(Duration::from_millis(200));
    let (server_pid, own_pid) = (owner.pid(), std::process::id());
    let (server_before, own_before) = (cpu_time(server_pid), cpu_time(own_pid));
    let idle = Duration::from_secs(2);
    std::thread::sleep(idle);
    let server_used = cpu_time(server_pid) - server_before;
    let own_used = cpu_time(own_pid) - own_before;
    // A spinning thread would use the whole 2 s.
    assert!(
        server_used < idle / 4,
        "idle server used {server_used:?} of CPU in {idle:?}"
    );
    assert!(
        own_used < idle / 4,
        "idle client used {own_used:?} of CPU in {idle:?}"
    );
    // And they still work.
    assert_eq!(client.get(&key).expect("get after idling").len(), 1 << 20);
}
