//! The client connection of a one-sided transport: control over an inner connection (TCP),
//! object bytes by one-sided reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dimstore_proto::{GetItem, Request, Response, SegmentKey};

use super::{Reader, RemoteRead, RemoteRegion};
use crate::{AlignedBuf, Connection, ReplyFrame, TransportError};

/// A connection whose gets are answered with remote regions that it reads one-sided, then
/// returns as ordinary inline replies.
pub struct OneSidedConnection<C> {
    control: C,
    reader: Arc<dyn Reader>,
    /// The server's address on the reader's transport.
    peer: Vec<u8>,
    /// Segment keys fetched so far (segment ids are never reused by a server instance).
    keys: Mutex<HashMap<u32, RemoteRegion>>,
}

impl<C: Connection> OneSidedConnection<C> {
    /// Wraps `control`, a greeted connection on which [`Request::UseOneSided`] was accepted
    /// for `reader`'s transport; `peer` is the server's address on that transport.
    pub fn new(control: C, reader: Arc<dyn Reader>, peer: Vec<u8>) -> Self {
        *users().entry((reader.name(), peer.clone())).or_default() += 1;
        OneSidedConnection {
            control,
            reader,
            peer,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the remote items of a get reply (together at most `limit` bytes with the
    /// inline ones) and turns them into inline ones.
    fn resolve(
        &self,
        items: Vec<GetItem>,
        inline: AlignedBuf,
        limit: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        let leases: Vec<u64> = items
            .iter()
            .filter_map(|i| match *i {
                GetItem::Remote { lease, .. } => Some(lease),
                _ => None,
            })
            .collect();
        let result = self.read_items(&items, &inline, limit, deadline);
        // Release whatever happened: the server must not pin the objects for us any longer.
        // If the notice cannot be sent the connection is gone, and its leases with it.
        let _ = self.control.notify(&Request::Release { leases }, deadline);
        let payload = result?;
        let items = items
            .into_iter()
            .map(|item| match item {
                GetItem::Remote { size, .. } => GetItem::Found { size },
                other => other,
            })
            .collect();
        Ok(ReplyFrame {
            response: Response::Get { items },
            payload,
            fds: Vec::new(),
        })
    }

    fn read_items(
        &self,
        items: &[GetItem],
        inline: &AlignedBuf,
        limit: u64,
        deadline: Instant,
    ) -> Result<AlignedBuf, TransportError> {
        let total = items
            .iter()
            .map(|i| match *i {
                GetItem::Found { size } | GetItem::Remote { size, .. } => size,
                _ => 0,
            })
            .try_fold(0u64, u64::checked_add)
            .filter(|&total| total <= limit)
            .and_then(|total| usize::try_from(total).ok())
            .ok_or_else(|| {
                protocol(format!(
                    "get items larger than the {limit} bytes the request can return"
                ))
            })?;
        let regions = self.regions(items, deadline)?;
        // Every byte is written: inline items copied, remote ones read.
        let mut target = AlignedBuf::try_for_overwrite(total).ok_or_else(|| {
            TransportError::ConnectionLost(format!("cannot allocate {total} bytes for a reply"))
        })?;
        let mut reads = Vec::new();
        let (mut offset, mut inline_at) = (0usize, 0usize);
        // Sizes fit in `usize`: their sum does.
        for item in items {
            match *item {
                GetItem::Found { size } => {
                    let size = size as usize;
                    let bytes = inline
                        .get(inline_at..inline_at + size)
                        .ok_or_else(|| protocol("reply payload shorter than its items".into()))?;
                    target[offset..offset + size].copy_from_slice(bytes);
                    inline_at += size;
                    offset += size;
                }
                GetItem::Remote {
                    size,
                    segment,
                    offset: at,
                    ..
                } => {
                    let region = regions.get(&segment).ok_or_else(|| {
                        protocol(format!("no key for segment {segment} of a remote item"))
                    })?;
                    let address = region.address.checked_add(at).ok_or_else(|| {
                        protocol(format!("remote item at offset {at} wraps around"))
                    })?;
                    reads.push(RemoteRead {
                        address,
                        key: &region.key,
                        len: size as usize,
                        offset,
                    });
                    offset += size as usize;
                }
                _ => {}
            }
        }
        self.reader
            .read_watching(&self.peer, &reads, target, deadline, &|| {
                self.control.peer_closed()
            })
    }

    /// The keys of every segment `items` name, fetching the missing ones in one call.
    fn regions(
        &self,
        items: &[GetItem],
        deadline: Instant,
    ) -> Result<HashMap<u32, RemoteRegion>, TransportError> {
        let mut known = HashMap::new();
        let mut missing = Vec::new();
        {
            let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            for item in items {
                if let GetItem::Remote { segment, .. } = *item {
                    match keys.get(&segment) {
                        Some(region) => {
                            known.insert(segment, region.clone());
                        }
                        None if !missing.contains(&segment) => missing.push(segment),
                        None => {}
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(known);
        }
        let reply = self.control.call(
            &Request::SegmentKeys {
                ids: missing.clone(),
            },
            &[],
            0,
            deadline,
        )?;
        let fetched = match reply.response {
            Response::SegmentKeys { keys } if keys.len() == missing.len() => keys,
            Response::Error(e) => {
                return Err(TransportError::ConnectionLost(format!(
                    "server refused segment keys: {}",
                    e.message
                )))
            }
            other => {
                return Err(TransportError::ConnectionLost(format!(
                    "unexpected answer to SegmentKeys: {other:?}"
                )))
            }
        };
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        for SegmentKey { id, address, key } in fetched {
            let region = RemoteRegion { address, key };
            keys.insert(id, region.clone());
            known.insert(id, region);
        }
        Ok(known)
    }
}

impl<C: Connection> Connection for OneSidedConnection<C> {
    fn call(
        &self,
        request: &Request,
        payload: &[&[u8]],
        reply_payload: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        let reply = self
            .control
            .call(request, payload, reply_payload, deadline)?;
        match reply.response {
            Response::Get { items }
                if items.iter().any(|i| matches!(i, GetItem::Remote { .. })) =>
            {
                self.resolve(items, reply.payload, reply_payload, deadline)
            }
            response => Ok(ReplyFrame { response, ..reply }),
        }
    }

    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError> {
        self.control.notify(request, deadline)
    }

    fn is_broken(&self) -> bool {
        self.control.is_broken()
    }
}

impl<C> Drop for OneSidedConnection<C> {
    fn drop(&mut self) {
        // The reader's endpoint to the server is shared by this process's connections to
        // it: only the last one lets it go.
        let key = (self.reader.name(), self.peer.clone());
        let mut users = users();
        let last = users.get_mut(&key).is_none_or(|n| {
            *n -= 1;
            *n == 0
        });
        if last {
            users.remove(&key);
            drop(users);
            self.reader.forget(&self.peer);
        }
    }
}

/// A reply that does not fit its request.
fn protocol(what: String) -> TransportError {
    TransportError::Protocol(what)
}

/// Connections per (transport, server address) in this process.
fn users() -> std::sync::MutexGuard<'static, HashMap<(&'static str, Vec<u8>), usize>> {
    type Users = Mutex<HashMap<(&'static str, Vec<u8>), usize>>;
    static USERS: std::sync::LazyLock<Users> = std::sync::LazyLock::new(Users::default);
    USERS.lock().unwrap_or_else(|e| e.into_inner())
}
