//! The run directory of a fleet: one subdirectory per node (`node0/server.log`,
//! `node0/ready.json`, and for fleets on an allocation `n1/exit`) and, by default, the
//! fleet file; for fleets on an allocation also the host list, the launcher step's log and
//! `step.json`.
//!
//! A marker file records whether the launcher created the directory. Cleanup removes only
//! what the launcher put there, and the directory itself only when the launcher created it,
//! so `--run-dir .` never costs anyone their files.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the marker file in a run directory.
pub const MARKER: &str = "dimstore-launch.json";

/// Environment variable naming the directory fresh run directories go under.
pub const RUNTIME_DIR_VAR: &str = "DIMSTORE_RUNTIME_DIR";

/// A node's server log, in its subdirectory.
pub const SERVER_LOG: &str = "server.log";

/// A node's ready file, written by its server once it serves, in its subdirectory.
pub const READY_FILE: &str = "ready.json";

/// How a node's server ended, for fleets on an allocation, in its subdirectory.
pub const EXIT_FILE: &str = "exit";

/// The allocation's host list, given to the launcher step, at the top of the run directory.
pub const HOSTS_FILE: &str = "hosts";

/// The launcher step's output, at the top of the run directory.
pub const LAUNCHER_LOG: &str = "launcher.log";

/// The launcher step's process record, at the top of the run directory.
pub const STEP_RECORD: &str = "step.json";

/// Files the launcher writes in each node's subdirectory.
pub const NODE_FILES: [&str; 3] = [SERVER_LOG, READY_FILE, EXIT_FILE];

/// Files the launcher writes at the top of a run directory for a fleet on an allocation.
pub const STEP_FILES: [&str; 3] = [HOSTS_FILE, LAUNCHER_LOG, STEP_RECORD];

/// Why a run directory could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up run directory {path}")]
pub struct RunDirError {
    /// The directory.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

/// What the marker file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// Whether the launcher created the directory (and so may remove it whole).
    pub created: bool,
    /// The node subdirectories the launcher made.
    pub nodes: Vec<String>,
}

/// A run directory in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
    marker: Marker,
}

impl RunDir {
    /// Creates a fresh directory `dimstore-fleet-<pid>-<random>` with mode 0700 under `root`
    /// (default: `$DIMSTORE_RUNTIME_DIR`, else the system temporary directory).
    ///
    /// # Errors
    /// When the root cannot be created or no fresh name could be made.
    pub fn create_fresh(root: Option<&Path>) -> Result<RunDir, RunDirError> {
        let root = root.map_or_else(default_root, Path::to_path_buf);
        let fail = |path: &Path, source| RunDirError {
            path: path.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| fail(&root, e))?;
        let mut last = None;
        for _ in 0..16 {
            let name = format!(
                "dimstore-fleet-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            );
            let path = root.join(name);
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return RunDir::adopt(path, true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(fail(&path, e)),
            }
        }
        Err(fail(
            &root,
            last.unwrap_or_else(|| io::Error::other("no fresh name")),
        ))
    }

    /// Uses `path` as the run directory, creating it (mode 0700) if it does not exist. A
    /// directory that already existed is never removed whole.
    ///
    /// # Errors
    /// When it cannot be created, or exists and is not a directory.
    pub fn at(path: &Path) -> Result<RunDir, RunDirError> {
        let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Parents are missing: create them, then the directory itself is ours.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|source| RunDirError {
                        path: path.to_path_buf(),
                        source,
                    })?;
                true
            }
            Err(source) => {
                return Err(RunDirError {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        RunDir::adopt(path.to_path_buf(), created)
    }

    fn adopt(path: PathBuf, created: bool) -> Result<RunDir, RunDirError> {
        let dir = RunDir {
            path,
            marker: Marker {
                created,
                nodes: Vec::new(),
            },
        };
        dir.write_marker()?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (mode 0700) and records the subdirectory of node `name`; returns its path.
    ///
    /// # Errors
    /// When it cannot be created or the marker cannot be updated.
    pub fn node_dir(&mut self, name: &str) -> Result<PathBuf, RunDirError> {
        let dir = self.path.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(source) => return Err(RunDirError { path: dir, source }),
        }
        if !self.marker.nodes.iter().any(|n| n == name) {
            self.marker.nodes.push(name.to_string());
            self.write_marker()?;
        }
        Ok(dir)
    }

    fn write_marker(&self) -> Result<(), RunDirError> {
        let path = self.path.join(MARKER);
        let json = serde_json::to_vec_pretty(&self.marker).map_err(io::Error::from);
        json.and_then(|j| std::fs::write(&path, j))
            .map_err(|source| RunDirError { path, source })
    }

    /// Finds the run directory holding a fleet's node logs (`<dir>/<node>/server.log`), if it
    /// carries the launcher's marker.
    pub fn find(log_paths: &[&Path]) -> Option<RunDir> {
        let dir = log_paths.first()?.parent()?.parent()?;
        if log_paths
            .iter()
            .any(|p| p.parent().and_then(Path::parent) != Some(dir))
        {
            return None;
        }
        let marker = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).ok()?).ok()?;
        Some(RunDir {
            path: dir.to_path_buf(),
            marker,
        })
    }

    /// Removes what the launcher put in the directory, and the directory itself when the
    /// launcher created it. Files of others are left alone.
    ///
    /// # Errors
    /// The first removal that failed for a reason other than the file being gone already.
    pub fn remove(&self) -> io::Result<()> {
        let gone_ok = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        if self.marker.created {
            return gone_ok(std::fs::remove_dir_all(&self.path));
        }
        for node in &self.marker.nodes {
            let dir = self.path.join(node);
            for file in NODE_FILES {
                gone_ok(std::fs::remove_file(dir.join(file)))?;
            }
            // Only if empty: anything else in it is not ours.
            let _ = std::fs::remove_dir(&dir);
        }
        for file in STEP_FILES {
            gone_ok(std::fs::remove_file(self.path.join(file)))?;
        }
        gone_ok(std::fs::remove_file(self.path.join(MARKER)))
    }
}

fn default_root() -> PathBuf {
    std::env::var_os(RUNTIME_DIR_VAR)
        .filter(|v| !v.is_empty())
        .map_or_else(std::env::temp_dir, PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn fresh_dirs_are_private_unique_and_removed_whole() {
        let root = tempfile::tempdir().expect("tempdir");
        let mut a = RunDir::create_fresh(Some(root.path())).expect("a");
        let b = RunDir::create_fresh(Some(root.path())).expect("b");
        assert_ne!(a.path(), b.path());
        let mode = std::fs::metadata(a.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let node = a.node_dir("node0").expect("node dir");
        std::fs::write(node.join("server.log"), "log").expect("log");
        std::fs::write(a.path().join("fleet.json"), "{}").expect("fleet");

        let log = node.join("server.log");
        let found = RunDir::find(&[&log]).expect("found by its marker");
        assert_eq!(found, a);
        found.remove().expect("remove");
        assert!(!a.path().exists());
        found.remove().expect("removing twice is fine");
    }

    #[test]
    fn an_existing_dir_keeps_what_is_not_ours() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("precious"), "keep").expect("write");
        let mut dir = RunDir::at(root.path()).expect("adopt");
        let node = dir.node_dir("node0").expect("node dir");
        std::fs::write(node.join("server.log"), "log").expect("log");
        dir.remove().expect("remove");
        assert!(root.path().join("precious").exists());
        assert!(!node.exists());
        assert!(!root.path().join(MARKER).exists());

        let nested = root.path().join("a/b");
        let dir = RunDir::at(&nested).expect("create with parents");
        dir.remove().expect("remove");
        assert!(!nested.exists());
    }

    #[test]
    fn logs_without_a_marker_name_no_run_dir() {
        let root = tempfile::tempdir().expect("tempdir");
        let log = root.path().join("node0/server.log");
        assert_eq!(RunDir::find(&[&log]), None);
        assert_eq!(RunDir::find(&[]), None);
    }
}
