//! Runtime half of the `-sys` crates' dynamic loading (`ffi-dynamic-gen` is the build-time
//! half): a [`Loader`] opens a C library once per process, on first use, under its default
//! name or the one an environment variable gives, and keeps it open for good together with
//! the function table resolved from it.
//!
//! A failed load is not remembered (the next call tries again), and concurrent first calls
//! open the library once. What opening the library needs (flags, saving state its
//! constructors change) is the calling crate's closure.

// An FFI layer: opening a library runs foreign code (its constructors).
#![allow(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::sync::{Mutex, OnceLock, PoisonError};

/// A library opened at runtime, with its functions resolved. Lives for the rest of the
/// process.
#[derive(Debug)]
pub struct Library<F> {
    /// What was opened: the default name or the environment variable's value.
    name: String,
    /// The resolved functions; valid while `_handle` is open, which is forever.
    functions: F,
    /// Keeps the library mapped (never closed: the `Library` lives in a `static` loader).
    _handle: libloading::Library,
}

impl<F> Library<F> {
    /// What was opened: the default name or the environment variable's value.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The library's exported functions.
    pub fn functions(&self) -> &F {
        &self.functions
    }
}

/// The library could not be opened (not installed, not on the library path, or a
/// dependency missing).
#[derive(Debug, thiserror::Error)]
#[error("{library} could not be loaded")]
pub struct LoadError {
    /// What was tried: the default name or the environment variable's value.
    pub library: String,
    /// The dynamic loader's error.
    #[source]
    pub source: libloading::Error,
}

/// How a `-sys` crate's library is found and opened, and the library once it is.
#[derive(Debug)]
pub struct Loader<F> {
    /// The file opened when `env` is not set (a SONAME).
    default: &'static str,
    /// The environment variable naming another file (searched like `dlopen` does, or a
    /// path).
    env: &'static str,
    loaded: OnceLock<Library<F>>,
    loading: Mutex<()>,
}

impl<F> Loader<F> {
    /// A loader of `default`, or of the file the environment variable `env` names.
    pub const fn new(default: &'static str, env: &'static str) -> Self {
        Loader {
            default,
            env,
            loaded: OnceLock::new(),
            loading: Mutex::new(()),
        }
    }

    /// The library, opened by `open` (given the name to open) and resolved by `resolve` on
    /// the first call; later calls return the same library.
    ///
    /// # Safety
    /// `resolve` must read the function signatures of the library `open` opens (the table
    /// generated from its headers).
    pub unsafe fn load(
        &'static self,
        open: impl FnOnce(&OsStr) -> Result<libloading::Library, libloading::Error>,
        resolve: unsafe fn(&libloading::Library) -> F,
    ) -> Result<&'static Library<F>, LoadError> {
        if let Some(library) = self.loaded.get() {
            return Ok(library);
        }
        let _one_at_a_time = self.loading.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(library) = self.loaded.get() {
            return Ok(library);
        }
        let name = std::env::var_os(self.env).unwrap_or_else(|| OsString::from(self.default));
        let opened = open(&name);
        let name = name.to_string_lossy().into_owned();
        let handle = opened.map_err(|source| LoadError {
            library: name.clone(),
            source,
        })?;
        // SAFETY: the caller vouches that the table matches this library, and the handle is
        // never closed (the `Library` holding it lives in the `static` loader).
        let functions = unsafe { resolve(&handle) };
        Ok(self.loaded.get_or_init(|| Library {
            name,
            functions,
            _handle: handle,
        }))
    }

    /// The name of the library loaded, or else of the one a load would try first.
    pub fn name(&self) -> &str {
        self.loaded.get().map_or(self.default, Library::name)
    }
}

/// Opens `name` with `RTLD_NOW | RTLD_GLOBAL`: every symbol resolved at once, and visible to
/// the plugins the library opens itself (as when it was linked).
///
/// # Safety
/// Opening a library runs its and its dependencies' initializers: the caller vouches that
/// they have no preconditions it does not meet.
pub unsafe fn open_global(name: &OsStr) -> Result<libloading::Library, libloading::Error> {
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
    // SAFETY: forwarded under the caller's guarantee.
    let opened = unsafe { libloading::os::unix::Library::open(Some(name), flags) };
    opened.map(libloading::Library::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table that records nothing: the tests exercise the loader, not a library's symbols.
    #[derive(Debug)]
    struct NoFunctions;

    /// Resolves nothing.
    ///
    /// # Safety
    /// None needed.
    unsafe fn resolve_nothing(_: &libloading::Library) -> NoFunctions {
        NoFunctions
    }

    #[test]
    fn a_library_loads_once_and_a_failure_is_retried() {
        static LIBC: Loader<NoFunctions> =
            Loader::new("libc.so.6", "FFI_DYNAMIC_TEST_NO_SUCH_VARIABLE");
        static MISSING: Loader<NoFunctions> = Loader::new(
            "libdoes-not-exist.so.9",
            "FFI_DYNAMIC_TEST_NO_SUCH_VARIABLE",
        );
        let open = |name: &OsStr| {
            // SAFETY: libc's initializers have run already in this process.
            unsafe { open_global(name) }
        };
        // SAFETY: `NoFunctions` reads no signatures.
        let first = unsafe { LIBC.load(open, resolve_nothing) }.expect("libc loads");
        // SAFETY: as above.
        let again = unsafe { LIBC.load(open, resolve_nothing) }.expect("libc loads");
        assert!(std::ptr::eq(first, again), "opened once");
        assert_eq!(LIBC.name(), "libc.so.6");
        let mut opens = 0;
        for _ in 0..2 {
            // SAFETY: nothing is opened.
            let e = unsafe {
                MISSING.load(
                    |name| {
                        opens += 1;
                        open(name)
                    },
                    resolve_nothing,
                )
            }
            .expect_err("no such library");
            assert_eq!(e.library, "libdoes-not-exist.so.9");
            assert_eq!(e.to_string(), "libdoes-not-exist.so.9 could not be loaded");
            assert!(std::error::Error::source(&e).is_some());
        }
        assert_eq!(opens, 2, "a failure is not remembered");
    }
}
