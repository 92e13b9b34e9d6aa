//! The simulated cluster for tests: nodes as Linux namespaces (`scripts/netns-cluster.sh`),
//! with or without a real Slurm on them (`scripts/slurm-testbed.sh`).
//!
//! - One cluster per machine: every test that uses one holds an exclusive `flock` on
//!   [`LOCK_PATH`] from `up` to `down`, across test binaries and runners.
//! - Needs root, namespaces and the packages of `scripts/install-deps.sh`; without them the
//!   test prints a loud SKIPPED line and returns, except under `CI=true`, where it fails.
//! - Everything is bounded: commands run under a deadline in their own process group, which
//!   is killed when it is exceeded; the guard tears the cluster down and kills any process
//!   still carrying the test's scratch path, even when the test fails.

#![allow(dead_code)] // each test binary uses its own part

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use rustix::process::{kill_process_group, Pid, Signal};

/// The lock every user of the simulated cluster holds.
pub const LOCK_PATH: &str = "/tmp/dimstore-testbed.lock";

/// Longest any single command of these tests may take.
pub const BOUND: Duration = Duration::from_secs(60);

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A script of `scripts/`.
pub fn script(name: &str) -> PathBuf {
    repo().join("scripts").join(name)
}

/// Why the cluster cannot run here, if it cannot.
pub fn unavailable(tools: &[&str]) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root (network namespaces, Slurm daemons)".into());
    }
    for tool in tools.iter().chain(&["ip", "nsenter", "unshare", "setsid"]) {
        let found = std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!("{tool} is not installed (scripts/install-deps.sh)"));
        }
    }
    let namespaces = Command::new("unshare")
        .args([
            "--net", "--uts", "--ipc", "--mount", "--pid", "--fork", "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !namespaces.is_ok_and(|s| s.success()) {
        return Some("cannot create namespaces here (unshare failed)".into());
    }
    None
}

/// Whether `test` cannot run here: under CI that is a failure (it panics with the reason,
/// see [`dimstore_tests::skip_or_fail`]); elsewhere it prints a loud SKIPPED line and returns
/// true.
pub fn skip(test: &str, tools: &[&str]) -> bool {
    match unavailable(tools) {
        Some(reason) => {
            dimstore_tests::skip_or_fail(test, &reason);
            true
        }
        None => false,
    }
}

/// The SPANK plugin of this build, built first if it was not (`cargo build --bins` does not
/// build libraries).
pub fn spank_plugin() -> PathBuf {
    let dir = dimstore_tests::bin_dir();
    let path = dir.join("libdimstore_spank.so");
    if !path.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "dimstore-spank"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let out = bounded(&mut build, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "building the SPANK plugin failed: {out}"
        );
    }
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}\n--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed: {self}");
        &self.stdout
    }
}

/// Runs `command` to completion within `limit`, in its own process group (killed whole when
/// the limit passes).
pub fn bounded(command: &mut Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("stdout file"))
        .stderr(File::create(&err).expect("stderr file"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let group = Pid::from_child(&child);
            let _ = kill_process_group(group, Signal::Int);
            std::thread::sleep(Duration::from_secs(2));
            let _ = kill_process_group(group, Signal::Kill);
            let _ = child.wait();
            panic!(
                "{command:?} did not finish within {limit:?}; stderr so far:\n{}",
                read(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: read(&out),
        stderr: read(&err),
    }
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// Which cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Namespaces only (`netns-cluster.sh`).
    Nodes,
    /// Namespaces with Slurm (`slurm-testbed.sh`), the SPANK plugin loaded.
    Slurm,
}

/// A running cluster of simulated nodes, torn down on drop.
pub struct Testbed {
    kind: Kind,
    /// Scratch space visible from every node (the file system is shared).
    pub scratch: tempfile::TempDir,
    _lock: File,
}

impl Testbed {
    /// Takes the cluster lock (waiting for other tests) and brings up `nodes` nodes.
    pub fn up(kind: Kind, nodes: usize) -> Testbed {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_PATH)
            .expect("open the testbed lock");
        flock(&lock, FlockOperation::LockExclusive).expect("lock the testbed");
        let bed = Testbed {
            kind,
            scratch: tempfile::Builder::new()
                .prefix("dimstore-testbed-")
                .tempdir()
                .expect("scratch dir"),
            _lock: lock,
        };
        let n = nodes.to_string();
        let out = match kind {
            Kind::Nodes => bounded(
                Command::new(script("netns-cluster.sh")).args(["up", &n]),
                BOUND,
            ),
            Kind::Slurm => {
                let plugin = spank_plugin();
                bounded(
                    bed.slurm_env(&mut Command::new(script("slurm-testbed.sh")))
                        .args(["up", &n])
                        .env("DIMSTORE_SPANK_PLUGIN", plugin)
                        .env(
                            "DIMSTORE_SPANK_ARGS",
                            format!("runtime_dir={} ready_timeout=20", bed.spank_dir().display()),
                        ),
                    BOUND,
                )
            }
        };
        assert!(out.status.success(), "cluster did not come up: {out}");
        bed
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.scratch.path()
    }

    /// Where the SPANK plugin keeps its per-job directories in these tests.
    pub fn spank_dir(&self) -> PathBuf {
        self.path().join("spank")
    }

    fn slurm_run(&self) -> PathBuf {
        self.path().join("slurm")
    }

    fn slurm_env<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        command.env("DIMSTORE_SLURM_RUN", self.slurm_run())
    }

    /// A command run in the hub (the login node), where `srun`, `salloc`, `sbatch` and
    /// `mpirun` reach the nodes. No `DIMSTORE_*` settings leak in from the caller.
    pub fn hub<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut command = match self.kind {
            Kind::Slurm => {
                let mut c = Command::new(script("slurm-testbed.sh"));
                self.slurm_env(&mut c).arg("exec");
                c
            }
            Kind::Nodes => {
                let mut c = Command::new(script("netns-cluster.sh"));
                c.args(["exec", "hub"]);
                c
            }
        };
        command.args(argv).current_dir(self.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DIMSTORE_") && key != "DIMSTORE_SLURM_RUN" {
                command.env_remove(key);
            }
        }
        command
    }

    /// Runs `sh -c SCRIPT` in the hub, bounded; `$B` is the directory of this build's
    /// binaries and `$S` the scratch directory.
    pub fn sh(&self, script: &str) -> Output {
        let mut command = self.hub(&["sh", "-c", script]);
        command
            .env("B", dimstore_tests::bin_dir())
            .env("S", self.path())
            // Open MPI refuses root without these (CI runs as root); harmless otherwise.
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        bounded(&mut command, BOUND)
    }

    /// Pids of live processes whose command line mentions the scratch directory.
    pub fn leftovers(&self) -> Vec<u32> {
        dimstore_tests::processes_mentioning(&[&self.path().to_string_lossy()])
    }

    /// Waits (bounded) until no process mentions the scratch directory; returns those left.
    pub fn wait_no_leftovers(&self, within: Duration) -> Vec<u32> {
        let deadline = Instant::now() + within;
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let mut command = match self.kind {
            Kind::Nodes => {
                let mut c = Command::new(script("netns-cluster.sh"));
                c.arg("down");
                c
            }
            Kind::Slurm => {
                let mut c = Command::new(script("slurm-testbed.sh"));
                self.slurm_env(&mut c).arg("down");
                c
            }
        };
        let down = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !down.is_ok_and(|s| s.success()) {
            eprintln!("warning: tearing down the test cluster failed");
        }
        // Anything of this test that escaped the namespaces (a launcher, a step).
        for pid in self.leftovers() {
            if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, Signal::Kill);
            }
        }
    }
}

/// The JSON objects printed one per line.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
