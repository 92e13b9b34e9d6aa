//! hwloc placement of a real server: `--cpu-bind` pins every thread, stats report it, and
//! impossible requests fail at start.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dimstore_tests::{binary, ServerOptions, TestServer};

/// `Cpus_allowed_list` of every thread of `pid`.
fn thread_affinities(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .collect()
}

/// The first CPU this test may run on (0 on an unrestricted machine).
fn first_allowed_cpu() -> String {
    let own = thread_affinities(std::process::id());
    let list = own.first().expect("own affinity");
    list.split([',', '-']).next().expect("a cpu").to_string()
}

#[test]
fn cpu_bind_list_pins_every_thread_and_stats_report_it() {
    let cpu = first_allowed_cpu();
    let server = TestServer::start(ServerOptions {
        extra: vec![
            "--cpu-bind".into(),
            cpu.clone(),
            "--threads".into(),
            "2".into(),
        ],
        ..ServerOptions::default()
    });
    let client = server.client("tcp");
    client.put(b"pinned").expect("put");
    let affinities = thread_affinities(server.pid());
    assert!(affinities.len() >= 3, "main + 2 workers: {affinities:?}");
    assert!(affinities.iter().all(|a| *a == cpu), "{affinities:?}");
    let stats = client.stats_of(server.address()).expect("stats");
    assert!(
        stats.binding.starts_with(&format!("cpus {cpu} (")),
        "{}",
        stats.binding
    );
}

#[test]
fn auto_on_loopback_binds_nothing_and_says_why() {
    let server = TestServer::start(ServerOptions {
        extra: vec!["--cpu-bind".into(), "auto".into()],
        ..ServerOptions::default()
    });
    let stats = server
        .client("tcp")
        .stats_of(server.address())
        .expect("stats");
    assert!(stats.binding.starts_with("none: "), "{}", stats.binding);
    assert!(stats.binding.contains("loopback"), "{}", stats.binding);
    let own = thread_affinities(std::process::id());
    assert!(
        thread_affinities(server.pid())
            .iter()
            .all(|a| Some(a) == own.first()),
        "unbound server threads keep the launcher's affinity"
    );
}

#[test]
fn impossible_requests_fail_at_start_with_the_reason() {
    for (args, expected) in [
        (&["--cpu-bind", "65000"][..], "cannot use"),
        (&["--numa", "4000"][..], "no NUMA node 4000"),
        (&["--cpu-bind", "3-1"][..], "runs backwards"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(binary("dimstore-server"))
            .args(["--listen", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .env("DIMSTORE_RUNTIME_DIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{args:?}: server still running after 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "{args:?} must fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
