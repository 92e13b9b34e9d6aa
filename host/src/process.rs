//! Processes by pid: whether one still runs, whether it is a dimstore server, signals, and
//! waiting for them to end.
//!
//! Servers outlive whoever started them (`dimstore-launch up`, the SPANK plugin), so those
//! who stop them later only know them by the pid in a fleet or ready file. Before signalling
//! such a pid, check with [`is_server`] that it still names a running `dimstore-server`
//! (pids are reused). A zombie counts as gone: its process has exited, and on machines whose
//! init does not reap orphans it may linger for ever.

use std::io;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The kernel's name (`comm`) of a dimstore server process: its binary name, as the
/// kernel records it (at most 15 bytes, which this name fits exactly).
pub const SERVER_COMM: &str = "dimstore-server";

/// Whether `pid` names a process that has not exited (zombies have).
pub fn is_running(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// Whether `pid` names a running process whose binary is `dimstore-server`.
pub fn is_server(pid: u32) -> bool {
    is_running(pid) && comm(pid).as_deref() == Some(SERVER_COMM)
}

/// The kernel's short name of the process, if it exists.
pub fn comm(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

/// The process state letter from `/proc/<pid>/stat` (`R`, `S`, `Z`, ...).
fn state(pid: u32) -> Option<char> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Sends `signal` to `pid`.
///
/// # Errors
/// `InvalidInput` for pid 0 or one beyond `i32`; otherwise the `kill(2)` error (`ESRCH` when
/// the process is gone, `EPERM` when it is not ours).
pub fn send(pid: u32, signal: Signal) -> io::Result<()> {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
    let pid = raw.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "invalid pid"))?;
    kill_process(pid, signal).map_err(io::Error::from)
}

/// Waits until none of `pids` is running, or until `timeout` passes. Returns the pids still
/// running (empty when all are gone).
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let running: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `grace` for `pid` to end, then sends it SIGTERM and waits up to `term_grace`,
/// then sends it SIGKILL. Returns the last signal sent (`None` when it ended by itself in
/// `grace`); it is not waited for after SIGKILL.
pub fn wait_then_end(pid: u32, grace: Duration, term_grace: Duration) -> Option<Signal> {
    if wait_gone(&[pid], grace).is_empty() {
        return None;
    }
    let _ = send(pid, Signal::Term);
    if wait_gone(&[pid], term_grace).is_empty() {
        return Some(Signal::Term);
    }
    let _ = send(pid, Signal::Kill);
    Some(Signal::Kill)
}

/// The shell convention for an exit status: the exit code, or 128 + the signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_itself_running_and_not_a_server() {
        let me = std::process::id();
        assert!(is_running(me));
        assert!(!is_server(me));
        assert!(!is_running(0));
        assert!(send(0, Signal::Term).is_err());
    }

    #[test]
    fn an_exited_child_is_not_running_even_unreaped() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Not reaped yet: a zombie, which counts as gone.
        assert!(wait_gone(&[pid], Duration::from_secs(10)).is_empty());
        let status = child.wait().expect("wait");
        assert_eq!(exit_code(status), 0);
    }

    #[test]
    fn wait_then_end_waits_then_terminates() {
        let mut quick = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let none = wait_then_end(quick.id(), Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(none, None);
        quick.wait().expect("wait");

        let mut slow = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let term = wait_then_end(slow.id(), Duration::ZERO, Duration::from_secs(10));
        assert_eq!(term, Some(Signal::Term));
        assert_eq!(exit_code(slow.wait().expect("wait")), 143);
    }

    #[test]
    fn signal_deaths_map_to_128_plus_signal() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        send(child.id(), Signal::Term).expect("kill");
        assert_eq!(exit_code(child.wait().expect("wait")), 143);
    }
}
