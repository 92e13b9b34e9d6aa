//! The client side of requests over UCX active messages, on the reader's fabric thread:
//! sends request messages, matches replies to their callers by request id, and pulls large
//! reply payloads (rendezvous).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Instant;

use dimstore_proto::{FrameHeader, FrameLimits, HEADER_LEN};
use dimstore_transport::{AlignedBuf, Cause, TransportError};
use dimstore_ucx::{AmMessage, Endpoint, Request, UcxError, Worker};

use crate::{one_sided, AM_REPLY, AM_REQUEST};

/// Where a call's answer goes: the reply's frame head and payload.
pub(crate) type Answer = mpsc::SyncSender<Result<(Vec<u8>, AlignedBuf), TransportError>>;

/// One call, as handed to the fabric thread.
pub(crate) struct CallJob {
    pub(crate) peer: Vec<u8>,
    pub(crate) head: Vec<u8>,
    pub(crate) payload: Vec<u8>,
    pub(crate) id: u64,
    /// What the reply may carry; checked before anything is received.
    pub(crate) limits: FrameLimits,
    pub(crate) deadline: Instant,
    pub(crate) answer: Answer,
}

/// The calls in progress, shared with the reply handler.
pub(crate) struct Calls {
    table: Rc<RefCell<Table>>,
}

#[derive(Default)]
struct Table {
    /// Calls waiting for their reply, by request id.
    waiting: HashMap<u64, Waiting>,
    /// Replies whose payload is being pulled.
    receiving: Vec<Receiving>,
}

struct Waiting {
    peer: Vec<u8>,
    limits: FrameLimits,
    deadline: Instant,
    answer: Answer,
    /// The request's send, until it completes.
    send: Option<Request<Vec<u8>>>,
}

struct Receiving {
    head: Vec<u8>,
    receive: Request<AlignedBuf>,
    waiting: Waiting,
}

impl Calls {
    /// Installs the reply handler on `worker`, whose endpoints send requests (replies
    /// sent at once come back on them), and on `replies`, the worker whose address servers
    /// connect to for replies that come later. A separate worker, because UCX pairs up the
    /// first endpoints two workers open to each other: a server endpoint to the requesting
    /// worker, opened while that worker's own endpoint is being wired up, lost replies
    /// under load over UCX tcp.
    pub(crate) fn start(worker: &Worker, replies: &Worker) -> Result<Calls, String> {
        let table: Rc<RefCell<Table>> = Rc::default();
        for w in [worker, replies] {
            let handler = {
                let table = Rc::clone(&table);
                move |message: AmMessage<'_>| on_reply(&table, message)
            };
            w.set_am_handler(AM_REPLY, handler)
                .map_err(|e| format!("cannot install the reply handler: {e}"))?;
        }
        Ok(Calls { table })
    }

    /// Sends `job`'s request on `ep` and waits for its reply.
    pub(crate) fn start_call(&self, ep: &Endpoint, job: CallJob) {
        let CallJob {
            peer,
            head,
            payload,
            id,
            limits,
            deadline,
            answer,
        } = job;
        let send = ep.am_send(AM_REQUEST, head, payload);
        self.table.borrow_mut().waiting.insert(
            id,
            Waiting {
                peer,
                limits,
                deadline,
                answer,
                send: Some(send),
            },
        );
    }

    /// Answers the calls that finished, failed or timed out. Returns whether any did, and
    /// the peers whose endpoints failed (to reconnect next time).
    pub(crate) fn poll(&self, now: Instant) -> (bool, Vec<Vec<u8>>) {
        let mut table = self.table.borrow_mut();
        let mut changed = false;
        let mut failed_peers = Vec::new();
        let mut i = 0;
        while i < table.receiving.len() {
            if !table.receiving[i].receive.is_complete() {
                i += 1;
                continue;
            }
            changed = true;
            let Receiving {
                head,
                receive,
                waiting,
            } = table.receiving.swap_remove(i);
            // Complete: the wait returns at once.
            let result = match receive.wait(now) {
                Ok(payload) => Ok((head, payload)),
                Err(e) => Err(failure(e.error())),
            };
            let _ = waiting.answer.send(result);
        }
        let mut ended = Vec::new();
        for (&id, waiting) in &mut table.waiting {
            if let Some(send) = &mut waiting.send {
                match send.test() {
                    None => {}
                    Some(Ok(())) => waiting.send = None,
                    Some(Err(e)) => {
                        if e.is_peer_failure() {
                            failed_peers.push(waiting.peer.clone());
                        }
                        ended.push((id, Err(failure(&e))));
                        continue;
                    }
                }
            }
            if now >= waiting.deadline {
                ended.push((id, Err(TransportError::Timeout)));
            }
        }
        for (id, result) in ended {
            changed = true;
            if let Some(waiting) = table.waiting.remove(&id) {
                let _ = waiting.answer.send(result);
            }
        }
        (changed, failed_peers)
    }

    /// Whether calls are in progress.
    pub(crate) fn busy(&self) -> bool {
        let table = self.table.borrow();
        !table.waiting.is_empty() || !table.receiving.is_empty()
    }

    /// The earliest deadline of the calls waiting.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let table = self.table.borrow();
        table.waiting.values().map(|w| w.deadline).min()
    }

    /// Fails every call (the reader stops).
    pub(crate) fn fail_all(&self) {
        let mut table = self.table.borrow_mut();
        let stopping = || one_sided("the UCX reader is shutting down");
        for (_, waiting) in table.waiting.drain() {
            let _ = waiting.answer.send(Err(stopping()));
        }
        for receiving in table.receiving.drain(..) {
            let _ = receiving.waiting.answer.send(Err(stopping()));
        }
    }
}

/// A failed send or receive, as callers see it: a server that is gone is a lost
/// connection, as on TCP.
fn failure(e: &UcxError) -> TransportError {
    if e.is_peer_failure() {
        TransportError::ConnectionLost(Cause::context("request message", e.clone()))
    } else {
        one_sided(Cause::context("request message", e.clone()))
    }
}

/// The reply handler: hands a carried reply to its caller, or starts pulling a large one.
fn on_reply(table: &RefCell<Table>, message: AmMessage<'_>) {
    let head = message.header();
    let Some(id) = FrameHeader::peek_request_id(head) else {
        tracing::debug!("dropped a reply message without a frame header");
        return;
    };
    // A reply to a call that timed out finds nobody; its data is dropped.
    let Some(waiting) = table.borrow_mut().waiting.remove(&id) else {
        return;
    };
    // Refused before anything is allocated (an unreceived rendezvous payload is dropped).
    if let Err(e) = check_reply(head, message.data_len(), &waiting.limits) {
        let _ = waiting.answer.send(Err(e));
        return;
    }
    match message.data() {
        Some(data) => {
            let mut payload = AlignedBuf::for_overwrite(data.len());
            payload.copy_from_slice(data);
            let _ = waiting.answer.send(Ok((head.to_vec(), payload)));
        }
        None => {
            let head = head.to_vec();
            let buffer = AlignedBuf::for_overwrite(message.data_len());
            let receive = message.receive(buffer);
            table.borrow_mut().receiving.push(Receiving {
                head,
                receive,
                waiting,
            });
        }
    }
}

/// Checks a reply's frame header and announced payload length against `limits`.
fn check_reply(head: &[u8], data_len: usize, limits: &FrameLimits) -> Result<(), TransportError> {
    let raw = head
        .first_chunk::<HEADER_LEN>()
        .ok_or(dimstore_proto::FrameError::ShortHead(head.len()))?;
    FrameHeader::decode(raw, limits)?;
    if data_len as u64 > limits.max_payload {
        return Err(dimstore_proto::FrameError::PayloadTooLarge {
            declared: data_len as u64,
            limit: limits.max_payload,
        }
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dimstore_proto::{encode_response, FrameKind, GetItem, Response};

    use super::*;

    fn head(body_len: Option<u32>, payload_len: u64) -> Vec<u8> {
        let response = Response::Get {
            items: vec![GetItem::Found { size: payload_len }],
        };
        let body = encode_response(&response);
        let mut head = Vec::new();
        FrameHeader::write_head(&mut head, FrameKind::Response, 7, &body, payload_len);
        if let Some(len) = body_len {
            head[16..20].copy_from_slice(&len.to_le_bytes());
        }
        head
    }

    #[test]
    fn replies_beyond_the_requests_bounds_are_refused_before_receiving() {
        let limits = FrameLimits {
            max_body: 1 << 10,
            max_payload: 8,
        };
        assert!(check_reply(&head(None, 8), 8, &limits).is_ok());
        // The header lies, or the message carries more than the header says.
        assert!(check_reply(&head(None, 1 << 40), 1 << 40, &limits).is_err());
        assert!(check_reply(&head(None, 8), 1 << 30, &limits).is_err());
        assert!(check_reply(&head(Some(u32::MAX), 8), 8, &limits).is_err());
        assert!(check_reply(&[0u8; 7], 0, &limits).is_err());
    }
}
