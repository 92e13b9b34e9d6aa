//! `dimstore`: put, get, check and evict objects from the command line.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dimstore::{ClientConfig, Key, PutOptions, SpawnPolicy, Store};

#[derive(Debug, Parser)]
#[command(
    name = "dimstore",
    version,
    about = "Put, get, check and evict objects in a dimstore fleet",
    long_about = "Put, get, check and evict objects in a dimstore fleet.\n\n\
        `put` stores a file on this node's server and prints its key; any node can then `get` \
        the key, which fetches the bytes straight from the owning server.\n\n\
        This node's server is found through the fleet file (DIMSTORE_FLEET, written by \
        dimstore-launch), an explicit DIMSTORE_SERVER address, or the runtime directory \
        (DIMSTORE_RUNTIME_DIR, the user's own, mode 0700); when none runs, one is spawned \
        (DIMSTORE_SPAWN=never to forbid): on loopback (DIMSTORE_LISTEN names an address or \
        interface to serve other nodes), with a per-user token kept in the runtime directory. \
        The token is sent only to servers of the fleet (fleet file, DIMSTORE_SERVER, this \
        node's server, DIMSTORE_TRUSTED, hosts of DIMSTORE_TRUSTED_HOSTS), never to another \
        owner a key names.\n\n\
        Object bytes from other nodes move by the transport DIMSTORE_TRANSPORT names: `auto` \
        (default: mapped memory for this node's server; on a node with RDMA hardware the first \
        one-sided transport the owner offers, libfabric first on Slingshot; else TCP), `tcp`, \
        `ucx` or `ofi` (one-sided reads of the owner's registered memory; an error if \
        unavailable). With UCX, requests travel as UCX active messages and the owner pulls \
        large puts (DIMSTORE_UCX_REQUESTS=tcp keeps requests on TCP); UCX honours its UCX_* \
        variables. libfabric uses DIMSTORE_OFI_PROVIDER (default `tcp;ofi_rxm`) and \
        DIMSTORE_OFI_NODE."
)]
struct Cli {
    /// Act as a client on this fleet node (index from 0, or name).
    #[arg(long, global = true, env = "DIMSTORE_NODE")]
    node: Option<String>,
    /// Fleet file written by dimstore-launch.
    #[arg(long, global = true, env = "DIMSTORE_FLEET")]
    fleet: Option<PathBuf>,
    /// Address of this node's server (skips discovery).
    #[arg(long, global = true, env = "DIMSTORE_SERVER")]
    server: Option<String>,
    /// Per-operation timeout, e.g. `30s`, `500ms`.
    #[arg(long, global = true, env = "DIMSTORE_TIMEOUT", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Never spawn a server for this node.
    #[arg(long, global = true)]
    no_spawn: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a file (`-` for stdin) on this node's server and print its key.
    Put {
        /// File to store.
        file: PathBuf,
        /// Evict the object this long after the put (e.g. `2s`, `1h`).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Fetch an object by key into a file (`-o -` or no `-o` for stdout).
    Get {
        /// The key, as printed by `put`.
        key: Key,
        /// Output file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Consume once: evict the object in the same step (of racing getters, exactly
        /// one gets it; the others fail with "evicted").
        #[arg(long)]
        evict: bool,
    },
    /// Print whether an object exists (exit status 0 if it does, 1 if not).
    Exists {
        /// The key.
        key: Key,
    },
    /// Remove an object from its owner.
    Evict {
        /// The key.
        key: Key,
    },
    /// Evict every object put with this owner tag on this node's server; prints how many.
    ReleaseOwner {
        /// The owner tag.
        owner: String,
    },
    /// Reserve a key for an object to be set later (`set`); gets wait for it.
    NewKey,
    /// Set a reserved key's object from a file (`-` for stdin); prints the completed key.
    Set {
        /// The reserved key, as printed by `new-key`.
        key: Key,
        /// File with the object's bytes.
        file: PathBuf,
    },
    /// Print this node's server statistics.
    Stat {
        /// As JSON.
        #[arg(long)]
        json: bool,
        /// Every node of the fleet, one report each.
        #[arg(long)]
        all: bool,
    },
    /// Ask this node's server to stop.
    Shutdown,
    /// Run a function of a WebAssembly module on the owner of the objects, over their
    /// bytes, and write its output (`-o -` or no `-o` for stdout).
    Invoke {
        /// Input objects, in the order the function sees them (one owner).
        #[arg(required = true)]
        keys: Vec<Key>,
        /// The module: WebAssembly (`.wasm`) or its text form (`.wat`).
        #[arg(long)]
        module: PathBuf,
        /// Exported function to call, of type `() -> i32`.
        #[arg(long)]
        function: String,
        /// File whose bytes the function reads with `read_arg`.
        #[arg(long)]
        arg_file: Option<PathBuf>,
        /// Store the output as a new object on the owner and print its key instead.
        #[arg(long, conflicts_with = "output")]
        to_key: bool,
        /// Output file.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        // The reader went away (`dimstore stat | head -1`): nothing left to tell anyone.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed too.
            let _ = writeln!(std::io::stderr(), "dimstore: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Whether `e` is a write to a pipe whose reader has closed it (Rust ignores SIGPIPE, so
/// such a write fails with `EPIPE` instead of ending the process).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints a line on stdout, returning the error (`println!` panics on a closed pipe).
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = ClientConfig::from_env().map_err(anyhow::Error::msg)?;
    config.node = cli.node.or(config.node);
    config.fleet = cli.fleet.or(config.fleet);
    config.server = cli.server.or(config.server);
    config.timeout = cli.timeout.unwrap_or(config.timeout);
    if cli.no_spawn {
        config.spawn = SpawnPolicy::Never;
    }
    // Input files are read before any server is located or spawned: a missing file is an
    // error of its own, not a reason to start a server.
    let input = match &cli.command {
        Command::Put { file, .. } | Command::Set { file, .. } => Some(read_input(file)?),
        _ => None,
    };
    // Reading by key needs no server on this node: do not locate or spawn one.
    let by_key_only = matches!(
        cli.command,
        Command::Get { .. }
            | Command::Exists { .. }
            | Command::Evict { .. }
            | Command::Set { .. }
            | Command::Invoke { .. }
    );
    let store = if by_key_only && config.fleet.is_none() && config.server.is_none() {
        Store::without_local(config.clone())
    } else {
        Store::with_config(config.clone())?
    };
    match cli.command {
        Command::Put { ttl, .. } => {
            let options = PutOptions {
                ttl,
                ..PutOptions::default()
            };
            let key = store.put_with(&input.unwrap_or_default(), &options)?;
            out!("{key}")?;
        }
        Command::Get { key, output, evict } => {
            let bytes = if evict {
                store.get_and_evict(&key)?
            } else {
                store.get(&key)?
            };
            write_output(output.as_deref(), &bytes)?;
        }
        Command::ReleaseOwner { owner } => println!("{}", store.release_owner(&owner)?),
        Command::Exists { key } => {
            let present = store.exists(&key)?;
            out!("{present}")?;
            return Ok(if present {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Evict { key } => {
            let removed = store.evict(&key)?;
            out!("{}", if removed { "evicted" } else { "absent" })?;
        }
        Command::NewKey => out!("{}", store.new_key()?)?,
        Command::Set { key, .. } => {
            out!("{}", store.set(&key, &input.unwrap_or_default())?)?;
        }
        Command::Stat { json, all } => stat(&store, &config, json, all)?,
        Command::Shutdown => {
            let address = store.local_address().context("no server for this node")?;
            store.shutdown_server(address)?;
            out!("stopping {address}")?;
        }
        Command::Invoke {
            keys,
            module,
            function,
            arg_file,
            to_key,
            output,
        } => {
            // Binary modules pass through unchanged; text is assembled.
            let wasm = wat::parse_file(&module)
                .with_context(|| format!("reading module {}", module.display()))?;
            let arg = match &arg_file {
                Some(path) => read_input(path)?,
                None => Vec::new(),
            };
            if to_key {
                println!("{}", store.invoke_to_key(&keys, &wasm, &function, &arg)?);
            } else {
                let bytes = store.invoke(&keys, &wasm, &function, &arg)?;
                write_output(output.as_deref(), &bytes)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn stat(store: &Store, config: &ClientConfig, json: bool, all: bool) -> anyhow::Result<()> {
    let reports = if all {
        let Some(path) = &config.fleet else {
            bail!("--all needs a fleet file (DIMSTORE_FLEET or --fleet)");
        };
        let fleet = dimstore::fleet::Fleet::read(path)
            .with_context(|| format!("reading {}", path.display()))?;
        fleet
            .nodes
            .iter()
            .map(|n| store.stats_of(&n.address))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        vec![store.stats()?]
    };
    for s in &reports {
        if json {
            out!("{}", stats_json(s))?;
            continue;
        }
        out!(
            "node {} at {} (pid {}): {} objects, {} reserved, {} / {} bytes, {} requests, up {:.1}s",
            s.node,
            s.advertised,
            s.pid,
            s.objects,
            s.reserved,
            s.bytes_used,
            s.memory_limit,
            s.requests,
            s.uptime_ms as f64 / 1000.0
        )?;
        out!("  binding: {}", s.binding)?;
        if let Some(line) = pressure_line(&s.pressure) {
            out!("  {line}")?;
        }
        let f = &s.functions;
        if f.invocations > 0 {
            out!(
                "  functions: {} invocations ({} failed, {} running), {} modules received, {} cache hits, {} modules cached ({} bytes)",
                f.invocations, f.failures, f.running, f.modules_received, f.cache_hits, f.cached_modules, f.cached_bytes
            )?;
        }
        for t in &s.transports {
            out!(
                "  {}: {} connections ({} refused), {} bytes served ({} one-sided, {} registrations), {} bytes pulled",
                t.name, t.connections, t.refused_connections, t.bytes_served, t.one_sided_bytes, t.registrations, t.pulled_bytes
            )?;
        }
        print!("{}", op_table(&s.ops));
    }
    Ok(())
}

/// One line on memory pressure (eviction policy, removals by cause, spilling), or `None`
/// when the server has seen none.
fn pressure_line(p: &dimstore_proto::PressureStats) -> Option<String> {
    let removed = p.policy_evictions + p.expired + p.owner_evictions + p.consumed;
    let spilling = p.spill_written + p.restores + p.spill_failures > 0;
    if p.policy == "none" && removed == 0 && !spilling && p.with_lifetime == 0 {
        return None;
    }
    let mut line = format!(
        "pressure: eviction {}; removed {} by policy, {} expired, {} with their owner, {} consumed; {} with a lifetime",
        p.policy, p.policy_evictions, p.expired, p.owner_evictions, p.consumed, p.with_lifetime
    );
    if spilling {
        line.push_str(&format!(
            "; spilled now {} bytes in {} objects ({} bytes of kept files), {} restores, {} spilled again with no write, {} failed spills, writes {:.0} MB/s, reads {:.0} MB/s",
            p.spilled_bytes,
            p.spilled_objects,
            p.spill_kept_bytes,
            p.restores,
            p.respills,
            p.spill_failures,
            mb_per_s(p.spill_written, p.spill_write_ns),
            mb_per_s(p.spill_read, p.spill_read_ns),
        ));
    }
    Some(line)
}

/// Service time per operation and transport: count, errors, p50/p99/p999/max, bytes.
fn op_table(ops: &[dimstore::OpStats]) -> String {
    use std::fmt::Write as _;
    if ops.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "  {:<14} {:<6} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>12}\n",
        "op", "via", "count", "errors", "p50", "p99", "p999", "max", "bytes"
    );
    for o in ops {
        let _ = writeln!(
            out,
            "  {:<14} {:<6} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9} {:>12}",
            o.op,
            o.transport,
            o.count,
            o.errors,
            dimstore::format_nanos(o.p50_ns),
            dimstore::format_nanos(o.p99_ns),
            dimstore::format_nanos(o.p999_ns),
            dimstore::format_nanos(o.max_ns),
            o.bytes
        );
    }
    out
}

/// One JSON object per server: every counter, and per-transport counters.
fn stats_json(s: &dimstore::ServerStats) -> serde_json::Value {
    let transports: Vec<_> = s
        .transports
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "connections": t.connections,
                "refused_connections": t.refused_connections,
                "bytes_served": t.bytes_served,
                "one_sided_bytes": t.one_sided_bytes,
                "registrations": t.registrations,
                "pulled_bytes": t.pulled_bytes,
            })
        })
        .collect();
    let functions = serde_json::json!({
        "invocations": s.functions.invocations,
        "failures": s.functions.failures,
        "modules_received": s.functions.modules_received,
        "cache_hits": s.functions.cache_hits,
        "cached_modules": s.functions.cached_modules,
        "cached_bytes": s.functions.cached_bytes,
        "running": s.functions.running,
    });
    serde_json::json!({
        "pid": s.pid,
        "node": s.node,
        "address": s.advertised,
        "server_id": s.server_id,
        "uptime_ms": s.uptime_ms,
        "objects": s.objects,
        "reserved": s.reserved,
        "bytes_used": s.bytes_used,
        "memory_limit": s.memory_limit,
        "arena_mapped": s.arena_mapped,
        "arena_segments": s.arena_segments,
        "puts": s.puts,
        "gets": s.gets,
        "get_hits": s.get_hits,
        "evictions": s.evictions,
        "eviction_policy": s.pressure.policy,
        "policy_evictions": s.pressure.policy_evictions,
        "expired": s.pressure.expired,
        "owner_evictions": s.pressure.owner_evictions,
        "consumed": s.pressure.consumed,
        "with_lifetime": s.pressure.with_lifetime,
        "spilled_bytes": s.pressure.spilled_bytes,
        "spilled_objects": s.pressure.spilled_objects,
        "spill_kept_bytes": s.pressure.spill_kept_bytes,
        "respills": s.pressure.respills,
        "restores": s.pressure.restores,
        "spill_failures": s.pressure.spill_failures,
        "spill_write_mb_s": mb_per_s(s.pressure.spill_written, s.pressure.spill_write_ns),
        "spill_read_mb_s": mb_per_s(s.pressure.spill_read, s.pressure.spill_read_ns),
        "store_full": s.store_full,
        "requests": s.requests,
        "mapped_gets": s.mapped_gets,
        "copied_local_gets": s.copied_local_gets,
        "leases": s.leases,
        "expired_leases": s.expired_leases,
        "reservations": s.reservations,
        "transports": transports,
        "binding": s.binding,
        "functions": functions,
        "ops": s.ops.iter().map(op_json).collect::<Vec<_>>(),
    })
}

/// One operation's service time (nanoseconds) and bytes.
fn op_json(o: &dimstore::OpStats) -> serde_json::Value {
    serde_json::json!({
        "op": o.op,
        "transport": o.transport,
        "count": o.count,
        "errors": o.errors,
        "sum_ns": o.sum_ns,
        "p50_ns": o.p50_ns,
        "p90_ns": o.p90_ns,
        "p99_ns": o.p99_ns,
        "p999_ns": o.p999_ns,
        "max_ns": o.max_ns,
        "bytes": o.bytes,
        "bytes_p50": o.bytes_p50,
        "bytes_p99": o.bytes_p99,
        "bytes_max": o.bytes_max,
    })
}

/// Throughput in MB/s of `bytes` moved in `ns` nanoseconds (0 when nothing moved).
fn mb_per_s(bytes: u64, ns: u64) -> f64 {
    if ns == 0 {
        return 0.0;
    }
    bytes as f64 / 1e6 / (ns as f64 / 1e9)
}

fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn write_output(path: Option<&std::path::Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match path {
        None => std::io::stdout().lock().write_all(bytes)?,
        Some(p) if p.as_os_str() == "-" => std::io::stdout().lock().write_all(bytes)?,
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))?,
    }
    Ok(())
}
