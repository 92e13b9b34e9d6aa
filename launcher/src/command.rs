//! Running the user's command next to a fleet, passing signals on to it.
//!
//! The command runs in the launcher's process group with the launcher's standard streams, so
//! it can use the terminal. SIGTERM and SIGHUP sent to the launcher are forwarded to it, and
//! so is SIGINT, except when the launcher is in the terminal's foreground group: a Ctrl-C
//! there has reached the command already (like `cargo run`, the launcher then lets the
//! command decide what a Ctrl-C means). Once a signal was forwarded, the command gets a grace
//! period to exit before it is killed; a second signal kills it at once.

use std::ffi::OsString;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use dimstore_host::process;
use rustix::process::Signal;
use signal_hook::consts::SIGINT;

use crate::interrupt::{self, Interrupts};

/// Why the command could not be run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No command given.
    #[error("no command to run")]
    Empty,
    /// It could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("cannot wait for `{program}`")]
    Wait {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Its exit status.
    pub status: ExitStatus,
    /// The first signal the launcher received while it ran, if any.
    pub signal: Option<i32>,
    /// Whether the launcher had to kill it.
    pub killed: bool,
}

/// How signals are passed on.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    /// Forward SIGINT too (false when the terminal delivered it to the command already).
    pub forward_sigint: bool,
    /// How long the command may take to exit after a forwarded signal.
    pub grace: Duration,
}

impl Forwarding {
    /// Forwarding suited to how this process was started (see the module docs).
    pub fn detect(grace: Duration) -> Forwarding {
        Forwarding {
            forward_sigint: !interrupt::in_terminal_foreground(),
            grace,
        }
    }
}

/// Runs `argv` with `env` added to the launcher's environment, until it exits.
///
/// # Errors
/// See [`CommandError`].
pub fn run(
    argv: &[OsString],
    env: &[(&str, OsString)],
    interrupts: &Interrupts,
    forwarding: Forwarding,
) -> Result<Outcome, CommandError> {
    let (program, args) = argv.split_first().ok_or(CommandError::Empty)?;
    let shown = program.to_string_lossy().into_owned();
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: shown.clone(),
            source,
        })?;
    let wait_error = |source| CommandError::Wait {
        program: shown.clone(),
        source,
    };
    let mut first_signal = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().map_err(wait_error)? {
            return Ok(Outcome {
                status,
                signal: first_signal,
                killed: false,
            });
        }
        let overdue = kill_at.is_some_and(|at| Instant::now() >= at);
        let signal = interrupts.wait(Duration::from_millis(20));
        let again = signal.is_some() && first_signal.is_some();
        if overdue || (again && kill_at.is_some()) {
            let _ = child.kill();
            let status = child.wait().map_err(wait_error)?;
            return Ok(Outcome {
                status,
                signal: first_signal,
                killed: true,
            });
        }
        let Some(signal) = signal else { continue };
        first_signal.get_or_insert(signal);
        if signal == SIGINT && !forwarding.forward_sigint {
            continue;
        }
        // Still running (try_wait above), so the pid is still the command's.
        if let Some(sig) = Signal::from_raw(signal) {
            let _ = process::send(child.id(), sig);
            kill_at.get_or_insert(Instant::now() + forwarding.grace);
        }
    }
}
