//! Safe Rust over libfabric (the raw bindings are `libfabric-sys`).
//!
//! - [`Info::query`] with an [`InfoQuery`]: provider (`"tcp;ofi_rxm"`, `"shm"`,
//!   `"verbs;ofi_rxm"`, `"cxi"`: from configuration), node + `FI_SOURCE`, service, domain;
//!   for an `FI_EP_RDM` endpoint with `FI_MSG | FI_RMA`.
//! - [`Fabric`] and [`Domain`]; [`CompletionQueue`] (with a wait fd from `FI_WAIT_FD` +
//!   `FI_GETWAIT`, and `fi_trywait` before sleeping); [`AddressVector`] and [`PeerAddr`];
//!   [`Endpoint`] with [`Endpoint::send`], [`Endpoint::recv`] and [`Endpoint::read`].
//! - [`MemoryRegion`]: `fi_mr_reg` with a distinct requested key per region where the
//!   provider does not assign keys; [`MemoryRegion::key`], [`MemoryRegion::desc`],
//!   [`MemoryRegion::remote_address`].
//! - [`Op`]: an operation in flight that owns its buffer until its completion is read;
//!   [`Op::wait`] with a deadline. An operation dropped in flight stays with its queue
//!   until it completes or its endpoint closes.
//!
//! Everything opened from a domain stays on one thread (`FI_THREAD_DOMAIN`; the types are
//! `!Send`). Providers with manual progress (tcp;ofi_rxm) serve peers' reads only while
//! the target reads its completion queue: keep progressing it (sleeping on the wait fd).
//! Every C call goes through one checked helper; errors are [`OfiError`]
//! `{ api, code, message }` with `fi_strerror`'s text.

// This crate is an FFI layer (safe wrappers over libfabric-sys): it needs `unsafe` to call
// C, which the workspace's `unsafe_code = "deny"` rejects everywhere else. Every unsafe
// block carries a `// SAFETY:` comment and every unsafe fn a `# Safety` section.
#![allow(unsafe_code)]

mod av;
mod cq;
mod endpoint;
mod error;
mod fabric;
mod info;
mod memory;
mod op;
mod signals;
mod thread_safety;

pub use av::{AddressVector, PeerAddr};
pub use cq::CompletionQueue;
pub use endpoint::Endpoint;
pub use error::{OfiError, Result};
pub use fabric::{Domain, Fabric};
pub use info::{Info, InfoQuery};
pub use memory::{Access, Descriptor, MemoryRegion};
pub use op::{Completion, Op, WaitError};
pub use signals::restore_default_signal_handlers;
pub use stable_deref_trait::StableDeref;
