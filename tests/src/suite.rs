//! The transport test suite: written once, run against every transport by
//! [`crate::transport_suite!`]. Each function starts its own real servers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore::{GetError, Key, ObjectId, PutError, RequestError, SetError};

use crate::{pattern, transport_row, wait_stats_within, Cluster, ServerOptions, TestServer};

/// Instantiates every suite function as a `#[test]` for one transport.
#[macro_export]
macro_rules! transport_suite {
    ($transport:literal: $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::prepare($transport);
                $crate::suite::$name($transport);
            }
        )*
    };
    ($transport:literal) => {
        $crate::transport_suite!($transport:
            puts_on_each_server_are_read_from_every_other,
            batches_take_one_round_trip_per_owner,
            deferred_get_waits_for_set,
            deferred_get_gives_not_set_after_timeout,
            set_errors_are_typed,
            missing_and_evicted_objects_are_not_found,
            memory_limit_gives_store_full_and_keeps_serving,
            one_gib_object_round_trips,
            killed_owner_gives_typed_error_and_others_keep_serving,
            unresponsive_owner_times_out,
            threads_share_one_connection,
            wrong_token_is_refused,
            archived_values_and_proxies_round_trip,
            sizes_from_empty_to_megabytes_round_trip,
            large_gets_move_by_the_transport,
        );
    };
}

/// 3 servers: a client on each puts; clients on every other node get and verify.
pub fn puts_on_each_server_are_read_from_every_other(transport: &str) {
    let cluster = Cluster::start(3);
    let clients: Vec<_> = cluster
        .servers
        .iter()
        .map(|s| s.client(transport))
        .collect();
    let mut keys = Vec::new();
    for (i, (server, client)) in cluster.servers.iter().zip(&clients).enumerate() {
        let data = pattern(1000 + i * 4096, i as u64);
        let key = client.put(&data).expect("put");
        assert_eq!(
            key.owner,
            server.address(),
            "a put lands on the client's own node"
        );
        assert_eq!(key.size, Some(data.len() as u64));
        keys.push((key, data));
    }
    for (i, client) in clients.iter().enumerate() {
        for (j, (key, data)) in keys.iter().enumerate() {
            if i == j {
                continue;
            }
            // Keys travel as text.
            let key: Key = key.to_string().parse().expect("key text");
            let got = client.get(&key).expect("remote get");
            assert_eq!(&got[..], &data[..], "node {i} reading node {j}'s object");
            assert!(client.exists(&key).expect("exists"));
        }
    }
    let stats = clients[0].stats().expect("stats");
    assert_eq!(stats.objects, 1);
    assert_eq!(
        stats.get_hits, 2,
        "both other nodes fetched node 0's object"
    );
}

/// Batch forms: one request per owner, results in key order.
pub fn batches_take_one_round_trip_per_owner(transport: &str) {
    let cluster = Cluster::start(2);
    let a = cluster.servers[0].client(transport);
    let b = cluster.servers[1].client(transport);
    let objects: Vec<Vec<u8>> = (0..50).map(|i| pattern(i * 37, i as u64)).collect();
    let refs: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
    let before = a.stats().expect("stats").requests;
    let keys_a = a.put_batch(&refs[..25]).expect("batch put a");
    let after = a.stats().expect("stats").requests;
    assert_eq!(
        after - before,
        2,
        "25 puts in one request (plus the stats call)"
    );
    let keys_b = b.put_batch(&refs[25..]).expect("batch put b");
    let mut all: Vec<Key> = keys_a.iter().chain(&keys_b).cloned().collect();
    // Interleave owners and add a missing key in the middle.
    all.swap(3, 30);
    let missing = Key {
        id: ObjectId(12345),
        ..all[0].clone()
    };
    all.insert(10, missing);
    let got = a.get_batch(&all).expect("batch get");
    assert_eq!(got.len(), all.len());
    assert!(got[10].is_none(), "missing key");
    let mut expected: Vec<Option<&[u8]>> = refs.iter().map(|r| Some(*r)).collect();
    expected.swap(3, 30);
    expected.insert(10, None);
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.as_deref(), *e);
    }
    let present = b.exists_batch(&all).expect("exists batch");
    assert_eq!(present.iter().filter(|&&p| p).count(), 50);
    let evicted = b.evict_batch(&all[..20]).expect("evict batch");
    assert_eq!(evicted.iter().filter(|&&e| e).count(), 19);
    assert_eq!(
        a.stats().expect("stats").objects + b.stats().expect("stats").objects,
        31
    );
}

/// A get on a reserved key waits until another node sets it.
pub fn deferred_get_waits_for_set(transport: &str) {
    let cluster = Cluster::start(2);
    let owner = cluster.servers[0].client(transport);
    let key = owner.new_key().expect("new key");
    assert_eq!(key.size, None);
    assert!(!owner.exists(&key).expect("exists"), "reserved is not set");
    let setter = cluster.servers[1].client(transport);
    let setter_key = key.clone();
    let started = Instant::now();
    let handle = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        setter.set(&setter_key, b"the future's value").expect("set")
    });
    let got = owner.get(&key).unwrap_or_else(|e| {
        panic!(
            "waiting get: {e:?}\nserver log:\n{}",
            cluster.servers[0].log()
        )
    });
    assert_eq!(&got[..], b"the future's value");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the get waited"
    );
    let full_key = handle.join().expect("setter");
    assert_eq!(full_key.size, Some(18));
}

/// A reserved key never set: the get ends with NotSet when its timeout runs out.
pub fn deferred_get_gives_not_set_after_timeout(transport: &str) {
    let server = TestServer::start(ServerOptions::default());
    let client = server
        .client(transport)
        .with_timeout(Duration::from_millis(600));
    let key = client.new_key().expect("new key");
    let started = Instant::now();
    match client.get(&key) {
        Err(GetError::NotSet(k)) => assert_eq!(k, key),
        other => panic!("expected NotSet, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeout"
    );
    // The connection stays usable.
    assert!(client.put(b"x").is_ok());
}

/// set on a set key, or on a key never reserved, is a typed error.
pub fn set_errors_are_typed(transport: &str) {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client(transport);
    let key = client.new_key().expect("new key");
    client.set(&key, b"once").expect("first set");
    assert!(matches!(
        client.set(&key, b"twice"),
        Err(SetError::AlreadySet(_))
    ));
    let never = Key {
        id: ObjectId(7),
        ..key.clone()
    };
    assert!(matches!(
        client.set(&never, b"x"),
        Err(SetError::NotReserved(_))
    ));
    assert_eq!(&client.get(&key).expect("get")[..], b"once");
}

/// Unknown ids and evicted objects give NotFound.
pub fn missing_and_evicted_objects_are_not_found(transport: &str) {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client(transport);
    let key = client.put(b"short-lived").expect("put");
    assert!(client.evict(&key).expect("evict"));
    assert!(!client.evict(&key).expect("evict again"), "already gone");
    assert!(matches!(client.get(&key), Err(GetError::NotFound(_))));
    assert!(!client.exists(&key).expect("exists"));
    assert_eq!(
        client.stats().expect("stats").bytes_used,
        0,
        "memory returned"
    );
}

/// Filling the memory limit gives StoreFull; everything else keeps working.
pub fn memory_limit_gives_store_full_and_keeps_serving(transport: &str) {
    let server = TestServer::start(ServerOptions {
        memory_limit: "4MiB".into(),
        ..ServerOptions::default()
    });
    let client = server.client(transport);
    let chunk = vec![7u8; 1 << 20];
    let mut keys = Vec::new();
    let full = loop {
        match client.put(&chunk) {
            Ok(k) => keys.push(k),
            Err(e) => break e,
        }
        assert!(keys.len() <= 4, "the limit was not enforced");
    };
    assert!(matches!(full, PutError::StoreFull(_)), "got {full:?}");
    assert_eq!(keys.len(), 4);
    assert!(matches!(
        client.put(&vec![0u8; 5 << 20]),
        Err(PutError::TooLarge(_))
    ));
    let stats = client.stats().expect("stats");
    assert!(stats.store_full >= 1);
    assert!(stats.bytes_used <= 4 << 20);
    // Existing objects are intact; freeing one makes room again.
    assert_eq!(&client.get(&keys[0]).expect("get")[..], &chunk[..]);
    client.evict(&keys[0]).expect("evict");
    client.put(&chunk).expect("room again after evict");
}

/// A 1 GiB object goes in and comes back identical.
pub fn one_gib_object_round_trips(transport: &str) {
    let server = TestServer::start(ServerOptions {
        memory_limit: "1100MiB".into(),
        ..ServerOptions::default()
    });
    let client = server.client_with(transport, |c| c.timeout = Duration::from_secs(120));
    let mut data = vec![0u8; 1 << 30];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    let key = client.put(&data).expect("put 1 GiB");
    let reader = TestServer::start(ServerOptions::default());
    let remote = reader.client_with(transport, |c| c.timeout = Duration::from_secs(120));
    let got = remote.get(&key).expect("get 1 GiB");
    assert_eq!(got.len(), data.len());
    assert!(got[..] == data[..], "1 GiB object differs");
}

/// kill -9 of an owner mid-workload: typed errors within the timeout; other servers fine.
pub fn killed_owner_gives_typed_error_and_others_keep_serving(transport: &str) {
    let mut cluster = Cluster::start(3);
    let timeout = Duration::from_secs(2);
    let clients: Vec<_> = cluster
        .servers
        .iter()
        .map(|s| s.client(transport).with_timeout(timeout))
        .collect();
    let keys: Vec<Key> = clients
        .iter()
        .map(|c| c.put(&pattern(64 << 10, 1)).expect("put"))
        .collect();
    let reader = Arc::new(clients[2].clone());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workload = {
        let (reader, stop, key) = (Arc::clone(&reader), Arc::clone(&stop), keys[0].clone());
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && started.elapsed() < Duration::from_secs(20)
            {
                let t = Instant::now();
                let r = reader.get(&key);
                outcomes.push((r.is_ok(), t.elapsed(), r.err().map(|e| e.to_string())));
            }
            outcomes
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    cluster.servers[0].kill();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = workload.join().expect("workload");
    assert!(
        outcomes.iter().any(|o| o.0),
        "gets succeeded before the kill"
    );
    let failures: Vec<_> = outcomes.iter().filter(|o| !o.0).collect();
    assert!(!failures.is_empty(), "gets failed after the kill");
    for (_, took, _) in &failures {
        assert!(
            *took <= timeout + Duration::from_secs(1),
            "error within the timeout"
        );
    }
    match reader.get(&keys[0]) {
        Err(GetError::Request(
            RequestError::Unreachable { .. } | RequestError::ConnectionLost { .. },
        )) => {}
        other => panic!("expected a typed connection error, got {other:?}"),
    }
    // The other owners are unaffected.
    assert_eq!(reader.get(&keys[1]).expect("node 1").len(), 64 << 10);
    assert_eq!(clients[1].get(&keys[2]).expect("node 2").len(), 64 << 10);
}

/// An owner that accepts connections but never answers: Timeout, not a hang.
pub fn unresponsive_owner_times_out(transport: &str) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let server = TestServer::start(ServerOptions::default());
    let client = server
        .client(transport)
        .with_timeout(Duration::from_millis(500));
    let key = Key {
        owner: address,
        id: ObjectId(1),
        size: Some(1),
    };
    let started = Instant::now();
    match client.get(&key) {
        Err(GetError::Request(RequestError::Timeout { .. })) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
    drop(listener);
}

/// Many threads share one connection per server; replies reach the right caller.
pub fn threads_share_one_connection(transport: &str) {
    let cluster = Cluster::start(2);
    let client = cluster.servers[0].client(transport);
    let remote_key = cluster.servers[1]
        .client(transport)
        .put(&pattern(10_000, 99))
        .expect("put");
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let client = client.clone();
            let remote_key = remote_key.clone();
            s.spawn(move || {
                for i in 0..100u64 {
                    let data = pattern((t * 131 + i * 17) as usize % 5000, t * 1000 + i);
                    let key = client.put(&data).expect("put");
                    assert_eq!(&client.get(&key).expect("get")[..], &data[..]);
                    if i % 10 == 0 {
                        assert_eq!(client.get(&remote_key).expect("remote").len(), 10_000);
                    }
                }
            });
        }
    });
    let stats = client.stats().expect("stats");
    assert_eq!(stats.objects, 800);
    let used = transport_row(&stats, crate::transport_name(transport)).expect("transport stats");
    assert_eq!(
        used.connections, 1,
        "one connection per peer, shared by threads"
    );
    // Every request was timed, on the transport that carried it (UCX: its channels).
    let count = |ops: &[&str]| -> u64 {
        let rows = stats.ops.iter().filter(|o| ops.contains(&o.op.as_str()));
        rows.map(|o| o.count).sum()
    };
    assert_eq!(count(&["get"]), 800, "{:#?}", stats.ops);
    assert_eq!(count(&["put", "seal"]), 800, "{:#?}", stats.ops);
    if crate::transport_name(transport) == "ucx" {
        let over_ucx = stats
            .ops
            .iter()
            .find(|o| o.op == "get" && o.transport == "ucx");
        assert_eq!(over_ucx.map(|o| o.count), Some(800), "{:#?}", stats.ops);
    }
}

/// A server started with a token refuses clients without it.
pub fn wrong_token_is_refused(transport: &str) {
    let server = TestServer::start(ServerOptions {
        token: Some("s3cret".into()),
        ..ServerOptions::default()
    });
    let refused = dimstore::Store::connect(server.address(), {
        let mut c = crate::test_config(transport);
        c.token = Some("wrong".into());
        c.node = Some(server.ready.node.clone());
        c
    });
    assert!(
        matches!(
            refused,
            Err(dimstore::ConnectError::Request(
                RequestError::Unauthorized { .. }
            ))
        ),
        "got {refused:?}"
    );
    let ok = server.client_with(transport, |c| c.token = Some("s3cret".into()));
    ok.put(b"authorized").expect("put with token");
}

/// A simulation-style record, stored as an rkyv archive.
#[derive(Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Particles {
    /// Step number.
    pub step: u64,
    /// Positions.
    pub positions: Vec<[f32; 3]>,
    /// Label.
    pub label: String,
}

/// put_archived / get_archived / Proxy.
pub fn archived_values_and_proxies_round_trip(transport: &str) {
    let cluster = Cluster::start(2);
    let producer = cluster.servers[0].client(transport);
    let consumer = cluster.servers[1].client(transport);
    let value = Particles {
        step: 42,
        positions: (0..1000).map(|i| [i as f32, 0.5, -1.0]).collect(),
        label: "halo".into(),
    };
    let key = producer.put_archived(&value).expect("put archived");
    let view = consumer
        .get_archived::<Particles>(&key)
        .expect("archived view");
    assert_eq!(view.step, 42);
    assert_eq!(view.positions.len(), 1000);
    assert_eq!(view.positions[999][0], 999.0);
    assert_eq!(view.label.as_str(), "halo");
    // Wrong type: validation fails with a typed error instead of misreading.
    let text_key = producer.put(b"not an archive").expect("put");
    assert!(matches!(
        consumer.get_archived::<Particles>(&text_key),
        Err(GetError::Invalid { .. })
    ));
    // A proxy travels as its key and resolves on first access.
    let proxy = producer.proxy(&value).expect("proxy");
    let wire = serde_json::to_string(&proxy).expect("serialize proxy");
    assert_eq!(wire, format!("\"{}\"", proxy.key()));
    let received: dimstore::Proxy<Particles> = serde_json::from_str(&wire).expect("deserialize");
    assert!(!received.is_resolved());
    assert_eq!(received.resolve(&consumer).expect("resolve"), &value);
    assert!(received.is_resolved());
}

/// Every size class, including empty objects and sizes around the coalescing limit.
pub fn sizes_from_empty_to_megabytes_round_trip(transport: &str) {
    let server = TestServer::start(ServerOptions::default());
    let client = server.client(transport);
    for (i, size) in [
        0usize,
        1,
        7,
        63,
        64,
        65,
        4095,
        65_536,
        65_537,
        1 << 20,
        3 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(size, i as u64);
        let key = client.put(&data).expect("put");
        assert_eq!(
            &client.get(&key).expect("get")[..],
            &data[..],
            "size {size}"
        );
    }
}

/// Objects above the one-sided threshold move by the transport under test: the owner counts
/// them as one-sided bytes of that transport (and TCP ones as TCP bytes), leases end with
/// the read, and small objects still come inline.
pub fn large_gets_move_by_the_transport(transport: &str) {
    let cluster = Cluster::start(2);
    let (owner, reader) = (&cluster.servers[0], &cluster.servers[1]);
    let producer = owner.client(transport);
    let consumer = reader.client(transport);
    let big = pattern(3 << 20, 7);
    let small = pattern(100, 8);
    let (big_key, small_key) = (
        producer.put(&big).expect("put big"),
        producer.put(&small).expect("put small"),
    );
    assert_eq!(&consumer.get(&big_key).expect("get big")[..], &big[..]);
    assert_eq!(
        &consumer.get(&small_key).expect("get small")[..],
        &small[..]
    );
    let got = consumer
        .get_batch(&[small_key.clone(), big_key.clone(), small_key])
        .expect("batch");
    assert_eq!(got[0].as_deref().expect("small"), &small[..]);
    assert_eq!(got[1].as_deref().expect("big"), &big[..]);
    assert_eq!(got[2].as_deref().expect("small"), &small[..]);

    let stats = producer.stats().expect("stats");
    let name = crate::transport_name(transport);
    match dimstore::backends::find(name) {
        Some(_) => {
            let t =
                transport_row(&stats, name).unwrap_or_else(|| panic!("no {name} row in {stats:?}"));
            assert_eq!(
                t.one_sided_bytes,
                2 * big.len() as u64,
                "the big object was read one-sided twice, the small one never: {t:?}"
            );
            assert!(t.registrations >= 1, "its segment is registered: {t:?}");
            assert_eq!(
                t.connections, 2,
                "the producer's and the consumer's connections use {name}: {t:?}"
            );
        }
        None => {
            assert!(
                stats.transports.iter().all(|t| t.one_sided_bytes == 0),
                "{stats:?}"
            );
        }
    }
    // Releases are one-way notices on the consumer's connection: they land shortly.
    wait_stats_within(
        &producer,
        Duration::from_secs(5),
        "every lease ends with its read",
        |s| s.leases == 0,
    );
}
