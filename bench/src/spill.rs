//! `dimstore-bench spill`: memory pressure. Spill write and restore bandwidth next to the raw
//! disk (`dd oflag=direct` and `dd iflag=direct` on the same directory, in the same run),
//! and the latency of a hot 4 KiB get while the server spills, next to the same get idle.
//!
//! Each round writes with `dd` right before and right after the spilling server and
//! compares with their mean, and reads the file written before (restores read objects
//! written a while before too). One server of `--memory` bytes with `--spill-dir` under `--dir` takes
//! `--total` bytes of `--object`-sized puts from one connection while a second connection reads a hot 4 KiB
//! object in a loop; then every object is read back and checked byte for byte. The server
//! and the clients are pinned to fixed CPUs (`--server-cpus`, `--client-cpus`) for the
//! whole run. A control run then puts the same objects into a server with room for all of
//! them (no spilling), timing the same hot get, so the cost of the put traffic itself and
//! the cost of spilling show apart. Every loop is bounded by the object count.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use dimstore::{ClientConfig, Key, LocalMode, SpawnPolicy, Store};
use dimstore_proto::PressureStats;

use crate::contenders::dimstore::wait_ready;
use crate::contenders::stop_child;
use crate::measure::Latencies;
use crate::placement::Pinned;

const MIB: u64 = 1 << 20;

/// Options of `dimstore-bench spill`.
#[derive(Debug, Clone, Args)]
pub struct SpillArgs {
    /// Directory the spill files and the `dd` file go to (a node-local disk, not tmpfs:
    /// `dd oflag=direct` needs direct I/O).
    #[arg(long, default_value = "/var/tmp")]
    pub dir: PathBuf,
    /// The server's memory limit.
    #[arg(long, default_value = "256MiB")]
    pub memory: bytesize::ByteSize,
    /// Bytes put in all (several times the memory limit).
    #[arg(long, default_value = "768MiB")]
    pub total: bytesize::ByteSize,
    /// Size of each put object.
    #[arg(long, default_value = "1MiB")]
    pub object: bytesize::ByteSize,
    /// Hot gets timed while idle.
    #[arg(long, default_value_t = 2000)]
    pub idle_gets: usize,
    /// Pace the putter to this many bytes per second (a producer that computes between
    /// puts) instead of putting as fast as the server takes them.
    #[arg(long)]
    pub put_rate: Option<bytesize::ByteSize>,
    /// Rounds (each: `dd`, the spilling server, the control server); the table gives every
    /// round and the median, because one round on a shared machine is noise.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// CPUs the server runs on (`none`: not pinned).
    #[arg(long, default_value = "1")]
    pub server_cpus: String,
    /// CPUs the clients (putter and hot getter) run on (`none`: not pinned).
    #[arg(long, default_value = "0")]
    pub client_cpus: String,
    /// The server binary. [default: dimstore-server next to this program]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    /// `dd` write, mean of before and after the spilling server (MB/s).
    dd_write: f64,
    /// `dd` read of the file written before the spilling server, read after it.
    dd_read: f64,
    /// `dd` read of a file right after it was written.
    dd_read_fresh: f64,
    put_wall: f64,
    get_wall: f64,
    idle: Latencies,
    busy: Latencies,
    /// The server's pressure counters after the first read-back.
    pressure: PressureStats,
    /// The second read-back.
    reads_only: ReadsOnly,
    /// The control: the same puts into a server with room for all of them (no spilling).
    control: Control,
}

/// The second read-back: restore traffic with no spill writes beside it.
#[derive(Debug, Default)]
struct ReadsOnly {
    read: u64,
    read_ns: u64,
    written: u64,
}

/// The control run: hot gets while the same puts go to a server that does not spill.
#[derive(Debug, Default)]
struct Control {
    put_wall: f64,
    idle: Latencies,
    busy: Latencies,
}

/// Runs the spill benchmark and prints its table.
pub fn run(args: &SpillArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir_in(&args.dir)
        .with_context(|| format!("cannot create a directory in {}", args.dir.display()))?;
    let total = args.total.as_u64();
    let object = args.object.as_u64().max(1);
    let count = total / object;
    ensure!(count > 0, "--total must hold at least one --object");
    let total_mib = count * object / MIB;
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => crate::options::default_server_bin()?,
    };
    let start_server = |spill: Option<&Path>, memory: u64| {
        let _pinned = Pinned::to(cpus(&args.server_cpus)?.as_deref())?;
        SpillServer::start(&bin, memory, spill)
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        // The disk's rate drifts (a virtual disk's host cache fills and drains): `dd` writes
        // right before and right after the spilling server, and the ratio is to their mean.
        // Restores read objects written a while before, so `dd` reads the file it wrote
        // before the spilling server, after it; a file read right after it was written (the
        // second one) is shown too, as the disk's best case.
        eprintln!("spill: round {round}: dd oflag=direct, {total_mib} MiB");
        let older = root.path().join("dd-before.bin");
        let write_before = dd_write(&older, total_mib)?;
        let spill = root.path().join(format!("spill-{round}"));
        let server = start_server(Some(&spill), args.memory.as_u64())?;
        let pinned = Pinned::to(cpus(&args.client_cpus)?.as_deref())?;
        let mut measured = measure(&server, args, count, object)?;
        drop(server);
        eprintln!("spill: round {round}: dd oflag=direct and iflag=direct again");
        let fresh = root.path().join("dd-after.bin");
        let write_after = dd_write(&fresh, total_mib)?;
        measured.dd_read_fresh = dd_read(&fresh, total_mib)?;
        measured.dd_read = dd_read(&older, total_mib)?;
        measured.dd_write = (write_before + write_after) / 2.0;
        eprintln!("spill: round {round}: control, the same puts into a server with room for all");
        let roomy = start_server(None, total + args.memory.as_u64())?;
        measured.control = measure_control(&roomy, args, count, object)?;
        drop(roomy);
        drop(pinned);
        rounds.push(measured);
    }
    print_table(args, count * object, &rounds);
    Ok(())
}

fn cpus(list: &str) -> anyhow::Result<Option<Vec<usize>>> {
    if list == "none" {
        return Ok(None);
    }
    let cpus = list
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("CPU list {list}: expected `none` or a list like 0,1"))?;
    Ok(Some(cpus))
}

/// Raw disk write and read bandwidth (MB/s) of `dd` with direct I/O, 1 MiB blocks.
fn dd(args: &[String], mib: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let out = Command::new("dd")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .context("cannot run dd")?;
    let took = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "dd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((mib * MIB) as f64 / 1e6 / took)
}

/// Writes `mib` MiB of zeros to `file` with direct I/O in 1 MiB blocks: MB/s.
fn dd_write(file: &Path, mib: u64) -> anyhow::Result<f64> {
    dd(
        &[
            "if=/dev/zero".into(),
            format!("of={}", file.display()),
            "bs=1M".into(),
            format!("count={mib}"),
            "oflag=direct".into(),
        ],
        mib,
    )
}

/// Reads `file` (`mib` MiB) with direct I/O in 1 MiB blocks, then removes it: MB/s.
fn dd_read(file: &Path, mib: u64) -> anyhow::Result<f64> {
    let rate = dd(
        &[
            format!("if={}", file.display()),
            "of=/dev/null".into(),
            "bs=1M".into(),
            "iflag=direct".into(),
        ],
        mib,
    )?;
    std::fs::remove_file(file)?;
    Ok(rate)
}

/// A `dimstore-server` with a spill directory, stopped on drop.
struct SpillServer {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl SpillServer {
    /// A server of `memory` bytes spilling to `spill` (none: refusing puts when full).
    fn start(bin: &Path, memory: u64, spill: Option<&Path>) -> anyhow::Result<SpillServer> {
        let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
        let ready_path = dir.path().join("ready.json");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(bin);
        if let Some(spill) = spill {
            command.arg("--spill-dir").arg(spill);
        }
        let mut child = command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--node",
                "spill-bench",
                "--log",
                "warn",
            ])
            .arg("--memory-limit")
            .arg(memory.to_string())
            .arg("--segment-size")
            .arg(memory.to_string())
            .arg("--ready-file")
            .arg(&ready_path)
            .arg("--runtime-dir")
            .arg(dir.path())
            .arg("--exit-with-parent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let ready = wait_ready(&mut child, &ready_path, Duration::from_secs(30), |status| {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            anyhow::anyhow!("dimstore-server exited ({status}) before it was ready: {log}")
        })?;
        Ok(SpillServer {
            child,
            address: ready.address,
            _dir: dir,
        })
    }

    /// A connection of its own (each `Store` opens its own).
    fn connect(&self) -> anyhow::Result<Store> {
        let config = ClientConfig {
            local: LocalMode::Off,
            spawn: SpawnPolicy::Never,
            timeout: Duration::from_secs(120),
            ..ClientConfig::default()
        };
        Ok(Store::connect(&self.address, config)?)
    }
}

impl Drop for SpillServer {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// Object `i`: `base` with its index in the first 8 bytes.
fn object_bytes(base: &[u8], i: u64) -> Vec<u8> {
    let mut bytes = base.to_vec();
    let head = bytes.len().min(8);
    bytes[..head].copy_from_slice(&i.to_le_bytes()[..head]);
    bytes
}

/// Hot gets of one 4 KiB object, idle and while `count` objects are put from a second
/// connection: the getter, the keys put, the put rate (MB/s) and the two latency sets.
struct HotGets {
    getter: Store,
    keys: Vec<Key>,
    put_wall: f64,
    idle: Latencies,
    busy: Latencies,
}

/// Object `i`'s bytes in every run.
fn object_base(object: u64) -> Vec<u8> {
    (0..object).map(|i| (i * 131 % 251) as u8).collect()
}

fn put_while_timing_hot_gets(
    server: &SpillServer,
    args: &SpillArgs,
    count: u64,
    object: u64,
) -> anyhow::Result<HotGets> {
    let getter = server.connect()?;
    let putter = server.connect()?;
    let hot_bytes = vec![0x5a; 4096];
    let hot = getter.put(&hot_bytes)?;
    let get_hot = |latencies: &mut Latencies| -> anyhow::Result<()> {
        let start = Instant::now();
        let bytes = getter.get(&hot)?;
        latencies.record(start.elapsed());
        ensure!(bytes[..] == hot_bytes[..], "the hot object changed");
        Ok(())
    };
    eprintln!("spill: {} idle hot gets", args.idle_gets);
    let mut idle = Latencies::default();
    for _ in 0..args.idle_gets {
        get_hot(&mut idle)?;
    }
    let base = object_base(object);
    eprintln!("spill: {count} puts of {object} bytes while timing hot gets");
    let done = Arc::new(AtomicBool::new(false));
    let (keys, put_wall, busy) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let putting = {
            let done = Arc::clone(&done);
            let base = &base;
            let putter = &putter;
            let pace = args
                .put_rate
                .map(|rate| object as f64 / rate.as_u64().max(1) as f64);
            scope.spawn(move || -> anyhow::Result<(Vec<Key>, f64)> {
                let start = Instant::now();
                let keys = (0..count)
                    .map(|i| {
                        if let Some(each) = pace {
                            let due = start + Duration::from_secs_f64(each * i as f64);
                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        putter.put(&object_bytes(base, i))
                    })
                    .collect::<Result<Vec<Key>, _>>();
                let took = start.elapsed().as_secs_f64();
                done.store(true, Ordering::Relaxed);
                Ok((keys?, took))
            })
        };
        let mut busy = Latencies::default();
        while !done.load(Ordering::Relaxed) {
            get_hot(&mut busy)?;
        }
        let (keys, took) = putting
            .join()
            .map_err(|_| anyhow::anyhow!("the putter panicked"))??;
        Ok((keys, took, busy))
    })?;
    Ok(HotGets {
        getter,
        keys,
        put_wall: (count * object) as f64 / 1e6 / put_wall,
        idle,
        busy,
    })
}

fn measure(
    server: &SpillServer,
    args: &SpillArgs,
    count: u64,
    object: u64,
) -> anyhow::Result<Measured> {
    let HotGets {
        getter,
        keys,
        put_wall,
        idle,
        busy,
    } = put_while_timing_hot_gets(server, args, count, object)?;
    let base = object_base(object);
    let read_back = || -> anyhow::Result<f64> {
        let start = Instant::now();
        for (i, key) in keys.iter().enumerate() {
            let bytes = getter.get(key)?;
            ensure!(
                bytes[..] == object_bytes(&base, i as u64)[..],
                "object {i} came back different"
            );
        }
        Ok(start.elapsed().as_secs_f64())
    };
    eprintln!("spill: reading {count} objects back");
    let get_wall = read_back()?;
    // A second pass: every object has been restored once and kept its place on disk, so the
    // objects each restore displaces go back to theirs without a write and the disk only
    // reads. Its restore rate is the read path's own.
    eprintln!("spill: reading {count} objects back again (reads only)");
    let first = *getter.stats()?.pressure;
    read_back()?;
    let second = *getter.stats()?.pressure;
    let bytes = (count * object) as f64 / 1e6;
    Ok(Measured {
        reads_only: ReadsOnly {
            read: second.spill_read.saturating_sub(first.spill_read),
            read_ns: second.spill_read_ns.saturating_sub(first.spill_read_ns),
            written: second.spill_written.saturating_sub(first.spill_written),
        },
        // Filled in by the caller.
        dd_write: 0.0,
        dd_read: 0.0,
        dd_read_fresh: 0.0,
        put_wall,
        get_wall: bytes / get_wall,
        idle,
        busy,
        pressure: first,
        control: Control::default(),
    })
}

fn measure_control(
    server: &SpillServer,
    args: &SpillArgs,
    count: u64,
    object: u64,
) -> anyhow::Result<Control> {
    let hot = put_while_timing_hot_gets(server, args, count, object)?;
    let pressure = hot.getter.stats()?.pressure;
    ensure!(
        pressure.spill_written == 0 && pressure.policy_evictions == 0,
        "the control server spilled or evicted: {pressure:?}"
    );
    Ok(Control {
        put_wall: hot.put_wall,
        idle: hot.idle,
        busy: hot.busy,
    })
}

fn print_table(args: &SpillArgs, total: u64, rounds: &[Measured]) {
    let rate = |bytes: u64, ns: u64| bytes as f64 / 1e6 / (ns.max(1) as f64 / 1e9);
    let pace = args
        .put_rate
        .map_or("as fast as the server takes them".to_string(), |r| {
            format!("paced to {r}/s")
        });
    println!(
        "spill: {} into {} of memory, {} objects put {pace}, spill dir under {}, server CPUs {}, clients {}, {} rounds",
        bytesize::ByteSize(total),
        args.memory,
        args.object,
        args.dir.display(),
        args.server_cpus,
        args.client_cpus,
        rounds.len()
    );
    let mut header = String::from("| measure |");
    let mut rule = String::from("| --- |");
    for n in 1..=rounds.len() {
        header.push_str(&format!(" round {n} |"));
        rule.push_str(" ---: |");
    }
    println!("{header} median |");
    println!("{rule} ---: |");
    // One row: a value per round, formatted, and their median.
    let row = |name: &str, value: &dyn Fn(&Measured) -> f64, fmt: &dyn Fn(f64) -> String| {
        let values: Vec<f64> = rounds.iter().map(value).collect();
        let mut line = format!("| {name} |");
        for v in &values {
            line.push_str(&format!(" {} |", fmt(*v)));
        }
        println!("{line} **{}** |", fmt(median(values)));
    };
    let mbs = |v: f64| format!("{v:.0} MB/s");
    let pct = |v: f64| format!("{:.0} %", 100.0 * v);
    let us = |v: f64| format!("{v:.1} µs");
    let times = |v: f64| format!("{v:.2}×");
    let write = |m: &Measured| rate(m.pressure.spill_written, m.pressure.spill_write_ns);
    let read = |m: &Measured| rate(m.pressure.spill_read, m.pressure.spill_read_ns);
    row(
        "`dd oflag=direct` write, 1 MiB blocks (mean of before and after)",
        &|m| m.dd_write,
        &mbs,
    );
    row("spill writes (bytes / disk-busy time)", &write, &mbs);
    row(
        "spill writes / `dd` write",
        &|m| write(m) / m.dd_write,
        &pct,
    );
    row(
        "`dd iflag=direct` read, 1 MiB blocks, of the file written before the spilling server",
        &|m| m.dd_read,
        &mbs,
    );
    row(
        "`dd iflag=direct` read of a file right after writing it (best case)",
        &|m| m.dd_read_fresh,
        &mbs,
    );
    row("restores (bytes / disk-busy time)", &read, &mbs);
    row("restores / `dd` read", &|m| read(m) / m.dd_read, &pct);
    row(
        "restores / `dd` read (best case)",
        &|m| read(m) / m.dd_read_fresh,
        &pct,
    );
    let alone = |m: &Measured| rate(m.reads_only.read, m.reads_only.read_ns);
    row(
        "restores, second read-back (reads only: displaced objects keep their place)",
        &alone,
        &mbs,
    );
    row(
        "restores, second read-back / `dd` read",
        &|m| alone(m) / m.dd_read,
        &pct,
    );
    row(
        "written during the second read-back",
        &|m| (m.reads_only.written >> 20) as f64,
        &|v| format!("{v:.0} MiB"),
    );
    row("puts, end to end", &|m| m.put_wall, &mbs);
    row(
        "gets of everything back (checked), end to end",
        &|m| m.get_wall,
        &mbs,
    );
    row("hot 4 KiB get idle, median", &|m| m.idle.median_us(), &us);
    row(
        "hot 4 KiB get while spilling, median",
        &|m| m.busy.median_us(),
        &us,
    );
    row(
        "hot 4 KiB get while spilling, p99",
        &|m| m.busy.p99_us(),
        &us,
    );
    row(
        "while spilling / idle, median",
        &|m| m.busy.median_us() / m.idle.median_us(),
        &times,
    );
    row(
        "while spilling / idle, p99",
        &|m| m.busy.p99_us() / m.idle.p99_us(),
        &times,
    );
    row(
        "control (no spilling): puts end to end",
        &|m| m.control.put_wall,
        &mbs,
    );
    row(
        "control: hot get while putting / idle, median",
        &|m| m.control.busy.median_us() / m.control.idle.median_us(),
        &times,
    );
    row(
        "hot get while spilling / control while putting, median",
        &|m| m.busy.median_us() / m.control.busy.median_us(),
        &times,
    );
    row(
        "hot get while spilling / control while putting, p99",
        &|m| m.busy.p99_us() / m.control.busy.p99_us(),
        &times,
    );
    let count = |v: f64| format!("{v:.0}");
    let mib = |v: f64| format!("{v:.0} MiB");
    row(
        "spill written",
        &|m| (m.pressure.spill_written >> 20) as f64,
        &mib,
    );
    row("restores", &|m| m.pressure.restores as f64, &count);
    row(
        "spilled again with no write (kept file)",
        &|m| m.pressure.respills as f64,
        &count,
    );
    row(
        "spill failures",
        &|m| m.pressure.spill_failures as f64,
        &count,
    );
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}
