//! Same-node access: mapping a server's segments, mapped gets, and in-place puts
//! (create, write into the mapping, seal).

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dimstore_arena::{MappedBytesMut, MappedSegment};
use dimstore_proto::{Key, Request, Response};
use dimstore_transport::{AlignedBuf, Cause};
use rkyv::api::high::HighSerializer;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::writer::Buffer;

use crate::error::{PutError, RequestError};
use crate::store::{Peer, Store};

/// The most recently used segments stay mapped (a server reuses its segments, so their pages
/// stay warm in this process too); older ones are unmapped once nothing reads them, so a
/// freed object's memory is not kept alive by this process.
const KEEP_RECENT: usize = 8;

/// How a store uses a server on its own node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalMode {
    /// Unix socket, and gets map the server's memory (the default).
    Map,
    /// Unix socket, bytes copied through it.
    Copy,
    /// TCP like any other node.
    Off,
}

/// A same-node peer's mapped segments.
#[derive(Debug, Default)]
pub(crate) struct Mappings {
    cache: Mutex<Cache>,
}

#[derive(Debug, Default)]
struct Cache {
    all: HashMap<(u32, bool), Weak<MappedSegment>>,
    recent: VecDeque<((u32, bool), Arc<MappedSegment>)>,
}

impl Cache {
    fn touch(&mut self, key: (u32, bool), mapping: &Arc<MappedSegment>) {
        if self.recent.front().is_some_and(|(k, _)| *k == key) {
            return;
        }
        self.recent.retain(|(k, _)| *k != key);
        self.recent.push_front((key, Arc::clone(mapping)));
        self.recent.truncate(KEEP_RECENT);
    }
}

impl Mappings {
    /// The mapping of `segment`, mapping it (with `fetch` giving its descriptor) if needed.
    pub(crate) fn get_or_map(
        &self,
        segment: u32,
        writable: bool,
        fetch: impl FnOnce() -> Result<(OwnedFd, u64), RequestError>,
    ) -> Result<Arc<MappedSegment>, RequestError> {
        let lock = || self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let key = (segment, writable);
        {
            let mut cache = lock();
            if let Some(hit) = cache.all.get(&key).and_then(Weak::upgrade) {
                cache.touch(key, &hit);
                return Ok(hit);
            }
        }
        let (fd, len) = fetch()?;
        let mapping =
            MappedSegment::map(fd, len, writable).map_err(|e| RequestError::Protocol {
                owner: "(this node)".into(),
                source: Cause::context(format!("cannot map segment {segment}"), e),
            })?;
        let mut cache = lock();
        cache.all.retain(|_, w| w.strong_count() > 0);
        cache.all.insert(key, Arc::downgrade(&mapping));
        cache.touch(key, &mapping);
        Ok(mapping)
    }
}

impl Store {
    /// Asks a same-node server for a segment's descriptor.
    pub(crate) fn fetch_segment(
        &self,
        owner: &str,
        segment: u32,
    ) -> Result<(OwnedFd, u64), RequestError> {
        let (_, mut reply) = self.call(owner, &Request::MapSegments { ids: vec![segment] }, &[])?;
        let protocol = |what: String| RequestError::Protocol {
            owner: owner.to_string(),
            source: what.into(),
        };
        let (fd, len) = match (&reply.response, reply.fds.pop()) {
            (Response::Segments { segments }, Some(fd))
                if segments.len() == 1 && segments[0].id == segment =>
            {
                (fd, segments[0].len)
            }
            (other, _) => {
                return Err(protocol(format!(
                    "expected segment {segment} with its descriptor, got {other:?}"
                )))
            }
        };
        // Views are checked against `len`: it must not exceed the memory behind the
        // descriptor, where a read would fault (SIGBUS).
        let held = rustix::fs::fstat(&fd)
            .map_err(|e| protocol(format!("cannot inspect segment {segment}: {e}")))?
            .st_size;
        if !u64::try_from(held).is_ok_and(|held| held >= len) {
            return Err(protocol(format!(
                "segment {segment} announced as {len} bytes holds {held}"
            )));
        }
        Ok((fd, len))
    }

    /// Reserves `capacity` bytes for an object written in place. On the same node the
    /// reservation is the server's memory itself (mapped writable, no copy on seal);
    /// otherwise it is a local buffer put on [`Reservation::seal`].
    pub fn create(&self, capacity: u64) -> Result<Reservation, PutError> {
        let owner = self.local_owner()?;
        let peer = self.peer_now(&owner)?;
        let Some(mappings) = peer.mappings.as_ref().filter(|_| capacity > 0) else {
            let len = usize::try_from(capacity)
                .map_err(|_| PutError::TooLarge(format!("{capacity} bytes")))?;
            return Ok(Reservation {
                store: self.clone(),
                target: Target::Heap(AlignedBuf::zeroed(len)),
            });
        };
        crate::store::check_fits(&peer, &[capacity])?;
        let (_, reply) = self
            .call(
                &owner,
                &Request::Create {
                    sizes: vec![capacity],
                },
                &[],
            )
            .map_err(crate::store::put_error)?;
        let reservation = match reply.response {
            Response::Created { reservations } if reservations.len() == 1 => reservations[0],
            other => return Err(crate::store::unexpected(&owner, &other).into()),
        };
        // From here on, dropping `pending` aborts the reservation at the server.
        let mut pending = Reservation {
            store: self.clone(),
            target: Target::Mapped {
                peer: Arc::clone(&peer),
                id: reservation.id,
                bytes: None,
            },
        };
        // The reservation is a segment of its own, which the server reuses for this
        // connection's later reservations only: its writable mapping stays cached.
        let mapping = mappings.get_or_map(reservation.segment, true, || {
            self.fetch_segment(&owner, reservation.segment)
        })?;
        let bytes = mapping
            .claim(reservation.offset, reservation.capacity)
            .ok_or_else(|| RequestError::Protocol {
                owner: owner.clone(),
                source: "reservation outside its segment or overlapping another".into(),
            })?;
        if let Target::Mapped { bytes: slot, .. } = &mut pending.target {
            *slot = Some(bytes);
        }
        Ok(pending)
    }

    /// Serializes `value` with rkyv straight into a reservation of `capacity` bytes and
    /// seals it: on the same node, the archive is written once, into the server's memory.
    pub fn put_archived_in_place<T>(&self, value: &T, capacity: u64) -> Result<Key, PutError>
    where
        T: for<'b, 'a> rkyv::Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>,
    {
        let mut reservation = self.create(capacity)?;
        let used = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
            value,
            Buffer::from(&mut reservation[..]),
        )
        .map_err(|e| PutError::Serialize(Cause::context(format!("reserved {capacity} bytes"), e)))?
        .len();
        reservation.seal_len(used as u64)
    }
}

/// Space reserved by [`Store::create`]: write the object into it, then [`seal`] it.
/// Readers never see it before it is sealed; dropped unsealed, it is given back.
///
/// [`seal`]: Reservation::seal
#[derive(Debug)]
pub struct Reservation {
    store: Store,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Mapped {
        peer: Arc<Peer>,
        id: u64,
        bytes: Option<MappedBytesMut>,
    },
    Heap(AlignedBuf),
    Done,
}

impl Reservation {
    /// Whether the bytes are written straight into the server's memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.target, Target::Mapped { .. })
    }

    /// Publishes the whole reservation as the object.
    pub fn seal(self) -> Result<Key, PutError> {
        let len = self.len() as u64;
        self.seal_len(len)
    }

    /// Publishes the first `len` bytes as the object.
    pub fn seal_len(mut self, len: u64) -> Result<Key, PutError> {
        match std::mem::replace(&mut self.target, Target::Done) {
            Target::Mapped { peer, id, bytes } => {
                // Give up the writable view before the object becomes readable.
                drop(bytes);
                let owner = peer.hello.advertised.clone();
                let request = Request::Seal {
                    reservations: vec![id],
                    lens: vec![len],
                };
                let (_, reply) = self
                    .store
                    .call(&owner, &request, &[])
                    .map_err(crate::store::put_error)?;
                match reply.response {
                    Response::Put { ids } if ids.len() == 1 => Ok(Key {
                        owner,
                        id: ids[0],
                        size: Some(len),
                    }),
                    other => Err(crate::store::unexpected(&owner, &other).into()),
                }
            }
            Target::Heap(buf) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(buf.len());
                self.store.put(&buf[..len])
            }
            Target::Done => Err(PutError::Serialize("reservation already sealed".into())),
        }
    }
}

impl std::ops::Deref for Reservation {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.target {
            Target::Mapped {
                bytes: Some(bytes), ..
            } => bytes,
            Target::Heap(buf) => buf,
            _ => &[],
        }
    }
}

impl std::ops::DerefMut for Reservation {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.target {
            Target::Mapped {
                bytes: Some(bytes), ..
            } => bytes,
            Target::Heap(buf) => buf,
            _ => &mut [],
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Target::Mapped { peer, id, .. } = &self.target {
            let deadline = Instant::now() + Duration::from_secs(1);
            let _ = peer.connection.notify(
                &Request::Abort {
                    reservations: vec![*id],
                },
                deadline,
            );
        }
    }
}
