//! The transport suite over libfabric shm.

dimstore_tests::transport_suite!("ofi-shm");
