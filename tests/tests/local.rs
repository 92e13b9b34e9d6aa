//! The transport suite over the same-node transport (Unix socket, mapped gets).

dimstore_tests::transport_suite!("local");
