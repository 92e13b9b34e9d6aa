//! Test helpers: the providers every test runs over; the rest is shared with the other FFI
//! crates (`dimstore-ffi-test-support`).

#![allow(dead_code)]

use dimstore_ofi::InfoQuery;

pub use dimstore_ffi_test_support::*;

/// The providers every test runs over.
#[derive(Clone, Copy, Debug)]
pub enum Prov {
    /// `tcp;ofi_rxm` bound to 127.0.0.1.
    Tcp,
    /// `shm`.
    Shm,
}

impl Prov {
    /// The `fi_getinfo` query for this provider.
    pub fn query(self) -> InfoQuery {
        match self {
            Prov::Tcp => InfoQuery::provider("tcp;ofi_rxm").source_node("127.0.0.1"),
            Prov::Shm => InfoQuery::provider("shm"),
        }
    }

    /// The name passed to a peer process.
    pub fn name(self) -> &'static str {
        match self {
            Prov::Tcp => "tcp",
            Prov::Shm => "shm",
        }
    }

    /// The provider named `name`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "tcp" => Prov::Tcp,
            _ => Prov::Shm,
        }
    }
}
