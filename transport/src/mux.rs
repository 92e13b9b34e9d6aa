//! The blocking client connection every stream transport shares.
//!
//! Many threads share one connection. A caller writes its request under the writer lock,
//! then waits for its reply as a *follower*, or becomes the *leader* that reads frames off the
//! socket and hands other callers' replies to them. In the common uncontended case the caller
//! is its own leader: one write and one read on its own thread, no wake-up of another thread.

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dimstore_proto::{
    decode_response, encode_request, FrameHeader, FrameKind, FrameLimits, Request, Response,
    HEADER_LEN,
};
use rkyv::util::AlignedVec;

use crate::{AlignedBuf, Connection, ReplyFrame, TransportError};

/// Payloads up to this size are copied into the header buffer and sent in one write.
pub(crate) const COALESCE_LIMIT: usize = 64 << 10;

/// Lays out a frame for sending: the header and body, with the payload appended when it is
/// small (one write), and the payload pieces still to write after it (none if appended).
pub(crate) fn frame_head<'p>(
    kind: FrameKind,
    request_id: u64,
    body: &[u8],
    payload: &[&'p [u8]],
) -> (Vec<u8>, Vec<&'p [u8]>) {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    let coalesce = payload_len <= COALESCE_LIMIT;
    let mut head =
        Vec::with_capacity(HEADER_LEN + body.len() + if coalesce { payload_len } else { 0 });
    FrameHeader::write_head(&mut head, kind, request_id, body, payload_len as u64);
    if !coalesce {
        return (head, payload.to_vec());
    }
    for piece in payload {
        head.extend_from_slice(piece);
    }
    (head, Vec::new())
}

/// Longest a follower sleeps before checking whether it should take over reading.
const FOLLOWER_NAP: Duration = Duration::from_millis(20);

/// A connected byte-stream socket a [`MuxConnection`] can run over.
pub trait Socket: Read + Write + Send + Sync + Sized + std::fmt::Debug + 'static {
    /// Another handle to the same socket.
    fn try_clone(&self) -> io::Result<Self>;
    /// Bounds blocking reads.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Bounds blocking writes.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Shuts the socket down (wakes blocked readers and writers).
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// File descriptors received so far with the stream's bytes (oldest first), at most `n`.
    fn take_fds(&self, n: usize) -> Vec<OwnedFd> {
        let _ = n;
        Vec::new()
    }
    /// Whether the peer has closed the stream or it failed, checked without blocking or
    /// consuming anything. Only meaningful while no reply is expected on the stream.
    fn peer_closed(&self) -> bool {
        false
    }
}

/// A connection to one server over a byte-stream socket, shared by all threads of a
/// process: calls are multiplexed by request id (see the module docs).
#[derive(Debug)]
pub struct MuxConnection<S: Socket> {
    /// Shuts the socket down without waiting for a writer or reader that may be blocked.
    control: S,
    writer: Mutex<Timed<S>>,
    reader: Mutex<Timed<BufReader<S>>>,
    state: Mutex<State>,
    wake: Condvar,
    next_id: AtomicU64,
    limits: FrameLimits,
}

#[derive(Debug, Default)]
struct State {
    /// Requests waiting for a reply; `Some` once the leader delivered it.
    pending: HashMap<u64, Option<ReplyFrame>>,
    /// Set once the stream is unusable.
    broken: Option<String>,
    /// Callers waiting on the condition variable (waking nobody costs a system call).
    followers: usize,
    /// Whether a caller is reading the socket (the leader).
    reading: bool,
}

/// A stream and the socket timeout last set on it. Setting a timeout is a system call, so it
/// is only changed when the op's remaining time is shorter than the one in force by more than
/// [`TIMEOUT_SLACK`]; an early wake-up before the deadline just waits again.
#[derive(Debug)]
struct Timed<S> {
    stream: S,
    timeout: Option<Duration>,
}

/// How far past its deadline a blocked read or write may wake up.
const TIMEOUT_SLACK: Duration = Duration::from_millis(50);

impl<S> Timed<S> {
    fn new(stream: S) -> Self {
        Timed {
            stream,
            timeout: None,
        }
    }

    fn ensure(
        &mut self,
        left: Duration,
        set: impl FnOnce(&S, Option<Duration>) -> io::Result<()>,
    ) -> io::Result<()> {
        if self
            .timeout
            .is_none_or(|t| t > left + TIMEOUT_SLACK || t < left / 2)
        {
            set(&self.stream, Some(left))?;
            self.timeout = Some(left);
        }
        Ok(())
    }
}

/// A read that gave up.
enum ReadFailure {
    /// Nothing of the next frame had arrived: the stream is still in sync.
    CleanTimeout,
    /// The stream is unusable.
    Broken(TransportError),
}

impl<S: Socket> MuxConnection<S> {
    /// Wraps a connected socket.
    pub fn new(socket: S, limits: FrameLimits) -> io::Result<Self> {
        let reader = socket.try_clone()?;
        let control = socket.try_clone()?;
        Ok(MuxConnection {
            control,
            writer: Mutex::new(Timed::new(socket)),
            reader: Mutex::new(Timed::new(BufReader::with_capacity(64 << 10, reader))),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            next_id: AtomicU64::new(1),
            limits,
        })
    }

    /// The socket (for its addresses; reading or writing it would corrupt the stream).
    pub fn socket(&self) -> &S {
        &self.control
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_broken(&self, why: &TransportError) {
        let mut state = self.lock_state();
        state.broken.get_or_insert_with(|| why.to_string());
        drop(state);
        let _ = self.control.shutdown(Shutdown::Both);
        self.wake.notify_all();
    }

    fn send(
        &self,
        kind: FrameKind,
        id: u64,
        request: &Request,
        payload: &[&[u8]],
        deadline: Instant,
    ) -> io::Result<()> {
        let (head, rest) = frame_head(kind, id, &encode_request(request), payload);
        let mut timed = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        timed.ensure(remaining(deadline)?, S::set_write_timeout)?;
        let stream = &mut timed.stream;
        stream.write_all(&head)?;
        for piece in rest {
            stream.write_all(piece)?;
        }
        Ok(())
    }

    /// Reads one whole frame; see [`ReadFailure`] for what a timeout means.
    fn read_frame(
        &self,
        timed: &mut Timed<BufReader<S>>,
        deadline: Instant,
    ) -> Result<(u64, ReplyFrame), ReadFailure> {
        let broken =
            |e: io::Error| ReadFailure::Broken(TransportError::ConnectionLost(e.to_string()));
        let mut raw = [0u8; HEADER_LEN];
        // The first byte decides whether a timeout leaves the stream in sync.
        loop {
            let left = remaining(deadline).map_err(|_| ReadFailure::CleanTimeout)?;
            timed
                .ensure(left, |r, t| r.get_ref().set_read_timeout(t))
                .map_err(broken)?;
            match timed.stream.read(&mut raw[..1]) {
                Ok(0) => {
                    return Err(broken(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "server closed the connection",
                    )))
                }
                Ok(_) => break,
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(broken(e)),
            }
        }
        let reader = &mut timed.stream;
        reader.read_exact(&mut raw[1..]).map_err(broken)?;
        let header =
            FrameHeader::decode(&raw, &self.limits).map_err(|e| ReadFailure::Broken(e.into()))?;
        if header.kind != FrameKind::Response {
            return Err(ReadFailure::Broken(TransportError::ConnectionLost(
                "server sent a request frame".into(),
            )));
        }
        let mut body = AlignedVec::<16>::with_capacity(header.body_len as usize);
        body.resize(header.body_len as usize, 0);
        reader.read_exact(&mut body).map_err(broken)?;
        let response = decode_response(&body).map_err(|e| ReadFailure::Broken(e.into()))?;
        let len = usize::try_from(header.payload_len).map_err(|_| {
            ReadFailure::Broken(TransportError::ConnectionLost("payload too large".into()))
        })?;
        let mut payload = AlignedBuf::for_overwrite(len);
        reader.read_exact(&mut payload).map_err(broken)?;
        // Descriptors travel with the bytes of the reply that announces them.
        let fds = match &response {
            Response::Segments { segments } => {
                let fds = reader.get_ref().take_fds(segments.len());
                if fds.len() != segments.len() {
                    return Err(ReadFailure::Broken(TransportError::ConnectionLost(
                        format!(
                            "{} segment descriptors announced, {} received",
                            segments.len(),
                            fds.len()
                        ),
                    )));
                }
                fds
            }
            _ => Vec::new(),
        };
        Ok((
            header.request_id,
            ReplyFrame {
                response,
                payload,
                fds,
            },
        ))
    }

    /// Waits for the reply to `id`, reading the socket whenever nobody else is.
    fn wait_reply(&self, id: u64, deadline: Instant) -> Result<ReplyFrame, TransportError> {
        loop {
            {
                let mut state = self.lock_state();
                if let Some(done) = take_if_done(&mut state, id)? {
                    return Ok(done);
                }
                if state.reading {
                    // Follow: the leader hands us our reply or wakes us when it stops reading.
                    // `reading` and `followers` change under this lock, so no wake-up is lost.
                    let now = Instant::now();
                    if now >= deadline {
                        state.pending.remove(&id);
                        return Err(TransportError::Timeout);
                    }
                    state.followers += 1;
                    let nap = FOLLOWER_NAP.min(deadline - now);
                    let (mut state, _) = self
                        .wake
                        .wait_timeout(state, nap)
                        .unwrap_or_else(|e| e.into_inner());
                    state.followers -= 1;
                    continue;
                }
                state.reading = true;
            }
            // Lead: nobody else reads the socket until `reading` is cleared below.
            let result = match self.reader.lock() {
                Ok(mut reader) => self.read_frame(&mut reader, deadline),
                Err(_) => Err(ReadFailure::Broken(TransportError::ConnectionLost(
                    "reader panicked".into(),
                ))),
            };
            let mut state = self.lock_state();
            state.reading = false;
            let outcome = match result {
                Ok((got, frame)) if got == id => {
                    state.pending.remove(&id);
                    Some(Ok(frame))
                }
                Ok((got, frame)) => {
                    if let Some(slot) = state.pending.get_mut(&got) {
                        *slot = Some(frame);
                    }
                    None
                }
                Err(ReadFailure::CleanTimeout) => {
                    state.pending.remove(&id);
                    Some(Err(TransportError::Timeout))
                }
                Err(ReadFailure::Broken(e)) => {
                    state.broken.get_or_insert_with(|| e.to_string());
                    state.pending.remove(&id);
                    let _ = self.control.shutdown(Shutdown::Both);
                    Some(Err(e))
                }
            };
            if state.followers > 0 {
                self.wake.notify_all();
            }
            drop(state);
            if let Some(outcome) = outcome {
                return outcome;
            }
        }
    }
}

/// Takes `id`'s reply if the leader delivered it; fails if the connection broke.
fn take_if_done(state: &mut State, id: u64) -> Result<Option<ReplyFrame>, TransportError> {
    if let Some(slot) = state.pending.get_mut(&id) {
        if let Some(frame) = slot.take() {
            state.pending.remove(&id);
            return Ok(Some(frame));
        }
    }
    if let Some(why) = &state.broken {
        let e = TransportError::ConnectionLost(why.clone());
        state.pending.remove(&id);
        return Err(e);
    }
    Ok(None)
}

impl<S: Socket> Connection for MuxConnection<S> {
    fn call(
        &self,
        request: &Request,
        payload: &[&[u8]],
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock_state();
            if let Some(why) = &state.broken {
                return Err(TransportError::ConnectionLost(why.clone()));
            }
            state.pending.insert(id, None);
        }
        if let Err(e) = self.send(FrameKind::Request, id, request, payload, deadline) {
            self.lock_state().pending.remove(&id);
            // A partial write leaves the stream out of sync.
            let err = if is_timeout(&e) {
                TransportError::Timeout
            } else {
                TransportError::ConnectionLost(e.to_string())
            };
            self.mark_broken(&err);
            return Err(err);
        }
        self.wait_reply(id, deadline)
    }

    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError> {
        if let Some(why) = &self.lock_state().broken {
            return Err(TransportError::ConnectionLost(why.clone()));
        }
        self.send(FrameKind::Notice, 0, request, &[], deadline)
            .map_err(|e| {
                let err = TransportError::ConnectionLost(e.to_string());
                self.mark_broken(&err);
                err
            })
    }

    fn is_broken(&self) -> bool {
        self.lock_state().broken.is_some()
    }

    fn peer_closed(&self) -> bool {
        self.is_broken() || self.control.peer_closed()
    }
}

fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::new(ErrorKind::TimedOut, "deadline passed"))
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
