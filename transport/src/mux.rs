//! The blocking client connection every stream transport shares.
//!
//! Many threads share one connection. A caller writes its request when its turn to write comes,
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
///
/// Every call ends by its deadline: reads and writes are bounded by the time left to the
/// whole frame, not per system call, so a server that trickles its reply or reads the
/// request slowly cannot stretch a call. A call whose deadline passes mid-frame breaks the
/// connection (the stream is out of sync) and still fails with
/// [`TransportError::Timeout`]. Reply lengths are checked against what the request can
/// legitimately return before anything is allocated.
#[derive(Debug)]
pub struct MuxConnection<S: Socket> {
    /// Shuts the socket down without waiting for a writer or reader that may be blocked.
    control: S,
    /// The write half; taken in turn through `turn`, so waiting for it is bounded.
    writer: Mutex<Timed<S>>,
    turn: WriterTurn,
    reader: Mutex<Timed<BufReader<S>>>,
    state: Mutex<State>,
    wake: Condvar,
    next_id: AtomicU64,
    limits: FrameLimits,
}

#[derive(Debug, Default)]
struct State {
    /// Requests waiting for a reply.
    pending: HashMap<u64, Pending>,
    /// Set once the stream is unusable: what every later call fails with.
    broken: Option<TransportError>,
    /// Callers waiting on the condition variable (waking nobody costs a system call).
    followers: usize,
    /// Whether a caller is reading the socket (the leader).
    reading: bool,
}

/// A request waiting for its reply.
#[derive(Debug)]
struct Pending {
    /// What its reply may carry.
    limits: FrameLimits,
    /// The reply, once the leader delivered it.
    reply: Option<ReplyFrame>,
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

/// The right to write, taken in turn. A writer blocked on a server that does not read
/// holds it until its own deadline; the others wait for it only until theirs.
#[derive(Debug, Default)]
struct WriterTurn {
    state: Mutex<TurnState>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct TurnState {
    busy: bool,
    /// Callers waiting for the turn (waking nobody costs a system call).
    waiting: usize,
}

impl WriterTurn {
    fn lock(&self) -> MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the turn until `deadline`; `None` if it did not come. The turn passes on
    /// when the returned value drops.
    fn take(&self, deadline: Instant) -> Option<Turn<'_>> {
        let mut turn = self.lock();
        while turn.busy {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            turn.waiting += 1;
            turn = self
                .freed
                .wait_timeout(turn, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            turn.waiting -= 1;
        }
        turn.busy = true;
        Some(Turn(self))
    }
}

/// A caller's turn to write.
struct Turn<'a>(&'a WriterTurn);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut turn = self.0.lock();
        turn.busy = false;
        if turn.waiting > 0 {
            self.0.freed.notify_one();
        }
    }
}

/// A read that gave up.
enum ReadFailure {
    /// Nothing of the next frame had arrived: the stream is still in sync.
    CleanTimeout,
    /// The deadline passed in the middle of a frame: the stream is out of sync.
    MidFrameTimeout,
    /// The stream is unusable.
    Broken(TransportError),
}

/// A write that gave up.
enum WriteFailure {
    /// The deadline passed; `started` if some of the frame was written (the stream is then
    /// out of sync).
    Timeout { started: bool },
    /// The stream is unusable.
    Broken(io::Error),
}

/// A frame read off the stream: the request it answers and its reply, `None` when it
/// answers a request nobody waits for any more (it was skipped).
type ReadFrame = (u64, Option<ReplyFrame>);

impl<S: Socket> MuxConnection<S> {
    /// Wraps a connected socket. `limits` bound every reply whatever the request (a
    /// request's own bound, [`crate::reply_limits`], is usually tighter).
    pub fn new(socket: S, limits: FrameLimits) -> io::Result<Self> {
        let reader = socket.try_clone()?;
        let control = socket.try_clone()?;
        Ok(MuxConnection {
            control,
            writer: Mutex::new(Timed::new(socket)),
            turn: WriterTurn::default(),
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

    /// Marks the stream unusable (later calls fail with `why`) and wakes everyone.
    fn mark_broken(&self, why: TransportError) {
        let mut state = self.lock_state();
        state.broken.get_or_insert(why);
        drop(state);
        let _ = self.control.shutdown(Shutdown::Both);
        self.wake.notify_all();
    }

    /// Writes one frame, all of it by `deadline`.
    fn send(
        &self,
        kind: FrameKind,
        id: u64,
        request: &Request,
        payload: &[&[u8]],
        deadline: Instant,
    ) -> Result<(), WriteFailure> {
        let (head, rest) = frame_head(kind, id, &encode_request(request), payload);
        let _turn = self
            .turn
            .take(deadline)
            .ok_or(WriteFailure::Timeout { started: false })?;
        let mut timed = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut started = false;
        std::iter::once(head.as_slice())
            .chain(rest)
            .try_for_each(|piece| write_full(&mut timed, piece, deadline, &mut started))
    }

    /// What a failed write means for the call and the connection.
    fn write_failed(&self, failure: WriteFailure) -> TransportError {
        match failure {
            WriteFailure::Timeout { started: false } => TransportError::Timeout,
            WriteFailure::Timeout { started: true } => {
                self.mark_broken(TransportError::ConnectionLost(
                    "a request was cut off mid-frame at its deadline".into(),
                ));
                TransportError::Timeout
            }
            WriteFailure::Broken(e) => {
                let err = TransportError::ConnectionLost(e.into());
                self.mark_broken(err.clone());
                err
            }
        }
    }

    /// Reads one whole frame by `deadline`; see [`ReadFailure`] for what a timeout means.
    fn read_frame(
        &self,
        timed: &mut Timed<BufReader<S>>,
        deadline: Instant,
    ) -> Result<ReadFrame, ReadFailure> {
        let mut raw = [0u8; HEADER_LEN];
        // The first byte decides whether a timeout leaves the stream in sync.
        loop {
            let left = remaining(deadline).ok_or(ReadFailure::CleanTimeout)?;
            timed
                .ensure(left, |r, t| r.get_ref().set_read_timeout(t))
                .map_err(broken)?;
            match timed.stream.read(&mut raw[..1]) {
                Ok(0) => return Err(closed_by_server()),
                Ok(_) => break,
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(broken(e)),
            }
        }
        read_full(timed, &mut raw[1..], deadline)?;
        let header =
            FrameHeader::decode(&raw, &self.limits).map_err(|e| ReadFailure::Broken(e.into()))?;
        if header.kind != FrameKind::Response {
            return Err(ReadFailure::Broken(TransportError::ConnectionLost(
                "server sent a request frame".into(),
            )));
        }
        let limits = match self.lock_state().pending.get(&header.request_id) {
            Some(pending) => pending.limits,
            None => {
                // A late reply to a call that gave up: skipped, without keeping it.
                let len = u64::from(header.body_len).saturating_add(header.payload_len);
                skip(timed, len, deadline)?;
                return Ok((header.request_id, None));
            }
        };
        // Refused before anything is allocated: the request's own bounds.
        FrameHeader::decode(&raw, &limits).map_err(|e| ReadFailure::Broken(e.into()))?;
        let mut body = AlignedVec::<16>::with_capacity(header.body_len as usize);
        body.resize(header.body_len as usize, 0);
        read_full(timed, &mut body, deadline)?;
        let response = decode_response(&body).map_err(|e| ReadFailure::Broken(e.into()))?;
        let len = usize::try_from(header.payload_len).map_err(|_| {
            ReadFailure::Broken(TransportError::ConnectionLost("payload too large".into()))
        })?;
        let mut payload = AlignedBuf::try_for_overwrite(len).ok_or_else(|| {
            ReadFailure::Broken(TransportError::ConnectionLost(
                format!("cannot allocate {len} bytes for a reply").into(),
            ))
        })?;
        read_full(timed, &mut payload, deadline)?;
        // Descriptors travel with the bytes of the reply that announces them.
        let fds = match &response {
            Response::Segments { segments } => {
                let fds = timed.stream.get_ref().take_fds(segments.len());
                if fds.len() != segments.len() {
                    return Err(ReadFailure::Broken(TransportError::ConnectionLost(
                        format!(
                            "{} segment descriptors announced, {} received",
                            segments.len(),
                            fds.len()
                        )
                        .into(),
                    )));
                }
                fds
            }
            _ => Vec::new(),
        };
        let reply = ReplyFrame {
            response,
            payload,
            fds,
        };
        Ok((header.request_id, Some(reply)))
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
                Ok((got, Some(frame))) if got == id => {
                    state.pending.remove(&id);
                    Some(Ok(frame))
                }
                Ok((got, frame)) => {
                    if let Some(pending) = state.pending.get_mut(&got) {
                        pending.reply = frame;
                    }
                    None
                }
                Err(ReadFailure::CleanTimeout) => {
                    state.pending.remove(&id);
                    Some(Err(TransportError::Timeout))
                }
                Err(failure) => {
                    let (for_us, for_all) = match failure {
                        ReadFailure::MidFrameTimeout => (
                            TransportError::Timeout,
                            TransportError::ConnectionLost(
                                "a reply was cut off mid-frame at a caller's deadline".into(),
                            ),
                        ),
                        ReadFailure::Broken(e) => (e.clone(), e),
                        ReadFailure::CleanTimeout => unreachable!("handled above"),
                    };
                    state.broken.get_or_insert(for_all);
                    state.pending.remove(&id);
                    let _ = self.control.shutdown(Shutdown::Both);
                    Some(Err(for_us))
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
    if let Some(frame) = state.pending.get_mut(&id).and_then(|p| p.reply.take()) {
        state.pending.remove(&id);
        return Ok(Some(frame));
    }
    if let Some(why) = &state.broken {
        let e = why.clone();
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
        reply_payload: u64,
        deadline: Instant,
    ) -> Result<ReplyFrame, TransportError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.lock_state();
            if let Some(why) = &state.broken {
                return Err(why.clone());
            }
            let limits = crate::reply_limits(request, reply_payload);
            state.pending.insert(
                id,
                Pending {
                    limits,
                    reply: None,
                },
            );
        }
        if let Err(failure) = self.send(FrameKind::Request, id, request, payload, deadline) {
            self.lock_state().pending.remove(&id);
            return Err(self.write_failed(failure));
        }
        self.wait_reply(id, deadline)
    }

    fn notify(&self, request: &Request, deadline: Instant) -> Result<(), TransportError> {
        if let Some(why) = &self.lock_state().broken {
            return Err(why.clone());
        }
        self.send(FrameKind::Notice, 0, request, &[], deadline)
            .map_err(|failure| self.write_failed(failure))
    }

    fn is_broken(&self) -> bool {
        self.lock_state().broken.is_some()
    }

    fn peer_closed(&self) -> bool {
        self.is_broken() || self.control.peer_closed()
    }
}

/// Writes all of `bytes` by `deadline` (not per system call: a server that reads slowly
/// cannot stretch it), noting in `started` once anything was written.
fn write_full<S: Socket>(
    timed: &mut Timed<S>,
    mut bytes: &[u8],
    deadline: Instant,
    started: &mut bool,
) -> Result<(), WriteFailure> {
    while !bytes.is_empty() {
        let left = remaining(deadline).ok_or(WriteFailure::Timeout { started: *started })?;
        timed
            .ensure(left, S::set_write_timeout)
            .map_err(WriteFailure::Broken)?;
        match timed.stream.write(bytes) {
            Ok(0) => return Err(WriteFailure::Broken(ErrorKind::WriteZero.into())),
            Ok(n) => {
                bytes = &bytes[n..];
                *started = true;
            }
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteFailure::Broken(e)),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes of a frame already started, by `deadline`.
fn read_full<S: Socket>(
    timed: &mut Timed<BufReader<S>>,
    mut buf: &mut [u8],
    deadline: Instant,
) -> Result<(), ReadFailure> {
    while !buf.is_empty() {
        let left = remaining(deadline).ok_or(ReadFailure::MidFrameTimeout)?;
        timed
            .ensure(left, |r, t| r.get_ref().set_read_timeout(t))
            .map_err(broken)?;
        match timed.stream.read(buf) {
            Ok(0) => return Err(closed_by_server()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(broken(e)),
        }
    }
    Ok(())
}

/// Reads and drops `len` bytes of a frame already started, by `deadline`.
fn skip<S: Socket>(
    timed: &mut Timed<BufReader<S>>,
    mut len: u64,
    deadline: Instant,
) -> Result<(), ReadFailure> {
    let mut scratch = [0u8; 4096];
    while len > 0 {
        let n = scratch
            .len()
            .min(usize::try_from(len).unwrap_or(usize::MAX));
        read_full(timed, &mut scratch[..n], deadline)?;
        len -= n as u64;
    }
    Ok(())
}

fn broken(e: io::Error) -> ReadFailure {
    ReadFailure::Broken(TransportError::ConnectionLost(e.into()))
}

fn closed_by_server() -> ReadFailure {
    ReadFailure::Broken(TransportError::ConnectionLost(
        "server closed the connection".into(),
    ))
}

/// Time left until `deadline`; `None` once it passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    Some(deadline.saturating_duration_since(Instant::now())).filter(|left| !left.is_zero())
}

/// A socket timeout: `EAGAIN`/`EWOULDBLOCK` from a read or write with a timeout set.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
