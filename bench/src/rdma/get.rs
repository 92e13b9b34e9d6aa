//! dimstore gets across "nodes": two `dimstore-server`s on this machine with different
//! `--node` names (so the client's same-node mapping is never used), and a client process
//! (the hidden `rdma-get` subcommand) whose node is the first server's: it puts each object
//! on the other server over TCP, then times gets of it.
//!
//! The client takes its transport from the environment the bench gives it
//! (`DIMSTORE_TRANSPORT`, `DIMSTORE_ONE_SIDED_FROM`, `UCX_TLS`, `DIMSTORE_OFI_PROVIDER`...)
//! through `ClientConfig::from_env`, as any application would; UCX and libfabric read their
//! environment once per process, hence one process per row. After each size it asks the
//! owner for its per-transport statistics: the growth of `one_sided_bytes` tells whether
//! the gets really were one-sided.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context};
use clap::Args;
use dimstore::{ClientConfig, LocalMode, SpawnPolicy, Store};
use dimstore_proto::ReadyFile;
use serde::{Deserialize, Serialize};

use crate::contenders::dimstore::{touch_pages, wait_ready};
use crate::contenders::{pattern, stop_child};
use crate::measure::{timed_loop, Bounds};
use crate::options::{parse_duration, parse_size};

/// Options of the hidden `rdma-get` subcommand.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The client's own node's server (its home).
    #[arg(long)]
    pub home: String,
    /// The server on the other node that owns the objects.
    #[arg(long)]
    pub remote: String,
    /// This client's node name (the home server's).
    #[arg(long)]
    pub node: String,
    /// Transport whose statistics row counts one-sided bytes (`ucx`, `ofi`; `tcp`: none).
    #[arg(long)]
    pub stats_row: String,
    /// Object sizes.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, required = true)]
    pub sizes: Vec<u64>,
    /// Longest time spent timing one size.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub cell_time: Duration,
}

/// What the `rdma-get` process prints per size (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetResult {
    /// Object size.
    pub size: u64,
    /// Gets timed.
    pub count: u64,
    /// Median get, us.
    pub median_us: f64,
    /// 99th percentile get, us.
    pub p99_us: f64,
    /// Growth of the owner's `one_sided_bytes` for the row's transport during this size.
    pub one_sided_bytes: u64,
}

/// Iterations for one size: about 1 GiB moved, within [5, 5000].
pub(crate) fn iterations(size: u64) -> usize {
    ((1u64 << 30) / size.max(1)).clamp(5, 5000) as usize
}

/// Runs the client (the `rdma-get` subcommand).
pub fn client(args: &GetArgs) -> anyhow::Result<()> {
    let config = ClientConfig {
        node: Some(args.node.clone()),
        local: LocalMode::Off,
        spawn: SpawnPolicy::Never,
        timeout: Duration::from_secs(120),
        trusted: vec![args.remote.clone(), args.home.clone()],
        ..ClientConfig::from_env().map_err(|e| anyhow!(e))?
    };
    let putter = Store::connect(&args.remote, config.clone())
        .with_context(|| format!("cannot connect to {}", args.remote))?;
    let getter = Store::connect(&args.home, config)
        .with_context(|| format!("cannot connect to {}", args.home))?;
    let mut out = std::io::stdout().lock();
    for &size in &args.sizes {
        let value = pattern(usize::try_from(size)?);
        let key = putter.put(&value).context("put")?;
        let before = one_sided_bytes(&getter, &args.remote, &args.stats_row)?;
        // Untimed: the first get, checked (and connection, registration warm-up).
        let first = getter.get(&key).context("get")?;
        ensure!(first[..] == value[..], "get {size} B: the bytes differ");
        drop(first);
        let bounds = Bounds {
            warmup: 1,
            iterations: iterations(size),
            time: args.cell_time,
        };
        let latencies = timed_loop(
            bounds,
            |_| {
                let bytes = getter.get(&key)?;
                touch_pages(&bytes);
                ensure!(bytes.len() as u64 == size, "short get");
                Ok(())
            },
            || Ok(()),
        )?;
        let after = one_sided_bytes(&getter, &args.remote, &args.stats_row)?;
        putter.evict(&key).context("evict")?;
        let result = GetResult {
            size,
            count: latencies.count(),
            median_us: latencies.median_us(),
            p99_us: latencies.p99_us(),
            one_sided_bytes: after.saturating_sub(before),
        };
        writeln!(out, "{}", serde_json::to_string(&result)?)?;
        out.flush()?;
    }
    Ok(())
}

/// The owner's `one_sided_bytes` for transport `row` (0 if it has no such row).
fn one_sided_bytes(store: &Store, owner: &str, row: &str) -> anyhow::Result<u64> {
    let stats = store.stats_of(owner).context("stats")?;
    Ok(stats
        .transports
        .iter()
        .filter(|t| t.name == row)
        .map(|t| t.one_sided_bytes)
        .sum())
}

/// A `dimstore-server` for one row (or for `dimstore-bench zero-copy`), with its own runtime
/// directory and log; stopped when dropped (and by itself if the bench dies:
/// `--exit-with-parent`).
pub struct RowServer {
    child: Child,
    /// Its ready file.
    pub ready: ReadyFile,
    dir: tempfile::TempDir,
}

impl RowServer {
    /// Starts `bin` as node `node` on 127.0.0.1 with `env` and, if given,
    /// `--one-sided <one_sided>` and `--threads <threads>` (else the server's default);
    /// waits (at most 30 s) for its ready file.
    pub fn start(
        bin: &Path,
        node: &str,
        one_sided: Option<&str>,
        env: &[(String, String)],
        largest: u64,
        threads: Option<usize>,
    ) -> anyhow::Result<RowServer> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let ready_path = dir.path().join("ready.json");
        let log_path = dir.path().join("server.log");
        let log = File::create(&log_path)?;
        let memory_mib = (largest.saturating_mul(3) >> 20).max(512);
        let mut command = Command::new(bin);
        command
            .args(["--listen", "127.0.0.1:0", "--node", node, "--log", "warn"])
            .arg("--memory-limit")
            .arg(format!("{memory_mib}MiB"))
            .arg("--ready-file")
            .arg(&ready_path)
            .arg("--runtime-dir")
            .arg(dir.path())
            .arg("--exit-with-parent")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(one_sided) = one_sided {
            command.arg("--one-sided").arg(one_sided);
        }
        if let Some(threads) = threads {
            command.arg("--threads").arg(threads.to_string());
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let ready = wait_ready(&mut child, &ready_path, Duration::from_secs(30), |status| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow!(
                "dimstore-server ({node}) exited ({status}) before it was ready: {}",
                log.trim()
            )
        })?;
        Ok(RowServer { child, ready, dir })
    }

    /// The server's log so far (for error messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for RowServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(2));
    }
}

/// Deadline for one size's answer from the `rdma-get` process: its time bound plus room
/// for the put, the checked first get and a slow start.
pub fn size_deadline(cell_time: Duration, size: u64) -> Instant {
    // 128 MiB over a slow path may take ~1 s per transfer; the loop's count bound is 5.
    let per_transfer = Duration::from_secs_f64((size as f64 / 50e6).max(0.01));
    Instant::now() + cell_time + per_transfer * 10 + Duration::from_secs(30)
}
