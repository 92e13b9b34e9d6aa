//! Spill files: cold objects written to node-local disk when memory is full, read back on
//! their next get.
//!
//! Each server spills into a directory of its own, `server-<pid>` under `--spill-dir`,
//! holding an exclusive `flock` on its `lock` file for its whole life. At start a server
//! removes every sibling directory whose lock it can take: the kernel released it when
//! that server died (even by SIGKILL), so its files are stale. A spill file is removed when
//! its object is evicted or restored ([`SpillFile`]'s drop), and the directory when the
//! server exits ([`SpillDir`]'s drop).
//!
//! Files are written and read with direct I/O (`O_DIRECT`) in large sequential pieces:
//! straight from and into arena memory where it is page-aligned, through a page-aligned
//! bounce buffer otherwise (and for the last partial block, after which the file is cut to
//! the object's length). A file system without direct I/O (tmpfs) gets buffered writes
//! followed by `fdatasync` and `posix_fadvise(DONTNEED)`, so spilled bytes do not linger
//! in the page cache, which is memory the spill was meant to free.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dimstore_arena::PageBuffer;
use dimstore_proto::ObjectId;
use rustix::fs::{fadvise, flock, Advice, FlockOperation, OFlags};

/// Alignment of direct I/O offsets, lengths and buffers (covers 512-byte and 4 KiB
/// logical blocks).
const BLOCK: usize = 4096;

/// Largest single write or read: large enough to stream at the disk's bandwidth.
pub const IO_CHUNK: usize = 4 << 20;

/// Bounce buffers of [`IO_CHUNK`] bytes kept between restores (more concurrent restores
/// map their own and unmap them after).
const KEPT_BOUNCES: usize = 2;

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
    /// Nanoseconds during which at least one write was in flight (writes overlap: this is
    /// the disk's busy time, so `written / write_ns` is the spill bandwidth).
    pub write_ns: AtomicU64,
    /// Bytes read back since start.
    pub read: AtomicU64,
    /// Nanoseconds during which at least one restore read was in flight.
    pub read_ns: AtomicU64,
    /// Objects restored since start.
    pub restores: AtomicU64,
    /// Spills that failed (disk full, limit, I/O).
    pub failures: AtomicU64,
    /// Bytes of objects queued for spilling, counted against the limit until written.
    pub reserved: AtomicU64,
    /// Bytes of the files among [`SpillCounters::bytes`] kept for objects that are back in
    /// memory unchanged ([`KeptFile`]).
    pub kept_bytes: AtomicU64,
    /// Files among [`SpillCounters::files`] kept that way.
    pub kept_files: AtomicU64,
    /// Objects spilled again by going back to their kept file, without a write.
    pub respills: AtomicU64,
}

/// This server's spill directory.
#[derive(Debug)]
pub struct SpillDir {
    dir: PathBuf,
    limit: u64,
    counters: Arc<SpillCounters>,
    /// Whether the file system takes direct I/O (cleared at the first refusal).
    direct: AtomicBool,
    /// Busy time of writes and of reads (the counters' `write_ns` and `read_ns`).
    writing: BusyClock,
    reading: BusyClock,
    /// Bounce buffers of restores, kept for the next ones (at most [`KEPT_BOUNCES`]).
    bounces: Mutex<Vec<PageBuffer>>,
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
            direct: AtomicBool::new(true),
            writing: BusyClock::default(),
            reading: BusyClock::default(),
            bounces: Mutex::default(),
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

    /// Counts `len` bytes of an object about to be spilled against the limit (until
    /// [`SpillDir::write_reserved`] or [`SpillDir::unreserve`]); `Limit` if they do not fit.
    pub fn reserve(&self, len: u64) -> Result<(), SpillError> {
        self.try_reserve(len).inspect_err(|_| {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// [`SpillDir::reserve`] without counting a refusal as a spill failure (the caller has
    /// another way to find room).
    pub fn try_reserve(&self, len: u64) -> Result<(), SpillError> {
        let c = &self.counters;
        let reserved = c.reserved.fetch_add(len, Ordering::Relaxed);
        let used = c.bytes.load(Ordering::Relaxed).saturating_add(reserved);
        if used.saturating_add(len) > self.limit {
            c.reserved.fetch_sub(len, Ordering::Relaxed);
            return Err(SpillError::Limit {
                limit: self.limit,
                used,
                wanted: len,
            });
        }
        Ok(())
    }

    /// Gives back bytes reserved for an object that was not spilled after all.
    pub fn unreserve(&self, len: u64) {
        self.counters.reserved.fetch_sub(len, Ordering::Relaxed);
    }

    /// Reserves room for `bytes` and writes them as object `id`'s spill file (see
    /// [`SpillDir::write_reserved`]).
    pub fn write(&self, id: ObjectId, bytes: &[u8]) -> Result<SpillFile, SpillError> {
        self.reserve(bytes.len() as u64)?;
        self.write_reserved(id, bytes, None)
    }

    /// Writes `bytes`, reserved before, as object `id`'s spill file, through `bounce` (a
    /// page-aligned buffer of at least [`IO_CHUNK`] bytes) where direct I/O needs it. The
    /// reservation ends either way; on any failure nothing is left behind.
    pub fn write_reserved(
        &self,
        id: ObjectId,
        bytes: &[u8],
        bounce: Option<&mut PageBuffer>,
    ) -> Result<SpillFile, SpillError> {
        let len = bytes.len() as u64;
        let c = &self.counters;
        c.bytes.fetch_add(len, Ordering::Relaxed);
        c.reserved.fetch_sub(len, Ordering::Relaxed);
        let file = SpillFile {
            path: self.dir.join(format!("{:032x}", id.0)),
            len,
            counters: Arc::clone(&self.counters),
        };
        c.files.fetch_add(1, Ordering::Relaxed);
        let busy = self.writing.start(&c.write_ns);
        let wrote = self.write_file(&file.path, bytes, bounce);
        drop(busy);
        if let Err(e) = wrote {
            c.failures.fetch_add(1, Ordering::Relaxed);
            // Dropping the file removes what was written and gives back its bytes.
            let path = file.path.clone();
            drop(file);
            return Err(io(&path)(e));
        }
        c.written.fetch_add(len, Ordering::Relaxed);
        Ok(file)
    }

    /// Writes a new file at `path`: direct I/O if the file system takes it, else buffered,
    /// synced and dropped from the page cache.
    fn write_file(
        &self,
        path: &Path,
        bytes: &[u8],
        bounce: Option<&mut PageBuffer>,
    ) -> std::io::Result<()> {
        let create = |direct: bool| {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            if direct {
                options.custom_flags(OFlags::DIRECT.bits() as i32);
            }
            options.open(path)
        };
        if self.direct.load(Ordering::Relaxed) {
            let mut own;
            let bounce = match bounce {
                Some(b) => b,
                None => {
                    own = bounce_buffer(bytes.len())?;
                    &mut own
                }
            };
            let refused = match create(true) {
                Ok(file) => match write_direct(&file, bytes, bounce) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        drop(file);
                        std::fs::remove_file(path)?;
                        e
                    }
                    Err(e) => return Err(e),
                },
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => e,
                Err(e) => return Err(e),
            };
            self.direct.store(false, Ordering::Relaxed);
            tracing::info!(dir = %self.dir.display(), error = %refused, "the spill directory does not take direct I/O: buffered writes, synced and dropped from the page cache");
        }
        let file = create(false)?;
        file.write_all_at(bytes, 0)?;
        file.sync_data()?;
        // Only advice: the bytes are on disk either way.
        let _ = fadvise(&file, 0, 0, Advice::DontNeed);
        Ok(())
    }

    /// Reads a spill file into `buf` (its length).
    pub fn read(&self, file: &SpillFile, buf: &mut [u8]) -> Result<(), SpillError> {
        let c = &self.counters;
        let busy = self.reading.start(&c.read_ns);
        let read = self.read_file(&file.path, buf);
        drop(busy);
        read.map_err(io(&file.path))?;
        c.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        c.restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_file(&self, path: &Path, buf: &mut [u8]) -> std::io::Result<()> {
        if self.direct.load(Ordering::Relaxed) {
            match OpenOptions::new()
                .read(true)
                .custom_flags(OFlags::DIRECT.bits() as i32)
                .open(path)
            {
                Ok(file) => return self.read_direct(&file, buf),
                Err(e) if e.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        let file = File::open(path)?;
        file.read_exact_at(buf, 0)?;
        let _ = fadvise(&file, 0, 0, Advice::DontNeed);
        Ok(())
    }
    /// Reads `buf.len()` bytes from `file` (opened with `O_DIRECT`), as [`write_direct`]
    /// wrote them: whole blocks straight into `buf` when it is aligned, the rest through a
    /// bounce buffer (from the kept ones when there is one).
    fn read_direct(&self, file: &File, buf: &mut [u8]) -> std::io::Result<()> {
        let mut offset = 0;
        if aligned(buf) {
            let whole = buf.len() / BLOCK * BLOCK;
            while offset < whole {
                let n = (whole - offset).min(IO_CHUNK);
                file.read_exact_at(&mut buf[offset..offset + n], offset as u64)?;
                offset += n;
            }
        }
        if offset == buf.len() {
            return Ok(());
        }
        let kept = self.bounces.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut bounce = match kept {
            Some(b) => b,
            None => bounce_buffer(IO_CHUNK)?,
        };
        let room = bounce.as_slice().len();
        let read = (|| {
            while offset < buf.len() {
                let n = (buf.len() - offset).min(room);
                let padded = n.div_ceil(BLOCK) * BLOCK;
                let piece = &mut bounce.as_mut_slice()[..padded];
                // The last block is short: the file ends there.
                let mut got = 0;
                while got < n {
                    match file.read_at(&mut piece[got..], (offset + got) as u64)? {
                        0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                        read => got += read,
                    }
                }
                buf[offset..offset + n].copy_from_slice(&piece[..n]);
                offset += n;
            }
            Ok(())
        })();
        let mut kept = self.bounces.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_BOUNCES {
            kept.push(bounce);
        }
        read
    }
}

/// A page-aligned buffer for the unaligned parts of an object of `len` bytes.
pub fn bounce_buffer(len: usize) -> std::io::Result<PageBuffer> {
    PageBuffer::zeroed(
        len.div_ceil(BLOCK)
            .max(1)
            .saturating_mul(BLOCK)
            .min(IO_CHUNK),
    )
}

/// Whether `bytes` start on a direct I/O boundary.
fn aligned(bytes: &[u8]) -> bool {
    bytes.as_ptr().align_offset(BLOCK) == 0
}

/// Writes `bytes` to `file` (opened with `O_DIRECT`) in pieces of at most [`IO_CHUNK`]:
/// the whole blocks straight from `bytes` when they are aligned, the rest through
/// `bounce`; a padded last block is cut off afterwards.
fn write_direct(file: &File, bytes: &[u8], bounce: &mut PageBuffer) -> std::io::Result<()> {
    let mut offset = 0;
    if aligned(bytes) {
        let whole = bytes.len() / BLOCK * BLOCK;
        while offset < whole {
            let n = (whole - offset).min(IO_CHUNK);
            file.write_all_at(&bytes[offset..offset + n], offset as u64)?;
            offset += n;
        }
    }
    let room = bounce.as_slice().len() / BLOCK * BLOCK;
    while offset < bytes.len() {
        let n = (bytes.len() - offset).min(room);
        let padded = n.div_ceil(BLOCK) * BLOCK;
        let piece = &mut bounce.as_mut_slice()[..padded];
        piece[..n].copy_from_slice(&bytes[offset..offset + n]);
        piece[n..].fill(0);
        file.write_all_at(piece, offset as u64)?;
        offset += n;
    }
    if !bytes.len().is_multiple_of(BLOCK) {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(())
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

/// Measures the time during which at least one of several overlapping operations runs.
#[derive(Debug, Default)]
struct BusyClock {
    /// Operations running, and since when one has been.
    running: Mutex<(u32, Option<Instant>)>,
}

impl BusyClock {
    /// Counts an operation from now until the guard drops; busy time goes to `total`.
    fn start<'a>(&'a self, total: &'a AtomicU64) -> Busy<'a> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.0 += 1;
        if running.0 == 1 {
            running.1 = Some(Instant::now());
        }
        Busy { clock: self, total }
    }
}

/// One running operation of a [`BusyClock`].
struct Busy<'a> {
    clock: &'a BusyClock,
    total: &'a AtomicU64,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut running = self.clock.running.lock().unwrap_or_else(|e| e.into_inner());
        running.0 -= 1;
        if running.0 == 0 {
            if let Some(since) = running.1.take() {
                self.total
                    .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }
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

/// The spill file of an object that was restored and is in memory again. Objects never
/// change once sealed, so the file still holds its bytes: spilling the object again is
/// going back to this file ([`KeptFile::respill`]), with no write. Counted in
/// [`SpillCounters::kept_bytes`] while kept; the file goes with the object, or earlier
/// when the spill limit needs its room.
#[derive(Debug)]
pub struct KeptFile(Option<Arc<SpillFile>>);

impl KeptFile {
    /// Keeps `file`, the spill file of an object just restored.
    pub fn new(file: Arc<SpillFile>) -> KeptFile {
        let c = &file.counters;
        c.kept_bytes.fetch_add(file.len, Ordering::Relaxed);
        c.kept_files.fetch_add(1, Ordering::Relaxed);
        KeptFile(Some(file))
    }

    /// The object's size.
    pub fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, |f| f.len)
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file as the object's only copy again (its memory is about to be freed).
    pub fn respill(mut self) -> Arc<SpillFile> {
        let file = self
            .0
            .take()
            .expect("a kept file holds its file until dropped");
        Self::forget(&file);
        file.counters.respills.fetch_add(1, Ordering::Relaxed);
        file
    }

    fn forget(file: &SpillFile) {
        let c = &file.counters;
        c.kept_bytes.fetch_sub(file.len, Ordering::Relaxed);
        c.kept_files.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for KeptFile {
    fn drop(&mut self) {
        if let Some(file) = self.0.take() {
            Self::forget(&file);
        }
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
    fn busy_time_counts_overlapping_operations_once() {
        let clock = BusyClock::default();
        let total = AtomicU64::new(0);
        let wall = Instant::now();
        let long = clock.start(&total);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let short = clock.start(&total);
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(short);
        assert_eq!(total.load(Ordering::Relaxed), 0, "still busy");
        drop(long);
        let wall = wall.elapsed().as_nanos() as u64;
        let busy = total.load(Ordering::Relaxed);
        // The overlap counts once: never more than the wall time (summing the two would
        // give about 1.5 times it), and at least the long operation's 40 ms.
        assert!(busy <= wall, "{busy} > {wall}");
        assert!(busy >= 40_000_000, "{busy}");
        // A later operation adds its own span.
        drop(clock.start(&total));
        assert!(total.load(Ordering::Relaxed) >= busy);
    }

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
    fn direct_and_buffered_files_round_trip_any_size_and_alignment() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 1 << 30).expect("open");
        let mut source = PageBuffer::zeroed(6 << 20).expect("buffer");
        for (i, b) in source.as_mut_slice().iter_mut().enumerate() {
            *b = (i * 131 % 251) as u8;
        }
        let mut back = PageBuffer::zeroed(6 << 20).expect("buffer");
        let cases = [
            (0, 0),
            (0, 1),
            (0, 4095),
            (0, 4096),
            (0, 4097),
            (0, (5 << 20) + 3),
            (1, 4096),
            (7, (5 << 20) + 100),
        ];
        for direct in [true, false] {
            spill.direct.store(direct, Ordering::Relaxed);
            for (n, &(start, len)) in cases.iter().enumerate() {
                let bytes = &source.as_slice()[start..start + len];
                let id = ObjectId(n as u128 + if direct { 0 } else { 100 });
                let file = spill.write(id, bytes).expect("write");
                let on_disk = std::fs::metadata(&file.path).expect("file").len();
                assert_eq!(on_disk, len as u64, "case {n}: cut to its length");
                // Into aligned memory and into memory one byte off.
                for at in [0, 1] {
                    let into = &mut back.as_mut_slice()[at..at + len];
                    into.fill(0);
                    spill.read(&file, into).expect("read");
                    assert!(into == bytes, "case {n} (direct: {direct}, at {at})");
                }
            }
        }
        assert_eq!(spill.counters().bytes.load(Ordering::Relaxed), 0);
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
