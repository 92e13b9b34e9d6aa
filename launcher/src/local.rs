//! Starting and stopping a fleet of servers on this machine.
//!
//! [`LocalFleet::start`] runs one `dimstore-server` per simulated node (`node0`, `node1`,
//! ...), each on `127.0.0.1:0` with its own ready file and log in the run directory, and
//! waits until every ready file appears. A server that exits or is not ready in time fails the
//! start (unless partial fleets are allowed): the error names the node and carries its log
//! tail, and the servers already started are stopped.
//!
//! Servers run in their own process group, so a Ctrl-C at the terminal reaches the command the
//! launcher runs, not the servers: the launcher stops them after the command is done. A
//! [`LocalFleet`] stops its servers when dropped, unless [`LocalFleet::detach`]ed.

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dimstore::fleet::{Fleet, FleetNode, FLEET_FORMAT};
use dimstore_host::process;
use dimstore_host::server_files::{log_tail, read_ready};
use dimstore_proto::ReadyFile;
use rustix::process::Signal;

use crate::progress::StartProgress;
use crate::rundir::{RunDir, RunDirError};

/// Lines of a failed server's log shown in errors.
pub const LOG_TAIL_LINES: usize = 15;

/// How long servers get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What to start.
#[derive(Debug, Clone)]
pub struct LocalSpec {
    /// Number of servers (simulated nodes).
    pub count: usize,
    /// What each server gets.
    pub server: ServerSpec,
    /// Servers exit when the launcher does, even if it is killed (`run`); `up` detaches.
    pub exit_with_launcher: bool,
}

/// What every node's server gets, however the fleet is started (local or remote).
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The `dimstore-server` binary (as the nodes can run it).
    pub server_bin: PathBuf,
    /// Passed as `--memory-limit` to each server (validated by the server).
    pub memory_limit: Option<String>,
    /// Further arguments for each server.
    pub server_args: Vec<String>,
    /// The fleet token, handed to each server in `DIMSTORE_TOKEN` (not on the command line,
    /// where other users of the machine could read it).
    pub token: String,
    /// How long to wait for all servers to be ready.
    pub ready_timeout: Duration,
    /// Keep going with the servers that did start when some fail.
    pub allow_partial: bool,
}

/// Why a node's server did not come up.
#[derive(Debug, Clone)]
pub enum FailReason {
    /// It exited before writing its ready file.
    Exited(ExitStatus),
    /// Its ready file did not appear in time.
    Timeout(Duration),
    /// On another node: what is known (the exit it reported, the launcher step's end).
    Other(String),
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Exited(status) => write!(f, "server exited ({status}) before it was ready"),
            FailReason::Timeout(t) => write!(
                f,
                "server not ready after {}",
                humantime::format_duration(*t)
            ),
            FailReason::Other(text) => f.write_str(text),
        }
    }
}

/// A node whose server did not come up.
#[derive(Debug)]
pub struct NodeFailure {
    /// Node name.
    pub node: String,
    /// What happened.
    pub reason: FailReason,
    /// The server's log file.
    pub log: PathBuf,
    /// Its last lines.
    pub tail: String,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}; last lines of {}:",
            self.node,
            self.reason,
            self.log.display()
        )?;
        if self.tail.trim().is_empty() {
            return write!(f, "\n    (empty)");
        }
        for line in self.tail.lines() {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

/// Why a local fleet could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Nothing to start.
    #[error("a fleet needs at least one server")]
    Empty,
    /// The run directory could not be set up.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The server binary could not be run at all.
    #[error(
        "cannot run {} for {node} (set DIMSTORE_SERVER_BIN, or install \
         dimstore-server next to dimstore-launch or on PATH)", bin.display()
    )]
    Spawn {
        /// Node being started.
        node: String,
        /// The binary.
        bin: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The parallel launcher (srun, mpiexec, mpirun) could not be run.
    #[error("cannot run the launcher `{program}` (see --launcher-cmd)")]
    Launcher {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Servers failed to come up.
    #[error("{} of {total} servers failed to start:\n{}", failures.len(), list(failures))]
    Failed {
        /// How many were started.
        total: usize,
        /// Each failed node.
        failures: Vec<NodeFailure>,
    },
    /// The launcher was signalled while waiting.
    #[error("interrupted by {} while starting the fleet", crate::interrupt::name(*.0))]
    Interrupted(i32),
}

fn list(failures: &[NodeFailure]) -> String {
    let items: Vec<String> = failures.iter().map(ToString::to_string).collect();
    items.join("\n")
}

/// One node's server.
#[derive(Debug)]
struct Server {
    name: String,
    child: Child,
    log: PathBuf,
    ready_file: PathBuf,
    ready: Option<ReadyFile>,
    /// Exited (and reaped), or failed and killed.
    done: bool,
}

/// Servers running on this machine.
#[derive(Debug)]
pub struct LocalFleet {
    servers: Vec<Server>,
    token: String,
    /// Stop the servers on drop.
    armed: bool,
}

impl LocalFleet {
    /// Starts `spec.count` servers with their files in `run_dir`, and waits until they are
    /// ready. `interrupted` is polled while waiting; a signal number from it aborts the start.
    ///
    /// # Errors
    /// See [`StartError`]. Servers already started are stopped before it is returned.
    pub fn start(
        spec: &LocalSpec,
        run_dir: &mut RunDir,
        progress: &mut dyn StartProgress,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<LocalFleet, StartError> {
        if spec.count == 0 {
            return Err(StartError::Empty);
        }
        let mut fleet = LocalFleet {
            servers: Vec::with_capacity(spec.count),
            token: spec.server.token.clone(),
            armed: true,
        };
        for i in 0..spec.count {
            let name = format!("node{i}");
            let dir = run_dir.node_dir(&name)?;
            fleet.servers.push(launch(spec, &name, &dir)?);
        }
        progress.launched(spec.count);
        let result = fleet.wait_ready(spec, progress, interrupted);
        let up = fleet.servers.iter().filter(|s| s.ready.is_some()).count();
        progress.finish(up, spec.count);
        result.map(|()| fleet)
    }

    fn wait_ready(
        &mut self,
        spec: &LocalSpec,
        progress: &mut dyn StartProgress,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + spec.server.ready_timeout;
        let mut failures = Vec::new();
        loop {
            if let Some(signal) = interrupted() {
                return Err(StartError::Interrupted(signal));
            }
            for server in self.servers.iter_mut().filter(|s| s.pending()) {
                if let Some(ready) = read_ready(&server.ready_file) {
                    progress.ready(&server.name, &ready);
                    server.ready = Some(ready);
                } else if let Ok(Some(status)) = server.child.try_wait() {
                    server.done = true;
                    let failure = server.failure(FailReason::Exited(status));
                    progress.failed(&server.name, &failure.reason.to_string());
                    failures.push(failure);
                }
            }
            let pending = self.servers.iter().any(Server::pending);
            if !pending || (!failures.is_empty() && !spec.server.allow_partial) {
                break;
            }
            if Instant::now() >= deadline {
                for server in self.servers.iter_mut().filter(|s| s.pending()) {
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                    server.done = true;
                    let failure = server.failure(FailReason::Timeout(spec.server.ready_timeout));
                    progress.failed(&server.name, &failure.reason.to_string());
                    failures.push(failure);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = self.servers.iter().filter(|s| s.ready.is_some()).count();
        if failures.is_empty() || (spec.server.allow_partial && up > 0) {
            Ok(())
        } else {
            Err(StartError::Failed {
                total: self.servers.len(),
                failures,
            })
        }
    }

    /// The fleet of the servers that are ready, as the fleet file records it.
    pub fn fleet(&self) -> Fleet {
        Fleet {
            format: FLEET_FORMAT,
            token: Some(self.token.clone()),
            launcher: "local".into(),
            nodes: self
                .servers
                .iter()
                .filter_map(|s| {
                    let ready = s.ready.as_ref()?;
                    Some(FleetNode {
                        name: s.name.clone(),
                        address: ready.address.clone(),
                        pid: ready.pid,
                        log: Some(s.log.display().to_string()),
                    })
                })
                .collect(),
        }
    }

    /// Process ids of all servers started, ready or not.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.child.id()).collect()
    }

    /// Leaves the servers running after this handle is gone (they are in their own process
    /// group, so they outlive the launcher too).
    pub fn detach(mut self) {
        self.armed = false;
    }

    /// Stops every server: SIGTERM, then SIGKILL for those still running after `grace`.
    /// Returns the names of the servers that had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        self.armed = false;
        for server in &mut self.servers {
            if matches!(server.child.try_wait(), Ok(None)) {
                let _ = process::send(server.child.id(), Signal::Term);
            }
        }
        let deadline = Instant::now() + grace;
        let mut killed = Vec::new();
        for server in &mut self.servers {
            loop {
                match server.child.try_wait() {
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        let _ = server.child.kill();
                        let _ = server.child.wait();
                        killed.push(server.name.clone());
                        break;
                    }
                    Ok(Some(_)) | Err(_) => break,
                }
            }
            server.done = true;
        }
        killed
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        if self.armed {
            self.stop(STOP_GRACE);
        }
    }
}

impl Server {
    fn pending(&self) -> bool {
        self.ready.is_none() && !self.done
    }

    fn failure(&self, reason: FailReason) -> NodeFailure {
        NodeFailure {
            node: self.name.clone(),
            reason,
            log: self.log.clone(),
            tail: log_tail(&self.log, LOG_TAIL_LINES),
        }
    }
}

/// Starts node `name`'s server with its files in `dir`.
fn launch(spec: &LocalSpec, name: &str, dir: &Path) -> Result<Server, StartError> {
    let log = dir.join("server.log");
    let ready_file = dir.join("ready.json");
    // A ready file left over from an earlier fleet in the same directory would be believed.
    let _ = std::fs::remove_file(&ready_file);
    let spawn_error = |source| StartError::Spawn {
        node: name.to_string(),
        bin: spec.server.server_bin.clone(),
        source,
    };
    let log_file = std::fs::File::create(&log).map_err(|source| {
        StartError::RunDir(RunDirError {
            path: log.clone(),
            source,
        })
    })?;
    let mut command = Command::new(&spec.server.server_bin);
    command
        .arg("--node")
        .arg(name)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--ready-file")
        .arg(&ready_file);
    if let Some(limit) = &spec.server.memory_limit {
        command.arg("--memory-limit").arg(limit);
    }
    if spec.exit_with_launcher {
        command.arg("--exit-with-parent");
    }
    command
        .args(&spec.server.server_args)
        .env("DIMSTORE_TOKEN", &spec.server.token)
        // One address for every simulated node would make them all claim to be one server.
        .env_remove("DIMSTORE_ADVERTISE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0);
    let child = command.spawn().map_err(spawn_error)?;
    Ok(Server {
        name: name.to_string(),
        child,
        log,
        ready_file,
        ready: None,
        done: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Quiet;

    fn spec(bin: &str, count: usize) -> LocalSpec {
        LocalSpec {
            count,
            server: ServerSpec {
                server_bin: bin.into(),
                memory_limit: None,
                server_args: Vec::new(),
                token: dimstore_host::new_token(),
                ready_timeout: Duration::from_secs(5),
                allow_partial: false,
            },
            exit_with_launcher: false,
        }
    }

    #[test]
    fn a_missing_binary_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut dir = RunDir::at(root.path()).expect("run dir");
        let err = LocalFleet::start(
            &spec("/nonexistent/dimstore-server", 2),
            &mut dir,
            &mut Quiet,
            &|| None,
        )
        .expect_err("no binary");
        let text = err.to_string();
        assert!(
            text.contains("node0") && text.contains("/nonexistent"),
            "{text}"
        );
    }

    #[test]
    fn a_server_that_exits_fails_with_its_log() {
        // `false` ignores its arguments and exits 1 at once: a server that dies on start.
        let root = tempfile::tempdir().expect("tempdir");
        let mut dir = RunDir::at(root.path()).expect("run dir");
        let err =
            LocalFleet::start(&spec("false", 2), &mut dir, &mut Quiet, &|| None).expect_err("dies");
        match err {
            StartError::Failed { total, failures } => {
                assert_eq!(total, 2);
                assert!(!failures.is_empty());
                assert!(matches!(failures[0].reason, FailReason::Exited(_)));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_server_that_never_gets_ready_times_out_and_is_killed() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut dir = RunDir::at(root.path()).expect("run dir");
        // `sleep --node node0 ...` fails; use a script that ignores its arguments instead.
        let script = root.path().join("slow-server");
        std::fs::write(&script, "#!/bin/sh\necho starting >&2\nexec sleep 30\n").expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let mut spec = spec(script.to_str().expect("utf-8"), 1);
        spec.server.ready_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let err = LocalFleet::start(&spec, &mut dir, &mut Quiet, &|| None).expect_err("timeout");
        assert!(started.elapsed() < Duration::from_secs(10));
        let text = err.to_string();
        assert!(
            text.contains("node0: server not ready after 300ms"),
            "{text}"
        );
        assert!(text.contains("starting"), "log tail missing: {text}");
    }

    #[test]
    fn an_interrupt_aborts_the_wait() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut dir = RunDir::at(root.path()).expect("run dir");
        let err = LocalFleet::start(&spec("sleep", 1), &mut dir, &mut Quiet, &|| Some(2))
            .expect_err("interrupted");
        assert!(matches!(err, StartError::Interrupted(2)), "{err}");
    }
}
