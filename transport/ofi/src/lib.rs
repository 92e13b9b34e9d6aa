//! dimstore's libfabric one-sided data plane.
//!
//! - [`OfiExporter`] (server): registers arena segments whole with `fi_mr_reg`
//!   (`FI_REMOTE_READ`) and hands out their remote keys; implements
//!   [`dimstore_transport::onesided::Exporter`].
//! - [`OfiReader`] (client): reads registered memory of servers with `fi_read`, straight into
//!   the reply buffer, in chunks, with a bounded number of reads in flight per peer;
//!   implements [`dimstore_transport::onesided::Reader`]. [`shared_reader`] gives one reader
//!   per process and configuration.
//! - [`OfiBackend`]: both, as the registry's `ofi` backend.
//!
//! Each side owns its libfabric objects (fabric, domain, RDM endpoint with `FI_MSG | FI_RMA`,
//! address vector, completion queue) on one dedicated thread, the *fabric thread*: the safe
//! wrappers (`dimstore-ofi`) are single-threaded. Callers talk to it over a channel and wake
//! it through an eventfd. The thread sleeps in `poll` on the completion queue's wait fd
//! (`FI_WAIT_FD`, after `fi_trywait`) together with that eventfd, so it burns no CPU when
//! idle, and progresses the queue whenever it wakes: providers with manual progress
//! (`tcp;ofi_rxm`) serve peers' reads only while the target keeps reading its queue.
//! Providers without a wait fd (`shm` in libfabric 1.17) cannot be slept on: an idle
//! exporter then naps 1 ms between progress calls (about 2% of a core), a reader with reads
//! outstanding polls its queue in short slices (a brief spin, then 50 µs sleeps), and an
//! idle reader just waits for commands.
//!
//! A failed read drops its peer from the reader's cache (and, once nothing is in flight to
//! it, from the address vector); reads from that peer in the next 25 ms wait, so that the
//! provider notices a broken connection first (`ofi_rxm` looks at connection events every
//! 10 ms) and the next read really starts clean. Operations abandoned by a failed or
//! expired read keep their piece of the target buffer alive until they complete or the
//! endpoint closes: the provider never writes into freed memory.
//!
//! Nothing here names a machine: the provider (`tcp;ofi_rxm`, `shm`, `verbs;ofi_rxm`,
//! `cxi`, ...), the local node address and the domain come from [`OfiConfig`] (see
//! [`OfiConfig::from_env`]).

mod backend;
mod config;
mod exporter;
mod fabric;
mod reader;
mod register;

pub use backend::OfiBackend;
pub use config::OfiConfig;
pub use dimstore_ofi::restore_default_signal_handlers;
pub use exporter::OfiExporter;
pub use reader::{shared_reader, OfiReader};

/// Transport name, as advertised in the handshake.
pub const NAME: &str = "ofi";

/// Longest wait for a fabric thread to open its objects (fi_getinfo through the endpoint).
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
