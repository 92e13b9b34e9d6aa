//! `--metrics`: every server serves OpenMetrics (`--metrics-listen`), and the launcher writes
//! a Prometheus file-based service discovery file listing them,
//! `<run dir>/prometheus-targets.json`, for a `file_sd_configs` scrape job.

use std::path::{Path, PathBuf};

use dimstore::fleet::Fleet;
use dimstore_proto::ReadyFile;
use serde_json::json;

/// Name of the targets file in the run directory.
pub const TARGETS_FILE: &str = "prometheus-targets.json";

/// `--metrics-listen` for the servers: loopback for a fleet on this machine, every address
/// on an allocation's nodes (the scraper runs elsewhere; the endpoint is unauthenticated).
pub fn listen_address(local: bool) -> &'static str {
    if local {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    }
}

/// Why the targets file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    /// A node's ready file names no metrics endpoint.
    #[error("node {0}'s server reports no metrics endpoint (its ready file has no `metrics`)")]
    NoEndpoint(String),
    /// A ready file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A ready file is not JSON of the expected shape.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// The targets file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Writes the targets of `fleet`'s servers (read from their ready files,
/// `<run dir>/<node>/ready.json`) to `<run dir>/prometheus-targets.json`, atomically; one
/// group per node, labelled `dimstore_node`. Returns the file's path.
pub fn write_targets(run_dir: &Path, fleet: &Fleet) -> Result<PathBuf, ScrapeError> {
    let mut groups = Vec::with_capacity(fleet.nodes.len());
    for node in &fleet.nodes {
        let path = run_dir.join(&node.name).join(crate::rundir::READY_FILE);
        let bytes = std::fs::read(&path).map_err(|source| ScrapeError::Read {
            path: path.clone(),
            source,
        })?;
        let ready: ReadyFile =
            serde_json::from_slice(&bytes).map_err(|source| ScrapeError::Parse { path, source })?;
        let metrics = ready
            .metrics
            .ok_or_else(|| ScrapeError::NoEndpoint(node.name.clone()))?;
        groups.push(json!({
            "targets": [reachable(&metrics, &node.address)],
            "labels": {"dimstore_node": node.name},
        }));
    }
    let path = run_dir.join(TARGETS_FILE);
    let temporary = run_dir.join(format!(".{TARGETS_FILE}.tmp"));
    let text = serde_json::to_string_pretty(&groups).unwrap_or_default();
    std::fs::write(&temporary, text + "\n")
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|source| ScrapeError::Write {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// The metrics address as others reach it: an unspecified host (`0.0.0.0`, `[::]`) is
/// replaced by the host of the server's control address.
fn reachable(metrics: &str, control: &str) -> String {
    let (host, port) = split_host(metrics);
    if host == "0.0.0.0" || host == "::" {
        let (control_host, _) = split_host(control);
        if control_host.contains(':') {
            return format!("[{control_host}]:{port}");
        }
        return format!("{control_host}:{port}");
    }
    metrics.to_string()
}

/// `HOST:PORT` or `[V6]:PORT` into host (without brackets) and port.
fn split_host(address: &str) -> (&str, &str) {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
    (host.trim_start_matches('[').trim_end_matches(']'), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_hosts_become_the_control_host() {
        assert_eq!(
            reachable("127.0.0.1:9464", "127.0.0.1:7000"),
            "127.0.0.1:9464"
        );
        assert_eq!(reachable("0.0.0.0:9464", "10.1.2.3:7000"), "10.1.2.3:9464");
        assert_eq!(reachable("[::]:9464", "[fe80::1]:7000"), "[fe80::1]:9464");
        assert_eq!(
            reachable("0.0.0.0:9464", "x3004c0s7b0n0:7000"),
            "x3004c0s7b0n0:9464"
        );
    }

    #[test]
    fn an_error_names_the_file_and_keeps_the_cause_as_its_source_only() {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let fleet = Fleet {
            format: dimstore::fleet::FLEET_FORMAT,
            token: None,
            launcher: "local".into(),
            nodes: vec![dimstore::fleet::FleetNode {
                name: "n0".into(),
                address: "127.0.0.1:7000".into(),
                pid: 1,
                log: None,
            }],
        };
        let error = write_targets(run_dir.path(), &fleet).expect_err("no ready file");
        let ready = run_dir.path().join("n0").join(crate::rundir::READY_FILE);
        assert_eq!(
            error.to_string(),
            format!("cannot read {}", ready.display())
        );
        let source = std::error::Error::source(&error).expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
