//! Spill files: cold objects written to node-local disk when memory is full, read back on
//! their next get.
//!
//! Each server spills into a directory of its own, `server-<pid>` under `--spill-dir`,
//! holding an exclusive `flock` on its `lock` file for its whole life. At start a server
//! removes every sibling directory whose lock it can take: the kernel released it when
//! that server died (even by SIGKILL), so its files are stale. A spill file is removed when
//! its object is evicted or restored ([`SpillFile`]'s drop), and the directory when the
//! server exits ([`SpillDir`]'s drop).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dimstore_proto::ObjectId;
use rustix::fs::{flock, FlockOperation};

/// Prefix of each server's spill directory.
const SERVER_DIR_PREFIX: &str = "server-";

/// Why spilling or restoring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpillError {
    /// The spill limit leaves no room for the object.
    #[error("spill limit of {limit} bytes reached ({used} in use, {wanted} more wanted)")]
    Limit {
        /// The limit.
        limit: u64,
        /// Bytes spilled now.
        used: u64,
        /// The object's size.
        wanted: u64,
    },
    /// The file system refused (disk full, I/O error, permissions).
    #[error("spill file {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpillError + '_ {
    move |source| SpillError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Spill counters (shared by the directory and its files).
#[derive(Debug, Default)]
pub struct SpillCounters {
    /// Bytes in spill files now.
    pub bytes: AtomicU64,
    /// Spill files now.
    pub files: AtomicU64,
    /// Bytes written since start.
    pub written: AtomicU64,
    /// Nanoseconds spent writing.
    pub write_ns: AtomicU64,
    /// Bytes read back since start.
    pub read: AtomicU64,
    /// Nanoseconds spent reading.
    pub read_ns: AtomicU64,
    /// Objects restored since start.
    pub restores: AtomicU64,
    /// Spills that failed (disk full, limit, I/O).
    pub failures: AtomicU64,
}

/// This server's spill directory.
#[derive(Debug)]
pub struct SpillDir {
    dir: PathBuf,
    limit: u64,
    counters: Arc<SpillCounters>,
    /// Held (with its flock) for the server's life.
    _lock: File,
}

impl SpillDir {
    /// Creates this server's directory under `root` (created if missing), after removing
    /// the directories of dead servers. `limit` bounds the bytes spilled at once.
    pub fn open(root: &Path, limit: u64) -> Result<SpillDir, SpillError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let stale = remove_stale(root)?;
        if stale > 0 {
            tracing::info!(root = %root.display(), stale, "removed spill directories of dead servers");
        }
        let dir = root.join(format!("{SERVER_DIR_PREFIX}{}", std::process::id()));
        // A directory of our pid whose lock we could take is stale too: removed above.
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| io(&lock_path)(e.into()))?;
        Ok(SpillDir {
            dir,
            limit,
            counters: Arc::default(),
            _lock: lock,
        })
    }

    /// This server's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The counters.
    pub fn counters(&self) -> &SpillCounters {
        &self.counters
    }

    /// Writes `bytes` as object `id`'s spill file; on any failure nothing is left behind.
    pub fn write(&self, id: ObjectId, bytes: &[u8]) -> Result<SpillFile, SpillError> {
        let len = bytes.len() as u64;
        let c = &self.counters;
        let used = c.bytes.fetch_add(len, Ordering::Relaxed);
        if used.saturating_add(len) > self.limit {
            c.bytes.fetch_sub(len, Ordering::Relaxed);
            c.failures.fetch_add(1, Ordering::Relaxed);
            return Err(SpillError::Limit {
                limit: self.limit,
                used,
                wanted: len,
            });
        }
        let file = SpillFile {
            path: self.dir.join(format!("{:032x}", id.0)),
            len,
            counters: Arc::clone(&self.counters),
        };
        c.files.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file.path)
            .and_then(|f| f.write_all_at(bytes, 0));
        if let Err(e) = written {
            c.failures.fetch_add(1, Ordering::Relaxed);
            // Dropping the file removes what was written and gives back its bytes.
            let path = file.path.clone();
            drop(file);
            return Err(io(&path)(e));
        }
        c.written.fetch_add(len, Ordering::Relaxed);
        c.write_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(file)
    }

    /// Reads a spill file into `buf` (its length).
    pub fn read(&self, file: &SpillFile, buf: &mut [u8]) -> Result<(), SpillError> {
        let started = Instant::now();
        File::open(&file.path)
            .and_then(|f| f.read_exact_at(buf, 0))
            .map_err(io(&file.path))?;
        let c = &self.counters;
        c.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        c.read_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        c.restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the spill directory");
        }
    }
}

/// Removes the spill directories under `root` whose lock no live server holds; returns
/// how many.
fn remove_stale(root: &Path) -> Result<u64, SpillError> {
    let mut removed = 0;
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(SERVER_DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        let free = match File::open(dir.join("lock")) {
            Ok(lock) => flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok(),
            // No lock file: died before taking it.
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if free {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// One spilled object's file, removed when dropped.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    len: u64,
    counters: Arc<SpillCounters>,
}

impl SpillFile {
    /// The object's size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot remove a spill file");
            }
        }
        self.counters.bytes.fetch_sub(self.len, Ordering::Relaxed);
        self.counters.files.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_vanish_when_dropped() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 100).expect("open");
        let file = spill.write(ObjectId(1), b"hello").expect("write");
        assert_eq!(std::fs::read_dir(spill.path()).expect("dir").count(), 2);
        let mut back = vec![0; 5];
        spill.read(&file, &mut back).expect("read");
        assert_eq!(back, b"hello");
        let e = spill
            .write(ObjectId(2), &[0; 96])
            .expect_err("over the limit");
        assert!(matches!(e, SpillError::Limit { .. }), "{e}");
        drop(file);
        assert_eq!(spill.counters().bytes.load(Ordering::Relaxed), 0);
        assert_eq!(std::fs::read_dir(spill.path()).expect("dir").count(), 1);
        let dir = spill.path().to_path_buf();
        drop(spill);
        assert!(!dir.exists(), "removed at exit");
    }

    #[test]
    fn directories_of_dead_servers_are_removed_live_ones_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let dead = root.path().join("server-999999");
        std::fs::create_dir_all(&dead).expect("mkdir");
        std::fs::write(dead.join("lock"), b"").expect("lock");
        std::fs::write(dead.join("0001"), b"stale").expect("file");
        let live = root.path().join("server-999998");
        std::fs::create_dir_all(&live).expect("mkdir");
        let held = File::create(live.join("lock")).expect("lock");
        flock(&held, FlockOperation::NonBlockingLockExclusive).expect("flock");
        let spill = SpillDir::open(root.path(), 100).expect("open");
        assert!(!dead.exists(), "stale directory removed");
        assert!(live.exists(), "a live server's directory is kept");
        drop(spill);
    }
}
