//! Child processes with deadlines: every line read, every wait is bounded; a process is
//! stopped (SIGTERM, then SIGKILL) when its handle is dropped, on success and on error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::contenders::{find_program, stop_child};

/// Lines of a process's stderr kept for error messages.
const STDERR_TAIL: usize = 25;

/// A running child process: its stdout as lines through a channel, the tail of its stderr,
/// its stdin held open until the handle is dropped (children that watch stdin end then).
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    /// Spawns `command` (stdin piped and held open, stdout and stderr captured).
    pub(crate) fn spawn(name: impl Into<String>, mut command: Command) -> anyhow::Result<Proc> {
        let name = name.into();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        let stdin = child.stdin.take();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            stop_child(&mut child, Duration::from_secs(1));
            bail!("{name}: no stdout/stderr pipes");
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let sink = Arc::clone(&tail);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut tail = sink.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
        });
        Ok(Proc {
            name,
            child,
            stdin,
            lines,
            stderr: tail,
        })
    }

    /// The next stdout line; `None` at the end of its output; at `deadline`, the process is
    /// stopped and this is an error.
    pub(crate) fn next_line(&mut self, deadline: Instant) -> anyhow::Result<Option<String>> {
        match self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                stop_child(&mut self.child, Duration::from_secs(1));
                bail!(
                    "{}: no answer in time (stopped){}",
                    self.name,
                    self.stderr_tail()
                )
            }
        }
    }

    /// Reads the rest of stdout and waits for the exit, both until `deadline` (then the
    /// process is stopped and this is an error).
    pub(crate) fn finish(
        &mut self,
        deadline: Instant,
    ) -> anyhow::Result<(ExitStatus, Vec<String>)> {
        self.stdin = None;
        let mut out = Vec::new();
        while let Some(line) = self.next_line(deadline)? {
            out.push(line);
        }
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, out));
            }
            if Instant::now() >= deadline {
                stop_child(&mut self.child, Duration::from_secs(1));
                bail!("{}: did not exit in time (stopped)", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its stderr, as `:\n...` (empty if it wrote none).
    pub(crate) fn stderr_tail(&self) -> String {
        // The reader thread may still be draining: give it a moment.
        std::thread::sleep(Duration::from_millis(20));
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            format!(":\n    {}", lines.join("\n    "))
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stdin = None;
        stop_child(&mut self.child, Duration::from_secs(1));
    }
}

/// A command running `program` under coreutils' `timeout` when it is installed, so the
/// tool ends by itself after `limit` even if this bench is killed without a chance to stop
/// it (the bench also stops it at its own deadline).
pub(crate) fn bounded_command(program: &Path, limit: Duration) -> Command {
    match find_program("timeout") {
        Some(timeout) => {
            let mut command = Command::new(timeout);
            command
                .arg("-k")
                .arg("2")
                .arg(format!("{}", limit.as_secs().max(1)))
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A free control port on 127.0.0.1 below 32768 (outside the ephemeral range, where
/// TIME_WAIT sockets of earlier runs live); bound and released, a tiny race.
pub(crate) fn control_port() -> anyhow::Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 5_000) as u16;
    for _ in 0..200 {
        let port = base + NEXT.fetch_add(7, Ordering::Relaxed) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free control port found between 20000 and 32767")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_process_is_stopped_at_the_deadline() {
        let Some(sleep) = find_program("sleep") else {
            return;
        };
        let mut command = Command::new(sleep);
        command.arg("30");
        let mut proc = Proc::spawn("sleep", command).expect("spawn");
        let t = Instant::now();
        let err = proc
            .finish(Instant::now() + Duration::from_millis(200))
            .expect_err("must time out");
        assert!(t.elapsed() < Duration::from_secs(5), "{err}");
        assert!(proc.exited());
    }

    #[test]
    fn output_lines_arrive() {
        let Some(echo) = find_program("echo") else {
            return;
        };
        let mut command = Command::new(echo);
        command.arg("hello");
        let mut proc = Proc::spawn("echo", command).expect("spawn");
        let (status, lines) = proc
            .finish(Instant::now() + Duration::from_secs(10))
            .expect("finish");
        assert!(status.success());
        assert_eq!(lines, vec!["hello".to_string()]);
        let port = control_port().expect("port");
        assert!((20_000..32_768).contains(&port));
    }
}
