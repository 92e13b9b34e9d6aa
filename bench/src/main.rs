//! `dimstore-bench`: dimstore against raw TCP and redis, side by side. See the library docs.

use clap::{Parser, Subcommand};
use dimstore_bench::contenders::raw_tcp;
use dimstore_bench::options::Parts;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (args, parts) = match cli.command {
        None => (cli.run, Parts::All),
        Some(Command::Run(args)) => (args, Parts::All),
        Some(Command::Latency(args)) => (args, Parts::Latency),
        Some(Command::Throughput(args)) => (args, Parts::Throughput),
        Some(Command::ZeroCopy(args)) => return zero_copy::run(&args),
        Some(Command::Worker(args)) => return worker(&args),
        Some(Command::RawServer) => return raw_tcp::serve_process(),
        #[cfg(feature = "mpi")]
        Some(Command::Mpi(args)) => return dimstore_bench::mpirun::run(args),
    };
    run(&Settings::resolve(args, parts)?)?;
    Ok(())
}
