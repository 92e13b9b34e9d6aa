//! `dimstore-bench zero-copy`: same-node gets on the mapped path and on the copy path, next
//! to memcpy of the same size; and in-place puts (create, write, seal) next to memcpy into
//! warm memory.
//!
//! A mapped get returns a view of the server's memory: its cost should not depend on the
//! size. The copy path moves the bytes through the node's Unix socket. memcpy is the limit of
//! any copy. Every loop is bounded in iterations and time.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use dimstore::{ClientConfig, LocalMode, SpawnPolicy, Store};
use dimstore_proto::ReadyFile;

use crate::measure::Latencies;
use crate::rdma::get::RowServer;

/// Options of `dimstore-bench zero-copy`.
#[derive(Debug, Clone, Args)]
pub struct ZeroCopyArgs {
    /// Write rows `path,size_bytes,median_us` (path: mapped, copy, memcpy) here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write put rows `path,size_bytes,median_us,mb_per_s` (create_seal, memcpy) here.
    #[arg(long)]
    pub put_csv: Option<PathBuf>,
    /// Object sizes, e.g. `8,1K,1M,1G`. [default: 8 B to 1 GiB in x8 steps; quick: 8,1K,1M,16M]
    #[arg(long, value_delimiter = ',')]
    pub sizes: Option<Vec<bytesize::ByteSize>>,
    /// Few sizes, short loops (a smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Longest time spent on one measurement. [default: 1s; quick: 200ms]
    #[arg(long, value_parser = crate::options::parse_duration)]
    pub cell_time: Option<Duration>,
    /// CPUs the server and this client run on (`none`: no pinning). One CPU avoids the
    /// cross-CPU wake-up that dominates small transfers on small VMs. [default: 0]
    #[arg(long, default_value = "0")]
    pub cpus: String,
    /// The server binary. [default: dimstore-server next to this program]
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
}

/// One measurement.
#[derive(Debug, Clone)]
struct Cell {
    path: &'static str,
    size: u64,
    median_us: f64,
}

/// Runs the zero-copy benchmark and prints its table.
pub fn run(args: &ZeroCopyArgs) -> anyhow::Result<()> {
    let sizes: Vec<u64> = match &args.sizes {
        Some(s) => s.iter().map(|b| b.as_u64()).collect(),
        None if args.quick => vec![8, 1 << 10, 1 << 20, 16 << 20],
        None => (0..10).map(|i| 8u64 << (3 * i)).collect(),
    };
    let cell_time = args.cell_time.unwrap_or(if args.quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    });
    let largest = sizes.iter().copied().max().unwrap_or(8);
    let cpus: Option<Vec<usize>> = match args.cpus.as_str() {
        "none" => None,
        list => Some(
            list.split(',')
                .map(|c| c.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--cpus {list}: expected `none` or a list like 0,1"))?,
        ),
    };
    // The server inherits the mask when spawned; this thread keeps it while measuring.
    let _pinned = crate::placement::Pinned::to(cpus.as_deref())?;
    eprintln!("zero-copy: pinned to CPUs {}", args.cpus);
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => crate::options::default_server_bin()?,
    };
    // The server's default worker threads.
    let server = RowServer::start(&bin, "zero-copy-bench", None, &[], largest, None)?;
    let mapped = client(&server.ready, LocalMode::Map)?;
    let copy = client(&server.ready, LocalMode::Copy)?;
    anyhow::ensure!(
        mapped.maps_local_objects(),
        "the server did not grant mapping to a same-node client"
    );
    let mut gets = Vec::new();
    let mut puts = Vec::new();
    for &size in &sizes {
        eprintln!("zero-copy: {}", bytesize::ByteSize(size));
        let len = usize::try_from(size)?;
        let source = vec![0x5au8; len];
        let mut target = vec![0u8; len];
        target.copy_from_slice(&source); // warm
        let key = mapped.put(&source).context("put")?;
        let bounds = Bounds::for_size(size, cell_time);
        gets.push(Cell {
            path: "mapped",
            size,
            median_us: bounds.time(|| {
                let object = mapped.get(&key)?;
                std::hint::black_box(object.first());
                anyhow::ensure!(object.is_mapped(), "not mapped");
                Ok(object)
            })?,
        });
        gets.push(Cell {
            path: "copy",
            size,
            median_us: bounds.time(|| {
                let object = copy.get(&key)?;
                std::hint::black_box(object.first());
                Ok(object)
            })?,
        });
        // memcpy between warm buffers: the reference for both tables.
        let memcpy_us = bounds.time(|| {
            target.copy_from_slice(&source);
            std::hint::black_box(&target);
            Ok(())
        })?;
        gets.push(Cell {
            path: "memcpy",
            size,
            median_us: memcpy_us,
        });
        mapped.evict(&key)?;
        puts.push(Cell {
            path: "create_seal",
            size,
            median_us: bounds.time(|| {
                let mut reservation = mapped.create(size)?;
                reservation.copy_from_slice(&source);
                let key = reservation.seal()?;
                Ok(Evicted(&mapped, key))
            })?,
        });
        puts.push(Cell {
            path: "memcpy",
            size,
            median_us: memcpy_us,
        });
        let stats = mapped.stats()?;
        anyhow::ensure!(
            stats.reservations == 0 && stats.objects == 0,
            "the put loop left objects or reservations behind"
        );
    }
    print_tables(&gets, &puts);
    if let Some(path) = &args.csv {
        let mut out =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "path,size_bytes,median_us")?;
        for c in &gets {
            writeln!(out, "{},{},{:.3}", c.path, c.size, c.median_us)?;
        }
    }
    if let Some(path) = &args.put_csv {
        let mut out =
            File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        writeln!(out, "path,size_bytes,median_us,mb_per_s")?;
        for c in &puts {
            writeln!(
                out,
                "{},{},{:.3},{:.1}",
                c.path,
                c.size,
                c.median_us,
                mb_per_s(c)
            )?;
        }
    }
    Ok(())
}

fn mb_per_s(c: &Cell) -> f64 {
    c.size as f64 / c.median_us.max(1e-3)
}

fn print_tables(gets: &[Cell], puts: &[Cell]) {
    let find = |cells: &[Cell], path: &str, size: u64| {
        cells
            .iter()
            .find(|c| c.path == path && c.size == size)
            .map_or(f64::NAN, |c| c.median_us)
    };
    let sizes: Vec<u64> = gets
        .iter()
        .filter(|c| c.path == "mapped")
        .map(|c| c.size)
        .collect();
    println!("Same-node get, median us (one client, one server on this node)");
    println!(
        "{:>10} {:>12} {:>12} {:>12} {:>12}",
        "size", "mapped", "copy", "memcpy", "copy/mapped"
    );
    for &s in &sizes {
        let (m, c, k) = (
            find(gets, "mapped", s),
            find(gets, "copy", s),
            find(gets, "memcpy", s),
        );
        println!(
            "{:>10} {:>12.2} {:>12.2} {:>12.2} {:>11.1}x",
            bytesize::ByteSize(s).to_string(),
            m,
            c,
            k,
            c / m
        );
    }
    println!("\nIn-place put (create, write, seal) vs memcpy into warm memory");
    println!(
        "{:>10} {:>14} {:>12} {:>14} {:>12} {:>8}",
        "size", "create+seal us", "MB/s", "memcpy us", "MB/s", "ratio"
    );
    for &s in &sizes {
        let (p, k) = (find(puts, "create_seal", s), find(puts, "memcpy", s));
        println!(
            "{:>10} {:>14.2} {:>12.0} {:>14.2} {:>12.0} {:>7.2}x",
            bytesize::ByteSize(s).to_string(),
            p,
            s as f64 / p,
            k,
            s as f64 / k,
            k / p
        );
    }
    if let (Some(&small), Some(&large)) = (sizes.first(), sizes.last()) {
        let flat = find(gets, "mapped", large) / find(gets, "mapped", small);
        println!(
            "\nmapped get {} / {}: {:.2}x (target <= 2x); create+seal {} at {:.0}% of memcpy (target >= 70%)",
            bytesize::ByteSize(large),
            bytesize::ByteSize(small),
            flat,
            bytesize::ByteSize(large),
            100.0 * find(puts, "memcpy", large) / find(puts, "create_seal", large)
        );
    }
}

/// A stored object evicted when dropped, outside the timed region: puts in steady state
/// reuse the memory the previous one freed.
struct Evicted<'a>(&'a Store, dimstore::Key);

impl Drop for Evicted<'_> {
    fn drop(&mut self) {
        let _ = self.0.evict(&self.1);
    }
}

/// Iteration and time bounds for one size.
struct Bounds {
    iterations: usize,
    time: Duration,
}

impl Bounds {
    fn for_size(size: u64, time: Duration) -> Bounds {
        // Large copies take long: fewer iterations, never fewer than 3.
        let iterations = ((4u64 << 30) / size.max(1)).clamp(3, 2000) as usize;
        Bounds { iterations, time }
    }

    /// Median microseconds of `op` (its result dropped outside the timed region).
    fn time<T>(&self, mut op: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<f64> {
        let mut lat = Latencies::default();
        let started = Instant::now();
        let _ = op()?; // warm-up
        for _ in 0..self.iterations {
            let t = Instant::now();
            let result = op()?;
            lat.record(t.elapsed());
            drop(result);
            if started.elapsed() > self.time {
                break;
            }
        }
        Ok(lat.median_us())
    }
}

/// A client of `server` on its node: through the mapped (`Map`) or copy (`Copy`) path.
fn client(server: &ReadyFile, local: LocalMode) -> anyhow::Result<Store> {
    let config = ClientConfig {
        node: Some(server.node.clone()),
        local,
        // The mapped path maps every size (the default copies small objects inline).
        local_map_from: 0,
        spawn: SpawnPolicy::Never,
        timeout: Duration::from_secs(120),
        ..ClientConfig::default()
    };
    Ok(Store::connect(&server.address, config)?)
}
