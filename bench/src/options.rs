//! What to measure: command-line options ([`RunArgs`]) resolved into [`Settings`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::contenders::ContenderKind;
use crate::placement::Placement;

/// Options shared by `run`, `latency` and `throughput`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Few sizes and short durations (a CI smoke test, well under 30 s in release).
    #[arg(long)]
    pub quick: bool,
    /// Also write every measurement here as CSV.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Object sizes for latency, e.g. `8,4K,1MiB` (binary units).
    /// [default: 8 B to 128 MiB in x8 steps; quick: 8,4K,256K,16M]
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<u64>,
    /// Most client processes for throughput; measured at 1, 2, 4, ... up to this.
    /// [default: 4; quick: 2]
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Length of each throughput measurement, e.g. `2s`, `300ms`. [default: 2s; quick: 300ms]
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Longest time spent on one latency measurement (one contender, op and size).
    /// [default: 3s; quick: 300ms]
    #[arg(long, value_parser = parse_duration)]
    pub latency_time: Option<Duration>,
    /// CPU placements to measure. [default: same-cpu,cross-cpu,unpinned; quick: same-cpu,unpinned]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub placements: Vec<Placement>,
    /// Contenders to measure. [default: all; redis is skipped with a note when missing]
    #[arg(long, value_delimiter = ',', value_enum)]
    pub contenders: Vec<ContenderKind>,
    /// Objects per batched get (dimstore get_batch, redis MGET).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// The `dimstore-server` binary. [default: next to this program, then PATH]
    #[arg(long, env = "DIMSTORE_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
    /// Worker threads of the dimstore server (`--threads`).
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// The `redis-server` binary.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
}

/// Which parts of the benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parts {
    /// Latency and throughput.
    All,
    /// Latency (and the raw TCP stream) only.
    Latency,
    /// Throughput only.
    Throughput,
}

/// Resolved settings of one benchmark run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Which parts run.
    pub parts: Parts,
    /// Quick (smoke test) mode.
    pub quick: bool,
    /// CSV output file.
    pub csv: Option<PathBuf>,
    /// Latency object sizes, ascending.
    pub sizes: Vec<u64>,
    /// Client process counts for throughput, ascending.
    pub client_counts: Vec<usize>,
    /// Length of one throughput measurement.
    pub duration: Duration,
    /// Time bound of one latency measurement.
    pub latency_time: Duration,
    /// Placements, in order.
    pub placements: Vec<Placement>,
    /// Contenders, in order.
    pub contenders: Vec<ContenderKind>,
    /// Objects per batched get.
    pub batch: usize,
    /// Object size for throughput.
    pub throughput_size: u64,
    /// `dimstore-server` binary.
    pub server_bin: PathBuf,
    /// dimstore server worker threads.
    pub server_threads: usize,
    /// `redis-server` binary.
    pub redis_bin: PathBuf,
}

/// Default latency sizes: 8 B to 128 MiB in x8 steps.
pub const FULL_SIZES: [u64; 9] = [
    8,
    64,
    512,
    4 << 10,
    32 << 10,
    256 << 10,
    2 << 20,
    16 << 20,
    128 << 20,
];
const QUICK_SIZES: [u64; 4] = [8, 4 << 10, 256 << 10, 16 << 20];

impl Settings {
    /// Resolves `args` for `parts`.
    pub fn resolve(args: RunArgs, parts: Parts) -> anyhow::Result<Settings> {
        let quick = args.quick;
        let mut sizes = if args.sizes.is_empty() {
            if quick {
                QUICK_SIZES.to_vec()
            } else {
                FULL_SIZES.to_vec()
            }
        } else {
            args.sizes
        };
        sizes.sort_unstable();
        sizes.dedup();
        if sizes.first() == Some(&0) {
            bail!("object sizes must be at least 1 byte");
        }
        let max_clients = args.clients.unwrap_or(if quick { 2 } else { 4 });
        if max_clients == 0 {
            bail!("--clients must be at least 1");
        }
        if args.batch == 0 || args.server_threads == 0 {
            bail!("--batch and --server-threads must be at least 1");
        }
        let placements = if args.placements.is_empty() {
            if quick {
                vec![Placement::SameCpu, Placement::Unpinned]
            } else {
                vec![Placement::SameCpu, Placement::CrossCpu, Placement::Unpinned]
            }
        } else {
            args.placements
        };
        let contenders = if args.contenders.is_empty() {
            ContenderKind::ALL.to_vec()
        } else {
            args.contenders
        };
        let server_bin = match args.server_bin {
            Some(bin) => bin,
            None => default_server_bin()?,
        };
        Ok(Settings {
            parts,
            quick,
            csv: args.csv,
            sizes,
            client_counts: client_counts(max_clients),
            duration: args.duration.unwrap_or(if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(2)
            }),
            latency_time: args.latency_time.unwrap_or(if quick {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(3)
            }),
            placements,
            contenders,
            batch: args.batch,
            throughput_size: 1024,
            server_bin,
            server_threads: args.server_threads,
            redis_bin: args.redis_server,
        })
    }

    /// Whether latency is measured.
    pub fn latency(&self) -> bool {
        self.parts != Parts::Throughput
    }

    /// Whether throughput is measured.
    pub fn throughput(&self) -> bool {
        self.parts != Parts::Latency
    }

    /// Timed iterations of one latency measurement of `size`-byte objects: many for small
    /// objects, few for large ones (about 4 GiB moved per measurement; 256 MiB when quick).
    pub fn iterations(&self, size: u64) -> usize {
        let (budget, lo, hi) = if self.quick {
            (256u64 << 20, 3, 200)
        } else {
            (4u64 << 30, 10, 2000)
        };
        (budget / size.max(1)).clamp(lo, hi) as usize
    }

    /// Untimed warm-up iterations before a latency measurement.
    pub fn warmup(&self, size: u64) -> usize {
        (self.iterations(size) / 10).clamp(1, 20)
    }

    /// Size of the raw TCP one-way stream: the largest latency size.
    pub fn stream_size(&self) -> u64 {
        self.sizes.last().copied().unwrap_or(128 << 20)
    }
}

/// 1, 2, 4, ... below `max`, then `max`.
fn client_counts(max: usize) -> Vec<usize> {
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |n| n.checked_mul(2))
        .take_while(|&n| n < max)
        .collect();
    counts.push(max);
    counts
}

/// `dimstore-server` next to this program (or one level up, for test binaries), else `PATH`.
pub(crate) fn default_server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let found = exe.ancestors().skip(1).take(2).find_map(|dir| {
        let candidate = dir.join("dimstore-server");
        candidate.is_file().then_some(candidate)
    });
    Ok(found.unwrap_or_else(|| PathBuf::from("dimstore-server")))
}

/// Parses `8`, `4K`, `4KiB`, `16M`, `1GiB` (binary units).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 8, 4K, 16MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit `{other}` (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses `2s`, `300ms`, `1.5s`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 2s or 300ms"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{text}`: {e}"))
}

/// `8 B`, `4 KiB`, `128 MiB`: sizes as tables show them.
pub fn human_size(size: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut unit = 0;
    let mut value = size;
    while unit + 1 < UNITS.len() && value >= 1024 && value & 1023 == 0 {
        value /= 1024;
        unit += 1;
    }
    format!("{value} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("8"), Ok(8));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("4X").is_err());
        assert_eq!(human_size(128 << 20), "128 MiB");
        assert_eq!(human_size(1000), "1000 B");
    }

    #[test]
    fn durations_and_client_counts() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(client_counts(4), vec![1, 2, 4]);
        assert_eq!(client_counts(3), vec![1, 2, 3]);
        assert_eq!(client_counts(1), vec![1]);
    }
}
