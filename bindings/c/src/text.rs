//! Keys across the ABI: read from NUL-terminated text of bounded length, written into
//! caller buffers with their NUL.

use std::ffi::c_char;

use client::Key;

use crate::status::Failure;

/// Longest key text, including its NUL: `dim://` + a host name (at most 253 bytes) + `:` +
/// port + `/` + 32 hex digits + `/` + a 20-digit size + NUL.
pub const DIMSTORE_KEY_MAX: usize = 320;

/// Parses the key text at `text`. Reads at most `DIMSTORE_KEY_MAX` bytes, stopping at the
/// first NUL, so a key without one is an error rather than a read past its buffer.
///
/// # Safety
/// `text` is NULL or points to a NUL-terminated string, or to at least `DIMSTORE_KEY_MAX`
/// readable bytes.
pub(crate) unsafe fn read_key(text: *const c_char, what: &str) -> Result<Key, Failure> {
    if text.is_null() {
        return Err(Failure::bad_argument(format!("{what} is NULL")));
    }
    let mut len = 0;
    // SAFETY: the caller guarantees the bytes up to the first NUL (or DIMSTORE_KEY_MAX bytes)
    // are readable; the loop stops at whichever comes first.
    while len < DIMSTORE_KEY_MAX && unsafe { *text.add(len) } != 0 {
        len += 1;
    }
    if len == DIMSTORE_KEY_MAX {
        return Err(Failure::bad_argument(format!(
            "{what} has no NUL within DIMSTORE_KEY_MAX ({DIMSTORE_KEY_MAX}) bytes"
        )));
    }
    // SAFETY: the `len` bytes before the NUL were just read above.
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len) };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Failure::bad_argument(format!("{what} is not a key: {}", escaped(bytes))))?;
    text.parse::<Key>().map_err(|e| {
        Failure::bad_argument(format!("{what} `{}` is not a key: {e}", escaped(bytes)))
    })
}

/// Reads `count` keys stored `stride` bytes apart (a C `char keys[count][stride]`, or a
/// Fortran `character(len=stride) :: keys(count)`), each NUL-terminated within its slot.
///
/// # Safety
/// `keys` is NULL or points to `count * stride` readable bytes.
pub(crate) unsafe fn read_keys(
    keys: *const c_char,
    count: usize,
    stride: usize,
) -> Result<Vec<Key>, Failure> {
    check_slots(keys.is_null(), count, stride, "keys")?;
    (0..count)
        .map(|i| {
            // SAFETY: slot i lies inside the count * stride bytes the caller provides.
            let slot = unsafe { keys.add(i * stride) };
            // SAFETY: read_key reads at most up to the slot's NUL, found within `stride`
            // bytes below, so it never leaves the slot.
            let has_nul =
                unsafe { std::slice::from_raw_parts(slot.cast::<u8>(), stride) }.contains(&0);
            if !has_nul {
                return Err(Failure::bad_argument(format!(
                    "key {i} has no NUL within its {stride} bytes"
                )));
            }
            // SAFETY: the slot holds a NUL (checked above).
            unsafe { read_key(slot, &format!("key {i}")) }
        })
        .collect()
}

/// Checks an array of `count` slots of `stride` bytes: non-NULL unless empty, no overflow.
pub(crate) fn check_slots(
    is_null: bool,
    count: usize,
    stride: usize,
    what: &str,
) -> Result<(), Failure> {
    if count == 0 {
        return Ok(());
    }
    if is_null {
        return Err(Failure::bad_argument(format!("{what} is NULL")));
    }
    if stride == 0
        || count
            .checked_mul(stride)
            .is_none_or(|n| n > isize::MAX as usize)
    {
        return Err(Failure::bad_argument(format!(
            "{what}: {count} slots of {stride} bytes is not a valid array"
        )));
    }
    Ok(())
}

/// Writes `key`'s text and a NUL into `out`, which holds `capacity` bytes.
///
/// # Safety
/// `out` is NULL or points to `capacity` writable bytes.
pub(crate) unsafe fn write_key(
    key: &Key,
    out: *mut c_char,
    capacity: usize,
) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::bad_argument("the key buffer is NULL"));
    }
    let text = key.to_string();
    if text.len() + 1 > capacity {
        return Err(Failure::too_small(
            "the key (DIMSTORE_KEY_MAX always suffices)",
            (text.len() + 1) as u64,
            capacity,
        ));
    }
    // SAFETY: text.len() + 1 <= capacity bytes of `out` are writable (caller's guarantee);
    // `text` is a separate Rust allocation, so the ranges do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), text.len());
        *out.add(text.len()) = 0;
    }
    Ok(())
}

/// A short, printable rendering of bytes that should have been a key.
fn escaped(bytes: &[u8]) -> String {
    const SHOWN: usize = 80;
    let mut text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)])
        .escape_debug()
        .to_string();
    if bytes.len() > SHOWN {
        text.push_str("...");
    }
    text
}
