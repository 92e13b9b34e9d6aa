//! Spill logs: cold objects written to node-local disk when memory is full, read back on
//! their next get.
//!
//! Each server spills into a directory of its own, `server-<pid>` under `--spill-dir`,
//! holding an exclusive `flock` on its `lock` file for its whole life. At start a server
//! removes every sibling directory whose lock it can take: the kernel released it when
//! that server died (even by SIGKILL), so its files are stale; the directory goes when the
//! server exits ([`SpillDir`]'s drop).
//!
//! Objects are appended to log files (`log-<n>`, up to [`LOG_SIZE`] each), every object at
//! a block boundary, so the disk sees long sequential writes and no file is created per
//! object (on ext4 a new file per 1 MiB object halved the write rate). A spilled object is
//! a range of a log ([`SpillFile`]); when it goes (evicted, or restored and changed), its
//! range is punched out of the log (`fallocate(PUNCH_HOLE)`), which gives the space back
//! at once, and a log whose objects are all gone is removed.
//!
//! Logs are written and read with direct I/O (`O_DIRECT`) in large pieces: straight from
//! and into arena memory where it is page-aligned, through a page-aligned bounce buffer
//! otherwise (and for the last partial block, padded with zeros). A file system without
//! direct I/O (tmpfs) gets buffered writes followed by `fdatasync` and
//! `posix_fadvise(DONTNEED)`, so spilled bytes do not linger in the page cache, which is
//! memory the spill was meant to free.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use dimstore_arena::PageBuffer;
use rustix::fs::{fadvise, fallocate, flock, Advice, FallocateFlags, FlockOperation, OFlags};

/// Alignment of direct I/O offsets, lengths and buffers (covers 512-byte and 4 KiB
/// logical blocks).
const BLOCK: usize = 4096;

/// Largest single write or read: large enough to stream at the disk's bandwidth.
pub const IO_CHUNK: usize = 4 << 20;

/// Bounce buffers of [`IO_CHUNK`] bytes kept between restores (more concurrent restores
/// map their own and unmap them after).
const KEPT_BOUNCES: usize = 2;

/// Size of a spill log: a new log starts when the next object would not fit (an object
/// larger than this gets a log of its own).
pub const LOG_SIZE: u64 = 1 << 30;

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
    #[error("spill log {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl SpillError {
    /// The same error again, for each object of a batch that failed as one (an I/O error's
    /// kind and message are kept; its identity is not).
    fn duplicate(&self) -> SpillError {
        match self {
            SpillError::Limit {
                limit,
                used,
                wanted,
            } => SpillError::Limit {
                limit: *limit,
                used: *used,
                wanted: *wanted,
            },
            SpillError::Io { path, source } => SpillError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }
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
    /// Bytes of the objects on disk now (spilled or kept).
    pub bytes: AtomicU64,
    /// Objects on disk now (spilled or kept).
    pub objects: AtomicU64,
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
    /// Bytes among [`SpillCounters::bytes`] kept for objects that are back in memory
    /// unchanged ([`KeptFile`]).
    pub kept_bytes: AtomicU64,
    /// Objects among [`SpillCounters::objects`] kept that way.
    pub kept_objects: AtomicU64,
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
    /// Whether the file system punches holes (cleared at the first refusal); shared with
    /// the logs.
    punch: Arc<AtomicBool>,
    /// The log objects are appended to.
    appending: Mutex<Appending>,
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
            punch: Arc::new(AtomicBool::new(true)),
            appending: Mutex::default(),
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

    /// Reserves room for `bytes` and spills them (see [`SpillDir::write_reserved`]).
    pub fn write(&self, bytes: &[u8]) -> Result<SpillFile, SpillError> {
        self.reserve(bytes.len() as u64)?;
        self.write_reserved(bytes, None)
    }

    /// Appends `bytes`, reserved before, to the current log, through `bounce` (a
    /// page-aligned buffer of at least [`IO_CHUNK`] bytes) where direct I/O needs it. The
    /// reservation ends either way; on any failure nothing is left behind (the range is
    /// punched out again).
    pub fn write_reserved(
        &self,
        bytes: &[u8],
        bounce: Option<&mut PageBuffer>,
    ) -> Result<SpillFile, SpillError> {
        let len = bytes.len() as u64;
        let c = &self.counters;
        c.reserved.fetch_sub(len, Ordering::Relaxed);
        let (log, offset) = self.place(len).inspect_err(|_| {
            c.failures.fetch_add(1, Ordering::Relaxed);
        })?;
        let file = SpillFile::new(log, offset, len, Arc::clone(&self.counters));
        let busy = self.writing.start(&c.write_ns);
        let wrote = self.write_at(&file, bytes, bounce);
        drop(busy);
        if let Err(e) = wrote {
            c.failures.fetch_add(1, Ordering::Relaxed);
            let path = file.log.path.clone();
            drop(file);
            return Err(io(&path)(e));
        }
        c.written.fetch_add(len, Ordering::Relaxed);
        Ok(file)
    }

    /// Where `len` bytes go: the current log and an offset in it, or a new log.
    fn place(&self, len: u64) -> Result<(Arc<Log>, u64), SpillError> {
        let padded = padded(len);
        let mut appending = lock(&self.appending);
        if let Some(log) = appending.log.upgrade() {
            if appending.next.saturating_add(padded) <= LOG_SIZE {
                let offset = appending.next;
                appending.next += padded;
                return Ok((log, offset));
            }
        }
        appending.count += 1;
        let log = Arc::new(self.create_log(appending.count)?);
        appending.log = Arc::downgrade(&log);
        appending.next = padded;
        Ok((log, 0))
    }

    /// Creates log number `n`: with direct I/O unless the file system refused it before
    /// (or refuses it now).
    fn create_log(&self, n: u64) -> Result<Log, SpillError> {
        let path = self.dir.join(format!("log-{n:08}"));
        let create = |direct: bool| {
            let mut options = OpenOptions::new();
            options.read(true).write(true).create_new(true);
            if direct {
                options.custom_flags(OFlags::DIRECT.bits() as i32);
            }
            options.open(&path)
        };
        let mut direct = self.direct.load(Ordering::Relaxed);
        let file = match create(direct) {
            Err(e)
                if direct && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                self.refuse_direct(&e);
                direct = false;
                create(false)
            }
            other => other,
        }
        .map_err(io(&path))?;
        Ok(Log {
            path,
            file,
            direct: AtomicBool::new(direct),
            punch: Arc::clone(&self.punch),
        })
    }

    /// The file system refused direct I/O: buffered from now on.
    fn refuse_direct(&self, error: &std::io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.dir.display(), error = %error, "the spill directory does not take direct I/O: buffered writes, synced and dropped from the page cache");
        }
    }

    /// Appends several objects, reserved before, to one log in a single write: each is
    /// copied into `bounce` at a block boundary (their padded sizes together at most its
    /// length), so small objects reach the disk as one long write instead of one each.
    /// One result per object; a failed write fails them all (nothing is left behind).
    pub fn write_batch(
        &self,
        objects: &[&[u8]],
        bounce: &mut PageBuffer,
    ) -> Vec<Result<SpillFile, SpillError>> {
        let c = &self.counters;
        let lens: Vec<u64> = objects.iter().map(|o| o.len() as u64).collect();
        let bytes: u64 = lens.iter().sum();
        c.reserved.fetch_sub(bytes, Ordering::Relaxed);
        let padded: Vec<u64> = lens.iter().map(|&l| padded(l)).collect();
        let total: u64 = padded.iter().sum();
        let fail_all = |e: &SpillError| {
            c.failures
                .fetch_add(objects.len() as u64, Ordering::Relaxed);
            objects.iter().map(|_| Err(e.duplicate())).collect()
        };
        if total > bounce.as_slice().len() as u64 {
            let e = std::io::Error::other("a spill batch larger than its buffer");
            return fail_all(&io(&self.dir)(e));
        }
        let (log, base) = match self.place(total) {
            Ok(place) => place,
            Err(e) => return fail_all(&e),
        };
        let buffer = bounce.as_mut_slice();
        let mut files = Vec::with_capacity(objects.len());
        let mut at = 0u64;
        for ((object, &len), &room) in objects.iter().zip(&lens).zip(&padded) {
            let start = at as usize;
            buffer[start..start + object.len()].copy_from_slice(object);
            buffer[start + object.len()..start + room as usize].fill(0);
            files.push(SpillFile::new(
                Arc::clone(&log),
                base + at,
                len,
                Arc::clone(c),
            ));
            at += room;
        }
        let busy = self.writing.start(&c.write_ns);
        let wrote = self.write_blocks(&log, base, &buffer[..total as usize]);
        drop(busy);
        if let Err(e) = wrote {
            // Dropping the files punches their ranges out again.
            drop(files);
            return fail_all(&io(&log.path)(e));
        }
        c.written.fetch_add(bytes, Ordering::Relaxed);
        files.into_iter().map(Ok).collect()
    }

    /// Writes `bytes` at `file`'s place: direct I/O if its log takes it, else buffered,
    /// synced and dropped from the page cache.
    fn write_at(
        &self,
        file: &SpillFile,
        bytes: &[u8],
        bounce: Option<&mut PageBuffer>,
    ) -> std::io::Result<()> {
        let log = &file.log;
        if log.direct.load(Ordering::Relaxed) {
            let mut own;
            let bounce = match bounce {
                Some(b) => b,
                None => {
                    own = bounce_buffer(bytes.len())?;
                    &mut own
                }
            };
            match write_direct(&log.file, file.offset, bytes, bounce) {
                Ok(()) => return Ok(()),
                Err(e) => self.direct_refused(log, e)?,
            }
        }
        write_buffered(log, file.offset, bytes)
    }

    /// Writes whole blocks from page-aligned `bytes` at `offset` of `log`: direct I/O if it
    /// takes it, else buffered, synced and dropped from the page cache.
    fn write_blocks(&self, log: &Log, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if log.direct.load(Ordering::Relaxed) {
            match write_direct_blocks(&log.file, offset, bytes) {
                Ok(()) => return Ok(()),
                Err(e) => self.direct_refused(log, e)?,
            }
        }
        write_buffered(log, offset, bytes)
    }

    /// A direct write to `log` failed with `error`: `Ok` when that was the file system
    /// refusing direct I/O (opened with `O_DIRECT`, refused at the first write), after which
    /// this log goes on buffered (its other objects are read back through the same file);
    /// any other error is given back.
    fn direct_refused(&self, log: &Log, error: std::io::Error) -> std::io::Result<()> {
        if error.raw_os_error() != Some(rustix::io::Errno::INVAL.raw_os_error()) {
            return Err(error);
        }
        self.refuse_direct(&error);
        log.buffered()
    }

    /// Reads a spilled object into `buf` (its length).
    pub fn read(&self, file: &SpillFile, buf: &mut [u8]) -> Result<(), SpillError> {
        let c = &self.counters;
        let busy = self.reading.start(&c.read_ns);
        let read = self.read_at(file, buf);
        drop(busy);
        read.map_err(io(&file.log.path))?;
        c.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        c.restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_at(&self, file: &SpillFile, buf: &mut [u8]) -> std::io::Result<()> {
        let log = &file.log;
        if log.direct.load(Ordering::Relaxed) {
            return self.read_direct(&log.file, file.offset, buf);
        }
        log.file.read_exact_at(buf, file.offset)?;
        let _ = fadvise(&log.file, file.offset, file.len, Advice::DontNeed);
        Ok(())
    }

    /// Reads `buf.len()` bytes at `base` of `file` (opened with `O_DIRECT`), as
    /// [`write_direct`] wrote them: whole blocks straight into `buf` when it is aligned, the
    /// rest through a bounce buffer (from the kept ones when there is one).
    fn read_direct(&self, file: &File, base: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut offset = 0;
        if aligned(buf) {
            let whole = buf.len() / BLOCK * BLOCK;
            while offset < whole {
                let n = (whole - offset).min(IO_CHUNK);
                file.read_exact_at(&mut buf[offset..offset + n], base + offset as u64)?;
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
                // The last block was written padded: read it whole.
                file.read_exact_at(piece, base + offset as u64)?;
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

/// Writes `bytes` at `base` (a block boundary) of `file` (opened with `O_DIRECT`) in pieces
/// of at most [`IO_CHUNK`]: the whole blocks straight from `bytes` when they are aligned,
/// the rest through `bounce`, the last block padded with zeros.
fn write_direct(
    file: &File,
    base: u64,
    bytes: &[u8],
    bounce: &mut PageBuffer,
) -> std::io::Result<()> {
    let mut offset = 0;
    if aligned(bytes) {
        let whole = bytes.len() / BLOCK * BLOCK;
        while offset < whole {
            let n = (whole - offset).min(IO_CHUNK);
            file.write_all_at(&bytes[offset..offset + n], base + offset as u64)?;
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
        file.write_all_at(piece, base + offset as u64)?;
        offset += n;
    }
    Ok(())
}

/// Writes whole blocks from page-aligned `bytes` at `base` of `file` (opened with
/// `O_DIRECT`), in pieces of at most [`IO_CHUNK`].
fn write_direct_blocks(file: &File, base: u64, bytes: &[u8]) -> std::io::Result<()> {
    debug_assert!(aligned(bytes) && bytes.len().is_multiple_of(BLOCK));
    for (n, piece) in bytes.chunks(IO_CHUNK).enumerate() {
        file.write_all_at(piece, base + (n * IO_CHUNK) as u64)?;
    }
    Ok(())
}

/// Writes `bytes` at `offset` of `log` through the page cache, syncs them and drops them
/// from the cache (only advice: the bytes are on disk either way).
fn write_buffered(log: &Log, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    log.file.write_all_at(bytes, offset)?;
    log.file.sync_data()?;
    let _ = fadvise(&log.file, offset, bytes.len() as u64, Advice::DontNeed);
    Ok(())
}

/// `len` rounded up to whole blocks: the room an object takes in a log.
pub fn padded(len: u64) -> u64 {
    len.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Locks `mutex`, whose data stays consistent across a panic (plain counters and handles).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log objects are appended to now, and where the next one goes.
#[derive(Debug, Default)]
struct Appending {
    /// The current log, while an object in it lives (a log nobody uses is gone).
    log: Weak<Log>,
    /// Offset of the next object in it.
    next: u64,
    /// Logs created so far (names the next one).
    count: u64,
}

/// One log file: spilled objects at block boundaries. Removed when its last object goes.
#[derive(Debug)]
struct Log {
    path: PathBuf,
    file: File,
    /// Whether `file` is open with `O_DIRECT`.
    direct: AtomicBool,
    /// Whether the file system punches holes (the directory's flag).
    punch: Arc<AtomicBool>,
}

impl Log {
    /// Turns direct I/O off on this log's file (the file system refused it).
    fn buffered(&self) -> std::io::Result<()> {
        let flags = rustix::fs::fcntl_getfl(&self.file)?;
        rustix::fs::fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
        self.direct.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the space of `offset..offset+len` back to the file system (best effort: a file
    /// system that cannot punch holes keeps it until the whole log goes).
    fn punch(&self, offset: u64, len: u64) {
        if len == 0 || !self.punch.load(Ordering::Relaxed) {
            return;
        }
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        if let Err(e) = fallocate(&self.file, mode, offset, len) {
            if self.punch.swap(false, Ordering::Relaxed) {
                tracing::warn!(log = %self.path.display(), error = %e, "the spill directory cannot punch holes: space of removed objects comes back only when their whole log goes");
            }
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(log = %self.path.display(), error = %e, "cannot remove a spill log");
            }
        }
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

/// One spilled object: a range of a spill log, punched out when dropped.
#[derive(Debug)]
pub struct SpillFile {
    log: Arc<Log>,
    offset: u64,
    len: u64,
    counters: Arc<SpillCounters>,
}

impl SpillFile {
    /// The object of `len` bytes at `offset` of `log`, counted until dropped.
    fn new(log: Arc<Log>, offset: u64, len: u64, counters: Arc<SpillCounters>) -> SpillFile {
        counters.bytes.fetch_add(len, Ordering::Relaxed);
        counters.objects.fetch_add(1, Ordering::Relaxed);
        SpillFile {
            log,
            offset,
            len,
            counters,
        }
    }

    /// The log holding the object, and where in it.
    pub fn location(&self) -> (&Path, u64) {
        (&self.log.path, self.offset)
    }

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
        c.kept_objects.fetch_add(1, Ordering::Relaxed);
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
        c.kept_objects.fetch_sub(1, Ordering::Relaxed);
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
        self.log.punch(self.offset, padded(self.len));
        self.counters.bytes.fetch_sub(self.len, Ordering::Relaxed);
        self.counters.objects.fetch_sub(1, Ordering::Relaxed);
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

    /// Bytes the file system holds for `path` (its allocated blocks).
    fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("log").blocks() * 512
    }

    /// Files in `spill`'s directory besides the lock.
    fn logs(spill: &SpillDir) -> Vec<PathBuf> {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(spill.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
            .collect();
        logs.sort();
        logs
    }

    #[test]
    fn objects_round_trip_and_their_log_vanishes_with_the_last_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 100).expect("open");
        let file = spill.write(b"hello").expect("write");
        assert_eq!(logs(&spill).len(), 1);
        let mut back = vec![0; 5];
        spill.read(&file, &mut back).expect("read");
        assert_eq!(back, b"hello");
        let e = spill.write(&[0; 96]).expect_err("over the limit");
        assert!(matches!(e, SpillError::Limit { .. }), "{e}");
        drop(file);
        assert_eq!(spill.counters().bytes.load(Ordering::Relaxed), 0);
        assert_eq!(spill.counters().objects.load(Ordering::Relaxed), 0);
        assert_eq!(
            logs(&spill),
            Vec::<PathBuf>::new(),
            "the log went with its object"
        );
        // The next object starts a new log.
        let again = spill.write(b"again").expect("write");
        assert!(again.location().0.ends_with("log-00000002"), "{again:?}");
        drop(again);
        let dir = spill.path().to_path_buf();
        drop(spill);
        assert!(!dir.exists(), "removed at exit");
    }

    #[test]
    fn objects_share_a_log_at_block_boundaries_and_their_space_is_punched_out() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 1 << 30).expect("open");
        let sizes = [100_000usize, 1 << 20, 5];
        let files: Vec<SpillFile> = sizes
            .iter()
            .map(|&n| spill.write(&vec![7u8; n]).expect("write"))
            .collect();
        let (path, _) = files[0].location();
        let path = path.to_path_buf();
        let mut expected = 0;
        for (file, &n) in files.iter().zip(&sizes) {
            assert_eq!(
                file.location(),
                (path.as_path(), expected),
                "one log, in order"
            );
            expected += (n as u64).div_ceil(BLOCK as u64) * BLOCK as u64;
        }
        let before = allocated(&path);
        assert!(before >= 1 << 20, "{before}");
        let mut files = files;
        drop(files.remove(1));
        let after = allocated(&path);
        // The file system this test runs on (ext4, xfs, tmpfs) punches holes.
        assert!(spill.punch.load(Ordering::Relaxed), "no hole punched");
        assert!(after + (1 << 20) <= before, "{before} -> {after}");
        // The others read back unchanged.
        for (file, n) in files.iter().zip([sizes[0], sizes[2]]) {
            let mut back = vec![0u8; n];
            spill.read(file, &mut back).expect("read");
            assert!(back.iter().all(|&b| b == 7));
        }
        drop(files);
        assert!(!path.exists());
    }

    #[test]
    fn a_batch_of_small_objects_is_one_write_into_one_log() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), 1 << 30).expect("open");
        let mut bounce = bounce_buffer(IO_CHUNK).expect("buffer");
        let objects: Vec<Vec<u8>> = [5000usize, 0, 4096, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as u8 + 1; n])
            .collect();
        let slices: Vec<&[u8]> = objects.iter().map(Vec::as_slice).collect();
        let total: u64 = slices.iter().map(|o| o.len() as u64).sum();
        spill.reserve(total).expect("room");
        let files: Vec<SpillFile> = spill
            .write_batch(&slices, &mut bounce)
            .into_iter()
            .map(|r| r.expect("written"))
            .collect();
        assert_eq!(spill.counters().written.load(Ordering::Relaxed), total);
        assert_eq!(spill.counters().reserved.load(Ordering::Relaxed), 0);
        let (log, mut expected) = files[0].location();
        let log = log.to_path_buf();
        for (file, object) in files.iter().zip(&objects) {
            assert_eq!(
                file.location(),
                (log.as_path(), expected),
                "one log, back to back"
            );
            expected += padded(object.len() as u64);
            let mut back = vec![0u8; object.len()];
            spill.read(file, &mut back).expect("read");
            assert_eq!(&back, object);
        }
        // A batch larger than the buffer, or a failing disk: every object gets an error,
        // nothing stays counted.
        let big = vec![0u8; IO_CHUNK];
        spill.reserve(2 * IO_CHUNK as u64).expect("room");
        let results = spill.write_batch(&[&big, &big], &mut bounce);
        assert!(results.iter().all(Result::is_err), "{results:?}");
        drop(files);
        std::fs::remove_dir_all(spill.path()).expect("remove");
        spill.reserve(total).expect("room");
        let results = spill.write_batch(&slices, &mut bounce);
        assert_eq!(results.len(), slices.len());
        assert!(results.iter().all(Result::is_err), "{results:?}");
        let c = spill.counters();
        assert_eq!(c.bytes.load(Ordering::Relaxed), 0);
        assert_eq!(c.objects.load(Ordering::Relaxed), 0);
        assert_eq!(c.reserved.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_log_is_followed_by_a_new_one() {
        let root = tempfile::tempdir().expect("tempdir");
        let spill = SpillDir::open(root.path(), u64::MAX).expect("open");
        let (first, _) = spill.place(LOG_SIZE - 4096).expect("place");
        let (same, at) = spill.place(4096).expect("place");
        assert!(Arc::ptr_eq(&first, &same));
        assert_eq!(at, LOG_SIZE - 4096);
        let (next, at) = spill.place(1).expect("place");
        assert!(!Arc::ptr_eq(&first, &next), "full: a new log");
        assert_eq!(at, 0);
        // An object larger than a log gets one of its own.
        let (big, at) = spill.place(LOG_SIZE + 1).expect("place");
        assert!(!Arc::ptr_eq(&next, &big));
        assert_eq!(at, 0);
    }

    #[test]
    fn direct_and_buffered_logs_round_trip_any_size_and_alignment() {
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
            let root = tempfile::tempdir().expect("tempdir");
            let spill = SpillDir::open(root.path(), 1 << 30).expect("open");
            spill.direct.store(direct, Ordering::Relaxed);
            let files: Vec<SpillFile> = cases
                .iter()
                .map(|&(start, len)| {
                    spill
                        .write(&source.as_slice()[start..start + len])
                        .expect("write")
                })
                .collect();
            for (n, (file, &(start, len))) in files.iter().zip(&cases).enumerate() {
                assert_eq!(file.log.direct.load(Ordering::Relaxed), direct);
                let bytes = &source.as_slice()[start..start + len];
                // Into aligned memory and into memory one byte off.
                for at in [0, 1] {
                    let into = &mut back.as_mut_slice()[at..at + len];
                    into.fill(0);
                    spill.read(file, into).expect("read");
                    assert!(into == bytes, "case {n} (direct: {direct}, at {at})");
                }
            }
            drop(files);
            assert_eq!(spill.counters().bytes.load(Ordering::Relaxed), 0);
        }
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
