//! The transport suite over libfabric tcp;ofi_rxm.

dimstore_tests::transport_suite!("ofi-tcp");
