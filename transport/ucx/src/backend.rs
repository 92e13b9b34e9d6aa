//! UCX as a [`OneSidedBackend`]: the exporter listens on the control interface's network
//! device (plus the RDMA ports), the client reads with the process's shared reader and
//! sends its requests as active messages.

use std::net::IpAddr;
use std::sync::Arc;

use dimstore_transport::onesided::{
    ClientSide, ControlInterface, Exporter, LoopbackVariant, Messenger, OneSidedBackend,
    RdmaHardware, Reader,
};
use dimstore_transport::TransportError;

use crate::{shared_reader, unavailable, UcxConfig, UcxExporter, NAME};

/// The UCX backend (listed in the `dimstore-backends` registry).
#[derive(Debug, Clone, Copy, Default)]
pub struct UcxBackend;

impl OneSidedBackend for UcxBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn start_exporter(
        &self,
        control: &ControlInterface<'_>,
    ) -> Result<Arc<dyn Exporter>, TransportError> {
        let devices = net_devices(control.ip)?;
        Ok(UcxExporter::start_on(
            &UcxConfig::from_env(),
            devices.as_deref(),
        )?)
    }

    fn open_reader(&self, _local_ip: Option<IpAddr>) -> Result<ClientSide, TransportError> {
        let config = UcxConfig::from_env();
        let reader = shared_reader(&config)?;
        let messenger = config
            .requests_over_am
            .then(|| Arc::clone(&reader) as Arc<dyn Messenger>);
        Ok(ClientSide {
            reader: reader as Arc<dyn Reader>,
            messenger,
        })
    }

    /// Nodes with verbs devices and no Slingshot NIC: UCX has no provider for `cxi`.
    fn suits(&self, hardware: RdmaHardware) -> bool {
        hardware.verbs && !hardware.cxi
    }

    fn loopback_variants(&self) -> &'static [LoopbackVariant] {
        &[
            LoopbackVariant {
                name: "ucx-tcp",
                env: &[("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")],
            },
            LoopbackVariant {
                name: "ucx-shm",
                env: &[("UCX_TLS", "posix,sysv,cma")],
            },
        ]
    }
}

/// The network devices UCX may open: `None` (UCX's own choice) when `UCX_NET_DEVICES` is set
/// (the user named the fabric interface) or there is no control address; else the interface
/// carrying `control`, plus the RDMA ports (`mlx5_0:1`: verbs devices listen on no IP
/// socket, and their keys do bound reads).
fn net_devices(control: Option<IpAddr>) -> Result<Option<String>, TransportError> {
    let configured = std::env::var("UCX_NET_DEVICES").is_ok_and(|v| !v.trim().is_empty());
    let Some(ip) = control.filter(|_| !configured) else {
        return Ok(None);
    };
    // Any loopback address (127.0.0.0/8) is on the loopback interface.
    let interface = if_addrs::get_if_addrs()
        .ok()
        .and_then(|all| {
            all.into_iter()
                .find(|i| i.ip() == ip || (ip.is_loopback() && i.is_loopback()))
        })
        .ok_or_else(|| {
            unavailable(format!(
                "no interface carries the control address {ip} to listen on"
            ))
        })?;
    let mut devices = vec![interface.name];
    devices.extend(rdma_ports());
    Ok(Some(devices.join(",")))
}

/// The ports of this node's RDMA devices as UCX names them (`<device>:<port>`).
fn rdma_ports() -> Vec<String> {
    let mut ports = Vec::new();
    for device in std::fs::read_dir("/sys/class/infiniband")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = device.file_name().to_string_lossy().into_owned();
        for port in std::fs::read_dir(device.path().join("ports"))
            .into_iter()
            .flatten()
            .flatten()
        {
            ports.push(format!("{name}:{}", port.file_name().to_string_lossy()));
        }
    }
    ports.sort();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_the_interface_of_the_control_address() {
        if std::env::var_os("UCX_NET_DEVICES").is_some() {
            return; // The user's devices win; nothing of ours to check.
        }
        for ip in ["127.0.0.1", "127.0.0.2"] {
            let devices = net_devices(Some(ip.parse().expect("ip"))).expect("an interface");
            let devices = devices.expect("restricted");
            assert_eq!(devices.split(',').next(), Some("lo"), "{ip}: {devices}");
        }
        assert_eq!(net_devices(None).expect("no restriction"), None);
    }

    #[test]
    fn auto_prefers_ucx_on_verbs_nodes_without_slingshot() {
        let hardware = |verbs, cxi| RdmaHardware { verbs, cxi };
        assert!(UcxBackend.suits(hardware(true, false)));
        assert!(!UcxBackend.suits(hardware(true, true)));
        assert!(!UcxBackend.suits(hardware(false, true)));
        assert!(!UcxBackend.suits(hardware(false, false)));
    }
}
