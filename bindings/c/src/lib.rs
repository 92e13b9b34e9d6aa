//! `libdimstore`: the dimstore client for C, C++ and Fortran programs (`include/dimstore.h`,
//! generated from this file by cbindgen; `fortran/dimstore.f90`).
//!
//! Every function returns an `int` status: `DIMSTORE_OK` (0) or a negative `DIMSTORE_E_*`
//! matching the client's typed errors, and `dimstore_last_error()` gives the calling
//! thread's last message. Nothing unwinds into C: every entry point runs inside a panic
//! boundary. Keys cross the ABI as their text (`dim://HOST:PORT/ID/SIZE`, at most
//! `DIMSTORE_KEY_MAX` bytes with the NUL). NULL pointers, short buffers, malformed keys,
//! closed handles and handles used in a forked child give a status and a message.
//!
//! Handles are numbers in a per-process table, never pointers to memory (see `handles`).
//! This crate is an FFI layer (the workspace denies unsafe code elsewhere): each unsafe
//! block carries its `SAFETY` argument.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod handles;
mod status;
#[cfg(test)]
mod tests;
mod text;

use std::ffi::{c_char, c_int, c_void};

use client::{Key, Store};

pub use status::dimstore_status;
use status::*;
pub use text::DIMSTORE_KEY_MAX;

use status::{boundary, Failure};
use text::{check_slots, read_key, read_keys, write_key};

/// A connection to the fleet: this node's server and any server a key names. Opaque; one
/// handle is shared by all threads of a process (as the Rust `Store` is).
pub struct dimstore_t {
    _opaque: [u8; 0],
}

/// A zero-copy view of an object, filled by `dimstore_get_view`. `data` and `len` stay
/// valid until `dimstore_view_release`, even if the object is evicted or the store is
/// closed meanwhile.
#[repr(C)]
pub struct dimstore_view_t {
    /// The object's first byte (read only; never NULL in a filled view, even for 0 bytes).
    pub data: *const c_void,
    /// The object's size in bytes.
    pub len: usize,
    /// 1 when `data` is the same-node server's own memory (no copy), 0 when the bytes were
    /// fetched into a buffer of the library.
    pub mapped: c_int,
    /// The library's handle of the view; 0 when the view holds nothing.
    pub handle: u64,
}

/// Space for an object written in place, filled by `dimstore_create`: write up to `cap`
/// bytes at `data`, then `dimstore_seal` it (or `dimstore_abort` it). Readers never see it
/// before it is sealed.
#[repr(C)]
pub struct dimstore_reservation_t {
    /// Where to write the object (`cap` writable bytes; never NULL in a filled reservation).
    pub data: *mut c_void,
    /// The bytes reserved.
    pub cap: usize,
    /// 1 when `data` is the same-node server's own memory (sealing copies nothing), 0 when it
    /// is a buffer of the library that sealing puts.
    pub mapped: c_int,
    /// The library's handle of the reservation; 0 when it holds nothing.
    pub handle: u64,
}

fn token(s: *const dimstore_t) -> u64 {
    s.addr() as u64
}

/// The bytes a `(buf, len)` argument pair names; NULL is allowed when `len` is 0.
///
/// # Safety
/// `buf` is NULL or points to `len` readable bytes that stay unchanged during the call.
unsafe fn input<'a>(buf: *const c_void, len: usize, what: &str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(Failure::bad_argument(format!("{what} is NULL")));
    }
    if len > isize::MAX as usize {
        return Err(Failure::bad_argument(format!(
            "{what}: {len} bytes is too many"
        )));
    }
    // SAFETY: non-NULL, `len` readable bytes (caller's guarantee), len <= isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) })
}

/// Writes `value` through an output pointer.
///
/// # Safety
/// `out` is NULL or valid for writing a `T`.
unsafe fn output<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::bad_argument(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and writable (caller's guarantee).
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `bytes` into a caller's buffer of `capacity` bytes.
///
/// # Safety
/// `buf` is NULL or points to `capacity` writable bytes.
unsafe fn copy_out(bytes: &[u8], buf: *mut c_void, capacity: usize) -> Result<(), Failure> {
    if bytes.len() > capacity {
        return Err(Failure::too_small(
            "the object",
            bytes.len() as u64,
            capacity,
        ));
    }
    if bytes.is_empty() {
        return Ok(());
    }
    if buf.is_null() {
        return Err(Failure::bad_argument("the data buffer is NULL"));
    }
    // SAFETY: bytes.len() <= capacity writable bytes at `buf` (caller's guarantee); the
    // object's bytes are the library's buffer or a read-only mapping, not the caller's.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
    Ok(())
}

fn open(
    store: *mut *mut dimstore_t,
    connect: impl FnOnce() -> Result<Store, Failure>,
) -> Result<(), Failure> {
    if store.is_null() {
        return Err(Failure::bad_argument("the output handle pointer is NULL"));
    }
    // SAFETY: non-NULL, writable (caller's guarantee); NULL until the store is open.
    unsafe { store.write(std::ptr::null_mut()) };
    let opened = handles::insert_store(connect()?);
    // SAFETY: as above.
    unsafe { store.write(std::ptr::without_provenance_mut(opened as usize)) };
    Ok(())
}

/// Opens a store configured from the `DIMSTORE_*` environment, like `Store::from_env` in
/// Rust: this node's server from the fleet file (`DIMSTORE_FLEET`), `DIMSTORE_SERVER` or the
/// runtime directory, else one it spawns. `*store` is the handle, or NULL on failure.
///
/// Thread safety: may be called from any thread; the handle may be used by all threads.
///
/// # Safety
/// `store` is NULL or valid for writing a pointer.
#[no_mangle]
pub unsafe extern "C" fn dimstore_open_env(store: *mut *mut dimstore_t) -> c_int {
    boundary("dimstore_open_env", || {
        open(store, || Ok(Store::from_env()?))
    })
}

/// Opens a store whose local server is at `server` (`host:port`), with the rest of the
/// configuration from the `DIMSTORE_*` environment. A NULL `server` is `dimstore_open_env`.
///
/// Thread safety: as `dimstore_open_env`.
///
/// # Safety
/// `server` is NULL or a NUL-terminated string; `store` is NULL or valid for writing a
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn dimstore_open(
    server: *const c_char,
    store: *mut *mut dimstore_t,
) -> c_int {
    boundary("dimstore_open", || {
        open(store, || {
            if server.is_null() {
                return Ok(Store::from_env()?);
            }
            // SAFETY: non-NULL and NUL-terminated (caller's guarantee).
            let server = unsafe { std::ffi::CStr::from_ptr(server) }
                .to_str()
                .map_err(|_| Failure::bad_argument("the server address is not UTF-8"))?;
            let config =
                client::ClientConfig::from_env().map_err(|e| Failure::new(DIMSTORE_E_CONFIG, e))?;
            Ok(Store::connect(server, config)?)
        })
    })
}

/// Closes a store. NULL, or a handle already closed, is ignored. Views fetched through it
/// stay valid until released. In a forked child, closing a parent's handle only forgets it
/// (its connections belong to the parent).
///
/// Thread safety: calls other threads are making with the handle finish normally; later
/// calls with it return `DIMSTORE_E_CLOSED`.
///
/// # Safety
/// None beyond the ABI: any pointer value is accepted.
#[no_mangle]
pub unsafe extern "C" fn dimstore_close(s: *mut dimstore_t) {
    let _ = boundary("dimstore_close", || {
        handles::remove_store(token(s));
        Ok(())
    });
}

/// Stores `len` bytes from `buf` on this node's server and writes the object's key (text and
/// NUL) into `key`, which holds `key_cap` bytes (`DIMSTORE_KEY_MAX` always suffices). If the
/// key does not fit, the object is evicted again and `DIMSTORE_E_TOO_SMALL` returned, with
/// the size needed in the message.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `buf` is NULL (only with `len` 0) or points to `len` readable bytes; `key` is NULL or
/// points to `key_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_put(
    s: *mut dimstore_t,
    buf: *const c_void,
    len: usize,
    key: *mut c_char,
    key_cap: usize,
) -> c_int {
    boundary("dimstore_put", || {
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on (buf, len).
        let bytes = unsafe { input(buf, len, "the data buffer") }?;
        if key.is_null() {
            return Err(Failure::bad_argument("the key buffer is NULL"));
        }
        let stored = store.put(bytes)?;
        // SAFETY: forwarded caller guarantee on (key, key_cap).
        unsafe { write_key(&stored, key, key_cap) }.inspect_err(|_| {
            let _ = store.evict(&stored);
        })
    })
}

/// Fetches the object `key` names into `buf` (`cap` bytes) and writes its size to `*len`.
/// If it does not fit, returns `DIMSTORE_E_TOO_SMALL` with the size needed in `*len` (with
/// no round trip when the key carries the size). A deferred key not set yet is waited for,
/// up to the timeout (`DIMSTORE_E_NOT_SET` then).
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `key` is NULL or NUL-terminated; `buf` is NULL (only with `cap` 0) or points to `cap`
/// writable bytes; `len` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dimstore_get_into(
    s: *mut dimstore_t,
    key: *const c_char,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    boundary("dimstore_get_into", || {
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        if len.is_null() {
            return Err(Failure::bad_argument("the length pointer is NULL"));
        }
        if let Some(size) = key.size.filter(|&size| size > cap as u64) {
            // SAFETY: non-NULL, writable (caller's guarantee).
            unsafe { len.write(usize::try_from(size).unwrap_or(usize::MAX)) };
            return Err(Failure::too_small("the object", size, cap));
        }
        let bytes = store.get(&key)?;
        // SAFETY: as above.
        unsafe { len.write(bytes.len()) };
        // SAFETY: forwarded caller guarantee on (buf, cap).
        unsafe { copy_out(&bytes, buf, cap) }
    })
}

/// Fetches the object `key` names as a view: on the owner's node its memory is mapped (no
/// copy), elsewhere it is fetched into a buffer of the library. `view->data` and
/// `view->len` stay valid until `dimstore_view_release(view)`; on failure the view is
/// emptied (`handle` 0).
///
/// Thread safety: safe to call from many threads with one handle; a view may be read and
/// released by any thread of the process.
///
/// # Safety
/// `key` is NULL or NUL-terminated; `view` is NULL or valid for writing a `dimstore_view_t`.
#[no_mangle]
pub unsafe extern "C" fn dimstore_get_view(
    s: *mut dimstore_t,
    key: *const c_char,
    view: *mut dimstore_view_t,
) -> c_int {
    boundary("dimstore_get_view", || {
        let empty = dimstore_view_t {
            data: std::ptr::null(),
            len: 0,
            mapped: 0,
            handle: 0,
        };
        // SAFETY: forwarded caller guarantee on `view`.
        unsafe { output(view, empty, "the view pointer") }?;
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        let bytes = store.get(&key)?;
        let filled = dimstore_view_t {
            data: bytes.as_ptr().cast(),
            len: bytes.len(),
            mapped: c_int::from(bytes.is_mapped()),
            handle: 0,
        };
        // The bytes live in a heap buffer or a mapping, which moving `bytes` does not move.
        let handle = handles::insert_view(bytes);
        // SAFETY: checked non-NULL and writable above.
        unsafe { view.write(dimstore_view_t { handle, ..filled }) };
        Ok(())
    })
}

/// Releases a view (its lease on the server's memory, or its buffer) and empties it. NULL,
/// an empty view, or one released already, is ignored.
///
/// Thread safety: any thread; release each view once (a copy of a released view is
/// recognised and ignored).
///
/// # Safety
/// `view` is NULL or points to a `dimstore_view_t`, readable and writable.
#[no_mangle]
pub unsafe extern "C" fn dimstore_view_release(view: *mut dimstore_view_t) {
    let _ = boundary("dimstore_view_release", || {
        if view.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL, points to a view (caller's guarantee).
        let view = unsafe { &mut *view };
        handles::remove_view(view.handle);
        view.data = std::ptr::null();
        view.len = 0;
        view.mapped = 0;
        view.handle = 0;
        Ok(())
    });
}

/// The size of the object `key` names, read from the key itself (no round trip).
/// `DIMSTORE_E_NOT_SET` for a deferred key, which carries no size.
///
/// Thread safety: any thread, no handle needed.
///
/// # Safety
/// `key` is NULL or NUL-terminated; `len` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dimstore_size(key: *const c_char, len: *mut usize) -> c_int {
    boundary("dimstore_size", || {
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        let size = key.size.ok_or_else(|| {
            Failure::new(
                DIMSTORE_E_NOT_SET,
                format!("{key} is a deferred key: its size is known once it is set"),
            )
        })?;
        let size = usize::try_from(size)
            .map_err(|_| Failure::bad_argument(format!("{key}: size exceeds size_t")))?;
        // SAFETY: forwarded caller guarantee on `len`.
        unsafe { output(len, size, "the length pointer") }
    })
}

/// Asks the owner whether it holds the object `key` names: `*exists` is 1 or 0.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `key` is NULL or NUL-terminated; `exists` is NULL or valid for writing an `int`.
#[no_mangle]
pub unsafe extern "C" fn dimstore_exists(
    s: *mut dimstore_t,
    key: *const c_char,
    exists: *mut c_int,
) -> c_int {
    boundary("dimstore_exists", || {
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        if exists.is_null() {
            return Err(Failure::bad_argument("the exists pointer is NULL"));
        }
        let present = store.exists(&key)?;
        // SAFETY: forwarded caller guarantee on `exists`.
        unsafe { output(exists, c_int::from(present), "the exists pointer") }
    })
}

/// Evicts the object `key` names at its owner (readers holding views keep their bytes until
/// they release them). `DIMSTORE_E_NOT_FOUND` when the owner had no such object.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `key` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dimstore_evict(s: *mut dimstore_t, key: *const c_char) -> c_int {
    boundary("dimstore_evict", || {
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        if store.evict(&key)? {
            Ok(())
        } else {
            Err(Failure::new(
                DIMSTORE_E_NOT_FOUND,
                format!("no object {key}"),
            ))
        }
    })
}

/// Reserves a deferred key on this node's server, written into `key` (`key_cap` bytes): a
/// get on it waits, up to its timeout, until someone `dimstore_set`s it.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `key` is NULL or points to `key_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_new_key(
    s: *mut dimstore_t,
    key: *mut c_char,
    key_cap: usize,
) -> c_int {
    boundary("dimstore_new_key", || {
        let store = handles::store(token(s))?;
        if key.is_null() {
            return Err(Failure::bad_argument("the key buffer is NULL"));
        }
        let reserved = store.new_key()?;
        // SAFETY: forwarded caller guarantee on (key, key_cap).
        unsafe { write_key(&reserved, key, key_cap) }.inspect_err(|_| {
            let _ = store.evict(&reserved);
        })
    })
}

/// Sets the object of a deferred key (at its owner, whichever node that is) to `len` bytes
/// from `buf`; waiting gets complete. `DIMSTORE_E_ALREADY_SET` if it was set before,
/// `DIMSTORE_E_NOT_FOUND` if the key was never reserved.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `key` is NULL or NUL-terminated; `buf` is NULL (only with `len` 0) or points to `len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_set(
    s: *mut dimstore_t,
    key: *const c_char,
    buf: *const c_void,
    len: usize,
) -> c_int {
    boundary("dimstore_set", || {
        let store = handles::store(token(s))?;
        // SAFETY: forwarded caller guarantee on `key`.
        let key = unsafe { read_key(key, "the key") }?;
        // SAFETY: forwarded caller guarantee on (buf, len).
        let bytes = unsafe { input(buf, len, "the data buffer") }?;
        store.set(&key, bytes)?;
        Ok(())
    })
}

/// Reserves `cap` bytes for an object written in place: on the owner's node the server's
/// memory itself (no copy at all), elsewhere a buffer that `dimstore_seal` puts. On failure
/// the reservation is emptied (`handle` 0).
///
/// Thread safety: safe to call from many threads with one handle; a reservation may be
/// written, sealed or aborted by any thread of the process, once.
///
/// # Safety
/// `reservation` is NULL or valid for writing a `dimstore_reservation_t`.
#[no_mangle]
pub unsafe extern "C" fn dimstore_create(
    s: *mut dimstore_t,
    cap: usize,
    reservation: *mut dimstore_reservation_t,
) -> c_int {
    boundary("dimstore_create", || {
        let empty = dimstore_reservation_t {
            data: std::ptr::null_mut(),
            cap: 0,
            mapped: 0,
            handle: 0,
        };
        // SAFETY: forwarded caller guarantee on `reservation`.
        unsafe { output(reservation, empty, "the reservation pointer") }?;
        let store = handles::store(token(s))?;
        let mut reserved = store.create(cap as u64)?;
        let filled = dimstore_reservation_t {
            data: reserved.as_mut_ptr().cast(),
            cap: reserved.len(),
            mapped: c_int::from(reserved.is_mapped()),
            handle: 0,
        };
        let handle = handles::insert_reservation(reserved, store);
        // SAFETY: checked non-NULL and writable above.
        unsafe { reservation.write(dimstore_reservation_t { handle, ..filled }) };
        Ok(())
    })
}

/// Publishes the first `len` bytes of a reservation as an object and writes its key into
/// `key` (`key_cap` bytes; `DIMSTORE_KEY_MAX` always suffices). The reservation is used up
/// and emptied, unless `len` exceeds its capacity (`DIMSTORE_E_BAD_ARGUMENT`, nothing
/// changes). If the key does not fit, the object is evicted and `DIMSTORE_E_TOO_SMALL`
/// returned.
///
/// Thread safety: any thread, once per reservation.
///
/// # Safety
/// `reservation` is NULL or points to a `dimstore_reservation_t`, readable and writable;
/// `key` is NULL or points to `key_cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_seal(
    reservation: *mut dimstore_reservation_t,
    len: usize,
    key: *mut c_char,
    key_cap: usize,
) -> c_int {
    boundary("dimstore_seal", || {
        if reservation.is_null() {
            return Err(Failure::bad_argument("the reservation pointer is NULL"));
        }
        if key.is_null() {
            return Err(Failure::bad_argument("the key buffer is NULL"));
        }
        // SAFETY: non-NULL, points to a reservation (caller's guarantee).
        let reservation = unsafe { &mut *reservation };
        let (reserved, store) = handles::take_reservation(reservation.handle, |r| {
            if len > r.len() {
                return Err(Failure::bad_argument(format!(
                    "len {len} exceeds the reservation's {} bytes",
                    r.len()
                )));
            }
            Ok(())
        })?;
        reservation.data = std::ptr::null_mut();
        reservation.cap = 0;
        reservation.mapped = 0;
        reservation.handle = 0;
        let sealed = reserved.seal_len(len as u64)?;
        // SAFETY: forwarded caller guarantee on (key, key_cap).
        unsafe { write_key(&sealed, key, key_cap) }.inspect_err(|_| {
            let _ = store.evict(&sealed);
        })
    })
}

/// Gives a reservation back unsealed and empties it. NULL, an empty reservation, or one
/// sealed or aborted already, is ignored.
///
/// Thread safety: any thread, once per reservation.
///
/// # Safety
/// `reservation` is NULL or points to a `dimstore_reservation_t`, readable and writable.
#[no_mangle]
pub unsafe extern "C" fn dimstore_abort(reservation: *mut dimstore_reservation_t) {
    let _ = boundary("dimstore_abort", || {
        if reservation.is_null() {
            return Ok(());
        }
        // SAFETY: non-NULL, points to a reservation (caller's guarantee).
        let reservation = unsafe { &mut *reservation };
        let taken = handles::take_reservation(reservation.handle, |_| Ok(()));
        reservation.data = std::ptr::null_mut();
        reservation.cap = 0;
        reservation.mapped = 0;
        reservation.handle = 0;
        drop(taken);
        Ok(())
    });
}

/// Stores `count` objects (`bufs[i]`, `lens[i]` bytes) on this node's server in one round
/// trip; key `i` is written at `keys + i * key_stride` (a `char keys[count][key_stride]`;
/// `DIMSTORE_KEY_MAX` always suffices). All or nothing: on any failure no object is kept.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `bufs` and `lens` are NULL or point to `count` elements, each `bufs[i]` to `lens[i]`
/// readable bytes; `keys` is NULL or points to `count * key_stride` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_put_batch(
    s: *mut dimstore_t,
    count: usize,
    bufs: *const *const c_void,
    lens: *const usize,
    keys: *mut c_char,
    key_stride: usize,
) -> c_int {
    boundary("dimstore_put_batch", || {
        let store = handles::store(token(s))?;
        check_slots(bufs.is_null(), count, 1, "bufs")?;
        check_slots(lens.is_null(), count, 1, "lens")?;
        check_slots(keys.is_null(), count, key_stride, "keys")?;
        let objects = (0..count)
            .map(|i| {
                // SAFETY: i < count elements of `bufs` and `lens` (caller's guarantee).
                let (buf, len) = unsafe { (*bufs.add(i), *lens.add(i)) };
                // SAFETY: bufs[i] points to lens[i] readable bytes (caller's guarantee).
                unsafe { input(buf, len, &format!("bufs[{i}]")) }
            })
            .collect::<Result<Vec<&[u8]>, Failure>>()?;
        if count == 0 {
            return Ok(());
        }
        let stored = store.put_batch(&objects)?;
        let written = stored.iter().enumerate().try_for_each(|(i, key)| {
            // SAFETY: slot i of count * key_stride writable bytes (caller's guarantee).
            unsafe { write_key(key, keys.add(i * key_stride), key_stride) }
        });
        if written.is_err() {
            let _ = store.evict_batch(&stored);
        }
        written
    })
}

/// Fetches `count` objects, one round trip per owner. Key `i` is read at
/// `keys + i * key_stride` (each NUL-terminated within its slot), object `i` is copied into
/// `bufs[i]` (`caps[i]` bytes) and its size written to `lens[i]`, and `statuses[i]` gets the
/// item's status: 0, `DIMSTORE_E_NOT_FOUND` (also for a deferred key not set in time), or
/// `DIMSTORE_E_TOO_SMALL` (with the size needed in `lens[i]`). Returns 0 when every item is
/// 0, else the first item's non-zero status, or the status of a failure of the whole batch.
///
/// Thread safety: safe to call from many threads with one handle.
///
/// # Safety
/// `keys` is NULL or points to `count * key_stride` readable bytes; `bufs`, `caps`, `lens`
/// and `statuses` are NULL or point to `count` elements, `bufs[i]` to `caps[i]` writable
/// bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_get_batch_into(
    s: *mut dimstore_t,
    count: usize,
    keys: *const c_char,
    key_stride: usize,
    bufs: *const *mut c_void,
    caps: *const usize,
    lens: *mut usize,
    statuses: *mut c_int,
) -> c_int {
    boundary("dimstore_get_batch_into", || {
        let store = handles::store(token(s))?;
        for (null, what) in [
            (bufs.is_null(), "bufs"),
            (caps.is_null(), "caps"),
            (lens.is_null(), "lens"),
            (statuses.is_null(), "statuses"),
        ] {
            check_slots(null, count, 1, what)?;
        }
        // SAFETY: forwarded caller guarantee on (keys, count, key_stride).
        let keys: Vec<Key> = unsafe { read_keys(keys, count, key_stride) }?;
        // SAFETY: `caps` has `count` readable elements (caller's guarantee, checked non-NULL).
        let caps: Vec<usize> = (0..count).map(|i| unsafe { *caps.add(i) }).collect();
        // Items whose key says they cannot fit are answered without fetching them.
        let fetch: Vec<usize> = (0..count)
            .filter(|&i| keys[i].size.is_none_or(|size| size <= caps[i] as u64))
            .collect();
        let wanted: Vec<Key> = fetch.iter().map(|&i| keys[i].clone()).collect();
        let mut fetched = store.get_batch(&wanted)?.into_iter();
        let mut first = Ok(());
        let mut fetch = fetch.into_iter().peekable();
        for i in 0..count {
            let (size, result) = if fetch.next_if_eq(&i).is_some() {
                match fetched.next().flatten() {
                    // SAFETY: bufs[i] points to caps[i] writable bytes (caller's guarantee).
                    Some(bytes) => (bytes.len(), unsafe {
                        copy_out(&bytes, *bufs.add(i), caps[i])
                    }),
                    None => (
                        0,
                        Err(Failure::new(
                            DIMSTORE_E_NOT_FOUND,
                            format!("no object {}", keys[i]),
                        )),
                    ),
                }
            } else {
                let size = keys[i].size.unwrap_or_default();
                (
                    usize::try_from(size).unwrap_or(usize::MAX),
                    Err(Failure::too_small("the object", size, caps[i])),
                )
            };
            let item_status = match &result {
                Ok(()) => DIMSTORE_OK,
                Err(f) => f.status,
            };
            // SAFETY: `lens` and `statuses` have `count` writable elements (caller's
            // guarantee, checked non-NULL).
            unsafe {
                lens.add(i).write(size);
                statuses.add(i).write(item_status as c_int);
            }
            if first.is_ok() {
                first =
                    result.map_err(|f| Failure::new(f.status, format!("item {i}: {}", f.message)));
            }
        }
        first
    })
}

/// The calling thread's last error message (empty if no call failed on this thread). Valid
/// until this thread's next failing call; never NULL.
///
/// Thread safety: per thread: each thread sees its own calls' messages.
#[no_mangle]
pub extern "C" fn dimstore_last_error() -> *const c_char {
    status::last_error()
}

/// Copies the calling thread's last error message into `buf` (`cap` bytes), truncated to
/// fit, always NUL-terminated when `cap` > 0; returns the message's full length (without
/// the NUL). For callers that cannot keep a C pointer, such as Fortran.
///
/// Thread safety: per thread, as `dimstore_last_error`.
///
/// # Safety
/// `buf` is NULL (only with `cap` 0) or points to `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn dimstore_last_error_into(buf: *mut c_char, cap: usize) -> usize {
    // SAFETY: last_error() is a live NUL-terminated string of this thread.
    let message = unsafe { std::ffi::CStr::from_ptr(status::last_error()) }.to_bytes();
    if cap > 0 && !buf.is_null() {
        let n = message.len().min(cap - 1);
        // SAFETY: n + 1 <= cap writable bytes at `buf` (caller's guarantee); the message is
        // the library's own string.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), buf.cast::<u8>(), n);
            *buf.add(n) = 0;
        }
    }
    message.len()
}

/// The symbolic name of a status (`"DIMSTORE_E_NOT_FOUND"`); `"DIMSTORE_E_UNKNOWN"` for a
/// value that is none. Never NULL; the string is static.
///
/// Thread safety: any thread.
#[no_mangle]
pub extern "C" fn dimstore_status_name(status: c_int) -> *const c_char {
    status::status_name(status)
        .unwrap_or(c"DIMSTORE_E_UNKNOWN")
        .as_ptr()
}
