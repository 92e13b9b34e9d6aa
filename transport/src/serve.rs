//! The connection loop every stream transport's server shares: read frames, let the
//! [`Service`] decide, write replies (with file descriptors where the socket carries them).
//!
//! A connection is hostile until its `Hello` succeeded: until then frames are held to
//! [`FrameLimits::pre_auth`] (a small body, no payload), the `Hello` must arrive within the
//! stall timeout of connecting, and a refused `Hello` closes the connection after
//! [`AUTH_FAILURE_DELAY`]. Every reply must make progress within the stall timeout, or the
//! connection is cut and everything its session pinned is freed.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dimstore_proto::{
    decode_request_within, encode_response, ErrorReply, FrameError, FrameHeader, FrameKind,
    FrameLimits, RequestLimits, Response, Status, HEADER_LEN,
};
use rkyv::util::AlignedVec;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::mux::frame_head;
use crate::{Outcome, PeerInfo, Reply, Service};

/// How long a refused `Hello` waits before its answer and the close: a peer guessing tokens
/// gets one guess per connection and per delay. Only that connection's task waits.
pub(crate) const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(500);

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

/// The write side of a connection: frame heads (with descriptors where the socket carries
/// them) and raw bytes.
pub(crate) trait FrameWriter: Send + 'static {
    /// Writes `head` whole, carrying `fds` where the socket can.
    fn write_head(
        &mut self,
        head: &[u8],
        fds: &[OwnedFd],
    ) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Writes `bytes` whole.
    fn write_bytes(&mut self, bytes: &[u8]) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// How the TCP server treats its peers.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Limits enforced on every frame header of an authenticated connection before anything
    /// is allocated (before authentication: [`FrameLimits::pre_auth`]).
    pub limits: FrameLimits,
    /// Bounds on the counts inside each request, checked before it is decoded.
    pub requests: RequestLimits,
    /// Once a frame has started, each chunk of it must arrive within this time; each chunk
    /// of a reply must be taken by the peer within it; and a new connection must complete
    /// its `Hello` within it. Otherwise the connection is closed (and memory reserved for a
    /// payload or pinned by the session freed). Authenticated connections idle between
    /// frames are not affected.
    pub stall_timeout: Duration,
}

/// Chunk size for the stall timeout: a payload must make this much progress per timeout.
const PROGRESS_CHUNK: usize = 4 << 20;

/// Why a connection was closed by the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionEnd {
    #[error("peer closed or I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("refused frame: {0}")]
    Frame(#[from] FrameError),
    #[error("peer stalled for {0:?} in the middle of a frame")]
    Stalled(Duration),
    #[error("peer stopped taking its replies for {0:?}")]
    WriteStalled(Duration),
    #[error("no Hello within {0:?} of connecting")]
    NoHello(Duration),
    #[error("Hello refused (wrong or missing token)")]
    Unauthorized,
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

/// The start of a frame, as read off a connection.
enum Arrival {
    /// The peer closed the connection between frames.
    End,
    /// A header the limits refuse, with the request id it names: the stream is lost.
    Refused(FrameError, u64),
    /// A frame's header and body; its payload is still to be read.
    Head(FrameHeader, AlignedVec<16>),
}

/// Waits (indefinitely) for the next frame, then reads its header and body, which must
/// flow. Nothing is allocated before the header passed `limits`.
async fn arrive<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &FrameLimits,
    stall: Duration,
) -> Result<Arrival, ConnectionEnd> {
    let mut raw = [0u8; HEADER_LEN];
    match reader.read_exact(&mut raw[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(Arrival::End),
        Err(e) => return Err(e.into()),
    }
    read_frame_part(reader, &mut raw[1..], stall).await?;
    let header = match FrameHeader::decode(&raw, limits) {
        Ok(header) => header,
        Err(e) => {
            let id = FrameHeader::peek_request_id(&raw).unwrap_or_default();
            return Ok(Arrival::Refused(e, id));
        }
    };
    let mut body = AlignedVec::<16>::with_capacity(header.body_len as usize);
    body.resize(header.body_len as usize, 0);
    read_frame_part(reader, &mut body, stall).await?;
    Ok(Arrival::Head(header, body))
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
        requests,
        stall_timeout,
    } = options;
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let writer = Arc::new(ReplyWriter::new(write_half, stall_timeout));
    let mut session = service.open_session(transport, peer);
    let mut deferred = DeferredReplies::default();
    let hello_by = Instant::now() + stall_timeout;
    loop {
        deferred.forget_finished();
        let arrival = if service.authenticated(&session) {
            // Between frames an authenticated connection may idle forever; once a frame
            // starts, it must flow. A reply the peer stopped taking ends the connection.
            tokio::select! {
                arrival = arrive(&mut reader, &limits, stall_timeout) => arrival?,
                () = writer.failed() => return Err(ConnectionEnd::WriteStalled(stall_timeout)),
            }
        } else {
            const PRE_AUTH: FrameLimits = FrameLimits::pre_auth();
            let arrival = arrive(&mut reader, &PRE_AUTH, stall_timeout);
            tokio::time::timeout_at(hello_by, arrival)
                .await
                .map_err(|_| ConnectionEnd::NoHello(stall_timeout))??
        };
        let (header, body) = match arrival {
            Arrival::End => return Ok(()),
            Arrival::Refused(e, id) => {
                // The stream cannot be resynchronised: say why, then close.
                let reply =
                    Reply::<S::Source>::error(ErrorReply::new(Status::BadRequest, e.to_string()));
                let _ = send_reply(&writer, id, reply, &*service, transport).await;
                return Err(e.into());
            }
            Arrival::Head(header, _) if header.kind == FrameKind::Response => {
                let e = ErrorReply::new(Status::BadRequest, "server accepts only request frames");
                let reply = Reply::<S::Source>::error(e);
                send_reply(&writer, header.request_id, reply, &*service, transport).await?;
                return Ok(());
            }
            Arrival::Head(header, body) => (header, body),
        };
        // Notices get no reply.
        let answers = header.kind == FrameKind::Request;
        let request = match decode_request_within(&body, &requests) {
            Ok(r) => r,
            Err(e) => {
                discard(&mut reader, header.payload_len, stall_timeout).await?;
                if answers {
                    let reply = Reply::error(e.into());
                    send_reply(&writer, header.request_id, reply, &*service, transport).await?;
                }
                continue;
            }
        };
        drop(body);
        let sinks = match service.payload_sinks(&mut session, &request, header.payload_len) {
            Ok(sinks) => sinks,
            Err(e) => {
                discard(&mut reader, header.payload_len, stall_timeout).await?;
                if answers {
                    let reply = Reply::error(e);
                    send_reply(&writer, header.request_id, reply, &*service, transport).await?;
                }
                continue;
            }
        };
        let mut sinks = sinks;
        for sink in &mut sinks {
            read_frame_part(&mut reader, sink.as_mut(), stall_timeout).await?;
        }
        match service.handle(&mut session, request, sinks) {
            Outcome::Ready(reply) if refuses_peer(&reply.response) => {
                // One guess per connection, and not a quick one.
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                if answers {
                    send_reply(&writer, header.request_id, reply, &*service, transport).await?;
                }
                return Err(ConnectionEnd::Unauthorized);
            }
            Outcome::Ready(reply) if answers => {
                send_reply(&writer, header.request_id, reply, &*service, transport).await?
            }
            Outcome::Ready(_) => {}
            Outcome::Deferred(later) => {
                let writer = Arc::clone(&writer);
                let service = Arc::clone(&service);
                let id = header.request_id;
                deferred.spawn(async move {
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

/// Whether `response` refuses the peer's credentials, which ends the connection.
fn refuses_peer(response: &Response) -> bool {
    matches!(response, Response::Error(e) if e.status == Status::Unauthorized)
}

/// Reads and drops `len` payload bytes (of a refused request) to stay in sync, requiring
/// the same progress as a payload that is kept.
async fn discard<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u64,
    stall: Duration,
) -> Result<(), ConnectionEnd> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(PROGRESS_CHUNK as u64);
        let mut part = reader.take(chunk);
        let copied =
            tokio::time::timeout(stall, tokio::io::copy(&mut part, &mut tokio::io::sink()))
                .await
                .map_err(|_| ConnectionEnd::Stalled(stall))??;
        if copied < chunk {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        left -= chunk;
    }
    Ok(())
}

/// The tasks writing a connection's deferred replies: aborted when the connection ends, so
/// nothing they hold (leases, the session's tables) outlives it.
#[derive(Default)]
struct DeferredReplies(Vec<AbortHandle>);

impl DeferredReplies {
    fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(task).abort_handle());
    }

    fn forget_finished(&mut self) {
        self.0.retain(|task| !task.is_finished());
    }
}

impl Drop for DeferredReplies {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A connection's write side, shared by the loop and its deferred replies: one frame at a
/// time, each chunk within the stall timeout. Once a write failed (the frame is cut short,
/// the stream is lost), every later one fails too and [`failed`](Self::failed) completes.
struct ReplyWriter<W> {
    inner: Mutex<W>,
    stall: Duration,
    broken: AtomicBool,
    on_failure: Notify,
}

impl<W: FrameWriter> ReplyWriter<W> {
    fn new(writer: W, stall: Duration) -> Self {
        ReplyWriter {
            inner: Mutex::new(writer),
            stall,
            broken: AtomicBool::new(false),
            on_failure: Notify::new(),
        }
    }

    /// Writes one frame: `head` with `fds`, then the payload pieces.
    async fn send(
        &self,
        head: &[u8],
        fds: &[OwnedFd],
        payload: &[&[u8]],
    ) -> Result<(), ConnectionEnd> {
        let mut writer = self.inner.lock().await;
        if self.broken.load(Ordering::Acquire) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "an earlier reply on this connection failed",
            )
            .into());
        }
        let stalled = |_| ConnectionEnd::WriteStalled(self.stall);
        let written = async {
            tokio::time::timeout(self.stall, writer.write_head(head, fds))
                .await
                .map_err(stalled)??;
            for chunk in payload.iter().flat_map(|p| p.chunks(PROGRESS_CHUNK)) {
                tokio::time::timeout(self.stall, writer.write_bytes(chunk))
                    .await
                    .map_err(stalled)??;
            }
            Ok(())
        }
        .await;
        if written.is_err() {
            self.broken.store(true, Ordering::Release);
            self.on_failure.notify_waiters();
        }
        written
    }

    /// Completes once a write has failed.
    async fn failed(&self) {
        loop {
            let notified = self.on_failure.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.broken.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

async fn send_reply<S: Service, W: FrameWriter>(
    writer: &ReplyWriter<W>,
    request_id: u64,
    reply: Reply<S::Source>,
    service: &S,
    transport: &'static str,
) -> Result<(), ConnectionEnd> {
    let pieces: Vec<&[u8]> = reply.payload.iter().map(|p| p.as_ref()).collect();
    let payload_len: usize = pieces.iter().map(|p| p.len()).sum();
    let body = encode_response(&reply.response);
    let (head, rest) = frame_head(FrameKind::Response, request_id, &body, &pieces);
    writer.send(&head, &reply.fds, &rest).await?;
    if !matches!(reply.response, Response::Error(_)) && payload_len > 0 {
        service.record_sent(transport, payload_len as u64);
    }
    Ok(())
}
