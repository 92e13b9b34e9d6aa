//! The connection loop every stream transport's server shares: read frames, let the
//! [`Service`] decide, write replies (with file descriptors where the socket carries them).

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use dimstore_proto::{
    decode_request, encode_response, ErrorReply, FrameError, FrameHeader, FrameKind, FrameLimits,
    Response, Status, HEADER_LEN,
};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::Mutex;

use crate::mux::frame_head;
use crate::{Outcome, PeerInfo, Reply, Service};

/// Accepts connections until `shutdown` completes, serving each with `serve_one` on a task
/// of its own. Accept errors (out of descriptors, ...) back off instead of spinning.
pub(crate) async fn accept_until<T, A, AF, C, CF>(
    mut accept: A,
    shutdown: impl Future<Output = ()>,
    serve_one: C,
) where
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<T>>,
    C: Fn(T) -> CF,
    CF: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = accept() => match accepted {
                Ok(connection) => {
                    tokio::spawn(serve_one(connection));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Writes one reply frame: header and body, passed descriptors, payload pieces.
pub(crate) trait FrameWriter: Send + 'static {
    /// Writes `head` (carrying `fds` where the socket can), then each payload piece.
    fn write_frame(
        &mut self,
        head: &[u8],
        fds: &[OwnedFd],
        payload: &[&[u8]],
    ) -> impl Future<Output = std::io::Result<()>> + Send;
}

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

type Shared<W> = Arc<Mutex<W>>;

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionEnd {
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

/// Serves one connection until the peer closes it or breaks the protocol.
pub(crate) async fn serve_connection<S: Service, R: AsyncRead + Unpin, W: FrameWriter>(
    read_half: R,
    write_half: W,
    transport: &'static str,
    peer: PeerInfo,
    service: Arc<S>,
    options: ServeOptions,
) -> Result<(), ConnectionEnd> {
    let ServeOptions {
        limits,
        stall_timeout,
    } = options;
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let writer: Shared<W> = Arc::new(Mutex::new(write_half));
    let mut session = service.open_session(transport, peer);
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
            Ok(h) if h.kind != FrameKind::Response => h,
            Ok(h) => {
                let e = ErrorReply::new(Status::BadRequest, "server accepts only request frames");
                send_reply(
                    &writer,
                    h.request_id,
                    Reply::<S::Source>::error(e),
                    &*service,
                    transport,
                )
                .await?;
                return Ok(());
            }
            Err(e) => {
                // The stream cannot be resynchronised: say why, then close.
                let id = FrameHeader::peek_request_id(&raw).unwrap_or_default();
                let reply =
                    Reply::<S::Source>::error(ErrorReply::new(Status::BadRequest, e.to_string()));
                let _ = send_reply(&writer, id, reply, &*service, transport).await;
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
                if header.kind == FrameKind::Request {
                    let reply = Reply::error(ErrorReply::new(Status::BadRequest, e.to_string()));
                    send_reply(&writer, header.request_id, reply, &*service, transport).await?;
                }
                continue;
            }
        };
        let sinks = match service.payload_sinks(&mut session, &request, header.payload_len) {
            Ok(sinks) => sinks,
            Err(e) => {
                discard(&mut reader, header.payload_len).await?;
                if header.kind == FrameKind::Request {
                    send_reply(
                        &writer,
                        header.request_id,
                        Reply::error(e),
                        &*service,
                        transport,
                    )
                    .await?;
                }
                continue;
            }
        };
        let mut sinks = sinks;
        for sink in &mut sinks {
            read_frame_part(&mut reader, sink.as_mut(), stall_timeout).await?;
        }
        // Notices get no reply.
        let answers = header.kind == FrameKind::Request;
        match service.handle(&mut session, request, sinks) {
            Outcome::Ready(reply) if answers => {
                send_reply(&writer, header.request_id, reply, &*service, transport).await?
            }
            Outcome::Ready(_) => {}
            Outcome::Deferred(later) => {
                let writer = Arc::clone(&writer);
                let service = Arc::clone(&service);
                let id = header.request_id;
                tokio::spawn(async move {
                    let reply = later.await;
                    if !answers {
                        return;
                    }
                    if let Err(e) = send_reply(&writer, id, reply, &*service, transport).await {
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

async fn send_reply<S: Service, W: FrameWriter>(
    writer: &Shared<W>,
    request_id: u64,
    reply: Reply<S::Source>,
    service: &S,
    transport: &'static str,
) -> std::io::Result<()> {
    let pieces: Vec<&[u8]> = reply.payload.iter().map(|p| p.as_ref()).collect();
    let payload_len: usize = pieces.iter().map(|p| p.len()).sum();
    let body = encode_response(&reply.response);
    let (head, rest) = frame_head(FrameKind::Response, request_id, &body, &pieces);
    writer
        .lock()
        .await
        .write_frame(&head, &reply.fds, &rest)
        .await?;
    if !matches!(reply.response, Response::Error(_)) && payload_len > 0 {
        service.record_sent(transport, payload_len as u64);
    }
    Ok(())
}
