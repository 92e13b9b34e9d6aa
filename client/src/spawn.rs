//! Finding this node's server, and starting one when none runs (elastic spawn).
//!
//! Order: an explicit address (`DIMSTORE_SERVER`); the fleet file's entry for this node
//! (`DIMSTORE_FLEET`, `DIMSTORE_NODE`); the node's ready file in the runtime directory; and
//! last, a server spawned by this client. Spawning is arbitrated by an exclusive lock in the
//! runtime directory, so when many processes of a node race, exactly one spawns and the others
//! find its ready file. The server is started by exec (never a forked copy of this process:
//! UCX forbids that) in its own process group, so it outlives the process that spawned it.
//!
//! A spawned server requires the per-user token kept in the runtime directory (created once,
//! mode 0600, see [`crate::runtime_dir`]), which reaches it through its environment, never
//! its command line. It listens on loopback unless `DIMSTORE_LISTEN` names another address or
//! an interface. The runtime directory is used only if this user owns it and nobody else may
//! enter it (0700); anything else is a [`ConnectError::RuntimeDir`] error, so a directory
//! planted by another user never receives a token or an object.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dimstore_host::hostname;
use dimstore_host::server_files::log_tail;
use dimstore_proto::ReadyFile;
use rustix::fs::{flock, FlockOperation};

use crate::config::{ClientConfig, SpawnPolicy};
use crate::error::ConnectError;
use crate::fleet::Fleet;
use crate::runtime_dir;

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
    /// Control addresses of the servers of the same fleet (this one included): the only
    /// servers the token is sent to.
    pub fleet: Vec<String>,
}

/// Locates (or spawns) the server for this client's node.
pub fn locate(config: &ClientConfig) -> Result<LocalServer, ConnectError> {
    if let Some(found) = configured(config)? {
        return Ok(found);
    }
    let node = node_name(config);
    let dir = config.runtime_dir.join(&node);
    let ready_path = dir.join("server.json");
    runtime_dir::ensure_private_dir(&config.runtime_dir)?;
    runtime_dir::ensure_private_dir(&dir)?;
    if let Some(ready) = live_server(&ready_path)? {
        return found(ready, config, false);
    }
    if config.spawn == SpawnPolicy::Never {
        return Err(ConnectError::NoServer {
            node,
            runtime_dir: config.runtime_dir.display().to_string(),
        });
    }
    spawn_once(config, &node, &dir, &ready_path)
}

/// The server this client would use, without spawning one or waiting for it: the
/// configured one (`DIMSTORE_SERVER`, the fleet file) or the one the runtime directory's
/// ready file names, if the directory and file can be trusted. For stores without a server
/// of their own, which still present the token to servers of their fleet.
pub fn known(config: &ClientConfig) -> Option<LocalServer> {
    if let Ok(Some(found)) = configured(config) {
        return Some(found);
    }
    let dir = config.runtime_dir.join(node_name(config));
    runtime_dir::check_private_dir(&config.runtime_dir).ok()?;
    runtime_dir::check_private_dir(&dir).ok()?;
    let ready = runtime_dir::read_ready(&dir.join("server.json")).ok()??;
    let token = runtime_dir::read_token(&config.runtime_dir.join(runtime_dir::TOKEN_FILE))
        .ok()
        .flatten();
    Some(LocalServer {
        fleet: vec![ready.address.clone()],
        address: ready.address,
        token,
        node: ready.node,
        spawned: false,
    })
}

/// The server named by the configuration (`DIMSTORE_SERVER`, else the fleet file), if any.
/// With both, the fleet file only adds its servers to those that may receive the token.
fn configured(config: &ClientConfig) -> Result<Option<LocalServer>, ConnectError> {
    let Some(address) = &config.server else {
        return config
            .fleet
            .as_deref()
            .map(|path| from_fleet(config, path))
            .transpose();
    };
    let mut fleet = vec![address.clone()];
    if let Some(path) = &config.fleet {
        let members = Fleet::read(path).map_err(|e| ConnectError::Fleet {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        fleet.extend(members.nodes.into_iter().map(|n| n.address));
    }
    Ok(Some(LocalServer {
        address: address.clone(),
        token: config.token.clone(),
        node: node_name(config),
        spawned: false,
        fleet,
    }))
}

/// This client's node identity: `DIMSTORE_NODE` or the host name.
pub fn node_name(config: &ClientConfig) -> String {
    config.node.clone().unwrap_or_else(hostname)
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
        fleet: fleet.nodes.iter().map(|n| n.address.clone()).collect(),
    })
}

/// The runtime directory's server, presenting the per-user token of spawned servers.
fn found(
    ready: ReadyFile,
    config: &ClientConfig,
    spawned: bool,
) -> Result<LocalServer, ConnectError> {
    Ok(LocalServer {
        token: Some(runtime_dir::token(&config.runtime_dir)?),
        fleet: vec![ready.address.clone()],
        address: ready.address,
        node: ready.node,
        spawned,
    })
}

/// The ready file's server, if the file exists and the server accepts connections; an
/// error if the file cannot be trusted.
fn live_server(ready_path: &Path) -> Result<Option<ReadyFile>, ConnectError> {
    let Some(ready) = runtime_dir::read_ready(ready_path)? else {
        return Ok(None);
    };
    let live = ready
        .address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    Ok(live.then_some(ready))
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
    let listen = listen_address(&config.spawn_listen).map_err(fail)?;
    let token = runtime_dir::token(&config.runtime_dir)?;
    let deadline = Instant::now() + SPAWN_TIMEOUT;
    let lock = lock_exclusive(&dir.join("spawn.lock"), deadline).map_err(fail)?;
    // Someone may have spawned it while we waited for the lock.
    if let Some(ready) = live_server(ready_path)? {
        return found(ready, config, false);
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
        .arg(&listen)
        .arg("--node")
        .arg(node)
        .arg("--ready-file")
        .arg(ready_path)
        .arg("--idle-timeout")
        .arg(humantime::format_duration(config.spawn_idle_timeout).to_string())
        // The token goes through the environment: a command line is readable by every user.
        .env("DIMSTORE_TOKEN", &token)
        .env("DIMSTORE_RUNTIME_DIR", &config.runtime_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a Ctrl-C aimed at the spawning job does not reach it.
        .process_group(0);
    if let Some(limit) = &config.spawn_memory_limit {
        command.arg("--memory-limit").arg(limit);
    }
    let mut child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    loop {
        if let Some(ready) = live_server(ready_path)? {
            drop(lock);
            return found(ready, config, true);
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

/// The `--listen` address of a spawned server from `DIMSTORE_LISTEN`: `HOST:PORT` as
/// given, or an interface name (`eth0`, `ib0:7100`) as that interface's first IPv4 address
/// (IPv6 if it has none), port 0 unless given.
pub fn listen_address(wanted: &str) -> Result<String, String> {
    if wanted.parse::<SocketAddr>().is_ok() {
        return Ok(wanted.to_string());
    }
    let (name, port) = match wanted.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => (name, port),
        _ => (wanted, "0"),
    };
    let interfaces =
        if_addrs::get_if_addrs().map_err(|e| format!("cannot list interfaces: {e}"))?;
    let ips: Vec<IpAddr> = interfaces
        .iter()
        .filter(|i| i.name == name)
        .map(|i| i.ip())
        .collect();
    if let Some(ip) = ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()) {
        return Ok(SocketAddr::new(*ip, port.parse().unwrap_or(0)).to_string());
    }
    // A host name with a port: the server resolves it.
    if wanted.to_socket_addrs().is_ok() {
        return Ok(wanted.to_string());
    }
    Err(format!(
        "DIMSTORE_LISTEN={wanted}: neither HOST:PORT nor an interface with an address (interfaces: {})",
        interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_an_address_or_an_interface_name() {
        assert_eq!(listen_address("127.0.0.1:0").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(
            listen_address("0.0.0.0:7100").as_deref(),
            Ok("0.0.0.0:7100")
        );
        assert_eq!(listen_address("lo").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(listen_address("lo:7100").as_deref(), Ok("127.0.0.1:7100"));
        assert_eq!(listen_address("localhost:0").as_deref(), Ok("localhost:0"));
        let err = listen_address("nosuchif0").expect_err("no such interface");
        assert!(
            err.contains("DIMSTORE_LISTEN=nosuchif0") && err.contains("lo"),
            "{err}"
        );
    }
}
