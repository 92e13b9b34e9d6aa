//! A UCX failure reaches the caller as UCX's own error: the [`TransportError`] keeps the
//! `dimstore_ucx::UcxError` in its `source()` chain, where a caller can `downcast_ref` it
//! and ask it (`is_peer_failure()`, its status), instead of reading a sentence. Real UCX, no
//! mocks.
//!
//! One test function, because UCX reads `UCX_TLS` from the environment when a context is
//! created: the cases below set it in turn, with no other thread creating contexts.

use std::error::Error;
use std::time::{Duration, Instant};

use dimstore_arena::{Arena, ArenaConfig};
use dimstore_ffi_test_support::{pattern, watchdog};
use dimstore_transport::onesided::{Exporter, Reader, RemoteRead};
use dimstore_transport::{chain, AlignedBuf, TransportError};
use dimstore_transport_ucx::{UcxConfig, UcxExporter, UcxReader};
use dimstore_ucx::UcxError;

const LIMIT: Duration = Duration::from_secs(120);
/// Deadline of one read (a failure must come well before it).
const OP: Duration = Duration::from_secs(20);

/// The first `UcxError` in `error`'s chain (itself, then its sources).
fn ucx_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a UcxError> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(ucx) = e.downcast_ref::<UcxError>() {
            return Some(ucx);
        }
        next = e.source();
    }
    None
}

#[test]
fn ucx_failures_keep_the_ucx_error_in_their_source_chain() {
    let _dog = watchdog(
        "ucx_failures_keep_the_ucx_error_in_their_source_chain",
        LIMIT,
    );

    // UCX unusable here: context creation fails, and the error says so in UCX's terms.
    std::env::set_var("UCX_TLS", "no_such_transport");
    let unusable = UcxReader::start(&UcxConfig::default()).expect_err("no such UCX transport");
    eprintln!("unusable: {}", chain(&unusable));
    assert!(
        matches!(unusable, TransportError::Unavailable { .. }),
        "{unusable:?}"
    );
    assert!(
        chain(&unusable)
            .to_string()
            .contains("UCX_TLS=no_such_transport"),
        "the printed chain names the transports UCX was given: {}",
        chain(&unusable)
    );
    let ucx = ucx_error(&unusable)
        .unwrap_or_else(|| panic!("no UcxError in the chain of {}", chain(&unusable)));
    assert!(!ucx.is_peer_failure(), "{ucx}");
    assert!(
        chain(&unusable).to_string().contains(ucx.api),
        "the printed chain names the failed call: {}",
        chain(&unusable)
    );

    // A peer that went away (its worker destroyed, its sockets closed) while a reader
    // holds an endpoint to it: over tcp UCX notices, and the read fails with UCX's peer
    // failure as its source, not at its deadline.
    std::env::set_var("UCX_TLS", "tcp");
    std::env::set_var("UCX_NET_DEVICES", "lo");
    let exporter = UcxExporter::start(&UcxConfig::default()).expect("exporter");
    let reader = UcxReader::start(&UcxConfig::default()).expect("reader");
    let arena = Arena::new(ArenaConfig {
        capacity: 16 << 20,
        segment_size: 4 << 20,
    });
    let len = 1 << 20;
    let mut object = arena.allocate(len as u64).expect("arena room");
    object.as_mut_slice().copy_from_slice(&pattern(len, 3));
    let (segment, offset) = object.location().expect("non-empty object");
    let region = exporter
        .export(segment, &arena.segment(segment).expect("segment"))
        .expect("export");
    let peer = exporter.address();
    let read = RemoteRead {
        address: region.address + offset,
        key: &region.key,
        len,
        offset: 0,
    };
    let got = reader
        .read(&peer, &[read], AlignedBuf::zeroed(len), Instant::now() + OP)
        .expect("read from the live peer");
    assert!(got[..] == pattern(len, 3)[..]);

    drop(exporter);
    let started = Instant::now();
    let gone = reader
        .read(&peer, &[read], AlignedBuf::zeroed(len), started + OP)
        .expect_err("a read from a peer that is gone");
    eprintln!("gone after {:?}: {}", started.elapsed(), chain(&gone));
    assert!(
        !matches!(gone, TransportError::Timeout),
        "the failure came only at the deadline"
    );
    let ucx =
        ucx_error(&gone).unwrap_or_else(|| panic!("no UcxError in the chain of {}", chain(&gone)));
    assert!(ucx.is_peer_failure(), "not a peer failure: {ucx}");
}
