//! Test harness: real `dimstore-server` processes on loopback, cleaned up on drop, and the
//! transport test suite ([`suite`]) that every transport runs unchanged.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dimstore::{ClientConfig, LocalMode, SpawnPolicy, Store, TransportChoice};
use dimstore_proto::{
    decode_response, FrameHeader, FrameKind, Hello, ReadyFile, Request, Response, ServerStats,
    TransportStats,
};

pub mod suite;

/// Directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/debug/deps/<test> -> target/debug
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// Reads `count` replies (request id, response) off a raw connection that stays open.
pub fn read_replies(stream: &mut impl std::io::Read, count: usize) -> Vec<(u64, Response)> {
    let mut decoder = dimstore_proto::FrameDecoder::new(dimstore_proto::FrameLimits::default());
    let mut replies = Vec::new();
    let mut buf = [0u8; 4096];
    while replies.len() < count {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        decoder.push(&buf[..n]);
        while let Some(f) = decoder.next_frame().expect("valid") {
            replies.push((f.header.request_id, decode_reply(&f.body)));
        }
    }
    replies
}

/// A command's trimmed standard output, after asserting it succeeded (its stderr in the
/// failure message).
pub fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether this is a CI run: `CI` is set to anything but empty, `0` or `false` (CI services
/// set `CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// A test whose prerequisite (root, namespaces, Slurm, UCX, ...) is missing here: under CI
/// (see [`under_ci`]) this panics with `reason`, so a run that silently tested nothing cannot
/// pass; elsewhere it prints a loud SKIPPED line and returns, and the caller returns.
pub fn skip_or_fail(test: &str, reason: &str) {
    assert!(
        !under_ci(),
        "{test} cannot run: {reason} (CI must provide it: scripts/install-deps.sh, root)"
    );
    eprintln!("\n********** SKIPPED {test}: {reason} (this would fail under CI=true) **********\n");
}

/// A `dimstore` CLI command with a clean `DIMSTORE_*` environment, runtime directory
/// `runtime_dir`, a 10 s timeout and no standard input.
pub fn dimstore_cli(runtime_dir: &Path) -> Command {
    let mut cmd = Command::new(binary("dimstore"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DIMSTORE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DIMSTORE_RUNTIME_DIR", runtime_dir)
        .env("DIMSTORE_TIMEOUT", "10s")
        .stdin(Stdio::null());
    cmd
}

/// Kills these processes (SIGKILL) when dropped: servers a test spawned indirectly, however
/// the test ends.
#[derive(Debug, Default)]
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Kill);
            }
        }
    }
}

/// Options for a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `--memory-limit`.
    pub memory_limit: String,
    /// `--token`.
    pub token: Option<String>,
    /// `--node`.
    pub node: String,
    /// Extra arguments.
    pub extra: Vec<String>,
    /// Soft and hard `RLIMIT_NOFILE` the server starts with (`None`: this process's).
    pub descriptor_limit: Option<u64>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            memory_limit: "256MiB".into(),
            token: None,
            node: "n0".into(),
            extra: Vec::new(),
            descriptor_limit: None,
        }
    }
}

/// A running server process, killed on drop.
#[derive(Debug)]
pub struct TestServer {
    child: Child,
    /// Its ready file's contents.
    pub ready: ReadyFile,
    /// Its scratch directory (ready file, log).
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server and waits (bounded) for its ready file.
    pub fn start(options: ServerOptions) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let ready_path = dir.path().join("ready.json");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut command = match options.descriptor_limit {
            // The shell sets both limits, then becomes the server (same process id).
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(binary("dimstore-server"));
                shell
            }
            None => Command::new(binary("dimstore-server")),
        };
        if !options.extra.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--node", &options.node])
            .args(["--memory-limit", &options.memory_limit])
            .arg("--ready-file")
            .arg(&ready_path)
            .arg("--runtime-dir")
            .arg(dir.path().join("run"))
            .args(["--log", "debug"])
            .args(&options.extra)
            .env_remove("DIMSTORE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(token) = &options.token {
            command.args(["--token", token]);
        }
        let mut child = command.spawn().expect("spawn dimstore-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(ready) = dimstore_host::server_files::read_ready(&ready_path) {
                return TestServer { child, ready, dir };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "dimstore-server exited with {status}:\n{}",
                    std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "dimstore-server not ready in 20 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Control address.
    pub fn address(&self) -> &str {
        &self.ready.address
    }

    /// A client whose local server is this one.
    pub fn client(&self, transport: &str) -> Store {
        self.client_with(transport, |_| {})
    }

    /// A client whose local server is this one, with configuration tweaks.
    pub fn client_with(&self, transport: &str, tweak: impl FnOnce(&mut ClientConfig)) -> Store {
        let mut config = test_config(transport);
        if transport == "local" {
            // Same node as this server: by node identity, as in a real fleet.
            config.node = Some(self.ready.node.clone());
        }
        tweak(&mut config);
        Store::connect(self.address(), config).expect("connect to test server")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal.
    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits (bounded) for the process to exit and returns whether it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Resident memory of the server process in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Memory the server process owns, in KiB: private anonymous plus shared memory it
    /// created (`RssAnon + RssShmem`), without the page cache of its libraries' code.
    pub fn owned_memory_kib(&self) -> u64 {
        status_kib(self.child.id(), "RssAnon:") + status_kib(self.child.id(), "RssShmem:")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Resident set size of a process in KiB (from /proc).
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process in KiB (`VmHWM`, from /proc).
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status` (0 when unreadable).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces and
/// parentheses): `[0]` is the state (`Z` for a zombie), `[11]` and `[12]` are utime and stime.
/// `None` when the process is gone (or the file unreadable).
pub fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Pids of live processes (not zombies, not this one) whose command line contains every one
/// of `needles`.
pub fn processes_mentioning(needles: &[&str]) -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !needles.iter().all(|n| text.contains(n)) {
            continue;
        }
        let live = proc_stat_fields(pid)
            .is_some_and(|fields| fields.first().is_some_and(|state| !state.starts_with('Z')));
        if live {
            found.push(pid);
        }
    }
    found
}

/// Polls `store`'s server stats until `done` holds, for at most 10 s (then panics with
/// `what` and the last stats); returns the stats that satisfied it.
pub fn wait_stats(store: &Store, what: &str, done: impl Fn(&ServerStats) -> bool) -> ServerStats {
    wait_stats_within(store, Duration::from_secs(10), what, done)
}

/// [`wait_stats`] with another bound than 10 s.
pub fn wait_stats_within(
    store: &Store,
    within: Duration,
    what: &str,
    done: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    let deadline = Instant::now() + within;
    loop {
        let stats = store.stats().expect("stats");
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The counters of transport `name` (`tcp`, `ucx`, ...) in `stats`, if it has a row.
pub fn transport_row<'s>(stats: &'s ServerStats, name: &str) -> Option<&'s TransportStats> {
    stats.transports.iter().find(|t| t.name == name)
}

/// The row of transport `name` in the JSON of `dimstore stat --json`; panics (showing the
/// JSON) when there is none.
pub fn json_transport_row<'s>(stat: &'s serde_json::Value, name: &str) -> &'s serde_json::Value {
    stat["transports"]
        .as_array()
        .expect("transports")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} row: {stat}"))
}

/// Raw protocol, for tests that write frames by hand: the frame header (announcing
/// `payload_len` payload bytes, which the caller sends after) followed by `body`.
pub fn frame_head(kind: FrameKind, request_id: u64, body: &[u8], payload_len: u64) -> Vec<u8> {
    let mut head = Vec::new();
    FrameHeader::write_head(&mut head, kind, request_id, body, payload_len);
    head
}

/// Raw protocol: decodes a response body read off the wire (copied first into the 16-byte
/// aligned buffer [`decode_response`] needs); panics when it is not a valid response.
pub fn decode_reply(body: &[u8]) -> Response {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(body);
    decode_response(&aligned).expect("valid response")
}

/// Raw protocol: the `Hello` a hand-written client sends first, from client node `node`
/// (no token, no mapped gets, this process's pid).
pub fn raw_hello(node: &str) -> Request {
    Request::Hello(Hello {
        token: None,
        client_node: node.into(),
        client_pid: std::process::id(),
        map: false,
        map_from: 0,
    })
}

/// The transports the suite runs against: `tcp` (everything over TCP), `local` (a client's
/// own server over its Unix socket, with mapped gets), and every loopback variant of this
/// build's one-sided backends (`ucx-tcp`, `ucx-shm` (UCX_TLS=posix,sysv,cma), `ofi-tcp`
/// (`tcp;ofi_rxm`), `ofi-shm` by default; see `dimstore::backends`).
pub fn suite_transports() -> Vec<&'static str> {
    let one_sided = dimstore::backends::loopback_variants().map(|(_, v)| v.name);
    dimstore::backends::STREAM_TRANSPORTS
        .into_iter()
        .chain(one_sided)
        .collect()
}

/// Sets the environment a suite transport needs, for this process and the servers it
/// starts (call first thing in a test: tests run one per process under nextest). One-sided
/// transports are required of the servers (`DIMSTORE_ONE_SIDED`), so a transport that fails
/// to start fails the test instead of silently falling back.
pub fn prepare(transport: &str) {
    if dimstore::backends::STREAM_TRANSPORTS.contains(&transport) {
        std::env::set_var("DIMSTORE_ONE_SIDED", "none");
        return;
    }
    let Some((backend, variant)) =
        dimstore::backends::loopback_variants().find(|(_, v)| v.name == transport)
    else {
        panic!(
            "unknown suite transport {transport} (this build has {:?})",
            suite_transports()
        )
    };
    std::env::set_var("DIMSTORE_ONE_SIDED", backend.name());
    for (name, value) in variant.env {
        std::env::set_var(name, value);
    }
}

/// The transport name a suite transport reports in stats (`ucx-tcp` → `ucx`).
pub fn transport_name(transport: &str) -> &str {
    transport.split('-').next().unwrap_or(transport)
}

/// Client configuration for tests: short timeout, never spawn, the given suite transport
/// (see [`suite_transports`]).
pub fn test_config(transport: &str) -> ClientConfig {
    let (local, choice) = match transport_name(transport) {
        "tcp" => (LocalMode::Off, TransportChoice::Tcp),
        "local" => (LocalMode::Map, TransportChoice::Auto),
        one_sided => (
            LocalMode::Off,
            one_sided
                .parse()
                .unwrap_or_else(|e| panic!("suite transport {transport}: {e}")),
        ),
    };
    ClientConfig {
        timeout: Duration::from_secs(10),
        spawn: SpawnPolicy::Never,
        local,
        transport: choice,
        ..ClientConfig::default()
    }
}

/// Several servers, one per simulated node.
#[derive(Debug)]
pub struct Cluster {
    /// The servers, node `n<i>` at index i.
    pub servers: Vec<TestServer>,
}

impl Cluster {
    /// Starts `n` servers.
    pub fn start(n: usize) -> Cluster {
        Cluster {
            servers: (0..n)
                .map(|i| {
                    TestServer::start(ServerOptions {
                        node: format!("n{i}"),
                        ..ServerOptions::default()
                    })
                })
                .collect(),
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: &str = "DIMSTORE_SKIP_PROBE";

    /// Runs this very test in a child process, as the probe, with `CI` set to `ci` (or unset).
    fn probe(ci: Option<&str>) -> std::process::Output {
        let mut child = Command::new(std::env::current_exe().expect("test binary"));
        child
            .args([
                "--exact",
                "tests::a_missing_prerequisite_fails_under_ci_and_skips_elsewhere",
            ])
            .arg("--nocapture")
            .env(PROBE, "1")
            .env_remove("CI");
        if let Some(ci) = ci {
            child.env("CI", ci);
        }
        child.output().expect("run the probe")
    }

    #[test]
    fn a_missing_prerequisite_fails_under_ci_and_skips_elsewhere() {
        if std::env::var_os(PROBE).is_some() {
            skip_or_fail("probe", "a missing prerequisite");
            return;
        }
        for ci in ["true", "1"] {
            let out = probe(Some(ci));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "CI={ci}: the skip passed:\n{stderr}");
            assert!(
                stderr.contains("probe cannot run: a missing prerequisite"),
                "{stderr}"
            );
        }
        for ci in [None, Some("false"), Some("")] {
            let out = probe(ci);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "CI={ci:?}: {stderr}");
            assert!(
                stderr.contains("SKIPPED probe: a missing prerequisite"),
                "{stderr}"
            );
        }
    }
}
