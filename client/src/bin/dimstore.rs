//! `dimstore`: put, get, check and evict objects from the command line.

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
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dimstore: {e:#}");
            ExitCode::from(2)
        }
    }
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
    // Reading by key needs no server on this node: do not locate or spawn one.
    let by_key_only = matches!(
        cli.command,
        Command::Get { .. } | Command::Exists { .. } | Command::Evict { .. } | Command::Set { .. }
    );
    let store = if by_key_only && config.fleet.is_none() && config.server.is_none() {
        Store::without_local(config.clone())
    } else {
        Store::with_config(config.clone())?
    };
    match cli.command {
        Command::Put { file, ttl } => {
            let bytes = read_input(&file)?;
            let options = PutOptions {
                ttl,
                ..PutOptions::default()
            };
            let key = store.put_with(&bytes, &options)?;
            println!("{key}");
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
            println!("{present}");
            return Ok(if present {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Evict { key } => {
            let removed = store.evict(&key)?;
            println!("{}", if removed { "evicted" } else { "absent" });
        }
        Command::NewKey => println!("{}", store.new_key()?),
        Command::Set { key, file } => {
            let bytes = read_input(&file)?;
            println!("{}", store.set(&key, &bytes)?);
        }
        Command::Stat { json, all } => stat(&store, &config, json, all)?,
        Command::Shutdown => {
            let address = store.local_address().context("no server for this node")?;
            store.shutdown_server(address)?;
            println!("stopping {address}");
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
            println!("{}", stats_json(s));
            continue;
        }
        println!(
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
        );
        println!("  binding: {}", s.binding);
        for t in &s.transports {
            println!(
                "  {}: {} connections, {} bytes served ({} one-sided, {} registrations), {} bytes pulled",
                t.name, t.connections, t.bytes_served, t.one_sided_bytes, t.registrations, t.pulled_bytes
            );
        }
    }
    Ok(())
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
                "bytes_served": t.bytes_served,
                "one_sided_bytes": t.one_sided_bytes,
                "registrations": t.registrations,
                "pulled_bytes": t.pulled_bytes,
            })
        })
        .collect();
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
