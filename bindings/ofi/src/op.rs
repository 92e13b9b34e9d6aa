//! Operations in flight: each owns its buffer until its completion is read from the queue.

use std::ffi::c_void;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::cq::{CqInner, OpState};
use crate::endpoint::EndpointInner;
use libfabric_sys::FI_EAGAIN;

use crate::error::{check_len, OfiError, Result};

/// How long [`Op::wait`] spins on the queue before it sleeps on the wait fd.
const SPIN: Duration = Duration::from_micros(50);
/// Longest single sleep (a safety net against a missed wake-up).
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// An operation in flight (a send, receive or read). It owns its buffer and gives it back
/// only once the provider is done with it. Dropping it in flight does not cancel it: the
/// queue keeps the buffer until the completion arrives or the endpoint is closed.
#[must_use = "an operation does nothing unless waited for; dropping it leaves it in flight"]
pub struct Op<B: 'static> {
    cq: Rc<CqInner>,
    /// Keeps the endpoint open while the operation is in flight.
    ep: Option<Rc<EndpointInner>>,
    state: Rc<OpState>,
    ctx: *mut c_void,
    buffer: Option<B>,
    /// Posts the operation; kept while the provider answers `FI_EAGAIN` (retried as the
    /// operation is tested or waited for), dropped once posted.
    post: Option<Poster>,
}

/// The call that posts an operation given its context.
pub(crate) type Poster = Box<dyn Fn(*mut c_void) -> isize>;

/// A completed operation: its buffer and the number of bytes transferred.
#[derive(Debug)]
pub struct Completion<B> {
    /// The operation's buffer, returned.
    pub buffer: B,
    /// Bytes transferred (for a receive, the message length).
    pub len: usize,
}

/// Why [`Op::wait`] returned without a completion.
pub enum WaitError<B: 'static> {
    /// The operation completed with an error; the buffer is free again.
    Failed {
        /// What failed.
        error: OfiError,
        /// The operation's buffer, returned.
        buffer: B,
    },
    /// The wait ended (deadline: `error.is_timeout()`, or a queue error) with the
    /// operation still in flight, still owning the buffer.
    Pending {
        /// Why the wait ended.
        error: OfiError,
        /// The operation, still in flight.
        op: Box<Op<B>>,
    },
}

impl<B: 'static> Op<B> {
    /// An operation registered with context `ctx` and state `state`, posted by `post`
    /// now (or later, while the provider answers `FI_EAGAIN`).
    pub(crate) fn post(
        cq: Rc<CqInner>,
        ep: Rc<EndpointInner>,
        (state, ctx): (Rc<OpState>, *mut c_void),
        buffer: B,
        post: Poster,
    ) -> Self {
        let mut op = Self {
            cq,
            ep: Some(ep),
            state,
            ctx,
            buffer: Some(buffer),
            post: Some(post),
        };
        op.try_post();
        op
    }

    /// Posts the operation if it is not posted yet; on an error other than `FI_EAGAIN`,
    /// the operation fails.
    fn try_post(&mut self) {
        let Some(post) = &self.post else { return };
        let ret = post(self.ctx);
        if ret == -(FI_EAGAIN as isize) {
            return;
        }
        self.post = None;
        if let Err(e) = check_len(self.state.api, ret) {
            self.cq.unregister(self.ctx);
            *self.state.done.borrow_mut() = Some(Err(e));
        }
    }

    /// An operation that failed before it was posted.
    pub(crate) fn failed(cq: Rc<CqInner>, error: OfiError, buffer: B) -> Self {
        let state = Rc::new(OpState::failed(error));
        Self {
            cq,
            ep: None,
            state,
            ctx: std::ptr::null_mut(),
            buffer: Some(buffer),
            post: None,
        }
    }

    /// The result without progressing the queue: `None` while in flight (or not yet
    /// accepted by the provider: posting is retried here).
    pub fn test(&mut self) -> Option<Result<usize>> {
        self.try_post();
        self.state.done.borrow().clone()
    }

    /// Whether the operation has completed (successfully or not).
    pub fn is_complete(&mut self) -> bool {
        self.test().is_some()
    }

    /// Whether the provider has accepted the operation (it may answer `FI_EAGAIN` at
    /// first, e.g. while a connection is set up; posting is retried as it is tested).
    pub fn is_posted(&self) -> bool {
        self.post.is_none()
    }

    /// Progresses the queue until the operation completes or `deadline` passes: spins
    /// briefly, then sleeps on the queue's wait fd.
    pub fn wait(self, deadline: Instant) -> Result<Completion<B>, WaitError<B>> {
        let cq = Rc::clone(&self.cq);
        let mut idle_since: Option<Instant> = None;
        self.wait_with(deadline, || {
            if cq.progress()? > 0 {
                idle_since = None;
                return Ok(());
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SPIN {
                let left = deadline.saturating_duration_since(Instant::now());
                cq.sleep(left.min(MAX_SLEEP))?;
            }
            Ok(())
        })
    }

    /// Like [`wait`](Self::wait) but calls `progress` instead (e.g. to drive several
    /// queues from one loop); an error from it ends the wait.
    pub fn wait_with(
        mut self,
        deadline: Instant,
        mut progress: impl FnMut() -> Result<()>,
    ) -> Result<Completion<B>, WaitError<B>> {
        loop {
            if let Some(result) = self.test() {
                let buffer = self.buffer.take().expect("buffer present until completion");
                return match result {
                    Ok(len) => Ok(Completion { buffer, len }),
                    Err(error) => Err(WaitError::Failed { error, buffer }),
                };
            }
            if Instant::now() >= deadline {
                let error = OfiError::timed_out(self.state.api);
                return Err(WaitError::Pending {
                    error,
                    op: Box::new(self),
                });
            }
            if let Err(error) = progress() {
                return Err(WaitError::Pending {
                    error,
                    op: Box::new(self),
                });
            }
        }
    }
}

impl<B: 'static> Drop for Op<B> {
    fn drop(&mut self) {
        if self.post.is_some() {
            // Never accepted by the provider: nothing refers to the buffer.
            self.cq.unregister(self.ctx);
        } else if self.state.done.borrow().is_none() {
            if let Some(buffer) = self.buffer.take() {
                self.cq.orphan(self.ctx, Box::new(buffer));
            }
        }
        // The endpoint reference goes now; if it was the last, the endpoint closes and the
        // queue drops the orphaned buffer with its other pending operations.
        self.ep.take();
    }
}

impl<B: 'static> WaitError<B> {
    /// The error.
    pub fn error(&self) -> &OfiError {
        match self {
            Self::Failed { error, .. } | Self::Pending { error, .. } => error,
        }
    }

    /// The error, dropping the buffer or the operation (one still in flight stays with
    /// its queue until it completes).
    pub fn into_error(self) -> OfiError {
        match self {
            Self::Failed { error, .. } | Self::Pending { error, .. } => error,
        }
    }
}

impl<B: 'static> fmt::Debug for WaitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Failed { .. } => "Failed",
            Self::Pending { .. } => "Pending",
        };
        f.debug_struct(name).field("error", self.error()).finish()
    }
}

impl<B: 'static> fmt::Display for WaitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.error(), f)
    }
}

impl<B: 'static> std::error::Error for WaitError<B> {}

impl<B: 'static> From<WaitError<B>> for OfiError {
    fn from(e: WaitError<B>) -> Self {
        e.into_error()
    }
}
