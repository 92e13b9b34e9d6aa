//! Starting the one-sided transports the server exports its memory on.
//!
//! Over UCX tcp/shm and libfabric shm a remote key does not bound reads, so whoever reaches
//! a transport's listener can read the server process: the transports listen only on the
//! control interface (the one the TCP listener is bound to), never on every interface, unless
//! the user names the fabric interface (`UCX_NET_DEVICES`, `DIMSTORE_OFI_NODE`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use dimstore_proto::OneSidedOffer;
use dimstore_transport::onesided::Exporter;
use dimstore_transport::{chain, TransportError};
use dimstore_transport_ofi::{OfiConfig, OfiExporter};
use dimstore_transport_ucx::{UcxConfig, UcxExporter};

use crate::config::{OneSided, ONE_SIDED_TRANSPORTS};
use crate::service::Exporters;

/// Starts the exporters `wanted` names, listening on the control interface: the address
/// `listen` the TCP listener is bound to, or when that is every address, the local address
/// the advertised host `host` names (if none, every interface, like the control listener).
/// Under [`OneSided::Auto`] a transport that cannot start is logged and skipped; a required
/// one fails the start.
pub fn start(
    wanted: &OneSided,
    listen: SocketAddr,
    host: &str,
) -> Result<(Vec<OneSidedOffer>, Exporters), TransportError> {
    let (names, required): (Vec<&str>, bool) = match wanted {
        OneSided::None => (Vec::new(), false),
        OneSided::Auto => (ONE_SIDED_TRANSPORTS.to_vec(), false),
        OneSided::Required(names) => (names.iter().map(String::as_str).collect(), true),
    };
    let control = control_ip(listen, host);
    let mut offers = Vec::new();
    let mut exporters = Vec::new();
    for name in names {
        let started: Result<Arc<dyn Exporter>, TransportError> = match name {
            "ucx" => ucx_devices(control).and_then(|devices| {
                UcxExporter::start_on(&UcxConfig::from_env(), devices.as_deref())
                    .map(|e| e as Arc<dyn Exporter>)
            }),
            "ofi" => OfiConfig::from_env().and_then(|mut config| {
                // shm names its endpoint after the node: a shared default would collide.
                if config.node.is_none() && config.provider != "shm" {
                    config.node = match control {
                        Some(ip) => Some(ip.to_string()),
                        None => (host != "0.0.0.0").then(|| host.to_string()),
                    };
                }
                OfiExporter::start(&config).map(|e| e as Arc<dyn Exporter>)
            }),
            other => Err(TransportError::Unavailable {
                transport: other.to_string(),
                source: "not a one-sided transport of this build".into(),
            }),
        };
        match started {
            Ok(exporter) => {
                tracing::info!(transport = name, detail = %exporter.detail(), "one-sided transport ready");
                offers.push(OneSidedOffer {
                    transport: exporter.name().to_string(),
                    detail: exporter.detail(),
                    address: exporter.address(),
                });
                exporters.push(exporter);
            }
            Err(e) if required => return Err(e),
            Err(e) => tracing::info!("one-sided transport {name} skipped: {}", chain(&e)),
        }
    }
    Ok((offers, Exporters(exporters)))
}

/// The control interface's address: the listen address, or when listening on every address,
/// the local address the advertised `host` resolves to; `None` when that is no local address.
fn control_ip(listen: SocketAddr, host: &str) -> Option<IpAddr> {
    if !listen.ip().is_unspecified() {
        return Some(listen.ip());
    }
    let local: Vec<IpAddr> = if_addrs::get_if_addrs()
        .ok()?
        .into_iter()
        .map(|i| i.ip())
        .collect();
    (host, 0)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .find(|ip| !ip.is_unspecified() && local.contains(ip))
}

/// The network devices UCX may open: `None` (UCX's own choice) when `UCX_NET_DEVICES` is set
/// (the user named the fabric interface) or there is no control address; else the interface
/// carrying `control`, plus the RDMA ports (`mlx5_0:1`: verbs devices listen on no IP
/// socket, and their keys do bound reads).
fn ucx_devices(control: Option<IpAddr>) -> Result<Option<String>, TransportError> {
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
        .ok_or_else(|| TransportError::Unavailable {
            transport: "ucx".into(),
            source: format!("no interface carries the control address {ip} to listen on").into(),
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
    fn ucx_listens_on_the_interface_of_the_control_address() {
        if std::env::var_os("UCX_NET_DEVICES").is_some() {
            return; // The user's devices win; nothing of ours to check.
        }
        for ip in ["127.0.0.1", "127.0.0.2"] {
            let devices = ucx_devices(Some(ip.parse().expect("ip"))).expect("an interface");
            let devices = devices.expect("restricted");
            assert_eq!(devices.split(',').next(), Some("lo"), "{ip}: {devices}");
        }
        assert_eq!(ucx_devices(None).expect("no restriction"), None);
    }

    #[test]
    fn the_control_address_is_the_bound_one_or_the_advertised_local_one() {
        let lo: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(
            control_ip("127.0.0.1:0".parse().expect("addr"), "x"),
            Some(lo)
        );
        assert_eq!(
            control_ip("0.0.0.0:0".parse().expect("addr"), "127.0.0.1"),
            Some(lo)
        );
        assert_eq!(
            control_ip("0.0.0.0:0".parse().expect("addr"), "192.0.2.254"),
            None,
            "not a local address: every interface, like the control listener"
        );
    }
}
