//! Throughput: several client *processes* hammering one server with small gets.
//!
//! The bench re-executes itself as `dimstore-bench worker ...` once per client. Each worker
//! connects, loads its own objects, prints `ready`, waits for `go` on stdin (so all clients
//! start together), runs for a bounded time and count, and prints a [`WorkerResult`] as one
//! JSON line. Workers inherit the bench's CPU mask, i.e. the placement's client CPUs.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::contenders::{connect, pattern, this_program, Contender, ContenderKind, Op};
use crate::measure::{timed_loop, Bounds, Latencies};
use crate::options::{parse_duration, Settings};
use crate::placement::Placement;
use crate::report::Row;

/// How long workers may take to connect and load their objects.
const SETUP_LIMIT: Duration = Duration::from_secs(30);

/// Arguments of the hidden `worker` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Contender to connect to.
    #[arg(long, value_enum)]
    pub contender: ContenderKind,
    /// Its address.
    #[arg(long)]
    pub address: String,
    /// Operation: get or get_batch.
    #[arg(long, value_enum)]
    pub op: Op,
    /// Object size.
    #[arg(long)]
    pub size: u64,
    /// Objects loaded (and fetched per get_batch).
    #[arg(long)]
    pub batch: usize,
    /// How long to run.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Duration,
    /// Most round trips to make.
    #[arg(long, default_value_t = 100_000_000)]
    pub max_round_trips: usize,
}

/// What a worker reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Objects fetched.
    pub objects: u64,
    /// Wall-clock seconds of the timed loop.
    pub elapsed_s: f64,
    /// Sum of round-trip times, seconds.
    pub busy_s: f64,
    /// Round-trip latencies, hdrhistogram V2.
    pub histogram: Vec<u8>,
}

/// Runs one worker (the `worker` subcommand).
pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    let mut client = connect(args.contender, &args.address)?;
    client.load(&pattern(args.size as usize), args.batch)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        // The bench gave up on this measurement.
        return Ok(());
    }
    let per_call = if args.op == Op::GetBatch {
        args.batch
    } else {
        1
    };
    let bounds = Bounds {
        warmup: 10,
        iterations: args.max_round_trips,
        time: args.duration,
    };
    let start = Instant::now();
    let latencies = match args.op {
        Op::Get => timed_loop(bounds, |i| client.get(i).map(drop), || Ok(()))?,
        Op::GetBatch => timed_loop(bounds, |_| client.get_batch().map(drop), || Ok(()))?,
        other => bail!("{} is not a throughput operation", other.name()),
    };
    let elapsed = start.elapsed();
    let result = WorkerResult {
        objects: latencies.count() * per_call as u64,
        elapsed_s: elapsed.as_secs_f64(),
        busy_s: latencies.busy().as_secs_f64(),
        histogram: latencies.encode()?,
    };
    writeln!(stdout, "{}", serde_json::to_string(&result)?)?;
    stdout.flush()?;
    client.load(&[], 0)
}

/// Number of measurements [`run`] makes.
pub fn planned(settings: &Settings, kinds: &[ContenderKind]) -> u64 {
    let ops: usize = kinds.iter().map(|k| k.throughput_ops().len()).sum();
    (ops * settings.client_counts.len()) as u64
}

/// Measures every throughput operation of every contender for each client count.
pub fn run(
    settings: &Settings,
    placement: Placement,
    contenders: &[Box<dyn Contender>],
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &clients in &settings.client_counts {
        for contender in contenders {
            let kind = contender.kind();
            for &op in kind.throughput_ops() {
                progress.set_message(format!(
                    "{} throughput: {} {} x{clients}",
                    placement.name(),
                    kind.name(),
                    op.name()
                ));
                let (latencies, rate) = measure(settings, contender.as_ref(), op, clients)
                    .with_context(|| {
                        format!("{} {} with {clients} clients", kind.name(), op.name())
                    })?;
                rows.push(Row::throughput(
                    placement,
                    kind,
                    op,
                    settings.throughput_size,
                    clients,
                    &latencies,
                    rate,
                ));
                progress.inc(1);
            }
        }
    }
    Ok(rows)
}

/// Runs `clients` workers together; returns their merged latencies and total objects/s.
fn measure(
    settings: &Settings,
    contender: &dyn Contender,
    op: Op,
    clients: usize,
) -> anyhow::Result<(Latencies, f64)> {
    let mut workers = Workers::default();
    let (tx, rx) = mpsc::channel();
    let exe = this_program()?;
    for index in 0..clients {
        let mut child = Command::new(&exe)
            .arg("worker")
            .args(["--contender", contender.kind().name()])
            .args(["--address", contender.address()])
            .args(["--op", op.name()])
            .args(["--size", &settings.throughput_size.to_string()])
            .args(["--batch", &settings.batch.to_string()])
            .args([
                "--duration",
                &format!("{}ms", settings.duration.as_millis()),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        });
        workers.stdin.push(child.stdin.take());
        workers.children.push(child);
    }
    drop(tx);
    expect_lines(&rx, clients, SETUP_LIMIT, |_, line| {
        if line == "ready" {
            Ok(())
        } else {
            bail!("worker said {line:?} instead of ready")
        }
    })?;
    for stdin in workers.stdin.iter_mut().flatten() {
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    let mut merged = Latencies::default();
    let mut rate = 0.0;
    expect_lines(&rx, clients, settings.duration + SETUP_LIMIT, |_, line| {
        let result: WorkerResult =
            serde_json::from_str(&line).with_context(|| format!("worker said {line:?}"))?;
        let latencies =
            Latencies::decode(&result.histogram, Duration::from_secs_f64(result.busy_s))?;
        merged.merge(&latencies)?;
        if result.elapsed_s > 0.0 {
            rate += result.objects as f64 / result.elapsed_s;
        }
        Ok(())
    })?;
    workers.finish()?;
    Ok((merged, rate))
}

/// Takes `count` lines from the workers within `limit`, one per worker.
fn expect_lines(
    rx: &Receiver<(usize, String)>,
    count: usize,
    limit: Duration,
    mut each: impl FnMut(usize, String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for _ in 0..count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((index, line)) => each(index, line)?,
            Err(RecvTimeoutError::Timeout) => bail!("workers did not answer within {limit:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("a worker exited early (see stderr)"),
        }
    }
    Ok(())
}

/// Worker processes, killed if a measurement is abandoned.
#[derive(Default)]
struct Workers {
    children: Vec<Child>,
    stdin: Vec<Option<ChildStdin>>,
}

impl Workers {
    /// Waits for every worker to exit successfully (bounded).
    fn finish(mut self) -> anyhow::Result<()> {
        self.stdin.clear();
        let deadline = Instant::now() + SETUP_LIMIT;
        for child in &mut self.children {
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!("a worker failed: {status}");
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("a worker did not exit");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
