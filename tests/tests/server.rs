//! The server process: signals, ready file, idle timeout, idle memory.

use std::time::Duration;

use dimstore_tests::{proc_stat_fields, ServerOptions, TestServer};
use rustix::process::Signal;

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_ready_file() {
    for signal in [Signal::Term, Signal::Int] {
        let mut server = TestServer::start(ServerOptions::default());
        let ready = server.dir.path().join("ready.json");
        assert!(ready.exists());
        server.client("tcp").put(b"data").expect("put");
        server.signal(signal);
        let status = server
            .wait_exit(Duration::from_secs(10))
            .expect("server exits after the signal");
        assert!(status.success(), "{signal:?}: {status}\n{}", server.log());
        assert!(!ready.exists(), "ready file removed");
        assert!(server.log().contains("stopping"), "{}", server.log());
    }
}

#[test]
fn idle_timeout_stops_an_empty_server_but_never_one_holding_objects() {
    let mut server = TestServer::start(ServerOptions {
        extra: vec!["--idle-timeout".into(), "300ms".into()],
        ..ServerOptions::default()
    });
    let key = {
        let client = server.client("tcp");
        client.put(b"keep me").expect("put")
    };
    // Client gone, but an object is stored: the server must stay.
    assert!(server.wait_exit(Duration::from_millis(1500)).is_none());
    {
        let client = server.client("tcp");
        assert_eq!(&client.get(&key).expect("still there")[..], b"keep me");
        client.evict(&key).expect("evict");
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("idle server exits");
    assert!(status.success());
    assert!(server.log().contains("Idle"), "{}", server.log());
}

#[test]
fn client_shutdown_request_stops_the_server() {
    let mut server = TestServer::start(ServerOptions::default());
    let client = server.client("tcp");
    client
        .shutdown_server(server.address())
        .expect("shutdown accepted");
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn idle_server_memory_is_small() {
    // Memory the server owns (heap, stacks, its shared segments), not its libraries' code
    // pages: linking UCX and libfabric maps more code, shared with every other process.
    // TCP only, then with the one-sided transports started (UCX context and worker,
    // libfabric endpoint with lean rxm buffers), whose pools are resident from the start.
    for (one_sided, limit_mib) in [("none", 16), ("auto", 32)] {
        let server = TestServer::start(ServerOptions {
            memory_limit: "8GiB".into(),
            extra: vec!["--one-sided".into(), one_sided.into()],
            ..ServerOptions::default()
        });
        let client = server.client("tcp");
        let key = client.put(&vec![1u8; 4 << 20]).expect("put");
        client.evict(&key).expect("evict");
        std::thread::sleep(Duration::from_millis(100));
        let owned = server.owned_memory_kib();
        assert!(
            owned > 0 && owned <= limit_mib * 1024,
            "idle server owns {owned} KiB with --one-sided {one_sided}"
        );
    }
}

#[test]
fn bad_configuration_is_reported_clearly() {
    let out = std::process::Command::new(dimstore_tests::binary("dimstore-server"))
        .args(["--memory-limit", "lots", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory-limit"), "{err}");
    let out = std::process::Command::new(dimstore_tests::binary("dimstore-server"))
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-an-address"));
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    proc_stat_fields(pid)
        .is_none_or(|fields| fields.first().is_some_and(|state| state.starts_with('Z')))
}

#[test]
fn exit_with_parent_stops_the_server_when_its_parent_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("server.log");
    // A parent shell starts the server in the background and waits; kill -9 orphans it.
    let script = format!(
        "'{}' --listen 127.0.0.1:0 --node orphan --exit-with-parent --ready-file '{}' \
         --runtime-dir '{}' --log info 2>'{}' & wait",
        dimstore_tests::binary("dimstore-server").display(),
        ready.display(),
        dir.path().join("run").display(),
        log.display()
    );
    let mut parent = std::process::Command::new("sh")
        .args(["-c", &script])
        .spawn()
        .expect("spawn parent");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(r) = dimstore_host::server_files::read_ready(&ready) {
            break r.pid;
        }
        assert!(std::time::Instant::now() < deadline, "server not ready");
        std::thread::sleep(Duration::from_millis(10));
    };
    parent.kill().expect("kill -9 the parent");
    parent.wait().expect("reap the parent");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !exited(pid) {
        if std::time::Instant::now() >= deadline {
            // Do not leave it behind when the assertion fails.
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, Signal::Kill);
            }
            panic!("the orphaned server kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("ParentExited"), "{text}");
}
