//! Which types may cross or be shared between threads, pinned at compile time so that a
//! change of a field cannot silently change it.
//!
//! The context is created with `mt_workers_shared` (UCX locks its shared state), so it and
//! the memory regions mapped on it are `Send + Sync`. A worker is single-threaded in UCX
//! (`UCS_THREAD_MODE_SINGLE`): it and everything made from it (endpoints, remote keys,
//! requests, received active messages) are neither `Send` nor `Sync` and stay on the thread
//! that progresses the worker. Plain data (configuration, addresses, errors) is both.

use static_assertions::{assert_impl_all, assert_not_impl_any};

use crate::{
    AmMessage, Context, ContextConfig, Endpoint, MemoryRegion, RemoteKey, Request, Status,
    UcxError, WaitError, Worker, WorkerAddress,
};

assert_impl_all!(Context: Send, Sync);
assert_impl_all!(MemoryRegion: Send, Sync);
assert_impl_all!(ContextConfig: Send, Sync);
assert_impl_all!(WorkerAddress: Send, Sync);
assert_impl_all!(Status: Send, Sync);
assert_impl_all!(UcxError: Send, Sync);

assert_not_impl_any!(Worker: Send, Sync);
assert_not_impl_any!(Endpoint: Send, Sync);
assert_not_impl_any!(RemoteKey: Send, Sync);
assert_not_impl_any!(Request<Vec<u8>>: Send, Sync);
// A pending operation comes back inside the error: it stays on the thread too.
assert_not_impl_any!(WaitError<Vec<u8>>: Send, Sync);
assert_not_impl_any!(AmMessage<'static>: Send, Sync);
