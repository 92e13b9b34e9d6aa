//! Operations on a running fleet, known from its fleet file: `status` and `down`.
//!
//! Every node is asked in parallel, each within a timeout, so one dead or hung node delays
//! the answer by at most that timeout.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use dimstore::fleet::{Fleet, FleetNode};
use dimstore::{ClientConfig, OpStats, RequestError, ServerStats, SpawnPolicy, Store};
use dimstore_host::process;
use rustix::process::Signal;
use serde_json::json;

/// A node and what its server said (or why it said nothing).
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// The node as the fleet file lists it.
    pub node: FleetNode,
    /// Its server's statistics, or why they could not be had.
    pub stats: Result<ServerStats, String>,
}

impl NodeStatus {
    /// Whether the server answered.
    pub fn is_up(&self) -> bool {
        self.stats.is_ok()
    }
}

/// A client configuration that talks to fleet servers and never spawns one.
fn client_config(fleet: &Fleet, timeout: Duration) -> ClientConfig {
    ClientConfig {
        timeout,
        token: fleet.token.clone(),
        spawn: SpawnPolicy::Never,
        ..ClientConfig::default()
    }
}

/// Asks every node's server for its statistics, in parallel, each within `timeout`.
pub fn status(fleet: &Fleet, timeout: Duration) -> Vec<NodeStatus> {
    for_each_node(fleet, |node| NodeStatus {
        node: node.clone(),
        stats: stats_of(fleet, node, timeout),
    })
}

fn stats_of(fleet: &Fleet, node: &FleetNode, timeout: Duration) -> Result<ServerStats, String> {
    let store = Store::connect(&node.address, client_config(fleet, timeout))
        .map_err(|e| dimstore::chain(&e).to_string())?;
    let stats = store
        .stats_of(&node.address)
        .map_err(|e| dimstore::chain(&e).to_string())?;
    if stats.node != node.name {
        return Err(format!(
            "{} is served by node `{}` (pid {}), not by this fleet's `{}`",
            node.address, stats.node, stats.pid, node.name
        ));
    }
    Ok(stats)
}

/// Runs `f` for every node on its own thread; results in node order.
fn for_each_node<T: Send>(fleet: &Fleet, f: impl Fn(&FleetNode) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = fleet
            .nodes
            .iter()
            .map(|node| scope.spawn(move || f(node)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The statuses as a table, with the reasons for down nodes below it.
pub fn render_table(statuses: &[NodeStatus]) -> String {
    let header = [
        "NODE",
        "ADDRESS",
        "PID",
        "STATE",
        "OBJECTS",
        "MEMORY",
        "REQUESTS",
        "TRANSPORTS",
        "UPTIME",
        "BINDING",
    ];
    let rows: Vec<[String; 10]> = statuses
        .iter()
        .map(|s| {
            let (state, objects, memory, requests, transports, uptime, binding) = match &s.stats {
                Ok(st) => (
                    "up".to_string(),
                    st.objects.to_string(),
                    format!("{} / {}", bytes(st.bytes_used), bytes(st.memory_limit)),
                    st.requests.to_string(),
                    transport_names(st),
                    uptime(st.uptime_ms),
                    st.binding.clone(),
                ),
                Err(_) => (
                    "DOWN".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ),
            };
            [
                s.node.name.clone(),
                s.node.address.clone(),
                s.node.pid.to_string(),
                state,
                objects,
                memory,
                requests,
                transports,
                uptime,
                binding,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let _ = if i == 0 {
                write!(text, "{cell:<w$}")
            } else {
                write!(text, "  {cell:<w$}")
            };
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    for s in statuses {
        if let Err(reason) = &s.stats {
            let _ = writeln!(out, "{} is DOWN: {reason}", s.node.name);
        }
    }
    let worst = worst_nodes(statuses);
    if !worst.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<14} {:<12} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "OP", "WORST NODE", "REQUESTS", "P50", "P99", "P999", "MAX"
        );
        for w in &worst {
            let _ = writeln!(
                out,
                "{:<14} {:<12} {:>10} {:>9} {:>9} {:>9} {:>9}",
                w.op,
                w.node,
                w.fleet_count,
                dimstore::format_nanos(w.stats.p50_ns),
                dimstore::format_nanos(w.stats.p99_ns),
                dimstore::format_nanos(w.stats.p999_ns),
                dimstore::format_nanos(w.stats.max_ns),
            );
        }
    }
    out
}

/// The node with the highest p99 service time for one operation.
#[derive(Debug, Clone)]
pub struct WorstNode {
    /// Operation.
    pub op: String,
    /// Node name.
    pub node: String,
    /// Its figures for the operation (its slowest transport's).
    pub stats: OpStats,
    /// Requests of this operation over the whole fleet.
    pub fleet_count: u64,
}

/// Per operation (data operations, not handshakes or stats), the node whose p99 service
/// time is highest (on its slowest transport), in the servers' reporting order.
pub fn worst_nodes(statuses: &[NodeStatus]) -> Vec<WorstNode> {
    let mut worst: Vec<WorstNode> = Vec::new();
    for s in statuses {
        let Ok(st) = &s.stats else { continue };
        for o in st.ops.iter().filter(|o| o.count > 0) {
            if matches!(o.op.as_str(), "hello" | "stats" | "shutdown") {
                continue;
            }
            match worst.iter_mut().find(|w| w.op == o.op) {
                Some(w) => {
                    w.fleet_count += o.count;
                    if o.p99_ns > w.stats.p99_ns {
                        w.node = s.node.name.clone();
                        w.stats = o.clone();
                    }
                }
                None => worst.push(WorstNode {
                    op: o.op.clone(),
                    node: s.node.name.clone(),
                    stats: o.clone(),
                    fleet_count: o.count,
                }),
            }
        }
    }
    worst
}

/// The server's transports, each with its open connections: `tcp(2),local(1)`.
fn transport_names(st: &ServerStats) -> String {
    if st.transports.is_empty() {
        return "-".into();
    }
    let names: Vec<String> = st
        .transports
        .iter()
        .map(|t| format!("{}({})", t.name, t.connections))
        .collect();
    names.join(",")
}

/// The statuses as JSON: `{fleet, launcher, up, down, nodes: [{name, address, pid, log, up,
/// stats | error}]}`.
pub fn to_json(fleet_path: &str, fleet: &Fleet, statuses: &[NodeStatus]) -> serde_json::Value {
    let up = statuses.iter().filter(|s| s.is_up()).count();
    let nodes: Vec<serde_json::Value> = statuses
        .iter()
        .map(|s| {
            let mut node = json!({
                "name": s.node.name,
                "address": s.node.address,
                "pid": s.node.pid,
                "log": s.node.log,
                "up": s.is_up(),
            });
            match &s.stats {
                Ok(st) => node["stats"] = stats_json(st),
                Err(e) => node["error"] = json!(e),
            }
            node
        })
        .collect();
    let worst: Vec<serde_json::Value> = worst_nodes(statuses)
        .iter()
        .map(|w| {
            json!({
                "op": w.op,
                "node": w.node,
                "transport": w.stats.transport,
                "fleet_count": w.fleet_count,
                "p50_ns": w.stats.p50_ns,
                "p99_ns": w.stats.p99_ns,
                "p999_ns": w.stats.p999_ns,
                "max_ns": w.stats.max_ns,
            })
        })
        .collect();
    json!({
        "fleet": fleet_path,
        "launcher": fleet.launcher,
        "up": up,
        "down": statuses.len() - up,
        "nodes": nodes,
        "worst": worst,
    })
}

fn stats_json(st: &ServerStats) -> serde_json::Value {
    json!({
        "pid": st.pid,
        "node": st.node,
        "advertised": st.advertised,
        "uptime_ms": st.uptime_ms,
        "objects": st.objects,
        "reserved": st.reserved,
        "bytes_used": st.bytes_used,
        "memory_limit": st.memory_limit,
        "arena_mapped": st.arena_mapped,
        "puts": st.puts,
        "gets": st.gets,
        "get_hits": st.get_hits,
        "evictions": st.evictions,
        "eviction_policy": st.pressure.policy,
        "spilled_bytes": st.pressure.spilled_bytes,
        "restores": st.pressure.restores,
        "spill_failures": st.pressure.spill_failures,
        "store_full": st.store_full,
        "requests": st.requests,
        "binding": st.binding,
        "ops": st
            .ops
            .iter()
            .map(|o| {
                json!({
                    "op": o.op,
                    "transport": o.transport,
                    "count": o.count,
                    "errors": o.errors,
                    "p50_ns": o.p50_ns,
                    "p99_ns": o.p99_ns,
                    "p999_ns": o.p999_ns,
                    "max_ns": o.max_ns,
                    "bytes": o.bytes,
                })
            })
            .collect::<Vec<_>>(),
        "transports": st
            .transports
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "connections": t.connections,
                    "bytes_served": t.bytes_served,
                    "one_sided_bytes": t.one_sided_bytes,
                    "refused_connections": t.refused_connections,
                })
            })
            .collect::<Vec<_>>(),
    })
}

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn uptime(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

// ---- down ------------------------------------------------------------------------------

/// What became of one node's server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// It accepted a shutdown request and is gone.
    Requested,
    /// It did not answer; being on this machine, it was sent SIGTERM and is gone.
    Signalled,
    /// It did not stop in time and was killed (SIGKILL).
    Killed,
    /// It was not running any more.
    AlreadyStopped,
    /// On another machine and unreachable: most likely stopped already, but unverifiable.
    Unreachable(String),
    /// It is still running.
    Failed(String),
}

impl StopOutcome {
    /// Whether the server is (as far as can be known) no longer running.
    pub fn is_stopped(&self) -> bool {
        !matches!(self, StopOutcome::Failed(_))
    }
}

/// How `down` proceeds.
#[derive(Debug, Clone, Copy)]
pub struct DownOptions {
    /// Timeout of each request to a server.
    pub timeout: Duration,
    /// How long servers get to exit before they are killed (local ones) or reported.
    pub wait: Duration,
}

/// Stops every node's server, in parallel: a shutdown request, or SIGTERM when the server
/// does not answer and runs on this machine; waits until each is gone, killing local ones
/// that outstay `options.wait`. Returns each node's outcome, in node order.
pub fn down(fleet: &Fleet, options: DownOptions) -> Vec<(String, StopOutcome)> {
    let host = dimstore_host::hostname();
    for_each_node(fleet, |node| {
        let local = fleet.launcher == "local" || node.name == host || is_loopback(&node.address);
        (node.name.clone(), stop_node(fleet, node, local, options))
    })
}

fn stop_node(fleet: &Fleet, node: &FleetNode, local: bool, options: DownOptions) -> StopOutcome {
    if local && !process::is_running(node.pid) {
        return StopOutcome::AlreadyStopped;
    }
    let asked = Store::connect(&node.address, client_config(fleet, options.timeout))
        .map_err(|e| dimstore::chain(&e).to_string())
        .and_then(|store| match store.shutdown_server(&node.address) {
            // The server may close the connection as it goes, before the reply is read.
            Ok(()) | Err(RequestError::ConnectionLost { .. }) => Ok(()),
            Err(e) => Err(dimstore::chain(&e).to_string()),
        });
    if !local {
        return match asked {
            Ok(()) if wait_refusing(&node.address, options.wait) => StopOutcome::Requested,
            Ok(()) => StopOutcome::Failed(format!(
                "still accepting connections {} after the shutdown request",
                humantime::format_duration(options.wait)
            )),
            Err(reason) => StopOutcome::Unreachable(reason),
        };
    }
    let outcome = match asked {
        Ok(()) => StopOutcome::Requested,
        // Only signal the pid if it still names a dimstore server (pids are reused).
        Err(_) if process::is_server(node.pid) => match process::send(node.pid, Signal::Term) {
            Ok(()) => StopOutcome::Signalled,
            Err(e) => return StopOutcome::Failed(format!("cannot signal pid {}: {e}", node.pid)),
        },
        Err(_) => return StopOutcome::AlreadyStopped,
    };
    if process::wait_gone(&[node.pid], options.wait).is_empty() {
        return outcome;
    }
    if process::is_server(node.pid) {
        let _ = process::send(node.pid, Signal::Kill);
    }
    if process::wait_gone(&[node.pid], Duration::from_secs(2)).is_empty() {
        StopOutcome::Killed
    } else {
        StopOutcome::Failed(format!("pid {} is still running", node.pid))
    }
}

fn socket_addr(address: &str) -> Option<SocketAddr> {
    address.to_socket_addrs().ok()?.next()
}

fn is_loopback(address: &str) -> bool {
    socket_addr(address).is_some_and(|a| a.ip().is_loopback())
}

/// Waits until `address` refuses connections; false if it still accepts after `wait`.
fn wait_refusing(address: &str, wait: Duration) -> bool {
    let Some(addr) = socket_addr(address) else {
        return true;
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use dimstore::fleet::FLEET_FORMAT;

    fn node(name: &str, address: &str) -> FleetNode {
        FleetNode {
            name: name.into(),
            address: address.into(),
            pid: 0,
            log: None,
        }
    }

    fn stats(node: &str) -> ServerStats {
        ServerStats {
            pid: 42,
            node: node.into(),
            advertised: "127.0.0.1:7000".into(),
            server_id: 1,
            uptime_ms: 61_500,
            objects: 3,
            reserved: 0,
            bytes_used: 3 << 20,
            memory_limit: 8 << 30,
            arena_mapped: 64 << 20,
            arena_segments: 1,
            puts: 3,
            gets: 5,
            get_hits: 5,
            evictions: 0,
            store_full: 0,
            requests: 12,
            transports: Vec::new(),
            binding: "none: --cpu-bind none".into(),
            ..ServerStats::default()
        }
    }

    fn op(op: &str, transport: &str, count: u64, p99_ns: u64) -> OpStats {
        OpStats {
            op: op.into(),
            transport: transport.into(),
            count,
            p99_ns,
            ..OpStats::default()
        }
    }

    #[test]
    fn worst_node_per_op_is_the_highest_p99() {
        let mut a = stats("node0");
        a.ops = vec![
            op("put", "tcp", 10, 5_000),
            op("get", "tcp", 4, 90_000),
            op("hello", "tcp", 1, 1 << 30),
        ];
        let mut b = stats("node1");
        b.ops = vec![
            op("put", "local", 3, 7_000),
            op("put", "tcp", 2, 1_000),
            op("get", "tcp", 1, 20_000),
        ];
        let statuses = vec![
            NodeStatus {
                node: node("node0", "a"),
                stats: Ok(a),
            },
            NodeStatus {
                node: node("node1", "b"),
                stats: Ok(b),
            },
            NodeStatus {
                node: node("node2", "c"),
                stats: Err("down".into()),
            },
        ];
        let worst = worst_nodes(&statuses);
        let summary: Vec<(&str, &str, &str, u64, u64)> = worst
            .iter()
            .map(|w| {
                (
                    w.op.as_str(),
                    w.node.as_str(),
                    w.stats.transport.as_str(),
                    w.stats.p99_ns,
                    w.fleet_count,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("put", "node1", "local", 7_000, 15),
                ("get", "node0", "tcp", 90_000, 5)
            ]
        );
        let table = render_table(&statuses);
        assert!(table.contains("WORST NODE"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("put") && l.contains("node1") && l.contains("7.0us")),
            "{table}"
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 << 30), "8.0 GiB");
    }

    #[test]
    fn table_shows_up_and_down_nodes() {
        let mut spilling = stats("node0");
        spilling.pressure.spilled_bytes = 7 << 20;
        spilling.transports = vec![dimstore_proto::TransportStats {
            name: "tcp".into(),
            refused_connections: 68,
            ..Default::default()
        }];
        let statuses = vec![
            NodeStatus {
                node: node("node0", "127.0.0.1:7000"),
                stats: Ok(spilling),
            },
            NodeStatus {
                node: node("node1", "127.0.0.1:7001"),
                stats: Err("connection refused".into()),
            },
        ];
        let table = render_table(&statuses);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NODE "), "{table}");
        assert!(lines[0].contains(" TRANSPORTS "), "{table}");
        assert!(lines[1].contains("up") && lines[1].contains("3.0 MiB / 8.0 GiB"));
        assert!(
            lines[1].contains("1m 1s") && lines[1].contains("12"),
            "{table}"
        );
        assert!(lines[1].ends_with("none: --cpu-bind none"), "{table}");
        assert!(lines[2].contains("DOWN"), "{table}");
        assert_eq!(lines[3], "node1 is DOWN: connection refused");

        let fleet = Fleet {
            format: FLEET_FORMAT,
            token: None,
            launcher: "local".into(),
            nodes: vec![],
        };
        let value = to_json("/f.json", &fleet, &statuses);
        assert_eq!(value["nodes"][0]["stats"]["spilled_bytes"], 7 << 20);
        assert_eq!(
            value["nodes"][0]["stats"]["transports"][0]["refused_connections"],
            68
        );
        assert_eq!(value["up"], 1);
        assert_eq!(value["down"], 1);
        assert_eq!(value["nodes"][0]["stats"]["objects"], 3);
        assert_eq!(value["nodes"][1]["error"], "connection refused");
        assert_eq!(value["nodes"][1]["up"], false);
    }

    #[test]
    fn unreachable_nodes_are_down_within_the_timeout() {
        // A port that was just free: connection refused at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = free.local_addr().expect("addr").to_string();
        drop(free);
        let fleet = Fleet {
            format: FLEET_FORMAT,
            token: Some("t".into()),
            launcher: "local".into(),
            nodes: vec![node("node0", &address), node("node1", &address)],
        };
        let started = Instant::now();
        let statuses = status(&fleet, Duration::from_secs(2));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(statuses.iter().all(|s| !s.is_up()));

        // Local, pid 0 never runs: already stopped.
        let outcomes = down(
            &fleet,
            DownOptions {
                timeout: Duration::from_secs(2),
                wait: Duration::from_secs(1),
            },
        );
        assert!(outcomes
            .iter()
            .all(|(_, o)| *o == StopOutcome::AlreadyStopped));
    }
}
