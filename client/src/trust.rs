//! Which servers may receive the fleet token.
//!
//! A key names its owner's address, and keys travel anywhere (files, messages, other users'
//! workflows), so the token is not sent to whatever a key names. It goes only to the servers
//! of this client's fleet: the fleet file's servers, the configured `DIMSTORE_SERVER`, the
//! runtime directory's (or spawned) server, the addresses in `DIMSTORE_TRUSTED`, and the
//! address each of those advertises for itself; and any server on the hosts of
//! `DIMSTORE_TRUSTED_HOSTS` (a Slurm job's nodes, whose servers' ports nobody knows in advance:
//! the SPANK plugin sets it). Those host names are resolved once per process, on the first
//! owner that is not a member by address. Any other owner is greeted without a token:
//! an open server still answers, one that requires a token refuses, which the client reports
//! as [`crate::RequestError::Untrusted`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{OnceLock, RwLock};

/// The token and the servers it may be sent to.
#[derive(Debug)]
pub(crate) struct Trust {
    token: Option<String>,
    members: RwLock<HashSet<String>>,
    /// Hosts (lower case) any of whose servers is a member.
    hosts: HashSet<String>,
    /// Their addresses, resolved on first need.
    host_ips: OnceLock<HashSet<IpAddr>>,
}

impl Trust {
    /// `token` for the servers at `members` and any server on `hosts`.
    pub(crate) fn new(
        token: Option<String>,
        members: impl IntoIterator<Item = String>,
        hosts: &[String],
    ) -> Trust {
        Trust {
            token,
            members: RwLock::new(members.into_iter().map(|a| canonical(&a)).collect()),
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            host_ips: OnceLock::new(),
        }
    }

    /// The token to present to `owner`: `None` unless it is a member of the fleet.
    pub(crate) fn token_for(&self, owner: &str) -> Option<String> {
        self.token.clone().filter(|_| self.is_member(owner))
    }

    /// Whether a token exists and is withheld from `owner`.
    pub(crate) fn withheld_from(&self, owner: &str) -> bool {
        self.token.is_some() && !self.is_member(owner)
    }

    /// Whether `owner` is a server of the fleet.
    pub(crate) fn is_member(&self, owner: &str) -> bool {
        let listed = self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&canonical(owner));
        listed || self.on_trusted_host(owner)
    }

    /// Whether `owner` runs on one of the trusted hosts (by name, else by address).
    fn on_trusted_host(&self, owner: &str) -> bool {
        if self.hosts.is_empty() {
            return false;
        }
        let host = owner
            .rsplit_once(':')
            .map_or(owner, |(host, _)| host)
            .trim_matches(['[', ']']);
        if self.hosts.contains(&host.to_ascii_lowercase()) {
            return true;
        }
        let owner_ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => (host, 0)
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip()).collect())
                .unwrap_or_default(),
        };
        let trusted = self.host_ips.get_or_init(|| {
            self.hosts
                .iter()
                .filter_map(|h| (h.as_str(), 0).to_socket_addrs().ok())
                .flatten()
                .map(|a| a.ip())
                .collect()
        });
        owner_ips.iter().any(|ip| trusted.contains(ip))
    }

    /// Adds the address a member advertises for itself (what its keys name).
    pub(crate) fn admit(&self, address: &str) {
        self.members
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(canonical(address));
    }
}

/// One spelling per address: socket addresses as Rust prints them, names in lower case.
fn canonical(address: &str) -> String {
    let address = address.trim();
    address
        .parse::<SocketAddr>()
        .map_or_else(|_| address.to_ascii_lowercase(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_only_for_members() {
        let trust = Trust::new(
            Some("t".into()),
            ["127.0.0.1:7000".to_string(), "Node1:7000".to_string()],
            &[],
        );
        assert_eq!(trust.token_for("127.0.0.1:7000").as_deref(), Some("t"));
        assert_eq!(trust.token_for("node1:7000").as_deref(), Some("t"));
        assert_eq!(trust.token_for("[::ffff:127.0.0.1]:7000"), None);
        assert_eq!(trust.token_for("127.0.0.1:7001"), None);
        assert_eq!(trust.token_for("127.0.0.2:7000"), None);
        assert!(trust.withheld_from("127.0.0.2:7000"));
        trust.admit("10.0.0.1:7000");
        assert_eq!(trust.token_for("10.0.0.1:7000").as_deref(), Some("t"));
        let open = Trust::new(None, ["127.0.0.1:7000".to_string()], &[]);
        assert!(!open.withheld_from("127.0.0.2:1"));
    }

    #[test]
    fn any_server_on_a_trusted_host() {
        let trust = Trust::new(
            Some("t".into()),
            Vec::new(),
            &["localhost".to_string(), "N7".to_string()],
        );
        assert!(trust.is_member("n7:1234"));
        assert!(trust.is_member("localhost:9"));
        // By address: localhost resolves to 127.0.0.1.
        assert!(trust.is_member("127.0.0.1:40000"));
        assert!(!trust.is_member("127.0.0.2:40000"));
        assert!(!trust.is_member("n8:1234"));
    }
}
