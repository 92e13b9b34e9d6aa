//! The connection loop every stream transport's server shares: a thin driver of the
//! [`StreamEngine`], which holds the protocol (limits, the `Hello` deadline, dispatch to the
//! [`Service`]). This loop reads into the buffer the engine names, arms its deadline, and
//! carries out its actions: replies (with file descriptors where the socket carries them),
//! deferred replies on tasks of their own, the close. Every reply must make progress within
//! the stall timeout, or the connection is cut and everything its session pinned is freed.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimstore_engine::{Action, Closing, Outgoing, StreamEngine, StreamError, PROGRESS_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::{Mutex, Notify};
use tokio::task::AbortHandle;

use crate::gate::Admission;
use crate::{PeerInfo, Service};

pub use dimstore_engine::ServeOptions;

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

/// Why a connection was closed by the server. Its `Display` does not repeat its source:
/// log it with [`chain`](crate::chain).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionEnd {
    #[error("peer closed or I/O failed")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] StreamError),
    #[error("peer stopped taking its replies for {0:?}")]
    WriteStalled(Duration),
    #[error(
        "closed before its Hello to make room for a newer connection (the pending bound is full)"
    )]
    Evicted,
}

/// What one wait on a connection saw.
enum Event {
    /// A read returned.
    Read(std::io::Result<usize>),
    /// The engine's deadline passed.
    Deadline,
    /// A newer connection evicted this one before its Hello.
    Evicted,
    /// A reply could not be written.
    WriteFailed,
}

/// Serves one connection until the peer closes it or breaks the protocol. Its `admission`
/// is told when it authenticated, and given back when it ends.
pub(crate) async fn serve_connection<S: Service, R: AsyncRead + Unpin, W: FrameWriter>(
    read_half: R,
    write_half: W,
    transport: &'static str,
    peer: PeerInfo,
    service: Arc<S>,
    options: ServeOptions,
    admission: Admission,
) -> Result<(), ConnectionEnd> {
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let writer = Arc::new(ReplyWriter::new(write_half, options.stall_timeout));
    let session = service.open_session(transport, peer);
    let mut engine = StreamEngine::new(&*service, session, options, Instant::now());
    // Declared after the engine, so dropped before it: the connection's place in the gate
    // is free by the time its session is seen closed.
    let mut admission = admission;
    let mut deferred = DeferredReplies::default();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    loop {
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Send(outgoing) => {
                    send_reply(&writer, outgoing, &*service, transport).await?;
                }
                Action::Defer(later, reply_to) => {
                    let writer = Arc::clone(&writer);
                    let service = Arc::clone(&service);
                    deferred.spawn(async move {
                        let Some(outgoing) = reply_to.outgoing(later.await) else {
                            return;
                        };
                        if let Err(e) = send_reply(&writer, outgoing, &*service, transport).await {
                            tracing::debug!(error = %crate::chain(&e), "deferred reply not delivered");
                        }
                    });
                }
                Action::Close(closing) => {
                    return close(&writer, closing, &*service, transport).await;
                }
            }
        }
        deferred.forget_finished();
        let deadline = engine.poll_timeout();
        if let Some(deadline) = deadline {
            let deadline = tokio::time::Instant::from_std(deadline);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
        }
        let event = {
            let buf = engine.recv_buffer();
            debug_assert!(!buf.is_empty(), "an open engine always wants bytes");
            let pending = admission.is_pending();
            tokio::select! {
                read = reader.read(buf) => Event::Read(read),
                () = &mut timer, if deadline.is_some() => Event::Deadline,
                () = writer.failed() => Event::WriteFailed,
                () = admission.evicted(), if pending => Event::Evicted,
            }
        };
        match event {
            Event::Read(Ok(0)) => engine.peer_closed(),
            Event::Read(Ok(n)) => {
                engine.received(&*service, n, Instant::now());
                if admission.is_pending() && service.authenticated(engine.session()) {
                    admission.authenticated();
                }
            }
            Event::Read(Err(e)) => return Err(e.into()),
            Event::Deadline => engine.handle_timeout(Instant::now()),
            Event::WriteFailed => return Err(ConnectionEnd::WriteStalled(options.stall_timeout)),
            Event::Evicted => return Err(ConnectionEnd::Evicted),
        }
    }
}

/// Carries out the engine's close: waits until it may, sends the last reply, ends.
async fn close<S: Service, W: FrameWriter>(
    writer: &ReplyWriter<W>,
    closing: Closing<S::Source>,
    service: &S,
    transport: &'static str,
) -> Result<(), ConnectionEnd> {
    let Closing {
        last,
        not_before,
        end,
    } = closing;
    if let Some(at) = not_before {
        tokio::time::sleep_until(at.into()).await;
    }
    if let Some(last) = last {
        let sent = send_reply(writer, last, service, transport).await;
        if end.is_ok() {
            sent?;
        }
    }
    Ok(end?)
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

/// Sends one reply, then counts its object bytes as sent.
async fn send_reply<S: Service, W: FrameWriter>(
    writer: &ReplyWriter<W>,
    outgoing: Outgoing<S::Source>,
    service: &S,
    transport: &'static str,
) -> Result<(), ConnectionEnd> {
    let rest: Vec<&[u8]> = outgoing.rest().collect();
    writer.send(outgoing.head(), outgoing.fds(), &rest).await?;
    let bytes = outgoing.object_bytes();
    if bytes > 0 {
        service.record_sent(transport, bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use dimstore_proto::FrameError;

    use super::*;
    use crate::chain;

    #[test]
    fn a_connection_end_names_each_cause_once() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        assert_eq!(
            chain(&ConnectionEnd::from(reset)).to_string(),
            "peer closed or I/O failed: reset by peer"
        );
        let refused = ConnectionEnd::from(StreamError::from(FrameError::UnknownKind(9)));
        assert_eq!(
            chain(&refused).to_string(),
            "refused frame: unknown frame kind 9"
        );
    }
}
