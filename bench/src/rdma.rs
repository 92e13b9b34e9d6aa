//! `dimstore-bench rdma`: dimstore's one-sided transports (UCX, libfabric) next to the raw
//! transports on the same provider, in one run.
//!
//! Per row (a transport and provider: `ucx` = UCX_TLS=tcp on lo, `ucx-shm` =
//! UCX_TLS=posix,sysv,cma, `ofi-tcp` = libfabric `tcp;ofi_rxm`, `ofi-shm` = libfabric `shm`,
//! and `tcp`, dimstore's inline path, as the reference) and per object size:
//!
//! 1. dimstore: two `dimstore-server`s with different `--node` names and a client process
//!    on the first node reading objects owned by the second ([`get`]); the client's
//!    transport is forced with `DIMSTORE_TRANSPORT`, and the servers export memory with
//!    `--one-sided <transport>`. Median get and bandwidth (size / median).
//! 2. the raw transport on the same provider and environment ([`tools`], [`fi_read`]): a
//!    one-sided read (`ucx_perftest -t ucp_get`; our own `fi_read` over `dimstore-ofi`; for
//!    the tcp row the raw TCP one-way stream) and a round trip (`ucx_perftest -t tag_lat`;
//!    `fi_pingpong`; the raw TCP request/reply of [`crate::contenders::raw_tcp`]).
//! 3. per row a table with the ratios: a small get against the raw round trip (target
//!    <= 1.5x) and a large get's bandwidth against the raw one-sided read's (target >= 85%);
//!    `--csv` writes every cell.
//!
//! Every process the bench starts runs under a deadline and is stopped on exit and on
//! error (servers also exit with their parent; external tools run under coreutils'
//! `timeout` when present). A missing tool or transport skips that part, saying why.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::contenders::{pattern, raw_tcp, this_program, Client, Contender};
use crate::measure::{timed_loop, Bounds};
use crate::options::{human_size, parse_duration, parse_size};

pub mod fi_read;
pub mod get;
mod procs;
pub mod tools;
pub mod ucx_get;

use procs::Proc;
use tools::{tool_iterations, Tool, ToolResult};

/// Bytes each external tool run moves, about (bounds its iteration count).
const TOOL_BUDGET: u64 = 512 << 20;
/// Longest time one external tool run (server and client) may take.
const TOOL_LIMIT: Duration = Duration::from_secs(60);

/// A transport and provider measured side by side with its raw tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// UCX over TCP on loopback (`UCX_TLS=tcp`, `UCX_NET_DEVICES=lo`).
    Ucx,
    /// UCX over shared memory (`UCX_TLS=posix,sysv,cma`).
    #[value(name = "ucx-shm")]
    UcxShm,
    /// libfabric `tcp;ofi_rxm` on 127.0.0.1.
    #[value(name = "ofi-tcp")]
    OfiTcp,
    /// libfabric `shm`.
    #[value(name = "ofi-shm")]
    OfiShm,
    /// dimstore's TCP transport (bytes inline in replies): the reference.
    Tcp,
}

impl Variant {
    /// Every row, in report order.
    pub const ALL: [Variant; 5] = [
        Variant::Ucx,
        Variant::UcxShm,
        Variant::OfiTcp,
        Variant::OfiShm,
        Variant::Tcp,
    ];

    /// The row's name in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Ucx => "ucx",
            Variant::UcxShm => "ucx-shm",
            Variant::OfiTcp => "ofi-tcp",
            Variant::OfiShm => "ofi-shm",
            Variant::Tcp => "tcp",
        }
    }

    /// `DIMSTORE_TRANSPORT` for the client (also the server's statistics row).
    pub fn transport(self) -> &'static str {
        match self {
            Variant::Ucx | Variant::UcxShm => "ucx",
            Variant::OfiTcp | Variant::OfiShm => "ofi",
            Variant::Tcp => "tcp",
        }
    }

    /// The libfabric provider of an ofi row.
    pub fn provider(self) -> Option<&'static str> {
        match self {
            Variant::OfiTcp => Some("tcp;ofi_rxm"),
            Variant::OfiShm => Some("shm"),
            _ => None,
        }
    }

    /// The environment of every process of the row (servers, client, raw tools).
    pub fn env(self) -> Vec<(String, String)> {
        let pairs: &[(&str, &str)] = match self {
            Variant::Ucx => &[("UCX_TLS", "tcp"), ("UCX_NET_DEVICES", "lo")],
            Variant::UcxShm => &[("UCX_TLS", "posix,sysv,cma")],
            Variant::OfiTcp => &[
                ("DIMSTORE_OFI_PROVIDER", "tcp;ofi_rxm"),
                ("DIMSTORE_OFI_NODE", "127.0.0.1"),
            ],
            Variant::OfiShm => &[("DIMSTORE_OFI_PROVIDER", "shm")],
            Variant::Tcp => &[],
        };
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The raw tools' names: (one-sided read, round trip). UCX rows also have our own
    /// `ucp_get` ([`ucx_get`]).
    pub fn raw_names(self) -> (&'static str, &'static str) {
        match self {
            Variant::Ucx | Variant::UcxShm => ("ucx_perftest ucp_get", "ucx_perftest tag_lat"),
            Variant::OfiTcp | Variant::OfiShm => ("fi_read (ours)", "fi_pingpong"),
            Variant::Tcp => ("raw TCP stream", "raw TCP get"),
        }
    }
}

/// Options of `dimstore-bench rdma`.
#[derive(Debug, Clone, Args)]
pub struct RdmaArgs {
    /// Object sizes. [default: 8,4K,64K,1M,16M,128M; quick: 8,64K,1M]
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<u64>>,
    /// Rows to measure. [default: all]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub rows: Option<Vec<Variant>>,
    /// Longest time spent timing one size of one row. [default: 1s; quick: 200ms]
    #[arg(long, value_parser = parse_duration)]
    pub cell_time: Option<Duration>,
    /// Objects from this size on are read one-sided (`DIMSTORE_ONE_SIDED_FROM` of the
    /// client).
    #[arg(long, value_parser = parse_size, default_value = "64K")]
    pub one_sided_from: u64,
    /// Few sizes, short loops (a smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Write one line per row and size here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Skip the raw tools (ucx_perftest, fi_pingpong, fi_read): dimstore only.
    #[arg(long)]
    pub no_raw: bool,
    /// Worker threads of each dimstore server.
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// The server binary. [default: dimstore-server next to this program]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// One measured value: microseconds per operation and bandwidth (10^6 B/s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    /// Microseconds per operation.
    pub us: f64,
    /// 10^6 bytes per second.
    pub mb_per_s: f64,
}

impl From<ToolResult> for Cell {
    fn from(r: ToolResult) -> Cell {
        Cell {
            us: r.us,
            mb_per_s: r.mb_per_s,
        }
    }
}

impl Cell {
    fn of_median(size: u64, median_us: f64) -> Cell {
        Cell {
            us: median_us,
            mb_per_s: size as f64 / median_us.max(1e-3),
        }
    }
}

/// One row's measurements at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeResult {
    /// Object size.
    pub size: u64,
    /// dimstore get: median and size / median.
    pub get: Option<Cell>,
    /// dimstore get p99, us.
    pub get_p99_us: Option<f64>,
    /// Whether the owner counted one-sided bytes for these gets.
    pub one_sided: Option<bool>,
    /// Raw one-sided read.
    pub read: Option<Cell>,
    /// Our own raw one-sided read where the row's tool is someone else's (UCX rows:
    /// `ucp_get` over `dimstore-ucx`, next to `ucx_perftest`).
    pub own_read: Option<Cell>,
    /// Which strategy our own read's best came from (`whole`, `chunked`).
    pub read_note: Option<String>,
    /// Raw round trip.
    pub rtt: Option<Cell>,
}

/// Everything measured for one row.
#[derive(Debug, Clone)]
pub struct RowResult {
    /// Which row.
    pub variant: Variant,
    /// Per size.
    pub sizes: Vec<SizeResult>,
    /// Why parts were skipped or failed.
    pub notes: Vec<String>,
}

impl RowResult {
    fn at(&mut self, size: u64) -> &mut SizeResult {
        let i = match self.sizes.iter().position(|s| s.size == size) {
            Some(i) => i,
            None => {
                self.sizes.push(SizeResult {
                    size,
                    get: None,
                    get_p99_us: None,
                    one_sided: None,
                    read: None,
                    own_read: None,
                    read_note: None,
                    rtt: None,
                });
                self.sizes.len() - 1
            }
        };
        &mut self.sizes[i]
    }

    fn note(&mut self, text: String) {
        eprintln!("rdma {}: {text}", self.variant.name());
        self.notes.push(text);
    }
}

/// Resolved settings.
struct Plan {
    sizes: Vec<u64>,
    cell_time: Duration,
    one_sided_from: u64,
    server_bin: PathBuf,
    server_threads: usize,
    raw: bool,
}

/// Runs `dimstore-bench rdma` and prints its tables.
pub fn run(args: &RdmaArgs) -> anyhow::Result<()> {
    let mut sizes = match &args.sizes {
        Some(s) => s.clone(),
        None if args.quick => vec![8, 64 << 10, 1 << 20],
        None => vec![8, 4 << 10, 64 << 10, 1 << 20, 16 << 20, 128 << 20],
    };
    sizes.sort_unstable();
    sizes.dedup();
    anyhow::ensure!(!sizes.is_empty(), "no sizes");
    let plan = Plan {
        sizes,
        cell_time: args.cell_time.unwrap_or(if args.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        }),
        one_sided_from: args.one_sided_from,
        server_bin: match &args.server_bin {
            Some(b) => b.clone(),
            None => crate::options::default_server_bin()?,
        },
        server_threads: args.server_threads.max(1),
        raw: !args.no_raw,
    };
    let variants = args.rows.clone().unwrap_or_else(|| Variant::ALL.to_vec());
    let started = Instant::now();
    let mut results = Vec::new();
    for variant in variants {
        let mut row = RowResult {
            variant,
            sizes: Vec::new(),
            notes: Vec::new(),
        };
        for &size in &plan.sizes {
            row.at(size);
        }
        eprintln!(
            "rdma {}: dimstore gets ({})",
            variant.name(),
            env_text(variant)
        );
        if let Err(e) = dimstore_part(&plan, &mut row) {
            row.note(format!("dimstore gets: {e:#}"));
        }
        if plan.raw {
            raw_part(&plan, &mut row);
        }
        results.push(row);
    }
    let text = render(&results, &plan);
    println!("{text}");
    eprintln!("rdma: done in {:.0?}", started.elapsed());
    if let Some(path) = &args.csv {
        std::fs::write(path, csv(&results))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn env_text(variant: Variant) -> String {
    let mut parts: Vec<String> = variant
        .env()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.insert(0, format!("DIMSTORE_TRANSPORT={}", variant.transport()));
    parts.join(" ")
}

/// Part 1: two servers and the `rdma-get` client process.
fn dimstore_part(plan: &Plan, row: &mut RowResult) -> anyhow::Result<()> {
    let variant = row.variant;
    let env = variant.env();
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let one_sided = (variant != Variant::Tcp).then(|| variant.transport());
    let start = |node: &str| {
        get::RowServer::start(
            &plan.server_bin,
            node,
            one_sided,
            &env,
            largest,
            Some(plan.server_threads),
        )
    };
    let home = start("rdma-bench-a")?;
    let owner = start("rdma-bench-b")?;
    let mut command = Command::new(this_program()?);
    command
        .arg("rdma-get")
        .arg("--home")
        .arg(&home.ready.address)
        .arg("--remote")
        .arg(&owner.ready.address)
        .arg("--node")
        .arg(&home.ready.node)
        .arg("--stats-row")
        .arg(variant.transport())
        .arg("--sizes")
        .arg(join(&plan.sizes))
        .arg("--cell-time")
        .arg(format!("{}ms", plan.cell_time.as_millis()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("DIMSTORE_TRANSPORT", variant.transport())
        .env("DIMSTORE_ONE_SIDED_FROM", plan.one_sided_from.to_string())
        .env_remove("DIMSTORE_NODE")
        .env_remove("DIMSTORE_LOCAL");
    let mut client = Proc::spawn(format!("rdma-get ({})", variant.name()), command)?;
    for &size in &plan.sizes {
        let deadline = get::size_deadline(plan.cell_time, size);
        let result: Option<get::GetResult> = next_json(&mut client, deadline, row)?;
        let Some(result) = result else {
            let (status, _) = client.finish(Instant::now() + Duration::from_secs(5))?;
            anyhow::bail!(
                "the client process ended ({status}) before {}{}{}",
                human_size(size),
                client.stderr_tail(),
                server_logs(&home, &owner)
            );
        };
        eprintln!(
            "rdma {}: get {} median {:.1} us{}",
            variant.name(),
            human_size(result.size),
            result.median_us,
            if result.one_sided_bytes > 0 {
                " (one-sided)"
            } else {
                ""
            }
        );
        let cell = row.at(result.size);
        cell.get = Some(Cell::of_median(result.size, result.median_us));
        cell.get_p99_us = Some(result.p99_us);
        cell.one_sided = Some(result.one_sided_bytes > 0);
    }
    let (status, _) = client.finish(Instant::now() + Duration::from_secs(30))?;
    anyhow::ensure!(
        status.success(),
        "the client process failed ({status}){}",
        client.stderr_tail()
    );
    if variant != Variant::Tcp
        && row
            .sizes
            .iter()
            .any(|s| s.size >= plan.one_sided_from && s.one_sided == Some(false))
    {
        row.note(format!(
            "some gets of {} and more were NOT one-sided (the owner counted no one-sided \
             bytes): they fell back to inline TCP",
            human_size(plan.one_sided_from)
        ));
    }
    Ok(())
}

fn server_logs(a: &get::RowServer, b: &get::RowServer) -> String {
    let mut out = String::new();
    for s in [a, b] {
        let log = s.log();
        if !log.trim().is_empty() {
            let _ = write!(
                out,
                "\n  {} log ({}):\n    {}",
                s.ready.node,
                s.log_path().display(),
                log.trim().lines().collect::<Vec<_>>().join("\n    ")
            );
        }
    }
    out
}

fn join(sizes: &[u64]) -> String {
    sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Part 2: the raw tools of the row's transport.
fn raw_part(plan: &Plan, row: &mut RowResult) {
    match row.variant {
        Variant::Ucx | Variant::UcxShm => {
            raw_ucx(plan, row);
            raw_ucx_own(plan, row);
        }
        Variant::OfiTcp | Variant::OfiShm => raw_ofi(plan, row),
        Variant::Tcp => {
            if let Err(e) = raw_tcp_part(plan, row) {
                row.note(format!("raw TCP: {e:#}"));
            }
        }
    }
}

fn raw_ucx(plan: &Plan, row: &mut RowResult) {
    let program = match tools::missing("ucx_perftest", "ucx-utils") {
        Ok(p) => p,
        Err(why) => return row.note(format!("raw UCX columns skipped: {why}")),
    };
    let tool = Tool::new(program, row.variant.env(), TOOL_LIMIT);
    for &size in &plan.sizes {
        let n = tool_iterations(size, TOOL_BUDGET);
        eprintln!(
            "rdma {}: ucx_perftest {} (n={n})",
            row.variant.name(),
            human_size(size)
        );
        match tool.perftest("ucp_get", size, n) {
            Ok(r) => row.at(size).read = Some(r.into()),
            Err(e) => row.note(format!("ucx_perftest ucp_get {}: {e:#}", human_size(size))),
        }
        match tool.perftest("tag_lat", size, n) {
            Ok(r) => row.at(size).rtt = Some(r.into()),
            Err(e) => row.note(format!("ucx_perftest tag_lat {}: {e:#}", human_size(size))),
        }
    }
}

fn raw_ucx_own(plan: &Plan, row: &mut RowResult) {
    eprintln!("rdma {}: ucp_get (ours)", row.variant.name());
    if let Err(e) = raw_own_read(plan, row, Own::Ucx) {
        row.note(format!("ucp_get (ours): {e:#}"));
    }
}

fn raw_ofi(plan: &Plan, row: &mut RowResult) {
    let provider = row.variant.provider().unwrap_or("tcp;ofi_rxm");
    match tools::missing("fi_pingpong", "libfabric-bin") {
        Err(why) => row.note(format!("raw round trip skipped: {why}")),
        Ok(program) => {
            let tool = Tool::new(program, row.variant.env(), TOOL_LIMIT);
            for &size in &plan.sizes {
                let n = tool_iterations(size, TOOL_BUDGET);
                eprintln!(
                    "rdma {}: fi_pingpong {} (n={n})",
                    row.variant.name(),
                    human_size(size)
                );
                match tool.pingpong(provider, size, n) {
                    Ok(r) => row.at(size).rtt = Some(r.into()),
                    Err(e) => row.note(format!("fi_pingpong {}: {e:#}", human_size(size))),
                }
            }
        }
    }
    eprintln!("rdma {}: fi_read (ours)", row.variant.name());
    if let Err(e) = raw_own_read(plan, row, Own::Ofi(provider)) {
        row.note(format!("fi_read: {e:#}"));
    }
}

/// Whose own one-sided read tool to run.
#[derive(Debug, Clone, Copy)]
enum Own<'a> {
    /// Our fi_read over `dimstore-ofi`, on this provider.
    Ofi(&'a str),
    /// Our ucp_get over `dimstore-ucx` (the row's `UCX_*` environment).
    Ucx,
}

/// Our own one-sided read: a target process and an initiator process (hidden subcommands).
fn raw_own_read(plan: &Plan, row: &mut RowResult, own: Own<'_>) -> anyhow::Result<()> {
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let env = row.variant.env();
    let node = match own {
        Own::Ofi(provider) if provider.contains("tcp") => Some("127.0.0.1"),
        _ => None,
    };
    let program = this_program()?;
    let base_command = |sub: &str| {
        let mut command = Command::new(&program);
        command.arg(sub).envs(env.iter().map(|(k, v)| (k, v)));
        if let (Some(node), Own::Ofi(provider)) = (node, own) {
            command
                .arg("--provider")
                .arg(provider)
                .arg("--node")
                .arg(node);
        } else if let Own::Ofi(provider) = own {
            command.arg("--provider").arg(provider);
        }
        command
    };
    let (target_sub, reader_sub, tool) = match own {
        Own::Ofi(_) => ("rdma-fi-target", "rdma-fi-read", "fi_read"),
        Own::Ucx => ("rdma-ucx-target", "rdma-ucx-get", "ucp_get"),
    };
    let mut command = base_command(target_sub);
    command.arg("--size").arg(largest.to_string());
    let mut target = Proc::spawn(format!("{tool} target"), command)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut command = base_command(reader_sub);
    match own {
        Own::Ofi(_) => {
            let info: fi_read::TargetInfo = next_json(&mut target, deadline, row)?
                .with_context(|| format!("the target process ended{}", target.stderr_tail()))?;
            command
                .arg("--name")
                .arg(&info.name)
                .arg("--key")
                .arg(info.key.to_string())
                .arg("--base")
                .arg(info.base.to_string());
        }
        Own::Ucx => {
            let info: ucx_get::UcxTargetInfo = next_json(&mut target, deadline, row)?
                .with_context(|| format!("the target process ended{}", target.stderr_tail()))?;
            command
                .arg("--address")
                .arg(&info.address)
                .arg("--rkey")
                .arg(&info.rkey)
                .arg("--base")
                .arg(info.base.to_string());
        }
    }
    command
        .arg("--sizes")
        .arg(join(&plan.sizes))
        .arg("--cell-time")
        .arg(format!("{}ms", plan.cell_time.as_millis()));
    let mut reader = Proc::spawn(format!("{tool} initiator"), command)?;
    let mut best: Vec<fi_read::ReadResult> = Vec::new();
    loop {
        let deadline = get::size_deadline(plan.cell_time, largest);
        let Some(r) = next_json::<fi_read::ReadResult>(&mut reader, deadline, row)? else {
            break;
        };
        eprintln!(
            "rdma {}: {tool} {} {} median {:.1} us",
            row.variant.name(),
            human_size(r.size),
            r.strategy,
            r.median_us
        );
        match best.iter_mut().find(|b| b.size == r.size) {
            Some(b) if r.median_us < b.median_us => *b = r,
            Some(_) => {}
            None => best.push(r),
        }
    }
    let (status, _) = reader.finish(Instant::now() + Duration::from_secs(10))?;
    for r in best {
        let cell = row.at(r.size);
        let value = Some(Cell::of_median(r.size, r.median_us));
        match own {
            Own::Ofi(_) => cell.read = value,
            Own::Ucx => cell.own_read = value,
        }
        cell.read_note = Some(r.strategy);
    }
    anyhow::ensure!(
        status.success(),
        "the initiator failed ({status}){}{}",
        reader.stderr_tail(),
        target.stderr_tail()
    );
    Ok(())
}

/// The next JSON line of `proc` (other lines, e.g. UCX's log on stdout, are shown and the
/// first few errors among them noted); `None` at the end of its output.
fn next_json<T: serde::de::DeserializeOwned>(
    proc: &mut Proc,
    deadline: Instant,
    row: &mut RowResult,
) -> anyhow::Result<Option<T>> {
    while let Some(line) = proc.next_line(deadline)? {
        if line.trim_start().starts_with('{') {
            return serde_json::from_str(&line)
                .map(Some)
                .with_context(|| format!("unexpected output: {line}"));
        }
        eprintln!("rdma {}: | {line}", row.variant.name());
        // UCX logs to stdout, each line stamped: note each distinct error once.
        if let Some(at) = line.find("ERROR") {
            let text = format!("a child process logged: {}", line[at..].trim());
            let noted = row
                .notes
                .iter()
                .filter(|n| n.starts_with("a child"))
                .count();
            if noted < 3 && !row.notes.contains(&text) {
                row.notes.push(text);
            }
        }
    }
    Ok(None)
}

/// The tcp row's raw references: the raw TCP request/reply (round trip) and one-way stream.
fn raw_tcp_part(plan: &Plan, row: &mut RowResult) -> anyhow::Result<()> {
    let server = raw_tcp::RawServer::start()?;
    let mut client = raw_tcp::RawClient::connect(server.address())?;
    let largest = plan.sizes.iter().copied().max().unwrap_or(8);
    let value = pattern(usize::try_from(largest)?);
    for &size in &plan.sizes {
        eprintln!("rdma tcp: raw TCP {}", human_size(size));
        let bounds = Bounds {
            warmup: 2,
            iterations: get::iterations(size),
            time: plan.cell_time,
        };
        client.load(&value[..size as usize], 1)?;
        let get = timed_loop(bounds, |_| client.get(0).map(drop), || Ok(()))?;
        client.load(&[], 0)?;
        let stream = timed_loop(bounds, |_| client.stream(size).map(drop), || Ok(()))?;
        let cell = row.at(size);
        cell.rtt = Some(Cell::of_median(size, get.median_us()));
        cell.read = Some(Cell::of_median(size, stream.median_us()));
    }
    Ok(())
}

/// Ratio `a / b`, if both exist.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn us(c: Option<Cell>) -> String {
    c.map_or_else(|| "-".into(), |c| format!("{:.1}", c.us))
}

fn mbs(c: Option<Cell>) -> String {
    c.map_or_else(
        || "-".into(),
        |c| {
            if c.mb_per_s < 10.0 {
                format!("{:.2}", c.mb_per_s)
            } else {
                format!("{:.0}", c.mb_per_s)
            }
        },
    )
}

impl SizeResult {
    /// The raw one-sided read with the higher bandwidth (the row's tool or our own), and
    /// whether it is our own.
    pub fn best_read(&self) -> Option<(Cell, bool)> {
        match (self.read, self.own_read) {
            (Some(a), Some(b)) if b.mb_per_s > a.mb_per_s => Some((b, true)),
            (Some(a), _) => Some((a, false)),
            (None, Some(b)) => Some((b, true)),
            (None, None) => None,
        }
    }

    /// dimstore get / raw round trip (medians), if both were measured.
    pub fn get_over_rtt(&self) -> Option<f64> {
        ratio(self.get.map(|c| c.us), self.rtt.map(|c| c.us))
    }

    /// dimstore get bandwidth / the best raw one-sided read's, if both were measured.
    pub fn get_over_best_read(&self) -> Option<f64> {
        ratio(
            self.get.map(|c| c.mb_per_s),
            self.best_read().map(|(c, _)| c.mb_per_s),
        )
    }
}

/// A ratio measured at a size, and the reference it was taken against.
pub type SizedRatio = Option<(u64, f64, &'static str)>;

/// The smallest size's get against the raw round trip, and the largest one-sided size's
/// get bandwidth against the best raw one-sided read's: (small ratio, large share).
pub fn targets(row: &RowResult, one_sided_from: u64) -> (SizedRatio, SizedRatio) {
    let (read_name, rtt_name) = row.variant.raw_names();
    let small = row
        .sizes
        .iter()
        .min_by_key(|s| s.size)
        .and_then(|s| s.get_over_rtt().map(|r| (s.size, r, rtt_name)));
    let large = row
        .sizes
        .iter()
        .filter(|s| s.size >= one_sided_from)
        .max_by_key(|s| s.size)
        .and_then(|s| {
            let (_, own) = s.best_read()?;
            let name = if own { "ucp_get (ours)" } else { read_name };
            s.get_over_best_read().map(|r| (s.size, r, name))
        });
    (small, large)
}

/// The tables: one per row, then the targets.
fn render(results: &[RowResult], plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nus: median per operation; MB/s: 10^6 B/s (size / median; ucx_perftest ucp_get: \
         its rate with many reads in flight); rtt: a message round trip of the same size; \
         get/read: get bandwidth / best raw one-sided read bandwidth (sizes >= {})",
        human_size(plan.one_sided_from)
    );
    for row in results {
        let v = row.variant;
        let (read_name, rtt_name) = v.raw_names();
        let own = matches!(v, Variant::Ucx | Variant::UcxShm);
        let _ = writeln!(
            out,
            "\n=== {} ({}) ===\nraw one-sided read: {read_name}{}; raw round trip: {rtt_name}",
            v.name(),
            env_text(v),
            if own { " and ucp_get (ours)" } else { "" }
        );
        let mut head = format!(
            "{:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "size", "path", "get us", "get MB/s", "read us", "read MB/s"
        );
        if own {
            let _ = write!(head, " {:>9} {:>9}", "own us", "own MB/s");
        }
        let _ = write!(head, " {:>9} {:>8} {:>8}", "rtt us", "get/rtt", "get/read");
        let _ = writeln!(out, "{head}");
        for s in &row.sizes {
            let path = match (v, s.one_sided) {
                (Variant::Tcp, _) => "inline",
                (_, Some(true)) => "1-sided",
                (_, Some(false)) => "inline",
                (_, None) => "-",
            };
            let get_rtt = s.get_over_rtt();
            let share = s
                .get_over_best_read()
                .filter(|_| s.size >= plan.one_sided_from);
            let mut line = format!(
                "{:>9} {:>7} {:>9} {:>9} {:>9} {:>9}",
                human_size(s.size),
                path,
                us(s.get),
                mbs(s.get),
                us(s.read),
                mbs(s.read),
            );
            if own {
                let _ = write!(line, " {:>9} {:>9}", us(s.own_read), mbs(s.own_read));
            }
            let _ = write!(
                line,
                " {:>9} {:>8} {:>8}",
                us(s.rtt),
                get_rtt.map_or("-".into(), |r| format!("{r:.2}x")),
                share.map_or("-".into(), |r| format!("{:.0}%", 100.0 * r)),
            );
            let _ = writeln!(out, "{line}");
        }
        for note in &row.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    let _ = writeln!(out, "\nTargets (reported, not asserted)");
    let _ = writeln!(
        out,
        "{:<8} {:<46} {:>8} {:>7} {:>4}",
        "row", "comparison", "ratio", "target", "met"
    );
    for row in results {
        let (small, large) = targets(row, plan.one_sided_from);
        if let Some((size, r, name)) = small {
            let _ = writeln!(
                out,
                "{:<8} {:<46} {:>7.2}x {:>7} {:>4}",
                row.variant.name(),
                format!("get {} / {name}", human_size(size)),
                r,
                "<= 1.5x",
                if r <= 1.5 { "yes" } else { "NO" }
            );
        }
        if let Some((size, r, name)) = large {
            let _ = writeln!(
                out,
                "{:<8} {:<46} {:>7.0}% {:>7} {:>4}",
                row.variant.name(),
                format!("get {} bandwidth / {name}", human_size(size)),
                100.0 * r,
                ">= 85%",
                if r >= 0.85 { "yes" } else { "NO" }
            );
        }
    }
    out
}

/// The CSV header of `--csv`.
pub const CSV_HEADER: &str = "row,size_bytes,path,get_median_us,get_p99_us,get_mb_per_s,\
raw_read_tool,raw_read_us,raw_read_mb_per_s,own_read_tool,own_read_us,own_read_mb_per_s,\
raw_rtt_tool,raw_rtt_us,get_over_rtt,get_over_best_read_bw";

fn csv(results: &[RowResult]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let num = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    for row in results {
        let (read_name, rtt_name) = row.variant.raw_names();
        let ucx = matches!(row.variant, Variant::Ucx | Variant::UcxShm);
        for s in &row.sizes {
            let path = match s.one_sided {
                Some(true) => "one_sided",
                Some(false) => "inline",
                None => "",
            };
            let (read_tool, own_tool) = if ucx {
                (read_name.to_string(), s_note("ucp_get (ours)", s))
            } else if row.variant == Variant::Tcp {
                (read_name.to_string(), String::new())
            } else {
                (s_note(read_name, s), String::new())
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                row.variant.name(),
                s.size,
                path,
                num(s.get.map(|c| c.us), 3),
                num(s.get_p99_us, 3),
                num(s.get.map(|c| c.mb_per_s), 3),
                read_tool,
                num(s.read.map(|c| c.us), 3),
                num(s.read.map(|c| c.mb_per_s), 3),
                own_tool,
                num(s.own_read.map(|c| c.us), 3),
                num(s.own_read.map(|c| c.mb_per_s), 3),
                rtt_name,
                num(s.rtt.map(|c| c.us), 3),
                num(s.get_over_rtt(), 3),
                num(s.get_over_best_read(), 3),
            );
        }
    }
    out
}

/// A tool's name with the strategy its best came from (`fi_read (ours) whole`).
fn s_note(name: &str, s: &SizeResult) -> String {
    match &s.read_note {
        Some(n) => format!("{name} {n}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> RowResult {
        let cell = |us: f64, size: u64| Some(Cell::of_median(size, us));
        RowResult {
            variant: Variant::OfiTcp,
            sizes: vec![
                SizeResult {
                    size: 8,
                    get: cell(12.0, 8),
                    get_p99_us: Some(20.0),
                    one_sided: Some(false),
                    read: cell(7.0, 8),
                    own_read: None,
                    read_note: Some("whole".into()),
                    rtt: cell(10.0, 8),
                },
                SizeResult {
                    size: 1 << 20,
                    get: cell(500.0, 1 << 20),
                    get_p99_us: None,
                    one_sided: Some(true),
                    read: cell(400.0, 1 << 20),
                    own_read: None,
                    read_note: None,
                    rtt: None,
                },
            ],
            notes: vec![],
        }
    }

    #[test]
    fn targets_use_the_smallest_and_largest_sizes() {
        let (small, large) = targets(&row(), 64 << 10);
        let (size, r, name) = small.expect("small");
        assert_eq!((size, name), (8, "fi_pingpong"));
        assert!((r - 1.2).abs() < 1e-9);
        let (size, r, _) = large.expect("large");
        assert_eq!(size, 1 << 20);
        assert!((r - 0.8).abs() < 1e-9);
    }

    #[test]
    fn csv_has_one_line_per_size() {
        let text = csv(&[row()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1].split(',').count(),
            CSV_HEADER.split(',').count(),
            "{}",
            lines[1]
        );
        assert!(lines[1].starts_with("ofi-tcp,8,inline,12.000,20.000,"));
        assert!(lines[1].contains(",fi_read (ours) whole,"), "{}", lines[1]);
        assert!(lines[2].contains(",one_sided,"));
    }
}
