//! Fleets on the nodes of a batch allocation: one server per node, started by one parallel
//! launcher step (`srun`, `mpiexec`, `mpirun`, see [`crate::step`]).
//!
//! The step runs `dimstore-launch node-server` once per node ([`node_main`]), which starts
//! the node's server with `--node <host>` and its files in `<run dir>/<host>/` (`ready.json`,
//! `server.log`, and `exit` once it has ended), passes signals on to it and ends with it. The
//! run directory must therefore be visible to all nodes (a shared file system). The fleet
//! token reaches the servers in `DIMSTORE_TOKEN`, through the launcher's environment.
//!
//! [`RemoteFleet::start`] waits until every node of the allocation has a ready server: a node
//! whose server exits, or that has none when the step ends or the time is up, fails the start
//! by name with its log tail (unless partial fleets are allowed) and the step is stopped.
//! [`RemoteFleet::stop`] asks every server to shut down, then waits for the step to end,
//! terminating it if it does not. `step.json` in the run directory records the step's
//! process, so that `dimstore-launch down` can wait for it too ([`finish_step`]).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use dimstore::fleet::{Fleet, FleetNode, FLEET_FORMAT};
use dimstore_host::process;
use dimstore_host::server_files::{log_tail, read_ready};
use dimstore_proto::ReadyFile;
use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::allocation::Allocation;
use crate::fleet_ops::{self, DownOptions};
use crate::interrupt::Interrupts;
use crate::local::{FailReason, NodeFailure, ServerSpec, StartError, LOG_TAIL_LINES, STOP_GRACE};
use crate::progress::StartProgress;
use crate::rundir::{
    RunDir, EXIT_FILE, HOSTS_FILE, LAUNCHER_LOG, READY_FILE, SERVER_LOG, STEP_RECORD,
};
use crate::step::Launcher;

/// The subcommand of `dimstore-launch` that the step runs on every node.
pub const NODE_SERVER: &str = "node-server";

/// What to start.
#[derive(Debug, Clone)]
pub struct RemoteSpec {
    /// The nodes.
    pub allocation: Allocation,
    /// The parallel launcher.
    pub launcher: Launcher,
    /// `dimstore-launch` itself, as the nodes can run it (an absolute path).
    pub launch_exe: PathBuf,
    /// What each server gets (the binary as the nodes can run it).
    pub server: ServerSpec,
}

/// The launcher step's process, as recorded in `step.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Process id of `srun` / `mpiexec` / `mpirun`.
    pub pid: u32,
    /// The host it runs on.
    pub host: String,
    /// Its command line, for messages.
    pub command: String,
}

/// One node of the allocation.
#[derive(Debug)]
struct Node {
    /// The allocation's name for it.
    name: String,
    /// The host name its server reported from (the subdirectory), once seen.
    host: Option<String>,
    ready: Option<ReadyFile>,
    failed: bool,
}

/// Servers on the nodes of an allocation, started by one launcher step.
#[derive(Debug)]
pub struct RemoteFleet {
    step: Child,
    record: StepRecord,
    run_dir: PathBuf,
    source: &'static str,
    token: String,
    nodes: Vec<Node>,
    /// Stop the servers and the step on drop.
    armed: bool,
}

impl RemoteFleet {
    /// Starts the step with its files in `run_dir` and waits until every node's server is
    /// ready. A signal number from `interrupted` aborts the start.
    ///
    /// # Errors
    /// See [`StartError`]; the step is stopped before it is returned.
    pub fn start(
        spec: &RemoteSpec,
        run_dir: &mut RunDir,
        progress: &mut dyn StartProgress,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<RemoteFleet, StartError> {
        let names = spec.allocation.nodes();
        if names.is_empty() {
            return Err(StartError::Empty);
        }
        let dir = run_dir.path().to_path_buf();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, bytes)
                .map_err(|source| StartError::RunDir(crate::rundir::RunDirError { path, source }))
        };
        write(HOSTS_FILE, format!("{}\n", names.join("\n")).as_bytes())?;
        let (step, record) = launch_step(spec, &dir)?;
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        let mut fleet = RemoteFleet {
            step,
            record,
            run_dir: dir.clone(),
            source: spec.allocation.source(),
            token: spec.server.token.clone(),
            nodes: names
                .iter()
                .map(|name| Node {
                    name: name.clone(),
                    host: None,
                    ready: None,
                    failed: false,
                })
                .collect(),
            armed: true,
        };
        write(STEP_RECORD, &json)?;
        progress.launched(names.len());
        let result = fleet.wait_ready(spec, progress, interrupted);
        let up = fleet.nodes.iter().filter(|n| n.ready.is_some()).count();
        progress.finish(up, names.len());
        // Record the hosts' subdirectories, so that cleanup removes them.
        for host in fleet.nodes.iter().filter_map(|n| n.host.as_deref()) {
            let _ = run_dir.node_dir(host);
        }
        match result {
            Ok(()) => Ok(fleet),
            Err(e) => {
                fleet.stop(STOP_GRACE);
                Err(e)
            }
        }
    }

    fn wait_ready(
        &mut self,
        spec: &RemoteSpec,
        progress: &mut dyn StartProgress,
        interrupted: &dyn Fn() -> Option<i32>,
    ) -> Result<(), StartError> {
        let deadline = Instant::now() + spec.server.ready_timeout;
        let mut failures = Vec::new();
        let mut lookup = NodeLookup::new(&self.nodes);
        loop {
            if let Some(signal) = interrupted() {
                return Err(StartError::Interrupted(signal));
            }
            // The step's end is checked before the directory, so nothing written before
            // it ended is missed.
            let ended = self.step.try_wait().ok().flatten();
            // Hosts whose node is settled (ready or failed) have nothing more to say.
            let nodes = &self.nodes;
            let skip = |host: &str| lookup.known(host).is_some_and(|i| settled(&nodes[i]));
            for (host, report) in scan(&self.run_dir, skip) {
                let Some(index) = lookup.node_for(&self.nodes, &host) else {
                    continue;
                };
                let node = &mut self.nodes[index];
                if settled(node) {
                    continue;
                }
                lookup.claim(&host, index);
                node.host = Some(host);
                match report {
                    Report::Ready(ready) => {
                        progress.ready(&ready.node, &ready);
                        node.ready = Some(ready);
                    }
                    Report::Exited(how) => {
                        node.failed = true;
                        let key = node_key(node);
                        let reason = FailReason::Other(format!("server {how} before it was ready"));
                        progress.failed(&key.0, &reason.to_string());
                        failures.push(self.failure_of(&key, reason));
                    }
                    Report::Starting => {}
                }
            }
            let pending = self.nodes.iter().any(|n| n.ready.is_none() && !n.failed);
            if !pending || (!failures.is_empty() && !spec.server.allow_partial) {
                break;
            }
            let timed_out = Instant::now() >= deadline;
            if ended.is_some() || timed_out {
                let reason = match ended {
                    Some(status) => FailReason::Other(format!(
                        "no server ready when the launcher step `{}` ended ({status})",
                        self.record.command
                    )),
                    None => FailReason::Timeout(spec.server.ready_timeout),
                };
                let keys: Vec<(String, Option<String>)> = self
                    .nodes
                    .iter()
                    .filter(|n| n.ready.is_none() && !n.failed)
                    .map(node_key)
                    .collect();
                for key in keys {
                    progress.failed(&key.0, &reason.to_string());
                    failures.push(self.failure_of(&key, reason.clone()));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = self.nodes.iter().filter(|n| n.ready.is_some()).count();
        if failures.is_empty() || (spec.server.allow_partial && up > 0) {
            Ok(())
        } else {
            Err(StartError::Failed {
                total: self.nodes.len(),
                failures,
            })
        }
    }

    /// A node's failure with its server log's tail, or the launcher's log when the node
    /// never reported.
    fn failure_of(
        &self,
        (name, host): &(String, Option<String>),
        reason: FailReason,
    ) -> NodeFailure {
        let log = match host {
            Some(host) => self.run_dir.join(host).join(SERVER_LOG),
            None => self.run_dir.join(LAUNCHER_LOG),
        };
        NodeFailure {
            node: name.clone(),
            reason,
            tail: log_tail(&log, LOG_TAIL_LINES),
            log,
        }
    }

    /// The fleet of the servers that are ready.
    pub fn fleet(&self) -> Fleet {
        Fleet {
            format: FLEET_FORMAT,
            token: Some(self.token.clone()),
            launcher: self.source.to_owned(),
            nodes: self
                .nodes
                .iter()
                .filter_map(|n| {
                    let ready = n.ready.as_ref()?;
                    let host = n.host.as_deref()?;
                    Some(FleetNode {
                        name: ready.node.clone(),
                        address: ready.address.clone(),
                        pid: ready.pid,
                        log: Some(
                            self.run_dir
                                .join(host)
                                .join(SERVER_LOG)
                                .display()
                                .to_string(),
                        ),
                    })
                })
                .collect(),
        }
    }

    /// How many nodes the allocation has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Leaves the servers and the step running after this handle is gone (the step is in
    /// its own process group).
    pub fn detach(mut self) {
        self.armed = false;
    }

    /// Stops the fleet: a shutdown request to every ready server, then waits up to `grace`
    /// for the step to end, then terminates it (SIGTERM, which the launchers pass on to
    /// the servers) and kills it if it still runs after [`STOP_GRACE`]. Returns what had to
    /// be forced, for warnings.
    pub fn stop(&mut self, grace: Duration) -> Vec<String> {
        self.armed = false;
        let fleet = self.fleet();
        let options = DownOptions {
            timeout: Duration::from_secs(5),
            wait: grace,
        };
        let mut forced: Vec<String> = fleet_ops::down(&fleet, options)
            .into_iter()
            .filter(|(_, outcome)| !outcome.is_stopped())
            .map(|(node, outcome)| format!("{node}: {outcome:?}"))
            .collect();
        if let Some(how) = end_child(&mut self.step, grace) {
            forced.push(format!("launcher step `{}` {how}", self.record.command));
        }
        forced
    }
}

impl Drop for RemoteFleet {
    fn drop(&mut self) {
        if self.armed {
            self.stop(STOP_GRACE);
        }
    }
}

fn node_key(node: &Node) -> (String, Option<String>) {
    (node.name.clone(), node.host.clone())
}

/// Whether a node's start is decided: its server is ready, or it failed.
fn settled(node: &Node) -> bool {
    node.ready.is_some() || node.failed
}

/// A host or node name up to its first dot.
fn short(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Finds the allocation node a host reported from without going through all nodes for
/// every report.
#[derive(Debug)]
struct NodeLookup {
    /// The hosts heard of, with their nodes.
    by_host: HashMap<String, usize>,
    /// Each short name of the allocation's nodes, with the first node of that short name.
    by_short: HashMap<String, usize>,
    /// Every node before this one has a host.
    first_free: usize,
}

impl NodeLookup {
    /// For nodes none of which has a host yet.
    fn new(nodes: &[Node]) -> NodeLookup {
        let mut by_short = HashMap::with_capacity(nodes.len());
        for (index, node) in nodes.iter().enumerate() {
            by_short
                .entry(short(&node.name).to_owned())
                .or_insert(index);
        }
        NodeLookup {
            by_host: HashMap::with_capacity(nodes.len()),
            by_short,
            first_free: 0,
        }
    }

    /// The node `host` was claimed for, if any.
    fn known(&self, host: &str) -> Option<usize> {
        self.by_host.get(host).copied()
    }

    /// Records that `host` reported from `index` (the node's `host` is set to it).
    fn claim(&mut self, host: &str, index: usize) {
        if !self.by_host.contains_key(host) {
            self.by_host.insert(host.to_owned(), index);
        }
    }

    /// The allocation node a host reported from: same name, same short name, or else the
    /// first node not yet heard of (host names and the batch system's names may differ).
    fn node_for(&mut self, nodes: &[Node], host: &str) -> Option<usize> {
        if let Some(index) = self.known(host) {
            return Some(index);
        }
        // The same name has the same short name, so the first node without a host whose
        // short name is the host's (no node before `first` has that short name).
        let host_short = short(host);
        let same_name = self.by_short.get(host_short).and_then(|&first| {
            nodes[first..]
                .iter()
                .position(|n| n.host.is_none() && short(&n.name) == host_short)
                .map(|offset| first + offset)
        });
        same_name.or_else(|| {
            // Nodes only ever gain a host, so the first without one only moves forward.
            while nodes.get(self.first_free).is_some_and(|n| n.host.is_some()) {
                self.first_free += 1;
            }
            (self.first_free < nodes.len()).then_some(self.first_free)
        })
    }
}

/// Starts the launcher step, its output going to `launcher.log`.
fn launch_step(spec: &RemoteSpec, dir: &Path) -> Result<(Child, StepRecord), StartError> {
    let mut inner: Vec<OsString> = vec![
        spec.launch_exe.clone().into(),
        NODE_SERVER.into(),
        "--run-dir".into(),
        dir.into(),
        "--origin".into(),
        dimstore_host::hostname().into(),
        "--".into(),
        spec.server.server_bin.clone().into(),
    ];
    if let Some(limit) = &spec.server.memory_limit {
        inner.extend(["--memory-limit".into(), limit.into()]);
    }
    inner.extend(spec.server.server_args.iter().map(OsString::from));
    let line = spec.launcher.command_line(
        spec.allocation.nodes().len(),
        &dir.join(HOSTS_FILE),
        spec.server.ready_timeout,
        &inner,
    );
    let shown = line
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let log_path = dir.join(LAUNCHER_LOG);
    let run_dir_error = |source| {
        StartError::RunDir(crate::rundir::RunDirError {
            path: log_path.clone(),
            source,
        })
    };
    let log = fs::File::create(&log_path).map_err(run_dir_error)?;
    let log2 = log.try_clone().map_err(run_dir_error)?;
    let (program, args) = line.split_first().ok_or(StartError::Empty)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("DIMSTORE_TOKEN", &spec.server.token)
        // Settings meant for one server would make every node claim the same identity.
        .env_remove("DIMSTORE_ADVERTISE")
        .env_remove("DIMSTORE_NODE_NAME")
        .env_remove("DIMSTORE_READY_FILE")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // A Ctrl-C at the terminal reaches the user's command, not the fleet's step.
        .process_group(0);
    let child = command.spawn().map_err(|source| StartError::Launcher {
        program: program.to_string_lossy().into_owned(),
        source,
    })?;
    let record = StepRecord {
        pid: child.id(),
        host: dimstore_host::hostname(),
        command: shown,
    };
    Ok((child, record))
}

/// What a node's subdirectory says about its server.
#[derive(Debug)]
enum Report {
    Starting,
    Ready(ReadyFile),
    Exited(String),
}

/// Every host subdirectory of the run directory, with what it reports, but for the hosts
/// `skip` holds for (those already settled), whose files are not read.
fn scan(dir: &Path, skip: impl Fn(&str) -> bool) -> BTreeMap<String, Report> {
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let host = entry.file_name().to_string_lossy().into_owned();
        if skip(&host) {
            continue;
        }
        let path = entry.path();
        let report = if let Some(ready) = read_ready(&path.join(READY_FILE)) {
            Report::Ready(ready)
        } else if let Ok(how) = fs::read_to_string(path.join(EXIT_FILE)) {
            Report::Exited(how.trim().to_owned())
        } else {
            Report::Starting
        };
        found.insert(host, report);
    }
    found
}

/// Waits up to `grace` for `child` to exit, then SIGTERM, then SIGKILL. Returns what had to
/// be done, if anything beyond waiting.
fn end_child(child: &mut Child, grace: Duration) -> Option<&'static str> {
    // Once reaped, its pid may name another process. Until then it names this child, which
    // counts as gone once it has exited.
    if !matches!(child.try_wait(), Ok(None)) {
        return None;
    }
    let forced = process::wait_then_end(child.id(), grace, STOP_GRACE);
    let _ = child.wait();
    match forced? {
        Signal::Term => Some("was terminated (SIGTERM)"),
        _ => Some("was killed (SIGKILL)"),
    }
}

/// For `dimstore-launch down`: waits up to `wait` for the launcher step recorded in
/// `run_dir` to end (its servers were asked to stop), then terminates it. Nothing to do when
/// there is no record, or the step runs on another host or has ended. Returns a message
/// when it had to be forced.
pub fn finish_step(run_dir: &Path, wait: Duration) -> Option<String> {
    let record: StepRecord =
        serde_json::from_slice(&fs::read(run_dir.join(STEP_RECORD)).ok()?).ok()?;
    if record.host != dimstore_host::hostname() || !process::is_running(record.pid) {
        return None;
    }
    match process::wait_then_end(record.pid, wait, STOP_GRACE)? {
        Signal::Term => Some(format!("launcher step `{}` was terminated", record.command)),
        _ => Some(format!("launcher step `{}` was killed", record.command)),
    }
}

/// `dimstore-launch node-server --run-dir DIR -- SERVER [ARGS...]`, run once per node by the
/// launcher step: starts the server with `--node <host>` and its files in `DIR/<host>/`,
/// passes SIGINT, SIGTERM and SIGHUP on to it, writes `DIR/<host>/exit` when it ends and
/// exits with its code. Returns the exit code.
///
/// The server advertises the address its host name resolves to. Where that is only a
/// loopback address (a node whose `/etc/hosts` maps its own name to 127.0.1.1), it listens
/// on the source address of the route towards `origin`, the launcher's host, instead.
pub fn node_main(run_dir: &Path, origin: Option<&str>, server: &[OsString]) -> i32 {
    let host = dimstore_host::hostname();
    let dir = run_dir.join(&host);
    let exit_file = dir.join(EXIT_FILE);
    let report = |text: &str| {
        let _ = fs::write(&exit_file, format!("{text}\n"));
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!(
            "dimstore-launch: {host}: cannot create {}: {e}",
            dir.display()
        );
        return 1;
    }
    let ready = dir.join(READY_FILE);
    let _ = fs::remove_file(&ready);
    let _ = fs::remove_file(&exit_file);
    let log_path = dir.join(SERVER_LOG);
    let log = match fs::File::create(&log_path) {
        Ok(log) => log,
        Err(e) => {
            report(&format!(
                "could not be started: cannot create {}: {e}",
                log_path.display()
            ));
            return 1;
        }
    };
    let Some((program, args)) = server.split_first() else {
        report("could not be started: no server command");
        return 2;
    };
    let interrupts = Interrupts::install().ok();
    let mut command = Command::new(program);
    if let Some(listen) = origin.and_then(|o| listen_towards(o, args)) {
        let _ = writeln!(
            &log,
            "dimstore-launch: {host} resolves to no routable address; listening on {listen}, \
             the route towards {}",
            origin.unwrap_or_default()
        );
        command.arg("--listen").arg(listen);
    }
    let spawned = command
        .args(args)
        .arg("--node")
        .arg(&host)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let text = format!(
                "could not be started: cannot run {}: {e}",
                program.to_string_lossy()
            );
            let _ = fs::write(&log_path, format!("dimstore-launch: {text}\n"));
            report(&text);
            return 127;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(_) => break child.wait().unwrap_or(ExitStatus::from_raw(1 << 8)),
        }
        let signal = match &interrupts {
            Some(i) => i.wait(Duration::from_millis(50)),
            None => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        };
        if let Some(sig) = signal.and_then(Signal::from_raw) {
            let _ = process::send(child.id(), sig);
        }
    };
    report(&format!("exited ({status})"));
    process::exit_code(status)
}

/// `IP:0` for the server to listen on when this host's name resolves to no routable IPv4
/// address: the source address of the route towards `origin`. `None` when the name
/// resolves well, when the user chose an address (`--listen`, `--advertise`, or their
/// `DIMSTORE_*` variables), or when no route tells.
fn listen_towards(origin: &str, server_args: &[OsString]) -> Option<String> {
    let chosen = server_args.iter().any(|a| {
        let a = a.to_string_lossy();
        ["--listen", "--advertise"]
            .iter()
            .any(|flag| a == *flag || a.starts_with(&format!("{flag}=")))
    });
    let from_env = ["DIMSTORE_LISTEN", "DIMSTORE_ADVERTISE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if chosen || from_env || routable(&dimstore_host::hostname()).is_some() {
        return None;
    }
    let target = (origin, 9)
        .to_socket_addrs()
        .ok()?
        .find(SocketAddr::is_ipv4)?;
    // A connected UDP socket sends nothing; it only asks the kernel for the route.
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then(|| SocketAddr::new(ip, 0).to_string())
}

/// The first non-loopback IPv4 address `host` resolves to.
fn routable(host: &str) -> Option<IpAddr> {
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_chosen_by_the_user_is_kept() {
        for args in [["--listen", "10.0.0.1:0"], ["--advertise=n1:7000", "-v"]] {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            assert_eq!(listen_towards("127.0.0.1", &args), None);
        }
        // Towards this host itself the route is loopback, which is never chosen.
        assert_eq!(listen_towards("127.0.0.1", &[]), None);
    }

    #[test]
    fn scan_reads_ready_exited_and_starting_hosts() {
        let root = tempfile::tempdir().expect("tempdir");
        let ready = ReadyFile {
            address: "10.0.0.1:7000".into(),
            pid: 9,
            node: "n1".into(),
            server_id: 1,
            transports: vec!["tcp".into()],
            version: "0".into(),
            metrics: None,
        };
        fs::create_dir_all(root.path().join("n1")).expect("n1");
        fs::write(
            root.path().join("n1/ready.json"),
            serde_json::to_vec(&ready).expect("json"),
        )
        .expect("ready");
        fs::create_dir_all(root.path().join("n2")).expect("n2");
        fs::write(root.path().join("n2/exit"), "exited (exit status: 2)\n").expect("exit");
        fs::create_dir_all(root.path().join("n3")).expect("n3");
        fs::write(root.path().join("hosts"), "n1\n").expect("hosts");
        let found = scan(root.path(), |_| false);
        assert_eq!(found.len(), 3);
        assert!(matches!(&found["n1"], Report::Ready(r) if r.pid == 9));
        assert!(matches!(&found["n2"], Report::Exited(t) if t == "exited (exit status: 2)"));
        assert!(matches!(found["n3"], Report::Starting));
    }
}
