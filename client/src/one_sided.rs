//! Choosing the transport that moves object bytes from a server, and opening its reader.

use std::sync::Arc;
use std::time::Instant;

use dimstore_proto::{HelloReply, Request, Response};
use dimstore_transport::onesided::{
    auto_order, ChannelConnection, ClientSide, Messenger, OneSidedBackend, OneSidedConnection,
    RdmaHardware,
};
use dimstore_transport::tcp::TcpConnection;
use dimstore_transport::{Connection, TransportError};

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
    let hardware = RdmaHardware::detect();
    let suggested = config.rdma_hardware.unwrap_or(hardware.any());
    let wanted: Vec<&dyn OneSidedBackend> = match choice {
        TransportChoice::Auto if suggested => auto_order(
            // Offers of backends this build lacks are passed over.
            hello
                .one_sided
                .iter()
                .filter_map(|o| dimstore_backends::find(&o.transport)),
            hardware,
        ),
        TransportChoice::OneSided(name) => vec![dimstore_backends::require(name)?],
        _ => Vec::new(),
    };
    let local_ip = control.socket().local_addr().ok().map(|a| a.ip());
    for backend in wanted {
        let name = backend.name();
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
            let client_side = backend.open_reader(local_ip)?;
            Ok::<_, TransportError>((offer.address.clone(), client_side))
        })();
        match attempt {
            Ok((address, ClientSide { reader, messenger })) => {
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
