//! Catching SIGINT, SIGTERM and SIGHUP so the launcher can tear its fleet down instead of
//! dying with servers left behind.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// The signals caught.
pub const CAUGHT: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

/// Signals received since [`Interrupts::install`], delivered as their numbers.
#[derive(Debug)]
pub struct Interrupts {
    received: Receiver<i32>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Interrupts {
    /// Installs handlers for [`CAUGHT`]; from now on these signals no longer end the process.
    ///
    /// # Errors
    /// When a handler cannot be installed.
    pub fn install() -> io::Result<Interrupts> {
        let mut signals = Signals::new(CAUGHT)?;
        let handle = signals.handle();
        let (tx, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if tx.send(signal).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Interrupts {
            received,
            handle,
            thread: Some(thread),
        })
    }

    /// A signal received and not yet taken, if any.
    pub fn pending(&self) -> Option<i32> {
        self.received.try_recv().ok()
    }

    /// Waits up to `timeout` for a signal.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        match self.received.recv_timeout(timeout) {
            Ok(signal) => Some(signal),
            Err(RecvTimeoutError::Timeout) => None,
            // No more signals can come; still take the time, so callers polling in a loop
            // do not spin.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A signal's name (`SIGINT`), or its number.
pub fn name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map_or_else(|| format!("signal {signal}"), str::to_string)
}

/// Whether this process is in the foreground process group of its controlling terminal: then
/// a Ctrl-C there reaches the whole group, the command run by the launcher included.
pub fn in_terminal_foreground() -> bool {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    rustix::termios::tcgetpgrp(&tty).is_ok_and(|pgrp| pgrp == rustix::process::getpgrp())
}
