//! Requests: an operation in flight that owns its buffer until it completes.

use std::any::Any;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx_sys::{ucp_request_check_status, ucp_request_free, ucs_status_ptr_t, ucs_status_t};

use crate::endpoint::EndpointInner;
use crate::error::{check, Result, UcxError};
use crate::worker::{poll_readable, Orphan, WorkerInner};

/// How long [`Request::wait`] spins on progress before it sleeps on the worker's event fd.
const SPIN: Duration = Duration::from_micros(50);
/// Longest single sleep on the event fd (a safety net against a missed wake-up).
const MAX_SLEEP: Duration = Duration::from_millis(5);

/// An operation in flight (a get, an active message send or receive, a flush). It owns the
/// buffer the operation reads or writes, and gives it back only once UCX is done with it:
/// neither the caller nor a timeout can free or move memory the NIC may still touch.
///
/// Dropping a request that is still in flight does not cancel it: the worker keeps the
/// request and its buffer until it completes (or until its endpoint is closed).
#[must_use = "a request does nothing unless waited for; dropping it leaves it in flight"]
pub struct Request<B: 'static> {
    worker: Rc<WorkerInner>,
    api: &'static str,
    state: State,
    buffer: Option<B>,
    keep: Keep,
}

/// Resources an operation uses besides its buffer, kept alive until it completes.
#[derive(Default)]
pub(crate) struct Keep {
    /// The endpoint the operation runs on.
    pub(crate) ep: Option<Rc<EndpointInner>>,
    /// Anything else (a remote key, an active message header).
    pub(crate) extra: Option<Box<dyn Any>>,
}

enum State {
    InFlight(ucs_status_ptr_t),
    Done(Result<()>),
}

/// Why [`Request::wait`] returned without the buffer.
pub enum WaitError<B: 'static> {
    /// The operation completed with an error; the buffer is free again.
    Failed {
        /// What failed.
        error: UcxError,
        /// The operation's buffer, returned.
        buffer: B,
    },
    /// The wait ended (its deadline passed: `error.is_timeout()`, or progress failed) with
    /// the operation still in flight; it still owns the buffer. Wait again, or drop the
    /// request (the worker then keeps it until it completes).
    Pending {
        /// Why the wait ended.
        error: UcxError,
        /// The request, still in flight.
        request: Box<Request<B>>,
    },
}

impl<B: 'static> Request<B> {
    /// A request for `api` from what [`check_ptr`](crate::error::check_ptr) made of the
    /// returned status pointer: in flight, completed in place, or failed at once.
    pub(crate) fn from_ptr(
        worker: Rc<WorkerInner>,
        api: &'static str,
        ptr: Result<Option<ucs_status_ptr_t>>,
        buffer: B,
        keep: Keep,
    ) -> Self {
        let state = match ptr {
            Ok(Some(p)) => State::InFlight(p),
            Ok(None) => State::Done(Ok(())),
            Err(e) => State::Done(Err(e)),
        };
        Self {
            worker,
            api,
            state,
            buffer: Some(buffer),
            keep,
        }
    }

    /// A request that failed before it started.
    pub(crate) fn failed(
        worker: Rc<WorkerInner>,
        api: &'static str,
        error: UcxError,
        buffer: B,
        keep: Keep,
    ) -> Self {
        Self::from_ptr(worker, api, Err(error), buffer, keep)
    }

    /// The operation's status without progressing the worker: `None` while in flight.
    pub fn test(&mut self) -> Option<Result<()>> {
        if let State::InFlight(ptr) = self.state {
            // SAFETY: `ptr` is a live request handle, not yet freed.
            let status = unsafe { request_status(ptr) };
            if status == ucs_status_t::UCS_INPROGRESS {
                return None;
            }
            // SAFETY: the request completed; it is freed exactly once (state changes).
            unsafe { release_request(ptr) };
            self.state = State::Done(check(self.api, status));
        }
        match &self.state {
            State::Done(result) => Some(result.clone()),
            State::InFlight(_) => None,
        }
    }

    /// Whether the operation has completed (successfully or not).
    pub fn is_complete(&mut self) -> bool {
        self.test().is_some()
    }

    /// Progresses the worker until the operation completes or `deadline` passes: spins
    /// briefly, then sleeps on the worker's event fd. Returns the buffer on success.
    pub fn wait(self, deadline: Instant) -> Result<B, WaitError<B>> {
        let worker = Rc::clone(&self.worker);
        let mut idle_since: Option<Instant> = None;
        self.wait_with(deadline, || match worker.progress() {
            Ok(0) => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= SPIN {
                    sleep_on_worker(&worker, deadline)?;
                }
                Ok(())
            }
            Ok(_) => {
                idle_since = None;
                Ok(())
            }
            Err(e) => Err(e),
        })
    }

    /// Like [`wait`](Self::wait), but calls `progress` instead of progressing this request's
    /// worker alone (e.g. to progress several workers from one loop). An error from
    /// `progress` ends the wait as a failure.
    pub fn wait_with(
        mut self,
        deadline: Instant,
        mut progress: impl FnMut() -> Result<()>,
    ) -> Result<B, WaitError<B>> {
        if self.worker.in_progress.get() {
            let error = self
                .worker
                .progress()
                .expect_err("in_progress is set, so progress refuses");
            return Err(WaitError::Pending {
                error,
                request: Box::new(self),
            });
        }
        loop {
            if let Some(result) = self.test() {
                return self.finish(result);
            }
            if Instant::now() >= deadline {
                return Err(WaitError::Pending {
                    error: UcxError::timed_out(self.api),
                    request: Box::new(self),
                });
            }
            if let Err(error) = progress() {
                return Err(WaitError::Pending {
                    error,
                    request: Box::new(self),
                });
            }
        }
    }

    /// The buffer and the result of a completed request.
    fn finish(mut self, result: Result<()>) -> Result<B, WaitError<B>> {
        let buffer = self.buffer.take().expect("buffer present until finish");
        match result {
            Ok(()) => Ok(buffer),
            Err(error) => Err(WaitError::Failed { error, buffer }),
        }
    }

    /// The name of the UCX call this request came from.
    pub fn api(&self) -> &'static str {
        self.api
    }
}

impl<B: 'static> Drop for Request<B> {
    fn drop(&mut self) {
        if let State::InFlight(request) = self.state {
            let keep = std::mem::take(&mut self.keep);
            let buffer = self.buffer.take();
            self.worker.adopt(Orphan {
                request,
                ep: keep.ep,
                keep: Box::new((buffer, keep.extra)),
            });
        }
    }
}

impl<B: 'static> WaitError<B> {
    /// The error.
    pub fn error(&self) -> &UcxError {
        match self {
            Self::Failed { error, .. } | Self::Pending { error, .. } => error,
        }
    }

    /// The error, dropping the buffer or the request (a request still in flight stays
    /// with its worker until it completes).
    pub fn into_error(self) -> UcxError {
        match self {
            Self::Failed { error, .. } | Self::Pending { error, .. } => error,
        }
    }
}

impl<B: 'static> fmt::Debug for WaitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed { error, .. } => f.debug_struct("Failed").field("error", error).finish(),
            Self::Pending { error, .. } => f.debug_struct("Pending").field("error", error).finish(),
        }
    }
}

impl<B: 'static> fmt::Display for WaitError<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.error(), f)
    }
}

impl<B: 'static> std::error::Error for WaitError<B> {}

impl<B: 'static> From<WaitError<B>> for UcxError {
    fn from(e: WaitError<B>) -> Self {
        e.into_error()
    }
}

/// `ucp_request_check_status`.
///
/// # Safety
/// `request` must be a live request handle (a pointer returned by a `*_nbx` call) that has
/// not been freed.
pub(crate) unsafe fn request_status(request: ucs_status_ptr_t) -> ucs_status_t {
    // SAFETY: guaranteed by the caller.
    unsafe { ucp_request_check_status(request) }
}

/// `ucp_request_free`.
///
/// # Safety
/// `request` must be a live request handle, freed exactly once; if it has not completed,
/// the memory it uses must stay valid until it does (UCX frees it then).
pub(crate) unsafe fn release_request(request: ucs_status_ptr_t) {
    // SAFETY: guaranteed by the caller.
    unsafe { ucp_request_free(request) }
}

/// Arms the worker and sleeps on its event fd, at most until `deadline` (and `MAX_SLEEP`).
fn sleep_on_worker(worker: &WorkerInner, deadline: Instant) -> Result<()> {
    if worker.arm()? {
        let left = deadline.saturating_duration_since(Instant::now());
        poll_readable(worker.event_fd()?, left.min(MAX_SLEEP))?;
    }
    Ok(())
}
