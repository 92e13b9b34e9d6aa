//! The spill writer: threads of its own ([`WRITER_THREADS`], at a lower priority than the
//! request threads) that write cold objects to spill files, fed by a queue bounded in bytes.
//!
//! The store picks cold objects and queues them ([`SpillQueue::push`] refuses when the
//! queue is full); a queued object stays in the table, in memory, readable as before. The
//! writer threads take them oldest first, write each file in large sequential pieces
//! ([`SpillDir::write_reserved`]) and hand the result to their [`SpillTarget`], which swaps
//! the table's entry to the file (or, after a failure, leaves the object in memory). The
//! memory is freed when the writer drops its lease, right after. A put that finds memory
//! full waits for that progress ([`SpillQueue::wait_progress`]) until its deadline, on its
//! own thread, without writing anything itself.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use dimstore_proto::ObjectId;

use dimstore_arena::PageBuffer;

use crate::spill::{bounce_buffer, padded, SpillDir, SpillError, SpillFile, IO_CHUNK};
use crate::store::Object;

/// A queue of jobs bounded by their bytes, with a counter of finished jobs to wait on.
#[derive(Debug)]
pub struct SpillQueue<T> {
    state: Mutex<QueueState<T>>,
    /// Wakes the writer: a job was queued, or the queue closed.
    queued: Condvar,
    /// Wakes waiters: a job finished.
    finished: Condvar,
    limit: u64,
}

#[derive(Debug)]
struct QueueState<T> {
    jobs: VecDeque<(T, u64)>,
    /// Bytes queued or being written.
    pending: u64,
    progress: Progress,
    closed: bool,
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Jobs written (memory freed).
    pub written: u64,
    /// Jobs that failed or were skipped (nothing freed).
    pub failed: u64,
}

impl<T> SpillQueue<T> {
    /// An empty queue holding at most `limit` bytes of jobs (a single larger job is taken
    /// when the queue is empty, so no object is too large to spill).
    pub fn new(limit: u64) -> Self {
        SpillQueue {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                pending: 0,
                progress: Progress::default(),
                closed: false,
            }),
            queued: Condvar::new(),
            finished: Condvar::new(),
            limit,
        }
    }

    fn state(&self) -> MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` of `len` bytes; gives it back if the queue is full or closed.
    pub fn push(&self, job: T, len: u64) -> Result<(), T> {
        let mut state = self.state();
        let full = state.pending > 0 && state.pending.saturating_add(len) > self.limit;
        if full || state.closed {
            return Err(job);
        }
        state.pending += len;
        state.jobs.push_back((job, len));
        drop(state);
        self.queued.notify_one();
        Ok(())
    }

    /// The next job, oldest first, and its length; waits for one. `None` once the queue is
    /// closed (queued jobs are dropped then).
    pub fn pop(&self) -> Option<(T, u64)> {
        let mut state = self.state();
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            state = self.queued.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The oldest job, if there is one and `wanted` takes it (its job and length); never
    /// waits.
    pub fn pop_if(&self, wanted: impl FnOnce(&T, u64) -> bool) -> Option<(T, u64)> {
        let mut state = self.state();
        match state.jobs.front() {
            Some((job, len)) if !state.closed && wanted(job, *len) => state.jobs.pop_front(),
            _ => None,
        }
    }

    /// A job of `len` bytes taken by [`SpillQueue::pop`] is done: `written` or not.
    pub fn finish(&self, len: u64, written: bool) {
        let mut state = self.state();
        state.pending = state.pending.saturating_sub(len);
        if written {
            state.progress.written += 1;
        } else {
            state.progress.failed += 1;
        }
        drop(state);
        self.finished.notify_all();
    }

    /// Bytes queued or being written.
    pub fn pending(&self) -> u64 {
        self.state().pending
    }

    /// What the writer has done so far.
    pub fn progress(&self) -> Progress {
        self.state().progress
    }

    /// Waits until a job finishes after `seen` (a [`SpillQueue::progress`] taken before),
    /// nothing is pending any more, or `deadline`; returns the progress then.
    pub fn wait_progress(&self, seen: Progress, deadline: Instant) -> Progress {
        let mut state = self.state();
        loop {
            let now = Instant::now();
            if state.progress != seen || state.pending == 0 || state.closed || now >= deadline {
                return state.progress;
            }
            state = self
                .finished
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Stops the queue: the writer ends after its current job, waiters wake.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        state.jobs.clear();
        drop(state);
        self.queued.notify_all();
        self.finished.notify_all();
    }
}

/// An object to spill.
#[derive(Debug)]
pub struct Job {
    /// Its id.
    pub id: ObjectId,
    /// A lease on it: the memory stays until the file is written.
    pub object: Object,
}

/// Where the writer's results go (the object table).
pub trait SpillTarget: Send + Sync + 'static {
    /// Whether `object` is still stored in memory under `id` (not evicted or consumed
    /// while queued).
    fn still_wanted(&self, id: ObjectId, object: &Object) -> bool;
    /// The spill of `object` ended: its file, or why not (the object stays in memory).
    fn written(&self, id: ObjectId, object: &Object, result: Result<SpillFile, SpillError>);
}

/// The writer thread and its queue; dropping it closes the queue and joins the thread.
#[derive(Debug)]
pub struct SpillWriter {
    queue: Arc<SpillQueue<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl SpillWriter {
    /// Starts the writer of `dir`, with a queue of at most `queue_limit` bytes, reporting to
    /// `target`.
    pub fn start(
        dir: Arc<SpillDir>,
        queue_limit: u64,
        target: Arc<dyn SpillTarget>,
    ) -> std::io::Result<SpillWriter> {
        let queue = Arc::new(SpillQueue::new(queue_limit));
        let mut writer = SpillWriter {
            queue,
            threads: Vec::with_capacity(WRITER_THREADS),
        };
        for n in 0..WRITER_THREADS {
            let thread = std::thread::Builder::new()
                .name(format!("dimstore-spill-{n}"))
                .spawn({
                    let queue = Arc::clone(&writer.queue);
                    let dir = Arc::clone(&dir);
                    let target = Arc::clone(&target);
                    move || {
                        lower_this_threads_priority();
                        write_jobs(&queue, &dir, &*target)
                    }
                })?;
            writer.threads.push(thread);
        }
        Ok(writer)
    }

    /// The queue.
    pub fn queue(&self) -> &SpillQueue<Job> {
        &self.queue
    }
}

/// Writer threads: two, so that one file's write is in flight while the other thread waits
/// for the CPU (at its lower priority) or prepares its next file, and the disk does not idle.
const WRITER_THREADS: usize = 2;

/// How much lower than the request threads the writer runs (a nice value): on a server
/// confined to one CPU, a get must preempt the writer rather than queue behind its copies.
const WRITER_NICENESS: i32 = 10;

/// Lowers the calling thread's scheduling priority to [`WRITER_NICENESS`] (on Linux a
/// thread id names just that thread); a refusal is logged and the writer runs as it is.
fn lower_this_threads_priority() {
    let me = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(me), WRITER_NICENESS) {
        tracing::debug!(error = %e, "the spill writer keeps the server's priority");
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        self.queue.close();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::warn!("a spill writer thread panicked");
            }
        }
    }
}

/// Objects below this size are written in batches: copied one after the other into the
/// writer's buffer and written together (a disk write per small object would be bound by
/// the write's latency, not the disk's bandwidth). Larger ones go straight from memory.
const BATCH_BELOW: u64 = 1 << 20;

/// One writer thread's loop: oldest first, until the queue closes; a small object takes the
/// small ones queued behind it along, as far as the buffer holds them.
fn write_jobs(queue: &SpillQueue<Job>, dir: &SpillDir, target: &dyn SpillTarget) {
    // One bounce buffer for the thread's life (for batches, unaligned objects and last
    // blocks).
    let mut bounce = match bounce_buffer(IO_CHUNK) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "no bounce buffer for the spill writer: one per object");
            None
        }
    };
    while let Some((job, len)) = queue.pop() {
        match bounce.as_mut() {
            Some(buffer) if len < BATCH_BELOW => {
                let room = buffer.as_slice().len() as u64;
                let mut taken = padded(len);
                let mut batch = vec![(job, len)];
                while let Some(next) =
                    queue.pop_if(|_, next| next < BATCH_BELOW && taken + padded(next) <= room)
                {
                    taken += padded(next.1);
                    batch.push(next);
                }
                write_batch(queue, dir, target, batch, buffer);
            }
            bounce => write_one(queue, dir, target, job, len, bounce),
        }
    }
}

/// Writes one object, if still wanted, and reports it.
fn write_one(
    queue: &SpillQueue<Job>,
    dir: &SpillDir,
    target: &dyn SpillTarget,
    job: Job,
    len: u64,
    bounce: Option<&mut PageBuffer>,
) {
    let written = if target.still_wanted(job.id, &job.object) {
        let result = dir.write_reserved(job.object.as_slice(), bounce);
        let ok = result.is_ok();
        target.written(job.id, &job.object, result);
        ok
    } else {
        dir.unreserve(len);
        false
    };
    // The lease goes before the waiters wake: the memory is free when they look.
    drop(job);
    queue.finish(len, written);
}

/// Writes the objects of `batch` still wanted in one write, and reports each.
fn write_batch(
    queue: &SpillQueue<Job>,
    dir: &SpillDir,
    target: &dyn SpillTarget,
    batch: Vec<(Job, u64)>,
    buffer: &mut PageBuffer,
) {
    let (wanted, unwanted): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(job, _)| target.still_wanted(job.id, &job.object));
    for (job, len) in unwanted {
        dir.unreserve(len);
        drop(job);
        queue.finish(len, false);
    }
    if wanted.is_empty() {
        return;
    }
    let slices: Vec<&[u8]> = wanted
        .iter()
        .map(|(job, _)| job.object.as_slice())
        .collect();
    let results = dir.write_batch(&slices, buffer);
    drop(slices);
    for ((job, len), result) in wanted.into_iter().zip(results) {
        let ok = result.is_ok();
        target.written(job.id, &job.object, result);
        drop(job);
        queue.finish(len, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_queue_is_bounded_by_bytes_and_keeps_order() {
        let queue = SpillQueue::new(10);
        assert_eq!(queue.push('a', 4), Ok(()));
        assert_eq!(queue.push('b', 6), Ok(()));
        assert_eq!(queue.push('c', 1), Err('c'), "full");
        assert_eq!(queue.pending(), 10);
        assert_eq!(queue.pop(), Some(('a', 4)));
        // Taken but not finished: still pending, still full.
        assert_eq!(queue.push('c', 1), Err('c'));
        queue.finish(4, true);
        assert_eq!(queue.push('c', 1), Ok(()));
        assert_eq!(queue.pop(), Some(('b', 6)));
        assert_eq!(queue.pop(), Some(('c', 1)));
        queue.finish(6, false);
        queue.finish(1, true);
        assert_eq!(queue.pending(), 0);
        assert_eq!(
            queue.progress(),
            Progress {
                written: 2,
                failed: 1
            }
        );
        // An empty queue takes one job larger than its bound.
        assert_eq!(queue.push('d', 100), Ok(()));
        assert_eq!(queue.push('e', 1), Err('e'));
    }

    #[test]
    fn pop_if_takes_the_oldest_job_only_when_wanted_and_never_waits() {
        let queue = SpillQueue::new(100);
        assert_eq!(queue.pop_if(|_, _| true), None, "empty: no wait");
        queue.push('a', 10).expect("room");
        queue.push('b', 20).expect("room");
        assert_eq!(
            queue.pop_if(|_, len| len > 10),
            None,
            "the oldest is not wanted"
        );
        assert_eq!(queue.pop_if(|&job, _| job == 'a'), Some(('a', 10)));
        assert_eq!(queue.pop_if(|_, _| true), Some(('b', 20)));
        queue.push('c', 1).expect("room");
        queue.close();
        assert_eq!(queue.pop_if(|_, _| true), None, "closed");
    }

    #[test]
    fn waiters_wake_on_progress_and_never_past_their_deadline() {
        let queue = Arc::new(SpillQueue::new(100));
        // Nothing pending: no wait at all.
        let seen = queue.progress();
        assert_eq!(
            queue.wait_progress(seen, Instant::now() + Duration::from_secs(3600)),
            seen
        );
        queue.push(1u8, 10).expect("room");
        // Pending but nobody writes: the deadline ends the wait.
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(queue.wait_progress(seen, deadline), seen);
        assert!(Instant::now() >= deadline);
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || {
                let (job, len) = queue.pop().expect("job");
                assert_eq!(job, 1);
                queue.finish(len, false);
            })
        };
        let now = queue.wait_progress(seen, Instant::now() + Duration::from_secs(3600));
        assert_eq!(
            now.failed, 1,
            "a failure is progress too: the waiter decides"
        );
        writer.join().expect("writer");
    }

    /// Records what the writer reports; objects with odd ids are no longer wanted.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u128, Result<u64, String>)>>);

    impl SpillTarget for Recorder {
        fn still_wanted(&self, id: ObjectId, _: &Object) -> bool {
            id.0.is_multiple_of(2)
        }

        fn written(&self, id: ObjectId, _: &Object, result: Result<SpillFile, SpillError>) {
            let result = result.map(|f| f.len()).map_err(|e| e.to_string());
            self.0.lock().expect("lock").push((id.0, result));
        }
    }

    #[test]
    fn the_writers_write_skip_unwanted_and_report_errors() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = Arc::new(SpillDir::open(root.path(), 1 << 30).expect("spill dir"));
        let arena = dimstore_arena::Arena::new(dimstore_arena::ArenaConfig {
            capacity: 1 << 20,
            segment_size: 1 << 20,
        });
        let recorder = Arc::new(Recorder::default());
        let writer =
            SpillWriter::start(Arc::clone(&dir), 1 << 20, recorder.clone()).expect("writer");
        let object = |len: u64, fill: u8| {
            let mut a = arena.allocate(len).expect("room");
            a.as_mut_slice().fill(fill);
            a.seal()
        };
        let queue = writer.queue();
        let wait_for = |jobs: u64| {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut now = queue.progress();
            while now.written + now.failed < jobs {
                assert!(Instant::now() < deadline, "the writer is stuck: {now:?}");
                now = queue.wait_progress(now, deadline);
            }
            now
        };
        for (id, len) in [(0u128, 5000u64), (1, 10), (2, 4096)] {
            dir.reserve(len).expect("room on disk");
            let job = Job {
                id: ObjectId(id),
                object: object(len, id as u8),
            };
            queue.push(job, len).expect("queue room");
        }
        let now = wait_for(3);
        assert_eq!(
            now,
            Progress {
                written: 2,
                failed: 1
            }
        );
        let mut reports = recorder.0.lock().expect("lock").clone();
        // The writer threads finish in any order.
        reports.sort_by_key(|r| r.0);
        assert_eq!(reports, [(0, Ok(5000)), (2, Ok(4096))], "object 1 skipped");
        assert_eq!(
            dir.counters()
                .reserved
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // The directory is gone: an I/O error, reported, nothing freed.
        std::fs::remove_dir_all(dir.path()).expect("remove");
        dir.reserve(64).expect("room on disk");
        queue
            .push(
                Job {
                    id: ObjectId(4),
                    object: object(64, 4),
                },
                64,
            )
            .expect("queue room");
        assert_eq!(wait_for(4).failed, 2);
        let reports = recorder.0.lock().expect("lock");
        assert!(
            matches!(&reports[2], (4, Err(e)) if e.contains("spill log")),
            "{reports:?}"
        );
        drop(reports);
        // Dropping the writer joins its thread.
        drop(writer);
    }

    #[test]
    fn closing_drops_queued_jobs_and_wakes_the_writer() {
        let queue = Arc::new(SpillQueue::new(100));
        let writer = {
            let queue = Arc::clone(&queue);
            std::thread::spawn(move || queue.pop())
        };
        queue.close();
        assert_eq!(writer.join().expect("writer"), None);
        assert_eq!(queue.push(1u8, 1), Err(1), "closed");
    }
}
