//! Endpoints: a connection from a worker to a peer worker, created from the peer's
//! address. Create one per peer and cache it; every operation to that peer uses it.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::ops::DerefMut;
use std::ptr;
use std::rc::Rc;
use std::time::Instant;

use stable_deref_trait::StableDeref;
use ucx_sys::{
    ucp_ep_create, ucp_ep_flush_nbx, ucp_ep_h, ucp_ep_params_field, ucp_ep_params_t,
    ucp_err_handler_t, ucp_err_handling_mode_t, ucp_get_nbx, ucp_request_param_t, ucs_status_t,
};

use crate::error::{check, check_ptr, Result, Status, UcxError};
use crate::memory::RemoteKey;
use crate::request::{Keep, Request};
use crate::worker::{force_close_ep, Worker, WorkerAddress, WorkerInner};

/// An endpoint (`ucp_ep_h`) to one peer worker. With peer-failure detection
/// ([`ErrorMode::Peer`]), operations in flight complete with an error when the peer dies
/// and later ones fail at once. Cheap to clone (all clones are the same endpoint); closed
/// when the last clone, remote key and request using it are gone, or by
/// [`close`](Self::close).
#[derive(Clone)]
pub struct Endpoint {
    pub(crate) inner: Rc<EndpointInner>,
}

/// The state behind [`Endpoint`].
pub(crate) struct EndpointInner {
    pub(crate) worker: Rc<WorkerInner>,
    pub(crate) handle: ucp_ep_h,
    /// What the error handler writes into; handed to the worker while a close is in flight.
    state: RefCell<Option<Box<EpState>>>,
    closed: Cell<bool>,
    mode: ErrorMode,
}

/// How an endpoint handles a peer's failure (`ucp_err_handling_mode_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorMode {
    /// `UCP_ERR_HANDLING_MODE_PEER`: detect peer failure; operations fail instead of
    /// hanging. UCX 1.13's shared-memory transports (posix, sysv) cannot do it: with only
    /// those, UCX refuses the endpoint (`UCS_ERR_UNREACHABLE`), and with tcp also enabled
    /// it carries messages over tcp instead.
    Peer,
    /// `UCP_ERR_HANDLING_MODE_NONE`: no detection; a dead peer is noticed only by the
    /// caller's deadlines (or a failing read, e.g. cma from a dead process).
    None,
}

/// Where UCX's error handler records a peer failure.
#[derive(Default)]
pub(crate) struct EpState {
    failed: Cell<Option<ucs_status_t>>,
}

impl Endpoint {
    /// Connects `worker` to the worker at `address` with peer-failure detection where the
    /// transports support it: [`ErrorMode::Peer`], or [`ErrorMode::None`] when UCX finds no
    /// transport able to detect failures (shared memory only). Non-blocking: the wire-up
    /// completes as the workers progress; operations may be issued at once.
    pub fn connect(worker: &Worker, address: &WorkerAddress) -> Result<Self> {
        match Self::connect_with(worker, address, ErrorMode::Peer) {
            Err(e) if e.status.0 == ucs_status_t::UCS_ERR_UNREACHABLE => {
                Self::connect_with(worker, address, ErrorMode::None)
            }
            other => other,
        }
    }

    /// Connects `worker` to the worker at `address` with the given error handling.
    pub fn connect_with(worker: &Worker, address: &WorkerAddress, mode: ErrorMode) -> Result<Self> {
        let state = Box::<EpState>::default();
        let err_mode = match mode {
            ErrorMode::Peer => ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_PEER,
            ErrorMode::None => ucp_err_handling_mode_t::UCP_ERR_HANDLING_MODE_NONE,
        };
        let params = ucp_ep_params_t {
            field_mask: u64::from(
                (ucp_ep_params_field::UCP_EP_PARAM_FIELD_REMOTE_ADDRESS
                    | ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE
                    | ucp_ep_params_field::UCP_EP_PARAM_FIELD_ERR_HANDLER)
                    .0,
            ),
            address: address.as_bytes().as_ptr().cast(),
            err_mode,
            err_handler: ucp_err_handler_t {
                cb: Some(on_endpoint_error),
                arg: ptr::from_ref::<EpState>(&state).cast_mut().cast(),
            },
            ..Default::default()
        };
        let mut handle: ucp_ep_h = ptr::null_mut();
        // SAFETY: the worker is alive; the address bytes are alive for the call (UCX copies
        // what it needs); the error handler's argument is the boxed state, which stays at
        // its address until the endpoint's close has completed (see `force_close`).
        check("ucp_ep_create", unsafe {
            ucp_ep_create(worker.inner.handle, &params, &mut handle)
        })?;
        let inner = &worker.inner;
        inner.live_endpoints.set(inner.live_endpoints.get() + 1);
        Ok(Self {
            inner: Rc::new(EndpointInner {
                worker: Rc::clone(inner),
                handle,
                state: RefCell::new(Some(state)),
                closed: Cell::new(false),
                mode,
            }),
        })
    }

    /// Reads `dst.len()` bytes at `remote_addr` of the peer's memory region (whose key is
    /// `rkey`, unpacked on this endpoint) straight into `dst` (`ucp_get_nbx`). The request
    /// owns `dst` until the read completes and gives it back from [`Request::wait`].
    pub fn get<B>(&self, remote_addr: u64, rkey: &RemoteKey, mut dst: B) -> Request<B>
    where
        B: StableDeref + DerefMut<Target = [u8]> + 'static,
    {
        const API: &str = "ucp_get_nbx";
        let keep = Keep {
            ep: Some(Rc::clone(&self.inner)),
            extra: Some(Box::new(Rc::clone(&rkey.inner))),
        };
        let ready = self
            .inner
            .ensure_open(API)
            .and_then(|()| rkey.check_endpoint(self, API));
        if let Err(e) = ready {
            return Request::failed(Rc::clone(&self.inner.worker), API, e, dst, keep);
        }
        let (addr, len) = {
            let bytes: &mut [u8] = &mut dst;
            (bytes.as_mut_ptr(), bytes.len())
        };
        let param = ucp_request_param_t::default();
        // SAFETY: the endpoint and the remote key (unpacked on it) are alive and kept alive
        // by the request; `addr..addr+len` is `dst`, which the request owns and which does
        // not move (StableDeref) until the operation completes.
        let ptr = unsafe {
            ucp_get_nbx(
                self.inner.handle,
                addr.cast::<c_void>(),
                len,
                remote_addr,
                rkey.inner.handle,
                &param,
            )
        };
        Request::from_ptr(
            Rc::clone(&self.inner.worker),
            API,
            check_ptr(API, ptr),
            dst,
            keep,
        )
    }

    /// Flushes the endpoint (`ucp_ep_flush_nbx`): completes once every operation issued
    /// on it before has completed remotely.
    pub fn flush(&self) -> Request<()> {
        const API: &str = "ucp_ep_flush_nbx";
        let keep = Keep {
            ep: Some(Rc::clone(&self.inner)),
            extra: None,
        };
        if let Err(e) = self.inner.ensure_open(API) {
            return Request::failed(Rc::clone(&self.inner.worker), API, e, (), keep);
        }
        let param = ucp_request_param_t::default();
        // SAFETY: the endpoint is alive and open.
        let ptr = unsafe { ucp_ep_flush_nbx(self.inner.handle, &param) };
        Request::from_ptr(
            Rc::clone(&self.inner.worker),
            API,
            check_ptr(API, ptr),
            (),
            keep,
        )
    }

    /// How this endpoint handles a peer's failure.
    pub fn error_mode(&self) -> ErrorMode {
        self.inner.mode
    }

    /// The peer failure UCX reported on this endpoint, if any.
    pub fn error(&self) -> Option<UcxError> {
        self.inner.failure()
    }

    /// Whether the endpoint was closed (by [`close`](Self::close) or a worker shutdown).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.get()
    }

    /// Closes the endpoint gracefully (flushing it first), progressing the worker until the
    /// close completes or `deadline` passes; then it is force-closed. All clones see it
    /// closed; operations in flight on it complete (or fail) first.
    pub fn close(&self, deadline: Instant) -> Result<()> {
        const API: &str = "ucp_ep_close_nbx";
        if self.inner.closed.replace(true) {
            return Ok(());
        }
        let worker = &self.inner.worker;
        worker.live_endpoints.set(worker.live_endpoints.get() - 1);
        let param = ucp_request_param_t::default();
        // SAFETY: the endpoint is alive and closed exactly once (the flag above).
        let ptr = unsafe { ucx_sys::ucp_ep_close_nbx(self.inner.handle, &param) };
        let state = self.inner.state.borrow_mut().take().unwrap_or_default();
        let request = Request::from_ptr(
            Rc::clone(worker),
            API,
            check_ptr(API, ptr),
            state,
            Keep::default(),
        );
        match request.wait(deadline) {
            Ok(_) => Ok(()),
            Err(crate::WaitError::Failed { error, .. }) if error.is_peer_failure() => Ok(()),
            Err(crate::WaitError::Failed { error, .. }) => Err(error),
            Err(crate::WaitError::Pending { error, request }) => {
                // Dropping the pending close hands it (and the state) to the worker.
                drop(request);
                Err(error)
            }
        }
    }
}

impl EndpointInner {
    /// An error if the endpoint is closed or its peer failed.
    pub(crate) fn ensure_open(&self, api: &'static str) -> Result<()> {
        if self.closed.get() {
            return Err(UcxError::local(
                api,
                Status::NOT_CONNECTED,
                "endpoint is closed",
            ));
        }
        match self.failure() {
            Some(e) => Err(UcxError { api, ..e }),
            None => Ok(()),
        }
    }

    /// The failure recorded by the error handler.
    fn failure(&self) -> Option<UcxError> {
        let state = self.state.borrow();
        let status = state.as_ref()?.failed.get()?;
        Some(UcxError::new(
            "peer failure (endpoint error handler)",
            status,
        ))
    }

    /// Force-closes the endpoint without waiting; the worker completes the close.
    pub(crate) fn force_close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let worker = &self.worker;
        worker.live_endpoints.set(worker.live_endpoints.get() - 1);
        let state = self.state.borrow_mut().take().unwrap_or_default();
        match force_close_ep(self.handle) {
            Ok(Some(request)) => worker.adopt_close(request, state),
            // Closed in place (the state can go), or UCX refused, in which case the
            // endpoint is unusable anyway: keep the state, UCX may still call the handler.
            Ok(None) => drop(state),
            Err(_) => std::mem::forget(state),
        }
    }
}

impl Drop for EndpointInner {
    fn drop(&mut self) {
        self.force_close();
    }
}

/// UCX's error handler for every endpoint: records the failure status.
///
/// # Safety
/// `arg` must point to the endpoint's live `EpState` (set up by [`Endpoint::connect`]).
unsafe extern "C" fn on_endpoint_error(arg: *mut c_void, _ep: ucp_ep_h, status: ucs_status_t) {
    // SAFETY: `arg` is the boxed EpState of this endpoint, which lives until its close
    // completes; only `Cell` fields are touched, on the worker's thread.
    let state = unsafe { &*arg.cast::<EpState>() };
    state.failed.set(Some(status));
}
