//! `run` and `up`: start a fleet (on this machine with `--local N`, else on the nodes of the
//! batch allocation: Slurm, PBS or a hostfile), write its fleet file, then run a command next
//! to it and tear it down (`run`), or leave it running (`up`).

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dimstore::fleet::{Fleet, FleetError};
use dimstore::ClientConfig;
use dimstore_host::process;

use crate::allocation::{self, Allocation, DetectError, DetectOptions};
use crate::command::{self, CommandError, Forwarding};
use crate::interrupt::{self, Interrupts};
use crate::local::{LocalFleet, LocalSpec, ServerSpec, StartError, STOP_GRACE};
use crate::progress;
use crate::remote::{RemoteFleet, RemoteSpec};
use crate::rundir::{RunDir, RunDirError};
use crate::step::{Launcher, LauncherKind, StepError};

/// Variable naming the shared directory fleets on an allocation keep their files in.
pub const FLEET_DIR_VAR: &str = "DIMSTORE_FLEET_DIR";

/// How to start a fleet.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `Some(N)`: N servers on this machine (simulated nodes `node0`..); `None`: one per node
    /// of the batch allocation (or of `hostfile`).
    pub count: Option<usize>,
    /// An Open MPI style hostfile naming the nodes, instead of the batch system's.
    pub hostfile: Option<PathBuf>,
    /// The parallel launcher's command (default: the allocation's usual one).
    pub launcher_cmd: Option<String>,
    /// The parallel launcher's kind (default: told from its name).
    pub launcher_kind: Option<LauncherKind>,
    /// `--memory-limit` for each server.
    pub memory_limit: Option<String>,
    /// Further arguments for each server.
    pub server_args: Vec<String>,
    /// The server binary (default: [`dimstore::spawn::server_binary`]'s choice).
    pub server_bin: Option<PathBuf>,
    /// Where to write the fleet file (default: `<run dir>/fleet.json`).
    pub fleet_file: Option<PathBuf>,
    /// The run directory (default: a fresh one, see [`RunDir::create_fresh`], under
    /// `$DIMSTORE_FLEET_DIR` or `~/.dimstore/fleets` for fleets on an allocation, which must
    /// see it from every node).
    pub run_dir: Option<PathBuf>,
    /// How long servers may take to be ready.
    pub ready_timeout: Duration,
    /// Go on with the servers that started when others fail.
    pub allow_partial: bool,
    /// Keep the run directory (logs) and fleet file after the fleet stops.
    pub keep: bool,
    /// No progress output.
    pub quiet: bool,
    /// Servers serve OpenMetrics and the run directory gets a Prometheus targets file.
    pub metrics: bool,
}

/// Why `run` or `up` failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The run directory could not be set up.
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    /// The fleet did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The fleet file could not be written.
    #[error("cannot write fleet file {path}")]
    FleetFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: FleetError,
    },
    /// The command could not be run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The allocation could not be determined.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// Neither `--local` nor a batch allocation or hostfile.
    #[error(
        "no batch allocation found (no SLURM_JOB_ID or PBS_JOBID); run inside a job, give \
         --hostfile FILE, or --local N for servers on this machine"
    )]
    NoAllocation,
    /// The path of `dimstore-launch` itself (which the nodes run) is unknown.
    #[error("cannot find the dimstore-launch executable: {0}")]
    CurrentExe(std::io::Error),
    /// The parallel launcher is unusable.
    #[error(transparent)]
    Step(#[from] StepError),
    /// The Prometheus targets file could not be written.
    #[error(transparent)]
    Scrape(#[from] crate::scrape::ScrapeError),
}

impl LaunchError {
    /// The exit code for this failure: 128 + signal when interrupted, 127 or 126 when the
    /// command was not found or not executable (as shells do), else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::Start(StartError::Interrupted(signal)) => 128 + signal,
            LaunchError::Command(CommandError::Spawn { source, .. }) => match source.kind() {
                std::io::ErrorKind::NotFound => 127,
                std::io::ErrorKind::PermissionDenied => 126,
                _ => 1,
            },
            _ => 1,
        }
    }
}

/// Starts a fleet, runs `argv` with `DIMSTORE_FLEET` and `DIMSTORE_TOKEN` set, and
/// stops the fleet when the command exits or the launcher is signalled. Returns the
/// command's exit code (128 + signal if a signal ended it).
///
/// # Errors
/// See [`LaunchError`]; the fleet is stopped and the run directory removed (unless `keep`)
/// before it is returned.
pub fn run(options: &StartOptions, argv: &[OsString], grace: Duration) -> Result<i32, LaunchError> {
    let interrupts = Interrupts::install().map_err(LaunchError::Signals)?;
    let mut run_dir = make_run_dir(options)?;
    let result = run_in(options, argv, grace, &interrupts, &mut run_dir);
    cleanup(options, &run_dir);
    result
}

fn run_in(
    options: &StartOptions,
    argv: &[OsString],
    grace: Duration,
    interrupts: &Interrupts,
    run_dir: &mut RunDir,
) -> Result<i32, LaunchError> {
    let mut fleet = start(options, run_dir, interrupts, true)?;
    let fleet_path = fleet_path(options, run_dir);
    let written = write_fleet(&fleet, &fleet_path)
        .and_then(|()| write_scrape_targets(options, run_dir, &fleet));
    let outcome = written.and_then(|()| {
        let env = [
            ("DIMSTORE_FLEET", fleet_path.clone().into_os_string()),
            (
                "DIMSTORE_TOKEN",
                fleet.fleet().token.unwrap_or_default().into(),
            ),
        ];
        Ok(command::run(
            argv,
            &env,
            interrupts,
            Forwarding::detect(grace),
        )?)
    });
    if let Ok(outcome) = &outcome {
        if let Some(signal) = outcome.signal {
            note(options, &format!("received {}", interrupt::name(signal)));
        }
        if outcome.killed {
            warn(&format!(
                "the command did not exit within {} of the signal and was killed",
                humantime::format_duration(grace)
            ));
        }
    }
    let forced = fleet.stop(STOP_GRACE);
    if !forced.is_empty() {
        warn(&format!(
            "not stopped within {}: {}",
            humantime::format_duration(STOP_GRACE),
            forced.join(", ")
        ));
    }
    note(options, &format!("stopped {} servers", fleet.count()));
    if !options.keep && !fleet_path.starts_with(run_dir.path()) {
        let _ = std::fs::remove_file(&fleet_path);
    }
    Ok(process::exit_code(outcome?.status))
}

/// Starts a fleet that outlives the launcher; returns the fleet file's path.
///
/// # Errors
/// See [`LaunchError`]; the servers already started are stopped and the run directory
/// removed (unless `keep`) before it is returned.
pub fn up(options: &StartOptions) -> Result<PathBuf, LaunchError> {
    let interrupts = Interrupts::install().map_err(LaunchError::Signals)?;
    let mut run_dir = make_run_dir(options)?;
    let started = start(options, &mut run_dir, &interrupts, false).and_then(|fleet| {
        let path = fleet_path(options, &run_dir);
        write_fleet(&fleet, &path)?;
        write_scrape_targets(options, &run_dir, &fleet)?;
        fleet.detach();
        Ok(path)
    });
    if started.is_err() {
        cleanup(options, &run_dir);
    }
    started
}

/// Where the servers run: `--count` servers on this machine ([`Allocation::Local`]), or the
/// nodes of the job's allocation (never [`Allocation::Local`]).
fn target(options: &StartOptions) -> Result<Allocation, LaunchError> {
    if let Some(count) = options.count {
        return Ok(Allocation::Local { count });
    }
    let detect = DetectOptions {
        hostfile: options.hostfile.as_deref().map(absolute),
        ..DetectOptions::default()
    };
    match allocation::detect_from_process(&detect)? {
        Allocation::Local { .. } => Err(LaunchError::NoAllocation),
        found => Ok(found),
    }
}

fn make_run_dir(options: &StartOptions) -> Result<RunDir, LaunchError> {
    if let Some(path) = &options.run_dir {
        return Ok(RunDir::at(&absolute(path))?);
    }
    if options.count.is_some() {
        return Ok(RunDir::create_fresh(None)?);
    }
    // Fleets on an allocation: the nodes must see the directory (a shared file system).
    let root = std::env::var_os(FLEET_DIR_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".dimstore/fleets")))
        .unwrap_or_else(std::env::temp_dir);
    Ok(RunDir::create_fresh(Some(&root))?)
}

/// A started fleet, on this machine or on an allocation.
#[derive(Debug)]
enum Servers {
    Local(LocalFleet),
    Remote(RemoteFleet),
}

impl Servers {
    fn fleet(&self) -> Fleet {
        match self {
            Servers::Local(f) => f.fleet(),
            Servers::Remote(f) => f.fleet(),
        }
    }

    fn count(&self) -> usize {
        match self {
            Servers::Local(f) => f.pids().len(),
            Servers::Remote(f) => f.node_count(),
        }
    }

    fn stop(&mut self, grace: Duration) -> Vec<String> {
        match self {
            Servers::Local(f) => f
                .stop(grace)
                .into_iter()
                .map(|node| format!("{node} (killed)"))
                .collect(),
            Servers::Remote(f) => f.stop(grace),
        }
    }

    fn detach(self) {
        match self {
            Servers::Local(f) => f.detach(),
            Servers::Remote(f) => f.detach(),
        }
    }
}

/// Starts the fleet; with `tied`, local servers exit with this launcher even if it is killed.
fn start(
    options: &StartOptions,
    run_dir: &mut RunDir,
    interrupts: &Interrupts,
    tied: bool,
) -> Result<Servers, LaunchError> {
    let server_bin = options.server_bin.clone().unwrap_or_else(|| {
        dimstore::spawn::server_binary(&ClientConfig {
            server_bin: std::env::var_os("DIMSTORE_SERVER_BIN")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            ..ClientConfig::default()
        })
    });
    let mut progress = progress::for_stderr(options.quiet);
    let interrupted = || interrupts.pending();
    let allocation = target(options)?;
    let mut server_args = options.server_args.clone();
    if options.metrics {
        let local = matches!(allocation, Allocation::Local { .. });
        server_args.push(format!(
            "--metrics-listen={}",
            crate::scrape::listen_address(local)
        ));
    }
    let server = |server_bin| ServerSpec {
        server_bin,
        memory_limit: options.memory_limit.clone(),
        server_args: server_args.clone(),
        token: dimstore_host::new_token(),
        ready_timeout: options.ready_timeout,
        allow_partial: options.allow_partial,
    };
    let wanted = allocation.server_count();
    let servers = match allocation {
        Allocation::Local { count } => {
            let spec = LocalSpec {
                count,
                server: server(server_bin),
                exit_with_launcher: tied,
            };
            let fleet = LocalFleet::start(&spec, run_dir, progress.as_mut(), &interrupted)?;
            Servers::Local(fleet)
        }
        allocation => {
            let launcher = Launcher::resolve(
                options.launcher_cmd.as_deref(),
                options.launcher_kind,
                &allocation,
            )?;
            note(
                options,
                &format!("{allocation}; launching with {}", launcher.prefix.join(" ")),
            );
            let spec = RemoteSpec {
                allocation,
                launcher,
                launch_exe: std::env::current_exe().map_err(LaunchError::CurrentExe)?,
                // The nodes resolve a relative path against their own working directory.
                server: server(if server_bin.components().count() > 1 {
                    absolute(&server_bin)
                } else {
                    server_bin
                }),
            };
            let fleet = RemoteFleet::start(&spec, run_dir, progress.as_mut(), &interrupted)?;
            Servers::Remote(fleet)
        }
    };
    let up = servers.fleet().nodes.len();
    if up < wanted {
        warn(&format!(
            "continuing with {up} of {wanted} servers (--allow-partial)"
        ));
    }
    Ok(servers)
}

fn fleet_path(options: &StartOptions, run_dir: &RunDir) -> PathBuf {
    options
        .fleet_file
        .as_deref()
        .map_or_else(|| run_dir.path().join("fleet.json"), absolute)
}

fn write_fleet(fleet: &Servers, path: &Path) -> Result<(), LaunchError> {
    fleet
        .fleet()
        .write(path)
        .map_err(|source| LaunchError::FleetFile {
            path: path.to_path_buf(),
            source,
        })
}

/// With `--metrics`, writes `<run dir>/prometheus-targets.json` and says where.
fn write_scrape_targets(
    options: &StartOptions,
    run_dir: &RunDir,
    fleet: &Servers,
) -> Result<(), LaunchError> {
    if options.metrics {
        let path = crate::scrape::write_targets(run_dir.path(), &fleet.fleet())?;
        note(
            options,
            &format!("Prometheus file_sd targets in {}", path.display()),
        );
    }
    Ok(())
}

fn cleanup(options: &StartOptions, run_dir: &RunDir) {
    if options.keep {
        note(
            options,
            &format!("kept run directory {}", run_dir.path().display()),
        );
    } else if let Err(e) = run_dir.remove() {
        warn(&format!(
            "cannot remove run directory {}: {e}",
            run_dir.path().display()
        ));
    }
}

/// `path` made absolute against the current directory (unchanged if that fails).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn note(options: &StartOptions, text: &str) {
    if !options.quiet {
        let _ = writeln!(std::io::stderr(), "dimstore-launch: {text}");
    }
}

fn warn(text: &str) {
    let _ = writeln!(std::io::stderr(), "dimstore-launch: warning: {text}");
}
