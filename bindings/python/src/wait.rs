//! Waiting that Ctrl-C can interrupt.

use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors;

/// How often a waiting call runs Python's signal handlers.
const SLICE: Duration = Duration::from_millis(50);

/// Runs `op` on a helper thread and waits for it with the GIL released, running Python's
/// signal handlers every [`SLICE`]: Ctrl-C raises `KeyboardInterrupt` at once. The helper then
/// ends by itself within the store's timeout, and what it returns is dropped (a get's leases
/// are released).
pub(crate) fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    op: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    let (done, mut result) = sync_channel(1);
    std::thread::Builder::new()
        .name("dimstore-wait".into())
        .spawn(move || {
            // The waiter may have been interrupted and gone: nothing to do then.
            let _ = done.send(op());
        })
        .map_err(|e| errors::Error::new_err(format!("cannot start a helper thread: {e}")))?;
    loop {
        // The receiver moves into the GIL-free closure and back (it is `Send`, not `Sync`).
        let (receiver, outcome) = py.detach(move || {
            let outcome = result.recv_timeout(SLICE);
            (result, outcome)
        });
        result = receiver;
        match outcome {
            Ok(value) => return Ok(value),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(errors::Error::new_err(
                    "the dimstore helper thread panicked",
                ))
            }
        }
    }
}
