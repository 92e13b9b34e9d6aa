//! hwloc placement: which CPUs and NUMA memory the server's threads use.
//!
//! The server serves one NIC; its threads and the arena's memory belong on the NUMA node
//! closest to that NIC. [`Placement::plan`] decides, once at start, from `--cpu-bind`
//! (`none`, `auto` or a CPU list such as `0-3,8`) and `--numa N`:
//!
//! - `auto` finds the interface that carries the server's address, asks hwloc for that
//!   network device's locality (its first non-I/O ancestor), and binds to it when it is
//!   narrower than the whole machine. Loopback, an address no interface carries, a virtual
//!   interface, a machine with one NUMA node, a device hwloc does not report, or a device
//!   local to the whole machine bind nothing, and the description says why. (hwloc's device
//!   discovery costs tens of milliseconds, so it only runs when it can matter.)
//! - `--numa N` binds to node N's CPUs (with `auto`) and memory.
//! - a CPU list binds to those CPUs and to the memory of their NUMA nodes.
//!
//! [`decide`] is the decision itself, on any topology: the machine's, or another machine's
//! loaded from hwloc XML ([`load_xml_topology`]), which is how the tests check it against
//! real node layouts. It also names the fabric devices (OpenFabrics: `mlx5_0`, `cxi0`)
//! local to the chosen CPUs, reported in the placement line for UCX and libfabric.
//!
//! [`Placement::apply_to_current_thread`] then binds the calling thread (the main thread
//! before the runtime starts, and each runtime thread from `on_thread_start`). Memory uses
//! hwloc's non-strict `Bind` policy (preferred, not mandatory, on Linux) as the thread's
//! default policy, which the arena's segments inherit when they are first touched.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::str::FromStr;

use hwlocality::bitmap::Bitmap;
use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::memory::binding::{MemoryBindingFlags, MemoryBindingPolicy};
use hwlocality::memory::nodeset::NodeSet;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::{OSDeviceType, ObjectType};
use hwlocality::object::TopologyObject;
use hwlocality::topology::builder::TypeFilter;
use hwlocality::Topology;

use crate::config::ServerConfig;

/// Highest CPU index a list may name (keeps a typo from allocating a huge set).
pub const MAX_CPU: u32 = 65_535;

/// The `--cpu-bind` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuBind {
    /// Bind nothing.
    None,
    /// Near the NIC in use (or the `--numa` node); nothing when hwloc reports no locality.
    #[default]
    Auto,
    /// Exactly these CPUs (OS indexes, ascending, no duplicates).
    List(Vec<u32>),
}

impl FromStr for CpuBind {
    type Err = PlacementError;
    fn from_str(text: &str) -> Result<Self, PlacementError> {
        match text.trim() {
            "none" => Ok(CpuBind::None),
            "auto" => Ok(CpuBind::Auto),
            list => parse_cpu_list(list).map(CpuBind::List),
        }
    }
}

impl std::fmt::Display for CpuBind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpuBind::None => f.write_str("none"),
            CpuBind::Auto => f.write_str("auto"),
            CpuBind::List(cpus) => f.write_str(&format_cpu_list(cpus)),
        }
    }
}

/// Why a placement request cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    /// A CPU list does not parse.
    #[error("invalid CPU list `{list}`: {why} (expected none, auto, or a list like 0-3,8)")]
    CpuList {
        /// The text given.
        list: String,
        /// What is wrong with it.
        why: String,
    },
    /// hwloc could not load the machine's topology.
    #[error("hwloc cannot load the topology: {0}")]
    Topology(String),
    /// A listed CPU is not available to this process.
    #[error("CPU list {requested} names CPUs this process cannot use (available: {available})")]
    CpusUnavailable {
        /// The list given.
        requested: String,
        /// The CPUs hwloc reports as allowed.
        available: String,
    },
    /// The named NUMA node does not exist.
    #[error("no NUMA node {node} (this machine has nodes {available})")]
    NoSuchNode {
        /// The node given.
        node: u32,
        /// The nodes hwloc reports.
        available: String,
    },
    /// hwloc refused to bind the thread's CPUs.
    #[error("cannot bind to cpus {cpus}: {why}")]
    Bind {
        /// The CPUs.
        cpus: String,
        /// hwloc's error.
        why: String,
    },
}

/// Parses a CPU list such as `0-3,8` into ascending, distinct CPU indexes.
pub fn parse_cpu_list(text: &str) -> Result<Vec<u32>, PlacementError> {
    let fail = |why: String| PlacementError::CpuList {
        list: text.to_string(),
        why,
    };
    let number = |s: &str| -> Result<u32, PlacementError> {
        let s = s.trim();
        match s.parse::<u32>() {
            Ok(n) if n <= MAX_CPU && !s.starts_with('+') => Ok(n),
            Ok(_) => Err(fail(format!("CPU `{s}` is above {MAX_CPU}"))),
            Err(_) => Err(fail(format!("`{s}` is not a CPU number"))),
        }
    };
    let mut cpus = BTreeSet::new();
    for item in text.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (number(lo)?, number(hi)?),
            None => {
                let n = number(item)?;
                (n, n)
            }
        };
        if lo > hi {
            return Err(fail(format!("range `{}` runs backwards", item.trim())));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus.into_iter().collect())
}

/// Formats CPU indexes as a list with ranges (`0-3,8`); the inverse of [`parse_cpu_list`].
pub fn format_cpu_list(cpus: &[u32]) -> String {
    let mut sorted: Vec<u32> = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        let sep = if out.is_empty() { "" } else { "," };
        let _ = if start == end {
            write!(out, "{sep}{start}")
        } else {
            write!(out, "{sep}{start}-{end}")
        };
        i += 1;
    }
    out
}

/// The placement decided at start: what to bind, and a description for stats.
#[derive(Debug)]
pub struct Placement {
    binding: Option<Binding>,
    description: String,
}

#[derive(Debug)]
struct Binding {
    topology: Topology,
    cpus: Option<CpuSet>,
    nodes: Option<NodeSet>,
}

impl Placement {
    /// Binds nothing, for `reason`.
    pub fn none(reason: impl std::fmt::Display) -> Placement {
        Placement {
            binding: None,
            description: format!("none: {reason}"),
        }
    }

    /// Decides the placement for `config` on this machine. Explicit requests (a CPU list,
    /// `--numa`) that cannot be met are errors; `auto` falls back to binding nothing, with
    /// the reason.
    pub fn plan(config: &ServerConfig) -> Result<Placement, PlacementError> {
        if config.cpu_bind == CpuBind::None && config.numa.is_none() {
            return Ok(Placement::none("--cpu-bind none"));
        }
        let auto = config.cpu_bind == CpuBind::Auto && config.numa.is_none();
        // Find the NIC before loading the topology: loopback needs no hwloc at all.
        let nic = match auto.then(|| nic_in_use(config)) {
            Some(Err(reason)) => return Ok(Placement::none(reason)),
            Some(Ok(nic)) => Some(nic),
            None => None,
        };
        let topology = match (load_topology(false), &nic) {
            (Ok(t), None) => t,
            (Ok(t), Some(nic)) => match nic_worth_locating(&t, nic) {
                // Device discovery (PCI, OS devices) costs tens of ms: only when it can matter.
                Ok(()) => match load_topology(true) {
                    Ok(t) => t,
                    Err(e) => return Ok(Placement::none(e)),
                },
                Err(reason) => return Ok(Placement::none(reason)),
            },
            (Err(e), Some(_)) => return Ok(Placement::none(e)),
            (Err(e), None) => return Err(e),
        };
        let decision = match decide(&topology, &config.cpu_bind, config.numa, nic.as_deref())? {
            Plan::Bind(decision) => decision,
            Plan::Nothing(reason) => return Ok(Placement::none(reason)),
        };
        let mut description = decision.describe();
        let nodes = set_of::<NodeSet>(&decision.numa);
        // Memory policy only matters when there is a choice of nodes.
        let choose_memory = config.numa.is_some() || nodes != *topology.nodeset();
        let nodes = match memory_unsupported(&topology) {
            _ if !choose_memory => None,
            Some(why) => {
                let _ = write!(description, "; memory not bound: {why}");
                None
            }
            None => Some(nodes),
        };
        Ok(Placement {
            binding: Some(Binding {
                cpus: decision.cpus.as_deref().map(set_of::<CpuSet>),
                topology,
                nodes,
            }),
            description,
        })
    }

    /// What was done, for stats and logs (e.g. `cpus 0-1 (numa 0, near eth0)`).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether anything is bound.
    pub fn binds(&self) -> bool {
        self.binding.is_some()
    }

    /// Binds the calling thread's CPUs and default memory policy. Threads it creates
    /// afterwards inherit both. A refused memory binding is logged, not fatal.
    pub fn apply_to_current_thread(&self) -> Result<(), PlacementError> {
        let Some(b) = &self.binding else {
            return Ok(());
        };
        if let Some(cpus) = &b.cpus {
            b.topology
                .bind_cpu(cpus, CpuBindingFlags::THREAD)
                .map_err(|e| PlacementError::Bind {
                    cpus: list_of(cpus),
                    why: e.to_string(),
                })?;
        }
        if let Some(nodes) = &b.nodes {
            if let Err(e) =
                b.topology
                    .bind_memory(nodes, MemoryBindingPolicy::Bind, MemoryBindingFlags::THREAD)
            {
                let nodes = list_of(nodes);
                tracing::warn!(%nodes, error = %e, "cannot set the memory binding policy");
            }
        }
        Ok(())
    }
}

/// A placement computed on a topology, before anything is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// CPUs (OS indexes) the server's threads run on; `None`: unbound (`--numa` with a
    /// `--cpu-bind` other than `auto`).
    pub cpus: Option<Vec<u32>>,
    /// NUMA nodes (OS indexes) the memory prefers.
    pub numa: Vec<u32>,
    /// Why these: `near hsn0`, `--numa`, `list`.
    pub reason: String,
    /// High-speed fabric devices (hwloc OpenFabrics devices: `mlx5_0`, `cxi0`, ...) local to
    /// those CPUs, most local first: the devices UCX (`UCX_NET_DEVICES`) and libfabric
    /// (`DIMSTORE_OFI_DOMAIN`) should use. Empty when none is local or device discovery
    /// did not run.
    pub fabric: Vec<String>,
}

impl Decision {
    /// The placement line stats and logs show, e.g.
    /// `cpus 8-15 (numa 1, near hsn0; fabric cxi0)`.
    pub fn describe(&self) -> String {
        let fabric = match self.fabric.as_slice() {
            [] => String::new(),
            devices => format!("; fabric {}", devices.join(",")),
        };
        match &self.cpus {
            Some(cpus) => format!(
                "cpus {} (numa {}, {}{fabric})",
                format_cpu_list(cpus),
                format_cpu_list(&self.numa),
                self.reason
            ),
            None => format!(
                "cpus unbound, memory numa {} ({}{fabric})",
                format_cpu_list(&self.numa),
                self.reason
            ),
        }
    }
}

/// What to do, decided on a topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Bind as decided.
    Bind(Decision),
    /// Bind nothing, for this reason.
    Nothing(String),
}

/// Decides the placement on `topology` (the machine's, or one loaded with
/// [`load_xml_topology`]) for `--cpu-bind`, `--numa` and, under `auto`, the network
/// interface the server's traffic uses. Nothing is applied.
pub fn decide(
    topology: &Topology,
    cpu_bind: &CpuBind,
    numa: Option<u32>,
    nic: Option<&str>,
) -> Result<Plan, PlacementError> {
    let (cpus, nodes, reason) = match (cpu_bind, numa) {
        (CpuBind::None, None) => return Ok(Plan::Nothing("--cpu-bind none".into())),
        (CpuBind::List(list), numa) => {
            let cpus = listed_cpus(topology, list)?;
            let nodes = match numa {
                Some(n) => numa_node(topology, n)?.1,
                None => NodeSet::from_cpuset(topology, &cpus),
            };
            (Some(cpus), nodes, "list".to_string())
        }
        (bind, Some(n)) => {
            let (cpus, nodes) = numa_node(topology, n)?;
            let cpus = (*bind == CpuBind::Auto).then_some(cpus);
            (cpus, nodes, "--numa".to_string())
        }
        (CpuBind::Auto, None) => {
            let Some(nic) = nic else {
                return Ok(Plan::Nothing("no network interface to locate".into()));
            };
            if topology.objects_with_type(ObjectType::NUMANode).count() < 2 {
                return Ok(Plan::Nothing(format!(
                    "one NUMA node, nothing to choose near {nic}"
                )));
            }
            match nic_locality(topology, nic) {
                Ok((cpus, nodes, nic)) => (Some(cpus), nodes, format!("near {nic}")),
                Err(reason) => return Ok(Plan::Nothing(reason)),
            }
        }
    };
    let near = cpus.clone().unwrap_or_else(|| {
        let mut all = CpuSet::new();
        for node in topology.objects_with_type(ObjectType::NUMANode) {
            if node.nodeset().is_some_and(|n| nodes.includes(n)) {
                if let Some(c) = node.cpuset() {
                    all |= c;
                }
            }
        }
        all
    });
    Ok(Plan::Bind(Decision {
        cpus: cpus.as_ref().map(indexes),
        numa: indexes(&nodes),
        reason,
        fabric: fabric_devices_near(topology, &near),
    }))
}

/// Loads a topology exported as hwloc XML (`lstopo --of xml`), with its I/O devices, to
/// [`decide`] on: placement on another machine's topology, computed here.
pub fn load_xml_topology(path: &Path) -> Result<Topology, PlacementError> {
    let fail = |e: &dyn std::fmt::Display| PlacementError::Topology(e.to_string());
    Topology::builder()
        .from_xml_file(path)
        .map_err(|e| fail(&e))?
        .with_io_type_filter(TypeFilter::KeepImportant)
        .map_err(|e| fail(&e))?
        .build()
        .map_err(|e| fail(&e))
}

/// OpenFabrics devices whose locality overlaps `cpus`, the narrowest locality first.
fn fabric_devices_near(topology: &Topology, cpus: &CpuSet) -> Vec<String> {
    let mut found: Vec<(usize, String)> = topology
        .os_devices()
        .filter(|d| {
            matches!(
                d.attributes(),
                Some(ObjectAttributes::OSDevice(a)) if a.device_type() == OSDeviceType::OpenFabrics
            )
        })
        .filter_map(|d| {
            let name = d.name()?.to_str().ok()?.to_string();
            let locality = d.first_non_io_ancestor()?.cpuset()?;
            locality
                .intersects(cpus)
                .then(|| (locality.weight().unwrap_or(usize::MAX), name))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, name)| name).collect()
}

/// The indexes set in a CPU or node set.
fn indexes(set: &impl AsRef<Bitmap>) -> Vec<u32> {
    set.as_ref()
        .iter_set()
        .map(|i| u32::try_from(usize::from(i)).unwrap_or(u32::MAX))
        .collect()
}

/// A CPU or node set with these indexes.
fn set_of<S: Default + AsMut<Bitmap>>(indexes: &[u32]) -> S {
    let mut set = S::default();
    for &i in indexes {
        set.as_mut().set(i as usize);
    }
    set
}

/// A CPU or node set as a list (`0-3,8`).
fn list_of(set: &impl AsRef<Bitmap>) -> String {
    format_cpu_list(&indexes(set))
}

/// Loads the topology; with I/O devices (PCI, OS devices) when the NIC must be found.
fn load_topology(with_io: bool) -> Result<Topology, PlacementError> {
    let fail = |e: &dyn std::fmt::Display| PlacementError::Topology(e.to_string());
    let mut builder = Topology::builder();
    if with_io {
        builder = builder
            .with_io_type_filter(TypeFilter::KeepImportant)
            .map_err(|e| fail(&e))?;
    }
    builder.build().map_err(|e| fail(&e))
}

/// The allowed CPUs named by `list`, all of which must be available.
fn listed_cpus(topology: &Topology, list: &[u32]) -> Result<CpuSet, PlacementError> {
    let mut cpus = CpuSet::new();
    for &cpu in list {
        cpus.set(cpu as usize);
    }
    if cpus.is_empty() || !topology.cpuset().includes(&cpus) {
        return Err(PlacementError::CpusUnavailable {
            requested: format_cpu_list(list),
            available: list_of(&*topology.cpuset()),
        });
    }
    Ok(cpus)
}

/// The CPUs and nodeset of NUMA node `n` (OS index).
fn numa_node(topology: &Topology, n: u32) -> Result<(CpuSet, NodeSet), PlacementError> {
    let node = topology
        .objects_with_type(ObjectType::NUMANode)
        .find(|o| o.os_index() == Some(n as usize))
        .ok_or_else(|| PlacementError::NoSuchNode {
            node: n,
            available: list_of(&*topology.nodeset()),
        })?;
    Ok(sets_of(topology, node))
}

/// An object's allowed CPUs and NUMA nodes.
fn sets_of(topology: &Topology, object: &TopologyObject) -> (CpuSet, NodeSet) {
    let mut cpus = object
        .cpuset()
        .map(|c| c.clone_target())
        .unwrap_or_default();
    cpus &= topology.cpuset();
    let nodes = object
        .nodeset()
        .map(|n| n.clone_target())
        .unwrap_or_else(|| NodeSet::from_cpuset(topology, &cpus));
    (cpus, nodes)
}

/// Whether the NIC's locality can narrow anything: a virtual interface (veth, bridge) has no
/// device, and with one NUMA node there is nothing to choose.
fn nic_worth_locating(topology: &Topology, iface: &str) -> Result<(), String> {
    if !Path::new("/sys/class/net")
        .join(iface)
        .join("device")
        .exists()
    {
        return Err(format!("{iface} is a virtual interface (no NIC locality)"));
    }
    if topology.objects_with_type(ObjectType::NUMANode).count() < 2 {
        return Err(format!("one NUMA node, nothing to choose near {iface}"));
    }
    Ok(())
}

/// The locality of the NIC carrying the server's address, or why there is none to use.
fn nic_locality(topology: &Topology, iface: &str) -> Result<(CpuSet, NodeSet, String), String> {
    let device = topology
        .os_devices()
        .find(|d| d.name().and_then(|n| n.to_str().ok()) == Some(iface))
        .ok_or_else(|| format!("hwloc reports no device for {iface} (no NIC locality)"))?;
    let ancestor = device
        .first_non_io_ancestor()
        .ok_or_else(|| format!("hwloc reports no locality for {iface}"))?;
    let (cpus, nodes) = sets_of(topology, ancestor);
    if cpus.is_empty() || cpus == *topology.cpuset() {
        return Err(format!(
            "{iface} is local to the whole machine (no NIC locality reported)"
        ));
    }
    Ok((cpus, nodes, iface.to_string()))
}

/// The interface the server's traffic uses: the one carrying the listen address; when
/// listening on every address, the one carrying the advertised address, else the one of
/// the default route.
fn nic_in_use(config: &ServerConfig) -> Result<String, String> {
    let listen = config.listen.ip();
    let ip = if listen.is_unspecified() {
        let advertised = config.advertised_address(SocketAddr::new(listen, 0));
        advertised
            .ok()
            .and_then(|a| a.to_socket_addrs().ok())
            .and_then(|mut a| a.next())
            .map(|a| a.ip())
            .filter(|ip| !ip.is_loopback())
    } else {
        Some(listen)
    };
    match ip {
        Some(ip) if ip.is_loopback() => Err(format!("listening on loopback ({ip}), no NIC")),
        Some(ip) => interface_of(ip),
        None => default_route_interface()
            .ok_or_else(|| "no default route to find the NIC by".to_string()),
    }
}

/// The interface carrying `ip`.
fn interface_of(ip: IpAddr) -> Result<String, String> {
    if_addrs::get_if_addrs()
        .map_err(|e| format!("cannot list interfaces: {e}"))?
        .into_iter()
        .find(|i| i.ip() == ip)
        .map(|i| i.name)
        .ok_or_else(|| format!("no local interface carries {ip}"))
}

/// The interface of the IPv4 default route (lowest metric) from `/proc/net/route`.
fn default_route_interface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let metric = f.get(6)?.parse::<u32>().ok()?;
            (f.get(1) == Some(&"00000000")).then(|| (metric, f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// Why the memory policy of a thread cannot be set here, if it cannot.
fn memory_unsupported(topology: &Topology) -> Option<&'static str> {
    match topology.feature_support().memory_binding() {
        Some(m) if m.set_current_thread() && m.bind_policy() => None,
        _ => Some("hwloc reports no thread memory binding here"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lists_parse() {
        assert_eq!(parse_cpu_list("0").expect("one"), vec![0]);
        assert_eq!(
            parse_cpu_list("0-3,8").expect("ranges"),
            vec![0, 1, 2, 3, 8]
        );
        assert_eq!(
            parse_cpu_list(" 2 , 0-1 ,1").expect("spaces"),
            vec![0, 1, 2]
        );
        for bad in ["", "a", "1-", "-1", "3-1", "1,,2", "70000", "+1", "1-2-3"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!("none".parse::<CpuBind>().expect("none"), CpuBind::None);
        assert_eq!("auto".parse::<CpuBind>().expect("auto"), CpuBind::Auto);
        assert_eq!(
            "1,3".parse::<CpuBind>().expect("list"),
            CpuBind::List(vec![1, 3])
        );
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 3, 5]), "0-3,5,8");
    }

    #[test]
    fn virtual_interfaces_are_not_located() {
        let topology = load_topology(false).expect("topology");
        let reason = nic_worth_locating(&topology, "lo").expect_err("lo has no device");
        assert!(reason.contains("virtual"), "{reason}");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(cpus in prop::collection::btree_set(0u32..512, 1..64)) {
            let cpus: Vec<u32> = cpus.into_iter().collect();
            let text = format_cpu_list(&cpus);
            prop_assert_eq!(parse_cpu_list(&text).expect("formatted list parses"), cpus);
        }

        #[test]
        fn ranges_parse_to_their_union(
            ranges in prop::collection::vec((0u32..300, 0u32..40), 1..8)
        ) {
            let text = ranges
                .iter()
                .map(|&(lo, len)| if len == 0 { lo.to_string() } else { format!("{lo}-{}", lo + len) })
                .collect::<Vec<_>>()
                .join(",");
            let expected: BTreeSet<u32> = ranges.iter().flat_map(|&(lo, len)| lo..=lo + len).collect();
            let parsed = parse_cpu_list(&text).expect("valid list");
            prop_assert_eq!(parsed, expected.into_iter().collect::<Vec<_>>());
        }

        #[test]
        fn arbitrary_text_never_panics(text in "[0-9, \\-a-z]{0,24}") {
            if let Ok(cpus) = parse_cpu_list(&text) {
                prop_assert!(!cpus.is_empty());
                prop_assert!(cpus.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
