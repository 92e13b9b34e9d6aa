//! The TCP server: accept connections and serve each with the shared connection loop.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;

use super::NAME;
use crate::serve::{accept_until, serve_connection, FrameWriter};
use crate::{PeerInfo, Service};

pub use crate::serve::ServeOptions;

impl FrameWriter for OwnedWriteHalf {
    async fn write_head(&mut self, head: &[u8], _fds: &[OwnedFd]) -> std::io::Result<()> {
        self.write_all(head).await
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await
    }
}

/// Serves `service` on `listener` until `shutdown` completes. Each connection is served by a
/// task of its own; replies that must wait (deferred gets) are written by tasks of their own
/// so the connection keeps being served.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let serve_one = |(stream, peer): (tokio::net::TcpStream, std::net::SocketAddr)| {
        let service = Arc::clone(&service);
        async move {
            let address = peer.to_string();
            let _ = stream.set_nodelay(true);
            let (read_half, write_half) = stream.into_split();
            let peer = PeerInfo {
                address: address.clone(),
                uid: None,
            };
            let served = serve_connection(read_half, write_half, NAME, peer, service, options);
            if let Err(e) = served.await {
                tracing::debug!(peer = %address, error = %e, "connection closed");
            }
        }
    };
    accept_until(|| listener.accept(), shutdown, serve_one).await;
}
