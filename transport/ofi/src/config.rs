//! Configuration: provider, local node and domain, chunk size and reads in flight.

use dimstore_transport::onesided::{DEFAULT_CHUNK, DEFAULT_IN_FLIGHT};
use dimstore_transport::TransportError;

/// How to open libfabric, for an exporter or a reader.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OfiConfig {
    /// Provider as `fi_info -p` spells it: `"tcp;ofi_rxm"` (the default), `"shm"`,
    /// `"verbs;ofi_rxm"`, `"cxi"`, ...
    pub provider: String,
    /// Local address to bind (passed to `fi_getinfo` with `FI_SOURCE`; it also selects the
    /// interface). `None`: whatever `fi_getinfo` picks first, which on a multi-homed host
    /// may be the wrong interface (e.g. `eth0` rather than the high-speed network or `lo`):
    /// set it there.
    pub node: Option<String>,
    /// Domain (interface) name, e.g. `"lo"`, `"mlx5_0"`; `None`: the provider's choice.
    pub domain: Option<String>,
    /// Largest piece one read moves (reads are split into chunks of at most this, and of
    /// at most the provider's maximum message size).
    pub chunk: usize,
    /// Reads in flight per peer at most.
    pub in_flight: usize,
}

impl Default for OfiConfig {
    fn default() -> Self {
        OfiConfig {
            provider: "tcp;ofi_rxm".to_owned(),
            node: None,
            domain: None,
            chunk: DEFAULT_CHUNK,
            in_flight: DEFAULT_IN_FLIGHT,
        }
    }
}

impl OfiConfig {
    /// The defaults overridden by `DIMSTORE_OFI_PROVIDER`, `DIMSTORE_OFI_NODE`,
    /// `DIMSTORE_OFI_DOMAIN`, `DIMSTORE_OFI_CHUNK` (bytes) and `DIMSTORE_OFI_IN_FLIGHT`
    /// (empty values are ignored). A count that is not a positive integer is an
    /// [`TransportError::Unavailable`] error naming the variable.
    pub fn from_env() -> Result<Self, TransportError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup.
    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, TransportError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let count = |name: &str, default: usize| match get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(TransportError::Unavailable {
                    transport: crate::NAME.to_owned(),
                    source: format!("{name}={v:?} is not a positive integer").into(),
                }),
            },
        };
        let defaults = Self::default();
        Ok(OfiConfig {
            provider: get("DIMSTORE_OFI_PROVIDER").unwrap_or(defaults.provider),
            node: get("DIMSTORE_OFI_NODE"),
            domain: get("DIMSTORE_OFI_DOMAIN"),
            chunk: count("DIMSTORE_OFI_CHUNK", defaults.chunk)?,
            in_flight: count("DIMSTORE_OFI_IN_FLIGHT", defaults.in_flight)?,
        })
    }

    /// A configuration for `provider` bound to `node`, other fields default.
    pub fn new(provider: impl Into<String>, node: Option<&str>) -> Self {
        OfiConfig {
            provider: provider.into(),
            node: node.map(str::to_owned),
            ..Self::default()
        }
    }
}

/// libfabric settings dimstore lowers unless the user set them: object bytes move by RMA
/// only, so ofi_rxm's eager bounce buffers (16 KiB x thousands by default, ~65 MiB resident
/// per process) and deep message queues buy nothing. Applied once per process, before the
/// first libfabric call, by [`crate::OfiExporter::start`] and [`crate::OfiReader::start`].
pub(crate) const LEAN_DEFAULTS: [(&str, &str); 3] = [
    ("FI_OFI_RXM_BUFFER_SIZE", "4096"),
    ("FI_OFI_RXM_MSG_TX_SIZE", "32"),
    ("FI_OFI_RXM_MSG_RX_SIZE", "32"),
];

/// Sets [`LEAN_DEFAULTS`] where the environment leaves them unset (once per process).
pub(crate) fn apply_lean_defaults() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (name, value) in LEAN_DEFAULTS {
            if std::env::var_os(name).is_none() {
                std::env::set_var(name, value);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_overrides_defaults_and_rejects_bad_counts() {
        let c = OfiConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(c, OfiConfig::default());
        let c = OfiConfig::from_lookup(lookup(&[
            ("DIMSTORE_OFI_PROVIDER", "verbs;ofi_rxm"),
            ("DIMSTORE_OFI_NODE", "10.0.0.1"),
            ("DIMSTORE_OFI_DOMAIN", ""),
            ("DIMSTORE_OFI_CHUNK", "1048576"),
            ("DIMSTORE_OFI_IN_FLIGHT", "4"),
        ]))
        .unwrap();
        assert_eq!(c.provider, "verbs;ofi_rxm");
        assert_eq!(c.node.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.domain, None);
        assert_eq!((c.chunk, c.in_flight), (1 << 20, 4));
        let err = OfiConfig::from_lookup(lookup(&[("DIMSTORE_OFI_IN_FLIGHT", "0")])).unwrap_err();
        let text = dimstore_transport::chain(&err).to_string();
        assert!(text.contains("DIMSTORE_OFI_IN_FLIGHT"), "{text}");
    }
}
