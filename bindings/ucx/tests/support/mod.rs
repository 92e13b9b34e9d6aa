//! Test helpers: the transports every test runs over and worker progress; the rest is
//! shared with the other FFI crates (`dimstore-ffi-test-support`).

#![allow(dead_code)]

use std::time::Instant;

use dimstore_ucx::{ContextConfig, Request, Result, Worker};

pub use dimstore_ffi_test_support::*;

/// The transports every test runs over.
#[derive(Clone, Copy, Debug)]
pub enum Tls {
    /// `UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`.
    Tcp,
    /// `UCX_TLS=posix,sysv,cma`.
    Shm,
}

impl Tls {
    /// The context configuration for this transport.
    pub fn config(self) -> ContextConfig {
        match self {
            Tls::Tcp => ContextConfig::default().tls("tcp").net_devices("lo"),
            Tls::Shm => ContextConfig::default().tls("posix,sysv,cma"),
        }
    }

    /// The name passed to a peer process.
    pub fn name(self) -> &'static str {
        match self {
            Tls::Tcp => "tcp",
            Tls::Shm => "shm",
        }
    }

    /// The transport named `name`.
    pub fn from_name(name: &str) -> Self {
        match name {
            "tcp" => Tls::Tcp,
            _ => Tls::Shm,
        }
    }
}

/// Waits for `request`, progressing every worker in `workers` (a one-thread stand-in for
/// two nodes: over tcp the target must progress too).
pub fn wait_all<B>(request: Request<B>, workers: &[&Worker], deadline: Instant) -> Result<B> {
    request
        .wait_with(deadline, || {
            for w in workers {
                w.progress();
            }
            Ok(())
        })
        .map_err(|e| e.into_error())
}

/// Progresses `workers` until `done()` or the deadline; returns `done()`.
pub fn progress_until(workers: &[&Worker], deadline: Instant, done: impl Fn() -> bool) -> bool {
    while !done() && Instant::now() < deadline {
        for w in workers {
            w.progress();
        }
    }
    done()
}
