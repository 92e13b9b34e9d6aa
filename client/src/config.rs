//! Client configuration, from `DIMSTORE_*` environment variables.

use std::path::PathBuf;
use std::time::Duration;

use crate::local::LocalMode;

/// Whether a client may start a server on its node when none runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnPolicy {
    /// Spawn when no server answers (the default).
    Auto,
    /// Never spawn: no server is an error.
    Never,
}

/// Which transport moves object bytes from other servers (`DIMSTORE_TRANSPORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportChoice {
    /// The best both ends share: the same-node mapping for this node's server; else, on a
    /// node with RDMA hardware, the first one-sided transport the server offers and this
    /// process can start; else TCP. Without RDMA hardware the one-sided providers emulate
    /// reads over TCP or shared memory and are no faster than TCP's inline replies (see
    /// docs/PERFORMANCE.md); force them by name.
    Auto,
    /// TCP only (bytes inline in replies).
    Tcp,
    /// One-sided reads by this backend of the `dimstore-backends` registry (`ucx`, `ofi`,
    /// as this build has them); an error where it is not available.
    OneSided(&'static str),
}

impl TransportChoice {
    /// The one-sided transport name of a forced choice.
    pub fn forced_one_sided(self) -> Option<&'static str> {
        match self {
            TransportChoice::OneSided(name) => Some(name),
            TransportChoice::Auto | TransportChoice::Tcp => None,
        }
    }
}

impl std::str::FromStr for TransportChoice {
    type Err = String;
    /// `auto`, `tcp`, or the name of one of this build's one-sided backends.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TransportChoice::Auto),
            "tcp" => Ok(TransportChoice::Tcp),
            name => match dimstore_backends::find(name) {
                Some(backend) => Ok(TransportChoice::OneSided(backend.name())),
                None => {
                    let mut choices = vec!["auto", "tcp"];
                    choices.extend(dimstore_backends::names());
                    let last = choices.pop().unwrap_or_default();
                    Err(format!(
                        "DIMSTORE_TRANSPORT={name}: expected {} or {last} ({})",
                        choices.join(", "),
                        dimstore_backends::this_build()
                    ))
                }
            },
        }
    }
}

/// How a client finds servers and how long it waits for them.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Per-operation timeout (`DIMSTORE_TIMEOUT`, e.g. `30s`).
    pub timeout: Duration,
    /// Fleet token (`DIMSTORE_TOKEN`; the fleet file's token wins when a fleet is used).
    pub token: Option<String>,
    /// Explicit address of the local server (`DIMSTORE_SERVER`).
    pub server: Option<String>,
    /// Further servers of the same fleet that may receive the token (`DIMSTORE_TRUSTED`,
    /// comma-separated `HOST:PORT` control addresses as keys name them). The token is sent
    /// only to these, the fleet file's servers, `server` and this node's located server;
    /// other owners are greeted without it.
    pub trusted: Vec<String>,
    /// Hosts any server on which may receive the token (`DIMSTORE_TRUSTED_HOSTS`, a Slurm
    /// host list such as `nid[001-004],login1`, expanded): a job's nodes, whose servers'
    /// ports are not known in advance. Set by the SPANK plugin.
    pub trusted_hosts: Vec<String>,
    /// Fleet file (`DIMSTORE_FLEET`), written by `dimstore-launch`.
    pub fleet: Option<PathBuf>,
    /// This client's node: a name, or an index into the fleet (`DIMSTORE_NODE`).
    pub node: Option<String>,
    /// Directory for per-node ready files and spawn locks (`DIMSTORE_RUNTIME_DIR`).
    pub runtime_dir: PathBuf,
    /// Whether to spawn a server when none runs (`DIMSTORE_SPAWN=auto|never`).
    pub spawn: SpawnPolicy,
    /// Server binary to spawn (`DIMSTORE_SERVER_BIN`; default: next to this program, then
    /// `PATH`).
    pub server_bin: Option<PathBuf>,
    /// Listen address for a spawned server (`DIMSTORE_LISTEN`, default `127.0.0.1:0`:
    /// this node only): `HOST:PORT`, or an interface name (`eth0`, `ib0:7100`) to serve
    /// other nodes on that interface's address. On `0.0.0.0` the server advertises its first
    /// routable address.
    pub spawn_listen: String,
    /// Idle timeout for a spawned server (`DIMSTORE_SPAWN_IDLE_TIMEOUT`, default `10m`).
    pub spawn_idle_timeout: Duration,
    /// Memory limit for a spawned server (`DIMSTORE_MEMORY_LIMIT`, default: the server's).
    pub spawn_memory_limit: Option<String>,
    /// How to reach a server on this node (`DIMSTORE_LOCAL=map|copy|off`, default `map`).
    pub local: LocalMode,
    /// With `map`: objects smaller than this are copied rather than mapped
    /// (`DIMSTORE_LOCAL_MAP_FROM`, default 16 KiB; a copy is cheaper than a lease there).
    pub local_map_from: u64,
    /// Transport for object bytes (`DIMSTORE_TRANSPORT=auto|tcp|ucx|ofi`, default `auto`;
    /// `ucx` and `ofi` where this build has them).
    pub transport: TransportChoice,
    /// Objects from this size on are read one-sided; smaller ones come inline
    /// (`DIMSTORE_ONE_SIDED_FROM`, bytes, default 64 KiB).
    pub one_sided_from: u64,
    /// Whether this node has RDMA hardware, for `auto` (`DIMSTORE_RDMA_HARDWARE=yes|no`;
    /// default: detected from `/sys/class/infiniband` and `/sys/class/cxi`).
    pub rdma_hardware: Option<bool>,
    /// Keep per-operation counts and latency histograms of this store's calls, read with
    /// [`Store::metrics`](crate::Store::metrics) (`DIMSTORE_CLIENT_METRICS=1`, default off).
    pub metrics: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(30),
            token: None,
            server: None,
            trusted: Vec::new(),
            trusted_hosts: Vec::new(),
            fleet: None,
            node: None,
            runtime_dir: default_runtime_dir(),
            spawn: SpawnPolicy::Auto,
            server_bin: None,
            spawn_listen: "127.0.0.1:0".into(),
            spawn_idle_timeout: Duration::from_secs(600),
            spawn_memory_limit: None,
            local: LocalMode::Map,
            local_map_from: 16 << 10,
            transport: TransportChoice::Auto,
            one_sided_from: dimstore_transport::onesided::DEFAULT_ONE_SIDED_FROM,
            rdma_hardware: None,
            metrics: false,
        }
    }
}

impl ClientConfig {
    /// Reads the `DIMSTORE_*` environment over the defaults. Malformed values are reported.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let duration = |name: &str, default: Duration| -> Result<Duration, String> {
            var(name).map_or(Ok(default), |v| {
                humantime::parse_duration(&v).map_err(|e| format!("{name}={v}: {e}"))
            })
        };
        let d = ClientConfig::default();
        Ok(ClientConfig {
            timeout: duration("DIMSTORE_TIMEOUT", d.timeout)?,
            token: var("DIMSTORE_TOKEN"),
            server: var("DIMSTORE_SERVER"),
            trusted: var("DIMSTORE_TRUSTED")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            trusted_hosts: match var("DIMSTORE_TRUSTED_HOSTS") {
                None => Vec::new(),
                Some(v) => crate::hostlist::expand_slurm_nodelist(&v)
                    .map_err(|e| format!("DIMSTORE_TRUSTED_HOSTS={v}: {e}"))?,
            },
            fleet: var("DIMSTORE_FLEET").map(PathBuf::from),
            node: var("DIMSTORE_NODE"),
            runtime_dir: var("DIMSTORE_RUNTIME_DIR").map_or(d.runtime_dir, PathBuf::from),
            spawn: match var("DIMSTORE_SPAWN").as_deref() {
                None | Some("auto") => SpawnPolicy::Auto,
                Some("never") => SpawnPolicy::Never,
                Some(other) => {
                    return Err(format!("DIMSTORE_SPAWN={other}: expected auto or never"))
                }
            },
            server_bin: var("DIMSTORE_SERVER_BIN").map(PathBuf::from),
            spawn_listen: var("DIMSTORE_LISTEN").unwrap_or(d.spawn_listen),
            spawn_idle_timeout: duration("DIMSTORE_SPAWN_IDLE_TIMEOUT", d.spawn_idle_timeout)?,
            spawn_memory_limit: var("DIMSTORE_MEMORY_LIMIT"),
            local: match var("DIMSTORE_LOCAL").as_deref() {
                None | Some("map") => LocalMode::Map,
                Some("copy") => LocalMode::Copy,
                Some("off") => LocalMode::Off,
                Some(other) => {
                    return Err(format!("DIMSTORE_LOCAL={other}: expected map, copy or off"))
                }
            },
            local_map_from: match var("DIMSTORE_LOCAL_MAP_FROM") {
                None => d.local_map_from,
                Some(v) => v
                    .parse()
                    .map_err(|e| format!("DIMSTORE_LOCAL_MAP_FROM={v}: {e} (bytes)"))?,
            },
            transport: match var("DIMSTORE_TRANSPORT") {
                None => d.transport,
                Some(v) => v.parse()?,
            },
            rdma_hardware: match var("DIMSTORE_RDMA_HARDWARE").as_deref() {
                None | Some("detect") => None,
                Some("yes") => Some(true),
                Some("no") => Some(false),
                Some(other) => {
                    return Err(format!(
                        "DIMSTORE_RDMA_HARDWARE={other}: expected yes, no or detect"
                    ))
                }
            },
            metrics: match var("DIMSTORE_CLIENT_METRICS").as_deref() {
                None | Some("0" | "no" | "off") => false,
                Some("1" | "yes" | "on") => true,
                Some(other) => {
                    return Err(format!(
                        "DIMSTORE_CLIENT_METRICS={other}: expected 1 or 0 (yes/no, on/off)"
                    ))
                }
            },
            one_sided_from: match var("DIMSTORE_ONE_SIDED_FROM") {
                None => d.one_sided_from,
                Some(v) => v
                    .parse()
                    .map_err(|e| format!("DIMSTORE_ONE_SIDED_FROM={v}: {e} (bytes)"))?,
            },
        })
    }
}

/// This machine's physical memory in bytes: no reply can be larger (a bound on what an
/// owner may announce).
// `totalram` is a C `unsigned long`: `u64` here, `u32` on 32-bit targets.
#[allow(clippy::useless_conversion)]
pub(crate) fn physical_memory() -> u64 {
    // Asked once per process: every get bounds its reply by it.
    static TOTAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let info = rustix::system::sysinfo();
        u64::from(info.totalram).saturating_mul(u64::from(info.mem_unit.max(1)))
    })
}

fn default_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("dimstore"),
        _ => std::env::temp_dir().join(format!("dimstore-{}", rustix::process::getuid().as_raw())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_choices_are_auto_tcp_and_this_builds_backends() {
        assert_eq!("auto".parse(), Ok(TransportChoice::Auto));
        assert_eq!("tcp".parse(), Ok(TransportChoice::Tcp));
        for name in dimstore_backends::names() {
            let choice: TransportChoice = name.parse().expect("a backend of this build");
            assert_eq!(choice.forced_one_sided(), Some(name));
        }
        let error = "carrier-pigeon"
            .parse::<TransportChoice>()
            .expect_err("unknown");
        assert!(
            error.starts_with("DIMSTORE_TRANSPORT=carrier-pigeon: expected auto"),
            "{error}"
        );
        assert!(error.contains(&dimstore_backends::this_build()), "{error}");
    }

    #[cfg(all(feature = "ucx", feature = "ofi"))]
    #[test]
    fn the_default_build_keeps_its_transport_names() {
        assert_eq!("ucx".parse(), Ok(TransportChoice::OneSided("ucx")));
        assert_eq!("ofi".parse(), Ok(TransportChoice::OneSided("ofi")));
        let error = "x".parse::<TransportChoice>().expect_err("unknown");
        assert!(
            error.starts_with("DIMSTORE_TRANSPORT=x: expected auto, tcp, ucx or ofi"),
            "{error}"
        );
    }

    #[cfg(not(feature = "ucx"))]
    #[test]
    fn a_backend_compiled_out_is_refused_naming_what_the_build_has() {
        let error = "ucx"
            .parse::<TransportChoice>()
            .expect_err("not in this build");
        assert!(error.contains(&dimstore_backends::this_build()), "{error}");
    }
}
