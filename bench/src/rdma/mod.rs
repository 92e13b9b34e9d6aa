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
//!
//! Files: this one runs the rows; `variant.rs` names them; `measure.rs` runs the two parts
//! of a row (with the processes of `get.rs`, `procs.rs`, `tools.rs`, `fi_read.rs` and
//! `ucx_get.rs`); `results.rs` holds the cells and ratios; `render.rs` and `csv.rs` write
//! them out.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::options::{parse_duration, parse_size};

mod csv;
pub mod fi_read;
pub mod get;
mod measure;
mod procs;
mod render;
mod results;
pub mod tools;
pub mod ucx_get;
mod variant;

pub use csv::CSV_HEADER;
pub use results::{targets, Cell, RowResult, SizeResult, SizedRatio};
pub use variant::Variant;

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
        if let Err(e) = measure::dimstore_part(&plan, &mut row) {
            row.note(format!("dimstore gets: {e:#}"));
        }
        if plan.raw {
            measure::raw_part(&plan, &mut row);
        }
        results.push(row);
    }
    let text = render::render(&results, &plan);
    println!("{text}");
    eprintln!("rdma: done in {:.0?}", started.elapsed());
    if let Some(path) = &args.csv {
        std::fs::write(path, csv::csv(&results))
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
