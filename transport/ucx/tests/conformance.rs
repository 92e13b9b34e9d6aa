//! dimstore-transport-ucx against the real UCX, no mocks: the one-sided conformance suite
//! (dimstore-transport-conformance) over `UCX_TLS=tcp` on loopback, where reads are
//! emulated with active messages, and `UCX_TLS=posix,sysv,cma`, where they are
//! process_vm_readv; then what only UCX has.
//!
//! UCX reads its environment when a context is created, so every case runs in a child
//! process (this binary run again) with its configuration's `UCX_*` variables.

use std::sync::Arc;

use dimstore_transport::onesided::{Exporter, Reader};
use dimstore_transport::TransportError;
use dimstore_transport_conformance::{
    one_sided_suite, ForgedKeyRead, Harness, ReaderSettings, StoppedExporterRead,
};
use dimstore_transport_ucx::{shared_reader, UcxConfig, UcxExporter, UcxReader, NAME};

one_sided_suite!(ucx_tcp, UcxHarness::Tcp);
one_sided_suite!(ucx_shm, UcxHarness::Shm);

/// The UCX transports the suite runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UcxHarness {
    /// `UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`.
    Tcp,
    /// `UCX_TLS=posix,sysv,cma`.
    Shm,
    /// `UCX_TLS=no_such_transport`: no context can be created.
    Unusable,
}

impl UcxHarness {
    /// The value of `UCX_TLS`.
    fn tls(self) -> &'static str {
        match self {
            UcxHarness::Tcp => "tcp",
            UcxHarness::Shm => "posix,sysv,cma",
            UcxHarness::Unusable => "no_such_transport",
        }
    }
}

impl Harness for UcxHarness {
    fn transport(&self) -> &'static str {
        NAME
    }

    fn detail(&self) -> &'static str {
        match self {
            UcxHarness::Tcp => "UCX_TLS=tcp",
            UcxHarness::Shm => "UCX_TLS=posix,sysv,cma",
            UcxHarness::Unusable => "UCX_TLS=no_such_transport",
        }
    }

    fn environment(&self) -> Vec<(&'static str, Option<&'static str>)> {
        let devices = match self {
            UcxHarness::Tcp => Some("lo"),
            UcxHarness::Shm | UcxHarness::Unusable => None,
        };
        vec![("UCX_TLS", Some(self.tls())), ("UCX_NET_DEVICES", devices)]
    }

    fn exporter(&self) -> Result<Arc<dyn Exporter>, TransportError> {
        Ok(UcxExporter::start(&UcxConfig::default())?)
    }

    fn reader(&self, settings: ReaderSettings) -> Result<Arc<dyn Reader>, TransportError> {
        let config = UcxConfig {
            chunk: settings.chunk,
            in_flight: settings.in_flight,
            ..UcxConfig::default()
        };
        Ok(UcxReader::start(&config)?)
    }

    fn shared_reader(&self) -> Result<Arc<dyn Reader>, TransportError> {
        // The defaults, unless DIMSTORE_UCX_CHUNK / DIMSTORE_UCX_IN_FLIGHT say otherwise.
        Ok(shared_reader(&UcxConfig::from_env())?)
    }

    fn forged_key(&self, key: &[u8]) -> (Vec<u8>, ForgedKeyRead) {
        // Byte 8 is the memory type: not host memory. (A key of host memory with another
        // address UCX would trust: see `bad_keys_fail_cleanly`.)
        let mut forged = key.to_vec();
        forged[8] = 7;
        (forged, ForgedKeyRead::Refused)
    }

    fn stopped_exporter(&self) -> StoppedExporterRead {
        // Gets need the exporter's worker to progress, over shared memory too (UCX 1.13
        // emulates them with active messages there: the arena is not shared memory).
        StoppedExporterRead::TimesOut
    }

    fn unusable(&self) -> (Self, &'static str) {
        (UcxHarness::Unusable, "UCX")
    }
}

// ---------------------------------------------------------------------------------------
// UCX only

/// A reader reports the settings it runs with: those it was started with, a zero chunk
/// size or in-flight count raised to one.
#[test]
fn reader_reports_the_settings_it_runs_with() {
    dimstore_transport_conformance::run(
        UcxHarness::Tcp,
        module_path!(),
        "reader_reports_the_settings_it_runs_with",
        |_| {
            let config = UcxConfig {
                chunk: 64 << 10,
                in_flight: 3,
                ..UcxConfig::default()
            };
            assert_eq!(UcxReader::start(&config).expect("reader").config(), config);
            let zero = UcxConfig {
                chunk: 0,
                in_flight: 0,
                ..config
            };
            let running = UcxReader::start(&zero).expect("reader").config();
            assert_eq!((running.chunk, running.in_flight), (1, 1));
        },
    );
}
