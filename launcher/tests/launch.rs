//! End-to-end tests of `dimstore-launch` with the real server binary.
//!
//! The server must be built next to the launcher first: `cargo build -p dimstore-server`
//! (`cargo test --workspace` builds it). Every launcher run is bounded in time, and a guard
//! kills whatever a test started (launchers and servers) even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dimstore::fleet::Fleet;
use dimstore_host::process;
use dimstore_host::server_files::read_ready;
use rustix::process::Signal;

/// Longest any launcher invocation may take.
const BOUND: Duration = Duration::from_secs(90);

fn launcher() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dimstore-launch"))
}

fn server_bin() -> PathBuf {
    let bin = launcher().with_file_name("dimstore-server");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p dimstore-server`",
        bin.display()
    );
    bin
}

/// A test's scratch space, and the processes it must not leave behind.
struct Scratch {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    pids: Vec<u32>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
            children: Vec::new(),
            pids: Vec::new(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where fresh run directories go (`DIMSTORE_RUNTIME_DIR`).
    fn runtime(&self) -> PathBuf {
        self.path().join("runtime")
    }

    /// `dimstore-launch ARGS`, in its own process group (never the terminal's foreground),
    /// with output to files in the scratch directory.
    fn command(&self, args: &[&str], name: &str) -> Command {
        let mut command = Command::new(launcher());
        command
            .args(args)
            .env("DIMSTORE_SERVER_BIN", server_bin())
            .env("DIMSTORE_RUNTIME_DIR", self.runtime())
            .env("LAUNCH", launcher())
            .env("OUT", self.path())
            .env_remove("DIMSTORE_FLEET")
            .stdin(Stdio::null())
            .stdout(file(&self.path().join(format!("{name}.out"))))
            .stderr(file(&self.path().join(format!("{name}.err"))));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command
    }

    /// Starts `dimstore-launch ARGS`; the guard kills it if the test ends first.
    fn spawn(&mut self, args: &[&str], name: &str) -> usize {
        let child = self.command(args, name).spawn().expect("spawn launcher");
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits (bounded) for a spawned launcher; returns its status, stdout and stderr.
    fn wait(&mut self, index: usize, name: &str) -> Outcome {
        let deadline = Instant::now() + BOUND;
        let child = &mut self.children[index];
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "dimstore-launch {name} hung");
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |ext: &str| {
            std::fs::read_to_string(self.path().join(format!("{name}.{ext}"))).unwrap_or_default()
        };
        Outcome {
            status,
            stdout: read("out"),
            stderr: read("err"),
        }
    }

    /// Runs `dimstore-launch ARGS` to completion (bounded).
    fn launch(&mut self, args: &[&str], name: &str) -> Outcome {
        let index = self.spawn(args, name);
        self.wait(index, name)
    }

    /// Remembers a fleet's servers so the guard can kill them.
    fn track(&mut self, fleet: &Fleet) -> Vec<u32> {
        let pids: Vec<u32> = fleet.nodes.iter().map(|n| n.pid).collect();
        self.pids.extend(&pids);
        pids
    }

    /// Servers whose ready files are somewhere under the scratch directory.
    fn ready_file_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut stack = vec![self.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.file_name().is_some_and(|n| n == "ready.json") {
                    pids.extend(read_ready(&path).map(|r| r.pid));
                }
            }
        }
        pids
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut pids = self.pids.clone();
        pids.extend(self.ready_file_pids());
        for pid in pids {
            if process::is_server(pid) {
                let _ = process::send(pid, Signal::Kill);
            }
        }
    }
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

fn file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).expect("output file")
}

fn read_fleet(path: &Path) -> Fleet {
    Fleet::read(path).unwrap_or_else(|e| panic!("fleet file {}: {e}", path.display()))
}

fn assert_all_gone(pids: &[u32]) {
    let running = process::wait_gone(pids, Duration::from_secs(2));
    assert!(running.is_empty(), "servers still running: {running:?}");
}

fn assert_empty_dir(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn run_gives_the_command_a_live_fleet_and_tears_it_down() {
    let mut s = Scratch::new();
    let script = r#"set -e
        "$LAUNCH" status --json > "$OUT/status.json"
        cp "$DIMSTORE_FLEET" "$OUT/fleet.json"
        printf %s "$DIMSTORE_TOKEN" > "$OUT/token""#;
    let out = s.launch(&["run", "--local", "3", "--", "sh", "-c", script], "run");
    let fleet = read_fleet(&s.path().join("fleet.json"));
    let pids = s.track(&fleet);
    assert_eq!(out.code(), Some(0), "{out}");

    let names: Vec<&str> = fleet.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node0", "node1", "node2"]);
    assert_eq!(fleet.launcher, "local");
    let token = std::fs::read_to_string(s.path().join("token")).expect("token");
    assert_eq!(fleet.token.as_deref(), Some(token.as_str()));
    assert_eq!(token.len(), 32);

    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path().join("status.json")).expect("status"))
            .expect("status JSON");
    assert_eq!(status["up"], 3, "{status}");
    assert_eq!(status["down"], 0, "{status}");
    for (i, node) in status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .enumerate()
    {
        assert_eq!(node["name"], format!("node{i}"));
        assert_eq!(node["up"], true);
        assert_eq!(node["stats"]["node"], format!("node{i}"));
        assert_eq!(node["stats"]["pid"], fleet.nodes[i].pid);
    }

    assert_all_gone(&pids);
    assert_empty_dir(&s.runtime());
    assert!(out.stderr.contains("3 of 3 servers ready"), "{out}");
}

#[test]
fn a_failing_command_propagates_its_exit_code_and_still_tears_down() {
    let mut s = Scratch::new();
    let run_dir = s.path().join("run");
    let script = r#"cp "$DIMSTORE_FLEET" "$OUT/fleet.json"; exit 7"#;
    let args = [
        "run",
        "--local",
        "2",
        "--keep",
        "--run-dir",
        run_dir.to_str().expect("utf-8"),
        "--",
        "sh",
        "-c",
        script,
    ];
    let out = s.launch(&args, "run");
    let fleet = read_fleet(&s.path().join("fleet.json"));
    let pids = s.track(&fleet);
    assert_eq!(out.code(), Some(7), "{out}");
    assert_all_gone(&pids);
    // --keep: the logs stay, the servers do not.
    for node in &fleet.nodes {
        let log = PathBuf::from(node.log.as_deref().expect("log path"));
        assert!(log.starts_with(&run_dir), "{}", log.display());
        let text = std::fs::read_to_string(&log).expect("log kept");
        assert!(text.contains("ready"), "{text}");
    }
    assert!(run_dir.join("fleet.json").is_file());
}

#[test]
fn up_status_down_leaves_nothing_running() {
    let mut s = Scratch::new();
    let fleet_file = s.path().join("fleet.json");
    let fleet_arg = fleet_file.to_str().expect("utf-8");
    let out = s.launch(&["up", "--local", "2", "--fleet-file", fleet_arg], "up");
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout.trim(), fleet_arg, "{out}");
    assert!(out.stderr.contains("export DIMSTORE_FLEET="), "{out}");
    let fleet = read_fleet(&fleet_file);
    let pids = s.track(&fleet);
    // The servers outlived the launcher.
    assert!(pids.iter().all(|&p| process::is_server(p)), "{pids:?}");

    let out = s.launch(&["status", "--fleet-file", fleet_arg], "status");
    assert_eq!(out.code(), Some(0), "{out}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].starts_with("node0 ") && lines[1].contains(" up "),
        "{out}"
    );
    assert!(
        lines[2].starts_with("node1 ") && lines[2].contains(" up "),
        "{out}"
    );

    let copy = s.path().join("copy.json");
    std::fs::copy(&fleet_file, &copy).expect("copy fleet file");
    let copy_arg = copy.to_str().expect("utf-8");

    let out = s.launch(&["down", "--fleet-file", fleet_arg], "down");
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(pids.iter().all(|&p| !process::is_running(p)), "{out}");
    assert!(!fleet_file.exists(), "fleet file left behind");
    assert_empty_dir(&s.runtime());

    // The stopped fleet shows as down, and stopping it again is fine.
    let out = s.launch(&["status", "--json", "--fleet-file", copy_arg], "status2");
    assert_eq!(out.code(), Some(1), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(status["down"], 2, "{out}");
    assert!(status["nodes"][0]["error"].as_str().is_some(), "{out}");
    let out = s.launch(&["down", "--fleet-file", copy_arg], "down2");
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("already stopped"), "{out}");
    let out = s.launch(&["down", "--fleet-file", copy_arg], "down3");
    assert_eq!(out.code(), Some(0), "{out}");
}

#[test]
fn memory_flags_reach_every_server() {
    let mut s = Scratch::new();
    let script =
        r#""$LAUNCH" status --json > "$OUT/status.json"; ls "$OUT/spill" > "$OUT/spill.txt""#;
    let spill = s.path().join("spill");
    let args = [
        "run",
        "--local",
        "2",
        "--memory-limit",
        "48MiB",
        "--eviction",
        "lfu",
        "--spill-dir",
        spill.to_str().expect("utf-8"),
        "--spill-limit",
        "1GiB",
        "--",
        "sh",
        "-c",
        script,
    ];
    let out = s.launch(&args, "run");
    assert_eq!(out.code(), Some(0), "{out}");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path().join("status.json")).expect("status"))
            .expect("status JSON");
    for node in status["nodes"].as_array().expect("nodes") {
        assert_eq!(node["stats"]["memory_limit"], 48 << 20, "{status}");
        assert_eq!(node["stats"]["eviction_policy"], "lfu", "{status}");
    }
    assert_eq!(status["up"], 2, "{status}");
    // Each server had its own spill directory while it ran, removed when it stopped.
    let listed = std::fs::read_to_string(s.path().join("spill.txt")).expect("listing");
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("server-")).count(),
        2,
        "{listed}"
    );
    assert_eq!(std::fs::read_dir(&spill).expect("spill dir").count(), 0);
}

#[test]
fn a_bad_server_flag_fails_naming_the_node_with_its_log() {
    let mut s = Scratch::new();
    let args = [
        "run",
        "--local",
        "3",
        "--memory-limit",
        "bogus",
        "--",
        "sh",
        "-c",
        r#"touch "$OUT/ran""#,
    ];
    let out = s.launch(&args, "run");
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(!s.path().join("ran").exists(), "the command ran: {out}");
    let named = (0..3).any(|i| out.stderr.contains(&format!("node{i}: server exited")));
    assert!(named, "{out}");
    // The server's own complaint, from its log.
    assert!(out.stderr.contains("invalid value 'bogus'"), "{out}");
    assert!(out.stderr.contains("servers failed to start"), "{out}");
    assert_eq!(s.ready_file_pids(), Vec::<u32>::new());
    assert_empty_dir(&s.runtime());
}

#[test]
fn a_missing_command_exits_127_and_tears_down() {
    let mut s = Scratch::new();
    let fleet_file = s.path().join("fleet.json");
    let args = [
        "run",
        "--local",
        "1",
        "--fleet-file",
        fleet_file.to_str().expect("utf-8"),
        "--",
        "/nonexistent/command",
    ];
    let out = s.launch(&args, "run");
    assert_eq!(out.code(), Some(127), "{out}");
    assert!(out.stderr.contains("/nonexistent/command"), "{out}");
    assert!(!fleet_file.exists());
    assert_empty_dir(&s.runtime());
}

#[test]
fn sigint_to_run_stops_the_command_and_the_fleet() {
    let mut s = Scratch::new();
    let fleet_file = s.path().join("fleet.json");
    let args = [
        "run",
        "--local",
        "2",
        "--fleet-file",
        fleet_file.to_str().expect("utf-8"),
        "--",
        "sleep",
        "60",
    ];
    let index = s.spawn(&args, "run");
    let deadline = Instant::now() + BOUND;
    while !fleet_file.exists() {
        if s.children[index].try_wait().expect("try_wait").is_some() {
            let out = s.wait(index, "run");
            panic!("launcher exited early: {out}");
        }
        assert!(Instant::now() < deadline, "fleet never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fleet = read_fleet(&fleet_file);
    let pids = s.track(&fleet);
    assert!(pids.iter().all(|&p| process::is_server(p)));

    let started = Instant::now();
    process::send(s.children[index].id(), Signal::Int).expect("SIGINT");
    let out = s.wait(index, "run");
    assert!(started.elapsed() < Duration::from_secs(15), "slow teardown");
    // `sleep` died of the forwarded SIGINT: 128 + 2.
    assert_eq!(out.code(), Some(130), "{out}");
    assert!(out.stderr.contains("received SIGINT"), "{out}");
    assert_all_gone(&pids);
    assert!(!fleet_file.exists(), "fleet file left behind");
    assert_empty_dir(&s.runtime());
}

#[test]
fn a_signal_while_starting_stops_the_servers_at_once() {
    let mut s = Scratch::new();
    // A "server" that never gets ready and tells where it runs.
    let fake = s.path().join("fake-server");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"$$\" > \"$OUT/fake.$2.pid\"\nexec sleep 60\n",
    )
    .expect("script");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let args = [
        "run",
        "--local",
        "2",
        "--server-bin",
        fake.to_str().expect("utf-8"),
        "--",
        "sh",
        "-c",
        r#"touch "$OUT/ran""#,
    ];
    let index = s.spawn(&args, "run");
    let pid_files = [
        s.path().join("fake.node0.pid"),
        s.path().join("fake.node1.pid"),
    ];
    let deadline = Instant::now() + BOUND;
    let pids: Vec<u32> = loop {
        let pids: Vec<u32> = pid_files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
            .collect();
        if pids.len() == 2 {
            break pids;
        }
        assert!(Instant::now() < deadline, "fake servers never started");
        std::thread::sleep(Duration::from_millis(20));
    };

    process::send(s.children[index].id(), Signal::Term).expect("SIGTERM");
    let out = s.wait(index, "run");
    assert_eq!(out.code(), Some(128 + 15), "{out}");
    assert!(
        out.stderr
            .contains("interrupted by SIGTERM while starting the fleet"),
        "{out}"
    );
    assert!(!s.path().join("ran").exists(), "the command ran: {out}");
    assert_all_gone(&pids);
    assert_empty_dir(&s.runtime());
}

/// `GET /metrics` on `target`: status code and body.
fn scrape(target: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(target).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let code = answer[9..12].parse().expect("status code");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.to_string())
}

#[test]
fn up_with_metrics_writes_scrape_targets_and_status_shows_the_worst_node() {
    let mut s = Scratch::new();
    let run_dir = s.path().join("run");
    let fleet_file = s.path().join("fleet.json");
    let args = [
        "up",
        "--local",
        "2",
        "--metrics",
        "--run-dir",
        run_dir.to_str().expect("utf-8"),
        "--fleet-file",
        fleet_file.to_str().expect("utf-8"),
    ];
    let out = s.launch(&args, "up");
    assert_eq!(out.code(), Some(0), "{out}");
    let fleet = read_fleet(&fleet_file);
    let pids = s.track(&fleet);

    let targets: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run_dir.join("prometheus-targets.json")).expect("targets file"),
    )
    .expect("targets JSON");
    let groups = targets.as_array().expect("file_sd groups");
    assert_eq!(groups.len(), 2, "{targets}");
    for (group, node) in groups.iter().zip(&fleet.nodes) {
        assert_eq!(group["labels"]["dimstore_node"], node.name.as_str());
        let target = group["targets"][0].as_str().expect("target");
        assert!(target.starts_with("127.0.0.1:"), "{target}");
        let (code, body) = scrape(target);
        assert_eq!(code, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    // Load on node1 only: it is the worst (the only) node for put.
    let store = dimstore::Store::connect(
        &fleet.nodes[1].address,
        dimstore::ClientConfig {
            token: fleet.token.clone(),
            spawn: dimstore::SpawnPolicy::Never,
            local: dimstore::LocalMode::Off,
            ..dimstore::ClientConfig::default()
        },
    )
    .expect("connect to node1");
    for i in 0..20u8 {
        store.put(&[i; 100]).expect("put");
    }
    let fleet_arg = fleet_file.to_str().expect("utf-8");
    let out = s.launch(&["status", "--fleet-file", fleet_arg], "status");
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("WORST NODE"), "{out}");
    let put = out
        .stdout
        .lines()
        .find(|l| l.starts_with("put "))
        .unwrap_or_else(|| panic!("no put row: {out}"));
    let cells: Vec<&str> = put.split_whitespace().collect();
    assert_eq!(&cells[..3], ["put", "node1", "20"], "{out}");
    let (_, body) = scrape(groups[1]["targets"][0].as_str().expect("target"));
    assert!(
        body.contains("dimstore_requests_total{op=\"put\",transport=\"tcp\"} 20"),
        "{body}"
    );

    let out = s.launch(&["down", "--fleet-file", fleet_arg], "down");
    assert_eq!(out.code(), Some(0), "{out}");
    assert_all_gone(&pids);
}
