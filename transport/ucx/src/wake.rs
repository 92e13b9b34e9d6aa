//! Sleeping on workers' event fds together with an eventfd that wakes the fabric thread
//! for commands.

use std::time::Duration;

use dimstore_transport::onesided::Wake;
use dimstore_ucx::Worker;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::io::Errno;

/// Arms `worker` and sleeps until it has events, `wake` is written to, or `timeout` passes
/// (`None`: no limit). Returns at once when arming finds events pending: the caller must
/// then progress the worker (and call again once `progress` returns 0).
pub(crate) fn sleep(worker: &Worker, wake: &Wake, timeout: Option<Duration>) -> Result<(), String> {
    sleep_on(&[worker], wake, timeout)
}

/// [`sleep`] on several workers of the thread: returns when any has events.
pub(crate) fn sleep_on(
    workers: &[&Worker],
    wake: &Wake,
    timeout: Option<Duration>,
) -> Result<(), String> {
    for worker in workers {
        if !worker.arm().map_err(|e| e.to_string())? {
            return Ok(());
        }
    }
    let ms = timeout.map_or(-1, |t| {
        // Round up so that a sleep until a deadline does not wake just before it.
        i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    let mut fds = Vec::with_capacity(workers.len() + 1);
    fds.push(PollFd::from_borrowed_fd(wake.fd(), PollFlags::IN));
    for worker in workers {
        let efd = worker.event_fd().map_err(|e| e.to_string())?;
        fds.push(PollFd::from_borrowed_fd(efd, PollFlags::IN));
    }
    match poll(&mut fds, ms) {
        Ok(_) | Err(Errno::INTR) => {}
        Err(e) => return Err(format!("poll: {e}")),
    }
    if !fds[0].revents().is_empty() {
        wake.drain();
    }
    Ok(())
}
