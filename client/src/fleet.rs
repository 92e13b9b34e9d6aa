//! The fleet file: which servers form a job's fleet, written by `dimstore-launch` and read by
//! every client of the job (`DIMSTORE_FLEET`). It holds the fleet token, so it is written
//! with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Current fleet file format version.
pub const FLEET_FORMAT: u32 = 1;

/// A fleet: one server per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// Format version ([`FLEET_FORMAT`]).
    pub format: u32,
    /// Token every connection must present.
    pub token: Option<String>,
    /// How the fleet was started (`local`, `slurm`, `pbs`, `hostfile`).
    pub launcher: String,
    /// Servers, one per node, in node order.
    pub nodes: Vec<FleetNode>,
}

/// One node's server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetNode {
    /// Node identity (the server's `--node`).
    pub name: String,
    /// Server control address.
    pub address: String,
    /// Server process id (on its node).
    pub pid: u32,
    /// Server log file, if known.
    pub log: Option<String>,
}

/// Why a fleet file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The contents are not a fleet.
    #[error("not a fleet file")]
    Format(#[from] serde_json::Error),
    /// Written by an incompatible version.
    #[error("fleet file format {0} is not supported (expected {FLEET_FORMAT})")]
    Version(u32),
    /// A node index or name that is not in the fleet.
    #[error("node `{wanted}` is not in the fleet (nodes: {known})")]
    NoSuchNode {
        /// What was asked for.
        wanted: String,
        /// The fleet's node names.
        known: String,
    },
}

impl Fleet {
    /// Reads a fleet file.
    pub fn read(path: &Path) -> Result<Fleet, FleetError> {
        let fleet: Fleet = serde_json::from_slice(&std::fs::read(path)?)?;
        if fleet.format != FLEET_FORMAT {
            return Err(FleetError::Version(fleet.format));
        }
        Ok(fleet)
    }

    /// Writes the fleet file atomically with mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), FleetError> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Finds a node by index (`"2"`) or by name.
    pub fn node(&self, wanted: &str) -> Result<&FleetNode, FleetError> {
        let by_index = wanted.parse::<usize>().ok().and_then(|i| self.nodes.get(i));
        by_index
            .or_else(|| self.nodes.iter().find(|n| n.name == wanted))
            .ok_or_else(|| FleetError::NoSuchNode {
                wanted: wanted.to_string(),
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn roundtrips_with_private_mode_and_finds_nodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fleet.json");
        let fleet = Fleet {
            format: FLEET_FORMAT,
            token: Some("secret".into()),
            launcher: "local".into(),
            nodes: vec![
                FleetNode {
                    name: "node0".into(),
                    address: "127.0.0.1:1".into(),
                    pid: 1,
                    log: None,
                },
                FleetNode {
                    name: "node1".into(),
                    address: "127.0.0.1:2".into(),
                    pid: 2,
                    log: None,
                },
            ],
        };
        fleet.write(&path).expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Fleet::read(&path).expect("read");
        assert_eq!(back, fleet);
        assert_eq!(back.node("1").expect("index").name, "node1");
        assert_eq!(back.node("node0").expect("name").address, "127.0.0.1:1");
        assert!(matches!(back.node("7"), Err(FleetError::NoSuchNode { .. })));
    }
}
