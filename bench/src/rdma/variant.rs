//! The rows of `dimstore-bench rdma`: a transport and provider, its environment and the
//! raw tools it is measured against.

/// A transport and provider measured side by side with its raw tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// UCX over TCP on loopback (`UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`).
    Ucx,
    /// UCX over shared memory (`UCX_TLS=posix,sysv,cma`).
    #[value(name = "ucx-shm")]
    UcxShm,
    /// libfabric `tcp;ofi_rxm` on 127.0.0.1.
    #[value(name = "ofi-tcp")]
    OfiTcp,
    /// libfabric `shm`.
    #[value(name = "ofi-shm")]
    OfiShm,
    /// dimstore's TCP transport (bytes inline in replies): the reference.
    Tcp,
}

impl Variant {
    /// Every row, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::Ucx,
        Variant::UcxShm,
        Variant::OfiTcp,
        Variant::OfiShm,
        Variant::Tcp,
    ];

    /// The row's name in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Ucx => "ucx",
            Variant::UcxShm => "ucx-shm",
            Variant::OfiTcp => "ofi-tcp",
            Variant::OfiShm => "ofi-shm",
            Variant::Tcp => "tcp",
        }
    }

    /// `DIMSTORE_TRANSPORT` for the client (also the server's statistics row).
    pub fn transport(self) -> &'static str {
        match self {
            Variant::Ucx | Variant::UcxShm => "ucx",
            Variant::OfiTcp | Variant::OfiShm => "ofi",
            Variant::Tcp => "tcp",
        }
    }

    /// The libfabric provider of an ofi row.
    pub fn provider(self) -> Option<&'static str> {
        match self {
            Variant::OfiTcp => Some("tcp;ofi_rxm"),
            Variant::OfiShm => Some("shm"),
            _ => None,
        }
    }

    /// The environment of every process of the row (servers, client, raw tools).
    pub fn env(self) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match self {
            Variant::Ucx => &[("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")],
            Variant::UcxShm => &[("UCX_TLS", "posix,sysv,cma")],
            Variant::OfiTcp => &[
                ("DIMSTORE_OFI_PROVIDER", "tcp;ofi_rxm"),
                ("DIMSTORE_OFI_NODE", "127.0.0.1"),
            ],
            Variant::OfiShm => &[("DIMSTORE_OFI_PROVIDER", "shm")],
            Variant::Tcp => &[],
        };
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The raw tools' names: (one-sided read, round trip). UCX rows also have our own
    /// `ucp_get` ([`ucx_get`]).
    pub fn raw_names(self) -> (&'static str, &'static str) {
        match self {
            Variant::Ucx | Variant::UcxShm => ("ucx_perftest ucp_get", "ucx_perftest tag_lat"),
            Variant::OfiTcp | Variant::OfiShm => ("fi_read (ours)", "fi_pingpong"),
            Variant::Tcp => ("raw TCP stream", "raw TCP get"),
        }
    }
}
