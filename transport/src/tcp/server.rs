//! The TCP server: accept connections and serve each with the shared connection loop.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;

use super::NAME;
use crate::accept::accept_until;
use crate::gate::{Admission, ConnectionGate};
use crate::serve::{serve_connection, FrameWriter};
use crate::{chain, PeerInfo, Service};

pub use crate::serve::ServeOptions;

impl FrameWriter for OwnedWriteHalf {
    async fn write_head(&mut self, head: &[u8], _fds: &[OwnedFd]) -> std::io::Result<()> {
        self.write_all(head).await
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await
    }
}

/// Serves `service` on `listener` until `shutdown` completes. Each connection `gate` admits
/// is served by a task of its own; replies that must wait (deferred gets) are written by
/// tasks of their own so the connection keeps being served. A connection `gate` refuses is
/// closed at once and counted ([`Service::record_refused`]).
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    options: ServeOptions,
    gate: &Arc<ConnectionGate>,
    shutdown: impl Future<Output = ()>,
) {
    let on_refused = || service.record_refused(NAME);
    let serve_one = |(stream, peer): (tokio::net::TcpStream, std::net::SocketAddr),
                     admission: Admission| {
        let service = Arc::clone(&service);
        async move {
            let address = peer.to_string();
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = stream.into_split();
            let peer = PeerInfo {
                address: address.clone(),
                uid: None,
            };
            let served = serve_connection(
                read_half, write_half, NAME, peer, service, options, admission,
            );
            if let Err(e) = served.await {
                tracing::debug!(peer = %address, error = %chain(&e), "connection closed");
            }
        }
    };
    accept_until(
        NAME,
        || listener.accept(),
        shutdown,
        gate,
        on_refused,
        serve_one,
    )
    .await;
}
