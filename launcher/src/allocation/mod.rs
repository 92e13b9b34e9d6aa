//! Allocation detection: which nodes a job owns, and who said so.
//!
//! A fleet runs one server per node of the job's allocation. The allocation comes from the
//! batch system (Slurm's `SLURM_JOB_NODELIST`, PBS Pro's `PBS_NODEFILE`), from an explicit
//! Open MPI style hostfile, or, outside any job, from this machine alone.
//!
//! The parsers are pure functions over strings. [`detect`] takes the environment and the file
//! reader as arguments, so it is tested without touching the process; [`detect_from_process`]
//! wires it to the real ones.
//!
//! One file per source: `slurm.rs` (node lists), `pbs.rs` (node files), `hostfile.rs`, and
//! `detect.rs`, which chooses among them.

use std::fmt;
use std::path::PathBuf;

mod detect;
mod hostfile;
mod pbs;
mod slurm;

pub use detect::{detect, detect_from_process, DetectError, DetectOptions};
pub use hostfile::{parse_hostfile, HostfileEntry, HostfileError};
pub use pbs::read_pbs_nodefile;
pub use slurm::{compress_nodelist, expand_slurm_nodelist, NodelistError, MAX_EXPANDED_HOSTS};

/// The nodes of a job, and where that knowledge came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// A Slurm job (`SLURM_JOB_ID`); nodes from `SLURM_JOB_NODELIST`, in Slurm's order.
    Slurm {
        /// The Slurm job id.
        job_id: String,
        /// Host names of the job's nodes, each once.
        nodes: Vec<String>,
    },
    /// A PBS job (`PBS_JOBID`); nodes from `PBS_NODEFILE`, in order of first appearance.
    Pbs {
        /// The PBS job id (e.g. `4242.polaris-pbs-01`).
        job_id: String,
        /// Host names of the job's nodes, each once.
        nodes: Vec<String>,
    },
    /// An explicit hostfile (Open MPI syntax), in order of first appearance.
    Hostfile {
        /// Where the hostfile was read from.
        path: PathBuf,
        /// Host names listed in it, each once.
        nodes: Vec<String>,
    },
    /// No batch system and no hostfile: a fleet of `count` servers on this machine.
    Local {
        /// How many servers to run here (at least 1).
        count: usize,
    },
}

impl Allocation {
    /// The host names of the allocation's nodes; empty for [`Allocation::Local`].
    #[must_use]
    pub fn nodes(&self) -> &[String] {
        match self {
            Self::Slurm { nodes, .. } | Self::Pbs { nodes, .. } | Self::Hostfile { nodes, .. } => {
                nodes
            }
            Self::Local { .. } => &[],
        }
    }

    /// How many servers the fleet has: one per node, or `count` for a local fleet.
    #[must_use]
    pub fn server_count(&self) -> usize {
        match self {
            Self::Local { count } => *count,
            _ => self.nodes().len(),
        }
    }

    /// The batch job id, if the allocation comes from a batch system.
    #[must_use]
    pub fn job_id(&self) -> Option<&str> {
        match self {
            Self::Slurm { job_id, .. } | Self::Pbs { job_id, .. } => Some(job_id),
            Self::Hostfile { .. } | Self::Local { .. } => None,
        }
    }

    /// A short name of the source: `"slurm"`, `"pbs"`, `"hostfile"` or `"local"`.
    #[must_use]
    pub fn source(&self) -> &'static str {
        match self {
            Self::Slurm { .. } => "slurm",
            Self::Pbs { .. } => "pbs",
            Self::Hostfile { .. } => "hostfile",
            Self::Local { .. } => "local",
        }
    }
}

impl fmt::Display for Allocation {
    /// E.g. `slurm job 42: 4 nodes nid[001-004]`, `local: 2 servers`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes = self.nodes();
        let plural = if self.server_count() == 1 { "" } else { "s" };
        match self {
            Self::Slurm { job_id, .. } | Self::Pbs { job_id, .. } => write!(
                f,
                "{} job {job_id}: {} node{plural} {}",
                self.source(),
                nodes.len(),
                compress_nodelist(nodes)
            ),
            Self::Hostfile { path, .. } => write!(
                f,
                "hostfile {}: {} node{plural} {}",
                path.display(),
                nodes.len(),
                compress_nodelist(nodes)
            ),
            Self::Local { count } => write!(f, "local: {count} server{plural}"),
        }
    }
}
