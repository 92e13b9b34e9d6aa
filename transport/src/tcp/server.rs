//! The TCP server loop: accept, read frames, let the [`Service`] decide, write replies.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dimstore_proto::{
    decode_request, encode_response, ErrorReply, FrameError, FrameHeader, FrameKind, FrameLimits,
    Response, Status, HEADER_LEN,
};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

use super::{COALESCE_LIMIT, NAME};
use crate::{Outcome, Reply, Service};

/// How the TCP server treats its peers.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Limits enforced on every frame header before anything is allocated.
    pub limits: FrameLimits,
    /// Once a frame has started, each chunk of it must arrive within this time, or the
    /// connection is closed (and memory reserved for its payload freed). Idle connections
    /// between frames are not affected.
    pub stall_timeout: Duration,
}

/// Chunk size for the stall timeout: a payload must make this much progress per timeout.
const PROGRESS_CHUNK: usize = 4 << 20;

/// Serves `service` on `listener` until `shutdown` completes. Each connection is served by a
/// task of its own; replies that must wait (deferred gets) are written by tasks of their own
/// so the connection keeps being served.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let service = Arc::clone(&service);
                    tokio::spawn(async move {
                        let peer = peer.to_string();
                        if let Err(e) = serve_connection(stream, service, options, &peer).await {
                            tracing::debug!(%peer, error = %e, "connection closed");
                        }
                    });
                }
                Err(e) => {
                    // Out of fds and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("peer closed or I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("refused frame: {0}")]
    Frame(#[from] FrameError),
    #[error("peer stalled for {0:?} in the middle of a frame")]
    Stalled(Duration),
}

/// Reads exactly `buf.len()` bytes of a frame that has started, requiring progress of
/// [`PROGRESS_CHUNK`] bytes per `stall` period.
async fn read_frame_part<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    stall: Duration,
) -> Result<(), ConnectionEnd> {
    for chunk in buf.chunks_mut(PROGRESS_CHUNK) {
        tokio::time::timeout(stall, reader.read_exact(chunk))
            .await
            .map_err(|_| ConnectionEnd::Stalled(stall))??;
    }
    Ok(())
}

async fn serve_connection<S: Service>(
    stream: TcpStream,
    service: Arc<S>,
    options: ServeOptions,
    peer: &str,
) -> Result<(), ConnectionEnd> {
    let ServeOptions {
        limits,
        stall_timeout,
    } = options;
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let writer: Writer = Arc::new(Mutex::new(write_half));
    let mut session = service.open_session(NAME, peer.to_string());
    loop {
        let mut raw = [0u8; HEADER_LEN];
        // Between frames a connection may idle forever; once a frame starts, it must flow.
        match reader.read_exact(&mut raw[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        read_frame_part(&mut reader, &mut raw[1..], stall_timeout).await?;
        let header = match FrameHeader::decode(&raw, &limits) {
            Ok(h) if h.kind == FrameKind::Request => h,
            Ok(h) => {
                let e = ErrorReply::new(Status::BadRequest, "server accepts only request frames");
                send_reply(
                    &writer,
                    h.request_id,
                    Reply::<S::Source>::error(e),
                    &*service,
                )
                .await?;
                return Ok(());
            }
            Err(e) => {
                // The stream cannot be resynchronised: say why, then close.
                let id = u64::from_le_bytes(raw[8..16].try_into().unwrap_or_default());
                let reply =
                    Reply::<S::Source>::error(ErrorReply::new(Status::BadRequest, e.to_string()));
                let _ = send_reply(&writer, id, reply, &*service).await;
                return Err(e.into());
            }
        };
        let mut body = AlignedVec::<16>::with_capacity(header.body_len as usize);
        body.resize(header.body_len as usize, 0);
        read_frame_part(&mut reader, &mut body, stall_timeout).await?;
        let request = match decode_request(&body) {
            Ok(r) => r,
            Err(e) => {
                discard(&mut reader, header.payload_len).await?;
                let reply = Reply::error(ErrorReply::new(Status::BadRequest, e.to_string()));
                send_reply(&writer, header.request_id, reply, &*service).await?;
                continue;
            }
        };
        let sinks = match service.payload_sinks(&mut session, &request, header.payload_len) {
            Ok(sinks) => sinks,
            Err(e) => {
                discard(&mut reader, header.payload_len).await?;
                send_reply(&writer, header.request_id, Reply::error(e), &*service).await?;
                continue;
            }
        };
        let mut sinks = sinks;
        for sink in &mut sinks {
            read_frame_part(&mut reader, sink.as_mut(), stall_timeout).await?;
        }
        match service.handle(&mut session, request, sinks) {
            Outcome::Ready(reply) => {
                send_reply(&writer, header.request_id, reply, &*service).await?
            }
            Outcome::Deferred(later) => {
                let writer = Arc::clone(&writer);
                let service = Arc::clone(&service);
                let id = header.request_id;
                tokio::spawn(async move {
                    let reply = later.await;
                    if let Err(e) = send_reply(&writer, id, reply, &*service).await {
                        tracing::debug!(error = %e, "deferred reply not delivered");
                    }
                });
            }
        }
    }
}

/// Reads and drops `len` payload bytes (of a refused request) to stay in sync.
async fn discard<R: AsyncRead + Unpin>(reader: &mut R, len: u64) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut reader.take(len), &mut tokio::io::sink()).await?;
    if copied < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

async fn send_reply<S: Service>(
    writer: &Writer,
    request_id: u64,
    reply: Reply<S::Source>,
    service: &S,
) -> std::io::Result<()> {
    let body = encode_response(&reply.response);
    let payload_len: usize = reply.payload.iter().map(|p| p.as_ref().len()).sum();
    let header = FrameHeader {
        kind: FrameKind::Response,
        request_id,
        body_len: body.len() as u32,
        payload_len: payload_len as u64,
    };
    let coalesce = payload_len <= COALESCE_LIMIT;
    let mut head =
        Vec::with_capacity(HEADER_LEN + body.len() + if coalesce { payload_len } else { 0 });
    head.extend_from_slice(&header.encode());
    head.extend_from_slice(&body);
    if coalesce {
        for piece in &reply.payload {
            head.extend_from_slice(piece.as_ref());
        }
    }
    let mut w = writer.lock().await;
    w.write_all(&head).await?;
    if !coalesce {
        for piece in &reply.payload {
            w.write_all(piece.as_ref()).await?;
        }
    }
    drop(w);
    if !matches!(reply.response, Response::Error(_)) && payload_len > 0 {
        service.record_sent(NAME, payload_len as u64);
    }
    Ok(())
}
