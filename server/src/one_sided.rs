//! Starting the one-sided transports the server exports its memory on.
//!
//! Over UCX tcp/shm and libfabric shm a remote key does not bound reads, so whoever reaches
//! a transport's listener can read the server process: the transports listen only on the
//! control interface (the one the TCP listener is bound to), never on every interface, unless
//! the user names the fabric interface (`UCX_NET_DEVICES`, `DIMSTORE_OFI_NODE`).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use dimstore_proto::OneSidedOffer;
use dimstore_transport::onesided::{ControlInterface, OneSidedBackend};
use dimstore_transport::{chain, TransportError};

use crate::config::OneSided;
use crate::service::Exporters;

/// Starts the exporters `wanted` names (each a backend of the `dimstore-backends`
/// registry), listening on the control interface: the address `listen` the TCP listener is
/// bound to, or when that is every address, the local address the advertised host `host`
/// names (if none, every interface, like the control listener). Under [`OneSided::Auto`]
/// every backend of this build is tried, and one that cannot start is logged and skipped;
/// a required one fails the start.
pub fn start(
    wanted: &OneSided,
    listen: SocketAddr,
    host: &str,
) -> Result<(Vec<OneSidedOffer>, Exporters), TransportError> {
    let (backends, required): (Vec<&dyn OneSidedBackend>, bool) = match wanted {
        OneSided::None => (Vec::new(), false),
        OneSided::Auto => (dimstore_backends::one_sided().to_vec(), false),
        OneSided::Required(names) => (
            names
                .iter()
                .map(|name| dimstore_backends::require(name))
                .collect::<Result<_, _>>()?,
            true,
        ),
    };
    let control = ControlInterface {
        ip: control_ip(listen, host),
        host,
    };
    let mut offers = Vec::new();
    let mut exporters = Vec::new();
    for backend in backends {
        let name = backend.name();
        match backend.start_exporter(&control) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
