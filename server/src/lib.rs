//! The dimstore per-node storage server.
//!
//! [`run`] binds the control listener, writes the ready file, and serves the
//! [`StoreService`] over every transport until SIGTERM/SIGINT, a client's shutdown request,
//! or the idle timeout.
#![forbid(unsafe_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use dimstore_arena::{Arena, ArenaConfig};
use dimstore_proto::{FrameLimits, ReadyFile, RequestLimits};
use dimstore_transport::channel::ServiceHost;
use dimstore_transport::tcp::ServeOptions;
use dimstore_transport::{ConnectionGate, ConnectionLimits};
use tokio::net::TcpListener;

pub mod config;
pub mod descriptors;
pub mod eviction;
pub mod functions;
pub mod metrics;
pub mod metrics_http;
pub mod one_sided;
pub mod openmetrics;
pub mod placement;
pub mod service;
pub mod session;
pub mod spill;
pub mod spiller;
pub mod store;

/// Name of the same-node transport, whose sessions may map the arena.
pub const LOCAL_TRANSPORT: &str = dimstore_transport::local::NAME;

pub use config::{Args, ConfigError, ServerConfig};
pub use placement::{CpuBind, Placement, PlacementError};
pub use service::{ServiceIdentity, StoreService};
pub use store::ObjectStore;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No address to advertise (listening on every address of a host without a routable one).
    #[error(transparent)]
    Advertise(ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The ready file could not be written.
    #[error("cannot write ready file {path}")]
    ReadyFile {
        /// File.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The same-node socket could not be created.
    #[error("cannot listen on local socket {path}")]
    LocalSocket {
        /// Socket path.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A required one-sided transport could not start.
    #[error("cannot start one-sided transport")]
    OneSided(#[source] dimstore_transport::TransportError),
    /// The metrics endpoint could not be bound.
    #[error("cannot listen for metrics on {addr}")]
    MetricsBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// The spill directory could not be set up.
    #[error("cannot use the spill directory")]
    Spill(#[from] spill::SpillError),
}

/// Why the server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal,
    /// A client sent Shutdown.
    Requested,
    /// Idle for the configured timeout.
    Idle,
    /// The process that started the server exited (`--exit-with-parent`).
    ParentExited,
}

/// Runs the server until it is told to stop. `binding` describes the threads' placement
/// (see [`Placement::description`]) for stats.
pub async fn run(config: ServerConfig, binding: String) -> Result<StopReason, ServerError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    let advertised = config
        .advertised_address(bound)
        .map_err(ServerError::Advertise)?;
    let server_id = rand::random::<u64>();
    let (local_path, local_listener) = match &config.local_socket {
        Some(template) => {
            let (path, listener) = bind_local_socket(template, server_id)?;
            (Some(path), Some(listener))
        }
        None => (None, None),
    };
    let mut transports = vec![dimstore_transport::tcp::NAME.to_string()];
    if local_path.is_some() {
        transports.push(LOCAL_TRANSPORT.to_string());
    }
    let host = advertised
        .rsplit_once(':')
        .map_or(advertised.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let (offers, exporters) =
        one_sided::start(&config.one_sided, bound, host).map_err(ServerError::OneSided)?;
    let identity = ServiceIdentity {
        node: config.node.clone(),
        advertised: advertised.clone(),
        token: config.token.clone(),
        server_id,
        transports,
        local_socket: local_path.as_ref().map(|p| p.display().to_string()),
        one_sided: offers,
        lease_timeout: config.lease_timeout,
        binding,
        functions: config.functions.clone(),
    };
    let arena = Arena::new(ArenaConfig {
        capacity: config.memory_limit,
        segment_size: config.segment_size,
    });
    let mut store =
        ObjectStore::new(arena, server_id, config.reserved_ttl).with_eviction(config.eviction);
    if let Some(dir) = &config.spill_dir {
        let spill = spill::SpillDir::open(dir, config.spill_limit)?;
        tracing::info!(dir = %spill.path().display(), limit = config.spill_limit, "spilling cold objects to disk when memory is full");
        store = store
            .with_spill(spill)
            .map_err(|source| spill::SpillError::Io {
                path: dir.clone(),
                source,
            })?;
    }
    let gate = connection_gate(&config, exporters.0.len());
    let service = StoreService::new(store, identity.clone(), exporters);
    let options = ServeOptions {
        limits: FrameLimits {
            max_body: 16 << 20,
            max_payload: config.memory_limit,
        },
        requests: RequestLimits::default(),
        stall_timeout: config.stall_timeout,
    };
    // Requests may also travel on the one-sided transports' own messages (UCX active
    // messages), on channels opened from TCP connections. The hosts hold the service
    // weakly (it owns the transports); this handle keeps it while the server runs.
    let rpc_service = Arc::new(service.clone());
    for exporter in &service.exporters().0 {
        let host = ServiceHost::new(
            &rpc_service,
            options.limits,
            options.requests,
            exporter.name(),
            tokio::runtime::Handle::current(),
        );
        match exporter.serve_rpc(Arc::new(host)) {
            Ok(()) => {
                service.serve_rpc_on(exporter.name());
                tracing::info!(
                    transport = exporter.name(),
                    "requests accepted on the transport's messages"
                );
            }
            Err(e) => tracing::debug!(transport = exporter.name(), "{e}"),
        }
    }

    let metrics = match config.metrics_listen {
        Some(addr) => Some(start_metrics_endpoint(addr, &service).await?),
        None => None,
    };

    let stop = Arc::new(tokio::sync::Notify::new());
    let reason = Arc::new(std::sync::Mutex::new(None));
    spawn_stop_watchers(&service, &config, &stop, &reason)?;
    {
        // Reserved keys past their time to live go within a second; so do registrations of
        // segments the arena released and one-sided leases past their deadline.
        let service = service.clone();
        let one_sided = !identity.one_sided.is_empty();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                service.expire_reservations();
                service.expire_objects();
                if one_sided {
                    service.expire_leases();
                    service.sweep_registrations();
                }
            }
        });
    }

    if let Some(path) = &config.ready_file {
        write_ready_file(
            path,
            &ReadyFile {
                address: advertised.clone(),
                pid: std::process::id(),
                node: config.node.clone(),
                server_id,
                transports: identity
                    .transports
                    .iter()
                    .cloned()
                    .chain(identity.one_sided.iter().map(|o| o.transport.clone()))
                    .collect(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                metrics: metrics.as_ref().map(|(addr, _)| addr.to_string()),
            },
        )?;
    }
    tracing::info!(
        %advertised, node = %config.node, memory_limit = config.memory_limit,
        pid = std::process::id(), binding = %identity.binding, "dimstore-server ready"
    );

    // Both listeners stop together: one watches the stop signal and tells the other.
    let (stop_local, local_stopped) = tokio::sync::oneshot::channel::<()>();
    let local_task = local_listener.map(|listener| {
        let gate = Arc::clone(&gate);
        let service = Arc::new(service.clone());
        tokio::spawn(async move {
            let stopped = async move {
                let _ = local_stopped.await;
            };
            dimstore_transport::local::serve(listener, service, options, &gate, stopped).await
        })
    });
    let stopped = Arc::clone(&stop);
    dimstore_transport::tcp::serve(
        listener,
        Arc::new(service.clone()),
        options,
        &gate,
        async move { stopped.notified().await },
    )
    .await;
    let _ = stop_local.send(());
    if let Some(task) = local_task {
        let _ = task.await;
    }
    if let Some(path) = &local_path {
        let _ = std::fs::remove_file(path);
        // The per-node directory too, unless something else (ready file, log) lives there.
        if let Some(dir) = path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    if let Some(path) = &config.ready_file {
        let _ = std::fs::remove_file(path);
    }
    if let Some((_, task)) = metrics {
        task.abort();
    }
    let reason = reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or(StopReason::Signal);
    let stats = service.stats();
    tracing::info!(
        ?reason,
        objects = stats.objects,
        bytes = stats.bytes_used,
        "dimstore-server stopping"
    );
    Ok(reason)
}

/// Raises the descriptor limit and bounds the connections every listener holds together:
/// those not authenticated by `--max-pending-connections`, all of them by the descriptors
/// left once what the arena and `one_sided` running transports need is kept.
fn connection_gate(config: &ServerConfig, one_sided: usize) -> Arc<ConnectionGate> {
    let limit = descriptors::raise_descriptor_limit();
    let segments = config.memory_limit.div_ceil(config.segment_size);
    let budget = descriptors::ConnectionBudget::plan(limit, segments, one_sided as u64);
    let max_open = usize::try_from(budget.max_open).unwrap_or(usize::MAX);
    let limits = ConnectionLimits {
        max_pending: config.max_pending_connections.min(max_open),
        max_open,
    };
    tracing::info!(
        descriptor_limit = budget.limit,
        reserved = budget.reserve,
        max_connections = limits.max_open,
        max_pending_connections = limits.max_pending,
        "connection limits"
    );
    ConnectionGate::new(limits)
}

/// Binds `--metrics-listen` and serves `/metrics` from a task; the bound address and task.
async fn start_metrics_endpoint(
    addr: std::net::SocketAddr,
    service: &StoreService,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), ServerError> {
    let fail = |source| ServerError::MetricsBind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    let registry = Arc::new(openmetrics::registry(service.clone()));
    tracing::info!(%bound, "serving OpenMetrics on http://{bound}/metrics");
    Ok((bound, tokio::spawn(metrics_http::serve(listener, registry))))
}

/// Starts the tasks that end the server: signals, shutdown requests, idleness.
fn spawn_stop_watchers(
    service: &StoreService,
    config: &ServerConfig,
    stop: &Arc<tokio::sync::Notify>,
    reason: &Arc<std::sync::Mutex<Option<StopReason>>>,
) -> Result<(), ServerError> {
    use tokio::signal::unix::{signal, SignalKind};
    let finish = {
        let stop = Arc::clone(stop);
        let reason = Arc::clone(reason);
        move |why: StopReason| {
            reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(why);
            // notify_one stores a permit, so a stop before the serve loop waits is not lost.
            stop.notify_one();
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let on_signal = finish.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal(StopReason::Signal);
    });
    let requested = Arc::clone(&service.shutdown);
    let on_request = finish.clone();
    tokio::spawn(async move {
        requested.notified().await;
        // Let the connection that asked write its reply before the runtime goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        on_request(StopReason::Requested);
    });
    if config.exit_with_parent {
        // Orphaned processes are re-parented: a changed parent id means the parent is gone.
        let parent = rustix::process::getppid();
        let on_orphan = finish.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if rustix::process::getppid() != parent {
                    tracing::warn!("the process that started this server exited; stopping");
                    on_orphan(StopReason::ParentExited);
                    return;
                }
            }
        });
    }
    if let Some(idle) = config.idle_timeout {
        let service = service.clone();
        tokio::spawn(async move {
            let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
            loop {
                tokio::time::sleep(tick).await;
                if service.is_empty() && service.connections() == 0 && service.idle_for() >= idle {
                    finish(StopReason::Idle);
                    return;
                }
            }
        });
    }
    Ok(())
}

/// Creates the same-node socket (its directory 0700: only this user's processes connect).
fn bind_local_socket(
    template: &Path,
    server_id: u64,
) -> Result<(std::path::PathBuf, tokio::net::UnixListener), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let path = std::path::PathBuf::from(
        template
            .display()
            .to_string()
            .replace("{id}", &format!("{server_id:016x}")),
    );
    let fail = |source| ServerError::LocalSocket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).map_err(fail)?;
    Ok((path, listener))
}

/// Writes the ready file atomically (temporary name, then rename).
fn write_ready_file(path: &Path, ready: &ReadyFile) -> Result<(), ServerError> {
    let fail = |source| ServerError::ReadyFile {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let json = serde_json::to_vec_pretty(ready).map_err(|e| fail(e.into()))?;
    std::fs::write(&tmp, json).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}
