//! dimstore-transport-ofi against the real libfabric, no mocks: the one-sided conformance
//! suite (dimstore-transport-conformance) over `tcp;ofi_rxm` bound to 127.0.0.1 and over
//! `shm`; then what only libfabric has.

use std::sync::Arc;

use dimstore_transport::onesided::{Exporter, Reader};
use dimstore_transport::TransportError;
use dimstore_transport_conformance::{
    one_sided_suite, ForgedKeyRead, Harness, ReaderSettings, StoppedExporterRead,
};
use dimstore_transport_ofi::{shared_reader, OfiConfig, OfiExporter, OfiReader, NAME};

one_sided_suite!(ofi_tcp_rxm, OfiHarness::TcpRxm);
one_sided_suite!(ofi_shm, OfiHarness::Shm);

/// The providers the suite runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OfiHarness {
    /// `tcp;ofi_rxm` bound to 127.0.0.1.
    TcpRxm,
    /// `shm`.
    Shm,
    /// A provider that does not exist.
    Missing,
}

impl OfiHarness {
    fn config(self) -> OfiConfig {
        match self {
            OfiHarness::TcpRxm => OfiConfig::new("tcp;ofi_rxm", Some("127.0.0.1")),
            OfiHarness::Shm => OfiConfig::new("shm", None),
            OfiHarness::Missing => OfiConfig::new("no-such-provider;ofi_rxm", Some("127.0.0.1")),
        }
    }
}

impl Harness for OfiHarness {
    fn transport(&self) -> &'static str {
        NAME
    }

    fn detail(&self) -> &'static str {
        match self {
            OfiHarness::TcpRxm => "tcp;ofi_rxm",
            OfiHarness::Shm => "shm",
            OfiHarness::Missing => "no-such-provider;ofi_rxm",
        }
    }

    fn exporter(&self) -> Result<Arc<dyn Exporter>, TransportError> {
        Ok(OfiExporter::start(&self.config())?)
    }

    fn reader(&self, settings: ReaderSettings) -> Result<Arc<dyn Reader>, TransportError> {
        let config = OfiConfig {
            chunk: settings.chunk,
            in_flight: settings.in_flight,
            ..self.config()
        };
        Ok(OfiReader::start(&config)?)
    }

    fn shared_reader(&self) -> Result<Arc<dyn Reader>, TransportError> {
        Ok(shared_reader(&self.config())?)
    }

    fn forged_key(&self, key: &[u8]) -> (Vec<u8>, ForgedKeyRead) {
        let good = u64::from_le_bytes(key.try_into().expect("a libfabric key is 8 bytes"));
        let forged = (good ^ 0x5a5a_0000_1234).to_le_bytes().to_vec();
        match self {
            // ofi_rxm over tcp checks keys at the target.
            OfiHarness::TcpRxm | OfiHarness::Missing => (forged, ForgedKeyRead::Refused),
            // shm (libfabric 1.17) reads by virtual address through CMA, key unchecked.
            OfiHarness::Shm => (forged, ForgedKeyRead::Unchecked),
        }
    }

    fn stopped_exporter(&self) -> StoppedExporterRead {
        match self {
            // The target's provider (progressed by its fabric thread) serves the read.
            OfiHarness::TcpRxm | OfiHarness::Missing => StoppedExporterRead::TimesOut,
            // CMA reads a stopped process's memory all the same.
            OfiHarness::Shm => StoppedExporterRead::Succeeds,
        }
    }

    fn unusable(&self) -> (Self, &'static str) {
        (OfiHarness::Missing, "no-such-provider;ofi_rxm")
    }
}

// ---------------------------------------------------------------------------------------
// libfabric only

/// A reader reports the provider it opened and the chunk size it reads in: the one it was
/// given (within the provider's largest message), zero raised to one.
#[test]
fn reader_reports_its_provider_and_chunk() {
    dimstore_transport_conformance::run(
        OfiHarness::TcpRxm,
        module_path!(),
        "reader_reports_its_provider_and_chunk",
        |case| {
            let config = OfiConfig {
                chunk: 64 << 10,
                ..case.harness.config()
            };
            let reader = OfiReader::start(&config).expect("reader");
            assert_eq!(reader.provider(), "tcp;ofi_rxm");
            assert_eq!(reader.chunk(), 64 << 10);
            let zero = OfiConfig { chunk: 0, ..config };
            assert_eq!(OfiReader::start(&zero).expect("reader").chunk(), 1);
        },
    );
}
