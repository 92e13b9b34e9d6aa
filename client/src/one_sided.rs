//! Choosing the transport that moves object bytes from a server, and opening its reader.

use std::sync::Arc;
use std::time::Instant;

use dimstore_proto::{HelloReply, Request, Response};
use dimstore_transport::onesided::{ChannelConnection, Messenger, OneSidedConnection, Reader};
use dimstore_transport::tcp::TcpConnection;
use dimstore_transport::{Connection, TransportError};
use dimstore_transport_ofi::OfiConfig;
use dimstore_transport_ucx::UcxConfig;

use crate::config::{ClientConfig, TransportChoice};

/// Upgrades a greeted TCP connection to a one-sided transport per `choice`: forced
/// transports the server does not offer (or this process cannot start) are an error; `auto`
/// takes the first the server offers that starts here when this node has RDMA hardware,
/// else stays on TCP.
pub(crate) fn choose(
    control: TcpConnection,
    hello: &HelloReply,
    choice: TransportChoice,
    config: &ClientConfig,
    deadline: Instant,
) -> Result<Arc<dyn Connection>, TransportError> {
    let one_sided_from = config.one_sided_from;
    let devices = RdmaDevices::detect();
    let hardware = config.rdma_hardware.unwrap_or(devices.any());
    let wanted: Vec<&str> = match choice {
        TransportChoice::Tcp => Vec::new(),
        TransportChoice::Auto if !hardware => Vec::new(),
        TransportChoice::Auto => auto_order(
            hello.one_sided.iter().map(|o| o.transport.as_str()),
            devices,
        ),
        forced => vec![forced.forced_one_sided().unwrap_or_default()],
    };
    let local_ip = control
        .socket()
        .local_addr()
        .ok()
        .map(|a| a.ip().to_string());
    for name in wanted {
        let attempt = (|| {
            let offer = hello
                .one_sided
                .iter()
                .find(|o| o.transport == name)
                .ok_or_else(|| TransportError::Unavailable {
                    transport: name.to_string(),
                    source: format!(
                        "the server does not offer it (it offers {:?}; start it with --one-sided {name})",
                        hello.one_sided.iter().map(|o| &o.transport).collect::<Vec<_>>()
                    )
                    .into(),
                })?;
            let reader = reader(name, local_ip.as_deref())?;
            Ok::<_, TransportError>((offer.address.clone(), reader))
        })();
        match attempt {
            Ok((address, (reader, messenger))) => {
                let control: Arc<dyn Connection> = match messenger {
                    Some(messenger) => open_channel(control, messenger, &address, deadline)?,
                    None => Arc::new(control),
                };
                let reply = control.call(
                    &Request::UseOneSided {
                        transport: name.to_string(),
                        from: one_sided_from,
                    },
                    &[],
                    0,
                    deadline,
                )?;
                match reply.response {
                    Response::Done => {
                        return Ok(Arc::new(OneSidedConnection::new(control, reader, address)));
                    }
                    other => {
                        return Err(TransportError::Unavailable {
                            transport: name.to_string(),
                            source: format!("the server refused it: {other:?}").into(),
                        })
                    }
                }
            }
            Err(e) if choice != TransportChoice::Auto => return Err(e),
            Err(_) => continue,
        }
    }
    Ok(Arc::new(control))
}

/// Requests go on `control` until a channel is open; then on the channel, with `control`
/// kept open beside it (the server closes the channel with it). A server that takes no
/// requests on the transport's messages keeps them on `control`.
fn open_channel(
    control: TcpConnection,
    messenger: Arc<dyn Messenger>,
    peer: &[u8],
    deadline: Instant,
) -> Result<Arc<dyn Connection>, TransportError> {
    let reply = control.call(
        &Request::OpenChannel {
            transport: messenger.name().to_string(),
            address: messenger.address(),
        },
        &[],
        0,
        deadline,
    )?;
    match reply.response {
        Response::Channel { id } => Ok(Arc::new(ChannelConnection::new(
            control,
            messenger,
            peer.to_vec(),
            id,
        ))),
        // An older server, or one whose transport cannot take requests.
        _ => Ok(Arc::new(control)),
    }
}

/// A reader and, where requests travel on the transport's own messages, its messenger.
type Readers = (Arc<dyn Reader>, Option<Arc<dyn Messenger>>);

/// This process's reader for `name` (one per process, started on first use). libfabric
/// binds to `DIMSTORE_OFI_NODE`, else to the address the control connection left from.
fn reader(name: &str, local_ip: Option<&str>) -> Result<Readers, TransportError> {
    match name {
        "ucx" => {
            let config = UcxConfig::from_env();
            let reader = dimstore_transport_ucx::shared_reader(&config)?;
            let messenger = config
                .requests_over_am
                .then(|| Arc::clone(&reader) as Arc<dyn Messenger>);
            Ok((reader as Arc<dyn Reader>, messenger))
        }
        "ofi" => {
            let mut config = OfiConfig::from_env()?;
            // shm names its endpoint after the node: a shared default would collide.
            if config.node.is_none() && config.provider != "shm" {
                config.node = local_ip.map(str::to_string);
            }
            Ok((
                dimstore_transport_ofi::shared_reader(&config)? as Arc<dyn Reader>,
                None,
            ))
        }
        other => Err(TransportError::Unavailable {
            transport: other.to_string(),
            source: "not a one-sided transport of this build".into(),
        }),
    }
}

/// The RDMA devices of this node, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RdmaDevices {
    /// Verbs devices (InfiniBand, RoCE, EFA): `/sys/class/infiniband`.
    verbs: bool,
    /// HPE Slingshot NICs: `/sys/class/cxi`.
    cxi: bool,
}

impl RdmaDevices {
    fn detect() -> RdmaDevices {
        let present = |dir: &str| {
            std::fs::read_dir(dir)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false)
        };
        RdmaDevices {
            verbs: present("/sys/class/infiniband"),
            cxi: present("/sys/class/cxi"),
        }
    }

    fn any(self) -> bool {
        self.verbs || self.cxi
    }
}

/// The order `auto` tries the server's one-sided offers in: libfabric first on a Slingshot
/// node (UCX has no provider for its NIC, so it would fall back to TCP), UCX first on a
/// node with verbs devices only, otherwise the server's order.
fn auto_order<'a>(offers: impl Iterator<Item = &'a str>, devices: RdmaDevices) -> Vec<&'a str> {
    let mut order: Vec<&str> = offers.collect();
    let first = match devices {
        RdmaDevices { cxi: true, .. } => Some("ofi"),
        RdmaDevices {
            verbs: true,
            cxi: false,
        } => Some("ucx"),
        _ => None,
    };
    if let Some(first) = first {
        // Stable: the others keep the server's order.
        order.sort_by_key(|name| *name != first);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_libfabric_on_slingshot_and_ucx_on_verbs() {
        let offers = || ["ucx", "ofi"].into_iter();
        let cxi = RdmaDevices {
            verbs: false,
            cxi: true,
        };
        let verbs = RdmaDevices {
            verbs: true,
            cxi: false,
        };
        assert_eq!(auto_order(offers(), cxi), ["ofi", "ucx"]);
        assert_eq!(auto_order(offers(), verbs), ["ucx", "ofi"]);
        assert_eq!(
            auto_order(["ofi", "ucx"].into_iter(), verbs),
            ["ucx", "ofi"]
        );
        assert_eq!(
            auto_order(offers(), RdmaDevices::default()),
            ["ucx", "ofi"],
            "unknown kind (DIMSTORE_RDMA_HARDWARE=yes): the server's order"
        );
        assert_eq!(auto_order(["ucx"].into_iter(), cxi), ["ucx"]);
        assert!(!RdmaDevices::default().any() && cxi.any() && verbs.any());
    }
}
