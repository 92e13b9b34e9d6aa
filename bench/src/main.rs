//! `dimstore-bench`: dimstore against raw TCP and redis, side by side. See the library docs.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use dimstore_bench::contenders::raw_tcp;
use dimstore_bench::functions::{self, FunctionsArgs};
use dimstore_bench::options::Parts;
use dimstore_bench::rdma::{self, fi_read, get, ucx_get, RdmaArgs};
use dimstore_bench::throughput::{worker, WorkerArgs};
use dimstore_bench::zero_copy::{self, ZeroCopyArgs};
use dimstore_bench::{run::run, RunArgs, Settings};

/// Benchmarks dimstore against the raw TCP limit and redis-server, under the same CPU
/// placement for every contender.
#[derive(Debug, Parser)]
#[command(
    name = "dimstore-bench",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Latency, bandwidth and throughput (the default).
    #[command(alias = "all")]
    Run(RunArgs),
    /// Put/get latency per object size and the raw TCP stream.
    Latency(RunArgs),
    /// Small-get throughput with several client processes.
    Throughput(RunArgs),
    /// Same-node gets: mapped vs copied vs memcpy; in-place puts vs memcpy.
    ZeroCopy(ZeroCopyArgs),
    /// One-sided transports (UCX, libfabric) across two local nodes, next to the raw
    /// transports' tools (ucx_perftest, fi_pingpong, our fi_read) on the same provider.
    Rdma(RdmaArgs),
    /// Functions next to the data: slice and sum by invoke vs get, module start-up.
    Functions(FunctionsArgs),
    /// Memory pressure: spill and restore bandwidth next to `dd` with direct I/O, hot gets
    /// while spilling vs idle.
    Spill(dimstore_bench::spill::SpillArgs),
    /// Patterns across MPI ranks through the fleet vs plain MPI (run under mpirun or srun,
    /// with the fleet from `dimstore-launch run`).
    #[cfg(feature = "mpi")]
    Mpi(dimstore_bench::mpirun::MpiArgs),
    /// One throughput client process (started by the bench itself).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// The raw TCP server process (started by the bench itself).
    #[command(hide = true)]
    RawServer,
    /// The client process of one `rdma` row (started by the bench itself).
    #[command(hide = true)]
    RdmaGet(get::GetArgs),
    /// The target of our fi_read (started by the bench itself).
    #[command(hide = true)]
    RdmaFiTarget(fi_read::FiTargetArgs),
    /// The initiator of our fi_read (started by the bench itself).
    #[command(hide = true)]
    RdmaFiRead(fi_read::FiReadArgs),
    /// The target of our ucp_get (started by the bench itself).
    #[command(hide = true)]
    RdmaUcxTarget(ucx_get::UcxTargetArgs),
    /// The initiator of our ucp_get (started by the bench itself).
    #[command(hide = true)]
    RdmaUcxGet(ucx_get::UcxGetArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, parts) = match cli.command {
        None => (cli.run, Parts::All),
        Some(Command::Run(args)) => (args, Parts::All),
        Some(Command::Latency(args)) => (args, Parts::Latency),
        Some(Command::Throughput(args)) => (args, Parts::Throughput),
        Some(Command::ZeroCopy(args)) => return zero_copy::run(&args),
        Some(Command::Functions(args)) => return functions::run(&args),
        Some(Command::Spill(args)) => return dimstore_bench::spill::run(&args),
        Some(Command::Worker(args)) => return worker(&args),
        Some(Command::RawServer) => return raw_tcp::serve_process(),
        Some(Command::Rdma(args)) => return rdma::run(&args),
        Some(Command::RdmaGet(args)) => return get::client(&args),
        Some(Command::RdmaFiTarget(args)) => return fi_read::target(&args),
        Some(Command::RdmaFiRead(args)) => return fi_read::initiator(&args),
        Some(Command::RdmaUcxTarget(args)) => return ucx_get::target(&args),
        Some(Command::RdmaUcxGet(args)) => return ucx_get::initiator(&args),
        #[cfg(feature = "mpi")]
        Some(Command::Mpi(args)) => return dimstore_bench::mpirun::run(args),
    };
    run(&Settings::resolve(args, parts)?)?;
    Ok(())
}
