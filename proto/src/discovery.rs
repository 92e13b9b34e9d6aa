//! The ready file: how a server tells whoever started it where it listens.
//!
//! A server writes it (atomically: to a temporary name, then renamed) once it accepts
//! connections, and removes it on clean shutdown. Launchers and spawning clients poll for it.

use serde::{Deserialize, Serialize};

/// Contents of a server's ready file (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFile {
    /// Control address clients connect to and keys name.
    pub address: String,
    /// Server process id.
    pub pid: u32,
    /// Node identity.
    pub node: String,
    /// Random id of this server instance.
    pub server_id: u64,
    /// Transports offered, best first.
    pub transports: Vec<String>,
    /// Server version.
    pub version: String,
    /// Address of the OpenMetrics endpoint (`--metrics-listen`), when serving one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}
