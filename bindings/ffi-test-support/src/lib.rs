//! Helpers shared by the FFI crates' tests (dimstore-ucx, dimstore-ofi): bounded time (a
//! watchdog that aborts a hung test), data patterns, hex, a peer process (the test binary
//! run again), CPU time of a thread.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Aborts the whole test process (with a message) if not dropped within `limit`: an FFI call
/// that hangs must fail the run, not stall CI.
pub struct Watchdog(#[allow(dead_code)] mpsc::Sender<()>);

/// Starts a watchdog for the test `name`.
pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_owned();
    thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("{name}: still running after {limit:?}; aborting the test process");
            std::process::abort();
        }
    });
    Watchdog(tx)
}

/// `len` bytes of a recognizable pattern (seeded so different regions differ).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// CPU time the calling thread has used (from /proc/thread-self/schedstat).
pub fn thread_cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns: u64 = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .expect("schedstat run time");
    Duration::from_nanos(ns)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of lower-case hex `text`.
pub fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A peer process: this test binary run again with `test` as the only test and `env` set,
/// talking over its stdin/stdout in lines; killed when dropped.
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts the peer (the `test` test function of this binary, with `env` set).
    pub fn spawn(test: &str, env: &[(&str, &str)]) -> Self {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the peer process");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// The value of the next `@KEY value` line the peer prints (other output is skipped;
    /// the test harness may print text before it on the same line).
    pub fn read(&mut self, key: &str) -> String {
        let prefix = format!("@{key} ");
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .expect("read from the peer");
            assert!(n > 0, "peer exited before printing {key}");
            if let Some((_, value)) = line.trim_end().split_once(&prefix) {
                return value.to_owned();
            }
        }
    }

    /// Sends one line to the peer.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the peer");
        stdin.flush().expect("flush to the peer");
    }

    /// The peer's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "STOP", "KILL") to the peer.
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{signal} failed");
        if signal == "STOP" {
            // Delivery is asynchronous: wait until the peer is really stopped (bounded).
            let stat = format!("/proc/{}/stat", self.pid());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let text = std::fs::read_to_string(&stat).unwrap_or_default();
                let state = text.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('T') || state.starts_with('t') {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "peer did not stop");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Kills the peer and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stdin.take();
        self.kill();
    }
}

/// In the peer process: reads lines from stdin on a thread; the receiver yields them and
/// disconnects at end of input (the parent is gone or done).
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// In the peer process: prints `@KEY value` and flushes.
pub fn tell(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "@{key} {value}").expect("stdout");
    out.flush().expect("stdout");
}
