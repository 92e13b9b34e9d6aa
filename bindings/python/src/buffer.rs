//! Buffers across the boundary: what puts read from Python ([`Contiguous`]), what gets hand
//! to Python ([`Object`]) and what in-place puts write into ([`Reservation`]).

use std::ffi::c_int;
use std::sync::Mutex;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{ffi, PyErr};

use crate::errors;
use crate::key::Key;

/// The bytes of any C-contiguous buffer-protocol object (bytes, bytearray, memoryview,
/// numpy arrays, ...), exported for as long as this value lives.
pub(crate) struct Contiguous {
    buffer: PyUntypedBuffer,
}

impl Contiguous {
    /// Exports `obj`'s buffer; non-contiguous buffers are refused (`BufferError`).
    pub(crate) fn of(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let buffer = PyUntypedBuffer::get(obj)?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "dimstore stores contiguous buffers only (use numpy.ascontiguousarray)",
            ));
        }
        Ok(Contiguous { buffer })
    }

    /// The exported bytes.
    ///
    /// Python code in other threads may write to a writable buffer while the GIL is released
    /// (as with any buffer handed to I/O); the bytes stored are then whatever was read.
    pub(crate) fn bytes(&self) -> &[u8] {
        let len = self.buffer.len_bytes();
        if len == 0 {
            return &[];
        }
        // SAFETY: the buffer is C-contiguous (checked in `of`), so `len_bytes` bytes start at
        // `buf_ptr`; the export held by `self.buffer` keeps the memory alive and its size
        // fixed (exporters refuse to resize while exported) for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.buffer.buf_ptr().cast::<u8>(), len) }
    }
}

/// Fills `view` for `len` bytes at `ptr`, exported by `owner` (which the view keeps alive).
///
/// # Safety
/// `view` must be the pointer CPython passed to `bf_getbuffer`, and `ptr..ptr+len` must stay
/// valid (and, unless `readonly`, writable) for as long as `owner` lives.
unsafe fn fill(
    view: *mut ffi::Py_buffer,
    owner: &Bound<'_, PyAny>,
    ptr: *mut u8,
    len: usize,
    readonly: bool,
    flags: c_int,
) -> PyResult<()> {
    let len = ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyBufferError::new_err("object too large for a Python buffer"))?;
    // SAFETY: per this function's contract; PyBuffer_FillInfo takes its own reference to
    // `owner` (released by PyBuffer_Release) and fails cleanly (BufferError) when a writable
    // view of read-only memory is asked for.
    let status = unsafe {
        ffi::PyBuffer_FillInfo(
            view,
            owner.as_ptr(),
            ptr.cast(),
            len,
            c_int::from(readonly),
            flags,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(owner.py()))
    }
}

/// An object's bytes, as a get returned them: a read-only buffer (`bytes(obj)`,
/// `memoryview(obj)`, `numpy.frombuffer(obj)`). On the same node they are the server's own
/// memory, mapped without a copy; the server keeps them valid (even if the object is evicted)
/// until this object and every view exported from it are gone.
#[pyclass(module = "dimstore", frozen)]
pub struct Object {
    bytes: dimstore::ObjectBytes,
}

impl Object {
    pub(crate) fn new(bytes: dimstore::ObjectBytes) -> Self {
        Object { bytes }
    }
}

#[pymethods]
impl Object {
    /// Whether the bytes are mapped from a same-node server (no copy was made).
    #[getter]
    fn is_mapped(&self) -> bool {
        self.bytes.is_mapped()
    }

    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// A copy as `bytes`.
    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.bytes)
    }

    fn __repr__(&self) -> String {
        let how = if self.bytes.is_mapped() {
            "mapped"
        } else {
            "owned"
        };
        format!("<dimstore.Object of {} bytes, {how}>", self.bytes.len())
    }

    /// # Safety
    /// Called by CPython with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let bytes: &[u8] = &slf.get().bytes;
        let (ptr, len) = (bytes.as_ptr().cast_mut(), bytes.len());
        // SAFETY: the bytes belong to the frozen `slf`, which never changes them and which the
        // view keeps alive; they are exported read-only.
        unsafe { fill(view, slf.as_any(), ptr, len, true, flags) }
    }
}

/// Space reserved for an object written in place (`Store.create(n)`): a writable buffer of
/// `n` bytes; write the object into it, then `seal()` it. On the same node the space is the
/// server's memory itself, so sealing copies nothing. Readers never see it before it is
/// sealed; dropped unsealed, it is given back. Views of it must be released before `seal()`.
#[pyclass(module = "dimstore", frozen)]
pub struct Reservation {
    state: Mutex<State>,
}

struct State {
    /// `None` once sealed or aborted.
    reservation: Option<dimstore::Reservation>,
    /// Buffer views exported and not released yet.
    exports: usize,
}

impl Reservation {
    pub(crate) fn new(reservation: dimstore::Reservation) -> Self {
        Reservation {
            state: Mutex::new(State {
                reservation: Some(reservation),
                exports: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the reservation out, unless views of it are still exported.
    fn take(&self) -> PyResult<dimstore::Reservation> {
        let mut state = self.state();
        if state.exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "{} view(s) of the reservation are still in use: release them first",
                state.exports
            )));
        }
        state
            .reservation
            .take()
            .ok_or_else(|| errors::Error::new_err("the reservation was already sealed or aborted"))
    }
}

#[pymethods]
impl Reservation {
    /// Publishes the first `length` bytes (default: all) as the object; returns its key.
    #[pyo3(signature = (length = None))]
    fn seal(&self, py: Python<'_>, length: Option<u64>) -> PyResult<Key> {
        let reservation = self.take()?;
        let length = length.unwrap_or(reservation.len() as u64);
        if length > reservation.len() as u64 {
            let capacity = reservation.len();
            self.state().reservation = Some(reservation);
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "length {length} exceeds the reservation's {capacity} bytes"
            )));
        }
        py.detach(|| reservation.seal_len(length))
            .map(Key::from)
            .map_err(errors::put)
    }

    /// Gives the space back without publishing anything.
    fn abort(&self) -> PyResult<()> {
        drop(self.take()?);
        Ok(())
    }

    /// Whether the bytes are written straight into the server's memory.
    #[getter]
    fn is_mapped(&self) -> bool {
        self.state()
            .reservation
            .as_ref()
            .is_some_and(|r| r.is_mapped())
    }

    fn __len__(&self) -> usize {
        self.state().reservation.as_ref().map_or(0, |r| r.len())
    }

    /// # Safety
    /// Called by CPython with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let mut state = slf.get().state();
        let Some(reservation) = state.reservation.as_mut() else {
            return Err(PyBufferError::new_err(
                "the reservation was already sealed or aborted",
            ));
        };
        let bytes: &mut [u8] = reservation;
        let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
        // SAFETY: the reservation's memory stays where it is until it is sealed or aborted,
        // which `take` refuses while `exports` > 0; the view keeps `slf` alive.
        unsafe { fill(view, slf.as_any(), ptr, len, false, flags)? };
        state.exports += 1;
        Ok(())
    }

    /// # Safety
    /// Called by CPython with a view filled by `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let mut state = self.state();
        state.exports = state.exports.saturating_sub(1);
    }
}
