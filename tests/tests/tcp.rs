//! The transport suite over TCP.

dimstore_tests::transport_suite!("tcp");
