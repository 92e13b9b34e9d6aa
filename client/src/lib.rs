//! The dimstore client.
//!
//! A [`Store`] talks to the server on this node (found through the fleet file, the runtime
//! directory, or spawned on demand) and to any other server a key names:
//!
//! ```no_run
//! let store = dimstore::Store::from_env()?;
//! let key = store.put(b"hello")?;              // stored on this node's server
//! let text = key.to_string();                  // dim://10.0.0.7:7100/<id>/5: send it anywhere
//! let bytes = store.get(&text.parse()?)?;      // fetched from the owner, wherever it runs
//! assert_eq!(&bytes[..], b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every operation has a timeout ([`ClientConfig::timeout`]): a dead or unreachable owner is a
//! typed error, never a hang. One connection per server is shared by all threads.
#![forbid(unsafe_code)]

mod archived;
mod config;
mod error;
pub mod fleet;
pub mod hostlist;
mod invoke;
mod local;
pub mod metrics;
mod object;
mod one_sided;
mod proxy;
pub mod runtime_dir;
pub mod spawn;
mod store;
mod trust;

pub use archived::Archived;
pub use config::{ClientConfig, SpawnPolicy, TransportChoice};
pub use dimstore_proto::{
    format_nanos, Key, KeyParseError, ObjectId, OpStats, ServerStats, TransportStats,
};
/// The error a [`RequestError`] keeps as its source, and the display of an error with its
/// causes (`outer: cause: root cause`).
pub use dimstore_transport::{chain, Cause, TransportError};
pub use error::{ConnectError, GetError, PutError, RequestError, SetError};
pub use invoke::{module_hash, InvokeError};
pub use local::{LocalMode, Reservation};
pub use metrics::{CallStats, ClientOp};
pub use object::ObjectBytes;
pub use proxy::{Proxy, ProxyError};
pub use store::{PutOptions, Store};

/// The registry of this build's transports (one-sided backends by cargo feature).
pub use dimstore_backends as backends;
pub use dimstore_backends::restore_default_signal_handlers;
