//! The parallel launcher that starts one server per node of a batch allocation: which one,
//! and its command line.
//!
//! - Slurm: `srun --overlap --ntasks-per-node=1 -N <n> -n <n> --immediate=<s> ...`, a job
//!   step in the background that shares the allocation with the user's own steps.
//! - PBS on Cray machines (PALS) and MPICH's Hydra: `mpiexec -n <n> --ppn 1 --hostfile F`.
//! - Open MPI: `mpirun -n <n> --map-by ppr:1:node --hostfile F -x DIMSTORE_TOKEN`.
//!
//! The command itself is configurable (`--launcher-cmd`, `DIMSTORE_LAUNCHER`), e.g.
//! `mpirun --mca plm_rsh_agent /path/netns-rsh`; the arguments for one process per node are
//! added after it. Its kind follows from the program's name (`srun`, `mpirun`), and for
//! `mpiexec`, which is Open MPI's, Hydra's or PALS's, from its `--version` text; it can be
//! named explicitly (`--launcher-kind`).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::allocation::Allocation;

/// How a parallel launcher is told to run one process per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LauncherKind {
    /// Slurm's `srun`, as a step of the current job.
    Srun,
    /// Cray PALS `mpiexec` (PBS Pro on HPE/Cray machines) or MPICH Hydra's.
    Mpiexec,
    /// Open MPI's `mpirun` (also its `mpiexec`).
    OpenMpi,
}

impl LauncherKind {
    /// The usual program of this kind.
    pub fn program(self) -> &'static str {
        match self {
            LauncherKind::Srun => "srun",
            LauncherKind::Mpiexec => "mpiexec",
            LauncherKind::OpenMpi => "mpirun",
        }
    }

    /// The launcher a batch system's allocation is best served by (PBS: `mpiexec`).
    pub fn for_allocation(allocation: &Allocation) -> LauncherKind {
        match allocation {
            Allocation::Slurm { .. } => LauncherKind::Srun,
            Allocation::Pbs { .. } | Allocation::Hostfile { .. } | Allocation::Local { .. } => {
                LauncherKind::Mpiexec
            }
        }
    }
}

impl FromStr for LauncherKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "srun" | "slurm" => Ok(LauncherKind::Srun),
            "mpiexec" | "pals" | "hydra" | "mpich" => Ok(LauncherKind::Mpiexec),
            "openmpi" | "ompi" | "mpirun" => Ok(LauncherKind::OpenMpi),
            other => Err(format!(
                "unknown launcher kind `{other}` (expected srun, mpiexec or openmpi)"
            )),
        }
    }
}

/// Why the launcher command cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// `--launcher-cmd` is empty.
    #[error("the launcher command is empty")]
    Empty,
    /// Its kind cannot be told from its name.
    #[error(
        "cannot tell what kind of launcher `{0}` is; name it with --launcher-kind \
         srun|mpiexec|openmpi"
    )]
    UnknownKind(String),
}

/// The launcher: its command prefix (program and the user's own arguments) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// Program and arguments given before the per-node arguments.
    pub prefix: Vec<String>,
    /// How to ask it for one process per node.
    pub kind: LauncherKind,
}

impl Launcher {
    /// The launcher from `--launcher-cmd` (split at whitespace) and `--launcher-kind`; with
    /// neither, the allocation's usual one. A kind without a command uses its program.
    ///
    /// # Errors
    /// An empty command, or one whose kind cannot be told.
    pub fn resolve(
        command: Option<&str>,
        kind: Option<LauncherKind>,
        allocation: &Allocation,
    ) -> Result<Launcher, StepError> {
        let Some(command) = command else {
            let kind = kind.unwrap_or_else(|| LauncherKind::for_allocation(allocation));
            return Ok(Launcher {
                prefix: vec![kind.program().to_owned()],
                kind,
            });
        };
        let prefix: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        let program = prefix.first().ok_or(StepError::Empty)?;
        let kind = match kind {
            Some(kind) => kind,
            None => kind_of(program, &|| version_text(program))
                .ok_or_else(|| StepError::UnknownKind(program.clone()))?,
        };
        Ok(Launcher { prefix, kind })
    }

    /// The full command line: the prefix, the arguments for one process on each of `nodes`
    /// nodes (listed in `hostfile` for the MPI launchers), then `argv`. `wait` bounds how
    /// long Slurm may take to grant the step.
    pub fn command_line(
        &self,
        nodes: usize,
        hostfile: &Path,
        wait: Duration,
        argv: &[OsString],
    ) -> Vec<OsString> {
        let n = nodes.to_string();
        let hosts = hostfile.as_os_str().to_owned();
        let mut line: Vec<OsString> = self.prefix.iter().map(OsString::from).collect();
        let args: Vec<OsString> = match self.kind {
            LauncherKind::Srun => vec![
                "--overlap".into(),
                "--ntasks-per-node=1".into(),
                format!("--nodes={n}").into(),
                format!("--ntasks={n}").into(),
                format!("--immediate={}", wait.as_secs().max(1)).into(),
                "--kill-on-bad-exit=0".into(),
                "--cpu-bind=none".into(),
                "--input=none".into(),
                "--job-name=dimstore".into(),
            ],
            LauncherKind::Mpiexec => vec![
                "-n".into(),
                n.into(),
                "--ppn".into(),
                "1".into(),
                "--hostfile".into(),
                hosts,
            ],
            LauncherKind::OpenMpi => vec![
                "-n".into(),
                n.into(),
                "--map-by".into(),
                "ppr:1:node".into(),
                "--bind-to".into(),
                "none".into(),
                "--hostfile".into(),
                hosts,
                // Open MPI passes on only the variables it is told to.
                "-x".into(),
                "DIMSTORE_TOKEN".into(),
            ],
        };
        line.extend(args);
        line.extend(argv.iter().cloned());
        line
    }
}

/// The kind of `program`: by its name, and for a plain `mpiexec` by its version text.
pub fn kind_of(program: &str, version: &dyn Fn() -> String) -> Option<LauncherKind> {
    let name = Path::new(program).file_name()?.to_string_lossy();
    match name.as_ref() {
        "srun" => Some(LauncherKind::Srun),
        "mpirun" | "orterun" | "prterun" => Some(LauncherKind::OpenMpi),
        "mpiexec" | "mpiexec.hydra" | "mpiexec.openmpi" => {
            let text = version();
            if text.contains("Open MPI") || text.contains("OpenRTE") || name.ends_with("openmpi") {
                Some(LauncherKind::OpenMpi)
            } else {
                Some(LauncherKind::Mpiexec)
            }
        }
        _ => None,
    }
}

/// `program --version`, both streams, bounded to a few seconds (empty on failure).
fn version_text(program: &str) -> String {
    let Ok(mut child) = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return String::new();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child
        .wait_with_output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn slurm() -> Allocation {
        Allocation::Slurm {
            job_id: "7".into(),
            nodes: vec!["n1".into(), "n2".into()],
        }
    }

    fn pbs() -> Allocation {
        Allocation::Pbs {
            job_id: "7.pbs".into(),
            nodes: vec!["n1".into(), "n2".into()],
        }
    }

    fn strings(line: &[OsString]) -> Vec<String> {
        line.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn defaults_follow_the_allocation() {
        let l = Launcher::resolve(None, None, &slurm()).expect("srun");
        assert_eq!(
            (l.kind, l.prefix),
            (LauncherKind::Srun, vec!["srun".into()])
        );
        let l = Launcher::resolve(None, None, &pbs()).expect("mpiexec");
        assert_eq!(l.kind, LauncherKind::Mpiexec);
        let l = Launcher::resolve(None, Some(LauncherKind::OpenMpi), &pbs()).expect("mpirun");
        assert_eq!(l.prefix, vec!["mpirun".to_string()]);
    }

    #[test]
    fn kinds_are_told_by_name_and_version() {
        let none = || String::new();
        assert_eq!(kind_of("/usr/bin/srun", &none), Some(LauncherKind::Srun));
        assert_eq!(kind_of("mpirun", &none), Some(LauncherKind::OpenMpi));
        assert_eq!(kind_of("mpiexec", &none), Some(LauncherKind::Mpiexec));
        let ompi = || "mpiexec (OpenRTE) 4.1.4".to_string();
        assert_eq!(kind_of("mpiexec", &ompi), Some(LauncherKind::OpenMpi));
        assert_eq!(kind_of("aprun", &none), None);
        let err = Launcher::resolve(Some("aprun -n 2"), None, &pbs()).expect_err("unknown");
        assert!(err.to_string().contains("--launcher-kind"), "{err}");
        assert!(matches!(
            Launcher::resolve(Some("  "), None, &pbs()),
            Err(StepError::Empty)
        ));
        assert_eq!("pals".parse(), Ok(LauncherKind::Mpiexec));
        assert!("slurmish".parse::<LauncherKind>().is_err());
    }

    #[test]
    fn command_lines_ask_for_one_process_per_node() {
        let argv: Vec<OsString> = vec!["dimstore-launch".into(), "node-server".into()];
        let hosts = PathBuf::from("/shared/fleet/hosts");
        let wait = Duration::from_secs(30);

        let srun = Launcher::resolve(None, None, &slurm()).expect("srun");
        let line = strings(&srun.command_line(2, &hosts, wait, &argv));
        assert_eq!(line[0], "srun");
        for arg in [
            "--overlap",
            "--ntasks-per-node=1",
            "--nodes=2",
            "--immediate=30",
        ] {
            assert!(line.contains(&arg.to_string()), "{line:?}");
        }
        assert_eq!(&line[line.len() - 2..], ["dimstore-launch", "node-server"]);

        let pals = Launcher::resolve(None, None, &pbs()).expect("pals");
        let line = strings(&pals.command_line(2, &hosts, wait, &argv));
        assert_eq!(
            &line[..7],
            [
                "mpiexec",
                "-n",
                "2",
                "--ppn",
                "1",
                "--hostfile",
                "/shared/fleet/hosts"
            ]
        );

        let ompi = Launcher::resolve(Some("mpirun --mca plm_rsh_agent /x/rsh"), None, &pbs())
            .expect("ompi");
        let line = strings(&ompi.command_line(2, &hosts, wait, &argv));
        assert_eq!(&line[..3], ["mpirun", "--mca", "plm_rsh_agent"]);
        assert!(
            line.windows(2).any(|w| w == ["--map-by", "ppr:1:node"]),
            "{line:?}"
        );
        assert!(
            line.windows(2).any(|w| w == ["-x", "DIMSTORE_TOKEN"]),
            "{line:?}"
        );
    }
}
