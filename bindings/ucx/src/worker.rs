//! Workers: one per thread or progress loop. A worker drives every operation of its
//! endpoints; it sleeps on its event fd when idle.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ucx_sys::{
    ucp_address_t, ucp_ep_close_flags_t, ucp_ep_close_nbx, ucp_op_attr_t, ucp_request_param_t,
    ucp_wakeup_event_types, ucp_worker_arm, ucp_worker_create, ucp_worker_destroy,
    ucp_worker_get_address, ucp_worker_get_efd, ucp_worker_h, ucp_worker_params_field,
    ucp_worker_params_t, ucp_worker_progress, ucp_worker_release_address, ucs_status_ptr_t,
    ucs_status_t, ucs_thread_mode_t,
};

use crate::am::AmSlot;
use crate::context::Context;
use crate::endpoint::{EndpointInner, EpState};
use crate::error::{check, check_ptr, Result, Status, UcxError};
use crate::request::{release_request, request_status};

/// How long dropping a worker (or a request whose worker is gone) waits for operations
/// still in flight before it gives up and leaks their buffers instead of freeing memory
/// UCX may still write.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// A UCP worker (`ucp_worker_h`), single-threaded: it and everything made from it
/// (endpoints, remote keys, requests) stay on the thread that created it.
pub struct Worker {
    pub(crate) inner: Rc<WorkerInner>,
}

/// A worker's packed address, to send to peers so they can connect ([`crate::Endpoint`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerAddress(Vec<u8>);

/// The state shared by a worker and the objects made from it.
pub(crate) struct WorkerInner {
    pub(crate) handle: ucp_worker_h,
    /// Keeps the context alive until the worker is destroyed.
    _context: Context,
    /// Set while `ucp_worker_progress` runs (callbacks may run): progress must not re-enter.
    pub(crate) in_progress: Cell<bool>,
    /// Set once the user's [`Worker`] is dropped: dropped requests drain on the spot.
    handle_dropped: Cell<bool>,
    /// Requests dropped while in flight, with what they must keep alive until completion.
    orphans: RefCell<Vec<Orphan>>,
    /// Endpoints being force-closed, with their error-handler state.
    closing: RefCell<Vec<Closing>>,
    /// Active message handlers by id; UCX holds pointers to the boxed slots.
    pub(crate) am_handlers: RefCell<HashMap<u16, Box<AmSlot>>>,
    /// A panic caught in a callback, resumed after `ucp_worker_progress` returns.
    pub(crate) panic: RefCell<Option<Box<dyn Any + Send>>>,
    /// The event fd, once asked for.
    efd: Cell<Option<RawFd>>,
    /// Endpoints created and not yet closed.
    pub(crate) live_endpoints: Cell<usize>,
}

/// A request dropped while in flight: freed, with what it keeps, once it completes.
pub(crate) struct Orphan {
    pub(crate) request: ucs_status_ptr_t,
    /// Its endpoint, force-closed if the orphan does not complete when the worker goes.
    pub(crate) ep: Option<Rc<EndpointInner>>,
    /// The buffer and other resources the operation uses.
    pub(crate) keep: Box<dyn Any>,
}

/// An endpoint whose force-close is in flight.
struct Closing {
    request: ucs_status_ptr_t,
    _state: Box<EpState>,
}

impl Worker {
    /// Creates a worker on `context`, with wakeup events for receives, sends and RMA.
    pub fn new(context: &Context) -> Result<Self> {
        let events = ucp_wakeup_event_types::UCP_WAKEUP_RX
            | ucp_wakeup_event_types::UCP_WAKEUP_TX
            | ucp_wakeup_event_types::UCP_WAKEUP_RMA;
        let params = ucp_worker_params_t {
            field_mask: u64::from(
                (ucp_worker_params_field::UCP_WORKER_PARAM_FIELD_THREAD_MODE
                    | ucp_worker_params_field::UCP_WORKER_PARAM_FIELD_EVENTS)
                    .0,
            ),
            thread_mode: ucs_thread_mode_t::UCS_THREAD_MODE_SINGLE,
            events: events.0,
            ..Default::default()
        };
        let mut handle: ucp_worker_h = ptr::null_mut();
        // SAFETY: the context is alive (kept by the worker); `params` and `handle` are
        // valid pointers for the call.
        check("ucp_worker_create", unsafe {
            ucp_worker_create(context.inner.handle, &params, &mut handle)
        })?;
        Ok(Self {
            inner: Rc::new(WorkerInner {
                handle,
                _context: context.clone(),
                in_progress: Cell::new(false),
                handle_dropped: Cell::new(false),
                orphans: RefCell::default(),
                closing: RefCell::default(),
                am_handlers: RefCell::default(),
                panic: RefCell::default(),
                efd: Cell::new(None),
                live_endpoints: Cell::new(0),
            }),
        })
    }

    /// This worker's address, for peers to connect to.
    pub fn address(&self) -> Result<WorkerAddress> {
        let mut addr: *mut ucp_address_t = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: the worker is alive; the out pointers are valid.
        check("ucp_worker_get_address", unsafe {
            ucp_worker_get_address(self.inner.handle, &mut addr, &mut len)
        })?;
        // SAFETY: UCX returned `len` readable bytes at `addr`, alive until released below.
        let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) }.to_vec();
        // SAFETY: the address came from ucp_worker_get_address and is released once.
        unsafe { ucp_worker_release_address(self.inner.handle, addr) };
        Ok(WorkerAddress(bytes))
    }

    /// Makes progress on every operation of this worker (runs completions and active
    /// message handlers); returns the number of events processed. Does nothing (returns 0)
    /// when called from inside an active message handler.
    pub fn progress(&self) -> u32 {
        self.inner.progress().unwrap_or(0)
    }

    /// The worker's event fd: it becomes readable when the worker has work, after
    /// [`arm`](Self::arm) returned `true`. Register it with epoll (or tokio's `AsyncFd`)
    /// to sleep while idle.
    pub fn event_fd(&self) -> Result<BorrowedFd<'_>> {
        let fd = self.inner.event_fd()?;
        // SAFETY: the fd belongs to the worker and stays open as long as `self`.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Arms the event fd (`ucp_worker_arm`): `Ok(true)` when armed, so it is safe to sleep
    /// on the fd; `Ok(false)` when events are pending and the caller must progress first.
    pub fn arm(&self) -> Result<bool> {
        self.inner.arm()
    }

    /// Progresses once, and if there was nothing to do, arms the event fd and sleeps on it
    /// for at most `timeout`. Returns whether there is (or may be) work: `false` means the
    /// timeout passed with no event. Follow it with [`progress`](Self::progress).
    pub fn wait_for_event(&self, timeout: Duration) -> Result<bool> {
        if self.inner.progress()? > 0 || !self.inner.arm()? {
            return Ok(true);
        }
        poll_readable(self.inner.event_fd()?, timeout)
    }

    /// Number of endpoints of this worker that are open right now (a leak check).
    pub fn live_endpoints(&self) -> usize {
        self.inner.live_endpoints.get()
    }

    /// Number of dropped requests still in flight (their buffers are freed on completion).
    pub fn orphaned_requests(&self) -> usize {
        self.inner.orphans.borrow().len()
    }
}

impl WorkerInner {
    /// `ucp_worker_progress`, guarded against re-entry, then reaping of dropped requests
    /// and closing endpoints; resumes a panic caught in a callback.
    pub(crate) fn progress(&self) -> Result<u32> {
        if self.in_progress.replace(true) {
            return Err(UcxError::local(
                "ucp_worker_progress",
                Status::INVALID_PARAM,
                "called from inside an active message handler (wait outside the handler)",
            ));
        }
        // SAFETY: the worker is alive and used from this thread only (it is !Send); the
        // flag above keeps callbacks from re-entering it.
        let events = unsafe { ucp_worker_progress(self.handle) };
        self.in_progress.set(false);
        self.reap();
        if let Some(panic) = self.panic.borrow_mut().take() {
            std::panic::resume_unwind(panic);
        }
        Ok(events)
    }

    /// Frees orphaned requests and endpoint closes that have completed.
    fn reap(&self) {
        if let Ok(mut orphans) = self.orphans.try_borrow_mut() {
            orphans.retain(|o| {
                // SAFETY: the orphan's request is a live request handle not yet freed.
                let done = unsafe { request_status(o.request) } != ucs_status_t::UCS_INPROGRESS;
                if done {
                    // SAFETY: the request completed and is freed exactly once (it leaves
                    // the list); its buffer is dropped after.
                    unsafe { release_request(o.request) };
                }
                !done
            });
        }
        if let Ok(mut closing) = self.closing.try_borrow_mut() {
            closing.retain(|c| {
                // SAFETY: the close request is live and not yet freed.
                let done = unsafe { request_status(c.request) } != ucs_status_t::UCS_INPROGRESS;
                if done {
                    // SAFETY: completed; freed exactly once as it leaves the list.
                    unsafe { release_request(c.request) };
                }
                !done
            });
        }
    }

    /// Keeps a request dropped in flight until it completes. If the user's worker is gone
    /// (nobody will progress it), drains it here within a bounded time.
    pub(crate) fn adopt(&self, orphan: Orphan) {
        self.orphans.borrow_mut().push(orphan);
        if self.handle_dropped.get() && !self.in_progress.get() {
            self.drain_orphans();
        }
    }

    /// Progresses until every orphan completes; force-closes the endpoints of those that
    /// do not; leaks (never frees) the buffers of any that still have not completed.
    fn drain_orphans(&self) {
        let start = Instant::now();
        self.progress_until(start + DRAIN_TIMEOUT / 2, || {
            self.orphans.borrow().is_empty()
        });
        for orphan in self.orphans.borrow().iter() {
            if let Some(ep) = &orphan.ep {
                ep.force_close();
            }
        }
        self.progress_until(start + DRAIN_TIMEOUT, || self.orphans.borrow().is_empty());
        for orphan in self.orphans.borrow_mut().drain(..) {
            // SAFETY: the request is live; freeing an incomplete request only detaches it
            // (UCX releases it when it completes). Its buffer is leaked, never freed,
            // because UCX may still write into it.
            unsafe { release_request(orphan.request) };
            std::mem::forget(orphan.keep);
            std::mem::forget(orphan.ep);
        }
    }

    /// Progresses until `done` or the deadline.
    fn progress_until(&self, deadline: Instant, done: impl Fn() -> bool) {
        while !done() && Instant::now() < deadline {
            if self.progress().is_err() {
                return;
            }
        }
    }

    /// Keeps an endpoint's close request (and its error-handler state) until it completes.
    pub(crate) fn adopt_close(&self, request: ucs_status_ptr_t, state: Box<EpState>) {
        self.closing.borrow_mut().push(Closing {
            request,
            _state: state,
        });
    }

    /// The event fd, fetched once.
    pub(crate) fn event_fd(&self) -> Result<RawFd> {
        if let Some(fd) = self.efd.get() {
            return Ok(fd);
        }
        let mut fd: RawFd = -1;
        // SAFETY: the worker is alive and was created with wakeup events; `fd` is a valid
        // out pointer.
        check("ucp_worker_get_efd", unsafe {
            ucp_worker_get_efd(self.handle, &mut fd)
        })?;
        self.efd.set(Some(fd));
        Ok(fd)
    }

    /// `ucp_worker_arm`: `Ok(true)` armed, `Ok(false)` busy (progress again).
    pub(crate) fn arm(&self) -> Result<bool> {
        self.event_fd()?;
        // SAFETY: the worker is alive; its event fd was fetched above, as UCX requires.
        let status = unsafe { ucp_worker_arm(self.handle) };
        if status == ucs_status_t::UCS_ERR_BUSY {
            return Ok(false);
        }
        check("ucp_worker_arm", status).map(|()| true)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.inner.handle_dropped.set(true);
        if !self.inner.in_progress.get() {
            self.inner.drain_orphans();
        }
    }
}

impl Drop for WorkerInner {
    fn drop(&mut self) {
        // Every endpoint is gone (each holds an `Rc` to the worker); wait for their closes.
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while !self.closing.borrow().is_empty() && Instant::now() < deadline {
            // SAFETY: the worker is alive; nothing else uses it any more.
            unsafe { ucp_worker_progress(self.handle) };
            self.reap();
        }
        for closing in self.closing.get_mut().drain(..) {
            // SAFETY: the close request is live and freed once; its error-handler state is
            // leaked, since UCX might still call the handler until the worker is destroyed.
            unsafe { release_request(closing.request) };
            std::mem::forget(closing._state);
        }
        for orphan in self.orphans.get_mut().drain(..) {
            // SAFETY: as in `drain_orphans`: detach the request, leak what it uses.
            unsafe { release_request(orphan.request) };
            std::mem::forget(orphan.keep);
        }
        // SAFETY: every endpoint of this worker is closed or being closed, no request is
        // left attached; the handle came from ucp_worker_create and is destroyed once.
        // The active message slots are dropped after this, so UCX never sees them freed.
        unsafe { ucp_worker_destroy(self.handle) };
    }
}

impl WorkerAddress {
    /// An address received from a peer (as produced by [`WorkerAddress::as_bytes`]).
    /// UCX does not validate addresses thoroughly: accept them only from authenticated
    /// peers (e.g. in a handshake over a connection checked with the job's token).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The packed address.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The packed address, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Force-closes `ep` without waiting: `Ok(Some(request))` while the close is in flight.
pub(crate) fn force_close_ep(ep: ucx_sys::ucp_ep_h) -> Result<Option<ucs_status_ptr_t>> {
    let param = ucp_request_param_t {
        op_attr_mask: ucp_op_attr_t::UCP_OP_ATTR_FIELD_FLAGS.0,
        flags: ucp_ep_close_flags_t::UCP_EP_CLOSE_FLAG_FORCE.0,
        ..Default::default()
    };
    // SAFETY: `ep` is a live endpoint closed exactly once (the caller marks it closed).
    check_ptr("ucp_ep_close_nbx", unsafe { ucp_ep_close_nbx(ep, &param) })
}

/// Waits until `fd` is readable or `timeout` passes; returns whether it is readable.
pub(crate) fn poll_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            return Ok(true);
        }
        return Err(UcxError::local(
            "poll",
            Status::INVALID_PARAM,
            err.to_string(),
        ));
    }
    Ok(n > 0)
}
