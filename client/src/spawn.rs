//! Finding this node's server, and starting one when none runs (elastic spawn).
//!
//! Order: an explicit address (`DIMSTORE_SERVER`); the fleet file's entry for this node
//! (`DIMSTORE_FLEET`, `DIMSTORE_NODE`); the node's ready file in the runtime directory; and
//! last, a server spawned by this client. Spawning is arbitrated by an exclusive lock in the
//! runtime directory, so when many processes of a node race, exactly one spawns and the others
//! find its ready file. The server is started by exec (never a forked copy of this process:
//! UCX forbids that) in its own process group, so it outlives the process that spawned it.

use std::fs::File;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dimstore_proto::ReadyFile;
use rustix::fs::{flock, FlockOperation};

use crate::config::{ClientConfig, SpawnPolicy};
use crate::error::ConnectError;
use crate::fleet::Fleet;

/// How long a spawned server may take to become ready.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(20);

/// This node's server, as located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalServer {
    /// Control address.
    pub address: String,
    /// Token to present.
    pub token: Option<String>,
    /// Node identity.
    pub node: String,
    /// Whether this call started it.
    pub spawned: bool,
}

/// Locates (or spawns) the server for this client's node.
pub fn locate(config: &ClientConfig) -> Result<LocalServer, ConnectError> {
    if let Some(address) = &config.server {
        return Ok(LocalServer {
            address: address.clone(),
            token: config.token.clone(),
            node: node_name(config),
            spawned: false,
        });
    }
    if let Some(path) = &config.fleet {
        return from_fleet(config, path);
    }
    let node = node_name(config);
    let dir = config.runtime_dir.join(&node);
    let ready_path = dir.join("server.json");
    if let Some(ready) = live_server(&ready_path) {
        return Ok(found(ready, config, false));
    }
    if config.spawn == SpawnPolicy::Never {
        return Err(ConnectError::NoServer {
            node,
            runtime_dir: config.runtime_dir.display().to_string(),
        });
    }
    spawn_once(config, &node, &dir, &ready_path)
}

/// This client's node identity: `DIMSTORE_NODE` or the host name.
pub fn node_name(config: &ClientConfig) -> String {
    config.node.clone().unwrap_or_else(hostname)
}

/// The host name (the UTS namespace's).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn from_fleet(config: &ClientConfig, path: &Path) -> Result<LocalServer, ConnectError> {
    let fleet_error = |reason: String| ConnectError::Fleet {
        path: path.display().to_string(),
        reason,
    };
    let fleet = Fleet::read(path).map_err(|e| fleet_error(e.to_string()))?;
    let node = match &config.node {
        Some(wanted) => fleet.node(wanted).map_err(|e| fleet_error(e.to_string()))?,
        // On a node of the fleet, its own entry; on a single-host (local) fleet, node 0.
        None => {
            let host = hostname();
            fleet
                .nodes
                .iter()
                .find(|n| n.name == host)
                .or(fleet.nodes.first())
                .ok_or_else(|| fleet_error("the fleet has no nodes".into()))?
        }
    };
    Ok(LocalServer {
        address: node.address.clone(),
        token: fleet.token.clone().or_else(|| config.token.clone()),
        node: node.name.clone(),
        spawned: false,
    })
}

fn found(ready: ReadyFile, config: &ClientConfig, spawned: bool) -> LocalServer {
    LocalServer {
        address: ready.address,
        token: config.token.clone(),
        node: ready.node,
        spawned,
    }
}

/// The ready file's server, if the file exists and the server accepts connections.
fn live_server(ready_path: &Path) -> Option<ReadyFile> {
    let ready: ReadyFile = serde_json::from_slice(&std::fs::read(ready_path).ok()?).ok()?;
    let addr = ready.address.to_socket_addrs().ok()?.next()?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    Some(ready)
}

fn spawn_once(
    config: &ClientConfig,
    node: &str,
    dir: &Path,
    ready_path: &Path,
) -> Result<LocalServer, ConnectError> {
    let fail = |reason: String| ConnectError::Spawn {
        node: node.to_string(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    let lock = lock_exclusive(&dir.join("spawn.lock"), deadline).map_err(fail)?;
    // Someone may have spawned it while we waited for the lock.
    if let Some(ready) = live_server(ready_path) {
        return Ok(found(ready, config, false));
    }
    let _ = std::fs::remove_file(ready_path);
    let log_path = dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
    let bin = server_binary(config);
    let mut command = Command::new(&bin);
    command
        .arg("--listen")
        .arg(&config.spawn_listen)
        .arg("--node")
        .arg(node)
        .arg("--ready-file")
        .arg(ready_path)
        .arg("--idle-timeout")
        .arg(humantime::format_duration(config.spawn_idle_timeout).to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C aimed at the spawning job does not reach it.
        .process_group(0);
    if let Some(limit) = &config.spawn_memory_limit {
        command.arg("--memory-limit").arg(limit);
    }
    if let Some(token) = &config.token {
        command.env("DIMSTORE_TOKEN", token);
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    loop {
        if let Some(ready) = live_server(ready_path) {
            drop(lock);
            return Ok(found(ready, config, true));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "{} exited with {status} before becoming ready; log {}:\n{}",
                bin.display(),
                log_path.display(),
                log_tail(&log_path, 10)
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err(fail(format!(
                "not ready after {SPAWN_TIMEOUT:?}; log {}:\n{}",
                log_path.display(),
                log_tail(&log_path, 10)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Takes an exclusive `flock` on `path`, polling until `deadline`. Released when the returned
/// file is dropped (also when the process dies).
fn lock_exclusive(path: &Path, deadline: Instant) -> Result<File, String> {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open lock {}: {e}", path.display()))?;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// The server binary: configured (`DIMSTORE_SERVER_BIN`), else `dimstore-server` next to this
/// program (or one directory up, for test binaries in `target/*/deps`), else on `PATH`.
pub fn server_binary(config: &ClientConfig) -> PathBuf {
    if let Some(bin) = &config.server_bin {
        return bin.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            // Test binaries live one level below the build directory (target/debug/deps).
            let dir = exe.parent()?;
            [dir, dir.parent()?]
                .into_iter()
                .map(|d| d.join("dimstore-server"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("dimstore-server"))
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
