//! What both fabric threads share: opening the libfabric objects from a configuration, and
//! the thread's sleep (the queue's wait fd plus an eventfd that wakes it for commands).

use std::time::Duration;

use dimstore_ofi::{
    AddressVector, CompletionQueue, Domain, Endpoint, Fabric, Info, InfoQuery, OfiError,
};
use dimstore_transport::onesided::Wake;
use rustix::event::{poll, PollFd, PollFlags};

use crate::OfiConfig;

/// Completion queue entries.
const CQ_SIZE: usize = 1024;

/// Longest nap of an idle loop whose queue has no wait fd (e.g. `shm`).
pub(crate) const NAP: Duration = Duration::from_millis(1);

/// The libfabric objects of one fabric thread (never leave it: they are `!Send`).
pub(crate) struct Node {
    pub(crate) ep: Endpoint,
    pub(crate) av: AddressVector,
    pub(crate) cq: CompletionQueue,
    pub(crate) domain: Domain,
    /// Keeps the fabric open (the objects above also hold it).
    _fabric: Fabric,
    /// Provider name, e.g. `tcp;ofi_rxm`.
    pub(crate) provider: String,
    /// The provider's largest transfer (`usize::MAX` when it gives none).
    pub(crate) max_msg: usize,
    /// Whether regions must be bound to the endpoint (`FI_MR_ENDPOINT`).
    pub(crate) bind_regions: bool,
}

impl Node {
    /// Opens fabric, domain, queue, vector and an RDM endpoint for `config`; the error is
    /// one sentence for [`dimstore_transport::TransportError::Unavailable`].
    pub(crate) fn open(config: &OfiConfig) -> Result<Node, String> {
        let mut query = InfoQuery::provider(config.provider.clone());
        if let Some(node) = &config.node {
            query = query.source_node(node.clone());
        } else if config.provider == "shm" {
            query = query.source_node(shm_name());
        }
        if let Some(domain) = &config.domain {
            query = query.domain(domain.clone());
        }
        let node_name = config.node.as_deref().unwrap_or("(any)");
        let info = Info::query(&query).map_err(|e| {
            if e.is_library_missing() {
                return e.to_string();
            }
            // The wrapper appends the whole query; the sentence names what matters.
            let text = e.message.split(" (query").next().unwrap_or(&e.message);
            format!(
                "no libfabric provider '{}' for node {node_name}: {}: {text}",
                config.provider, e.api
            )
        })?;
        let failed = |e: OfiError| {
            format!(
                "libfabric provider '{}' for node {node_name} cannot be opened: {e}",
                config.provider
            )
        };
        if info.requires_local_registration() {
            return Err(format!(
                "libfabric provider '{}' requires registered local buffers (FI_MR_LOCAL), \
                 which this transport does not do",
                config.provider
            ));
        }
        let provider = info.provider();
        let max_msg = match info.max_msg_size() {
            0 => usize::MAX,
            n => n,
        };
        let bind_regions = info.regions_bind_to_endpoint();
        let fabric = Fabric::open(info).map_err(failed)?;
        let domain = Domain::open(&fabric).map_err(failed)?;
        let cq = CompletionQueue::open(&domain, CQ_SIZE).map_err(failed)?;
        let av = AddressVector::open(&domain).map_err(failed)?;
        let ep = Endpoint::open(&domain, &cq, &av).map_err(failed)?;
        Ok(Node {
            ep,
            av,
            cq,
            domain,
            _fabric: fabric,
            provider,
            max_msg,
            bind_regions,
        })
    }

    /// Sleeps until the queue has work (its wait fd), the waker fires, or `timeout` passes
    /// (`None`: no limit). Returns at once when `fi_trywait` says progress is due. Without
    /// a wait fd (or if `fi_trywait` fails) it naps at most [`NAP`] if the queue must keep
    /// progressing (`serving`: peers may be reading from us), otherwise it waits for the
    /// waker alone.
    pub(crate) fn sleep(&self, waker: &Wake, timeout: Option<Duration>, serving: bool) {
        let fd = self.cq.wait_fd();
        let can_sleep = match (&fd, self.cq.try_wait()) {
            (Some(_), Ok(true)) => true,
            (Some(_), Ok(false)) => return,
            _ => false,
        };
        let timeout = if can_sleep || !serving {
            timeout
        } else {
            Some(timeout.map_or(NAP, |t| t.min(NAP)))
        };
        let ms = timeout.map_or(-1, |t| {
            // Round up, so a sub-millisecond wait does not become a busy loop.
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let waker_fd = waker.fd();
        let mut fds = Vec::with_capacity(2);
        fds.push(PollFd::new(&waker_fd, PollFlags::IN));
        if let (true, Some(cq_fd)) = (can_sleep, fd.as_ref()) {
            fds.push(PollFd::new(cq_fd, PollFlags::IN));
        }
        // EINTR or any other failure just ends the sleep: the loop progresses and retries.
        let _ = poll(&mut fds, ms);
        if !fds[0].revents().is_empty() {
            waker.drain();
        }
    }
}

/// Prefix of the shm provider's endpoint names (`/dev/shm/<name>`) this crate chooses.
const SHM_PREFIX: &str = "dimstore-ofi-";

/// A name for a new shm endpoint, unique on this node: `dimstore-ofi-<pid>-<n>`.
///
/// The provider's default name starts with the process id, and a process killed without
/// closing its endpoint leaves its 16 MiB region in `/dev/shm`: a later process given the
/// same pid then fails to open its endpoint (EBUSY). Named regions of processes that no
/// longer exist are removed here first, so such leftovers neither collide nor pile up.
fn shm_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    remove_stale_shm_regions();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{SHM_PREFIX}{}-{n}", std::process::id())
}

/// Removes `/dev/shm/dimstore-ofi-<pid>-*` regions whose process is gone.
fn remove_stale_shm_regions() {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SHM_PREFIX))
            .and_then(|rest| rest.split(['-', ':']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
