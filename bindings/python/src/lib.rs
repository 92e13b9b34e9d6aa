//! `dimstore._dimstore`: the dimstore client for Python (the `dimstore` package re-exports it).
//!
//! - [`store::Store`]: a client of the fleet (`Store()` reads the `DIMSTORE_*` environment,
//!   like `dimstore::Store::from_env`); every call releases the GIL while it talks to servers.
//! - [`key::Key`]: an object's name; prints, parses and pickles as `dim://HOST:PORT/ID[/SIZE]`.
//! - [`buffer::Object`]: what a get returns, a read-only buffer-protocol object: on the same
//!   node a view of the server's memory, whose lease lives as long as the object or any view
//!   exported from it. [`buffer::Reservation`]: a writable buffer for in-place puts.
//! - [`errors`]: the exception classes, all subclasses of `dimstore.Error`.
//!
//! This crate is an FFI layer (it implements CPython's buffer protocol), so it may use
//! `unsafe`; every block says why it is sound.
#![allow(unsafe_code)]

mod buffer;
mod errors;
mod key;
mod store;
mod wait;

use pyo3::prelude::*;

/// The extension module `dimstore._dimstore`.
#[pymodule]
fn _dimstore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::Store>()?;
    m.add_class::<key::Key>()?;
    m.add_class::<buffer::Object>()?;
    m.add_class::<buffer::Reservation>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
