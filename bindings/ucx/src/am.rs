//! Active messages: small messages (a header and optional data) delivered to a handler
//! that runs inside [`Worker::progress`] on the receiving worker.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::rc::{Rc, Weak};

use stable_deref_trait::StableDeref;
use ucx_sys::{
    ucp_am_cb_flags, ucp_am_handler_param_field, ucp_am_handler_param_t, ucp_am_recv_attr_t,
    ucp_am_recv_data_nbx, ucp_am_recv_param_t, ucp_am_send_nbx, ucp_ep_h, ucp_op_attr_t,
    ucp_request_param_t, ucp_send_am_flags, ucp_worker_set_am_recv_handler, ucs_status_t,
};

use crate::endpoint::Endpoint;
use crate::error::{check, check_ptr, Result, Status, UcxError};
use crate::request::{Keep, Request};
use crate::worker::{Worker, WorkerInner};

/// A handler as stored.
type Handler = Box<dyn FnMut(AmMessage<'_>)>;

/// A registered handler: UCX holds a pointer to this (boxed, so it does not move).
pub(crate) struct AmSlot {
    worker: Weak<WorkerInner>,
    handler: RefCell<Handler>,
}

/// One received active message, valid during the handler call.
pub struct AmMessage<'a> {
    header: &'a [u8],
    data: AmData<'a>,
    reply_ep: ucp_ep_h,
    worker: &'a Rc<WorkerInner>,
}

/// The data part of a message.
enum AmData<'a> {
    /// Arrived with the message.
    Eager(&'a [u8]),
    /// Announced (rendezvous): `len` bytes to fetch with `ucp_am_recv_data_nbx` from the
    /// descriptor `desc`.
    Rendezvous { desc: *mut c_void, len: usize },
}

impl Worker {
    /// Sets the handler of active message `id` (replacing any previous one). The handler
    /// runs inside [`progress`](Self::progress) on this thread; it must not wait for
    /// requests (waiting there fails), but it may send, and start receives whose requests
    /// it keeps for later. A panic in the handler is resumed when `progress` returns.
    pub fn set_am_handler(
        &self,
        id: u16,
        handler: impl FnMut(AmMessage<'_>) + 'static,
    ) -> Result<()> {
        let slot = Box::new(AmSlot {
            worker: Rc::downgrade(&self.inner),
            handler: RefCell::new(Box::new(handler)),
        });
        self.register(id, Some(slot))
    }

    /// Removes the handler of active message `id`; messages for it are then dropped.
    pub fn clear_am_handler(&self, id: u16) -> Result<()> {
        self.register(id, None)
    }

    fn register(&self, id: u16, slot: Option<Box<AmSlot>>) -> Result<()> {
        const API: &str = "ucp_worker_set_am_recv_handler";
        if self.inner.in_progress.get() {
            return Err(UcxError::local(
                API,
                Status::INVALID_PARAM,
                "cannot change handlers from inside a handler",
            ));
        }
        let params = ucp_am_handler_param_t {
            field_mask: u64::from(
                (ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_ID
                    | ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_FLAGS
                    | ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_CB
                    | ucp_am_handler_param_field::UCP_AM_HANDLER_PARAM_FIELD_ARG)
                    .0,
            ),
            id: u32::from(id),
            flags: ucp_am_cb_flags::UCP_AM_FLAG_WHOLE_MSG.0,
            cb: slot.as_ref().map(|_| am_trampoline as _),
            arg: slot
                .as_deref()
                .map_or(ptr::null_mut(), |s| ptr::from_ref(s).cast_mut().cast()),
        };
        // SAFETY: the worker is alive and not in progress (checked above), so no handler is
        // running; the slot is boxed and kept in the worker's table until replaced (here,
        // after UCX stopped using the old one) or until after the worker is destroyed.
        check(API, unsafe {
            ucp_worker_set_am_recv_handler(self.inner.handle, &params)
        })?;
        let mut handlers = self.inner.am_handlers.borrow_mut();
        match slot {
            Some(slot) => handlers.insert(id, slot),
            None => handlers.remove(&id),
        };
        Ok(())
    }
}

impl Endpoint {
    /// Sends active message `id` with `header` and `data` (`ucp_am_send_nbx`, with the
    /// reply flag so the receiver can answer with [`AmMessage::reply`]). The request owns
    /// both until the send completes.
    pub fn am_send<D>(&self, id: u16, header: Vec<u8>, data: D) -> Request<D>
    where
        D: StableDeref + Deref<Target = [u8]> + 'static,
    {
        const API: &str = "ucp_am_send_nbx";
        if let Err(e) = self.inner.ensure_open(API) {
            let keep = Keep::default();
            return Request::failed(Rc::clone(&self.inner.worker), API, e, data, keep);
        }
        // SAFETY: the endpoint is alive and open.
        unsafe {
            send_am(
                &self.inner.worker,
                self.inner.handle,
                Some(self),
                id,
                header,
                data,
            )
        }
    }
}

impl<'a> AmMessage<'a> {
    /// The message's header.
    pub fn header(&self) -> &'a [u8] {
        self.header
    }

    /// The data length in bytes.
    pub fn data_len(&self) -> usize {
        match self.data {
            AmData::Eager(bytes) => bytes.len(),
            AmData::Rendezvous { len, .. } => len,
        }
    }

    /// The data, when it arrived with the message (`None` for a rendezvous message, whose
    /// data must be fetched with [`receive`](Self::receive)).
    pub fn data(&self) -> Option<&'a [u8]> {
        match self.data {
            AmData::Eager(bytes) => Some(bytes),
            AmData::Rendezvous { .. } => None,
        }
    }

    /// Whether the data is announced rather than carried (UCX chose rendezvous).
    pub fn is_rendezvous(&self) -> bool {
        matches!(self.data, AmData::Rendezvous { .. })
    }

    /// Receives the data into the first [`data_len`](Self::data_len) bytes of `dst`
    /// (copied at once for eager data; `ucp_am_recv_data_nbx` for rendezvous data). Keep
    /// the request and wait for it outside the handler.
    pub fn receive<B>(self, mut dst: B) -> Request<B>
    where
        B: StableDeref + DerefMut<Target = [u8]> + 'static,
    {
        const API: &str = "ucp_am_recv_data_nbx";
        let worker = Rc::clone(self.worker);
        let len = self.data_len();
        if dst.len() < len {
            let e = UcxError::local(
                API,
                Status(ucs_status_t::UCS_ERR_MESSAGE_TRUNCATED),
                format!("receive buffer of {} bytes for {len} bytes", dst.len()),
            );
            return Request::failed(worker, API, e, dst, Keep::default());
        }
        match self.data {
            AmData::Eager(bytes) => {
                dst[..len].copy_from_slice(bytes);
                Request::from_ptr(worker, API, Ok(None), dst, Keep::default())
            }
            AmData::Rendezvous { desc, len } => {
                let buf = dst.as_mut_ptr();
                let param = ucp_request_param_t::default();
                // SAFETY: `desc` is the rendezvous descriptor of this message, used once
                // (`self` is consumed); `buf` is `len` writable bytes of `dst`, which the
                // request owns and which does not move until the receive completes.
                let ptr =
                    unsafe { ucp_am_recv_data_nbx(worker.handle, desc, buf.cast(), len, &param) };
                Request::from_ptr(worker, API, check_ptr(API, ptr), dst, Keep::default())
            }
        }
    }

    /// Whether the sender asked for replies (so [`reply`](Self::reply) can be used).
    pub fn can_reply(&self) -> bool {
        !self.reply_ep.is_null()
    }

    /// Sends active message `id` back to the sender on UCX's reply endpoint. For replies
    /// sent later (outside the handler), connect an [`Endpoint`] to the sender instead.
    pub fn reply<D>(&self, id: u16, header: Vec<u8>, data: D) -> Request<D>
    where
        D: StableDeref + Deref<Target = [u8]> + 'static,
    {
        let worker = Rc::clone(self.worker);
        if self.reply_ep.is_null() {
            let e = UcxError::local(
                "ucp_am_send_nbx",
                Status::INVALID_PARAM,
                "the message carries no reply endpoint",
            );
            return Request::failed(worker, "ucp_am_send_nbx", e, data, Keep::default());
        }
        // SAFETY: the reply endpoint is valid during the handler call, which is now.
        unsafe { send_am(&worker, self.reply_ep, None, id, header, data) }
    }
}

/// `ucp_am_send_nbx` on `ep`; the request keeps `header`, `data` and the endpoint (when it
/// is ours).
///
/// # Safety
/// `ep` must be a live endpoint of `worker`.
unsafe fn send_am<D>(
    worker: &Rc<WorkerInner>,
    ep: ucp_ep_h,
    owner: Option<&Endpoint>,
    id: u16,
    header: Vec<u8>,
    data: D,
) -> Request<D>
where
    D: StableDeref + Deref<Target = [u8]> + 'static,
{
    const API: &str = "ucp_am_send_nbx";
    let param = ucp_request_param_t {
        op_attr_mask: ucp_op_attr_t::UCP_OP_ATTR_FIELD_FLAGS.0,
        flags: ucp_send_am_flags::UCP_AM_SEND_FLAG_REPLY.0,
        ..Default::default()
    };
    let (header_ptr, header_len) = (header.as_ptr(), header.len());
    let (data_ptr, data_len) = (data.as_ptr(), data.len());
    // SAFETY: `ep` is live (caller); the header and data stay alive and unmoved in the
    // request (a Vec's heap buffer and a StableDeref buffer) until the send completes, as
    // UCX 1.13 requires for both.
    let ptr = unsafe {
        ucp_am_send_nbx(
            ep,
            u32::from(id),
            header_ptr.cast(),
            header_len,
            data_ptr.cast(),
            data_len,
            &param,
        )
    };
    let keep = Keep {
        ep: owner.map(|e| Rc::clone(&e.inner)),
        extra: Some(Box::new(header)),
    };
    Request::from_ptr(Rc::clone(worker), API, check_ptr(API, ptr), data, keep)
}

/// The C callback of every handler: builds the message and calls the Rust handler.
///
/// # Safety
/// Called by UCX with `arg` = the handler's `AmSlot`, a header of `header_length` bytes,
/// and `data` = `length` bytes (eager) or a rendezvous descriptor, per `param`.
unsafe extern "C" fn am_trampoline(
    arg: *mut c_void,
    header: *const c_void,
    header_length: usize,
    data: *mut c_void,
    length: usize,
    param: *const ucp_am_recv_param_t,
) -> ucs_status_t {
    // SAFETY: `arg` is the boxed slot registered for this id, alive while registered (and
    // the registration cannot change during progress).
    let slot = unsafe { &*arg.cast::<AmSlot>() };
    let Some(worker) = slot.worker.upgrade() else {
        return ucs_status_t::UCS_OK;
    };
    // SAFETY: UCX passes a valid parameter structure.
    let param = unsafe { &*param };
    let header = if header_length == 0 {
        &[][..]
    } else {
        // SAFETY: UCX passes `header_length` readable bytes, valid during the callback.
        unsafe { std::slice::from_raw_parts(header.cast::<u8>(), header_length) }
    };
    let rndv = param.recv_attr & u64::from(ucp_am_recv_attr_t::UCP_AM_RECV_ATTR_FLAG_RNDV.0) != 0;
    let data = if rndv {
        AmData::Rendezvous {
            desc: data,
            len: length,
        }
    } else if length == 0 {
        AmData::Eager(&[])
    } else {
        // SAFETY: without the RNDV flag, `data` is `length` readable bytes valid during
        // the callback.
        AmData::Eager(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), length) })
    };
    let has_reply =
        param.recv_attr & u64::from(ucp_am_recv_attr_t::UCP_AM_RECV_ATTR_FIELD_REPLY_EP.0) != 0;
    let message = AmMessage {
        header,
        data,
        reply_ep: if has_reply {
            param.reply_ep
        } else {
            ptr::null_mut()
        },
        worker: &worker,
    };
    let Ok(mut handler) = slot.handler.try_borrow_mut() else {
        return ucs_status_t::UCS_OK;
    };
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler(message))) {
        worker.panic.borrow_mut().get_or_insert(panic);
    }
    // UCS_OK: eager data is not kept; rendezvous data not received is dropped (the sender
    // completes); a receive started in the handler goes on (UCX tracks it).
    ucs_status_t::UCS_OK
}
