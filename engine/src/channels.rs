//! The channels a service has open on fabric messages: sessions of their own, opened from
//! an authenticated connection (`OpenChannel`) and closed with it, which is how a dead client
//! is noticed (fabrics do not say).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// An open channel.
struct Channel<T> {
    session: Arc<Mutex<T>>,
    peer: Vec<u8>,
}

/// The channels a service has open, by id.
pub struct ChannelTable<T> {
    channels: Mutex<HashMap<u64, Channel<T>>>,
}

impl<T> Default for ChannelTable<T> {
    fn default() -> Self {
        ChannelTable {
            channels: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> std::fmt::Debug for ChannelTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.channels.lock().map_or(0, |c| c.len());
        f.debug_struct("ChannelTable").field("open", &open).finish()
    }
}

impl<T: Send + 'static> ChannelTable<T> {
    /// Opens channel `id` with `session`, replies going to `peer`; the session back if the
    /// id is taken (draw another). The channel closes when the guard drops.
    pub fn open(
        self: &Arc<Self>,
        id: u64,
        peer: Vec<u8>,
        session: T,
    ) -> Result<ChannelGuard<T>, T> {
        let mut channels = self.lock();
        if channels.contains_key(&id) {
            return Err(session);
        }
        let session = Arc::new(Mutex::new(session));
        channels.insert(id, Channel { session, peer });
        Ok(ChannelGuard {
            id,
            table: Arc::downgrade(self),
        })
    }

    /// The session of channel `id`, while open.
    pub fn session(&self, id: u64) -> Option<Arc<Mutex<T>>> {
        self.lock().get(&id).map(|c| Arc::clone(&c.session))
    }

    /// The client's fabric address of channel `id`, while open.
    pub fn peer(&self, id: u64) -> Option<Vec<u8>> {
        self.lock().get(&id).map(|c| c.peer.clone())
    }

    /// The distinct client addresses of the open channels.
    pub fn peers(&self) -> Vec<Vec<u8>> {
        let mut peers: Vec<Vec<u8>> = self.lock().values().map(|c| c.peer.clone()).collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Channels open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Channel<T>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a channel open; dropping it closes the channel (its session ends once no request
/// of it is being handled).
pub struct ChannelGuard<T: Send + 'static> {
    id: u64,
    table: Weak<ChannelTable<T>>,
}

impl<T: Send + 'static> ChannelGuard<T> {
    /// The channel id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl<T: Send + 'static> std::fmt::Debug for ChannelGuard<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelGuard")
            .field("id", &self.id)
            .finish()
    }
}

impl<T: Send + 'static> Drop for ChannelGuard<T> {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            // The session drops after the table's lock is released.
            let closed = table.lock().remove(&self.id);
            drop(closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_open_once_and_close_with_their_guard() {
        let table: Arc<ChannelTable<u32>> = Arc::default();
        let guard = table.open(7, b"addr".to_vec(), 1).expect("opens");
        assert!(
            matches!(table.open(7, b"other".to_vec(), 2), Err(2)),
            "id taken"
        );
        let other = table.open(8, b"addr".to_vec(), 3).expect("opens");
        assert_eq!(table.peer(7).as_deref(), Some(&b"addr"[..]));
        assert_eq!(
            table.peers(),
            vec![b"addr".to_vec()],
            "one entry per client"
        );
        assert_eq!(*table.session(8).expect("open").lock().unwrap(), 3);
        drop(guard);
        assert!(table.session(7).is_none() && table.peer(7).is_none());
        assert_eq!(table.len(), 1);
        drop(other);
        assert!(table.is_empty() && table.peers().is_empty());
    }
}
