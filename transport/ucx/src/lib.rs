//! dimstore's UCX one-sided data plane.
//!
//! - [`UcxExporter`] (server side): registers arena segments whole with `ucp_mem_map` and
//!   hands out their packed remote keys.
//! - [`UcxReader`] (client side): reads registered memory of servers with `ucp_get_nbx`
//!   straight into the reply buffer, in chunks, with a bounded number of reads in flight
//!   per endpoint; [`shared_reader`] is the one reader of a process.
//! - [`UcxBackend`]: both, as the registry's `ucx` backend.
//!
//! Each owns one UCX context and worker on a dedicated thread (the "fabric thread"): the
//! wrappers of `dimstore-ucx` are single-threaded. The thread sleeps on the worker's event
//! fd together with an eventfd that callers use to hand it commands, so it costs no CPU when
//! idle, and it progresses the worker whenever woken, which is what serves peers' emulated
//! reads over tcp (UCX emulates RMA with active messages there: the *target* must progress).
//!
//! Measured with UCX 1.13 (no RDMA NIC): with `UCX_TLS=tcp` and with
//! `UCX_TLS=posix,sysv,cma` alike, UCX serves gets of arena memory by active-message
//! emulation, so the exporter's thread must keep progressing, and the *target copies from
//! the requested address without checking it against its registrations*: a read of an
//! address whose segment was unmapped crashes the server. Clients read only objects they
//! hold a lease on, which keeps the memory mapped; keys and worker addresses are accepted
//! only from authenticated peers. Over shared memory UCX 1.13 cannot detect a dead peer
//! (over tcp it fails at once): callers learn it from the server's TCP connection closing,
//! which they check while they wait (`Reader::read_watching`, `Messenger::call`).
//!
//! UCX itself is configured by its environment (`UCX_TLS`, `UCX_NET_DEVICES`, ...), read
//! when the context is created; [`UcxConfig`] holds dimstore's own settings.

mod backend;
mod channel;
mod config;
mod exporter;
mod reader;
mod register;
mod wake;

pub use backend::UcxBackend;
pub use config::UcxConfig;
pub use exporter::UcxExporter;
pub use reader::{shared_reader, UcxReader};

use dimstore_transport::{Cause, TransportError};

/// The transport's name, as advertised in the handshake.
pub const NAME: &str = "ucx";

/// Active message id of requests on a channel (client to server).
const AM_REQUEST: u16 = 1;
/// Active message id of replies (server to client).
const AM_REPLY: u16 = 2;

/// How long a caller waits for the fabric thread to answer a command that has no deadline
/// of its own (export, sweep, start-up) before it reports the transport broken.
const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The value of `UCX_TLS` (or `default`) for logs and stats.
fn tls_detail() -> String {
    tls_detail_on(None)
}

/// [`tls_detail`] with `devices` in place of `UCX_NET_DEVICES` when given.
fn tls_detail_on(devices: Option<&str>) -> String {
    let tls = std::env::var("UCX_TLS").unwrap_or_else(|_| "default".to_owned());
    match devices
        .map(str::to_owned)
        .or_else(|| std::env::var("UCX_NET_DEVICES").ok())
    {
        Some(dev) => format!("UCX_TLS={tls} UCX_NET_DEVICES={dev}"),
        None => format!("UCX_TLS={tls}"),
    }
}

/// `TransportError::Unavailable` for this transport. Unless UCX is missing altogether, the
/// cause is put under the settings UCX read (`UCX_TLS`, `UCX_NET_DEVICES`): a transport list
/// this node cannot serve is the usual reason.
fn unavailable(why: impl Into<Cause>) -> TransportError {
    let why = why.into();
    let missing = why
        .downcast_ref::<dimstore_ucx::UcxError>()
        .is_some_and(dimstore_ucx::UcxError::is_library_missing);
    TransportError::Unavailable {
        transport: NAME.to_owned(),
        source: if missing {
            why
        } else {
            why.in_context(format!("UCX cannot run here with {}", tls_detail()))
        },
    }
}

/// `TransportError::OneSided` for this transport.
fn one_sided(why: impl Into<Cause>) -> TransportError {
    TransportError::OneSided {
        transport: NAME.to_owned(),
        source: why.into(),
    }
}
