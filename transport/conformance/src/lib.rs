//! The one-sided transport contract ([`Exporter`] + [`Reader`]) as one test suite, run by
//! every backend against its real fabric library (the rustls runner pattern).
//!
//! A backend describes one configuration of itself with a [`Harness`] (start an exporter,
//! start a reader, the environment its library must see, what its fabric cannot check) and
//! instantiates the whole suite for it with one line in its own test file:
//!
//! ```ignore
//! dimstore_transport_conformance::one_sided_suite!(ucx_tcp, UcxHarness::tcp());
//! ```
//!
//! which expands to a module `ucx_tcp` holding one `#[test]` per case of [`cases`] (plus
//! the exporter process the cross-process case spawns). Each case runs bounded by a
//! watchdog; a configuration whose library needs its environment at process start runs
//! each case in a child process (this test binary run again, see [`run`]). A configuration
//! whose fabric is unavailable here skips under `dimstore_tests::skip_or_fail` (and fails
//! under `CI=true`).

#![forbid(unsafe_code)]

use std::sync::Arc;

use dimstore_transport::onesided::{Exporter, Reader, DEFAULT_CHUNK, DEFAULT_IN_FLIGHT};
use dimstore_transport::TransportError;

pub mod cases;
mod fixtures;
mod process;

pub use process::{exporter_process, run, run_unusable, Case, RemoteObject};

/// Settings a case asks of a reader it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderSettings {
    /// Largest piece one read operation moves.
    pub chunk: usize,
    /// Read operations in flight per peer at most.
    pub in_flight: usize,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        ReaderSettings {
            chunk: DEFAULT_CHUNK,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

/// What a read with a forged key ([`Harness::forged_key`]) does on a fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgedKeyRead {
    /// It fails with [`TransportError::OneSided`].
    Refused,
    /// The fabric reads by address without checking the key (e.g. libfabric's shm over
    /// CMA): only "no crash, no hang, a clean error or the bytes" holds.
    Unchecked,
}

/// What a read from an exporter process stopped with SIGSTOP (a hung node) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoppedExporterRead {
    /// The read needs the exporter to progress (emulated reads): it ends at its deadline
    /// with [`TransportError::Timeout`].
    TimesOut,
    /// The fabric reads the stopped process's memory all the same (cross-memory attach):
    /// the read succeeds.
    Succeeds,
}

/// One configuration of a one-sided backend, as the suite drives it.
pub trait Harness: Sized + Send + Sync + 'static {
    /// The transport name exporters and readers report (`"ucx"`, `"ofi"`).
    fn transport(&self) -> &'static str;

    /// Text the exporter's [`Exporter::detail`] must contain for this configuration
    /// (e.g. `UCX_TLS=tcp`, `tcp;ofi_rxm`).
    fn detail(&self) -> &'static str;

    /// Environment the fabric library must find at process start: variables to set
    /// (`Some`) or remove (`None`). When it is not empty, every case runs in a child
    /// process that has it.
    fn environment(&self) -> Vec<(&'static str, Option<&'static str>)> {
        Vec::new()
    }

    /// Starts an exporter.
    fn exporter(&self) -> Result<Arc<dyn Exporter>, TransportError>;

    /// Starts a reader of its own with `settings`.
    fn reader(&self, settings: ReaderSettings) -> Result<Arc<dyn Reader>, TransportError>;

    /// The reader the process shares (the one clients use): the same reader every call.
    fn shared_reader(&self) -> Result<Arc<dyn Reader>, TransportError>;

    /// `key` (a packed key of this fabric) with its content spoilt, keeping the shape this
    /// fabric's keys have (length, header), and what a read with it does here.
    fn forged_key(&self, key: &[u8]) -> (Vec<u8>, ForgedKeyRead);

    /// What a read from a stopped exporter process does here.
    fn stopped_exporter(&self) -> StoppedExporterRead;

    /// This configuration spoilt so that its fabric cannot open (a transport or provider
    /// that does not exist), and a word the one-sentence reason must name.
    fn unusable(&self) -> (Self, &'static str);
}

/// Instantiates every case of the one-sided conformance suite for one configuration: a
/// module `$config` with one `#[test]` per case, the cases' exporter process and the
/// unusable-configuration case. `$harness` (an expression, evaluated once per test) is a
/// [`Harness`]; names in scope where the macro is used are visible to it.
#[macro_export]
macro_rules! one_sided_suite {
    ($config:ident, $harness:expr) => {
        mod $config {
            #[allow(unused_imports)]
            use super::*;

            fn harness() -> impl $crate::Harness {
                $harness
            }

            $crate::one_sided_suite!(@cases
                small_and_scattered_reads,
                misuse_is_refused_before_reading,
                large_object_in_chunks,
                concurrent_reads_from_many_threads,
                sweep_drops_released_segments,
                bad_keys_fail_cleanly,
                forget_then_read_again,
                idle_fabric_threads_sleep,
                exporter_in_another_process_killed_mid_read,
            );

            #[test]
            fn unusable_configuration_is_unavailable() {
                $crate::run_unusable(harness(), module_path!());
            }

            /// Not a test on its own: the exporter process the cross-process case spawns.
            #[test]
            fn exporter_process() {
                $crate::exporter_process(harness());
            }
        }
    };
    (@cases $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run(harness(), module_path!(), stringify!($case), $crate::cases::$case);
            }
        )*
    };
}
