//! One server per job and node: its directory, starting it exactly once, and stopping it.
//!
//! Layout, on node-local storage: `<runtime_dir>/job<id>/<host>/` (mode 0700, owned by the
//! job's user) holds `server.json` (the server's ready file, which clients of the job also
//! find through `DIMSTORE_RUNTIME_DIR=<runtime_dir>/job<id>`), `server.log`, `server.pid`,
//! `token` (0600) and `lock`. The host level keeps nodes apart where the runtime directory is
//! shared (simulated nodes on one machine).
//!
//! Whoever starts the server (the job prolog, or the first step on the node) holds an
//! exclusive `flock` on `lock` from the check to the ready file, so one server starts however
//! many steps race. The server is started through `/bin/sh` (`server & echo $!`): it is
//! not a child of the Slurm process that started it, so it outlives the step, and it runs as
//! the job's user in its own process group, with a clean environment.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dimstore_host::process::{is_running, is_server, send, wait_gone};
use dimstore_host::server_files::{log_tail, read_ready};
use dimstore_proto::ReadyFile;
use rustix::fs::{flock, FlockOperation};
use rustix::process::Signal;

/// Lines of a server log quoted in errors.
const LOG_TAIL_LINES: usize = 10;

/// The job, as Slurm describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Job id.
    pub id: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's primary group id.
    pub gid: u32,
}

/// Why a node's server could not be set up, found or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    /// A file or directory operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A job directory exists but belongs to someone else (never used, never removed).
    #[error("{} belongs to uid {owner}, not to the job's user {uid}", path.display())]
    NotOwned {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The job's user.
        uid: u32,
    },
    /// The server could not be started.
    #[error("cannot start {}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The server exited before it was ready.
    #[error("the server exited before it was ready; last lines of {}:\n{tail}", log.display())]
    Exited {
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The server (or the lock held by whoever starts it) did not get ready in time.
    #[error("no server ready after {}s; last lines of {}:\n{tail}", waited.as_secs(), log.display())]
    Timeout {
        /// How long was waited.
        waited: Duration,
        /// Its log.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JobError {
    let path = path.to_path_buf();
    move |source| JobError::Io { what, path, source }
}

/// The job's directory on this node: `<runtime_dir>/job<id>` (what `DIMSTORE_RUNTIME_DIR`
/// names for the tasks).
pub fn job_dir(runtime_dir: &Path, job_id: u32) -> PathBuf {
    runtime_dir.join(format!("job{job_id}"))
}

/// The directory of one job's server on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDir {
    path: PathBuf,
}

impl NodeDir {
    /// `<runtime_dir>/job<id>/<host>` (not created).
    pub fn new(runtime_dir: &Path, job_id: u32, host: &str) -> NodeDir {
        NodeDir {
            path: job_dir(runtime_dir, job_id).join(host),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server's ready file.
    pub fn ready_file(&self) -> PathBuf {
        self.path.join("server.json")
    }

    /// The server's log.
    pub fn log_file(&self) -> PathBuf {
        self.path.join("server.log")
    }

    /// The fleet token the server was started with.
    pub fn token_file(&self) -> PathBuf {
        self.path.join("token")
    }

    fn pid_file(&self) -> PathBuf {
        self.path.join("server.pid")
    }

    fn lock_file(&self) -> PathBuf {
        self.path.join("lock")
    }

    /// Creates the runtime, job and node directories as needed. The runtime directory is
    /// shared by all users (1777, like /tmp); the others are the job user's, mode 0700. An
    /// existing job or node directory of another user is an error.
    ///
    /// # Errors
    /// See [`JobError`].
    pub fn create(&self, job: &Job) -> Result<(), JobError> {
        let job_dir = self.path.parent().unwrap_or(&self.path);
        let runtime = job_dir.parent().unwrap_or(job_dir);
        if !runtime.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(runtime)
                .map_err(io_error("cannot create", runtime))?;
            if is_root() {
                fs::set_permissions(runtime, fs::Permissions::from_mode(0o1777))
                    .map_err(io_error("cannot set the mode of", runtime))?;
            }
        }
        private_dir(job_dir, job)?;
        private_dir(&self.path, job)
    }

    /// The running server of this directory, if its ready file names a live server.
    pub fn running(&self) -> Option<ReadyFile> {
        let ready = read_ready(&self.ready_file())?;
        is_server(ready.pid).then_some(ready)
    }

    /// The token the server was started with.
    pub fn token(&self) -> Option<String> {
        let text = fs::read_to_string(self.token_file()).ok()?;
        Some(text.trim().to_owned()).filter(|t| !t.is_empty())
    }

    /// The server's log, last lines.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_file(), LOG_TAIL_LINES)
    }
}

/// Creates `path` (0700, owned by the job's user) or checks an existing one is the user's.
fn private_dir(path: &Path, job: &Job) -> Result<(), JobError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => chown(path, job),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(io_error("cannot inspect", path))?;
            if !meta.is_dir() || meta.uid() != job.uid {
                return Err(JobError::NotOwned {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    uid: job.uid,
                });
            }
            Ok(())
        }
        Err(e) => Err(io_error("cannot create", path)(e)),
    }
}

/// Gives `path` to the job's user (when running as root; otherwise it is the user's).
fn chown(path: &Path, job: &Job) -> Result<(), JobError> {
    if is_root() && job.uid != 0 {
        std::os::unix::fs::chown(path, Some(job.uid), Some(job.gid))
            .map_err(io_error("cannot give to the job's user", path))?;
    }
    Ok(())
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// How to start a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// The `dimstore-server` binary (a bare name is looked up in `PATH`).
    pub bin: PathBuf,
    /// Arguments beyond `--node`, `--listen` and `--ready-file`.
    pub args: Vec<String>,
    /// The fleet token, used unless the server already runs.
    pub token: String,
    /// `PATH` for the server.
    pub path_env: String,
    /// How long it may take to become ready (also bounds waiting for the lock).
    pub ready_timeout: Duration,
}

/// What [`ensure_server`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// The server was already running.
    Running(ReadyFile),
    /// It was started now.
    Started(ReadyFile),
}

impl Ensured {
    /// The server's ready file.
    pub fn ready(&self) -> &ReadyFile {
        match self {
            Ensured::Running(r) | Ensured::Started(r) => r,
        }
    }
}

/// Makes sure the job's server runs on this node (`host`): starts it unless it already
/// runs, under an exclusive lock, and waits until it is ready.
///
/// # Errors
/// See [`JobError`]; a server that does not get ready in time is killed.
pub fn ensure_server(
    dir: &NodeDir,
    job: &Job,
    host: &str,
    spec: &ServerSpec,
) -> Result<Ensured, JobError> {
    dir.create(job)?;
    let deadline = Instant::now() + spec.ready_timeout;
    let _lock = lock_exclusive(&dir.lock_file(), job, deadline).map_err(|e| match e {
        LockError::Io(source) => io_error("cannot lock", &dir.lock_file())(source),
        LockError::Timeout => JobError::Timeout {
            waited: spec.ready_timeout,
            log: dir.log_file(),
            tail: dir.log_tail(),
        },
    })?;
    if let Some(ready) = dir.running() {
        return Ok(Ensured::Running(ready));
    }
    let _ = fs::remove_file(dir.ready_file());
    write_private(&dir.token_file(), job, spec.token.as_bytes())?;
    let pid = spawn_detached(dir, job, host, spec)?;
    write_private(&dir.pid_file(), job, format!("{pid}\n").as_bytes())?;
    loop {
        if let Some(ready) = read_ready(&dir.ready_file()).filter(|r| r.pid == pid) {
            return Ok(Ensured::Started(ready));
        }
        if !is_running(pid) {
            return Err(JobError::Exited {
                log: dir.log_file(),
                tail: dir.log_tail(),
            });
        }
        if Instant::now() >= deadline {
            let _ = send(pid, Signal::Kill);
            return Err(JobError::Timeout {
                waited: spec.ready_timeout,
                log: dir.log_file(),
                tail: dir.log_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts the server through `/bin/sh` so that it is nobody's child; returns its pid.
fn spawn_detached(
    dir: &NodeDir,
    job: &Job,
    host: &str,
    spec: &ServerSpec,
) -> Result<u32, JobError> {
    let log_path = dir.log_file();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(io_error("cannot open", &log_path))?;
    chown(&log_path, job)?;
    let spawn_error = |source| JobError::Spawn {
        bin: spec.bin.clone(),
        source,
    };
    let mut command = Command::new("/bin/sh");
    command
        // The server's stdout is /dev/null; the shell's is the pipe that returns the pid.
        .args(["-c", "\"$@\" >/dev/null & echo $!", "dimstore-spank"])
        .arg(&spec.bin)
        .args(["--node", host, "--listen", "0.0.0.0:0", "--ready-file"])
        .arg(dir.ready_file())
        .args(&spec.args)
        .env_clear()
        .env("PATH", &spec.path_env)
        .env("DIMSTORE_TOKEN", &spec.token)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: signals aimed at the step's group do not reach it.
        .process_group(0);
    crate::signals::clean_signal_state(&mut command);
    if is_root() && job.uid != 0 {
        // std also drops the supplementary groups when it changes the uid as root.
        command.uid(job.uid).gid(job.gid);
    }
    let mut shell = command.spawn().map_err(spawn_error)?;
    let mut out = String::new();
    if let Some(mut stdout) = shell.stdout.take() {
        stdout.read_to_string(&mut out).map_err(spawn_error)?;
    }
    let status = shell.wait().map_err(spawn_error)?;
    match out.trim().parse::<u32>() {
        Ok(pid) if status.success() && pid > 0 => Ok(pid),
        _ => Err(spawn_error(io::Error::other(format!(
            "/bin/sh ({status}) did not start it"
        )))),
    }
}

/// Writes a file only the job's user may read.
fn write_private(path: &Path, job: &Job, bytes: &[u8]) -> Result<(), JobError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("cannot write", path))?;
    file.write_all(bytes)
        .map_err(io_error("cannot write", path))?;
    chown(path, job)
}

enum LockError {
    Io(io::Error),
    Timeout,
}

/// An exclusive `flock` on `path`, polled until `deadline`; released when the file closes.
fn lock_exclusive(path: &Path, job: &Job, deadline: Instant) -> Result<File, LockError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(LockError::Io)?;
    let _ = chown(path, job);
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(LockError::Timeout),
            Err(e) => return Err(LockError::Io(e.into())),
        }
    }
}

/// Waits until the node's server is ready (another process may be starting it).
///
/// # Errors
/// [`JobError::Timeout`] with the log's last lines.
pub fn wait_ready(dir: &NodeDir, timeout: Duration) -> Result<ReadyFile, JobError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(ready) = dir.running() {
            return Ok(ready);
        }
        if Instant::now() >= deadline {
            return Err(JobError::Timeout {
                waited: timeout,
                log: dir.log_file(),
                tail: dir.log_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What [`stop_server`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// No server of this job ran on the node.
    NotRunning,
    /// It stopped on SIGTERM.
    Terminated,
    /// It had to be killed.
    Killed,
}

/// Stops the node's server (SIGTERM, SIGKILL after `grace`), then removes its directory and
/// the job directory if nothing else is left in it.
pub fn stop_server(dir: &NodeDir, grace: Duration) -> Stopped {
    let mut pids: Vec<u32> = read_ready(&dir.ready_file())
        .map(|r| r.pid)
        .into_iter()
        .collect();
    if let Some(pid) = fs::read_to_string(dir.pid_file())
        .ok()
        .and_then(|t| t.trim().parse().ok())
    {
        pids.push(pid);
    }
    pids.sort_unstable();
    pids.dedup();
    // Only pids that still name a dimstore server (pids are reused).
    pids.retain(|&p| is_server(p));
    let outcome = if pids.is_empty() {
        Stopped::NotRunning
    } else {
        for &pid in &pids {
            let _ = send(pid, Signal::Term);
        }
        if wait_gone(&pids, grace).is_empty() {
            Stopped::Terminated
        } else {
            for &pid in pids.iter().filter(|&&p| is_server(p)) {
                let _ = send(pid, Signal::Kill);
            }
            wait_gone(&pids, Duration::from_secs(2));
            Stopped::Killed
        }
    };
    let _ = fs::remove_dir_all(dir.path());
    if let Some(job_dir) = dir.path().parent() {
        // Only if empty: other nodes' directories may share it.
        let _ = fs::remove_dir(job_dir);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Job {
        Job {
            id: 7,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
        }
    }

    fn spec(bin: &Path) -> ServerSpec {
        ServerSpec {
            bin: bin.to_path_buf(),
            args: Vec::new(),
            token: dimstore_host::new_token(),
            path_env: "/usr/bin:/bin".into(),
            ready_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn layout_is_per_job_and_host() {
        let dir = NodeDir::new(Path::new("/r"), 42, "n1");
        assert_eq!(dir.path(), Path::new("/r/job42/n1"));
        assert_eq!(dir.ready_file(), Path::new("/r/job42/n1/server.json"));
        assert_eq!(job_dir(Path::new("/r"), 42), Path::new("/r/job42"));
    }

    #[test]
    fn directories_are_private_and_reused() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = NodeDir::new(&root.path().join("rt"), 1, "n1");
        dir.create(&me()).expect("create");
        dir.create(&me()).expect("again");
        let mode = fs::metadata(dir.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let other = Job {
            uid: me().uid + 1,
            ..me()
        };
        assert!(matches!(dir.create(&other), Err(JobError::NotOwned { .. })));
        assert_eq!(
            stop_server(&dir, Duration::from_millis(10)),
            Stopped::NotRunning
        );
        assert!(!dir.path().exists());
        assert!(!dir.path().parent().expect("job dir").exists());
    }

    #[test]
    fn a_server_that_dies_at_once_is_reported_with_its_log() {
        let root = tempfile::tempdir().expect("tempdir");
        let script = root.path().join("fake-server");
        fs::write(&script, "#!/bin/sh\necho 'bad option' >&2\nexit 3\n").expect("script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = NodeDir::new(&root.path().join("rt"), 2, "n1");
        let err = ensure_server(&dir, &me(), "n1", &spec(&script)).expect_err("exits");
        assert!(matches!(err, JobError::Exited { .. }), "{err}");
        assert!(err.to_string().contains("bad option"), "{err}");
        assert_eq!(dir.token().map(|t| t.len()), Some(32));
    }

    #[test]
    fn a_server_that_never_gets_ready_is_killed() {
        let root = tempfile::tempdir().expect("tempdir");
        let script = root.path().join("slow-server");
        fs::write(&script, "#!/bin/sh\necho waiting >&2\nexec sleep 30\n").expect("script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
        let dir = NodeDir::new(&root.path().join("rt"), 3, "n1");
        let mut spec = spec(&script);
        spec.ready_timeout = Duration::from_millis(300);
        let err = ensure_server(&dir, &me(), "n1", &spec).expect_err("timeout");
        assert!(matches!(err, JobError::Timeout { .. }), "{err}");
        let pid: u32 = fs::read_to_string(dir.pid_file())
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        assert!(
            wait_gone(&[pid], Duration::from_secs(5)).is_empty(),
            "pid {pid} survived"
        );
    }
}
