//! Our own raw libfabric one-sided read (fabtests' `fi_rma_bw` is not packaged in Debian),
//! over the safe wrappers of `dimstore-ofi`, as two hidden subcommands:
//!
//! - `rdma-fi-target`: opens an RDM endpoint on the provider, registers a buffer of the
//!   largest size for remote reads and prints one JSON line [`TargetInfo`] (endpoint name in
//!   hex, key, base address); then progresses its completion queue (which is what serves
//!   reads on manual-progress providers such as `tcp;ofi_rxm`), sleeping on its wait fd as
//!   the dimstore server's exporter does, until its stdin closes or `--max-time` passes.
//! - `rdma-fi-read`: opens its own endpoint, inserts the target's name and, per size, reads
//!   the bytes again and again within a count and a time bound; prints one JSON line
//!   [`ReadResult`] per size and strategy: `whole` (one `fi_read` of the size) and, for sizes
//!   above the chunk, `chunked` (pieces of `--chunk` bytes, `--in-flight` at once: the
//!   strategy of dimstore's own libfabric reader).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use dimstore_ofi::{
    AddressVector, CompletionQueue, Domain, Endpoint, Fabric, Info, InfoQuery, MemoryRegion,
    PeerAddr, WaitError,
};
use serde::{Deserialize, Serialize};

use crate::contenders::pattern;
use crate::measure::{timed_loop, Bounds};
use crate::options::{parse_duration, parse_size};

/// Deadline of one read (a whole object) in the initiator.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Options of the hidden `rdma-fi-target` subcommand.
#[derive(Debug, Clone, Args)]
pub struct FiTargetArgs {
    /// libfabric provider, e.g. `tcp;ofi_rxm` or `shm`.
    #[arg(long)]
    pub provider: String,
    /// Local address passed to fi_getinfo with FI_SOURCE (e.g. 127.0.0.1 for tcp).
    #[arg(long)]
    pub node: Option<String>,
    /// Bytes registered for remote reads.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Longest lifetime, whatever happens to the bench.
    #[arg(long, value_parser = parse_duration, default_value = "600s")]
    pub max_time: Duration,
}

/// Options of the hidden `rdma-fi-read` subcommand.
#[derive(Debug, Clone, Args)]
pub struct FiReadArgs {
    /// libfabric provider, e.g. `tcp;ofi_rxm` or `shm`.
    #[arg(long)]
    pub provider: String,
    /// Local address passed to fi_getinfo with FI_SOURCE.
    #[arg(long)]
    pub node: Option<String>,
    /// The target's endpoint name, hex.
    #[arg(long)]
    pub name: String,
    /// The target region's key.
    #[arg(long)]
    pub key: u64,
    /// The target region's base address (0 where the provider uses offsets).
    #[arg(long)]
    pub base: u64,
    /// Sizes to read (each at most the target's region).
    #[arg(long, value_delimiter = ',', value_parser = parse_size, required = true)]
    pub sizes: Vec<u64>,
    /// Longest time spent on one size and strategy.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub cell_time: Duration,
    /// Chunk of the `chunked` strategy.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    pub chunk: u64,
    /// Chunks in flight in the `chunked` strategy.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
}

/// What the target prints once its region is registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetInfo {
    /// Endpoint name (`fi_getname`), hex.
    pub name: String,
    /// Remote key of the region.
    pub key: u64,
    /// Address of the region's first byte for peers.
    pub base: u64,
    /// The provider fi_getinfo chose.
    pub provider: String,
}

/// One measurement of the initiator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReadResult {
    /// Bytes per read.
    pub size: u64,
    /// `whole` or `chunked`.
    pub strategy: String,
    /// Reads timed.
    pub count: u64,
    /// Median time of one read of `size` bytes, us.
    pub median_us: f64,
    /// 99th percentile, us.
    pub p99_us: f64,
}

/// An endpoint with its fabric, domain, queue and vector.
struct Node {
    fabric: Fabric,
    domain: Domain,
    cq: CompletionQueue,
    av: AddressVector,
    ep: Endpoint,
}

fn open(provider: &str, node: Option<&str>) -> anyhow::Result<Node> {
    let mut query = InfoQuery::provider(provider);
    if let Some(node) = node {
        query = query.source_node(node);
    }
    let info =
        Info::query(&query).with_context(|| format!("fi_getinfo for provider {provider:?}"))?;
    let fabric = Fabric::open(info).context("fi_fabric")?;
    let domain = Domain::open(&fabric).context("fi_domain")?;
    let cq = CompletionQueue::open(&domain, 256).context("fi_cq_open")?;
    let av = AddressVector::open(&domain).context("fi_av_open")?;
    let ep = Endpoint::open(&domain, &cq, &av).context("fi_endpoint")?;
    Ok(Node {
        fabric,
        domain,
        cq,
        av,
        ep,
    })
}

/// Runs the target (the `rdma-fi-target` subcommand).
pub fn target(args: &FiTargetArgs) -> anyhow::Result<()> {
    let me = open(&args.provider, args.node.as_deref())?;
    let len = usize::try_from(args.size)?;
    let mut region = MemoryRegion::register(&me.domain, pattern(len)).context("fi_mr_reg")?;
    if me.fabric.info().regions_bind_to_endpoint() {
        region.bind(&me.ep).context("fi_mr_bind")?;
    }
    let info = TargetInfo {
        name: hex(&me.ep.name().context("fi_getname")?),
        key: region.key().context("fi_mr_key")?,
        base: region.remote_address(),
        provider: me.fabric.info().provider(),
    };
    serve_target(&info, args.max_time, || {
        me.cq
            .wait_for_event(Duration::from_millis(100))
            .context("progress")?;
        Ok(())
    })?;
    drop(region);
    Ok(())
}

/// A target's life once its region is ready: prints `info` as one JSON line, then calls
/// `progress` (which serves reads, waiting at most about 100 ms) until stdin closes or
/// `max_time` passes.
pub(crate) fn serve_target(
    info: &impl Serialize,
    max_time: Duration,
    mut progress: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(info)?)?;
    out.flush()?;
    drop(out);
    let closed = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&closed);
    std::thread::spawn(move || {
        let mut sink = String::new();
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) {
            sink.clear();
        }
        flag.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    while !closed.load(Ordering::Relaxed) && started.elapsed() < max_time {
        progress()?;
    }
    Ok(())
}

/// Runs the initiator (the `rdma-fi-read` subcommand).
pub fn initiator(args: &FiReadArgs) -> anyhow::Result<()> {
    let me = open(&args.provider, args.node.as_deref())?;
    let peer = me
        .av
        .insert(&unhex(&args.name)?)
        .context("fi_av_insert of the target's name")?;
    let read = Reader {
        ep: &me.ep,
        peer,
        base: args.base,
        key: args.key,
    };
    let plan = ReadPlan {
        tool: "fi_read",
        sizes: &args.sizes,
        chunk: args.chunk,
        in_flight: args.in_flight,
        cell_time: args.cell_time,
    };
    read_sizes(&plan, |len, piece, in_flight, spare| {
        read.object(len, piece, in_flight, spare)
    })?;
    drop(me.ep);
    let _ = me.cq.pending_ops();
    Ok(())
}

/// Reads of one peer's region.
struct Reader<'a> {
    ep: &'a Endpoint,
    peer: PeerAddr,
    base: u64,
    key: u64,
}

impl Reader<'_> {
    /// Reads `len` bytes from the region's start in pieces of `piece` bytes, at most
    /// `in_flight` at once; returns the pieces' buffers in order (taken from `spare`).
    fn object(
        &self,
        len: usize,
        piece: usize,
        in_flight: usize,
        spare: &mut Vec<Vec<u8>>,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let deadline = Instant::now() + READ_LIMIT;
        let mut done = pipelined(
            len,
            piece,
            in_flight,
            spare,
            |offset, buffer| {
                self.ep
                    .read(self.peer, self.base + offset, self.key, buffer)
            },
            |op| {
                let completion = op
                    .wait(deadline)
                    .map_err(WaitError::into_error)
                    .context("fi_read")?;
                ensure!(
                    completion.len == completion.buffer.len(),
                    "fi_read moved {} of {} bytes",
                    completion.len,
                    completion.buffer.len()
                );
                Ok(completion.buffer)
            },
        )?;
        if len == 0 {
            done.push(Vec::new());
        }
        Ok(done)
    }
}

/// Reads `len` bytes in pieces of `piece` bytes with at most `in_flight` operations
/// outstanding: `post(offset, buffer)` starts the read of one piece into a buffer taken
/// from `spare`, `complete(op)` waits for the oldest and gives its buffer back. Returns the
/// pieces' buffers in order.
pub(crate) fn pipelined<Op>(
    len: usize,
    piece: usize,
    in_flight: usize,
    spare: &mut Vec<Vec<u8>>,
    mut post: impl FnMut(u64, Vec<u8>) -> Op,
    mut complete: impl FnMut(Op) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut pending = VecDeque::new();
    let mut done = Vec::with_capacity(len.div_ceil(piece.max(1)));
    let mut offset = 0usize;
    while offset < len || !pending.is_empty() {
        while pending.len() < in_flight && offset < len {
            let n = piece.min(len - offset);
            let mut buffer = spare.pop().unwrap_or_default();
            buffer.resize(n, 0);
            pending.push_back(post(offset as u64, buffer));
            offset += n;
        }
        if let Some(op) = pending.pop_front() {
            done.push(complete(op)?);
        }
    }
    Ok(done)
}

/// What an initiator reads: every size, with each strategy.
pub(crate) struct ReadPlan<'a> {
    /// The tool's name in error messages (`fi_read`, `ucp_get`).
    pub tool: &'a str,
    /// Sizes to read.
    pub sizes: &'a [u64],
    /// Chunk of the `chunked` strategy.
    pub chunk: u64,
    /// Chunks in flight in the `chunked` strategy.
    pub in_flight: usize,
    /// Longest time spent on one size and strategy.
    pub cell_time: Duration,
}

/// The initiator's loop: per size, the strategies `whole` (one read of the size) and,
/// above the chunk, `chunked` (chunks, several in flight); each strategy's first read is
/// checked against the target's bytes (untimed, also a warm-up), then [`time_reads`] prints
/// its line. `read_object(len, piece, in_flight, spare)` reads one object of `len` bytes in
/// pieces, its buffers taken from `spare`, and returns them in order.
pub(crate) fn read_sizes(
    plan: &ReadPlan<'_>,
    mut read_object: impl FnMut(usize, usize, usize, &mut Vec<Vec<u8>>) -> anyhow::Result<Vec<Vec<u8>>>,
) -> anyhow::Result<()> {
    let chunk = usize::try_from(plan.chunk)?.max(1);
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    let expected = pattern(usize::try_from(largest)?);
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut out = std::io::stdout().lock();
    for &size in plan.sizes {
        let len = usize::try_from(size)?;
        let mut strategies = vec![("whole", len.max(1), 1)];
        if len > chunk {
            strategies.push(("chunked", chunk, plan.in_flight.max(1)));
        }
        for (strategy, piece, in_flight) in strategies {
            spare.clear();
            // Untimed: one read checked against the target's bytes (and warm-up).
            let first = read_object(len, piece, in_flight, &mut spare)?;
            ensure!(
                first
                    .iter()
                    .flatten()
                    .copied()
                    .eq(expected[..len].iter().copied()),
                "{} {size} B ({strategy}): the bytes differ from the target's",
                plan.tool
            );
            spare.extend(first);
            time_reads(&mut out, size, strategy, plan.cell_time, || {
                let bufs = read_object(len, piece, in_flight, &mut spare)?;
                spare.extend(bufs);
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex back to bytes.
pub fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            ensure!(pair.len() == 2, "odd-length hex");
            let digits = std::str::from_utf8(pair).context("bad hex")?;
            u8::from_str_radix(digits, 16).context("bad hex")
        })
        .collect()
}

/// Times `read_object` (one whole object per call) for `size` bytes with `strategy`,
/// bounded in count (about 1 GiB moved, 5 to 5000 reads) and in `cell_time`, and prints
/// one [`ReadResult`] line to `out`.
fn time_reads(
    out: &mut impl Write,
    size: u64,
    strategy: &str,
    cell_time: Duration,
    mut read_object: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let bounds = Bounds {
        warmup: 1,
        iterations: super::get::iterations(size),
        time: cell_time,
    };
    let latencies = timed_loop(bounds, |_| read_object(), || Ok(()))?;
    let result = ReadResult {
        size,
        strategy: strategy.into(),
        count: latencies.count(),
        median_us: latencies.median_us(),
        p99_us: latencies.p99_us(),
    };
    writeln!(out, "{}", serde_json::to_string(&result)?)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = vec![0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex(&hex(&bytes)).expect("unhex"), bytes);
        assert!(unhex("abc").is_err());
    }
}
