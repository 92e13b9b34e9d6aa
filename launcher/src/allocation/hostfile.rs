//! Hostfiles in Open MPI syntax (`host slots=N max_slots=M`), also MPICH's `host:N`.

use std::collections::HashMap;

use dimstore::hostlist::is_host_char;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
