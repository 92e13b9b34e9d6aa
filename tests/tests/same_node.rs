//! Same-node zero-copy: mapped gets, leases, in-place puts, and the fallbacks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use dimstore::LocalMode;
use dimstore_tests::{binary, pattern, wait_stats, ServerOptions, TestServer};

fn server(memory: &str) -> TestServer {
    TestServer::start(ServerOptions {
        memory_limit: memory.into(),
        ..ServerOptions::default()
    })
}

#[test]
fn a_same_node_get_maps_the_object_instead_of_copying_it() {
    let server = server("256MiB");
    let local = server.client("local");
    assert!(local.maps_local_objects());
    let data = pattern(3 << 20, 1);
    let key = local.put(&data).expect("put");
    let object = local.get(&key).expect("get");
    assert!(object.is_mapped());
    assert_eq!(&object[..], &data[..]);
    let stats = local.stats().expect("stats");
    assert_eq!(stats.mapped_gets, 1);
    assert_eq!(stats.leases, 1, "the guard holds a lease");
    let served: u64 = stats.transports.iter().map(|t| t.bytes_served).sum();
    assert_eq!(served, 0, "no object bytes went through a socket");
    drop(object);
    wait_stats(&local, "lease released on drop", |s| s.leases == 0);
    // Small objects are copied inline: for them a copy is cheaper than a lease.
    let small = local.put(&[7u8; 100]).expect("put");
    let copied = local.get(&small).expect("get small");
    assert!(!copied.is_mapped());
    assert_eq!(&copied[..], &[7u8; 100][..]);
    assert_eq!(local.stats().expect("stats").leases, 0);
    // A batch of mapped objects holds its leases until its last object is dropped, then
    // releases them in one notice.
    let keys: Vec<_> = (0..4)
        .map(|i| local.put(&pattern(64 << 10, i)).expect("put"))
        .collect();
    let mut batch: Vec<_> = local
        .get_batch(&keys)
        .expect("batch")
        .into_iter()
        .map(|o| o.expect("found"))
        .collect();
    assert!(batch.iter().all(|o| o.is_mapped()));
    assert_eq!(local.stats().expect("stats").leases, 4);
    batch.truncate(1);
    assert_eq!(batch[0][..], pattern(64 << 10, 0)[..]);
    drop(batch);
    wait_stats(&local, "batch leases released together", |s| s.leases == 0);
    // A client on another node (by identity, same machine) copies over TCP.
    let remote = server.client("tcp");
    let copy = remote.get(&key).expect("remote get");
    assert!(!copy.is_mapped());
    assert_eq!(&copy[..], &data[..]);
}

#[test]
fn copy_mode_and_other_nodes_fall_back_to_the_socket_path() {
    let server = server("64MiB");
    let copy = server.client_with("local", |c| c.local = LocalMode::Copy);
    assert!(!copy.maps_local_objects());
    let key = copy.put(b"copied").expect("put");
    let object = copy.get(&key).expect("get");
    assert!(!object.is_mapped());
    assert_eq!(&object[..], b"copied");
    let stats = copy.stats().expect("stats");
    assert_eq!(stats.copied_local_gets, 1, "reported in stats");
    assert_eq!(stats.mapped_gets, 0);
    // Without mapping, create/seal still works (a local buffer, then a put).
    let mut reservation = copy.create(5).expect("create");
    assert!(!reservation.is_mapped());
    reservation.copy_from_slice(b"hello");
    let key = reservation.seal().expect("seal");
    assert_eq!(&copy.get(&key).expect("get")[..], b"hello");
}

#[test]
fn readers_keep_valid_bytes_while_an_evict_waits_for_their_leases() {
    let server = server("256MiB");
    let store = server.client("local");
    let data = pattern(8 << 20, 9);
    let key = store.put(&data).expect("put");
    let object_bytes = store.stats().expect("stats").bytes_used;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (store, key, data, tx) = (store.clone(), key.clone(), &data, tx.clone());
                s.spawn(move || {
                    let object = store.get(&key).expect("get before evict");
                    tx.send(()).expect("signal");
                    // Keep reading across the evict.
                    for _ in 0..20 {
                        assert!(object[..] == data[..], "bytes changed under a reader");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        for _ in 0..8 {
            rx.recv().expect("reader started");
        }
        assert!(store.evict(&key).expect("evict"), "evict accepted at once");
        assert!(!store.exists(&key).expect("exists"), "gone for new readers");
        let during = store.stats().expect("stats");
        assert_eq!(during.objects, 0);
        assert!(during.leases > 0, "leases outlive the evict");
        assert!(during.bytes_used >= object_bytes, "memory kept while read");
        for r in readers {
            r.join().expect("reader");
        }
    });
    wait_stats(&store, "memory freed after the last reader", |s| {
        s.leases == 0 && s.bytes_used == 0
    });
}

fn holder(server: &TestServer, what: &str, arg: &str) -> std::process::Child {
    let mut child = Command::new(binary("dimstore-test-holder"))
        .args([server.address(), &server.ready.node, what, arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn holder");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "holding");
    child
}

#[test]
fn a_client_killed_while_holding_a_lease_releases_it() {
    let server = server("64MiB");
    let store = server.client("local");
    let key = store.put(&pattern(1 << 20, 4)).expect("put");
    let mut child = holder(&server, "lease", &key.to_string());
    wait_stats(&store, "lease held by the child", |s| s.leases == 1);
    store.evict(&key).expect("evict");
    assert!(
        store.stats().expect("stats").bytes_used > 0,
        "pinned by the child"
    );
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    wait_stats(&store, "lease and memory released", |s| {
        s.leases == 0 && s.bytes_used == 0
    });
}

#[test]
fn abandoned_reservations_are_reclaimed_and_never_visible() {
    let server = server("64MiB");
    let store = server.client("local");
    // Dropped without sealing.
    let mut reservation = store.create(1 << 20).expect("create");
    assert!(reservation.is_mapped());
    reservation.fill(1);
    assert_eq!(
        store.stats().expect("stats").objects,
        0,
        "unsealed is invisible"
    );
    drop(reservation);
    wait_stats(&store, "dropped reservation reclaimed", |s| {
        s.reservations == 0 && s.bytes_used == 0
    });
    // Its process killed before sealing.
    let mut child = holder(&server, "create", &(4u64 << 20).to_string());
    wait_stats(&store, "child's reservation open", |s| s.reservations == 1);
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    wait_stats(&store, "killed client's reservation reclaimed", |s| {
        s.reservations == 0 && s.bytes_used == 0 && s.objects == 0
    });
}

#[test]
fn in_place_puts_write_straight_into_server_memory() {
    let server = server("64MiB");
    // Map objects of every size (by default small ones are copied inline).
    let store = server.client_with("local", |c| c.local_map_from = 0);
    let mut reservation = store.create(10_000).expect("create");
    assert!(reservation.is_mapped());
    reservation[..5].copy_from_slice(b"01234");
    let key = reservation.seal_len(5).expect("seal");
    assert_eq!(key.size, Some(5));
    let object = store.get(&key).expect("get");
    assert!(object.is_mapped());
    assert_eq!(&object[..], b"01234");
    // Typed: rkyv serializes straight into the reservation; read back as a mapped view.
    let value = dimstore_tests::suite::Particles {
        step: 7,
        positions: vec![[1.0, 2.0, 3.0]; 500],
        label: "in place".into(),
    };
    let key = store
        .put_archived_in_place(&value, 64 << 10)
        .expect("in place");
    let view = store
        .get_archived::<dimstore_tests::suite::Particles>(&key)
        .expect("archived view");
    assert_eq!(view.step, 7);
    assert_eq!(view.positions.len(), 500);
    assert_eq!(view.label.as_str(), "in place");
    // Too small a reservation is a typed error, and nothing leaks.
    assert!(store.put_archived_in_place(&value, 100).is_err());
    drop(view);
    drop(object);
    wait_stats(&store, "no reservation or lease left", |s| {
        s.reservations == 0 && s.leases == 0
    });
}

#[test]
fn a_one_gib_object_is_written_in_place_and_read_mapped() {
    let server = server("1100MiB");
    let store = server.client_with("local", |c| c.timeout = Duration::from_secs(120));
    let mut reservation = store.create(1 << 30).expect("create 1 GiB");
    for (i, word) in reservation.chunks_exact_mut(8).enumerate() {
        word.copy_from_slice(&(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    let key = reservation.seal().expect("seal");
    let object = store.get(&key).expect("get 1 GiB");
    assert!(object.is_mapped());
    assert_eq!(object.len(), 1 << 30);
    let mismatch = object
        .chunks_exact(8)
        .enumerate()
        .position(|(i, w)| w != (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    assert_eq!(mismatch, None, "1 GiB object differs");
}
