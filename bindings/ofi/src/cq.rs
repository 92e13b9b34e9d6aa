//! Completion queues: every operation's completion (or error) arrives here; reading the
//! queue also drives the provider's progress. A wait fd lets an idle loop sleep.

use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::collections::HashMap;
use std::ffi::{c_void, CStr};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr;
use std::rc::Rc;
use std::time::Duration;

use libfabric_sys::{
    fi_context2, fi_control, fi_cq_attr, fi_cq_err_entry, fi_cq_format, fi_cq_msg_entry,
    fi_cq_open, fi_cq_read, fi_cq_readerr, fi_cq_strerror, fi_trywait, fi_wait_obj, fid, fid_cq,
    FI_EAGAIN, FI_EAVAIL, FI_ECANCELED, FI_GETWAIT, FI_RECV,
};

use crate::error::{check, check_len, OfiError, Result};
use crate::fabric::{close_fid, Domain, DomainInner};

/// Completions read per `fi_cq_read` call.
const BATCH: usize = 16;

/// A completion queue (`fi_cq_open`, `FI_CQ_FORMAT_MSG`) with a wait fd when the provider
/// supports `FI_WAIT_FD`.
pub struct CompletionQueue {
    pub(crate) inner: Rc<CqInner>,
}

/// The state behind [`CompletionQueue`].
pub(crate) struct CqInner {
    pub(crate) handle: *mut fid_cq,
    domain: Rc<DomainInner>,
    wait_fd: Option<RawFd>,
    /// Operations in flight, by context address.
    ops: RefCell<HashMap<usize, Entry>>,
    /// States of operations dropped when their endpoint closed: never freed before the
    /// queue closes, so a late completion can never match a reused address.
    graveyard: RefCell<Vec<Rc<OpState>>>,
}

/// An operation in flight.
struct Entry {
    state: Rc<OpState>,
    /// The endpoint it was posted on (its address, as an id).
    ep: usize,
    /// The buffer of an operation whose handle was dropped, freed on completion.
    orphan: Option<Box<dyn Any>>,
}

/// Per-operation state. Its first field is the `fi_context2` the provider may use as
/// scratch space (`FI_CONTEXT`/`FI_CONTEXT2` modes); its address is the operation context.
#[repr(C)]
pub(crate) struct OpState {
    scratch: UnsafeCell<fi_context2>,
    pub(crate) api: &'static str,
    /// The buffer length: what a send or read transfers (their completions carry no
    /// length; a receive's carries the message length).
    len: usize,
    pub(crate) done: RefCell<Option<Result<usize>>>,
}

impl OpState {
    /// The state of an operation that failed before it was posted.
    pub(crate) fn failed(error: OfiError) -> Self {
        Self {
            scratch: UnsafeCell::new(fi_context2::default()),
            api: error.api,
            len: 0,
            done: RefCell::new(Some(Err(error))),
        }
    }
}

impl CompletionQueue {
    /// Opens a queue of `size` entries on `domain`, with an fd to sleep on if the provider
    /// supports `FI_WAIT_FD` (otherwise [`wait_fd`](Self::wait_fd) is `None`).
    pub fn open(domain: &Domain, size: usize) -> Result<Self> {
        let d = &domain.inner;
        let (handle, wait_fd) = match open_cq(d, size, fi_wait_obj::FI_WAIT_FD) {
            Ok(cq) => {
                let mut fd: libc::c_int = -1;
                // SAFETY: the queue is open with FI_WAIT_FD; FI_GETWAIT writes an int fd.
                let ret = unsafe {
                    fi_control(
                        ptr::addr_of_mut!((*cq).fid),
                        FI_GETWAIT as i32,
                        ptr::addr_of_mut!(fd).cast(),
                    )
                };
                (cq, check("fi_control(FI_GETWAIT)", ret).ok().map(|()| fd))
            }
            Err(_) => (open_cq(d, size, fi_wait_obj::FI_WAIT_NONE)?, None),
        };
        Ok(Self {
            inner: Rc::new(CqInner {
                handle,
                domain: Rc::clone(d),
                wait_fd,
                ops: RefCell::default(),
                graveyard: RefCell::default(),
            }),
        })
    }

    /// Reads completions (driving the provider's progress); returns how many it read.
    pub fn progress(&self) -> Result<usize> {
        self.inner.progress()
    }

    /// The fd that becomes readable when completions (or progress work) arrive; sleep on
    /// it only after [`try_wait`](Self::try_wait) returned `true`.
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        // SAFETY: the fd belongs to the queue and stays open as long as `self`.
        self.inner
            .wait_fd
            .map(|fd| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// `fi_trywait`: whether it is safe to sleep on the wait fd now (`false`: progress
    /// first; also `false` when there is no wait fd).
    pub fn try_wait(&self) -> Result<bool> {
        self.inner.try_wait()
    }

    /// Progresses once and, if there was nothing, sleeps on the wait fd for at most
    /// `timeout` (without a wait fd: a short sleep). Returns whether an event came.
    pub fn wait_for_event(&self, timeout: Duration) -> Result<bool> {
        if self.inner.progress()? > 0 {
            return Ok(true);
        }
        self.inner.sleep(timeout)
    }

    /// Operations in flight on this queue (including dropped ones not yet complete).
    pub fn pending_ops(&self) -> usize {
        self.inner.ops.borrow().len()
    }
}

impl CqInner {
    /// Registers a new operation of endpoint `ep` on a buffer of `len` bytes; returns its
    /// state and context pointer.
    pub(crate) fn register(
        &self,
        ep: usize,
        api: &'static str,
        len: usize,
    ) -> (Rc<OpState>, *mut c_void) {
        let state = Rc::new(OpState {
            scratch: UnsafeCell::new(fi_context2::default()),
            api,
            len,
            done: RefCell::new(None),
        });
        let ctx = state.scratch.get().cast::<c_void>();
        let entry = Entry {
            state: Rc::clone(&state),
            ep,
            orphan: None,
        };
        self.ops.borrow_mut().insert(ctx as usize, entry);
        (state, ctx)
    }

    /// Forgets an operation that the provider refused to post.
    pub(crate) fn unregister(&self, ctx: *mut c_void) {
        self.ops.borrow_mut().remove(&(ctx as usize));
    }

    /// Keeps `keep` (a dropped operation's buffer) until the operation completes.
    pub(crate) fn orphan(&self, ctx: *mut c_void, keep: Box<dyn Any>) {
        if let Some(entry) = self.ops.borrow_mut().get_mut(&(ctx as usize)) {
            entry.orphan = Some(keep);
        }
    }

    /// Drops the operations of endpoint `ep`, which has just been closed: the provider no
    /// longer touches their buffers.
    pub(crate) fn purge(&self, ep: usize) {
        let mut ops = self.ops.borrow_mut();
        let closed: Vec<usize> = ops
            .iter()
            .filter(|(_, e)| e.ep == ep)
            .map(|(k, _)| *k)
            .collect();
        for key in closed {
            if let Some(entry) = ops.remove(&key) {
                let err = OfiError::local(entry.state.api, FI_ECANCELED, "endpoint closed");
                entry.state.done.borrow_mut().get_or_insert(Err(err));
                self.graveyard.borrow_mut().push(entry.state);
            }
        }
    }

    /// Reads every available completion and error completion.
    pub(crate) fn progress(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let mut entries = [fi_cq_msg_entry::default(); BATCH];
            // SAFETY: the queue is open with FI_CQ_FORMAT_MSG; `entries` has room for
            // BATCH entries of that format.
            let ret = unsafe { fi_cq_read(self.handle, entries.as_mut_ptr().cast(), BATCH) };
            if ret == -(FI_EAGAIN as isize) {
                return Ok(total);
            }
            if ret == -(FI_EAVAIL as isize) {
                self.read_error()?;
                total += 1;
                continue;
            }
            let n = check_len("fi_cq_read", ret)?;
            for entry in &entries[..n] {
                self.complete(entry.op_context, Ok(entry.len), entry.flags & FI_RECV != 0);
            }
            total += n;
            if n < BATCH {
                return Ok(total);
            }
        }
    }

    /// Reads one error completion and fails its operation.
    fn read_error(&self) -> Result<()> {
        let mut err = fi_cq_err_entry::default();
        // SAFETY: the queue is open; `err` is a valid error entry (err_data null: the
        // provider uses its own buffer, valid until the next read).
        let ret = unsafe { fi_cq_readerr(self.handle, &mut err, 0) };
        check_len("fi_cq_readerr", ret)?;
        let mut text = [0 as libc::c_char; 256];
        // SAFETY: the queue is open; prov_errno and err_data come from the entry just
        // read; `text` has room for its length.
        let detail = unsafe {
            let p = fi_cq_strerror(
                self.handle,
                err.prov_errno,
                err.err_data,
                text.as_mut_ptr(),
                text.len(),
            );
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        let api = self
            .ops
            .borrow()
            .get(&(err.op_context as usize))
            .map_or("fi_cq_readerr", |e| e.state.api);
        let mut error = OfiError::new(api, i64::from(err.err));
        if !detail.is_empty() {
            error.message = format!("{} (provider: {detail})", error.message);
        }
        self.complete(err.op_context, Err(error), false);
        Ok(())
    }

    /// Records the result of the operation with context `ctx` (unknown contexts, e.g. of
    /// purged operations, are ignored); `received`: the length is a received message's.
    fn complete(&self, ctx: *mut c_void, result: Result<usize>, received: bool) {
        let entry = self.ops.borrow_mut().remove(&(ctx as usize));
        if let Some(entry) = entry {
            let len = entry.state.len;
            let result = result.map(|n| if received { n } else { len });
            *entry.state.done.borrow_mut() = Some(result);
            // A dropped operation's buffer is freed here, after completion.
            drop(entry.orphan);
        }
    }

    /// `fi_trywait` on this queue.
    pub(crate) fn try_wait(&self) -> Result<bool> {
        if self.wait_fd.is_none() {
            return Ok(false);
        }
        // SAFETY: the queue is open; this only takes the address of its fid.
        let mut fids: [*mut fid; 1] = [unsafe { ptr::addr_of_mut!((*self.handle).fid) }];
        // SAFETY: the fabric and the queue are open; `fids` holds one valid fid.
        let ret = unsafe { fi_trywait(self.domain.fabric.handle, fids.as_mut_ptr(), 1) };
        if ret == -FI_EAGAIN {
            return Ok(false);
        }
        check("fi_trywait", ret).map(|()| true)
    }

    /// Sleeps on the wait fd (if `fi_trywait` allows) for at most `timeout`; without a
    /// wait fd, sleeps briefly. Returns whether the fd became readable.
    pub(crate) fn sleep(&self, timeout: Duration) -> Result<bool> {
        match self.wait_fd {
            Some(fd) if self.try_wait()? => poll_readable(fd, timeout),
            Some(_) => Ok(true),
            None => {
                std::thread::sleep(timeout.min(Duration::from_micros(200)));
                Ok(false)
            }
        }
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: every endpoint bound to the queue holds an `Rc` to it, so all are closed.
        unsafe { close_fid("fi_close(cq)", ptr::addr_of_mut!((*self.handle).fid)) };
        // Operations still registered belong to closed endpoints; their buffers go now.
        self.ops.get_mut().clear();
    }
}

/// `fi_cq_open` with the given wait object.
fn open_cq(domain: &DomainInner, size: usize, wait: fi_wait_obj) -> Result<*mut fid_cq> {
    let mut attr = fi_cq_attr {
        size,
        format: fi_cq_format::FI_CQ_FORMAT_MSG,
        wait_obj: wait,
        ..Default::default()
    };
    let mut cq: *mut fid_cq = ptr::null_mut();
    // SAFETY: the domain is open; `attr` and `cq` are valid pointers for the call.
    check("fi_cq_open", unsafe {
        fi_cq_open(domain.handle, &mut attr, &mut cq, ptr::null_mut())
    })?;
    Ok(cq)
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
        return Err(OfiError::local(
            "poll",
            err.raw_os_error().unwrap_or(0),
            err.to_string(),
        ));
    }
    Ok(n > 0)
}
