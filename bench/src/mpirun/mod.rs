//! `dimstore-bench mpi`: communication patterns across MPI ranks through a dimstore fleet,
//! with the same patterns over plain MPI in the same run as the reference.
//!
//! Run it under `mpirun` or `srun` with a fleet started by the launcher:
//!
//! ```text
//! dimstore-launch run --local 2 -- \
//!     mpirun --oversubscribe -n 4 target/release/dimstore-bench mpi --quick \
//!         --csv out.csv --plot-dir plots/
//! ```
//!
//! Rank `r` uses the fleet's node `r mod nodes` as its own server (`Store::connect` with the
//! fleet token), so neighbouring ranks sit on different nodes. Patterns
//! ([`patterns::Pattern`]):
//!
//! - `pairwise`: ranks `2k` and `2k+1` ping-pong objects (put, key over MPI, get from the
//!   other node); one-way latency is half the round trip. Reference: MPI send/recv.
//! - `all-to-all`: every rank puts one object, the keys are all-gathered, every rank gets
//!   every other rank's object. Reference: `MPI_Alltoall`.
//! - `fan-out`: rank 0 puts one object, broadcasts the key, every other rank gets it.
//!   Reference: `MPI_Bcast`.
//!
//! Every measurement runs a fixed number of iterations (from a byte budget), identical on
//! every rank, so no rank waits on a decision made elsewhere. Rank 0 prints markdown tables,
//! and writes the CSV ([`CSV_HEADER`]) and one PNG per pattern ([`plot`]). A failing rank
//! aborts the whole MPI job instead of leaving the others blocked in a collective.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use dimstore::fleet::Fleet;
use dimstore::{ClientConfig, SpawnPolicy, Store};
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::options::{human_size, parse_duration, parse_size};

pub mod patterns;
pub mod plot;

pub use patterns::{Pattern, Transport};

/// Options of `dimstore-bench mpi`.
#[derive(Debug, Clone, clap::Args)]
pub struct MpiArgs {
    /// Few sizes and iterations (a CI smoke test: seconds).
    #[arg(long)]
    pub quick: bool,
    /// Write every measurement here as CSV (rank 0).
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write one PNG plot per pattern into this directory (rank 0; created if missing).
    #[arg(long, value_name = "DIR")]
    pub plot_dir: Option<PathBuf>,
    /// Object sizes, e.g. `8,4K,1MiB`. [default: 8 B to 16 MiB in x8 steps; quick:
    /// 8,4K,256K,4M]
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Patterns to run. [default: all]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub patterns: Vec<Pattern>,
    /// The fleet file written by `dimstore-launch`.
    #[arg(long, env = "DIMSTORE_FLEET")]
    pub fleet: Option<PathBuf>,
    /// Bytes one measurement moves per rank; sets the iteration count per size.
    /// [default: 256MiB; quick: 16MiB]
    #[arg(long, value_parser = parse_size)]
    pub budget: Option<u64>,
    /// Per-operation timeout of the dimstore client.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Sizes of a full run: 8 B to 16 MiB in x8 steps.
pub const FULL_SIZES: [u64; 8] = [8, 64, 512, 4 << 10, 32 << 10, 256 << 10, 2 << 20, 16 << 20];
const QUICK_SIZES: [u64; 4] = [8, 4 << 10, 256 << 10, 4 << 20];

/// The CSV header.
pub const CSV_HEADER: &str =
    "pattern,transport,size_bytes,ranks,nodes,iterations,median_us,p99_us,mb_per_s";

/// One measurement: a pattern over one transport at one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Pattern.
    pub pattern: Pattern,
    /// dimstore or plain MPI.
    pub transport: Transport,
    /// Object (message) size.
    pub size_bytes: u64,
    /// MPI ranks.
    pub ranks: usize,
    /// Fleet nodes the ranks spread over.
    pub nodes: usize,
    /// Timed iterations.
    pub iterations: usize,
    /// Median time of one iteration (pairwise: one way), us.
    pub median_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
    /// Payload megabytes (10^6 bytes) delivered per second at the median.
    pub mb_per_s: f64,
}

/// What one run measures, identical on every rank.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Sizes, ascending.
    pub sizes: Vec<u64>,
    /// Patterns, in order.
    pub patterns: Vec<Pattern>,
    /// Bytes per measurement.
    pub budget: u64,
    /// Quick mode.
    pub quick: bool,
}

impl Plan {
    /// Timed iterations at `size`.
    pub fn iterations(&self, size: u64) -> usize {
        let (lo, hi) = if self.quick { (3, 50) } else { (10, 1000) };
        (self.budget / size.max(1)).clamp(lo, hi) as usize
    }

    /// Untimed warm-up iterations at `size`.
    pub fn warmup(&self, size: u64) -> usize {
        (self.iterations(size) / 10).clamp(1, 10)
    }
}

/// Runs the benchmark on this rank. Initializes MPI; aborts the job if this rank fails.
pub fn run(args: MpiArgs) -> anyhow::Result<()> {
    let Some(universe) = mpi::initialize() else {
        bail!("MPI is already initialized");
    };
    let world = universe.world();
    match run_rank(&world, args) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("dimstore-bench mpi: rank {}: {e:#}", world.rank());
            world.abort(2)
        }
    }
}

fn run_rank(world: &mpi::topology::SimpleCommunicator, args: MpiArgs) -> anyhow::Result<()> {
    let rank = world.rank() as usize;
    let ranks = world.size() as usize;
    let plan = plan(&args)?;
    let fleet_path = args.fleet.clone().context(
        "no fleet: run under `dimstore-launch run -- mpirun ...`, or set DIMSTORE_FLEET / --fleet",
    )?;
    let fleet =
        Fleet::read(&fleet_path).with_context(|| format!("reading {}", fleet_path.display()))?;
    if fleet.nodes.is_empty() {
        bail!("fleet {} has no nodes", fleet_path.display());
    }
    let node = &fleet.nodes[rank % fleet.nodes.len()];
    let config = ClientConfig {
        token: fleet.token.clone(),
        // Ranks read each other's keys: every server of the fleet may see the token.
        trusted: fleet.nodes.iter().map(|n| n.address.clone()).collect(),
        timeout: args.timeout,
        spawn: SpawnPolicy::Never,
        ..ClientConfig::default()
    };
    let store = Store::connect(&node.address, config)
        .with_context(|| format!("connecting to {} at {}", node.name, node.address))?;
    let context = patterns::Context {
        world,
        store: &store,
        nodes: fleet.nodes.len(),
    };
    if rank == 0 {
        println!(
            "# dimstore-bench mpi: {ranks} ranks on {} nodes ({}), sizes {}",
            fleet.nodes.len(),
            fleet.launcher,
            plan.sizes
                .iter()
                .map(|&s| human_size(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let barrier = patterns::barrier_us(world);
    if rank == 0 {
        println!(
            "# MPI_Barrier alone: {barrier:.1} us (median; collective iterations end with one)"
        );
    }
    let mut rows = Vec::new();
    for &pattern in &plan.patterns {
        let mut measured = Vec::new();
        for &size in &plan.sizes {
            for transport in [Transport::Dimstore, Transport::Mpi] {
                if let Some(row) = patterns::measure(&context, &plan, pattern, transport, size)? {
                    measured.push(row);
                }
            }
        }
        if rank == 0 {
            println!(
                "\n{}",
                markdown_table(pattern, ranks, fleet.nodes.len(), &measured)
            );
        }
        rows.extend(measured);
    }
    if rank == 0 {
        write_outputs(&args, &rows)?;
    }
    world.barrier();
    Ok(())
}

fn plan(args: &MpiArgs) -> anyhow::Result<Plan> {
    let mut sizes = if args.sizes.is_empty() {
        if args.quick {
            QUICK_SIZES.to_vec()
        } else {
            FULL_SIZES.to_vec()
        }
    } else {
        args.sizes.clone()
    };
    sizes.sort_unstable();
    sizes.dedup();
    if sizes.first() == Some(&0) {
        bail!("object sizes must be at least 1 byte");
    }
    let patterns = if args.patterns.is_empty() {
        Pattern::ALL.to_vec()
    } else {
        args.patterns.clone()
    };
    let budget = args
        .budget
        .unwrap_or(if args.quick { 16 << 20 } else { 256 << 20 });
    Ok(Plan {
        sizes,
        patterns,
        budget,
        quick: args.quick,
    })
}

fn write_outputs(args: &MpiArgs, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(path) = &args.csv {
        write_csv(path, rows)?;
        println!("\nCSV: {}", path.display());
    }
    if let Some(dir) = &args.plot_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for pattern in Pattern::ALL {
            let of_pattern: Vec<&Row> = rows.iter().filter(|r| r.pattern == pattern).collect();
            if of_pattern.is_empty() {
                continue;
            }
            let path = dir.join(format!("{}.png", pattern.name()));
            plot::draw(&path, pattern, &of_pattern)
                .with_context(|| format!("plotting {}", path.display()))?;
            println!("plot: {}", path.display());
        }
    }
    Ok(())
}

/// Writes `rows` as CSV with [`CSV_HEADER`].
pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        let _ = writeln!(
            text,
            // Rates of tiny objects are small: keep their significant digits.
            "{},{},{},{},{},{},{:.2},{:.2},{:.6}",
            r.pattern.name(),
            r.transport.name(),
            r.size_bytes,
            r.ranks,
            r.nodes,
            r.iterations,
            r.median_us,
            r.p99_us,
            r.mb_per_s
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One pattern's rows as a markdown table, dimstore and MPI side by side per size.
pub fn markdown_table(pattern: Pattern, ranks: usize, nodes: usize, rows: &[Row]) -> String {
    let mut out = format!(
        "### {} ({ranks} ranks, {nodes} nodes): {}\n\n\
         | size | dimstore median | dimstore p99 | MPI median | MPI p99 | dimstore MB/s | MPI MB/s | dimstore / MPI time |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        pattern.name(),
        pattern.what()
    );
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size_bytes).collect();
    sizes.dedup();
    for size in sizes {
        let find = |t: Transport| {
            rows.iter()
                .find(|r| r.size_bytes == size && r.transport == t)
        };
        let (Some(d), Some(m)) = (find(Transport::Dimstore), find(Transport::Mpi)) else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1}x |",
            human_size(size),
            micros(d.median_us),
            micros(d.p99_us),
            micros(m.median_us),
            micros(m.p99_us),
            rate(d.mb_per_s),
            rate(m.mb_per_s),
            d.median_us / m.median_us
        );
    }
    out
}

/// `0.25`, `12.5`, `1234`: MB/s with the precision small numbers need.
fn rate(mb_per_s: f64) -> String {
    match mb_per_s {
        v if v < 10.0 => format!("{v:.2}"),
        v if v < 100.0 => format!("{v:.1}"),
        v => format!("{v:.0}"),
    }
}

/// `12.3 us`, `4.56 ms`.
fn micros(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.1} us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(transport: Transport, size: u64, median_us: f64) -> Row {
        Row {
            pattern: Pattern::Pairwise,
            transport,
            size_bytes: size,
            ranks: 4,
            nodes: 2,
            iterations: 10,
            median_us,
            p99_us: median_us * 2.0,
            mb_per_s: size as f64 / median_us,
        }
    }

    #[test]
    fn iterations_follow_the_budget_within_bounds() {
        let plan = Plan {
            sizes: vec![8],
            patterns: Pattern::ALL.to_vec(),
            budget: 16 << 20,
            quick: true,
        };
        assert_eq!(plan.iterations(8), 50);
        assert_eq!(plan.iterations(4 << 20), 4);
        assert_eq!(plan.iterations(1 << 30), 3);
        assert_eq!(plan.warmup(1 << 30), 1);
    }

    #[test]
    fn tables_and_csv_pair_transports_per_size() {
        let rows = vec![
            row(Transport::Dimstore, 8, 40.0),
            row(Transport::Mpi, 8, 20.0),
            row(Transport::Dimstore, 4096, 2000.0),
            row(Transport::Mpi, 4096, 1000.0),
        ];
        let table = markdown_table(Pattern::Pairwise, 4, 2, &rows);
        assert!(
            table.contains("| 8 B | 40.0 us | 80.0 us | 20.0 us |"),
            "{table}"
        );
        assert!(table.contains("| 4 KiB | 2.00 ms |"), "{table}");
        assert!(table.trim_end().ends_with("| 2.0x |"), "{table}");
        assert!(table.contains("| 0.20 | 0.40 | 2.0x |"), "{table}");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.csv");
        write_csv(&path, &rows).expect("csv");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines.len(), 5);
        assert!(lines[1].starts_with("pairwise,dimstore,8,4,2,10,40.00,80.00,"));
    }
}
