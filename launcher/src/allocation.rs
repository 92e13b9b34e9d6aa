//! Allocation detection: which nodes a job owns, and who said so.
//!
//! A fleet runs one server per node of the job's allocation. The allocation comes from the
//! batch system (Slurm's `SLURM_JOB_NODELIST`, PBS Pro's `PBS_NODEFILE`), from an explicit
//! Open MPI style hostfile, or, outside any job, from this machine alone.
//!
//! The parsers are pure functions over strings. [`detect`] takes the environment and the file
//! reader as arguments, so it is tested without touching the process; [`detect_from_process`]
//! wires it to the real ones.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

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

// ---- Slurm node lists ----------------------------------------------------------------------

use dimstore::hostlist::is_host_char;
pub use dimstore::hostlist::{expand_slurm_nodelist, NodelistError, MAX_EXPANDED_HOSTS};

/// Writes host names as a compact Slurm host list that [`expand_slurm_nodelist`] expands back
/// to exactly the same names in the same order (duplicates included).
///
/// Neighbouring names with the same prefix and a numeric suffix share one bracket group;
/// consecutive numbers of the same width become ranges: `nid001 nid002 nid003 nid010 login1`
/// is `nid[001-003,010],login1`. The names must be host names (no `[`, `]`, `,` or
/// whitespace); an empty slice gives an empty string.
#[must_use]
pub fn compress_nodelist<S: AsRef<str>>(nodes: &[S]) -> String {
    let mut items: Vec<String> = Vec::new();
    let mut run: Option<Run<'_>> = None;
    for node in nodes {
        let name = node.as_ref();
        let (prefix, digits) =
            name.split_at(name.trim_end_matches(|c: char| c.is_ascii_digit()).len());
        let Some(value) = digits.parse::<u64>().ok().filter(|_| !digits.is_empty()) else {
            items.extend(run.take().map(Run::render));
            items.push(name.to_owned());
            continue;
        };
        match &mut run {
            Some(r) if r.prefix == prefix => r.push(digits, value),
            _ => {
                items.extend(run.take().map(Run::render));
                let first = Span {
                    lo_text: digits,
                    lo: value,
                    hi: value,
                };
                run = Some(Run {
                    prefix,
                    spans: vec![first],
                });
            }
        }
    }
    items.extend(run.map(Run::render));
    items.join(",")
}

/// Neighbouring names with one prefix, for [`compress_nodelist`].
struct Run<'a> {
    prefix: &'a str,
    spans: Vec<Span<'a>>,
}

/// Consecutive numbers written with the width of `lo_text`.
struct Span<'a> {
    lo_text: &'a str,
    lo: u64,
    hi: u64,
}

impl<'a> Run<'a> {
    /// Adds a number: extends the last span if it follows it and has its width.
    fn push(&mut self, digits: &'a str, value: u64) {
        match self.spans.last_mut() {
            Some(last)
                if last.hi.checked_add(1) == Some(value)
                    && format!("{value:0width$}", width = last.lo_text.len()) == digits =>
            {
                last.hi = value;
            }
            _ => self.spans.push(Span {
                lo_text: digits,
                lo: value,
                hi: value,
            }),
        }
    }

    /// `prefix[lo-hi,n,...]`, or the plain name for a single number.
    fn render(self) -> String {
        if let [span] = self.spans.as_slice() {
            if span.lo == span.hi {
                return format!("{}{}", self.prefix, span.lo_text);
            }
        }
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|span| {
                let width = span.lo_text.len();
                if span.lo == span.hi {
                    span.lo_text.to_owned()
                } else {
                    format!("{}-{:0width$}", span.lo_text, span.hi)
                }
            })
            .collect();
        format!("{}[{}]", self.prefix, spans.join(","))
    }
}

// ---- PBS node files ------------------------------------------------------------------------

/// Reads a PBS node file (`$PBS_NODEFILE`): one host name per line, repeated once per MPI
/// rank placed there. Returns each host once, in order of first appearance. Blank lines and
/// `#` comments are ignored; anything after the host name on a line is ignored.
#[must_use]
pub fn read_pbs_nodefile(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|host| !host.starts_with('#'))
        .filter(|host| seen.insert(*host))
        .map(str::to_owned)
        .collect()
}

// ---- hostfiles -----------------------------------------------------------------------------

/// One host of a hostfile, with its slot counts when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostfileEntry {
    /// The host name.
    pub host: String,
    /// Processes the host may run (`slots=N`, or `host:N`), summed over repeated lines.
    pub slots: Option<u32>,
    /// Hard limit of processes on the host (`max_slots=N`), the largest given.
    pub max_slots: Option<u32>,
}

/// Why a hostfile could not be parsed; lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostfileError {
    /// The host name has characters a host name cannot have.
    #[error("line {line}: invalid host name {host:?}")]
    InvalidHost {
        /// Line number.
        line: usize,
        /// The host field as written.
        host: String,
    },
    /// A `key=value` with a value that is not a non-negative 32-bit number.
    #[error("line {line}: invalid value in {token:?}")]
    InvalidValue {
        /// Line number.
        line: usize,
        /// The token as written.
        token: String,
    },
    /// A token other than `slots=`, `max_slots=` or `max-slots=`.
    #[error("line {line}: unknown token {token:?}")]
    UnknownToken {
        /// Line number.
        line: usize,
        /// The token as written.
        token: String,
    },
}

/// Parses an Open MPI style hostfile: one host per line, optionally followed by `slots=N` and
/// `max_slots=N` (also `max-slots=N`); MPICH's `host:N` is read as `slots=N`. `#` starts a
/// comment. A host listed on several lines appears once, where it first appears, with its
/// slots summed.
///
/// ```text
/// # two nodes, four ranks each
/// n1 slots=4
/// n2 slots=4 max_slots=8
/// ```
///
/// # Errors
/// A [`HostfileError`] naming the line for an invalid host name, a bad number or an unknown
/// token.
pub fn parse_hostfile(text: &str) -> Result<Vec<HostfileEntry>, HostfileError> {
    let mut entries: Vec<HostfileEntry> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = raw.split('#').next().unwrap_or_default();
        let mut tokens = content.split_whitespace();
        let Some(first) = tokens.next() else { continue };
        let (host, mut slots) = match first.split_once(':') {
            Some((host, count)) => (host, Some(parse_count(count, first, line)?)),
            None => (first, None),
        };
        if host.is_empty() || !host.chars().all(is_host_char) {
            return Err(HostfileError::InvalidHost {
                line,
                host: first.to_owned(),
            });
        }
        let mut max_slots = None;
        for token in tokens {
            match token.split_once('=') {
                Some(("slots", v)) => slots = Some(parse_count(v, token, line)?),
                Some(("max_slots" | "max-slots", v)) => {
                    max_slots = Some(parse_count(v, token, line)?);
                }
                _ => {
                    return Err(HostfileError::UnknownToken {
                        line,
                        token: token.to_owned(),
                    })
                }
            }
        }
        match index.get(host) {
            Some(&i) => {
                let entry = &mut entries[i];
                entry.slots = match (entry.slots, slots) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    (a, b) => a.or(b),
                };
                entry.max_slots = entry.max_slots.max(max_slots);
            }
            None => {
                index.insert(host.to_owned(), entries.len());
                entries.push(HostfileEntry {
                    host: host.to_owned(),
                    slots,
                    max_slots,
                });
            }
        }
    }
    Ok(entries)
}

fn parse_count(value: &str, token: &str, line: usize) -> Result<u32, HostfileError> {
    value.parse().map_err(|_| HostfileError::InvalidValue {
        line,
        token: token.to_owned(),
    })
}

// ---- detection -----------------------------------------------------------------------------

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
    use proptest::prelude::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn compresses_like_slurm() {
        let nodes = strs(&["nid001", "nid002", "nid003", "nid010", "login1"]);
        assert_eq!(compress_nodelist(&nodes), "nid[001-003,010],login1");
        assert_eq!(compress_nodelist(&strs(&["n9", "n10", "n11"])), "n[9-11]");
        assert_eq!(compress_nodelist(&strs(&["n09", "n10"])), "n[09-10]");
        assert_eq!(compress_nodelist(&strs(&["n1"])), "n1");
        assert_eq!(compress_nodelist(&strs(&["hub", "n2", "n1"])), "hub,n[2,1]");
        assert_eq!(compress_nodelist::<String>(&[]), "");
    }

    #[test]
    fn pbs_nodefile_collapses_ranks() {
        let text = "n2\nn2\n\n# comment\nn1\r\nn2\n  n3  \nn1\n";
        assert_eq!(read_pbs_nodefile(text), strs(&["n2", "n1", "n3"]));
        assert!(read_pbs_nodefile("").is_empty());
    }

    #[test]
    fn hostfile_open_mpi_and_mpich_syntax() {
        let text = "# nodes\nn1 slots=4\nn2 slots=2 max_slots=8 # big\n\nn3:3\nn1 slots=4\nn4\n";
        let entries = parse_hostfile(text).unwrap();
        let e = |host: &str, slots, max_slots| HostfileEntry {
            host: host.to_owned(),
            slots,
            max_slots,
        };
        assert_eq!(
            entries,
            vec![
                e("n1", Some(8), None),
                e("n2", Some(2), Some(8)),
                e("n3", Some(3), None),
                e("n4", None, None)
            ]
        );
        assert_eq!(
            parse_hostfile("n1\nn2 slots=x\n"),
            Err(HostfileError::InvalidValue {
                line: 2,
                token: "slots=x".into()
            })
        );
        assert_eq!(
            parse_hostfile("n1 cpus=2\n"),
            Err(HostfileError::UnknownToken {
                line: 1,
                token: "cpus=2".into()
            })
        );
        assert_eq!(
            parse_hostfile("n/1\n"),
            Err(HostfileError::InvalidHost {
                line: 1,
                host: "n/1".into()
            })
        );
        assert_eq!(parse_hostfile("# nothing\n\n"), Ok(vec![]));
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

    /// Host names as a job might list them: runs of consecutive numbers after a prefix,
    /// mostly of one zero-padded width but sometimes not, mixed with plain names; numbers
    /// near 9/10 and 99/100 boundaries and near `u64::MAX` are likely.
    fn host_names() -> impl Strategy<Value = Vec<String>> {
        let prefix = prop::sample::select(vec!["n", "nid", "x3006c0s", "a1b", "r1-", ""]);
        let start = prop_oneof![0u64..12, 95u64..101, 0u64..5_000, Just(u64::MAX - 3)];
        let widths = prop::collection::vec(0usize..12, 6);
        let run = (prefix, start, 1usize..7, 0usize..5, widths).prop_map(
            |(prefix, start, len, width, widths)| {
                (0..len as u64)
                    .map_while(|i| start.checked_add(i))
                    .zip(widths)
                    .map(|(n, w)| {
                        let width = if w < 5 { w } else { width };
                        format!("{prefix}{n:0width$}")
                    })
                    .collect::<Vec<_>>()
            },
        );
        let plain = prop::sample::select(vec!["login", "hub", "n", "x-y.z"])
            .prop_map(|name| vec![name.to_owned()]);
        prop::collection::vec(prop_oneof![4 => run, 1 => plain], 1..10)
            .prop_map(|runs| runs.concat())
    }

    proptest! {
        #[test]
        fn compress_then_expand_is_identity(names in host_names()) {
            let list = compress_nodelist(&names);
            prop_assert_eq!(expand_slurm_nodelist(&list).unwrap(), names, "{}", list);
        }

        #[test]
        fn a_sorted_set_with_one_prefix_is_one_item(
            numbers in prop::collection::btree_set(0u64..5_000, 1..80),
            width in 1usize..6,
        ) {
            let names: Vec<String> = numbers.iter().map(|n| format!("nid{n:0width$}")).collect();
            let list = compress_nodelist(&names);
            prop_assert!(list.matches('[').count() <= 1, "{}", list);
            prop_assert!(!list.contains("],") && !list.starts_with(','), "{}", list);
            prop_assert_eq!(expand_slurm_nodelist(&list).unwrap(), names);
        }

        #[test]
        fn pbs_collapsing_is_idempotent(
            hosts in prop::collection::vec(prop::sample::select(vec!["n1", "n2", "n3", "x10"]), 0..40),
            comments in prop::collection::vec(any::<bool>(), 0..40),
        ) {
            let text: String = hosts.iter().zip(comments.iter().chain(std::iter::repeat(&false)))
                .map(|(h, c)| if *c { format!("# {h}\n\n") } else { format!("{h}\n") })
                .collect();
            let once = read_pbs_nodefile(&text);
            let twice = read_pbs_nodefile(&once.join("\n"));
            prop_assert_eq!(&twice, &once);
            let unique: HashSet<&String> = once.iter().collect();
            prop_assert_eq!(unique.len(), once.len());
        }

        #[test]
        fn expand_never_panics(s in "[a-c0-9\\[\\],\\- ]{0,24}") {
            if let Ok(names) = expand_slurm_nodelist(&s) {
                prop_assert!(!names.is_empty());
                prop_assert!(names.iter().all(|n| !n.is_empty() && n.chars().all(is_host_char)));
            }
        }
    }
}
