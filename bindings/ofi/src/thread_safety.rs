//! Which types may cross or be shared between threads, pinned at compile time so that a
//! change of a field cannot silently change it.
//!
//! Domains are opened with `FI_THREAD_DOMAIN`: the application serializes every call on a
//! domain and the objects opened from it, which this crate does by keeping them on one
//! thread. So the fabric, domain, endpoint, address vector, completion queue, memory
//! regions, their descriptors and operations in flight are neither `Send` nor `Sync`; so is
//! an [`Info`] (a libfabric-allocated entry, consumed by the fabric opened from it). Plain
//! data (queries, peer addresses, access flags, errors) is both.

use static_assertions::{assert_impl_all, assert_not_impl_any};

use crate::{
    Access, AddressVector, CompletionQueue, Descriptor, Domain, Endpoint, Fabric, Info, InfoQuery,
    MemoryRegion, OfiError, Op, PeerAddr, WaitError,
};

assert_impl_all!(InfoQuery: Send, Sync);
assert_impl_all!(PeerAddr: Send, Sync);
assert_impl_all!(Access: Send, Sync);
assert_impl_all!(OfiError: Send, Sync);

assert_not_impl_any!(Info: Send, Sync);
assert_not_impl_any!(Fabric: Send, Sync);
assert_not_impl_any!(Domain: Send, Sync);
assert_not_impl_any!(Endpoint: Send, Sync);
assert_not_impl_any!(AddressVector: Send, Sync);
assert_not_impl_any!(CompletionQueue: Send, Sync);
assert_not_impl_any!(MemoryRegion: Send, Sync);
assert_not_impl_any!(Descriptor: Send, Sync);
assert_not_impl_any!(Op<Vec<u8>>: Send, Sync);
// A pending operation comes back inside the error: it stays on the thread too.
assert_not_impl_any!(WaitError<Vec<u8>>: Send, Sync);
