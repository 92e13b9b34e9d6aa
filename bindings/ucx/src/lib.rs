//! Safe Rust over UCX's UCP API (the raw bindings are `ucx-sys`).
//!
//! - [`Context`]: one per process (RMA, active messages, wakeup), configured from the
//!   `UCX_*` environment and explicit settings ([`ContextConfig`]: `TLS`, `NET_DEVICES`, ...).
//! - [`Worker`]: one per thread or progress loop; [`Worker::progress`], and
//!   [`Worker::event_fd`] + [`Worker::arm`] to sleep on epoll while idle. Everything made
//!   from a worker stays on its thread (the types are `!Send`).
//! - [`WorkerAddress`]: what a peer needs to connect; [`Endpoint::connect`] makes an
//!   endpoint to it (create one per peer and cache it).
//! - [`MemoryRegion`]: memory registered for remote reads (`ucp_mem_map`), with its packed
//!   remote key; [`RemoteKey`]: a peer's key unpacked on an endpoint.
//! - [`Endpoint::get`]: a one-sided read into a destination buffer; active messages with
//!   [`Worker::set_am_handler`] and [`Endpoint::am_send`]; [`Endpoint::flush`].
//! - [`Request`]: an operation in flight. It owns the buffer the operation writes or reads
//!   and hands it back only once UCX is done with it ([`Request::wait`] with a deadline);
//!   a request dropped in flight stays with its worker until it completes.
//!
//! Every C call goes through one checked helper that names the API, and errors are
//! [`UcxError`] `{ api, status, message }` with UCX's text for the status.
//!
//! Over tcp, UCX emulates RMA with active messages: the *target* worker must keep
//! progressing while peers read its memory, and few large reads should be in flight per
//! endpoint at once (bandwidth collapses with many).

// This crate is an FFI layer (safe wrappers over ucx-sys): it needs `unsafe` to call C,
// which the workspace's `unsafe_code = "deny"` rejects everywhere else. Every unsafe block
// carries a `// SAFETY:` comment and every unsafe fn a `# Safety` section.
#![allow(unsafe_code)]

mod am;
mod context;
mod endpoint;
mod error;
mod memory;
mod request;
mod thread_safety;
mod worker;

pub use am::AmMessage;
pub use context::{Context, ContextConfig};
pub use endpoint::{Endpoint, ErrorMode};
pub use error::{Result, Status, UcxError};
pub use memory::{MemoryRegion, RemoteKey};
pub use request::{Request, WaitError};
pub use stable_deref_trait::StableDeref;
pub use worker::{Worker, WorkerAddress};
