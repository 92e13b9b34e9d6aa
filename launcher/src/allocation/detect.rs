//! Which allocation this process runs in: a hostfile, a Slurm or PBS job, or none (a local
//! fleet). [`detect`] is pure: the environment and the file reader are passed in.

use std::collections::HashSet;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use super::{expand_slurm_nodelist, parse_hostfile, read_pbs_nodefile};
use super::{Allocation, HostfileError, NodelistError};

/// Choices for [`detect`] that do not come from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectOptions {
    /// Use this hostfile, whatever the environment says.
    pub hostfile: Option<PathBuf>,
    /// Servers in a local fleet, when neither a hostfile nor a batch job is found.
    pub local_count: NonZeroUsize,
}

impl Default for DetectOptions {
    /// No hostfile; a local fleet of one server.
    fn default() -> Self {
        Self {
            hostfile: None,
            local_count: NonZeroUsize::MIN,
        }
    }
}

/// Why the allocation could not be determined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetectError {
    /// A batch job was detected but a variable it must set is missing.
    #[error("{scheduler} job detected ({detected} is set) but {missing} is not set")]
    MissingVariable {
        /// `"slurm"` or `"pbs"`.
        scheduler: &'static str,
        /// The variable that revealed the job.
        detected: &'static str,
        /// The variable that should have been set too.
        missing: &'static str,
    },
    /// The Slurm node list does not parse.
    #[error("cannot expand {variable}={value:?}")]
    Nodelist {
        /// The variable it came from.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        #[source]
        source: NodelistError,
    },
    /// A node file or hostfile could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// `"PBS_NODEFILE"` or `"hostfile"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The hostfile does not parse.
    #[error("invalid hostfile {}", path.display())]
    Hostfile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: HostfileError,
    },
    /// The allocation has no nodes.
    #[error("{what} {} lists no nodes", source_name)]
    NoNodes {
        /// `"PBS_NODEFILE"` or `"hostfile"`.
        what: &'static str,
        /// The variable's value or the file's path.
        source_name: String,
    },
}

/// Finds the allocation this process runs in.
///
/// In order: the hostfile of `options` if given; a Slurm job (`SLURM_JOB_ID`, or the older
/// `SLURM_JOBID`) with `SLURM_JOB_NODELIST` (or the older `SLURM_NODELIST`); a PBS job
/// (`PBS_JOBID`) with `PBS_NODEFILE`; otherwise a local fleet of `options.local_count`
/// servers. `env` returns a variable's value (empty counts as unset); `read_file` returns a
/// file's contents.
///
/// # Errors
/// A [`DetectError`] when a batch job is detected but its node list is missing, unreadable,
/// malformed or empty, or when the hostfile is unreadable, malformed or empty.
pub fn detect(
    env: &impl Fn(&str) -> Option<String>,
    read_file: &impl Fn(&Path) -> io::Result<String>,
    options: &DetectOptions,
) -> Result<Allocation, DetectError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let first_var = |names: &[&'static str]| {
        names
            .iter()
            .find_map(|&name| var(name).map(|value| (name, value)))
    };

    if let Some(path) = &options.hostfile {
        let text = read_file(path).map_err(|source| DetectError::Read {
            what: "hostfile",
            path: path.clone(),
            source,
        })?;
        let entries = parse_hostfile(&text).map_err(|source| DetectError::Hostfile {
            path: path.clone(),
            source,
        })?;
        if entries.is_empty() {
            return Err(DetectError::NoNodes {
                what: "hostfile",
                source_name: path.display().to_string(),
            });
        }
        let nodes = entries.into_iter().map(|e| e.host).collect();
        return Ok(Allocation::Hostfile {
            path: path.clone(),
            nodes,
        });
    }

    if let Some((detected, job_id)) = first_var(&["SLURM_JOB_ID", "SLURM_JOBID"]) {
        let (variable, value) = first_var(&["SLURM_JOB_NODELIST", "SLURM_NODELIST"]).ok_or(
            DetectError::MissingVariable {
                scheduler: "slurm",
                detected,
                missing: "SLURM_JOB_NODELIST",
            },
        )?;
        let nodes = expand_slurm_nodelist(&value).map_err(|source| DetectError::Nodelist {
            variable,
            value: value.clone(),
            source,
        })?;
        let mut seen = HashSet::new();
        let nodes = nodes
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect();
        return Ok(Allocation::Slurm { job_id, nodes });
    }

    if let Some(job_id) = var("PBS_JOBID") {
        let path = PathBuf::from(var("PBS_NODEFILE").ok_or(DetectError::MissingVariable {
            scheduler: "pbs",
            detected: "PBS_JOBID",
            missing: "PBS_NODEFILE",
        })?);
        let text = read_file(&path).map_err(|source| DetectError::Read {
            what: "PBS_NODEFILE",
            path: path.clone(),
            source,
        })?;
        let nodes = read_pbs_nodefile(&text);
        if nodes.is_empty() {
            return Err(DetectError::NoNodes {
                what: "PBS_NODEFILE",
                source_name: path.display().to_string(),
            });
        }
        return Ok(Allocation::Pbs { job_id, nodes });
    }

    Ok(Allocation::Local {
        count: options.local_count.get(),
    })
}

/// [`detect`] with this process's environment and the real file system.
///
/// # Errors
/// As [`detect`].
pub fn detect_from_process(options: &DetectOptions) -> Result<Allocation, DetectError> {
    detect(
        &|name| std::env::var(name).ok(),
        &|path| std::fs::read_to_string(path),
        options,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn files_of<'a>(files: &'a [(&'a str, &'a str)]) -> impl Fn(&Path) -> io::Result<String> + 'a {
        move |path| {
            files
                .iter()
                .find(|(p, _)| Path::new(p) == path)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        }
    }

    fn detect_with(
        vars: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Result<Allocation, DetectError> {
        detect(&env_of(vars), &files_of(files), &DetectOptions::default())
    }

    #[test]
    fn detects_slurm() {
        let a = detect_with(
            &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "n[1-2]")],
            &[],
        )
        .unwrap();
        assert_eq!(
            a,
            Allocation::Slurm {
                job_id: "42".into(),
                nodes: strs(&["n1", "n2"])
            }
        );
        assert_eq!(a.to_string(), "slurm job 42: 2 nodes n[1-2]");
        assert_eq!(
            (a.server_count(), a.job_id(), a.source()),
            (2, Some("42"), "slurm")
        );

        let old = detect_with(&[("SLURM_JOBID", "7"), ("SLURM_NODELIST", "n3")], &[]).unwrap();
        assert_eq!(
            old,
            Allocation::Slurm {
                job_id: "7".into(),
                nodes: strs(&["n3"])
            }
        );

        let missing = detect_with(&[("SLURM_JOB_ID", "42")], &[]).unwrap_err();
        assert!(matches!(
            missing,
            DetectError::MissingVariable {
                scheduler: "slurm",
                ..
            }
        ));
        let bad = detect_with(
            &[("SLURM_JOB_ID", "42"), ("SLURM_JOB_NODELIST", "n[2-1]")],
            &[],
        )
        .unwrap_err();
        assert!(matches!(
            bad,
            DetectError::Nodelist {
                variable: "SLURM_JOB_NODELIST",
                ..
            }
        ));
    }

    #[test]
    fn detects_pbs() {
        let vars = [("PBS_JOBID", "4242.pbs"), ("PBS_NODEFILE", "/pbs/4242")];
        let a = detect_with(&vars, &[("/pbs/4242", "n1\nn1\nn2\nn2\n")]).unwrap();
        assert_eq!(
            a,
            Allocation::Pbs {
                job_id: "4242.pbs".into(),
                nodes: strs(&["n1", "n2"])
            }
        );

        let unreadable = detect_with(&vars, &[]).unwrap_err();
        assert!(matches!(
            unreadable,
            DetectError::Read {
                what: "PBS_NODEFILE",
                ..
            }
        ));
        let empty = detect_with(&vars, &[("/pbs/4242", "\n")]).unwrap_err();
        assert!(matches!(
            empty,
            DetectError::NoNodes {
                what: "PBS_NODEFILE",
                ..
            }
        ));
        let missing = detect_with(&[("PBS_JOBID", "1")], &[]).unwrap_err();
        assert!(matches!(
            missing,
            DetectError::MissingVariable {
                missing: "PBS_NODEFILE",
                ..
            }
        ));
    }

    #[test]
    fn hostfile_wins_then_slurm_then_pbs_then_local() {
        let slurm = [
            ("SLURM_JOB_ID", "1"),
            ("SLURM_JOB_NODELIST", "s1"),
            ("PBS_JOBID", "2"),
        ];
        let files = [("/hosts", "h1 slots=2\nh2\n")];
        let options = DetectOptions {
            hostfile: Some("/hosts".into()),
            ..Default::default()
        };
        let a = detect(&env_of(&slurm), &files_of(&files), &options).unwrap();
        assert_eq!(
            a,
            Allocation::Hostfile {
                path: "/hosts".into(),
                nodes: strs(&["h1", "h2"])
            }
        );

        let a = detect_with(&slurm, &[]).unwrap();
        assert_eq!(a.source(), "slurm");

        let empty_is_unset = [("SLURM_JOB_ID", ""), ("PBS_JOBID", " ")];
        let local = DetectOptions {
            local_count: NonZeroUsize::new(3).unwrap(),
            hostfile: None,
        };
        let a = detect(&env_of(&empty_is_unset), &files_of(&[]), &local).unwrap();
        assert_eq!(a, Allocation::Local { count: 3 });
        assert_eq!(
            (a.server_count(), a.nodes().len(), a.to_string()),
            (3, 0, "local: 3 servers".into())
        );

        let none = detect(&env_of(&[]), &files_of(&[]), &options).unwrap_err();
        assert!(matches!(
            none,
            DetectError::Read {
                what: "hostfile",
                ..
            }
        ));
        let empty = detect(&env_of(&[]), &files_of(&[("/hosts", "#\n")]), &options).unwrap_err();
        assert!(matches!(
            empty,
            DetectError::NoNodes {
                what: "hostfile",
                ..
            }
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = detect_with(
            &[("SLURM_JOB_ID", "9"), ("SLURM_JOB_NODELIST", "n[1-")],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "cannot expand SLURM_JOB_NODELIST=\"n[1-\"");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("unbalanced bracket at byte 1"));
    }
}
