//! The `dimstore` command line, and elastic spawn by racing processes.

use std::process::{Command, Stdio};
use std::time::Duration;

use dimstore::fleet::{Fleet, FleetNode, FLEET_FORMAT};
use dimstore_proto::ReadyFile;
use dimstore_tests::{
    binary, dimstore_cli as dimstore, pattern, processes_mentioning, stdout, KillOnDrop,
    ServerOptions, TestServer,
};

#[test]
fn put_get_exists_evict_stat_through_the_cli() {
    let server = TestServer::start(ServerOptions::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    let data = pattern(300_000, 8);
    std::fs::write(&input, &data).expect("write");
    let run = |args: &[&str]| {
        dimstore(dir.path())
            .env("DIMSTORE_SERVER", server.address())
            .args(args)
            .output()
            .expect("run dimstore")
    };
    let key = stdout(&run(&["put", input.to_str().expect("utf8")]));
    assert!(key.starts_with("dim://"), "{key}");
    let output = dir.path().join("out.bin");
    stdout(&run(&["get", &key, "-o", output.to_str().expect("utf8")]));
    assert_eq!(std::fs::read(&output).expect("read"), data);
    assert_eq!(stdout(&run(&["exists", &key])), "true");
    let stat: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["stat", "--json"]))).expect("json");
    assert_eq!(stat["pid"], server.pid());
    assert_eq!(stat["objects"], 1);
    assert_eq!(stdout(&run(&["evict", &key])), "evicted");
    let missing = run(&["exists", &key]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&missing.stdout).trim(), "false");
    let failed = run(&["get", &key, "-o", output.to_str().expect("utf8")]);
    assert_eq!(failed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no object"));
    let bad = run(&["get", "dim://nonsense"]);
    assert!(!bad.status.success());
}

#[test]
fn node_flag_selects_the_fleet_node() {
    let servers: Vec<_> = (0..2)
        .map(|i| {
            TestServer::start(ServerOptions {
                node: format!("node{i}"),
                token: Some("tok".into()),
                ..ServerOptions::default()
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet_path = dir.path().join("fleet.json");
    Fleet {
        format: FLEET_FORMAT,
        token: Some("tok".into()),
        launcher: "local".into(),
        nodes: servers
            .iter()
            .enumerate()
            .map(|(i, s)| FleetNode {
                name: format!("node{i}"),
                address: s.address().into(),
                pid: s.pid(),
                log: None,
            })
            .collect(),
    }
    .write(&fleet_path)
    .expect("fleet");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"on node one").expect("write");
    let key = stdout(
        &dimstore(dir.path())
            .env("DIMSTORE_FLEET", &fleet_path)
            .args(["--node", "1", "put", input.to_str().expect("utf8")])
            .output()
            .expect("run"),
    );
    assert!(key.contains(servers[1].address()), "{key} not on node 1");
    // DIMSTORE_NODE does the same, and node 0 reads node 1's object.
    let got = stdout(
        &dimstore(dir.path())
            .env("DIMSTORE_FLEET", &fleet_path)
            .env("DIMSTORE_NODE", "0")
            .args(["get", &key])
            .output()
            .expect("run"),
    );
    assert_eq!(got, "on node one");
    let all = stdout(
        &dimstore(dir.path())
            .env("DIMSTORE_FLEET", &fleet_path)
            .args(["stat", "--json", "--all"])
            .output()
            .expect("run"),
    );
    let pids: Vec<u64> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["pid"]
                .as_u64()
                .expect("pid")
        })
        .collect();
    assert_eq!(
        pids,
        servers
            .iter()
            .map(|s| u64::from(s.pid()))
            .collect::<Vec<_>>()
    );
}

/// Live (non-zombie) `dimstore-server` processes whose command line mentions `needle`.
fn live_servers_mentioning(needle: &str) -> Vec<u32> {
    processes_mentioning(&["dimstore-server", needle])
}

#[test]
fn thirty_two_racing_processes_spawn_exactly_one_server_that_outlives_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = dir.path().join("runtime");
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"raced").expect("write");
    let spawn_env = |cmd: &mut Command| {
        cmd.env("DIMSTORE_NODE", "racer")
            .env("DIMSTORE_LISTEN", "127.0.0.1:0")
            .env("DIMSTORE_MEMORY_LIMIT", "64MiB")
            .env("DIMSTORE_SERVER_BIN", binary("dimstore-server"));
    };
    let children: Vec<_> = (0..32)
        .map(|_| {
            let mut cmd = dimstore(&runtime);
            spawn_env(&mut cmd);
            cmd.args(["put", input.to_str().expect("utf8")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dimstore put")
        })
        .collect();
    let guard_needle = runtime.to_string_lossy().to_string();
    let _guard = KillOnDrop(Vec::new());
    let keys: Vec<String> = children
        .into_iter()
        .map(|c| stdout(&c.wait_with_output().expect("wait")))
        .collect();
    let servers = live_servers_mentioning(&guard_needle);
    let _guard = KillOnDrop(servers.clone());
    assert_eq!(
        servers.len(),
        1,
        "exactly one server for the node: {servers:?}"
    );
    let owners: std::collections::HashSet<_> = keys
        .iter()
        .map(|k| k.parse::<dimstore::Key>().expect("key").owner)
        .collect();
    assert_eq!(owners.len(), 1, "every process used the same server");
    let ready: ReadyFile = serde_json::from_slice(
        &std::fs::read(runtime.join("racer").join("server.json")).expect("ready file"),
    )
    .expect("json");
    assert_eq!(ready.pid, servers[0]);
    // All 32 spawning processes have exited; the server still serves their objects.
    let mut cmd = dimstore(&runtime);
    spawn_env(&mut cmd);
    let stat: serde_json::Value = serde_json::from_str(&stdout(
        &cmd.args(["stat", "--json"]).output().expect("stat"),
    ))
    .expect("json");
    assert_eq!(stat["objects"], 32);
    assert_eq!(stat["pid"], servers[0]);
    // Stop it the polite way and check it is gone.
    let mut cmd = dimstore(&runtime);
    spawn_env(&mut cmd);
    stdout(&cmd.arg("shutdown").output().expect("shutdown"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !live_servers_mentioning(&guard_needle).is_empty() {
        assert!(std::time::Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_server_and_spawning_disabled_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A runtime directory the client creates itself (0700): tempdir() gives 0755.
    let out = dimstore(&dir.path().join("run"))
        .env("DIMSTORE_SPAWN", "never")
        .args(["stat"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spawning is disabled"), "{err}");
}

/// The one-sided CLI surface: `DIMSTORE_TRANSPORT=ucx|ofi dimstore get KEY -o FILE` moves the
/// object by that transport (the owner's `stat --json` counts it per transport), and a
/// transport the owner does not offer is a clear error, not a silent fallback.
#[cfg(all(feature = "ucx", feature = "ofi"))]
#[test]
fn cli_gets_by_a_forced_one_sided_transport_and_stat_counts_it() {
    use dimstore_tests::json_transport_row;
    let options = |node: &str| ServerOptions {
        node: node.into(),
        extra: vec!["--one-sided".into(), "ucx,ofi".into()],
        ..ServerOptions::default()
    };
    let (owner, reader) = (
        TestServer::start(options("n0")),
        TestServer::start(options("n1")),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    let data = pattern(5 << 20, 11);
    std::fs::write(&input, &data).expect("write");
    let run = |server: &TestServer, env: &[(&str, &str)], args: &[&str]| {
        dimstore(dir.path())
            .env("DIMSTORE_SERVER", server.address())
            .env("UCX_TLS", "tcp")
            .env("UCX_NET_DEVICES", "lo")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run dimstore")
    };
    let key = stdout(&run(&owner, &[], &["put", input.to_str().expect("utf8")]));
    for transport in ["ucx", "ofi"] {
        let output = dir.path().join(format!("out-{transport}.bin"));
        stdout(&run(
            &reader,
            &[("DIMSTORE_TRANSPORT", transport)],
            &["get", &key, "-o", output.to_str().expect("utf8")],
        ));
        assert_eq!(std::fs::read(&output).expect("read"), data, "{transport}");
    }
    let stat: serde_json::Value =
        serde_json::from_str(&stdout(&run(&owner, &[], &["stat", "--json"]))).expect("json");
    for transport in ["ucx", "ofi"] {
        let row = json_transport_row(&stat, transport);
        assert_eq!(row["one_sided_bytes"], data.len(), "{transport}: {stat}");
        assert!(row["registrations"].as_u64() >= Some(1), "{stat}");
    }

    let tcp_only = TestServer::start(ServerOptions {
        node: "n2".into(),
        extra: vec!["--one-sided".into(), "none".into()],
        ..ServerOptions::default()
    });
    let refused = run(&tcp_only, &[("DIMSTORE_TRANSPORT", "ucx")], &["stat"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("transport ucx unavailable") && err.contains("does not offer"),
        "{err}"
    );
}
