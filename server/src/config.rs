//! Server configuration: command-line flags, `DIMSTORE_*` environment variables and an
//! optional TOML file, in that order of precedence, over built-in defaults.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use dimstore_host::hostname;
use serde::Deserialize;

use crate::eviction::Policy;
use crate::functions::FunctionConfig;
use crate::placement::CpuBind;

/// Connections not authenticated yet a server holds at once unless told otherwise.
pub const DEFAULT_MAX_PENDING_CONNECTIONS: usize = 256;

/// Command line of `dimstore-server`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "dimstore-server",
    version,
    about = "The dimstore per-node in-memory object server",
    long_about = "The dimstore per-node in-memory object server.\n\n\
        Run one per compute node (srun --ntasks-per-node=1, mpiexec --ppn 1, dimstore-launch) or \
        let the first client on a node spawn it. Clients put objects here and receive keys; any \
        node resolves a key by asking this server.\n\n\
        Every option can also be set by its DIMSTORE_* environment variable or in the TOML file \
        given by --config (keys as the long option names, with underscores)."
)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DIMSTORE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`HOST:PORT`, port 0 picks a free one).
    /// [default: 0.0.0.0:0]
    #[arg(long, env = "DIMSTORE_LISTEN")]
    pub listen: Option<String>,
    /// Address other nodes reach this server at, named in every key.
    /// [default: the listen address; on 0.0.0.0, the host's first routable address (its
    /// name's, else an up interface's), never loopback]
    #[arg(long, env = "DIMSTORE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Node identity (decides "same node" for clients). [default: the hostname]
    #[arg(long = "node", env = "DIMSTORE_NODE_NAME")]
    pub node: Option<String>,
    /// Most object memory to use, e.g. `512MiB`, `8GiB`; puts beyond it fail with StoreFull.
    /// [default: half of physical memory]
    #[arg(long, env = "DIMSTORE_MEMORY_LIMIT")]
    pub memory_limit: Option<ByteSize>,
    /// Size of the shared-memory segments object memory grows by. [default: 64MiB]
    #[arg(long, env = "DIMSTORE_SEGMENT_SIZE")]
    pub segment_size: Option<ByteSize>,
    /// Fleet token every client must present.
    #[arg(long, env = "DIMSTORE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write `{address, pid, node, ...}` as JSON here once ready; removed on exit.
    #[arg(long, env = "DIMSTORE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// Unix socket for same-node clients (mapped, zero-copy access); `none` disables it.
    /// [default: $DIMSTORE_RUNTIME_DIR/<node>/local-<id>.sock]
    #[arg(long, env = "DIMSTORE_LOCAL_SOCKET")]
    pub local_socket: Option<String>,
    /// Directory for the default local socket. [default: $XDG_RUNTIME_DIR/dimstore or
    /// /tmp/dimstore-<uid>]
    #[arg(long, env = "DIMSTORE_RUNTIME_DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Exit after this long (e.g. `10m`) with no connections and no objects stored.
    #[arg(long, env = "DIMSTORE_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose frame stops flowing for this long mid-way (e.g. a put whose
    /// payload stalls), that stops taking its replies for this long, or that has not
    /// authenticated (Hello) this long after connecting, freeing what it reserved or
    /// pinned. [default: 30s]
    #[arg(long, env = "DIMSTORE_STALL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// Most connections that have not authenticated (no Hello yet), on TCP and the local
    /// socket together. Each holds a file descriptor until its Hello or the stall timeout,
    /// and any peer can open them, so a flood of them could take every descriptor the
    /// server has: beyond this bound each new connection evicts the oldest one still
    /// waiting for its Hello (counted as refused_connections in stats), so silent peers
    /// cannot lock new clients out. Authenticated connections do not count against it;
    /// all connections together are bounded by the descriptor limit (the soft
    /// RLIMIT_NOFILE, raised to the hard one at start) less a reserve for segments, spill
    /// files and one-sided transports. [default: 256]
    #[arg(long, env = "DIMSTORE_MAX_PENDING_CONNECTIONS", value_name = "N")]
    pub max_pending_connections: Option<usize>,
    /// Exit when the process that started this server exits (a launcher's `run`), even if
    /// that process was killed without a chance to stop it.
    #[arg(long, env = "DIMSTORE_EXIT_WITH_PARENT")]
    pub exit_with_parent: bool,
    /// One-sided (RDMA) transports to export object memory on: `auto` (each of this build's,
    /// ucx and ofi by default, that starts here; the others are logged and skipped), `none`,
    /// or a list like `ucx,ofi` (each must start, or the server exits naming why; a name
    /// this build lacks is an error naming those it has). Both listen only on the
    /// control interface (the listen address's; when listening on 0.0.0.0, the advertised
    /// address's) unless UCX_NET_DEVICES or DIMSTORE_OFI_NODE names another. UCX reads its
    /// own UCX_* variables; libfabric's provider comes from DIMSTORE_OFI_PROVIDER (default
    /// `tcp;ofi_rxm`). [default: auto]
    #[arg(long, env = "DIMSTORE_ONE_SIDED", value_name = "auto|none|LIST")]
    pub one_sided: Option<OneSided>,
    /// How long a one-sided read may pin its object (e.g. `10m`): a client that hangs with
    /// its connection open loses its leases then, and objects evicted meanwhile are freed.
    /// Keep it above clients' DIMSTORE_TIMEOUT. [default: 10m]
    #[arg(long, env = "DIMSTORE_LEASE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub lease_timeout: Option<Duration>,
    /// How long a key reserved with new_key waits to be set (e.g. `2h`): then it is
    /// dropped and gets waiting on it answer NotFound. Each unset key holds 128 bytes of
    /// the memory limit meanwhile. [default: 1h]
    #[arg(long, env = "DIMSTORE_RESERVED_TTL", value_parser = humantime::parse_duration)]
    pub reserved_ttl: Option<Duration>,
    /// When a put does not fit the memory limit: `none` refuses it (StoreFull); `lru`,
    /// `lfu`, `fifo` evict cold objects (least recently read, least often read, oldest)
    /// until it fits. Objects being read, pinned by a lease, or deferred are never evicted;
    /// a get of an evicted object answers Evicted. [default: none]
    #[arg(long, env = "DIMSTORE_EVICTION", value_enum)]
    pub eviction: Option<Policy>,
    /// Directory (node-local disk) where cold objects are written when memory is full, and
    /// read back on their next get; each server uses a subdirectory of its own, removed at
    /// exit, and removes those of dead servers at start. [default: no spilling]
    #[arg(long, env = "DIMSTORE_SPILL_DIR")]
    pub spill_dir: Option<PathBuf>,
    /// Most bytes spilled at once, e.g. `100GiB`. [default: as much as the disk holds]
    #[arg(long, env = "DIMSTORE_SPILL_LIMIT")]
    pub spill_limit: Option<ByteSize>,
    /// Worker threads serving connections. [default: 2]
    #[arg(long, env = "DIMSTORE_THREADS")]
    pub threads: Option<usize>,
    /// Log filter (tracing `EnvFilter` syntax). [default: info]
    #[arg(long, env = "DIMSTORE_LOG")]
    pub log: Option<String>,
    /// CPUs the server's threads run on: `none`, `auto` (near the NIC in use, when hwloc
    /// reports its locality; else nothing) or a list like `0-3,8`. [default: auto]
    #[arg(long, env = "DIMSTORE_CPU_BIND", value_name = "none|auto|LIST")]
    pub cpu_bind: Option<CpuBind>,
    /// NUMA node (OS index) for the server's memory, and its CPUs with `--cpu-bind auto`.
    /// [default: the NIC's node under auto]
    #[arg(long, env = "DIMSTORE_NUMA", value_name = "N")]
    pub numa: Option<u32>,
    /// Serve `GET /metrics` (OpenMetrics text) on this address, e.g. `127.0.0.1:9464`.
    /// Unauthenticated (it shows counts, sizes and latencies, never keys or data): bind it
    /// to loopback or a monitoring network. [default: off]
    #[arg(long, env = "DIMSTORE_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Run clients' WebAssembly functions over their objects (`dimstore invoke`): `on`,
    /// `off`, or `auto` (on when the server requires a token, off for a tokenless one).
    /// [default: auto]
    #[arg(long, env = "DIMSTORE_FUNCTIONS", value_name = "auto|on|off")]
    pub functions: Option<Switch>,
    /// Deadline of one function call (e.g. `30s`); a call running longer is stopped with
    /// FunctionDeadline. [default: 60s]
    #[arg(long, env = "DIMSTORE_FUNCTION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub function_timeout: Option<Duration>,
    /// Most linear memory of one function call's sandbox. [default: 256MiB]
    #[arg(long, env = "DIMSTORE_FUNCTION_MEMORY")]
    pub function_memory: Option<ByteSize>,
    /// Most output of one function call. [default: 256MiB]
    #[arg(long, env = "DIMSTORE_FUNCTION_OUTPUT")]
    pub function_output: Option<ByteSize>,
    /// Function calls running at once; more wait their turn. [default: the CPU count]
    #[arg(long, env = "DIMSTORE_FUNCTION_CONCURRENCY")]
    pub function_concurrency: Option<usize>,
    /// Most bytes of WebAssembly modules kept compiled. [default: 256MiB]
    #[arg(long, env = "DIMSTORE_FUNCTION_CACHE")]
    pub function_cache: Option<ByteSize>,
}

/// An on/off setting whose default depends on other settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    /// Decided by the other settings.
    Auto,
    /// On.
    On,
    /// Off.
    Off,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    advertise: Option<String>,
    node: Option<String>,
    memory_limit: Option<ByteSize>,
    segment_size: Option<ByteSize>,
    token: Option<String>,
    ready_file: Option<PathBuf>,
    local_socket: Option<String>,
    runtime_dir: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    stall_timeout: Option<Duration>,
    max_pending_connections: Option<usize>,
    threads: Option<usize>,
    one_sided: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    lease_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    reserved_ttl: Option<Duration>,
    eviction: Option<Policy>,
    spill_dir: Option<PathBuf>,
    spill_limit: Option<ByteSize>,
    log: Option<String>,
    cpu_bind: Option<String>,
    numa: Option<u32>,
    metrics_listen: Option<String>,
    functions: Option<Switch>,
    #[serde(default, with = "humantime_serde_opt")]
    function_timeout: Option<Duration>,
    function_memory: Option<ByteSize>,
    function_output: Option<ByteSize>,
    function_concurrency: Option<usize>,
    function_cache: Option<ByteSize>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Which one-sided transports a server exports its memory on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OneSided {
    /// Every one that starts.
    Auto,
    /// None.
    None,
    /// These, each required.
    Required(Vec<String>),
}

impl std::str::FromStr for OneSided {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(OneSided::Auto),
            "none" | "" => Ok(OneSided::None),
            list => {
                let names: Vec<String> = list.split(',').map(|n| n.trim().to_string()).collect();
                match names.iter().find(|n| dimstore_backends::find(n).is_none()) {
                    Some(bad) => Err(format!(
                        "unknown one-sided transport {bad:?} (expected {}; {})",
                        match dimstore_backends::names().as_slice() {
                            [] => "auto or none".to_owned(),
                            names => format!("auto, none, or a list of {}", names.join(", ")),
                        },
                        dimstore_backends::this_build()
                    )),
                    None => Ok(OneSided::Required(names)),
                }
            }
        }
    }
}

/// A fully resolved server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Advertised control address (`None`: derive from the bound address).
    pub advertise: Option<String>,
    /// Node identity.
    pub node: String,
    /// Object memory limit in bytes.
    pub memory_limit: u64,
    /// Segment size in bytes.
    pub segment_size: u64,
    /// Fleet token.
    pub token: Option<String>,
    /// Ready file path.
    pub ready_file: Option<PathBuf>,
    /// Where same-node clients connect (`None`: same-node access disabled). A path
    /// containing `{id}` gets the server instance id substituted.
    pub local_socket: Option<PathBuf>,
    /// Idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Stall timeout mid-frame.
    pub stall_timeout: Duration,
    /// Most connections not authenticated yet, every listener together.
    pub max_pending_connections: usize,
    /// Exit when the parent process exits.
    pub exit_with_parent: bool,
    /// One-sided transports to export memory on.
    pub one_sided: OneSided,
    /// Longest a one-sided read's lease lasts.
    pub lease_timeout: Duration,
    /// How long a reserved key waits to be set.
    pub reserved_ttl: Duration,
    /// What a put that does not fit evicts.
    pub eviction: Policy,
    /// Where cold objects are spilled, if anywhere.
    pub spill_dir: Option<PathBuf>,
    /// Most bytes spilled at once.
    pub spill_limit: u64,
    /// Worker threads.
    pub threads: usize,
    /// Log filter.
    pub log: String,
    /// CPU binding of the server's threads.
    pub cpu_bind: CpuBind,
    /// NUMA node named by the user.
    pub numa: Option<u32>,
    /// Address of the OpenMetrics endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Limits of the function sandbox; `None`: functions are off.
    pub functions: Option<FunctionConfig>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The TOML file is malformed.
    #[error("invalid config file {path}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// The listen address does not parse or resolve.
    #[error("listen address `{0}` is not HOST:PORT")]
    Listen(String),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Resolves flags and environment (already in `args`) over the file over defaults.
    pub fn resolve(args: Args) -> Result<ServerConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen_text = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "0.0.0.0:0".into());
        let listen = listen_text
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ConfigError::Listen(listen_text.clone()))?;
        let memory_limit = args
            .memory_limit
            .or(file.memory_limit)
            .map_or_else(default_memory_limit, |b| b.as_u64());
        let segment_size = args
            .segment_size
            .or(file.segment_size)
            .map_or(64 << 20, |b| b.as_u64());
        if memory_limit == 0 || segment_size < 4096 {
            return Err(ConfigError::Invalid(
                "memory limit must be > 0 and segment size >= 4KiB".into(),
            ));
        }
        let cpu_bind = match (args.cpu_bind, file.cpu_bind) {
            (Some(bind), _) => bind,
            (None, Some(text)) => text
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("cpu_bind in the config file: {e}")))?,
            (None, None) => CpuBind::Auto,
        };
        let threads = args.threads.or(file.threads).unwrap_or(2);
        if threads == 0 {
            return Err(ConfigError::Invalid("threads must be >= 1".into()));
        }
        let max_pending_connections = args
            .max_pending_connections
            .or(file.max_pending_connections)
            .unwrap_or(DEFAULT_MAX_PENDING_CONNECTIONS);
        if max_pending_connections == 0 {
            return Err(ConfigError::Invalid(
                "max pending connections must be >= 1".into(),
            ));
        }
        let node = args.node.or(file.node).unwrap_or_else(hostname);
        let metrics_listen = match args.metrics_listen.or(file.metrics_listen) {
            Some(text) => Some(
                text.to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!("metrics address `{text}` is not HOST:PORT"))
                    })?,
            ),
            None => None,
        };
        let token = args.token.or(file.token).filter(|t| !t.is_empty());
        let functions_on = match args.functions.or(file.functions).unwrap_or(Switch::Auto) {
            Switch::On => true,
            Switch::Off => false,
            Switch::Auto => token.is_some(),
        };
        let defaults = FunctionConfig::default();
        let functions = FunctionConfig {
            timeout: args
                .function_timeout
                .or(file.function_timeout)
                .unwrap_or(defaults.timeout),
            memory: args
                .function_memory
                .or(file.function_memory)
                .map_or(defaults.memory, |b| b.as_u64()),
            output: args
                .function_output
                .or(file.function_output)
                .map_or(defaults.output, |b| b.as_u64()),
            concurrency: args
                .function_concurrency
                .or(file.function_concurrency)
                .unwrap_or(defaults.concurrency),
            cache: args
                .function_cache
                .or(file.function_cache)
                .map_or(defaults.cache, |b| b.as_u64()),
        };
        if functions.concurrency == 0 || functions.timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "function concurrency and timeout must be > 0".into(),
            ));
        }
        Ok(ServerConfig {
            listen,
            advertise: args.advertise.or(file.advertise),
            node: node.clone(),
            memory_limit,
            segment_size,
            token,
            ready_file: args.ready_file.or(file.ready_file),
            local_socket: match args.local_socket.or(file.local_socket).as_deref() {
                Some("none") => None,
                Some(path) => Some(PathBuf::from(path)),
                None => Some(
                    args.runtime_dir
                        .or(file.runtime_dir)
                        .unwrap_or_else(default_runtime_dir)
                        .join(&node)
                        .join("local-{id}.sock"),
                ),
            },
            idle_timeout: args.idle_timeout.or(file.idle_timeout),
            stall_timeout: args
                .stall_timeout
                .or(file.stall_timeout)
                .unwrap_or(Duration::from_secs(30)),
            max_pending_connections,
            exit_with_parent: args.exit_with_parent,
            threads,
            one_sided: match args.one_sided {
                Some(o) => o,
                None => file
                    .one_sided
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(ConfigError::Invalid)?
                    .unwrap_or(OneSided::Auto),
            },
            lease_timeout: args
                .lease_timeout
                .or(file.lease_timeout)
                .unwrap_or(Duration::from_secs(600)),
            reserved_ttl: args
                .reserved_ttl
                .or(file.reserved_ttl)
                .unwrap_or(Duration::from_secs(3600)),
            eviction: args.eviction.or(file.eviction).unwrap_or_default(),
            spill_dir: args.spill_dir.or(file.spill_dir),
            spill_limit: args
                .spill_limit
                .or(file.spill_limit)
                .map_or(u64::MAX, |b| b.as_u64()),
            log: args.log.or(file.log).unwrap_or_else(|| "info".into()),
            cpu_bind,
            numa: args.numa.or(file.numa),
            metrics_listen,
            functions: functions_on.then_some(functions),
        })
    }

    /// The control address to advertise once bound to `bound`: `--advertise`, else the
    /// bound address; listening on every address (`0.0.0.0`, `::`), the first routable
    /// address of this host (see [`routable_ip`]), never loopback, which other nodes cannot
    /// reach: an error when the host has none.
    pub fn advertised_address(&self, bound: SocketAddr) -> Result<String, ConfigError> {
        if let Some(a) = &self.advertise {
            return Ok(a.clone());
        }
        let ip = if bound.ip().is_unspecified() {
            routable_ip().ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "listening on {bound} to serve other nodes, but neither the host name \
                     `{}` nor any interface that is up has a non-loopback address to \
                     advertise: name one with --advertise (DIMSTORE_ADVERTISE) or listen on \
                     an interface's address",
                    hostname()
                ))
            })?
        } else {
            bound.ip()
        };
        Ok(SocketAddr::new(ip, bound.port()).to_string())
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source,
    })
}

/// `$XDG_RUNTIME_DIR/dimstore`, else `/tmp/dimstore-<uid>` (the client's default too).
fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("dimstore"),
        _ => std::env::temp_dir().join(format!("dimstore-{}", rustix::process::getuid().as_raw())),
    }
}

/// Half of physical memory.
fn default_memory_limit() -> u64 {
    let info = rustix::system::sysinfo();
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) / 2
}

/// The address other nodes reach this host at: the first non-loopback IPv4 address the host
/// name resolves to, else the first non-loopback, non-link-local address (IPv4 first) of an
/// interface that is up. `None` when there is none (a host name mapped to 127.0.x.1 in
/// `/etc/hosts` is common, so the name alone is not enough).
pub fn routable_ip() -> Option<IpAddr> {
    let by_name = (hostname(), 0).to_socket_addrs().ok().and_then(|addrs| {
        addrs
            .map(|a| a.ip())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
    });
    by_name.or_else(|| {
        let interfaces = if_addrs::get_if_addrs().ok()?;
        let up: Vec<IpAddr> = interfaces
            .iter()
            .filter(|i| {
                // Dummy and tunnel interfaces report an unknown operational state when up.
                matches!(
                    i.oper_status,
                    if_addrs::IfOperStatus::Up | if_addrs::IfOperStatus::Unknown
                ) && !i.is_loopback()
                    && !i.is_link_local()
            })
            .map(|i| i.ip())
            .collect();
        up.iter().find(|ip| ip.is_ipv4()).or(up.first()).copied()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sided_lists_name_this_builds_backends() {
        assert_eq!("auto".parse(), Ok(OneSided::Auto));
        assert_eq!(" none ".parse(), Ok(OneSided::None));
        let every = dimstore_backends::names();
        if !every.is_empty() {
            assert_eq!(
                every.join(", ").parse(),
                Ok(OneSided::Required(
                    every.iter().map(|n| n.to_string()).collect()
                ))
            );
        }
        let with_unknown: Vec<&str> = every.iter().copied().chain(["carrier-pigeon"]).collect();
        let error = with_unknown
            .join(",")
            .parse::<OneSided>()
            .expect_err("unknown name");
        assert!(error.contains("\"carrier-pigeon\""), "{error}");
        assert!(error.contains(&dimstore_backends::this_build()), "{error}");
    }

    #[cfg(not(feature = "ucx"))]
    #[test]
    fn a_backend_compiled_out_is_refused_naming_what_the_build_has() {
        let error = "ucx".parse::<OneSided>().expect_err("not in this build");
        assert!(error.contains(&dimstore_backends::this_build()), "{error}");
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7000\"\nmemory_limit = \"1GiB\"\nidle_timeout = \"5m\"\nnode = \"from-file\"\n",
        )
        .expect("write");
        let args = Args {
            config: Some(path),
            node: Some("from-flag".into()),
            ..Default::default()
        };
        let c = ServerConfig::resolve(args).expect("valid");
        assert_eq!(
            c.listen,
            "127.0.0.1:7000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.memory_limit, 1 << 30);
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.node, "from-flag");
        assert_eq!(c.segment_size, 64 << 20);
        assert_eq!(c.cpu_bind, CpuBind::Auto);
    }

    #[test]
    fn metrics_endpoint_is_off_unless_asked_for() {
        let off = ServerConfig::resolve(Args::default()).expect("valid");
        assert_eq!(off.metrics_listen, None);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "metrics_listen = \"127.0.0.1:9464\"\n").expect("write");
        let from_file = ServerConfig::resolve(Args {
            config: Some(path),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(
            from_file.metrics_listen,
            Some("127.0.0.1:9464".parse().expect("addr"))
        );
        let bad = ServerConfig::resolve(Args {
            metrics_listen: Some("nowhere".into()),
            ..Default::default()
        });
        assert!(matches!(bad, Err(ConfigError::Invalid(m)) if m.contains("nowhere")));
    }

    #[test]
    fn placement_from_flag_env_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "cpu_bind = \"0-1,3\"\nnuma = 1\n").expect("write");
        let from_file = ServerConfig::resolve(Args {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(from_file.cpu_bind, CpuBind::List(vec![0, 1, 3]));
        assert_eq!(from_file.numa, Some(1));
        let flag = Args::try_parse_from(["dimstore-server", "--cpu-bind", "none", "--numa", "0"])
            .expect("flags parse");
        let c = ServerConfig::resolve(Args {
            config: Some(path.clone()),
            ..flag
        })
        .expect("valid");
        assert_eq!((c.cpu_bind, c.numa), (CpuBind::None, Some(0)));
        assert!(Args::try_parse_from(["dimstore-server", "--cpu-bind", "3-1"]).is_err());
        std::fs::write(&path, "cpu_bind = \"x\"\n").expect("write");
        let err = ServerConfig::resolve(Args {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("bad list");
        assert!(err.to_string().contains("cpu_bind"), "{err}");
    }

    #[test]
    fn functions_are_on_with_a_token_unless_switched() {
        let resolve = |token: Option<&str>, functions: Option<Switch>| {
            ServerConfig::resolve(Args {
                token: token.map(str::to_string),
                functions,
                function_timeout: Some(Duration::from_secs(3)),
                ..Default::default()
            })
            .expect("config")
            .functions
        };
        assert_eq!(resolve(None, None), None, "tokenless: off");
        let on = resolve(Some("t"), None).expect("with a token: on");
        assert_eq!(on.timeout, Duration::from_secs(3));
        assert_eq!(resolve(Some("t"), Some(Switch::Off)), None);
        assert!(resolve(None, Some(Switch::On)).is_some());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "functions = \"on\"\nfunction_memory = \"1MiB\"\n").expect("write");
        let from_file = ServerConfig::resolve(Args {
            config: Some(path),
            ..Default::default()
        })
        .expect("config")
        .functions
        .expect("on from the file");
        assert_eq!(from_file.memory, 1 << 20);
    }

    #[test]
    fn max_pending_connections_from_flag_file_or_default_and_never_zero() {
        let default = ServerConfig::resolve(Args::default()).expect("valid");
        assert_eq!(
            default.max_pending_connections,
            DEFAULT_MAX_PENDING_CONNECTIONS
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "max_pending_connections = 64\n").expect("write");
        let from_file = ServerConfig::resolve(Args {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(from_file.max_pending_connections, 64);
        let flag = Args::try_parse_from(["dimstore-server", "--max-pending-connections", "8"])
            .expect("flags parse");
        let c = ServerConfig::resolve(Args {
            config: Some(path),
            ..flag
        })
        .expect("valid");
        assert_eq!(c.max_pending_connections, 8);
        let zero = ServerConfig::resolve(Args {
            max_pending_connections: Some(0),
            ..Default::default()
        });
        assert!(matches!(zero, Err(ConfigError::Invalid(_))), "{zero:?}");
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "memroy_limit = 5\n").expect("write");
        let err = ServerConfig::resolve(Args {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("unknown key");
        assert!(err.to_string().contains("server.toml"), "{err}");
        // The parser's own error, kept as the source, names the key.
        let text = dimstore_transport::chain(&err).to_string();
        assert!(text.contains("memroy_limit"), "{text}");
    }
}
