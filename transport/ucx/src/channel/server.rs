//! The server side of requests over UCX active messages: the exporter's fabric thread
//! receives them, hands them to the [`RpcHost`] and sends the replies.
//!
//! A request is active message [`AM_REQUEST`] whose header is the channel id and the frame
//! head, and whose data is the payload; the reply is [`AM_REPLY`] with the frame head as
//! header and the payload as data. Small payloads arrive with the message and are handled
//! inside the message handler, which answers on UCX's reply endpoint at once. A large
//! payload is announced (rendezvous): the server allocates the request's memory first, then
//! pulls the payload from the client's buffer with `ucp_am_recv_data_nbx` (a one-sided get
//! on RDMA hardware) straight into it (a put of one object: its arena allocation; several
//! objects go through a staging buffer), and handles the request once it has landed; such replies, and replies that come later (a get waiting for a deferred
//! object, requests run off the fabric thread), go on an endpoint of the channel's own,
//! connected to the address the client gave when it opened the channel.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use std::time::Instant;

use dimstore_transport::channel::{IncomingRequest, LaterReply, RpcHost, RpcReply, CHANNEL_PREFIX};
use dimstore_transport::onesided::IncomingTarget;
use dimstore_transport::AlignedBuf;
use dimstore_ucx::{AmMessage, Endpoint, Request, Worker, WorkerAddress};

use crate::{AM_REPLY, AM_REQUEST};

/// Channels served by one exporter's fabric thread.
pub(crate) struct Served {
    host: Arc<dyn RpcHost>,
    later: LaterReply,
    /// Requests whose payload is being pulled, shared with the message handler.
    arrivals: Rc<RefCell<Vec<Arrival>>>,
    /// Reply endpoints, per client address: a process's channels share one (closing one
    /// of several endpoints between two workers can break the others over tcp).
    endpoints: HashMap<Vec<u8>, Endpoint>,
}

/// A request whose rendezvous payload is being received.
enum Arrival {
    /// Straight into the request's own memory (a put of one object).
    Direct {
        channel: u64,
        receive: Request<IncomingTarget>,
    },
    /// Into a staging buffer, copied into the request's memory at the end (several objects).
    Staged {
        channel: u64,
        request: Box<dyn IncomingRequest>,
        receive: Request<AlignedBuf>,
    },
}

impl Arrival {
    fn is_complete(&mut self) -> bool {
        match self {
            Arrival::Direct { receive, .. } => receive.is_complete(),
            Arrival::Staged { receive, .. } => receive.is_complete(),
        }
    }
}

impl Served {
    /// Installs the request handler on `worker`; `later` queues replies produced off the
    /// fabric thread back to it.
    pub(crate) fn start(
        worker: &Worker,
        host: Arc<dyn RpcHost>,
        later: LaterReply,
    ) -> Result<Served, String> {
        let arrivals: Rc<RefCell<Vec<Arrival>>> = Rc::default();
        let handler = {
            let (host, later, arrivals) =
                (Arc::clone(&host), Arc::clone(&later), Rc::clone(&arrivals));
            move |message: AmMessage<'_>| on_request(&*host, &later, &arrivals, message)
        };
        worker
            .set_am_handler(AM_REQUEST, handler)
            .map_err(|e| format!("cannot install the request handler: {e}"))?;
        Ok(Served {
            host,
            later,
            arrivals,
            endpoints: HashMap::new(),
        })
    }

    /// Handles the requests whose payload has landed; whether any did.
    pub(crate) fn poll(&mut self, worker: &Worker) -> bool {
        let landed: Vec<Arrival> = {
            let mut arrivals = self.arrivals.borrow_mut();
            let mut landed = Vec::new();
            let mut i = 0;
            while i < arrivals.len() {
                if arrivals[i].is_complete() {
                    landed.push(arrivals.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            landed
        };
        let any = !landed.is_empty();
        let now = Instant::now();
        for arrival in landed {
            // Complete: each wait returns at once.
            let (channel, reply) = match arrival {
                Arrival::Direct { channel, receive } => match receive.wait(now) {
                    Ok(target) => {
                        self.host.record_pulled(target.len() as u64);
                        (channel, target.into_request().finish(None, &self.later))
                    }
                    Err(e) => {
                        tracing::debug!(channel, "request payload not received: {}", e.error());
                        continue;
                    }
                },
                Arrival::Staged {
                    channel,
                    request,
                    receive,
                } => match receive.wait(now) {
                    Ok(payload) => {
                        self.host.record_pulled(payload.len() as u64);
                        (channel, request.finish(Some(&payload), &self.later))
                    }
                    Err(e) => {
                        tracing::debug!(channel, "request payload not received: {}", e.error());
                        continue;
                    }
                },
            };
            if let Some(reply) = reply {
                self.send(worker, channel, reply);
            }
        }
        any
    }

    /// Sends `reply` on the endpoint to channel `channel`'s client (connected on first use).
    pub(crate) fn send(&mut self, worker: &Worker, channel: u64, reply: RpcReply) {
        let Some(peer) = self.host.channel_peer(channel) else {
            return; // Closed meanwhile: nobody to answer.
        };
        if !self.endpoints.contains_key(&peer) {
            match Endpoint::connect(worker, &WorkerAddress::from_bytes(peer.clone())) {
                Ok(ep) => {
                    self.endpoints.insert(peer.clone(), ep);
                }
                Err(e) => {
                    tracing::debug!(channel, "cannot reach the channel's client: {e}");
                    return;
                }
            }
        }
        let ep = &self.endpoints[&peer];
        // The worker keeps the send until it completes; a failed one means the client
        // is gone, and its channel closes with its TCP connection.
        drop(ep.am_send(AM_REPLY, reply.head, reply.payload));
        if ep.error().is_some() {
            self.endpoints.remove(&peer);
        }
    }

    /// Drops the endpoints to clients with no channel open any more.
    pub(crate) fn sweep(&mut self) {
        let open = self.host.open_peers();
        self.endpoints.retain(|peer, _| open.contains(peer));
    }

    /// Requests whose payload is still being received.
    pub(crate) fn receiving(&self) -> bool {
        !self.arrivals.borrow().is_empty()
    }
}

/// The request handler: admits the request, then handles it at once (payload carried) or
/// starts pulling its payload (rendezvous).
fn on_request(
    host: &dyn RpcHost,
    later: &LaterReply,
    arrivals: &RefCell<Vec<Arrival>>,
    message: AmMessage<'_>,
) {
    let header = message.header();
    let Some((prefix, head)) = header.split_first_chunk::<CHANNEL_PREFIX>() else {
        tracing::debug!("dropped a request message without a channel id");
        return;
    };
    let channel = u64::from_le_bytes(*prefix);
    let answer = |reply: RpcReply| drop(message.reply(AM_REPLY, reply.head, reply.payload));
    let request = match host.begin(channel, head, message.data_len()) {
        Ok(request) => request,
        Err(Some(reply)) => return answer(reply),
        Err(None) => return,
    };
    if let Some(payload) = message.data() {
        if let Some(reply) = request.finish(Some(payload), later) {
            answer(reply);
        }
        return;
    }
    // Announced: pull it, into the request's own memory where it is one piece.
    let arrival = match IncomingTarget::new(request) {
        Ok(target) => Arrival::Direct {
            channel,
            receive: message.receive(target),
        },
        Err(request) => {
            let staging = AlignedBuf::for_overwrite(message.data_len());
            Arrival::Staged {
                channel,
                request,
                receive: message.receive(staging),
            }
        }
    };
    arrivals.borrow_mut().push(arrival);
}
