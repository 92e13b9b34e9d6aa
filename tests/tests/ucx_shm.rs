//! The transport suite over UCX over shared memory (UCX_TLS=posix,sysv,cma).

dimstore_tests::transport_suite!("ucx-shm");
