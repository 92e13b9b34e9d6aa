//! The transport suite over UCX over TCP (UCX_TLS=tcp on loopback): one-sided gets emulated by UCX's active messages.

dimstore_tests::transport_suite!("ucx-tcp");
