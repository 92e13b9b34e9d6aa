//! Our own raw UCX one-sided read over the safe wrappers of `dimstore-ucx`, next to
//! `ucx_perftest -t ucp_get` (which keeps many reads in flight; over tcp, where UCX emulates
//! RMA with active messages, that collapses, so it is no fair limit there). Two hidden
//! subcommands, configured by the row's `UCX_*` environment:
//!
//! - `rdma-ucx-target`: maps a buffer of the largest size (`ucp_mem_map`), prints one JSON
//!   line [`UcxTargetInfo`] (worker address, packed remote key, base address, in hex), then
//!   progresses its worker (sleeping on its event fd, as the dimstore server's exporter
//!   does) until its stdin closes or `--max-time` passes.
//! - `rdma-ucx-get`: connects to the target's worker and, per size, reads the bytes again
//!   and again within a count and a time bound (`ucp_get_nbx`): `whole` (one read of the
//!   size) and, above the chunk, `chunked` (`--chunk` pieces, `--in-flight` at once); prints
//!   one JSON line [`ReadResult`] per size and strategy.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use dimstore_ucx::{Context, ContextConfig, Endpoint, MemoryRegion, RemoteKey, Worker};
use dimstore_ucx::{WaitError, WorkerAddress};
use serde::{Deserialize, Serialize};

use super::fi_read::{hex, pipelined, read_sizes, serve_target, unhex, ReadPlan};
use crate::contenders::pattern;
use crate::options::{parse_duration, parse_size};

/// Deadline of one read (a whole object).
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Options of the hidden `rdma-ucx-target` subcommand.
#[derive(Debug, Clone, Args)]
pub struct UcxTargetArgs {
    /// Bytes mapped for remote reads.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// Longest lifetime, whatever happens to the bench.
    #[arg(long, value_parser = parse_duration, default_value = "600s")]
    pub max_time: Duration,
}

/// Options of the hidden `rdma-ucx-get` subcommand.
#[derive(Debug, Clone, Args)]
pub struct UcxGetArgs {
    /// The target's worker address, hex.
    #[arg(long)]
    pub address: String,
    /// The target's packed remote key, hex.
    #[arg(long)]
    pub rkey: String,
    /// The target region's address.
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
    /// Chunks in flight in the `chunked` strategy (UCX over tcp: few).
    #[arg(long, default_value_t = 2)]
    pub in_flight: usize,
}

/// What the target prints once its region is mapped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxTargetInfo {
    /// Worker address, hex.
    pub address: String,
    /// Packed remote key, hex.
    pub rkey: String,
    /// Address of the region's first byte.
    pub base: u64,
}

/// Runs the target (the `rdma-ucx-target` subcommand).
pub fn target(args: &UcxTargetArgs) -> anyhow::Result<()> {
    let ctx = Context::new(&ContextConfig::from_env()).context("ucp_init")?;
    let worker = Worker::new(&ctx).context("ucp_worker_create")?;
    let region =
        MemoryRegion::map(&ctx, pattern(usize::try_from(args.size)?)).context("ucp_mem_map")?;
    let info = UcxTargetInfo {
        address: hex(worker.address().context("worker address")?.as_bytes()),
        rkey: hex(&region.pack_rkey().context("rkey pack")?),
        base: region.address(),
    };
    serve_target(&info, args.max_time, || {
        worker
            .wait_for_event(Duration::from_millis(100))
            .context("wait")?;
        worker.progress();
        Ok(())
    })?;
    drop(region);
    Ok(())
}

/// Runs the initiator (the `rdma-ucx-get` subcommand).
pub fn initiator(args: &UcxGetArgs) -> anyhow::Result<()> {
    let ctx = Context::new(&ContextConfig::from_env()).context("ucp_init")?;
    let worker = Worker::new(&ctx).context("ucp_worker_create")?;
    let ep = Endpoint::connect(&worker, &WorkerAddress::from_bytes(unhex(&args.address)?))
        .context("ucp_ep_create")?;
    let rkey = ep.unpack_rkey(&unhex(&args.rkey)?).context("rkey unpack")?;
    let read = Reader {
        ep: &ep,
        rkey: &rkey,
        base: args.base,
    };
    let plan = ReadPlan {
        tool: "ucp_get",
        sizes: &args.sizes,
        chunk: args.chunk,
        in_flight: args.in_flight,
        cell_time: args.cell_time,
    };
    read_sizes(&plan, |len, piece, in_flight, spare| {
        read.object(len, piece, in_flight, spare)
    })?;
    let _ = ep.close(Instant::now() + Duration::from_secs(2));
    Ok(())
}

/// Reads of one peer's region.
struct Reader<'a> {
    ep: &'a Endpoint,
    rkey: &'a RemoteKey,
    base: u64,
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
        pipelined(
            len,
            piece,
            in_flight,
            spare,
            |offset, buffer| self.ep.get(self.base + offset, self.rkey, buffer),
            |request| {
                request
                    .wait(deadline)
                    .map_err(WaitError::into_error)
                    .context("ucp_get")
            },
        )
    }
}
