//! libfabric as a [`OneSidedBackend`]: both sides bind to the control interface's address
//! unless `DIMSTORE_OFI_NODE` names another; requests stay on the TCP connection.

use std::net::IpAddr;
use std::sync::Arc;

use dimstore_transport::onesided::{
    ClientSide, ControlInterface, Exporter, LoopbackVariant, OneSidedBackend, RdmaHardware,
};
use dimstore_transport::TransportError;

use crate::{shared_reader, OfiConfig, OfiExporter, NAME};

/// The libfabric backend (listed in the `dimstore-backends` registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct OfiBackend;

impl OneSidedBackend for OfiBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Binds to the control address: the listen address or, on 0.0.0.0, the advertised
    /// one (that host itself when it is no local address).
    fn start_exporter(
        &self,
        control: &ControlInterface<'_>,
    ) -> Result<Arc<dyn Exporter>, TransportError> {
        let node = match control.ip {
            Some(ip) => Some(ip.to_string()),
            None => (control.host != "0.0.0.0").then(|| control.host.to_owned()),
        };
        Ok(OfiExporter::start(&with_default_node(
            OfiConfig::from_env()?,
            node,
        ))?)
    }

    /// Binds to the address the control connection left from.
    fn open_reader(&self, local_ip: Option<IpAddr>) -> Result<ClientSide, TransportError> {
        let config = with_default_node(OfiConfig::from_env()?, local_ip.map(|ip| ip.to_string()));
        Ok(ClientSide {
            reader: shared_reader(&config)?,
            messenger: None,
        })
    }

    /// Slingshot nodes: UCX has no provider for their NIC; `cxi` is libfabric's.
    fn suits(&self, hardware: RdmaHardware) -> bool {
        hardware.cxi
    }

    fn loopback_variants(&self) -> &'static [LoopbackVariant] {
        &[
            LoopbackVariant {
                name: "ofi-tcp",
                env: &[
                    ("DIMSTORE_OFI_PROVIDER", "tcp;ofi_rxm"),
                    ("DIMSTORE_OFI_NODE", "127.0.0.1"),
                ],
            },
            LoopbackVariant {
                name: "ofi-shm",
                env: &[("DIMSTORE_OFI_PROVIDER", "shm")],
            },
        ]
    }

    /// Libraries loaded with libfabric (Debian's PSM providers) install SIGINT/SIGTERM
    /// handlers that `exit(1)`.
    fn restore_default_signal_handlers(&self) -> Vec<i32> {
        crate::restore_default_signal_handlers()
    }
}

/// `config` with `node` as its node when the user named none (`DIMSTORE_OFI_NODE`). Not
/// for `shm`: it names its endpoint after the node, and a shared default would collide.
fn with_default_node(mut config: OfiConfig, node: Option<String>) -> OfiConfig {
    if config.node.is_none() && config.provider != "shm" {
        config.node = node;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_node_and_shm_keep_their_own_node() {
        let tcp = OfiConfig::new("tcp;ofi_rxm", None);
        let control = Some("10.0.0.1".to_owned());
        assert_eq!(
            with_default_node(tcp.clone(), control.clone()).node,
            control
        );
        let named = OfiConfig::new("tcp;ofi_rxm", Some("10.0.0.2"));
        assert_eq!(
            with_default_node(named, control.clone()).node.as_deref(),
            Some("10.0.0.2")
        );
        let shm = OfiConfig::new("shm", None);
        assert_eq!(with_default_node(shm, control).node, None);
    }

    #[test]
    fn auto_prefers_libfabric_on_slingshot() {
        let hardware = |verbs, cxi| RdmaHardware { verbs, cxi };
        assert!(OfiBackend.suits(hardware(false, true)));
        assert!(OfiBackend.suits(hardware(true, true)));
        assert!(!OfiBackend.suits(hardware(true, false)));
    }
}
