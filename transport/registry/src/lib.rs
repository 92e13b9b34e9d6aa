//! The registry of dimstore's transports: the one-sided backends this build has, one line
//! each behind its cargo feature (`ucx`, `ofi`), and the stream transports every build has
//! (`tcp`, `local`). The server, the client, the tests and the benches iterate it instead of
//! naming fabrics.
//!
//! Adding a fabric: implement [`OneSidedBackend`] in its crate, add it as an optional
//! dependency behind a feature of the same name, and list it in [`one_sided`].

#![forbid(unsafe_code)]

use dimstore_transport::onesided::{LoopbackVariant, OneSidedBackend};
use dimstore_transport::TransportError;

/// Transports every build has: TCP, and the same-node Unix socket (with mapped gets).
pub const STREAM_TRANSPORTS: [&str; 2] = ["tcp", "local"];

/// The one-sided backends of this build, in the order a server starts them under
/// `--one-sided auto` (and so offers them to clients).
pub fn one_sided() -> &'static [&'static dyn OneSidedBackend] {
    &[
        #[cfg(feature = "ucx")]
        &dimstore_transport_ucx::UcxBackend,
        #[cfg(feature = "ofi")]
        &dimstore_transport_ofi::OfiBackend,
    ]
}

/// The backend called `name`, if this build has it.
pub fn find(name: &str) -> Option<&'static dyn OneSidedBackend> {
    one_sided().iter().copied().find(|b| b.name() == name)
}

/// The backend called `name`, or [`TransportError::Unavailable`] naming what this build
/// has (the name is unknown, or its cargo feature was off).
pub fn require(name: &str) -> Result<&'static dyn OneSidedBackend, TransportError> {
    find(name).ok_or_else(|| TransportError::Unavailable {
        transport: name.to_owned(),
        source: format!("not a one-sided transport of this build ({})", this_build()).into(),
    })
}

/// The names of this build's one-sided backends.
pub fn names() -> Vec<&'static str> {
    one_sided().iter().map(|b| b.name()).collect()
}

/// What this build has, for messages: `it has ucx, ofi`, or that it has none.
pub fn this_build() -> String {
    match names().as_slice() {
        [] => "this build has none: its cargo features enable no fabric".to_owned(),
        names => format!("this build has {}", names.join(", ")),
    }
}

/// Every backend's loopback variants (see [`OneSidedBackend::loopback_variants`]), with
/// their backend.
pub fn loopback_variants(
) -> impl Iterator<Item = (&'static dyn OneSidedBackend, &'static LoopbackVariant)> {
    one_sided()
        .iter()
        .flat_map(|b| b.loopback_variants().iter().map(move |v| (*b, v)))
}

/// Restores the default SIGINT/SIGTERM dispositions that a backend's libraries replaced
/// when they were loaded (libfabric's PSM providers install handlers calling `exit(1)`);
/// returns the signals reset. Programs that install their own handlers (tokio,
/// signal-hook, which chain to the replaced one) call this first.
pub fn restore_default_signal_handlers() -> Vec<i32> {
    one_sided()
        .iter()
        .flat_map(|b| b.restore_default_signal_handlers())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found_and_variants_are_named_after_their_backend() {
        let names = names();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name), "{name} listed twice");
            assert!(
                !STREAM_TRANSPORTS.contains(name),
                "{name} is a stream transport"
            );
            assert_eq!(find(name).map(|b| b.name()), Some(*name));
        }
        for (backend, variant) in loopback_variants() {
            assert!(
                variant.name.starts_with(&format!("{}-", backend.name())),
                "{variant:?}"
            );
        }
    }

    #[test]
    fn unknown_names_say_what_this_build_has() {
        let error = require("carrier-pigeon").map(|b| b.name()).unwrap_err();
        let text = dimstore_transport::chain(&error).to_string();
        assert!(text.contains("carrier-pigeon"), "{text}");
        assert!(text.contains(&this_build()), "{text}");
        for name in names() {
            assert!(text.contains(name), "{text}");
        }
    }

    #[cfg(all(feature = "ucx", feature = "ofi"))]
    #[test]
    fn the_default_build_has_ucx_then_ofi() {
        assert_eq!(names(), ["ucx", "ofi"]);
    }

    #[cfg(not(any(feature = "ucx", feature = "ofi")))]
    #[test]
    fn a_build_without_fabric_features_has_no_one_sided_backend() {
        assert!(one_sided().is_empty());
        assert!(require("ucx").is_err());
        assert!(restore_default_signal_handlers().is_empty());
    }
}
