//! The one trait a one-sided fabric implements: everything the server, the client, the
//! tests and the benches need to know about it, so that they iterate a registry of backends
//! (`dimstore-backends`) instead of naming fabrics.

use std::net::IpAddr;
use std::sync::Arc;

use super::{Exporter, Messenger, Reader};
use crate::TransportError;

/// A one-sided fabric (UCX, libfabric, ...): starts its server and client sides and says
/// when `auto` should prefer it. Implemented once per fabric, listed once in the registry.
pub trait OneSidedBackend: Send + Sync + 'static {
    /// The transport's name: advertised in the handshake, given to `--one-sided` and
    /// `DIMSTORE_TRANSPORT`, and the name of its statistics row (`"ucx"`, `"ofi"`).
    fn name(&self) -> &'static str;

    /// Starts the server side, listening only on `control` (see [`ControlInterface`])
    /// unless the fabric's own configuration names another interface.
    fn start_exporter(
        &self,
        control: &ControlInterface<'_>,
    ) -> Result<Arc<dyn Exporter>, TransportError>;

    /// This process's client side (one per process, started on first use); `local_ip` is
    /// the address the control connection to the server left from.
    fn open_reader(&self, local_ip: Option<IpAddr>) -> Result<ClientSide, TransportError>;

    /// Whether `auto` tries this backend before the others on a node with `hardware`.
    fn suits(&self, hardware: RdmaHardware) -> bool;

    /// Configurations that run on one machine without RDMA hardware, for the transport
    /// suite and the benches: a name (`ucx-tcp`) and the environment that selects it.
    fn loopback_variants(&self) -> &'static [LoopbackVariant];

    /// Restores the default dispositions of signals the fabric's libraries took when they
    /// were loaded (returns the signals reset); programs installing their own handlers call
    /// it first. Most fabrics take none.
    fn restore_default_signal_handlers(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// The interface a server's control listener is on, which its fabrics listen on too: over
/// UCX tcp/shm and libfabric shm a remote key does not bound reads, so whoever reaches a
/// fabric's listener can read the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlInterface<'a> {
    /// The control interface's local address: the listen address, or when listening on
    /// every address, the local address the advertised host resolves to; `None` when that
    /// is no local address (then every interface, like the control listener).
    pub ip: Option<IpAddr>,
    /// The advertised host (`0.0.0.0` when none could be found).
    pub host: &'a str,
}

/// A backend's client side: the reader of one-sided reads and, where requests travel on
/// the fabric's own messages, its messenger.
#[derive(Clone)]
pub struct ClientSide {
    /// Reads servers' registered memory.
    pub reader: Arc<dyn Reader>,
    /// Carries requests on the fabric's messages (`None`: they stay on TCP).
    pub messenger: Option<Arc<dyn Messenger>>,
}

impl std::fmt::Debug for ClientSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSide")
            .field("reader", &self.reader.name())
            .field("messenger", &self.messenger.as_ref().map(|m| m.name()))
            .finish()
    }
}

/// A backend configuration that runs on one machine (see
/// [`OneSidedBackend::loopback_variants`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopbackVariant {
    /// Name: the backend's, a dash and the provider (`ucx-tcp`, `ofi-shm`).
    pub name: &'static str,
    /// Environment of every process of the variant (servers, clients, raw tools).
    pub env: &'static [(&'static str, &'static str)],
}

/// The RDMA devices of this node, by kind (what `auto` decides on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RdmaHardware {
    /// Verbs devices (InfiniBand, RoCE, EFA): `/sys/class/infiniband`.
    pub verbs: bool,
    /// HPE Slingshot NICs: `/sys/class/cxi`.
    pub cxi: bool,
}

impl RdmaHardware {
    /// The devices under `/sys/class`.
    pub fn detect() -> RdmaHardware {
        let present = |dir: &str| {
            std::fs::read_dir(dir)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false)
        };
        RdmaHardware {
            verbs: present("/sys/class/infiniband"),
            cxi: present("/sys/class/cxi"),
        }
    }

    /// Whether there is any RDMA device.
    pub fn any(self) -> bool {
        self.verbs || self.cxi
    }
}

/// The order `auto` tries `offers` (the server's, in its order) in: backends that
/// [`suit`](OneSidedBackend::suits) `hardware` first, each group in the server's order.
pub fn auto_order<'a>(
    offers: impl IntoIterator<Item = &'a dyn OneSidedBackend>,
    hardware: RdmaHardware,
) -> Vec<&'a dyn OneSidedBackend> {
    let mut order: Vec<&dyn OneSidedBackend> = offers.into_iter().collect();
    // Stable: the others keep the server's order.
    order.sort_by_key(|backend| !backend.suits(hardware));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that suits nodes with the given device kind; it starts nothing.
    struct Suits(&'static str, fn(RdmaHardware) -> bool);

    impl OneSidedBackend for Suits {
        fn name(&self) -> &'static str {
            self.0
        }
        fn start_exporter(
            &self,
            _: &ControlInterface<'_>,
        ) -> Result<Arc<dyn Exporter>, TransportError> {
            unreachable!("ordering only")
        }
        fn open_reader(&self, _: Option<IpAddr>) -> Result<ClientSide, TransportError> {
            unreachable!("ordering only")
        }
        fn suits(&self, hardware: RdmaHardware) -> bool {
            (self.1)(hardware)
        }
        fn loopback_variants(&self) -> &'static [LoopbackVariant] {
            &[]
        }
    }

    #[test]
    fn auto_tries_suited_backends_first_and_keeps_the_servers_order() {
        let verbs = Suits("v", |h| h.verbs);
        let cxi = Suits("c", |h| h.cxi);
        let plain = Suits("p", |_| false);
        let names = |offers: &[&dyn OneSidedBackend], hardware| -> Vec<&str> {
            auto_order(offers.iter().copied(), hardware)
                .iter()
                .map(|b| b.name())
                .collect()
        };
        let on_cxi = RdmaHardware {
            verbs: false,
            cxi: true,
        };
        assert_eq!(names(&[&plain, &verbs, &cxi], on_cxi), ["c", "p", "v"]);
        let on_verbs = RdmaHardware {
            verbs: true,
            cxi: false,
        };
        assert_eq!(names(&[&plain, &cxi, &verbs], on_verbs), ["v", "p", "c"]);
        assert_eq!(
            names(&[&plain, &cxi, &verbs], RdmaHardware::default()),
            ["p", "c", "v"],
            "unknown kind (DIMSTORE_RDMA_HARDWARE=yes): the server's order"
        );
        assert!(!RdmaHardware::default().any() && on_cxi.any() && on_verbs.any());
    }
}
