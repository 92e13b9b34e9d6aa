//! The server process: signals, ready file, idle timeout, idle memory.

use std::time::Duration;

use dimstore_tests::{ServerOptions, TestServer};
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
    let server = TestServer::start(ServerOptions {
        memory_limit: "8GiB".into(),
        ..ServerOptions::default()
    });
    let client = server.client("tcp");
    let key = client.put(&vec![1u8; 4 << 20]).expect("put");
    client.evict(&key).expect("evict");
    std::thread::sleep(Duration::from_millis(100));
    let rss = server.rss_kib();
    assert!(rss > 0 && rss <= 16 * 1024, "idle RSS {rss} KiB");
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
