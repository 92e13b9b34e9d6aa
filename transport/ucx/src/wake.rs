//! Sleeping on a worker's event fd together with an eventfd that wakes the fabric thread
//! for commands.

use std::os::fd::OwnedFd;
use std::time::Duration;

use dimstore_ucx::Worker;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::io::Errno;

/// An eventfd: callers write to it after queueing a command; the fabric thread sleeps on
/// it and on its worker's event fd.
pub(crate) struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new, non-blocking eventfd.
    pub(crate) fn new() -> Result<Self, String> {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map(|fd| Wake { fd })
            .map_err(|e| format!("eventfd: {e}"))
    }

    /// Wakes the sleeping thread (or makes its next sleep return at once).
    pub(crate) fn wake(&self) {
        // Cannot fail short of the counter overflowing, which only means it is readable.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the counter.
    fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }
}

/// Arms `worker` and sleeps until it has events, `wake` is written to, or `timeout` passes
/// (`None`: no limit). Returns at once when arming finds events pending: the caller must
/// then progress the worker (and call again once `progress` returns 0).
pub(crate) fn sleep(worker: &Worker, wake: &Wake, timeout: Option<Duration>) -> Result<(), String> {
    if !worker.arm().map_err(|e| e.to_string())? {
        return Ok(());
    }
    let efd = worker.event_fd().map_err(|e| e.to_string())?;
    let ms = timeout.map_or(-1, |t| {
        // Round up so that a sleep until a deadline does not wake just before it.
        i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    let mut fds = [
        PollFd::from_borrowed_fd(efd, PollFlags::IN),
        PollFd::new(&wake.fd, PollFlags::IN),
    ];
    match poll(&mut fds, ms) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(format!("poll: {e}")),
    }
    if !fds[1].revents().is_empty() {
        wake.drain();
    }
    Ok(())
}
