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
            TransportError::ConnectionLost(
                format!("cannot allocate {total} bytes for a reply").into(),
            )
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
                return Err(TransportError::ConnectionLost(
                    format!("server refused segment keys: {}", e.message).into(),
                ))
            }
            other => {
                return Err(TransportError::ConnectionLost(
                    format!("unexpected answer to SegmentKeys: {other:?}").into(),
                ))
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

#[cfg(test)]
mod tests {
    //! A get reply's remote items are checked against what the request can return and
    //! against the segment keys the owner sent, before anything is allocated or read.

    use std::sync::Mutex;
    use std::time::Duration;

    use dimstore_proto::ObjectId;

    use super::*;

    /// The owner's side of the control connection: answers gets with `items` (and their
    /// inline bytes) and segment key requests with `keys`.
    struct Owner {
        items: Vec<GetItem>,
        inline: Vec<u8>,
        keys: Vec<SegmentKey>,
    }

    impl Connection for Owner {
        fn call(
            &self,
            request: &Request,
            _: &[&[u8]],
            _: u64,
            _: Instant,
        ) -> Result<ReplyFrame, TransportError> {
            let (response, payload) = match request {
                Request::Get { .. } => (
                    Response::Get {
                        items: self.items.clone(),
                    },
                    AlignedBuf::copy_from(&self.inline),
                ),
                Request::SegmentKeys { .. } => (
                    Response::SegmentKeys {
                        keys: self.keys.clone(),
                    },
                    AlignedBuf::default(),
                ),
                _ => (Response::Done, AlignedBuf::default()),
            };
            Ok(ReplyFrame {
                response,
                payload,
                fds: Vec::new(),
            })
        }

        fn notify(&self, _: &Request, _: Instant) -> Result<(), TransportError> {
            Ok(())
        }

        fn is_broken(&self) -> bool {
            false
        }
    }

    /// Fills every read with its remote address's low byte, and records the reads.
    #[derive(Default)]
    struct Memory {
        reads: Mutex<Vec<(u64, usize, usize)>>,
    }

    impl Reader for Memory {
        fn name(&self) -> &'static str {
            "test"
        }

        fn read_watching(
            &self,
            _: &[u8],
            reads: &[RemoteRead<'_>],
            mut target: AlignedBuf,
            _: Instant,
            _: &dyn Fn() -> bool,
        ) -> Result<AlignedBuf, TransportError> {
            for read in reads {
                target[read.offset..read.offset + read.len].fill(read.address as u8);
                let mut seen = self.reads.lock().unwrap();
                seen.push((read.address, read.len, read.offset));
            }
            Ok(target)
        }

        fn forget(&self, _: &[u8]) {}
    }

    fn remote(size: u64, segment: u32, offset: u64) -> GetItem {
        GetItem::Remote {
            size,
            segment,
            offset,
            lease: 1,
        }
    }

    fn key(id: u32, address: u64) -> SegmentKey {
        SegmentKey {
            id,
            address,
            key: vec![1, 2, 3],
        }
    }

    /// A get of two keys, `limit` bytes at most, through a one-sided connection to `owner`.
    fn get(owner: Owner, limit: u64) -> (Result<ReplyFrame, TransportError>, Arc<Memory>) {
        let memory = Arc::new(Memory::default());
        let reader: Arc<dyn Reader> = Arc::clone(&memory) as Arc<dyn Reader>;
        let connection = OneSidedConnection::new(owner, reader, b"owner".to_vec());
        let request = Request::Get {
            ids: vec![ObjectId(1), ObjectId(2)],
            wait_ms: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = connection.call(&request, &[], limit, deadline);
        (reply, memory)
    }

    fn is_protocol(reply: &Result<ReplyFrame, TransportError>) -> bool {
        matches!(reply, Err(TransportError::Protocol(_)))
    }

    #[test]
    fn remote_and_inline_items_become_one_inline_reply() {
        let owner = Owner {
            items: vec![remote(8, 3, 16), GetItem::Found { size: 4 }],
            inline: vec![9; 4],
            keys: vec![key(3, 0x1000)],
        };
        let (reply, memory) = get(owner, 12);
        let reply = reply.expect("a reply within its bounds");
        assert_eq!(
            reply.response,
            Response::Get {
                items: vec![GetItem::Found { size: 8 }, GetItem::Found { size: 4 }]
            }
        );
        assert_eq!(
            &reply.payload[..],
            &[0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 9, 9, 9, 9]
        );
        assert_eq!(*memory.reads.lock().unwrap(), [(0x1010, 8, 0)]);
    }

    #[test]
    fn a_remote_item_larger_than_the_request_can_return_is_refused_unread() {
        let owner = Owner {
            items: vec![remote(1 << 40, 3, 0)],
            inline: Vec::new(),
            keys: vec![key(3, 0x1000)],
        };
        let (reply, memory) = get(owner, 16);
        assert!(is_protocol(&reply), "{reply:?}");
        assert!(memory.reads.lock().unwrap().is_empty());

        // Sizes that overflow when added up.
        let owner = Owner {
            items: vec![remote(u64::MAX, 3, 0), remote(2, 3, 0)],
            inline: Vec::new(),
            keys: vec![key(3, 0x1000)],
        };
        let (reply, _) = get(owner, u64::MAX);
        assert!(is_protocol(&reply), "{reply:?}");
    }

    #[test]
    fn a_remote_item_in_a_segment_without_a_key_is_refused() {
        // The owner answers with the key of another segment than the one asked for.
        let owner = Owner {
            items: vec![remote(8, 3, 0)],
            inline: Vec::new(),
            keys: vec![key(4, 0x1000)],
        };
        let (reply, memory) = get(owner, 8);
        assert!(is_protocol(&reply), "{reply:?}");
        assert!(memory.reads.lock().unwrap().is_empty());
    }

    #[test]
    fn a_remote_offset_that_wraps_around_is_refused() {
        let owner = Owner {
            items: vec![remote(8, 3, u64::MAX - 2)],
            inline: Vec::new(),
            keys: vec![key(3, 0x1000)],
        };
        let (reply, _) = get(owner, 8);
        assert!(is_protocol(&reply), "{reply:?}");
    }

    #[test]
    fn inline_bytes_shorter_than_their_items_are_refused() {
        let owner = Owner {
            items: vec![remote(8, 3, 0), GetItem::Found { size: 8 }],
            inline: vec![1; 4],
            keys: vec![key(3, 0x1000)],
        };
        let (reply, _) = get(owner, 16);
        assert!(is_protocol(&reply), "{reply:?}");
    }
}
