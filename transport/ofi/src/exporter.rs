//! The server side: segments registered on the exporter's fabric thread, which keeps
//! progressing its queue so peers' reads are served.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{self, Sender};
use dimstore_arena::Segment;
use dimstore_transport::onesided::{Exporter, RemoteRegion};
use dimstore_transport::onesided::{FabricThread, Wake};
use dimstore_transport::{Cause, TransportError};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use crate::fabric::{Node, NAP};
use crate::register::Registration;
use crate::{OfiConfig, NAME};

/// Longest sleep of the idle loop, a safety net should a provider's wait fd miss an event.
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// A libfabric exporter: arena segments registered with `FI_REMOTE_READ` on one endpoint,
/// owned by a fabric thread that stops (deregistering everything) when the exporter is
/// dropped.
pub struct OfiExporter {
    thread: FabricThread<Command>,
    address: Vec<u8>,
    provider: String,
    live: Arc<AtomicU64>,
    /// Regions exported so far, by segment id (shared with the fabric thread, which removes
    /// swept ones).
    cache: Arc<Mutex<HashMap<u32, RemoteRegion>>>,
}

/// What the fabric thread is asked to do.
enum Command {
    Export {
        id: u32,
        segment: Arc<Segment>,
        reply: Sender<Result<RemoteRegion, TransportError>>,
    },
    Sweep {
        reply: Sender<()>,
    },
    Stop,
}

/// What the thread reports once its objects are open.
struct Started {
    address: Vec<u8>,
    provider: String,
}

impl OfiExporter {
    /// Opens the provider of `config` on a new fabric thread. Fails with
    /// [`TransportError::Unavailable`] (one sentence saying why) if the provider, node or
    /// domain cannot be opened.
    pub fn start(config: &OfiConfig) -> Result<Arc<OfiExporter>, TransportError> {
        crate::config::apply_lean_defaults();
        let unavailable = |source: Cause| TransportError::Unavailable {
            transport: NAME.to_owned(),
            source,
        };
        let live = Arc::new(AtomicU64::new(0));
        let cache = Arc::new(Mutex::new(HashMap::new()));
        let (thread, started) = FabricThread::start(
            "dimstore-ofi-export",
            crate::START_TIMEOUT,
            || Command::Stop,
            {
                let (config, live, cache) = (config.clone(), live.clone(), cache.clone());
                move |(rx, wake, ready)| run(&config, &wake, &rx, &ready, &live, &cache)
            },
        )
        .map_err(unavailable)?;
        Ok(Arc::new(OfiExporter {
            thread,
            address: started.address,
            provider: started.provider,
            live,
            cache,
        }))
    }

    /// Sends `command` to the fabric thread and wakes it.
    fn send(&self, command: Command) -> Result<(), TransportError> {
        self.thread.send(command).then_some(()).ok_or_else(gone)
    }
}

/// The error when the fabric thread is no longer running.
fn gone() -> TransportError {
    TransportError::OneSided {
        transport: NAME.to_owned(),
        source: "the exporter's fabric thread is gone".into(),
    }
}

impl Exporter for OfiExporter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detail(&self) -> String {
        self.provider.clone()
    }

    fn address(&self) -> Vec<u8> {
        self.address.clone()
    }

    fn export(&self, id: u32, segment: &Arc<Segment>) -> Result<RemoteRegion, TransportError> {
        if let Some(region) = lock(&self.cache).get(&id) {
            return Ok(region.clone());
        }
        let (reply, answer) = channel::bounded(1);
        self.send(Command::Export {
            id,
            segment: Arc::clone(segment),
            reply,
        })?;
        answer.recv().map_err(|_| gone())?
    }

    fn sweep(&self) {
        let (reply, answer) = channel::bounded(1);
        if self.send(Command::Sweep { reply }).is_ok() {
            let _ = answer.recv();
        }
    }

    fn live_registrations(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for OfiExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfiExporter")
            .field("provider", &self.provider)
            .field("live_registrations", &self.live_registrations())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fabric thread: opens the objects, then serves commands and progresses the queue
/// until told to stop (or the command channel closes).
fn run(
    config: &OfiConfig,
    waker: &Wake,
    commands: &Receiver<Command>,
    started: &SyncSender<Result<Started, Cause>>,
    live: &AtomicU64,
    cache: &Mutex<HashMap<u32, RemoteRegion>>,
) {
    let node = match Node::open(config).and_then(|node| {
        let address = node.ep.name().map_err(|e| {
            Cause::context(
                format!(
                    "libfabric provider '{}': cannot name the endpoint",
                    config.provider
                ),
                e,
            )
        })?;
        Ok((node, address))
    }) {
        Ok((node, address)) => {
            let provider = node.provider.clone();
            let _ = started.send(Ok(Started { address, provider }));
            node
        }
        Err(reason) => {
            let _ = started.send(Err(reason));
            return;
        }
    };
    let mut regs: HashMap<u32, Registration> = HashMap::new();
    'serve: loop {
        loop {
            match commands.try_recv() {
                Ok(Command::Export { id, segment, reply }) => {
                    let result = export(&node, &mut regs, id, &segment, cache);
                    live.store(regs.len() as u64, Ordering::Relaxed);
                    drop(segment);
                    let _ = reply.send(result);
                }
                Ok(Command::Sweep { reply }) => {
                    sweep(&mut regs, cache);
                    live.store(regs.len() as u64, Ordering::Relaxed);
                    let _ = reply.send(());
                }
                Err(TryRecvError::Empty) => break,
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => break 'serve,
            }
        }
        // Reading the queue is what serves peers' reads on manual-progress providers.
        if node.cq.progress().is_err() {
            // A broken queue: do not spin on it.
            std::thread::sleep(NAP);
        }
        node.sleep(waker, Some(IDLE_TIMEOUT), true);
    }
    // Regions go before the endpoint and domain (and before the segments they keep).
    regs.clear();
    live.store(0, Ordering::Relaxed);
    lock(cache).clear();
}

/// Registers segment `id` unless it is already.
fn export(
    node: &Node,
    regs: &mut HashMap<u32, Registration>,
    id: u32,
    segment: &Arc<Segment>,
    cache: &Mutex<HashMap<u32, RemoteRegion>>,
) -> Result<RemoteRegion, TransportError> {
    let failed = |e: dimstore_ofi::OfiError| TransportError::OneSided {
        transport: NAME.to_owned(),
        source: Cause::context(format!("cannot register segment {id}"), e),
    };
    let reg = match regs.entry(id) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let ep = node.bind_regions.then_some(&node.ep);
            e.insert(Registration::new(&node.domain, segment, ep).map_err(failed)?)
        }
    };
    let region = reg.region();
    let remote = RemoteRegion {
        address: region.remote_address(),
        key: region.key().map_err(failed)?.to_le_bytes().to_vec(),
    };
    lock(cache).insert(id, remote.clone());
    Ok(remote)
}

/// Drops the registrations of segments nobody else holds.
fn sweep(regs: &mut HashMap<u32, Registration>, cache: &Mutex<HashMap<u32, RemoteRegion>>) {
    let dead: Vec<u32> = regs
        .iter()
        .filter(|(_, r)| r.is_orphaned())
        .map(|(&id, _)| id)
        .collect();
    let mut cache = lock(cache);
    for id in dead {
        cache.remove(&id);
        regs.remove(&id);
    }
}
