//! The client side: `fi_read` of peers' registered memory straight into the reply buffer,
//! on the reader's fabric thread.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, RecvTimeoutError, Sender};
use dimstore_ofi::{Op, PeerAddr, WaitError};
use dimstore_transport::onesided::plan::ReadPlan;
use dimstore_transport::onesided::{
    wait_for_answer, Answer, FabricThread, ReadChunk, ReadTarget, Reader, RemoteRead, Wake,
};
use dimstore_transport::{AlignedBuf, TransportError};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use crate::fabric::Node;
use crate::{OfiConfig, NAME};

/// Without a wait fd, how long the loop keeps polling the queue after the last event before
/// it starts sleeping between polls.
const SPIN: Duration = Duration::from_micros(50);
/// Without a wait fd, the sleep between polls while reads are outstanding.
const SLICE: Duration = Duration::from_micros(50);
/// Longest sleep with nothing outstanding (a safety net; commands wake the thread).
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed read, how long new reads from that peer wait before it is inserted
/// afresh: long enough for the provider to notice a broken connection (`ofi_rxm` handles
/// connection events every 10 ms by default), so the next read does not fail on it again.
const QUARANTINE: Duration = Duration::from_millis(25);

/// A libfabric reader: one endpoint on its own fabric thread; peers are inserted in its
/// address vector once (and removed by [`Reader::forget`] or after a failed read).
///
/// Reads of all calling threads are multiplexed on the thread: each read is split into
/// chunks of at most [`OfiConfig::chunk`] bytes (and of the provider's maximum message
/// size), with at most [`OfiConfig::in_flight`] chunks in flight per peer, taken in turn
/// from the reads waiting for that peer.
pub struct OfiReader {
    thread: FabricThread<Command>,
    provider: String,
    chunk: usize,
}

/// What the fabric thread is asked to do.
enum Command {
    Read(Box<Job>),
    Forget(Vec<u8>),
    Stop,
}

/// One `read` call.
struct Job {
    peer: Vec<u8>,
    /// Pieces not posted yet, in order.
    pieces: VecDeque<Piece>,
    target: ReadTarget,
    deadline: Instant,
    reply: Sender<Result<AlignedBuf, TransportError>>,
}

/// One read operation: `chunk.len()` bytes at `address` with `key`.
struct Piece {
    address: u64,
    key: u64,
    chunk: ReadChunk,
}

impl OfiReader {
    /// Opens the provider of `config` on a new fabric thread. Fails with
    /// [`TransportError::Unavailable`] (one sentence saying why) if the provider, node or
    /// domain cannot be opened.
    pub fn start(config: &OfiConfig) -> Result<Arc<OfiReader>, TransportError> {
        crate::config::apply_lean_defaults();
        let unavailable = |reason: String| TransportError::Unavailable {
            transport: NAME.to_owned(),
            reason,
        };
        let (thread, (provider, max_msg)) = FabricThread::start(
            "dimstore-ofi-read",
            crate::START_TIMEOUT,
            || Command::Stop,
            {
                let config = config.clone();
                move |(rx, wake, ready)| run(&config, &wake, &rx, &ready)
            },
        )
        .map_err(unavailable)?;
        Ok(Arc::new(OfiReader {
            thread,
            provider,
            chunk: config.chunk.min(max_msg).max(1),
        }))
    }

    /// The provider in use, e.g. `tcp;ofi_rxm`.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Largest piece one read operation moves.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// Sends `command` to the fabric thread and wakes it.
    fn send(&self, command: Command) -> Result<(), TransportError> {
        self.thread
            .send(command)
            .then_some(())
            .ok_or_else(|| one_sided("the reader's fabric thread is gone".to_owned()))
    }

    /// The pieces of `reads` (sorted by target offset, split into chunks of `target`).
    fn pieces(
        &self,
        reads: &[RemoteRead<'_>],
        target: &mut ReadTarget,
    ) -> Result<VecDeque<Piece>, TransportError> {
        let plan = ReadPlan::new(reads, target.len()).map_err(|e| one_sided(e.to_string()))?;
        let (keys, chunks) = plan.into_chunks(self.chunk);
        let keys = keys
            .iter()
            .map(|key| {
                let key: [u8; 8] = key.as_slice().try_into().map_err(|_| {
                    one_sided(format!(
                        "a remote key is {} bytes, not 8 (not a libfabric key)",
                        key.len()
                    ))
                })?;
                Ok(u64::from_le_bytes(key))
            })
            .collect::<Result<Vec<u64>, TransportError>>()?;
        chunks
            .map(|piece| {
                let chunk = target
                    .chunk(piece.offset..piece.offset + piece.len)
                    .ok_or_else(|| one_sided("the plan's chunks overlap".to_owned()))?;
                Ok(Piece {
                    address: piece.address,
                    key: keys[piece.key],
                    chunk,
                })
            })
            .collect()
    }
}

/// A [`TransportError::OneSided`] for this transport.
fn one_sided(reason: String) -> TransportError {
    TransportError::OneSided {
        transport: NAME.to_owned(),
        reason,
    }
}

impl Reader for OfiReader {
    fn name(&self) -> &'static str {
        NAME
    }

    fn read_watching(
        &self,
        peer: &[u8],
        reads: &[RemoteRead<'_>],
        target: AlignedBuf,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<AlignedBuf, TransportError> {
        let mut target = ReadTarget::new(target);
        let pieces = self.pieces(reads, &mut target)?;
        if pieces.is_empty() {
            return target
                .finish()
                .map_err(|_| one_sided("target still shared".to_owned()));
        }
        if Instant::now() >= deadline {
            return Err(TransportError::Timeout);
        }
        let (reply, answer) = channel::bounded(1);
        self.send(Command::Read(Box::new(Job {
            peer: peer.to_vec(),
            pieces,
            target,
            deadline,
            reply,
        })))?;
        // The fabric thread ends the job at its deadline too; this bound only matters if
        // the thread is stuck in a provider call.
        let receive = |wait| match answer.recv_timeout(wait) {
            Ok(result) => Answer::Ready(result),
            Err(RecvTimeoutError::Timeout) => Answer::Pending,
            Err(RecvTimeoutError::Disconnected) => Answer::Stopped,
        };
        wait_for_answer(receive, deadline, gone, NAME)?
    }

    fn forget(&self, peer: &[u8]) {
        let _ = self.send(Command::Forget(peer.to_vec()));
    }
}

impl std::fmt::Debug for OfiReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfiReader")
            .field("provider", &self.provider)
            .field("chunk", &self.chunk)
            .finish()
    }
}

/// The process's reader for `config`: one per provider, node and domain (started on first
/// use; later calls with the same triple share it, whatever their chunk and in-flight
/// settings).
pub fn shared_reader(config: &OfiConfig) -> Result<Arc<OfiReader>, TransportError> {
    type Key = (String, Option<String>, Option<String>);
    static READERS: OnceLock<Mutex<HashMap<Key, Arc<OfiReader>>>> = OnceLock::new();
    let key = (
        config.provider.clone(),
        config.node.clone(),
        config.domain.clone(),
    );
    let mut readers = READERS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(reader) = readers.get(&key) {
        return Ok(Arc::clone(reader));
    }
    let reader = OfiReader::start(config)?;
    readers.insert(key, Arc::clone(&reader));
    Ok(reader)
}

/// A peer in the address vector.
struct PeerState {
    addr: PeerAddr,
    name: Vec<u8>,
    /// Operations in flight to it (of jobs and abandoned).
    in_flight: usize,
    /// Operations of failed or expired jobs, still owning their chunks until complete.
    abandoned: Vec<Op<ReadChunk>>,
    /// Jobs reading from it now.
    jobs: usize,
    /// No longer in the name cache: removed from the vector once nothing refers to it.
    retired: bool,
}

/// A job being served.
struct Active {
    job: Box<Job>,
    peer: u64,
    ops: Vec<Op<ReadChunk>>,
    failed: Option<TransportError>,
}

/// The reader thread's state.
struct State {
    node: Node,
    in_flight: usize,
    names: HashMap<Vec<u8>, u64>,
    peers: HashMap<u64, PeerState>,
    next_peer: u64,
    jobs: Vec<Active>,
    /// Peers whose last read failed, by name: until when new reads wait.
    quarantine: HashMap<Vec<u8>, Instant>,
    /// Jobs waiting for their peer's quarantine to end (boxed as they come and go).
    #[allow(clippy::vec_box)]
    waiting: Vec<Box<Job>>,
}

/// The fabric thread: opens the objects, then serves jobs until told to stop (or the
/// command channel closes).
fn run(
    config: &OfiConfig,
    waker: &Wake,
    commands: &Receiver<Command>,
    started: &SyncSender<Result<(String, usize), String>>,
) {
    let node = match Node::open(config) {
        Ok(node) => {
            let _ = started.send(Ok((node.provider.clone(), node.max_msg)));
            node
        }
        Err(reason) => {
            let _ = started.send(Err(reason));
            return;
        }
    };
    let has_wait_fd = node.cq.wait_fd().is_some();
    let mut state = State {
        node,
        in_flight: config.in_flight.max(1),
        names: HashMap::new(),
        peers: HashMap::new(),
        next_peer: 0,
        jobs: Vec::new(),
        quarantine: HashMap::new(),
        waiting: Vec::new(),
    };
    let mut last_event = Instant::now();
    'serve: loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Read(job)) => {
                    last_event = Instant::now();
                    state.admit(job);
                }
                Ok(Command::Forget(name)) => state.retire_name(&name),
                Err(TryRecvError::Empty) => break,
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => break 'serve,
            }
        }
        state.readmit();
        state.post();
        let progressed = match state.node.cq.progress() {
            Ok(n) => n > 0,
            Err(e) => {
                state.fail_all(&format!("completion queue: {e}"));
                true
            }
        };
        let finished = state.reap();
        state.post();
        state.clean();
        if progressed || finished {
            last_event = Instant::now();
        }
        // Abandoned operations alone do not keep the loop polling (to a dead shm peer they
        // never complete): they are reaped whenever it wakes, at least every IDLE_TIMEOUT.
        let busy = !state.jobs.is_empty() || !state.waiting.is_empty();
        if !busy {
            // No read waiting: nobody reads from a reader, so only commands matter.
            state.node.sleep(waker, Some(IDLE_TIMEOUT), false);
            continue;
        }
        // Reads outstanding: keep polling briefly after an event (the next completion is
        // often close), then sleep: on the wait fd until the earliest deadline, or in short
        // slices where there is no wait fd or a post awaits its retry (FI_EAGAIN).
        if last_event.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        if !has_wait_fd || state.unposted() {
            std::thread::sleep(SLICE);
            continue;
        }
        let until = state
            .next_timer()
            .unwrap_or_else(|| Instant::now() + IDLE_TIMEOUT);
        let timeout = until.saturating_duration_since(Instant::now());
        state
            .node
            .sleep(waker, Some(timeout.min(IDLE_TIMEOUT)), true);
    }
    state.fail_all("the reader is closing");
    // Dropping the state closes the endpoint after every operation (which hold it).
}

impl State {
    /// Takes a job in: resolves its peer (inserting it in the vector the first time), or
    /// parks the job while its peer is quarantined.
    fn admit(&mut self, job: Box<Job>) {
        if let Some(&until) = self.quarantine.get(&job.peer) {
            if Instant::now() < until {
                self.waiting.push(job);
                return;
            }
            self.quarantine.remove(&job.peer);
        }
        let id = match self.names.get(&job.peer) {
            Some(&id) => id,
            None => match self.node.av.insert(&job.peer) {
                Ok(addr) => {
                    let id = self.next_peer;
                    self.next_peer += 1;
                    self.names.insert(job.peer.clone(), id);
                    self.peers.insert(
                        id,
                        PeerState {
                            addr,
                            name: job.peer.clone(),
                            in_flight: 0,
                            abandoned: Vec::new(),
                            jobs: 0,
                            retired: false,
                        },
                    );
                    id
                }
                Err(e) => {
                    let _ = job
                        .reply
                        .send(Err(one_sided(format!("bad peer address: {e}"))));
                    return;
                }
            },
        };
        if let Some(peer) = self.peers.get_mut(&id) {
            peer.jobs += 1;
        }
        self.jobs.push(Active {
            job,
            peer: id,
            ops: Vec::new(),
            failed: None,
        });
    }

    /// Admits parked jobs whose peer's quarantine is over; fails those past their deadline.
    fn readmit(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        for job in std::mem::take(&mut self.waiting) {
            if now >= job.deadline {
                let _ = job.reply.send(Err(TransportError::Timeout));
            } else {
                self.admit(job);
            }
        }
    }

    /// The earliest instant the loop must act at: a deadline or a quarantine's end.
    fn next_timer(&self) -> Option<Instant> {
        let deadlines = self.jobs.iter().map(|a| a.job.deadline);
        let parked = self.waiting.iter().map(|j| {
            j.deadline
                .min(self.quarantine.get(&j.peer).copied().unwrap_or(j.deadline))
        });
        deadlines.chain(parked).min()
    }

    /// Posts pieces while their peers have room, one per job per round.
    fn post(&mut self) {
        loop {
            let mut posted = false;
            for active in &mut self.jobs {
                if active.failed.is_some() || active.job.pieces.is_empty() {
                    continue;
                }
                let Some(peer) = self.peers.get_mut(&active.peer) else {
                    continue;
                };
                if peer.in_flight >= self.in_flight {
                    continue;
                }
                let Some(piece) = active.job.pieces.pop_front() else {
                    continue;
                };
                let op = self
                    .node
                    .ep
                    .read(peer.addr, piece.address, piece.key, piece.chunk);
                peer.in_flight += 1;
                active.ops.push(op);
                posted = true;
            }
            if !posted {
                return;
            }
        }
    }

    /// Whether some operation waits for the provider to accept it (`FI_EAGAIN`).
    fn unposted(&self) -> bool {
        self.jobs
            .iter()
            .any(|a| a.ops.iter().any(|op| !op.is_posted()))
    }

    /// Collects completions, answers finished, failed and expired jobs; returns whether
    /// anything completed.
    fn reap(&mut self) -> bool {
        let mut any = false;
        let now = Instant::now();
        for active in &mut self.jobs {
            let mut i = 0;
            while i < active.ops.len() {
                if !active.ops[i].is_complete() {
                    i += 1;
                    continue;
                }
                any = true;
                let op = active.ops.swap_remove(i);
                if let Some(peer) = self.peers.get_mut(&active.peer) {
                    peer.in_flight -= 1;
                }
                // Complete: the wait returns at once, giving the chunk back (dropped here).
                match op.wait(now) {
                    Ok(_) => {}
                    Err(WaitError::Failed { error, .. })
                    | Err(WaitError::Pending { error, .. }) => {
                        if active.failed.is_none() {
                            active.failed = Some(one_sided(error.to_string()));
                        }
                    }
                }
            }
            if active.failed.is_none() && now >= active.job.deadline {
                active.failed = Some(TransportError::Timeout);
            }
        }
        let mut i = 0;
        while i < self.jobs.len() {
            let active = &self.jobs[i];
            let done = active.job.pieces.is_empty() && active.ops.is_empty();
            if active.failed.is_none() && !done {
                i += 1;
                continue;
            }
            any = true;
            let mut active = self.jobs.swap_remove(i);
            let result = match active.failed.take() {
                Some(error) => {
                    // The peer leaves the cache: the next read starts with a fresh entry,
                    // once the provider has had time to see a broken connection.
                    let name = active.job.peer.clone();
                    self.retire_name(&name);
                    self.quarantine.insert(name, Instant::now() + QUARANTINE);
                    if let Some(peer) = self.peers.get_mut(&active.peer) {
                        abandon(peer, std::mem::take(&mut active.ops));
                    }
                    Err(error)
                }
                None => match std::mem::replace(
                    &mut active.job.target,
                    ReadTarget::new(AlignedBuf::default()),
                )
                .finish()
                {
                    Ok(buf) => Ok(buf),
                    Err(_) => Err(one_sided("a chunk outlived its read".to_owned())),
                },
            };
            if let Some(peer) = self.peers.get_mut(&active.peer) {
                peer.jobs -= 1;
            }
            let _ = active.job.reply.send(result);
        }
        any
    }

    /// Removes `name` from the cache (its entry is removed from the vector once nothing
    /// refers to it any more).
    fn retire_name(&mut self, name: &[u8]) {
        if let Some(id) = self.names.remove(name) {
            if let Some(peer) = self.peers.get_mut(&id) {
                peer.retired = true;
            }
        }
    }

    /// Reaps abandoned operations and removes retired peers nothing refers to.
    fn clean(&mut self) {
        let mut gone = Vec::new();
        for (&id, peer) in &mut self.peers {
            let before = peer.abandoned.len();
            peer.abandoned.retain_mut(|op| !op.is_complete());
            peer.in_flight -= before - peer.abandoned.len();
            if peer.retired && peer.jobs == 0 && peer.in_flight == 0 {
                gone.push(id);
            }
        }
        for id in gone {
            if let Some(peer) = self.peers.remove(&id) {
                debug_assert!(!self.names.contains_key(&peer.name) || self.names[&peer.name] != id);
                // Nothing is in flight to it: removing the entry is safe. An error leaves a
                // stale entry behind, which is harmless.
                let _ = self.node.av.remove(peer.addr);
            }
        }
    }

    /// Fails every job (the queue broke, or the reader is closing).
    fn fail_all(&mut self, reason: &str) {
        for active in &mut self.jobs {
            active
                .failed
                .get_or_insert_with(|| one_sided(reason.to_owned()));
        }
        // Deadline checks aside, reap answers failed jobs whatever their state.
        self.reap();
        for job in self.waiting.drain(..) {
            let _ = job.reply.send(Err(one_sided(reason.to_owned())));
        }
    }
}

/// Moves a failed job's operations to its peer: each keeps its chunk (and so the target
/// buffer) alive until it completes or the endpoint closes. Operations the provider never
/// accepted are simply dropped.
fn abandon(peer: &mut PeerState, ops: Vec<Op<ReadChunk>>) {
    for op in ops {
        if op.is_posted() {
            peer.abandoned.push(op);
        } else {
            peer.in_flight -= 1;
        }
    }
}
