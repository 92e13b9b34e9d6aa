//! Memory pressure and object lifetimes against real server processes: eviction policies,
//! time to live, leases, consume-once gets and owner-scoped objects.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dimstore::{GetError, Key, PutOptions, Store};
use dimstore_tests::{
    binary, pattern, skip_or_fail, stdout, wait_stats, ServerOptions, TestServer,
};

const MIB: usize = 1 << 20;

/// A server of `limit` bytes of memory under eviction `policy`.
fn server(limit: &str, policy: &str) -> TestServer {
    TestServer::start(ServerOptions {
        memory_limit: limit.into(),
        extra: vec![
            "--segment-size".into(),
            limit.into(),
            "--eviction".into(),
            policy.into(),
        ],
        ..ServerOptions::default()
    })
}

/// A `dimstore` command against `server` with a clean `DIMSTORE_*` environment.
fn dimstore(server: &TestServer) -> Command {
    let mut cmd = Command::new(binary("dimstore"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DIMSTORE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DIMSTORE_RUNTIME_DIR", server.dir.path().join("client-run"))
        .env("DIMSTORE_SERVER", server.address())
        .env("DIMSTORE_TIMEOUT", "10s")
        .stdin(Stdio::null());
    cmd
}

fn is_evicted(result: Result<dimstore::ObjectBytes, GetError>) -> bool {
    matches!(result, Err(GetError::Evicted(_)))
}

#[test]
fn lru_evicts_the_least_recently_read_object_first() {
    let server = server("4MiB", "lru");
    let store = server.client("tcp");
    let objects: Vec<Vec<u8>> = (0..4).map(|i| pattern(MIB, i)).collect();
    let keys: Vec<Key> = objects
        .iter()
        .map(|o| store.put(o).expect("fits"))
        .collect();
    // Read order 2, 0, 3, 1: the least recently read is now 2, then 0.
    for i in [2, 0, 3, 1] {
        assert_eq!(&store.get(&keys[i]).expect("get")[..], &objects[i][..]);
    }
    let fifth = pattern(MIB, 4);
    let fifth_key = store.put(&fifth).expect("room made by eviction");
    assert!(
        is_evicted(store.get(&keys[2])),
        "object 2 was least recently read"
    );
    // Recency now, oldest first: 0, 3, 1 (reads), the fifth (its put): 0 goes next.
    store.put(&pattern(MIB, 5)).expect("room made by eviction");
    assert!(is_evicted(store.get(&keys[0])), "object 0 went next");
    for i in [3, 1] {
        assert_eq!(&store.get(&keys[i]).expect("kept")[..], &objects[i][..]);
    }
    assert_eq!(&store.get(&fifth_key).expect("kept")[..], &fifth[..]);
    // Evicted is not NotFound: an id never stored is still NotFound.
    let mut unknown = keys[0].clone();
    unknown.id = dimstore::ObjectId(keys[0].id.0 ^ 0xffff_ffff);
    assert!(matches!(store.get(&unknown), Err(GetError::NotFound(_))));
    let stats = store.stats().expect("stats");
    assert_eq!(stats.pressure.policy, "lru");
    assert_eq!(stats.pressure.policy_evictions, 2);
    assert!(stats.evictions >= 2, "{stats:?}");
    assert!(stats.bytes_used <= stats.memory_limit);
    let stat: serde_json::Value = serde_json::from_str(&stdout(
        &dimstore(&server)
            .args(["stat", "--json"])
            .output()
            .expect("run"),
    ))
    .expect("json");
    assert_eq!(stat["policy_evictions"], 2);
    assert!(
        stat["evictions"].as_u64().expect("evictions") >= 2,
        "{stat}"
    );
}

#[test]
fn without_a_policy_a_full_server_refuses_and_keeps_everything() {
    let server = server("4MiB", "none");
    let store = server.client("tcp");
    let keys: Vec<Key> = (0..4)
        .map(|i| store.put(&pattern(MIB, i)).expect("fits"))
        .collect();
    assert!(matches!(
        store.put(&pattern(MIB, 9)),
        Err(dimstore::PutError::StoreFull(_))
    ));
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            &store.get(key).expect("kept")[..],
            &pattern(MIB, i as u64)[..]
        );
    }
}

#[test]
fn leased_objects_survive_pressure_and_expire_unless_extended() {
    let server = server("4MiB", "fifo");
    let store = server.client("tcp");
    let pinned_bytes = pattern(MIB, 100);
    let lease = PutOptions {
        lease: Some(Duration::from_secs(3600)),
        ..PutOptions::default()
    };
    // The oldest object, so FIFO would take it first were it not pinned.
    let pinned = store.put_with(&pinned_bytes, &lease).expect("fits");
    let mut keys = Vec::new();
    for i in 0..12 {
        keys.push(store.put(&pattern(MIB, i)).expect("room made by eviction"));
    }
    assert_eq!(&store.get(&pinned).expect("pinned")[..], &pinned_bytes[..]);
    let stats = store.stats().expect("stats");
    assert!(stats.pressure.policy_evictions >= 9, "{stats:?}");
    assert!(
        is_evicted(store.get(&keys[0])),
        "FIFO dropped the oldest unpinned"
    );
    // Only pinned objects left: a put that needs them gone is refused, they stay.
    let mut filler = Vec::new();
    while let Ok(key) = store.put_with(&pattern(MIB, 7), &lease) {
        filler.push(key);
        assert!(filler.len() <= 4, "more pinned objects than memory");
    }
    assert_eq!(&store.get(&pinned).expect("pinned")[..], &pinned_bytes[..]);
    // A short lease, extended once, then left to run out.
    let short = PutOptions {
        lease: Some(Duration::from_millis(1500)),
        ..PutOptions::default()
    };
    for key in &filler {
        store.evict(key).expect("evict");
    }
    let leased = store.put_with(b"short lease", &short).expect("fits");
    assert!(store
        .extend(&leased, Duration::from_secs(3))
        .expect("extend"));
    assert!(!store
        .extend(&keys[0], Duration::from_secs(3))
        .expect("not leased"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.exists(&leased).expect("exists") {
        assert!(Instant::now() < deadline, "lease never ran out");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(is_evicted(store.get(&leased)));
    assert!(!store.extend(&leased, Duration::from_secs(3)).expect("gone"));
}

#[test]
fn ttl_expires_objects_put_through_the_cli() {
    let server = server("64MiB", "none");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    std::fs::write(&input, pattern(10_000, 3)).expect("write");
    let path = input.to_str().expect("utf8");
    let short = stdout(
        &dimstore(&server)
            .args(["put", path, "--ttl", "2s"])
            .output()
            .expect("run"),
    );
    let forever = stdout(&dimstore(&server).args(["put", path]).output().expect("run"));
    let store = server.client("tcp");
    let short_key: Key = short.parse().expect("key");
    let deadline = Instant::now() + Duration::from_secs(30);
    let error = loop {
        let out = dimstore(&server)
            .args(["get", &short, "-o", "/dev/null"])
            .output()
            .expect("run");
        if !out.status.success() {
            break String::from_utf8_lossy(&out.stderr).to_string();
        }
        assert!(
            Instant::now() < deadline,
            "a 2 s time to live never ran out"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(error.contains("evicted"), "{error}");
    assert!(is_evicted(store.get(&short_key)));
    let out = dimstore(&server)
        .args(["get", &forever, "-o", "-"])
        .output()
        .expect("run");
    assert_eq!(out.stdout, pattern(10_000, 3), "no time to live: kept");
    let stats = wait_stats(&store, "expiry counted", |s| s.pressure.expired == 1);
    assert_eq!(stats.objects, 1);
    // A time to live over the server's bound is refused with a typed error.
    let e = store
        .put_with(
            b"x",
            &PutOptions {
                ttl: Some(Duration::from_secs(365 * 24 * 3600)),
                ..PutOptions::default()
            },
        )
        .expect_err("over the bound");
    assert!(
        matches!(&e, dimstore::PutError::TooLarge(m) if m.contains("time to live")),
        "{e}"
    );
}

#[test]
fn consume_once_gets_go_to_exactly_one_of_two_racing_processes() {
    let server = server("64MiB", "none");
    let store = server.client("tcp");
    let rounds = 10;
    for round in 0..rounds {
        let data = pattern(200_000, round);
        let key = store.put(&data).expect("put").to_string();
        let racers: Vec<std::process::Child> = (0..2)
            .map(|_| {
                dimstore(&server)
                    .args(["get", &key, "--evict", "-o", "-"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn dimstore")
            })
            .collect();
        let outputs: Vec<Output> = racers
            .into_iter()
            .map(|c| c.wait_with_output().expect("wait"))
            .collect();
        let winners: Vec<&Output> = outputs.iter().filter(|o| o.status.success()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outputs:?}");
        assert_eq!(
            winners[0].stdout, data,
            "round {round}: the winner got the bytes"
        );
        let loser = outputs
            .iter()
            .find(|o| !o.status.success())
            .expect("a loser");
        let why = String::from_utf8_lossy(&loser.stderr);
        assert!(why.contains("evicted"), "round {round}: {why}");
    }
    let stats = store.stats().expect("stats");
    assert_eq!(stats.pressure.consumed, rounds);
    assert_eq!(stats.objects, 0);
    assert_eq!(stats.bytes_used, 0);
}

/// Environment variable naming the server an owner child process puts to.
const OWNER_SERVER: &str = "DIMSTORE_TEST_OWNER_SERVER";

/// Not a test of its own: the owner process of
/// [`owner_scoped_objects_are_freed_when_the_owner_process_is_killed`] (run only when
/// that test starts it). Puts three owned objects, prints their keys, then waits to be
/// killed (bounded).
#[test]
#[ignore = "child process of owner_scoped_objects_are_freed_when_the_owner_process_is_killed"]
fn owner_child() {
    let Ok(address) = std::env::var(OWNER_SERVER) else {
        return;
    };
    let store = Store::connect(&address, dimstore_tests::test_config("tcp")).expect("connect");
    let owned = PutOptions {
        owner: Some("job-7".into()),
        ..PutOptions::default()
    };
    for i in 0..3 {
        println!(
            "KEY {}",
            store.put_with(&pattern(MIB, i), &owned).expect("put")
        );
    }
    println!("READY");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn owner_scoped_objects_are_freed_when_the_owner_process_is_killed() {
    let server = server("64MiB", "none");
    let store = server.client("tcp");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "owner_child", "--ignored", "--nocapture"])
        .env(OWNER_SERVER, server.address())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn owner process");
    let mut keys: Vec<Key> = Vec::new();
    let lines = BufReader::new(child.stdout.take().expect("stdout"));
    for line in lines.lines() {
        let line = line.expect("line");
        if let Some(key) = line.strip_prefix("KEY ") {
            keys.push(key.parse().expect("key"));
        }
        if line == "READY" {
            break;
        }
    }
    assert_eq!(keys.len(), 3, "the owner process put its objects");
    let plain = store.put(b"not owned").expect("put");
    for key in &keys {
        assert!(
            store.exists(key).expect("exists"),
            "alive while the owner lives"
        );
    }
    assert!(store.stats().expect("stats").bytes_used >= 3 * MIB as u64);
    child.kill().expect("SIGKILL the owner");
    child.wait().expect("reap");
    let stats = wait_stats(&store, "owner's objects evicted", |s| {
        s.pressure.owner_evictions == 3
    });
    assert_eq!(stats.objects, 1);
    for key in &keys {
        assert!(is_evicted(store.get(key)), "evicted with its owner");
    }
    assert_eq!(&store.get(&plain).expect("kept")[..], b"not owned");
    // Released by tag from another connection.
    let owned = PutOptions {
        owner: Some("job-8".into()),
        ..PutOptions::default()
    };
    let a = store.put_with(b"a", &owned).expect("put");
    assert_eq!(store.release_owner("job-8").expect("release"), 1);
    assert!(is_evicted(store.get(&a)));
    assert_eq!(store.release_owner("job-8").expect("release"), 0);
}

/// A server of `limit` memory spilling to `dir` (with `extra` flags).
fn spilling_server(limit: &str, dir: &std::path::Path, extra: &[&str]) -> TestServer {
    let mut args: Vec<String> = vec![
        "--segment-size".into(),
        limit.into(),
        "--spill-dir".into(),
        dir.to_str().expect("utf-8").into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    TestServer::start(ServerOptions {
        memory_limit: limit.into(),
        extra: args,
        ..ServerOptions::default()
    })
}

/// Files in the spill directories under `root` (besides their lock files).
fn spill_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(root).expect("spill root") {
        let dir = dir.expect("entry").path();
        for file in std::fs::read_dir(&dir).expect("server dir") {
            let path = file.expect("entry").path();
            if path.file_name().is_some_and(|n| n != "lock") {
                files.push(path);
            }
        }
    }
    files
}

/// Bytes the file system holds for the spill files under `root` (allocated blocks: a
/// removed object's range is punched out of its log).
fn spill_disk_bytes(root: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    spill_files(root)
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

fn server_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root)
        .expect("spill root")
        .map(|e| e.expect("entry").path())
        .collect()
}

#[test]
fn three_times_the_memory_limit_spills_and_comes_back_byte_exact() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut server = spilling_server("32MiB", root.path(), &[]);
    let store = server.client("tcp");
    let count = 96;
    let keys: Vec<Key> = (0..count)
        .map(|i| store.put(&pattern(MIB, i)).expect("put spills the coldest"))
        .collect();
    let stats = store.stats().expect("stats");
    assert!(stats.bytes_used <= 32 * MIB as u64, "{stats:?}");
    assert!(stats.pressure.spilled_objects >= 60, "{stats:?}");
    assert!(stats.pressure.spilled_bytes >= 60 * MIB as u64, "{stats:?}");
    assert_eq!(stats.pressure.policy_evictions, 0);
    assert!(spill_disk_bytes(root.path()) >= 60 * MIB as u64);
    for (i, key) in keys.iter().enumerate() {
        let bytes = store.get(key).expect("restored");
        assert!(
            bytes[..] == pattern(MIB, i as u64)[..],
            "object {i} differs"
        );
    }
    let stats = store.stats().expect("stats");
    assert!(stats.pressure.restores >= 60, "{stats:?}");
    let rss_mib = server.rss_kib() / 1024;
    eprintln!(
        "server RSS after 3x overfill and reading everything back: {rss_mib} MiB (limit 32 MiB)"
    );
    assert!(
        rss_mib < 32 + 64,
        "RSS {rss_mib} MiB over the limit + 64 MiB"
    );
    let stat: serde_json::Value = serde_json::from_str(&stdout(
        &dimstore(&server)
            .args(["stat", "--json"])
            .output()
            .expect("run"),
    ))
    .expect("json");
    assert!(
        stat["spilled_bytes"].as_u64().expect("spilled_bytes") > 0,
        "{stat}"
    );
    assert!(
        stat["spill_write_mb_s"].as_f64().expect("write rate") > 0.0,
        "{stat}"
    );
    // The human-readable stat has a pressure line with the same numbers.
    let human = stdout(&dimstore(&server).arg("stat").output().expect("run"));
    let pressure = human
        .lines()
        .find(|l| l.trim_start().starts_with("pressure: eviction"))
        .unwrap_or_else(|| panic!("no pressure line in:\n{human}"));
    assert!(
        pressure.contains(&format!("{} restores", stat["restores"])),
        "{pressure} vs {stat}"
    );
    assert!(
        pressure.contains(&format!("spilled now {} bytes", stat["spilled_bytes"])),
        "{pressure} vs {stat}"
    );
    // Evicting removes the spill files.
    store.evict_batch(&keys).expect("evict");
    assert_eq!(spill_files(root.path()), Vec::<std::path::PathBuf>::new());
    assert_eq!(store.stats().expect("stats").pressure.spilled_bytes, 0);
    // Put more, spill again, then stop: the directory goes with the server.
    for i in 0..40 {
        store.put(&pattern(MIB, i)).expect("put");
    }
    assert!(!spill_files(root.path()).is_empty());
    server.signal(rustix::process::Signal::Term);
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "server did not stop"
    );
    assert_eq!(server_dirs(root.path()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_restarted_server_removes_the_spill_files_of_a_killed_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut first = spilling_server("16MiB", root.path(), &[]);
    let store = first.client("tcp");
    // Kill it while it spills: puts race the SIGKILL from another thread.
    let putter = std::thread::spawn(move || {
        for i in 0..64 {
            if store.put(&pattern(MIB, i)).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while spill_disk_bytes(root.path()) < 8 * MIB as u64 {
        assert!(Instant::now() < deadline, "nothing spilled");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill();
    putter.join().expect("putter");
    let stale = server_dirs(root.path());
    assert_eq!(stale.len(), 1);
    assert!(
        !spill_files(root.path()).is_empty(),
        "files left by the killed server"
    );
    let second = spilling_server("16MiB", root.path(), &[]);
    assert!(!stale[0].exists(), "stale directory removed at start");
    let dirs = server_dirs(root.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(second
        .log()
        .contains("removed spill directories of dead servers"));
    let store = second.client("tcp");
    let key = store.put(&pattern(MIB, 1)).expect("put");
    assert_eq!(&store.get(&key).expect("get")[..], &pattern(MIB, 1)[..]);
}

/// Mounts a tmpfs of `size` at a fresh directory; `None` (after a loud message) when this
/// machine does not let us, which fails the test under `CI=true`.
fn small_tmpfs(size: &str) -> Option<(tempfile::TempDir, TmpfsGuard)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let guard = TmpfsGuard(dir.path().to_path_buf());
            Some((dir, guard))
        }
        other => {
            let why = format!("cannot mount a tmpfs (needs root): {other:?}");
            skip_or_fail("a small tmpfs spill dir", &why);
            None
        }
    }
}

/// Unmounts on drop.
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_spill_disk_gives_typed_errors_and_loses_nothing() {
    let Some((mount, _guard)) = small_tmpfs("8M") else {
        return;
    };
    let root = mount.path().join("spill");
    let server = spilling_server("8MiB", &root, &[]);
    let store = server.client("tcp");
    let mut kept = Vec::new();
    let error = loop {
        let i = kept.len() as u64;
        match store.put(&pattern(MIB, i)) {
            Ok(key) => kept.push(key),
            Err(e) => break e,
        }
        assert!(
            kept.len() < 64,
            "8 MiB of memory and 8 MiB of disk held {} MiB",
            kept.len()
        );
    };
    assert!(matches!(error, dimstore::PutError::StoreFull(_)), "{error}");
    assert!(kept.len() >= 8, "memory alone holds 8: {}", kept.len());
    let stats = store.stats().expect("stats");
    assert!(stats.pressure.spill_failures >= 1, "{stats:?}");
    assert!(
        server.log().contains("cannot spill"),
        "a log line names the failure"
    );
    for (i, key) in kept.iter().enumerate() {
        match store.get(key) {
            Ok(bytes) => assert!(bytes[..] == pattern(MIB, i as u64)[..], "object {i}"),
            // Restoring needs memory, which only spilling (to the full disk) could free.
            Err(GetError::Request(e)) => {
                assert_eq!(e.status(), Some(dimstore_proto::Status::StoreFull), "{e}");
            }
            Err(e) => panic!("object {i}: {e}"),
        }
    }
    // Consuming the objects in memory makes room for the spilled ones: every object comes
    // back byte-exact, nothing was lost.
    let mut left: Vec<usize> = (0..kept.len()).collect();
    for _round in 0..=kept.len() {
        left.retain(|&i| match store.get_and_evict(&kept[i]) {
            Ok(bytes) => {
                assert!(bytes[..] == pattern(MIB, i as u64)[..], "object {i}");
                false
            }
            Err(GetError::Request(e)) if e.status() == Some(dimstore_proto::Status::StoreFull) => {
                true
            }
            Err(e) => panic!("object {i}: {e}"),
        });
        if left.is_empty() {
            break;
        }
    }
    assert_eq!(left, Vec::<usize>::new(), "objects that never came back");
    assert_eq!(store.stats().expect("stats").pressure.spilled_bytes, 0);
}

#[test]
fn consume_once_on_a_mapped_same_node_connection_keeps_the_view_valid() {
    let server = server("64MiB", "lru");
    let store = server.client("local");
    assert!(store.maps_local_objects(), "same-node mapping in use");
    let data = pattern(2 * MIB, 3);
    let key = store
        .put_with(
            &data,
            &PutOptions {
                ttl: Some(Duration::from_secs(3600)),
                ..PutOptions::default()
            },
        )
        .expect("put");
    let bytes = store.get_and_evict(&key).expect("consumed");
    assert!(is_evicted(store.get(&key)), "gone for everyone else");
    // The mapped view holds a lease: the memory stays until it is dropped.
    assert!(bytes[..] == data[..]);
    assert!(store.stats().expect("stats").bytes_used >= 2 * MIB as u64);
    drop(bytes);
    wait_stats(&store, "memory freed with the last lease", |s| {
        s.bytes_used == 0
    });
}
