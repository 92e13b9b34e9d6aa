//! `dimstore-launch`: the command line. Everything it does lives in the library.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dimstore::fleet::{Fleet, FleetError};
use dimstore_launch::fleet_ops::{self, DownOptions, StopOutcome};
use dimstore_launch::launch::{self, StartOptions};
use dimstore_launch::remote;
use dimstore_launch::rundir::RunDir;
use dimstore_launch::step::LauncherKind;

#[derive(Debug, Parser)]
#[command(
    name = "dimstore-launch",
    version,
    about = "Start, inspect and stop dimstore fleets (one server per node)",
    long_about = "Start, inspect and stop dimstore fleets: one dimstore-server per node, \
        described by a fleet file that clients find through DIMSTORE_FLEET.\n\n\
        `run` starts a fleet, runs a command with DIMSTORE_FLEET and DIMSTORE_TOKEN set, and \
        stops the fleet when the command exits. `up` starts a fleet that keeps running; \
        `status` and `down` inspect and stop it.\n\n\
        Inside a batch job (Slurm, PBS Pro) the fleet is one server per node of the \
        allocation, started by one parallel launcher step: `srun --overlap \
        --ntasks-per-node=1` under Slurm, `mpiexec --ppn 1` (Cray PALS) or Open MPI's \
        `mpirun --map-by ppr:1:node` otherwise (--launcher-cmd, --launcher-kind). --hostfile \
        names the nodes explicitly. The fleet's directory (--run-dir) must be visible to all \
        nodes; by default it is a fresh directory under $DIMSTORE_FLEET_DIR, else \
        ~/.dimstore/fleets.\n\n\
        With --local N the fleet is N servers on this machine (simulated nodes node0, node1, \
        ...), each listening on 127.0.0.1."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a fleet, run CMD next to it, stop the fleet when CMD exits.
    #[command(
        long_about = "Start a fleet, run CMD with DIMSTORE_FLEET (the fleet file) and \
            DIMSTORE_TOKEN in its environment, and stop the fleet when CMD exits; the exit \
            code is CMD's (128 + N if signal N ended it).\n\n\
            SIGTERM and SIGHUP to the launcher are passed on to CMD, and so is SIGINT unless \
            the launcher runs in the terminal's foreground (a Ctrl-C there reaches CMD \
            directly). CMD gets --grace to exit, then is killed; the servers get SIGTERM, then \
            SIGKILL after 5 s. A signal while the fleet starts stops it at once."
    )]
    Run {
        #[command(flatten)]
        start: StartArgs,
        /// How long CMD may take to exit after a signal was passed on to it, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        grace: Duration,
        /// The command to run, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Start a fleet that keeps running; print its fleet file's path.
    #[command(
        long_about = "Start a fleet whose servers keep running after the launcher exits \
            (each in its own process group), write the fleet file and print its path on \
            stdout, e.g. `export DIMSTORE_FLEET=$(dimstore-launch up --local 2)`. Stop it \
            with `dimstore-launch down`."
    )]
    Up {
        #[command(flatten)]
        start: StartArgs,
    },
    /// Show every node's server: address, pid, objects, memory, requests, uptime.
    #[command(
        long_about = "Ask every node's server of a fleet for its statistics and print a table \
            (or JSON with --json). A node whose server does not answer within --timeout is \
            shown as DOWN with the reason. Exit code 1 if any node is down."
    )]
    Status {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop every node's server, then remove the fleet file and run directory.
    #[command(
        long_about = "Stop a fleet: ask each server to shut down (or send SIGTERM to its pid \
            when it does not answer and runs on this machine), wait until it is gone (killing \
            local ones that outstay --wait), then remove the fleet file and the run directory. \
            Nodes already stopped are fine, and so is a fleet file that is already gone. Exit \
            code 1 if a server is still running."
    )]
    Down {
        #[command(flatten)]
        fleet: FleetArgs,
        /// How long servers get to exit before local ones are killed, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Keep the run directory (server logs).
        #[arg(long)]
        keep: bool,
    },
    /// (Internal) run by the launcher step on every node: starts the node's server.
    #[command(hide = true, name = "node-server")]
    NodeServer {
        /// The fleet's run directory (shared by all nodes).
        #[arg(long, value_name = "DIR")]
        run_dir: PathBuf,
        /// The launcher's host (to find a routable address when the node's name has none).
        #[arg(long, value_name = "HOST")]
        origin: Option<String>,
        /// The server command, after `--`.
        #[arg(required = true, last = true, value_name = "SERVER")]
        server: Vec<OsString>,
    },
}

#[derive(Debug, Args)]
struct StartArgs {
    /// Start N servers on this machine, as simulated nodes node0..node{N-1} [default: one
    /// server per node of the batch allocation or --hostfile].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    local: Option<u32>,
    /// One server per host of this hostfile (Open MPI syntax), instead of the batch
    /// allocation's nodes.
    #[arg(long, value_name = "PATH", conflicts_with = "local")]
    hostfile: Option<PathBuf>,
    /// The parallel launcher that starts the servers, e.g. `mpirun --mca plm_rsh_agent ssh`;
    /// the arguments for one process per node are added [default: srun under Slurm, else
    /// mpiexec].
    #[arg(
        long,
        env = "DIMSTORE_LAUNCHER",
        value_name = "CMD",
        conflicts_with = "local"
    )]
    launcher_cmd: Option<String>,
    /// What kind of launcher --launcher-cmd is: srun, mpiexec (Cray PALS, MPICH Hydra) or
    /// openmpi [default: told from its name and --version].
    #[arg(
        long,
        env = "DIMSTORE_LAUNCHER_KIND",
        value_name = "KIND",
        conflicts_with = "local"
    )]
    launcher_kind: Option<LauncherKind>,
    /// Memory limit of each server, e.g. `512MiB`, `4GiB` [default: the server's, half of
    /// physical memory].
    #[arg(long, value_name = "SIZE")]
    memory_limit: Option<String>,
    /// What each server does when a put does not fit: `none` (StoreFull), `lru`, `lfu` or
    /// `fifo` (evict cold objects) [default: the server's, none].
    #[arg(long, value_name = "POLICY")]
    eviction: Option<String>,
    /// Directory on node-local disk where each server spills cold objects when its memory
    /// is full, e.g. `/local/scratch` [default: no spilling].
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Most bytes each server spills, e.g. `100GiB` [default: what the disk holds].
    #[arg(long, value_name = "SIZE")]
    spill_limit: Option<String>,
    /// Extra argument for every server, e.g. `--server-arg=--threads=4` (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// The dimstore-server binary [default: next to dimstore-launch, else on PATH].
    #[arg(long, env = "DIMSTORE_SERVER_BIN", value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// Where to write the fleet file [default: <run-dir>/fleet.json].
    #[arg(long, value_name = "PATH")]
    fleet_file: Option<PathBuf>,
    /// Directory for server logs and ready files; on an allocation it must be visible to all
    /// nodes [default: a fresh directory under $DIMSTORE_RUNTIME_DIR or the system temporary
    /// directory (--local), $DIMSTORE_FLEET_DIR or ~/.dimstore/fleets (allocations)].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// How long the servers may take to become ready, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
    /// Go on with the servers that started when others fail (at least one must start).
    #[arg(long)]
    allow_partial: bool,
    /// Keep the run directory (server logs) and fleet file when the fleet stops.
    #[arg(long)]
    keep: bool,
    /// Print no progress.
    #[arg(short, long)]
    quiet: bool,
    /// Every server serves OpenMetrics on /metrics (unauthenticated: on loopback with
    /// --local, on every address of the nodes otherwise), and <run-dir>/prometheus-targets.json
    /// lists them for a Prometheus `file_sd_configs` job.
    #[arg(long)]
    metrics: bool,
}

impl StartArgs {
    fn options(self) -> StartOptions {
        StartOptions {
            count: self.local.map(|n| n as usize),
            hostfile: self.hostfile,
            launcher_cmd: self.launcher_cmd.filter(|c| !c.trim().is_empty()),
            launcher_kind: self.launcher_kind,
            memory_limit: self.memory_limit,
            // Validated by the servers, like every server flag.
            server_args: [
                self.eviction.map(|p| ["--eviction".to_string(), p]),
                self.spill_dir
                    .map(|d| ["--spill-dir".to_string(), d.display().to_string()]),
                self.spill_limit.map(|l| ["--spill-limit".to_string(), l]),
            ]
            .into_iter()
            .flatten()
            .flatten()
            .chain(self.server_args)
            .collect(),
            server_bin: self.server_bin,
            fleet_file: self.fleet_file,
            run_dir: self.run_dir,
            ready_timeout: self.ready_timeout,
            allow_partial: self.allow_partial,
            keep: self.keep,
            quiet: self.quiet,
            metrics: self.metrics,
        }
    }
}

#[derive(Debug, Args)]
struct FleetArgs {
    /// The fleet file.
    #[arg(long, env = "DIMSTORE_FLEET", value_name = "PATH")]
    fleet_file: PathBuf,
    /// Timeout of each request to a server, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn main() -> ExitCode {
    // Our SIGINT/SIGTERM handling chains to what it replaces: drop the exiting handlers
    // libraries loaded with libfabric install first.
    dimstore::restore_default_signal_handlers();
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        // The reader of our output went away (`status | head -1`): nothing left to report.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dimstore-launch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` is a write to a pipe whose reader has closed it (Rust ignores SIGPIPE, so
/// such a write fails with `EPIPE`; `println!` would panic).
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            start,
            grace,
            command,
        } => match launch::run(&start.options(), &command, grace) {
            Ok(code) => Ok(exit_code(code)),
            Err(e) => {
                let code = e.exit_code();
                eprintln!("dimstore-launch: error: {:#}", anyhow::Error::from(e));
                Ok(exit_code(code))
            }
        },
        Command::Up { start } => {
            let path = launch::up(&start.options()).context("cannot start the fleet")?;
            // The fleet is up whatever happens to stdout; the path is on stderr too.
            let _ = writeln!(std::io::stdout(), "{}", path.display());
            eprintln!(
                "dimstore-launch: fleet is up; use it with\n  export DIMSTORE_FLEET={}\n\
                 and stop it with\n  dimstore-launch down --fleet-file {}",
                path.display(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { fleet, json } => status(&fleet, json),
        Command::Down { fleet, wait, keep } => down(&fleet, wait, keep),
        Command::NodeServer {
            run_dir,
            origin,
            server,
        } => Ok(exit_code(remote::node_main(
            &run_dir,
            origin.as_deref(),
            &server,
        ))),
    }
}

fn status(args: &FleetArgs, json: bool) -> anyhow::Result<ExitCode> {
    let fleet = read_fleet(&args.fleet_file)?;
    let statuses = fleet_ops::status(&fleet, args.timeout);
    if json {
        let value = fleet_ops::to_json(&args.fleet_file.display().to_string(), &fleet, &statuses);
        writeln!(
            std::io::stdout().lock(),
            "{}",
            serde_json::to_string_pretty(&value)?
        )?;
    } else {
        write!(
            std::io::stdout().lock(),
            "{}",
            fleet_ops::render_table(&statuses)
        )?;
    }
    let all_up = statuses.iter().all(fleet_ops::NodeStatus::is_up);
    Ok(if all_up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn down(args: &FleetArgs, wait: Duration, keep: bool) -> anyhow::Result<ExitCode> {
    let fleet = match Fleet::read(&args.fleet_file) {
        Err(FleetError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "dimstore-launch: no fleet file at {} (already down?)",
                args.fleet_file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        other => other.with_context(|| format!("cannot read {}", args.fleet_file.display()))?,
    };
    let options = DownOptions {
        timeout: args.timeout,
        wait,
    };
    let outcomes = fleet_ops::down(&fleet, options);
    for (node, outcome) in &outcomes {
        let text = match outcome {
            StopOutcome::Requested => "stopped".to_string(),
            StopOutcome::Signalled => "stopped (SIGTERM)".to_string(),
            StopOutcome::Killed => "killed (did not stop in time)".to_string(),
            StopOutcome::AlreadyStopped => "already stopped".to_string(),
            StopOutcome::Unreachable(why) => format!("unreachable, assumed stopped: {why}"),
            StopOutcome::Failed(why) => format!("STILL RUNNING: {why}"),
        };
        eprintln!("dimstore-launch: {node}: {text}");
    }
    if !outcomes.iter().all(|(_, o)| o.is_stopped()) {
        eprintln!(
            "dimstore-launch: kept {} since servers are still running",
            args.fleet_file.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    // A fleet on an allocation: its launcher step ends with its servers.
    let run_dir = run_dir_of(&fleet);
    if let Some(dir) = &run_dir {
        if let Some(forced) = remote::finish_step(dir.path(), wait) {
            eprintln!("dimstore-launch: {forced}");
        }
    }
    remove_fleet_files(run_dir.as_ref(), &args.fleet_file, keep)?;
    Ok(ExitCode::SUCCESS)
}

fn run_dir_of(fleet: &Fleet) -> Option<RunDir> {
    let logs: Vec<&Path> = fleet
        .nodes
        .iter()
        .filter_map(|n| n.log.as_deref().map(Path::new))
        .collect();
    RunDir::find(&logs)
}

fn remove_fleet_files(
    run_dir: Option<&RunDir>,
    fleet_file: &Path,
    keep: bool,
) -> anyhow::Result<()> {
    match (run_dir, keep) {
        (Some(dir), false) => dir
            .remove()
            .with_context(|| format!("cannot remove run directory {}", dir.path().display()))?,
        (Some(dir), true) => eprintln!(
            "dimstore-launch: kept run directory {}",
            dir.path().display()
        ),
        (None, _) => {}
    }
    match std::fs::remove_file(fleet_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", fleet_file.display()))
        }
        _ => Ok(()),
    }
}

fn read_fleet(path: &Path) -> anyhow::Result<Fleet> {
    Fleet::read(path).with_context(|| format!("cannot read fleet file {}", path.display()))
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
