//! The server side: arena segments registered for peers to read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use dimstore_arena::Segment;
use dimstore_transport::onesided::{Exporter, RemoteRegion};
use dimstore_transport::{Cause, TransportError};
use dimstore_ucx::{Context, ContextConfig, Worker};

use crate::channel::server::Served;
use crate::register::Registration;
use crate::wake::sleep;
use crate::{one_sided, tls_detail_on, unavailable, UcxConfig, COMMAND_TIMEOUT, NAME};
use dimstore_transport::channel::{LaterReply, RpcHost, RpcReply};
use dimstore_transport::onesided::{FabricThread, Wake};

/// Longest sleep of the idle fabric thread: a safety net only (it is woken by its worker's
/// event fd and by commands).
const IDLE_SLEEP: Duration = Duration::from_secs(1);
/// How long the fabric thread keeps progressing after its last activity before it sleeps:
/// requests of a burst then arrive without a wake-up each.
const SPIN: Duration = Duration::from_micros(50);

/// The UCX [`Exporter`]: one context and worker on a dedicated fabric thread, which
/// registers segments and progresses the worker so that peers' reads are served (over tcp
/// the target of an emulated read must progress). Dropping the last handle stops the thread
/// and unregisters every segment.
pub struct UcxExporter {
    thread: FabricThread<Command>,
    address: Vec<u8>,
    detail: String,
    live: Arc<AtomicU64>,
}

/// What callers ask of the fabric thread.
enum Command {
    Export {
        id: u32,
        segment: Arc<Segment>,
        reply: mpsc::SyncSender<Result<RemoteRegion, TransportError>>,
    },
    Sweep {
        done: mpsc::SyncSender<()>,
    },
    ServeRpc {
        host: Arc<dyn RpcHost>,
        later: LaterReply,
        done: mpsc::SyncSender<Result<(), String>>,
    },
    Reply {
        channel: u64,
        reply: RpcReply,
    },
    Stop,
}

impl UcxExporter {
    /// Starts the fabric thread with a context configured from the `UCX_*` environment.
    /// Fails with [`TransportError::Unavailable`] when UCX cannot be used here.
    pub fn start(config: &UcxConfig) -> Result<Arc<UcxExporter>, TransportError> {
        Self::start_on(config, None)
    }

    /// [`start`](Self::start) with the context's network devices set to `net_devices`
    /// (`UCX_NET_DEVICES` syntax, e.g. `lo` or `eth0,mlx5_0:1`) when given: the worker
    /// then listens on those interfaces only (shared-memory transports are not affected).
    pub fn start_on(
        config: &UcxConfig,
        net_devices: Option<&str>,
    ) -> Result<Arc<UcxExporter>, TransportError> {
        let _ = config; // The exporter has no settings of its own yet.
        let mut context = ContextConfig::from_env();
        if let Some(devices) = net_devices {
            context = context.net_devices(devices);
        }
        let detail = tls_detail_on(net_devices);
        let live = Arc::new(AtomicU64::new(0));
        let (thread, address) =
            FabricThread::start("dimstore-ucx-export", COMMAND_TIMEOUT, || Command::Stop, {
                let live = Arc::clone(&live);
                move |(rx, wake, ready_tx)| fabric_thread(&context, rx, wake, live, ready_tx)
            })
            .map_err(unavailable)?;
        Ok(Arc::new(UcxExporter {
            thread,
            address,
            detail,
            live,
        }))
    }

    /// Queues `command` and wakes the fabric thread.
    fn send(&self, command: Command) -> Result<(), TransportError> {
        self.thread
            .send(command)
            .then_some(())
            .ok_or_else(|| one_sided("the UCX fabric thread has stopped"))
    }
}

impl Exporter for UcxExporter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn detail(&self) -> String {
        self.detail.clone()
    }

    fn address(&self) -> Vec<u8> {
        self.address.clone()
    }

    fn export(&self, id: u32, segment: &Arc<Segment>) -> Result<RemoteRegion, TransportError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Command::Export {
            id,
            segment: Arc::clone(segment),
            reply,
        })?;
        answer
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| one_sided("the UCX fabric thread did not answer an export"))?
    }

    fn sweep(&self) {
        let (done, finished) = mpsc::sync_channel(1);
        if self.send(Command::Sweep { done }).is_ok() {
            let _ = finished.recv_timeout(COMMAND_TIMEOUT);
        }
    }

    fn live_registrations(&self) -> u64 {
        self.live.load(Ordering::SeqCst)
    }

    fn serve_rpc(&self, host: Arc<dyn RpcHost>) -> Result<(), TransportError> {
        let sender = self.thread.sender();
        let later: LaterReply = Arc::new(move |channel, reply| {
            sender.send(Command::Reply { channel, reply });
        });
        let (done, finished) = mpsc::sync_channel(1);
        self.send(Command::ServeRpc { host, later, done })?;
        finished
            .recv_timeout(COMMAND_TIMEOUT)
            .map_err(|_| one_sided("the UCX fabric thread did not answer"))?
            .map_err(unavailable)
    }
}

impl std::fmt::Debug for UcxExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UcxExporter")
            .field("detail", &self.detail)
            .field("live_registrations", &self.live_registrations())
            .finish_non_exhaustive()
    }
}

/// The fabric thread: creates the context (configured by `config`) and worker, reports the worker address (or why
/// UCX is unusable), then serves commands and progresses the worker until told to stop.
fn fabric_thread(
    config: &ContextConfig,
    commands: mpsc::Receiver<Command>,
    wake: Arc<Wake>,
    live: Arc<AtomicU64>,
    ready: mpsc::SyncSender<Result<Vec<u8>, Cause>>,
) {
    let setup = Context::new(config)
        .map_err(|e| Cause::context("UCX context creation failed", e))
        .and_then(|context| {
            let worker = Worker::new(&context)
                .map_err(|e| Cause::context("UCX worker creation failed", e))?;
            let address = worker
                .address()
                .map_err(|e| Cause::context("UCX worker address unavailable", e))?;
            worker
                .event_fd()
                .map_err(|e| Cause::context("UCX worker has no event fd", e))?;
            Ok((context, worker, address.into_bytes()))
        });
    let (context, worker) = match setup {
        Ok((context, worker, address)) => {
            let _ = ready.send(Ok(address));
            (context, worker)
        }
        Err(reason) => {
            let _ = ready.send(Err(reason));
            return;
        }
    };
    let mut registrations: HashMap<u32, Exported> = HashMap::new();
    let mut served: Option<Served> = None;
    let mut idle_since: Option<Instant> = None;
    loop {
        let mut events = 0;
        loop {
            let n = worker.progress();
            if n == 0 {
                break;
            }
            events += n;
        }
        let landed = served.as_mut().is_some_and(|s| s.poll(&worker));
        let mut commanded = false;
        loop {
            let command = commands.try_recv();
            commanded |= command.is_ok();
            match command {
                Ok(Command::Export { id, segment, reply }) => {
                    let result = export(&context, &mut registrations, id, segment);
                    live.store(registrations.len() as u64, Ordering::SeqCst);
                    let _ = reply.send(result);
                }
                Ok(Command::Sweep { done }) => {
                    registrations.retain(|_, e| Arc::strong_count(e.registration.segment()) > 1);
                    live.store(registrations.len() as u64, Ordering::SeqCst);
                    if let Some(served) = &mut served {
                        served.sweep();
                    }
                    let _ = done.send(());
                }
                Ok(Command::ServeRpc { host, later, done }) => {
                    let started = match &served {
                        Some(_) => Err("requests are served already".to_owned()),
                        None => Served::start(&worker, host, later).map(|s| served = Some(s)),
                    };
                    let _ = done.send(started);
                }
                Ok(Command::Reply { channel, reply }) => {
                    if let Some(served) = &mut served {
                        served.send(&worker, channel, reply);
                    }
                }
                Ok(Command::Stop) | Err(mpsc::TryRecvError::Disconnected) => {
                    // Unregister before the worker and context go.
                    drop(served);
                    drop(registrations);
                    live.store(0, Ordering::SeqCst);
                    drop(worker);
                    drop(context);
                    return;
                }
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        // Keep progressing briefly after activity: the next request of a burst then
        // needs no wake-up.
        let now = Instant::now();
        if events > 0 || landed || commanded {
            idle_since = Some(now);
            continue;
        }
        let receiving = served.as_ref().is_some_and(Served::receiving);
        if receiving || idle_since.is_some_and(|t| now.duration_since(t) < SPIN) {
            continue;
        }
        idle_since = None;
        if let Err(e) = sleep(&worker, &wake, Some(IDLE_SLEEP)) {
            tracing::warn!("UCX exporter: {e}; polling instead");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A registered segment and what peers need to read it.
struct Exported {
    registration: Registration,
    remote: RemoteRegion,
}

/// Registers `segment` as `id`, or returns its existing registration.
fn export(
    context: &Context,
    registrations: &mut HashMap<u32, Exported>,
    id: u32,
    segment: Arc<Segment>,
) -> Result<RemoteRegion, TransportError> {
    if let Some(e) = registrations.get(&id) {
        // Segment ids are not reused while a segment lives; a different segment under a
        // known id means the old one is gone: register the new one instead.
        if Arc::ptr_eq(e.registration.segment(), &segment) {
            return Ok(e.remote.clone());
        }
    }
    let registration = Registration::new(context, segment)
        .map_err(|e| one_sided(Cause::context(format!("registering segment {id}"), e)))?;
    let region = registration.region();
    let remote = RemoteRegion {
        address: region.address(),
        key: region.pack_rkey().map_err(|e| {
            one_sided(Cause::context(
                format!("packing the key of segment {id}"),
                e,
            ))
        })?,
    };
    registrations.insert(
        id,
        Exported {
            registration,
            remote: remote.clone(),
        },
    );
    Ok(remote)
}
