//! The same-node server: accept on a Unix socket, learn the peer's uid, serve with the shared
//! connection loop; replies that carry segment descriptors send them with `sendmsg`.

use std::future::Future;
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixListener;

use super::NAME;
use crate::accept::accept_until;
use crate::gate::{Admission, ConnectionGate};
use crate::serve::{serve_connection, FrameWriter, ServeOptions};
use crate::{chain, PeerInfo, Service};

/// Serves `service` on the Unix `listener` until `shutdown` completes, each connection
/// `gate` admits on a task of its own; one it refuses is closed at once and counted
/// ([`Service::record_refused`]).
pub async fn serve<S: Service>(
    listener: UnixListener,
    service: Arc<S>,
    options: ServeOptions,
    gate: &Arc<ConnectionGate>,
    shutdown: impl Future<Output = ()>,
) {
    let on_refused = || service.record_refused(NAME);
    let serve_one = |(stream, _): (tokio::net::UnixStream, tokio::net::unix::SocketAddr),
                     admission: Admission| {
        let service = Arc::clone(&service);
        async move {
            let cred = stream.peer_cred().ok();
            let address = match cred.as_ref().and_then(|c| c.pid()) {
                Some(pid) => format!("local pid {pid}"),
                None => "local".to_string(),
            };
            let peer = PeerInfo {
                address: address.clone(),
                uid: cred.map(|c| c.uid()),
            };
            let (read_half, write_half) = stream.into_split();
            let writer = FdWriter(write_half);
            let served =
                serve_connection(read_half, writer, NAME, peer, service, options, admission);
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

/// The write half of a Unix connection, able to pass descriptors.
struct FdWriter(OwnedWriteHalf);

impl FrameWriter for FdWriter {
    async fn write_head(&mut self, head: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
        let mut sent = 0;
        if !fds.is_empty() {
            // The descriptors ride on the first bytes of the frame.
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
            let socket = self.0.as_ref();
            while sent == 0 {
                socket.writable().await?;
                let attempt = socket.try_io(Interest::WRITABLE, || {
                    let mut space = vec![0u8; rustix::cmsg_space!(ScmRights(borrowed.len()))];
                    let mut control = SendAncillaryBuffer::new(&mut space);
                    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
                        return Err(std::io::Error::other("too many descriptors for one reply"));
                    }
                    sendmsg(
                        socket,
                        &[IoSlice::new(head)],
                        &mut control,
                        SendFlags::NOSIGNAL,
                    )
                    .map_err(std::io::Error::from)
                });
                match attempt {
                    Ok(n) => sent = n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        self.0.write_all(&head[sent..]).await
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.write_all(bytes).await
    }
}
