//! Choosing the transport that moves object bytes from a server, and opening its reader.

use std::sync::Arc;
use std::time::Instant;

use dimstore_proto::{HelloReply, Request, Response};
use dimstore_transport::onesided::{OneSidedConnection, Reader};
use dimstore_transport::tcp::TcpConnection;
use dimstore_transport::{Connection, TransportError};
use dimstore_transport_ofi::OfiConfig;
use dimstore_transport_ucx::UcxConfig;

use crate::config::{ClientConfig, TransportChoice};

/// The outcome of choosing: the connection to use.
pub(crate) struct Chosen {
    pub(crate) connection: Arc<dyn Connection>,
}

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
) -> Result<Chosen, TransportError> {
    let one_sided_from = config.one_sided_from;
    let hardware = config.rdma_hardware.unwrap_or_else(rdma_hardware_present);
    let wanted: Vec<&str> = match choice {
        TransportChoice::Tcp => Vec::new(),
        TransportChoice::Auto if !hardware => Vec::new(),
        TransportChoice::Auto => hello
            .one_sided
            .iter()
            .map(|o| o.transport.as_str())
            .collect(),
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
                    reason: format!(
                        "the server does not offer it (it offers {:?}; start it with --one-sided {name})",
                        hello.one_sided.iter().map(|o| &o.transport).collect::<Vec<_>>()
                    ),
                })?;
            let reader = reader(name, local_ip.as_deref())?;
            Ok::<_, TransportError>((offer.address.clone(), reader))
        })();
        match attempt {
            Ok((address, reader)) => {
                let reply = control.call(
                    &Request::UseOneSided {
                        transport: name.to_string(),
                        from: one_sided_from,
                    },
                    &[],
                    deadline,
                )?;
                match reply.response {
                    Response::Done => {
                        return Ok(Chosen {
                            connection: Arc::new(OneSidedConnection::new(control, reader, address)),
                        });
                    }
                    other => {
                        return Err(TransportError::Unavailable {
                            transport: name.to_string(),
                            reason: format!("the server refused it: {other:?}"),
                        })
                    }
                }
            }
            Err(e) if choice != TransportChoice::Auto => return Err(e),
            Err(_) => continue,
        }
    }
    Ok(Chosen {
        connection: Arc::new(control),
    })
}

/// This process's reader for `name` (one per process, started on first use). libfabric
/// binds to `DIMSTORE_OFI_NODE`, else to the address the control connection left from.
fn reader(name: &str, local_ip: Option<&str>) -> Result<Arc<dyn Reader>, TransportError> {
    match name {
        "ucx" => {
            Ok(dimstore_transport_ucx::shared_reader(&UcxConfig::from_env())? as Arc<dyn Reader>)
        }
        "ofi" => {
            let mut config = OfiConfig::from_env()?;
            // shm names its endpoint after the node: a shared default would collide.
            if config.node.is_none() && config.provider != "shm" {
                config.node = local_ip.map(str::to_string);
            }
            Ok(dimstore_transport_ofi::shared_reader(&config)? as Arc<dyn Reader>)
        }
        other => Err(TransportError::Unavailable {
            transport: other.to_string(),
            reason: "not a one-sided transport of this build".into(),
        }),
    }
}

/// Whether this node has RDMA devices (InfiniBand/RoCE/EFA verbs devices, or Slingshot CXI).
fn rdma_hardware_present() -> bool {
    ["/sys/class/infiniband", "/sys/class/cxi"]
        .iter()
        .any(|dir| {
            std::fs::read_dir(dir)
                .map(|mut entries| entries.next().is_some())
                .unwrap_or(false)
        })
}
