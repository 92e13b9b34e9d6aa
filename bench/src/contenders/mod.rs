//! The systems under test, behind two small traits: a [`Contender`] is a running server the
//! bench started (and stops when dropped), a [`Client`] one connection to it.
//!
//! Clients are made both in the bench process (latency) and in worker processes
//! (throughput), which know only the contender's kind and address: see [`connect`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod dimstore;
pub mod raw_tcp;
pub mod redis;

/// Which system a contender is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ContenderKind {
    /// A `dimstore-server` over its TCP transport (even on the server's node).
    Dimstore,
    /// A `dimstore-server` through the client's same-node path: a Unix socket, and gets
    /// map the server's memory instead of copying it through a socket.
    DimstoreLocal,
    /// A minimal TCP request/reply server: the limit of anything over loopback TCP.
    RawTcp,
    /// `redis-server` spoken to in RESP2.
    Redis,
}

impl ContenderKind {
    /// Every contender, in report order.
    pub const ALL: [ContenderKind; 4] = [
        ContenderKind::Dimstore,
        ContenderKind::DimstoreLocal,
        ContenderKind::RawTcp,
        ContenderKind::Redis,
    ];

    /// The name used in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            ContenderKind::Dimstore => "dimstore",
            ContenderKind::DimstoreLocal => "dimstore_local",
            ContenderKind::RawTcp => "raw_tcp",
            ContenderKind::Redis => "redis",
        }
    }

    /// Operations measured for latency.
    pub fn latency_ops(self) -> &'static [Op] {
        match self {
            ContenderKind::RawTcp => &[Op::Put, Op::Get, Op::Stream],
            _ => &[Op::Put, Op::Get],
        }
    }

    /// Operations measured for throughput (raw TCP is there as the limit of single gets).
    pub fn throughput_ops(self) -> &'static [Op] {
        match self {
            ContenderKind::RawTcp => &[Op::Get],
            _ => &[Op::Get, Op::GetBatch],
        }
    }
}

/// A measured operation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Op {
    /// Store one object (dimstore put, redis SET, raw: send N bytes, get an ack).
    Put,
    /// Fetch one object (dimstore get, redis GET, raw: ask, receive N bytes).
    Get,
    /// Fetch a batch of objects in one round trip (dimstore get_batch, redis MGET).
    GetBatch,
    /// Raw TCP only: a one-way stream of N bytes read in reused chunks (loopback bandwidth).
    Stream,
}

impl Op {
    /// The name used in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetBatch => "get_batch",
            Op::Stream => "stream",
        }
    }
}

/// How contenders' servers are started.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// `dimstore-server` binary.
    pub dimstore_bin: PathBuf,
    /// dimstore server worker threads.
    pub dimstore_threads: usize,
    /// `redis-server` binary.
    pub redis_bin: PathBuf,
    /// Largest object that will be stored (sizes memory limits).
    pub max_object: u64,
}

/// A running server the bench started; stopped when dropped.
pub trait Contender: Send {
    /// Which system this is.
    fn kind(&self) -> ContenderKind;
    /// The address clients connect to.
    fn address(&self) -> &str;
    /// Opens a client connection.
    fn connect(&self) -> anyhow::Result<Box<dyn Client>> {
        connect(self.kind(), self.address())
    }
}

/// One client connection. Objects are *loaded* (untimed) before gets, and what timed puts
/// stored is *discarded* (untimed) after each, so every contender does the same work.
pub trait Client {
    /// Replaces the loaded objects by `count` copies of `value` (none: `count` = 0).
    fn load(&mut self, value: &[u8], count: usize) -> anyhow::Result<()>;
    /// Stores `value` (timed).
    fn put(&mut self, value: &[u8]) -> anyhow::Result<()>;
    /// Frees what the last puts stored (untimed).
    fn discard(&mut self) -> anyhow::Result<()>;
    /// Fetches loaded object `index`; returns its length.
    fn get(&mut self, index: usize) -> anyhow::Result<usize>;
    /// Fetches every loaded object in one round trip; returns the total length.
    fn get_batch(&mut self) -> anyhow::Result<usize>;
    /// Receives a one-way stream of `len` bytes; returns the length received.
    fn stream(&mut self, len: u64) -> anyhow::Result<u64> {
        let _ = len;
        bail!("this contender has no stream operation")
    }
}

/// Starts the server of `kind`; it runs under the calling thread's CPU mask.
pub fn start(kind: ContenderKind, setup: &ServerSetup) -> anyhow::Result<Box<dyn Contender>> {
    Ok(match kind {
        ContenderKind::Dimstore | ContenderKind::DimstoreLocal => {
            Box::new(dimstore::DimstoreServer::start(kind, setup)?)
        }
        ContenderKind::RawTcp => Box::new(raw_tcp::RawServer::start()?),
        ContenderKind::Redis => Box::new(redis::RedisServer::start(setup)?),
    })
}

/// Why `kind` cannot run here (the caller notes it and goes on without it), if it cannot.
pub fn unavailable(kind: ContenderKind, setup: &ServerSetup) -> Option<String> {
    match kind {
        ContenderKind::Redis if !redis::installed(&setup.redis_bin) => Some(format!(
            "{} not found: the redis contender is skipped (apt-get install redis-server)",
            setup.redis_bin.display()
        )),
        _ => None,
    }
}

/// Connects a client of `kind` to `address`.
pub fn connect(kind: ContenderKind, address: &str) -> anyhow::Result<Box<dyn Client>> {
    Ok(match kind {
        ContenderKind::Dimstore => Box::new(dimstore::DimstoreClient::connect(
            address,
            ::dimstore::LocalMode::Off,
        )?),
        ContenderKind::DimstoreLocal => Box::new(dimstore::DimstoreClient::connect(
            address,
            ::dimstore::LocalMode::Map,
        )?),
        ContenderKind::RawTcp => Box::new(raw_tcp::RawClient::connect(address)?),
        ContenderKind::Redis => Box::new(redis::RedisClient::connect(address)?),
    })
}

/// Runs `check` every few milliseconds until it yields a value or `limit` passes.
pub(crate) fn poll_until<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `program` found in `PATH` (or as given, if it is a path to a file).
pub(crate) fn find_program(program: impl AsRef<Path>) -> Option<PathBuf> {
    let given = program.as_ref();
    if given.components().count() > 1 {
        return given.is_file().then(|| given.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(given))
        .find(|p| p.is_file())
}

/// This very program: `/proc/self/exe` runs the same binary even if the file was replaced
/// (rebuilt) since the bench started; elsewhere, the program's path.
pub(crate) fn this_program() -> anyhow::Result<std::path::PathBuf> {
    let proc = std::path::PathBuf::from("/proc/self/exe");
    if proc.exists() {
        return Ok(proc);
    }
    std::env::current_exe().context("cannot find this program's path")
}

/// A free loopback TCP port (bound and released: a tiny race, fine on a bench machine).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind loopback")?;
    Ok(listener.local_addr()?.port())
}

/// Stops a child process: SIGTERM, a grace period, then SIGKILL; always reaped.
pub(crate) fn stop_child(child: &mut std::process::Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `len` bytes of generated object contents (any fixed pattern will do).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) >> 3) as u8).collect()
}
