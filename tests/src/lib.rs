//! Test harness: real `dimstore-server` processes on loopback, cleaned up on drop, and the
//! transport test suite ([`suite`]) that every transport runs unchanged.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dimstore::{ClientConfig, LocalMode, SpawnPolicy, Store, TransportChoice};
use dimstore_proto::ReadyFile;

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
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            memory_limit: "256MiB".into(),
            token: None,
            node: "n0".into(),
            extra: Vec::new(),
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
        let mut command = Command::new(binary("dimstore-server"));
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
            if let Ok(bytes) = std::fs::read(&ready_path) {
                if let Ok(ready) = serde_json::from_slice::<ReadyFile>(&bytes) {
                    return TestServer { child, ready, dir };
                }
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
}

impl TestServer {
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

/// A `kB` field of `/proc/<pid>/status` (0 when unreadable).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The transports the suite runs against: `tcp` (everything over TCP), `local` (a client's
/// own server over its Unix socket, with mapped gets), and the one-sided transports on each
/// provider this machine has: `ucx-tcp`, `ucx-shm` (UCX_TLS=posix,sysv,cma), `ofi-tcp`
/// (`tcp;ofi_rxm`), `ofi-shm`.
pub const SUITE_TRANSPORTS: [&str; 6] =
    ["tcp", "local", "ucx-tcp", "ucx-shm", "ofi-tcp", "ofi-shm"];

/// Sets the environment a suite transport needs, for this process and the servers it
/// starts (call first thing in a test: tests run one per process under nextest). One-sided
/// transports are required of the servers (`DIMSTORE_ONE_SIDED`), so a transport that fails
/// to start fails the test instead of silently falling back.
pub fn prepare(transport: &str) {
    let vars: &[(&str, &str)] = match transport {
        "tcp" | "local" => &[("DIMSTORE_ONE_SIDED", "none")],
        "ucx-tcp" => &[
            ("DIMSTORE_ONE_SIDED", "ucx"),
            ("UCX_TLS", "tcp"),
            ("UCX_NET_DEVICES", "lo"),
        ],
        "ucx-shm" => &[("DIMSTORE_ONE_SIDED", "ucx"), ("UCX_TLS", "posix,sysv,cma")],
        "ofi-tcp" => &[
            ("DIMSTORE_ONE_SIDED", "ofi"),
            ("DIMSTORE_OFI_PROVIDER", "tcp;ofi_rxm"),
            ("DIMSTORE_OFI_NODE", "127.0.0.1"),
        ],
        "ofi-shm" => &[
            ("DIMSTORE_ONE_SIDED", "ofi"),
            ("DIMSTORE_OFI_PROVIDER", "shm"),
        ],
        other => panic!("unknown suite transport {other} (expected one of {SUITE_TRANSPORTS:?})"),
    };
    for (name, value) in vars {
        std::env::set_var(name, value);
    }
}

/// The transport name a suite transport reports in stats (`ucx-tcp` → `ucx`).
pub fn transport_name(transport: &str) -> &str {
    transport.split('-').next().unwrap_or(transport)
}

/// Client configuration for tests: short timeout, never spawn, the given suite transport
/// (see [`SUITE_TRANSPORTS`]).
pub fn test_config(transport: &str) -> ClientConfig {
    let (local, choice) = match transport_name(transport) {
        "tcp" => (LocalMode::Off, TransportChoice::Tcp),
        "local" => (LocalMode::Map, TransportChoice::Auto),
        "ucx" => (LocalMode::Off, TransportChoice::Ucx),
        "ofi" => (LocalMode::Off, TransportChoice::Ofi),
        other => panic!("unknown suite transport {other}"),
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
