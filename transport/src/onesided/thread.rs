//! The fabric thread every one-sided implementation runs: it owns the library's objects
//! (UCX and libfabric handles stay on one thread), takes commands over a channel, and sleeps
//! on the library's wait fd plus a [`Wake`] eventfd that callers write after queueing a
//! command. The sleep itself is the implementation's (worker arm, `fi_trywait`).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::event::{eventfd, EventfdFlags};

use crate::Cause;

/// An eventfd that wakes a fabric thread: readable once written to, reset by
/// [`Wake::drain`].
#[derive(Debug)]
pub struct Wake {
    fd: OwnedFd,
}

impl Wake {
    /// A new, unsignalled, non-blocking eventfd.
    pub fn new() -> Result<Wake, Cause> {
        eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map(|fd| Wake { fd })
            .map_err(|e| Cause::context("eventfd", std::io::Error::from(e)))
    }

    /// Wakes the thread (or makes its next sleep return at once).
    pub fn wake(&self) {
        // Cannot fail short of a counter overflow (2^64 - 2 wakes), which still wakes.
        let _ = rustix::io::write(&self.fd, &1u64.to_ne_bytes());
    }

    /// Resets the counter, after a sleep saw the fd readable.
    pub fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.fd, &mut buf);
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What a fabric thread's body gets: its commands, its [`Wake`], and where to report once
/// its library objects are open (what callers need of them, or why it failed).
pub type Startup<C, S> = (
    mpsc::Receiver<C>,
    Arc<Wake>,
    mpsc::SyncSender<Result<S, Cause>>,
);

/// The handle of a fabric thread: [`FabricThread::send`] queues a command and wakes the
/// thread; dropping the handle sends the stop command and joins the thread.
pub struct FabricThread<C: Send + 'static> {
    commands: mpsc::Sender<C>,
    wake: Arc<Wake>,
    thread: Option<JoinHandle<()>>,
    stop: fn() -> C,
}

impl<C: Send + 'static> FabricThread<C> {
    /// Spawns thread `name` running `body` and waits (up to `within`) for its start-up
    /// report; a failed start is joined and its reason returned. `stop` makes the command
    /// that ends the thread.
    pub fn start<S: Send + 'static>(
        name: &str,
        within: Duration,
        stop: fn() -> C,
        body: impl FnOnce(Startup<C, S>) + Send + 'static,
    ) -> Result<(Self, S), Cause> {
        let wake = Arc::new(Wake::new()?);
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn({
                let wake = Arc::clone(&wake);
                move || body((rx, wake, ready_tx))
            })
            .map_err(|e| Cause::context(format!("cannot start the fabric thread {name}"), e))?;
        let started = match ready_rx.recv_timeout(within) {
            Ok(Ok(started)) => started,
            Ok(Err(reason)) => {
                let _ = thread.join();
                return Err(reason);
            }
            Err(_) => return Err(format!("the fabric thread {name} did not start").into()),
        };
        let handle = FabricThread {
            commands,
            wake,
            thread: Some(thread),
            stop,
        };
        Ok((handle, started))
    }

    /// Queues `command` and wakes the thread; `false` once the thread has stopped.
    pub fn send(&self, command: C) -> bool {
        let sent = self.commands.send(command).is_ok();
        self.wake.wake();
        sent
    }

    /// A handle that queues commands from anywhere, without owning the thread.
    pub fn sender(&self) -> CommandSender<C> {
        CommandSender {
            commands: self.commands.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

/// Queues commands to a fabric thread (see [`FabricThread::sender`]); dropping it does not
/// stop the thread.
pub struct CommandSender<C> {
    commands: mpsc::Sender<C>,
    wake: Arc<Wake>,
}

impl<C> Clone for CommandSender<C> {
    fn clone(&self) -> Self {
        CommandSender {
            commands: self.commands.clone(),
            wake: Arc::clone(&self.wake),
        }
    }
}

impl<C> CommandSender<C> {
    /// Queues `command` and wakes the thread; `false` once the thread has stopped.
    pub fn send(&self, command: C) -> bool {
        let sent = self.commands.send(command).is_ok();
        self.wake.wake();
        sent
    }
}

impl<C: Send + 'static> Drop for FabricThread<C> {
    fn drop(&mut self) {
        self.send((self.stop)());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<C: Send + 'static> std::fmt::Debug for FabricThread<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FabricThread")
            .field("running", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_reach_the_thread_and_drop_stops_it() {
        enum Command {
            Echo(u32, mpsc::SyncSender<u32>),
            Stop,
        }
        let (thread, greeting) = FabricThread::start(
            "test-fabric",
            Duration::from_secs(10),
            || Command::Stop,
            |(rx, _wake, ready): Startup<Command, &'static str>| {
                ready.send(Ok("ready")).expect("report");
                while let Ok(Command::Echo(n, reply)) = rx.recv() {
                    let _ = reply.send(n + 1);
                }
            },
        )
        .expect("start");
        assert_eq!(greeting, "ready");
        let (tx, rx) = mpsc::sync_channel(1);
        assert!(thread.send(Command::Echo(41, tx)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(42));
        drop(thread); // joins: a thread that ignored Stop would hang the test
    }

    #[test]
    fn a_failed_start_reports_its_reason() {
        let failed = FabricThread::<()>::start(
            "test-fabric-fail",
            Duration::from_secs(10),
            || (),
            |(_rx, _wake, ready): Startup<(), ()>| {
                let _ = ready.send(Err("no such provider".into()));
            },
        );
        assert_eq!(
            failed.err().map(|e| e.to_string()).as_deref(),
            Some("no such provider")
        );
    }
}
