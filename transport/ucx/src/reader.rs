//! The client side: reads of servers' registered memory, chunked, on the fabric thread.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dimstore_proto::FrameLimits;
use dimstore_transport::onesided::plan::{Chunks, ReadPlan};
use dimstore_transport::onesided::{ReadChunk, ReadTarget, Reader, RemoteRead};
use dimstore_transport::{AlignedBuf, TransportError};
use dimstore_ucx::{
    Context, ContextConfig, Endpoint, RemoteKey, Request, UcxError, Worker, WorkerAddress,
};

use crate::calls::{CallJob, Calls};
use crate::wake::sleep_on;
use crate::AM_REQUEST;
use crate::{one_sided, tls_detail, unavailable, UcxConfig, COMMAND_TIMEOUT, NAME};
use dimstore_transport::onesided::{wait_for_answer, Answer, Messenger};
use dimstore_transport::onesided::{FabricThread, Wake};
use std::sync::atomic::{AtomicU64, Ordering};

/// How long the fabric thread keeps progressing (without sleeping) while gets are in
/// flight and nothing happens, before it sleeps on the event fd: a short read completes
/// within this, and sleeping would add a wake-up to its latency.
const SPIN: Duration = Duration::from_micros(50);
/// Longest sleep of the idle fabric thread: a safety net only.
const IDLE_SLEEP: Duration = Duration::from_secs(1);
/// How long past its deadline a caller waits for the fabric thread's answer, which comes
/// at the deadline unless the thread is stuck in a library call or still pulling a reply's
/// payload: calls end by their deadline all the same.
const ANSWER_GRACE: Duration = Duration::from_millis(100);

/// The UCX [`Reader`]: one context and worker on a dedicated fabric thread, one endpoint
/// per peer (with peer-failure detection where the transports allow it), each packed key
/// unpacked once per endpoint. Reads from any number of threads are interleaved by the
/// fabric thread, with at most [`UcxConfig::in_flight`] gets in flight per endpoint.
pub struct UcxReader {
    thread: FabricThread<Command>,
    config: UcxConfig,
    detail: String,
    /// The worker's address, where servers send replies to request messages.
    address: Vec<u8>,
    next_request_id: AtomicU64,
}

/// What callers ask of the fabric thread.
enum Command {
    Read(Box<ReadJob>),
    Call(Box<CallJob>),
    Notify { peer: Vec<u8>, head: Vec<u8> },
    Forget(Vec<u8>),
    Stop,
}

/// One [`Reader::read`] call, checked, as handed to the fabric thread.
struct ReadJob {
    peer: Vec<u8>,
    /// The distinct packed keys of the chunks.
    keys: Vec<Vec<u8>>,
    /// What to read, in chunks of at most [`UcxConfig::chunk`] bytes.
    chunks: Chunks,
    target: AlignedBuf,
    deadline: Instant,
    reply: mpsc::SyncSender<Result<AlignedBuf, TransportError>>,
}

/// The reader shared by the whole process (UCX wants one context and worker per process):
/// started by the first call, with that call's `config`; later calls return it.
pub fn shared_reader(config: &UcxConfig) -> Result<Arc<UcxReader>, TransportError> {
    static SHARED: Mutex<Option<Arc<UcxReader>>> = Mutex::new(None);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(reader) = &*shared {
        return Ok(Arc::clone(reader));
    }
    let reader = UcxReader::start(config)?;
    *shared = Some(Arc::clone(&reader));
    Ok(reader)
}

impl UcxReader {
    /// Starts a reader with its own context (configured from the `UCX_*` environment) and
    /// fabric thread. Prefer [`shared_reader`]; this is for tests and tools. Fails with
    /// [`TransportError::Unavailable`] when UCX cannot be used here.
    pub fn start(config: &UcxConfig) -> Result<Arc<UcxReader>, TransportError> {
        let config = config.sanitized();
        let (thread, address) = FabricThread::start(
            "dimstore-ucx-read",
            COMMAND_TIMEOUT,
            || Command::Stop,
            move |(rx, wake, ready_tx)| fabric_thread(config, rx, wake, ready_tx),
        )
        .map_err(unavailable)?;
        Ok(Arc::new(UcxReader {
            thread,
            config,
            detail: tls_detail(),
            address,
            next_request_id: AtomicU64::new(1),
        }))
    }

    /// The settings in use.
    pub fn config(&self) -> UcxConfig {
        self.config
    }

    /// The UCX transports in use, for logs (e.g. `UCX_TLS=tcp`).
    pub fn detail(&self) -> String {
        self.detail.clone()
    }

    /// Queues `command` and wakes the fabric thread.
    fn send(&self, command: Command) -> Result<(), TransportError> {
        self.thread
            .send(command)
            .then_some(())
            .ok_or_else(|| one_sided("the UCX fabric thread has stopped"))
    }
}

impl Reader for UcxReader {
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
        let plan = ReadPlan::new(reads, target.len()).map_err(|e| one_sided(e.to_string()))?;
        if plan.is_empty() {
            return Ok(target);
        }
        let (keys, chunks) = plan.into_chunks(self.config.chunk);
        if Instant::now() >= deadline {
            return Err(TransportError::Timeout);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Command::Read(Box::new(ReadJob {
            peer: peer.to_vec(),
            keys,
            chunks,
            target,
            deadline,
            reply,
        })))?;
        wait_for_answer(|t| receive(&answer, t), deadline + ANSWER_GRACE, gone, NAME)?
    }

    fn forget(&self, peer: &[u8]) {
        let _ = self.send(Command::Forget(peer.to_vec()));
    }
}

impl Messenger for UcxReader {
    fn name(&self) -> &'static str {
        NAME
    }

    fn address(&self) -> Vec<u8> {
        self.address.clone()
    }

    fn next_request_id(&self) -> u64 {
        self.next_request_id.fetch_add(1, Ordering::Relaxed)
    }

    fn call(
        &self,
        peer: &[u8],
        head: Vec<u8>,
        payload: Vec<u8>,
        request_id: u64,
        limits: FrameLimits,
        deadline: Instant,
        gone: &dyn Fn() -> bool,
    ) -> Result<(Vec<u8>, AlignedBuf), TransportError> {
        if Instant::now() >= deadline {
            return Err(TransportError::Timeout);
        }
        let (answer, answered) = mpsc::sync_channel(1);
        self.send(Command::Call(Box::new(CallJob {
            peer: peer.to_vec(),
            head,
            payload,
            id: request_id,
            limits,
            deadline,
            answer,
        })))?;
        wait_for_answer(
            |t| receive(&answered, t),
            deadline + ANSWER_GRACE,
            gone,
            NAME,
        )?
    }

    fn notify(&self, peer: &[u8], head: Vec<u8>, deadline: Instant) -> Result<(), TransportError> {
        let _ = deadline; // Queued at once; the fabric thread sends it.
        self.send(Command::Notify {
            peer: peer.to_vec(),
            head,
        })
    }
}

/// One wait on a fabric thread's answer channel.
fn receive<T>(answers: &mpsc::Receiver<T>, wait: Duration) -> Answer<T> {
    match answers.recv_timeout(wait) {
        Ok(answer) => Answer::Ready(answer),
        Err(mpsc::RecvTimeoutError::Timeout) => Answer::Pending,
        Err(mpsc::RecvTimeoutError::Disconnected) => Answer::Stopped,
    }
}

impl std::fmt::Debug for UcxReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UcxReader")
            .field("config", &self.config)
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

/// An endpoint to one peer and the keys unpacked on it.
struct Peer {
    ep: Endpoint,
    keys: HashMap<Vec<u8>, Rc<RemoteKey>>,
    /// Gets in flight on `ep`, shared with the reads using it.
    in_flight: Rc<Cell<usize>>,
}

/// A read being served.
struct Active {
    peer: Vec<u8>,
    ep: Endpoint,
    in_flight: Rc<Cell<usize>>,
    keys: Vec<Rc<RemoteKey>>,
    /// The chunks not issued yet.
    chunks: Chunks,
    target: ReadTarget,
    requests: Vec<Request<ReadChunk>>,
    deadline: Instant,
    reply: mpsc::SyncSender<Result<AlignedBuf, TransportError>>,
}

/// Where a read stands after its requests were tested.
enum Outcome {
    Running,
    Finished,
    Failed(UcxError),
    TimedOut,
}

impl Active {
    /// Whether chunks are left to issue.
    fn pending(&self) -> bool {
        !self.chunks.is_finished()
    }

    /// Issues the next chunk.
    fn issue_one(&mut self) {
        let Some(piece) = self.chunks.next() else {
            return;
        };
        let dst = self
            .target
            .chunk(piece.offset..piece.offset + piece.len)
            .expect("the plan's chunks are in bounds, sorted and disjoint");
        let request = self.ep.get(piece.address, &self.keys[piece.key], dst);
        self.requests.push(request);
        self.in_flight.set(self.in_flight.get() + 1);
    }

    /// Tests the requests in flight (without progressing the worker); counts those that
    /// completed into `completed`.
    fn poll(&mut self, now: Instant, completed: &mut usize) -> Outcome {
        let mut i = 0;
        while i < self.requests.len() {
            match self.requests[i].test() {
                None => i += 1,
                Some(result) => {
                    drop(self.requests.swap_remove(i));
                    self.in_flight.set(self.in_flight.get() - 1);
                    *completed += 1;
                    if let Err(e) = result {
                        return Outcome::Failed(e);
                    }
                }
            }
        }
        if !self.pending() && self.requests.is_empty() {
            Outcome::Finished
        } else if now >= self.deadline {
            Outcome::TimedOut
        } else {
            Outcome::Running
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        // Requests still in flight are handed to the worker with their chunks (which keep
        // the target buffer alive) and no longer count against the endpoint.
        let left = self.requests.len();
        self.in_flight.set(self.in_flight.get() - left);
    }
}

/// The state of the reader's fabric thread.
struct Fabric {
    config: UcxConfig,
    worker: Worker,
    /// A second worker, where servers send replies that come later (see [`Calls`]).
    replies: Worker,
    peers: HashMap<Vec<u8>, Peer>,
    reads: Vec<Active>,
    calls: Calls,
}

impl Fabric {
    /// Handles queued commands; `false` once told to stop.
    fn commands(&mut self, commands: &mpsc::Receiver<Command>) -> bool {
        loop {
            match commands.try_recv() {
                Ok(Command::Read(job)) => self.start(*job),
                Ok(Command::Call(job)) => match self.peer(&job.peer).map(|p| p.ep.clone()) {
                    Ok(ep) => self.calls.start_call(&ep, *job),
                    Err(e) => {
                        let _ = job.answer.send(Err(e));
                    }
                },
                Ok(Command::Notify { peer, head }) => {
                    if let Ok(peer) = self.peer(&peer) {
                        // The worker keeps the send until it completes.
                        drop(peer.ep.am_send(AM_REQUEST, head, Vec::new()));
                    }
                }
                Ok(Command::Forget(peer)) => {
                    self.peers.remove(&peer);
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Starts serving `job`: its endpoint and keys (from the caches), or its error.
    fn start(&mut self, job: ReadJob) {
        let ReadJob {
            peer,
            keys,
            chunks,
            target,
            deadline,
            reply,
        } = job;
        let ready = self.peer(&peer).and_then(|p| {
            let keys = keys
                .iter()
                .map(|k| p.key(k))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((p.ep.clone(), Rc::clone(&p.in_flight), keys))
        });
        match ready {
            Ok((ep, in_flight, keys)) => self.reads.push(Active {
                peer,
                ep,
                in_flight,
                keys,
                chunks,
                target: ReadTarget::new(target),
                requests: Vec::new(),
                deadline,
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// The cached endpoint to `address`, or a new one.
    fn peer(&mut self, address: &[u8]) -> Result<&mut Peer, TransportError> {
        if !self.peers.contains_key(address) {
            let ep = Endpoint::connect(&self.worker, &WorkerAddress::from_bytes(address))
                .map_err(|e| one_sided(format!("connecting to the peer: {e}")))?;
            self.peers.insert(
                address.to_vec(),
                Peer {
                    ep,
                    keys: HashMap::new(),
                    in_flight: Rc::default(),
                },
            );
        }
        Ok(self.peers.get_mut(address).expect("inserted above"))
    }

    /// Issues chunks, one per read in turn, while their endpoints have room.
    fn issue(&mut self) {
        let limit = self.config.in_flight;
        loop {
            let mut issued = false;
            for read in &mut self.reads {
                if read.pending() && read.in_flight.get() < limit {
                    read.issue_one();
                    issued = true;
                }
            }
            if !issued {
                return;
            }
        }
    }

    /// Answers the reads that finished, failed or timed out; whether any get completed
    /// (then chunks may be issued) or any read ended.
    fn complete(&mut self, now: Instant) -> bool {
        let mut completed = 0;
        let mut ended = false;
        let mut i = 0;
        while i < self.reads.len() {
            let outcome = self.reads[i].poll(now, &mut completed);
            if matches!(outcome, Outcome::Running) {
                i += 1;
                continue;
            }
            ended = true;
            let read = self.reads.remove(i);
            self.answer(read, outcome);
        }
        ended || completed > 0
    }

    /// Sends `read`'s result to its caller.
    fn answer(&mut self, mut read: Active, outcome: Outcome) {
        let result = match outcome {
            Outcome::Running => unreachable!("only ended reads are answered"),
            Outcome::Finished => {
                let target =
                    std::mem::replace(&mut read.target, ReadTarget::new(AlignedBuf::default()));
                target
                    .finish()
                    .map_err(|_| one_sided("a chunk of a finished read is still in use"))
            }
            Outcome::TimedOut => Err(TransportError::Timeout),
            Outcome::Failed(e) => {
                if e.is_peer_failure() || read.ep.error().is_some() {
                    // The endpoint is broken: the next read reconnects. (Only if the cache
                    // still holds this very endpoint.)
                    let same = self
                        .peers
                        .get(&read.peer)
                        .is_some_and(|p| Rc::ptr_eq(&p.in_flight, &read.in_flight));
                    if same {
                        self.peers.remove(&read.peer);
                    }
                }
                Err(one_sided(e.to_string()))
            }
        };
        // Drop the read (its requests still in flight go to the worker) before answering:
        // the caller must not see the answer while a chunk could still be written.
        let reply = read.reply.clone();
        drop(read);
        let _ = reply.send(result);
    }

    /// Answers the calls that ended; whether any did. Endpoints that failed are forgotten.
    fn complete_calls(&mut self, now: Instant) -> bool {
        let (changed, failed) = self.calls.poll(now);
        for peer in failed {
            self.peers.remove(&peer);
        }
        changed
    }

    /// Fails every read (the reader stops).
    fn fail_all(&mut self) {
        self.calls.fail_all();
        for read in self.reads.drain(..) {
            let _ = read
                .reply
                .send(Err(one_sided("the UCX reader is shutting down")));
        }
    }

    /// The earliest deadline of the reads and calls being served.
    fn next_deadline(&self) -> Option<Instant> {
        let reads = self.reads.iter().map(|r| r.deadline).min();
        match (reads, self.calls.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether gets or calls are in flight.
    fn busy(&self) -> bool {
        self.reads.iter().any(|r| !r.requests.is_empty()) || self.calls.busy()
    }
}

impl Peer {
    /// The key `packed` unpacked on this endpoint (cached).
    fn key(&mut self, packed: &[u8]) -> Result<Rc<RemoteKey>, TransportError> {
        if let Some(key) = self.keys.get(packed) {
            return Ok(Rc::clone(key));
        }
        let key = self
            .ep
            .unpack_rkey(packed)
            .map(Rc::new)
            .map_err(|e| one_sided(format!("unpacking a remote key: {e}")))?;
        self.keys.insert(packed.to_vec(), Rc::clone(&key));
        Ok(key)
    }
}

/// The fabric thread: creates the context and worker, reports whether UCX is usable, then
/// serves reads until told to stop.
fn fabric_thread(
    config: UcxConfig,
    commands: mpsc::Receiver<Command>,
    wake: Arc<Wake>,
    ready: mpsc::SyncSender<Result<Vec<u8>, String>>,
) {
    let setup = Context::new(&ContextConfig::from_env())
        .map_err(|e| format!("UCX context creation failed ({e})"))
        .and_then(|context| {
            let worker =
                Worker::new(&context).map_err(|e| format!("UCX worker creation failed ({e})"))?;
            worker
                .event_fd()
                .map_err(|e| format!("UCX worker has no event fd ({e})"))?;
            let replies =
                Worker::new(&context).map_err(|e| format!("UCX worker creation failed ({e})"))?;
            replies
                .event_fd()
                .map_err(|e| format!("UCX worker has no event fd ({e})"))?;
            let address = replies
                .address()
                .map_err(|e| format!("UCX worker address unavailable ({e})"))?;
            let calls = Calls::start(&worker, &replies)?;
            Ok((context, worker, replies, calls, address.into_bytes()))
        });
    let (context, worker, replies, calls) = match setup {
        Ok((context, worker, replies, calls, address)) => {
            let _ = ready.send(Ok(address));
            (context, worker, replies, calls)
        }
        Err(reason) => {
            let _ = ready.send(Err(reason));
            return;
        }
    };
    let mut fabric = Fabric {
        config,
        worker,
        replies,
        peers: HashMap::new(),
        reads: Vec::new(),
        calls,
    };
    let mut idle_since: Option<Instant> = None;
    while fabric.commands(&commands) {
        fabric.issue();
        let mut events = 0u64;
        loop {
            let n = fabric.worker.progress() + fabric.replies.progress();
            if n == 0 {
                break;
            }
            events += u64::from(n);
        }
        let now = Instant::now();
        let changed = fabric.complete(now) | fabric.complete_calls(now);
        if events > 0 || changed {
            idle_since = None;
            continue;
        }
        if fabric.busy() && now.duration_since(*idle_since.get_or_insert(now)) < SPIN {
            continue;
        }
        idle_since = None;
        let timeout = fabric.next_deadline().map_or(IDLE_SLEEP, |d| {
            d.saturating_duration_since(now).min(IDLE_SLEEP)
        });
        if let Err(e) = sleep_on(&[&fabric.worker, &fabric.replies], &wake, Some(timeout)) {
            tracing::warn!("UCX reader: {e}; polling instead");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    fabric.fail_all();
    let Fabric {
        worker,
        replies,
        peers,
        calls,
        ..
    } = fabric;
    drop(peers);
    drop(calls);
    // Dropping a worker drains requests still in flight (bounded) before it goes.
    drop(replies);
    drop(worker);
    drop(context);
}
